//! The forwarding path, in the order a request travels: route -> key snapshot -> strip the client's
//! credentials and inject ours -> forward -> stream the answer back -> log. Bodies are never buffered.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderName;
use std::borrow::Cow;

use http::{Request, Response, StatusCode, Uri, Version};

pub mod client_tokens;
pub mod error;
pub mod explain;
pub mod guard;
pub mod reply;
pub mod route;
pub mod sign;
pub mod tap;

pub use error::ProxyError;

use crate::headers::{presented_credential, strip_for_upstream, strip_key_param};
use crate::http1::drop_hop_by_hop;
use crate::key::lifecycle::{App, KeyLifecycle, KeyProbe};
use crate::key::rotation::Trigger;
use crate::key::{KeySnapshot, KeyState};
use crate::metrics::{InFlight, Metrics};
use crate::provider::{Provider, ANTHROPIC_DEFAULT_VERSION, ANTHROPIC_VERSION};
use crate::reason::Reason;
use crate::request_id;
use crate::upstream::keys::{self, Standing};
use crate::upstream::pool::{PooledBody, SendError, UpstreamBody};
use crate::upstream::Upstream;
use crate::websocket::{self, Sockets};
use client_tokens::ClientTokens;
use explain::RequestFacts;
use guard::{Guard, Verdict};
use reply::ReplyBody;
use route::{path_is_clean, Router};
use tap::{SseTap, Tap};

static OPENAI_ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");
static OPENAI_PROJECT: HeaderName = HeaderName::from_static("openai-project");
/// On an answer that came from another key of the pool than the first one tried.
pub static FAILOVER_HEADER: HeaderName = HeaderName::from_static("x-keyproxy-failover");

pub struct Proxy {
    pub upstreams: Vec<Upstream>,
    pub metrics: Arc<Metrics>,
    pub clients: ClientTokens,
    /// Open WebSocket splices, for shutdown.
    pub sockets: Arc<Sockets>,
    router: Router,
    /// Custom auth headers of generic upstreams: a credential for any upstream is stripped everywhere.
    custom_credentials: Vec<http::HeaderName>,
    /// Host and browser checks, before anything else.
    guard: Guard,
}

impl crate::key::watch::Watched for Proxy {
    fn lifecycles(&self) -> Vec<(&KeyLifecycle, &dyn KeyProbe)> {
        self.upstreams
            .iter()
            .flat_map(|u| u.lifecycles().map(move |key| (key, u as &dyn KeyProbe)))
            .collect()
    }

    fn reloaded(&self) {
        for upstream in self.upstreams.iter().filter(|u| u.keys.is_pool()) {
            upstream.refresh_keys();
        }
    }
}

impl Proxy {
    pub fn new(upstreams: Vec<Upstream>, metrics: Arc<Metrics>, clients: ClientTokens) -> Proxy {
        let router = Router::new(upstreams.iter().map(|u| u.prefix.as_str()));
        let mut custom_credentials: Vec<http::HeaderName> = Vec::new();
        for u in &upstreams {
            let standard = crate::headers::is_standard_credential(&u.auth_header);
            if !standard && !custom_credentials.contains(&u.auth_header) {
                custom_credentials.push(u.auth_header.clone());
            }
        }
        Proxy {
            upstreams,
            metrics,
            clients,
            sockets: Arc::default(),
            router,
            custom_credentials,
            guard: Guard::new(std::net::Ipv4Addr::LOCALHOST.into(), &[], &[]),
        }
    }

    /// The browser guard to apply (by default: loopback hosts only, no web origins).
    pub fn with_guard(mut self, guard: Guard) -> Proxy {
        self.guard = guard;
        self
    }

    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }

    /// Re-read every key source (SIGHUP: `force`; file events and the periodic re-read: not).
    pub async fn reload_all(&self, trigger: Trigger, force: bool) {
        for upstream in &self.upstreams {
            for key in upstream.lifecycles() {
                key.reload(trigger, force, upstream).await;
            }
            upstream.refresh_keys();
        }
    }

    /// One proxied request, start to finish, in its phases: request (route, key, rewrite) ->
    /// upstream -> response -> log. Never fails: every problem becomes a response, and every
    /// response carries the request id. (One async fn, not nested ones: each level of nesting
    /// doubles the size of the future that is copied around per request.)
    pub async fn handle(
        &self,
        mut req: Request<UpstreamBody>,
        peer: SocketAddr,
    ) -> Response<ReplyBody> {
        let started = Instant::now();
        let request_id = request_id::of(req.headers());
        let rid = request_id.to_str().unwrap_or("");
        let method = req.method().clone();
        let uri = req.uri().clone();
        // Everything that ends before the upstream is an answer of keyproxy's own.
        let (cors, routed): (_, Result<Routed, Response<ReplyBody>>) = match self.guard.check(&req)
        {
            Verdict::Pass { cors } => (
                cors,
                self.route(&mut req, peer)
                    .map_err(|e| e.refuse(rid, &method, uri.path())),
            ),
            Verdict::Preflight(headers) => (None, Err(reply::preflight(headers))),
            Verdict::Refused(refusal) => {
                self.metrics.refused(false, refusal.reason);
                let refused = ProxyError::Guard(refusal).refuse(rid, &method, uri.path());
                (None, Err(refused))
            }
        };
        // SigV4 upstreams only: read the body (bounded) and sign what will be sent. (Every other
        // request only tests `signs()`.)
        let unsigned = match &routed {
            Ok(r) if r.upstream.signs() => sign::signing(r.upstream, &r.key, &mut req)
                .await
                .err()
                .map(|refusal| {
                    let status = refusal.status().as_u16();
                    r.upstream.metrics.request(r.client, status);
                    refusal.refuse(rid, &method, uri.path())
                }),
            _ => None,
        };
        let routed = match unsigned {
            Some(answer) => Err(answer),
            None => routed,
        };
        let mut response = match routed {
            Err(answer) => answer,
            Ok(routed) => {
                let upstream = routed.upstream;
                let in_flight = InFlight::start(&upstream.metrics);
                let upgrade = routed.upgrade.then(|| hyper::upgrade::on(&mut req));
                let via = match upgrade {
                    Some(_) => &upstream.upgrade_pool,
                    None => &upstream.pool,
                };
                let facts = RequestFacts {
                    request_id: rid,
                    client: routed.client,
                    method: method.as_str(),
                    path: uri.path(),
                    organization: routed.organization.as_ref(),
                    project: routed.project.as_ref(),
                };
                let mut abandoned = Abandoned {
                    proxy: self,
                    upstream,
                    key: &routed.key,
                    facts,
                    started,
                    armed: true,
                };
                let sent = Instant::now();
                let timeout = upstream.response_header_timeout;
                let deadline = tokio::time::Instant::from_std(sent) + timeout;
                // A pool's request that could go again on another key, or a token credential's
                // after a 401 with a fresh token (never a streamed upload nor a WebSocket
                // handshake); a plain key's request copies nothing. Boxed, so that `handle`'s
                // future grows by a pointer only.
                let replay = match routed.slot.is_some() || upstream.key.refresher().is_some() {
                    true => Replay::of(&req, upgrade.is_some()),
                    false => None,
                };
                let answer = via.send(req, deadline).await;
                let answered = Instant::now();
                let mut served_by = None;
                let mut refreshed = None;
                let response = match answer {
                    Ok(response) => {
                        let upstream_time = answered.duration_since(sent).as_secs_f64();
                        upstream.metrics.upstream_duration.observe(upstream_time);
                        let response = self
                            .response_phase(upstream, &routed.key, facts, upgrade, response)
                            .await;
                        let slot = routed.slot.unwrap_or(0);
                        match routed.slot {
                            // Before a pool's failover: a refused token is the token's fault
                            // only until it is refreshed.
                            _ if response.status() == StatusCode::UNAUTHORIZED
                                && upstream.lifecycle(slot).refresher().is_some() =>
                            {
                                let tried = Tried {
                                    slot,
                                    key: &routed.key,
                                };
                                let pool = routed.slot.is_some();
                                let (response, next) = refreshing(
                                    self, upstream, tried, pool, replay, facts, response,
                                )
                                .await;
                                match pool {
                                    true => served_by = next,
                                    false => refreshed = next.map(|(_, key)| key),
                                }
                                response
                            }
                            Some(slot) if refused(&response) => {
                                let tried = Tried {
                                    slot,
                                    key: &routed.key,
                                };
                                let (response, next) =
                                    failing_over(self, upstream, tried, replay, facts, response)
                                        .await;
                                served_by = next;
                                response
                            }
                            _ => response,
                        }
                    }
                    Err(SendError::Client(fault)) => {
                        let failure = ProxyError::Client(fault);
                        if let Some(kind) = failure.client_error() {
                            self.metrics.client_error(kind);
                        }
                        failure.into_response()
                    }
                    Err(SendError::Timeout) => upstream_failure(
                        upstream,
                        rid,
                        ProxyError::Timeout {
                            upstream: Arc::clone(&upstream.name),
                            provider: upstream.provider,
                            after: timeout,
                        },
                    ),
                    Err(error) => upstream_failure(
                        upstream,
                        rid,
                        ProxyError::Unreachable {
                            upstream: Arc::clone(&upstream.name),
                            provider: upstream.provider,
                            authority: upstream.authority().clone(),
                            error,
                        },
                    ),
                };
                let elapsed = answered.duration_since(started);
                abandoned.armed = false;
                let status = response.status().as_u16();
                let key = match &served_by {
                    Some((slot, key)) => {
                        upstream.keys.request(*slot, status);
                        key
                    }
                    None => {
                        if let Some(slot) = routed.slot {
                            upstream.keys.request(slot, status);
                        }
                        refreshed.as_ref().unwrap_or(&routed.key)
                    }
                };
                self.log_phase(upstream, key, facts, elapsed, status);
                response.map(|body| body.in_flight(in_flight))
            }
        };
        if let Some(origin) = cors {
            guard::allow(response.headers_mut(), origin);
        }
        response
            .headers_mut()
            .insert(request_id::RESPONSE_HEADER.clone(), request_id);
        response
    }

    /// What goes back: a spliced WebSocket, an explained refusal, or the upstream's body as it streams.
    async fn response_phase(
        &self,
        upstream: &Upstream,
        key: &KeyState,
        facts: RequestFacts<'_>,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        mut response: Response<PooledBody>,
    ) -> Response<ReplyBody> {
        if !response.body().is_h1() || response.headers().contains_key(http::header::CONNECTION) {
            drop_hop_by_hop(response.headers_mut());
        }
        guard::strip_cors(response.headers_mut());
        if let (Some(client_side), StatusCode::SWITCHING_PROTOCOLS) = (upgrade, response.status()) {
            websocket::restore_upgrade_headers(response.headers_mut());
            let upstream_side = hyper::upgrade::on(&mut response);
            websocket::splice(
                Arc::clone(&self.sockets),
                Arc::clone(&upstream.metrics),
                Arc::clone(&upstream.name),
                facts.request_id.to_owned(),
                client_side,
                upstream_side,
            );
            return response.map(ReplyBody::upstream);
        }
        if response.status().is_client_error() || response.status().is_server_error() {
            // Boxed: the rare path, and a large future (see `explaining`).
            return explaining(upstream, key, facts, response).await;
        }
        let tap = tap_for(
            upstream,
            facts.client,
            response.status(),
            response.headers(),
            facts.path,
        );
        let idle = upstream.stream_idle_timeout;
        response.map(|body| {
            let body = ReplyBody::upstream(body).idle_timeout(idle);
            match tap {
                Some(tap) => body.tapped(tap),
                None => body,
            }
        })
    }

    /// Count the request and write its one log line.
    fn log_phase(
        &self,
        upstream: &Upstream,
        key: &KeyState,
        facts: RequestFacts<'_>,
        elapsed: Duration,
        status: u16,
    ) {
        upstream.metrics.request(facts.client, status);
        upstream
            .metrics
            .request_duration
            .observe(elapsed.as_secs_f64());
        let key = key.snapshot();
        tracing::info!(
            target: crate::telemetry::ACCESS,
            request_id = facts.request_id,
            method = facts.method,
            upstream = %upstream.name,
            client = self.clients.name(facts.client),
            path = %crate::redact::mask(facts.path),
            status,
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            key = key.map(|k| k.fingerprint.as_str()),
            generation = key.map(|k| k.generation),
            "request"
        );
    }

    /// An app refused for want of a client token may be one still configured with a retired
    /// provider key: count and name it (a refusal, so not the common path).
    fn observe_unauthorized<B>(&self, req: &Request<B>, peer: SocketAddr) {
        let uri = req.uri();
        let (Some(sent), Some((index, _))) = (
            presented_credential(req.headers(), uri.query(), &self.custom_credentials),
            self.router.route(uri.path()),
        ) else {
            return;
        };
        let upstream = &self.upstreams[index];
        let key = upstream.key.current();
        if let Some(snapshot) = key.snapshot() {
            let app = App {
                headers: req.headers(),
                peer,
            };
            upstream.key.observe_client_credential(sent, app, snapshot);
        }
    }

    /// The request phase: pick the upstream, take the key snapshot (one load) and rewrite the
    /// request for the upstream; or the refusal to send back. No I/O, so the benchmark calls it too.
    pub fn route<B>(
        &self,
        req: &mut Request<B>,
        peer: SocketAddr,
    ) -> Result<Routed<'_>, Box<ProxyError>> {
        if req.method() == http::Method::CONNECT {
            return Err(ProxyError::Connect.into());
        }
        let uri = req.uri().clone();
        let Some(client) =
            self.clients
                .identify(req.headers(), uri.query(), &self.custom_credentials)
        else {
            self.observe_unauthorized(req, peer);
            return Err(ProxyError::ClientUnauthorized.into());
        };
        if !path_is_clean(uri.path()) {
            return Err(ProxyError::UncleanPath.into());
        }
        let Some((index, rest)) = self.router.route(uri.path()) else {
            return Err(ProxyError::NoRoute {
                path: uri.path().to_owned(),
                prefixes: self.upstreams.iter().map(|u| u.prefix.clone()).collect(),
            }
            .into());
        };
        let upstream = &self.upstreams[index];
        let (key, slot) = match upstream.keys.is_pool() {
            false => (upstream.key.current(), None),
            true => match upstream.pick_key(None) {
                Some((slot, key)) => (key, Some(slot)),
                None => {
                    let refusal = keys_exhausted(upstream);
                    upstream.metrics.request(client, refusal.status().as_u16());
                    return Err(refusal.into());
                }
            },
        };
        let snapshot = match &*key {
            KeyState::Ready(snapshot) => snapshot,
            KeyState::Unavailable(why) => {
                let refusal = ProxyError::NoKey {
                    upstream: Arc::clone(&upstream.name),
                    provider: upstream.provider,
                    why: why.clone(),
                };
                // Counted for the upstream the app asked (its status page shows the 503s).
                upstream.metrics.request(client, refusal.status().as_u16());
                return Err(refusal.into());
            }
        };
        if self.clients.is_empty() {
            if let Some(sent) =
                presented_credential(req.headers(), uri.query(), &self.custom_credentials)
            {
                let app = App {
                    headers: req.headers(),
                    peer,
                };
                upstream.observe_credential(slot, sent, app, snapshot);
            }
        }
        let upgrade = websocket::is_upgrade(req.headers());
        prepare(
            upstream,
            snapshot,
            req,
            rest,
            uri.query(),
            &self.custom_credentials,
            upgrade,
        )
        .map_err(ProxyError::BadUpstreamRequest)?;
        let header = |name: &HeaderName| req.headers().get(name).cloned();
        Ok(Routed {
            upgrade,
            client,
            organization: header(&OPENAI_ORGANIZATION),
            project: header(&OPENAI_PROJECT),
            upstream,
            key,
            slot,
        })
    }
}

/// A forwarded request whose handling is dropped before its answer was logged: the app left (its
/// connection closed, its HTTP/2 stream was reset) and the server let the request go, which
/// cancels the upstream exchange with it (the upstream connection closes, or the HTTP/2 stream is
/// reset). Logged once with status 499 and counted, like any other answer.
struct Abandoned<'a> {
    proxy: &'a Proxy,
    upstream: &'a Upstream,
    key: &'a KeyState,
    facts: RequestFacts<'a>,
    started: Instant,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let left = ProxyError::Client(crate::http1::ClientFault::Disconnected);
        if let Some(kind) = left.client_error() {
            self.proxy.metrics.client_error(kind);
        }
        let status = left.status().as_u16();
        let elapsed = self.started.elapsed();
        self.proxy
            .log_phase(self.upstream, self.key, self.facts, elapsed, status);
    }
}

/// Where a request rewritten for its upstream goes, with the key snapshot it was built from.
pub struct Routed<'a> {
    pub upstream: &'a Upstream,
    /// Index of the client whose token the request carried (0 without `[[clients]]`).
    pub client: usize,
    pub key: Arc<KeyState>,
    /// Which key of a pool `key` is (`None`: a `key = …` upstream).
    pub slot: Option<usize>,
    /// A WebSocket handshake (its `Upgrade` headers are kept).
    pub upgrade: bool,
    /// What the app asked for, kept for explaining an org/project mismatch.
    pub organization: Option<http::HeaderValue>,
    pub project: Option<http::HeaderValue>,
}

/// Rewrite the client's request into the upstream's: URI, credentials, hop-by-hop headers.
fn prepare<B>(
    upstream: &Upstream,
    snapshot: &KeySnapshot,
    req: &mut Request<B>,
    rest: &str,
    query: Option<&str>,
    custom_credentials: &[http::HeaderName],
    upgrade: bool,
) -> Result<(), http::uri::InvalidUri> {
    let query = query.map(strip_key_param);
    // The common case (root prefix, no base path, no `key=`) keeps the client's path and query as
    // they are, without building and re-validating a new one.
    let untouched = upstream.passes_paths_through()
        && rest.len() == req.uri().path().len()
        && match &query {
            None => true,
            Some(Cow::Borrowed(q)) => !q.is_empty(),
            Some(Cow::Owned(_)) => false,
        };
    *req.uri_mut() = match req.uri().path_and_query() {
        Some(pq) if untouched => Uri::from(pq.clone()),
        _ => upstream.uri(rest, query.as_deref())?,
    };
    // The pool picks HTTP/1.1 or HTTP/2 per connection (ALPN); the client's version is irrelevant.
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_for_upstream(headers, custom_credentials);
    if upgrade {
        websocket::restore_upgrade_headers(headers);
    }
    headers.insert(upstream.auth_header.clone(), snapshot.header.clone());
    if upstream.provider == Provider::Anthropic && !headers.contains_key(&ANTHROPIC_VERSION) {
        headers.insert(ANTHROPIC_VERSION.clone(), ANTHROPIC_DEFAULT_VERSION);
    }
    // boto3 signs even when keyproxy holds the credential: its SigV4 headers go with its key.
    if upstream.provider == Provider::Bedrock {
        for name in crate::key::aws::APP_SIGV4_HEADERS {
            headers.remove(name);
        }
    }
    Ok(())
}

/// The rare path, boxed in a function of its own: built inline, its future would be laid out in
/// the frame of every poll of `handle` (which was 56 KB of stack, probed page by page per poll).
#[inline(never)]
fn explaining<'a>(
    upstream: &'a Upstream,
    key: &'a KeyState,
    facts: RequestFacts<'a>,
    response: Response<PooledBody>,
) -> Pin<Box<dyn Future<Output = Response<ReplyBody>> + Send + 'a>> {
    Box::pin(explain::explain(upstream, key, facts, response))
}

/// The 503 for a pool none of whose keys can be used now.
fn keys_exhausted(upstream: &Upstream) -> ProxyError {
    let cooling = upstream
        .keys
        .standings()
        .iter()
        .any(|s| matches!(s, Standing::Cooling { .. }));
    ProxyError::KeysExhausted {
        upstream: Arc::clone(&upstream.name),
        provider: upstream.provider,
        keys: upstream.keys_sentence(),
        cooling,
    }
}

/// What is kept of a pool's request to send it again on another key: only a request whose body
/// is empty or was read whole.
struct Replay {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
    body: UpstreamBody,
}

impl Replay {
    fn of(req: &Request<UpstreamBody>, upgrade: bool) -> Option<Box<Replay>> {
        let body = match req.body() {
            _ if upgrade => return None,
            UpstreamBody::Empty => UpstreamBody::Empty,
            UpstreamBody::Whole(bytes) => UpstreamBody::Whole(bytes.clone()),
            // A request without a body handed to hyper (HTTP/2, h2c) has nothing to lose.
            UpstreamBody::App(body) if hyper::body::Body::is_end_stream(body) => {
                UpstreamBody::Empty
            }
            UpstreamBody::App(_) | UpstreamBody::Faulted { .. } => return None,
        };
        Some(Box::new(Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            body,
        }))
    }

    /// The request again, carrying `auth` (another key's header) instead.
    fn with_key(
        self: Box<Self>,
        upstream: &Upstream,
        auth: &http::HeaderValue,
    ) -> Request<UpstreamBody> {
        let Replay {
            method,
            uri,
            headers,
            body,
        } = *self;
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        req.headers_mut()
            .insert(upstream.auth_header.clone(), auth.clone());
        req
    }
}

/// An explained refusal (the diagnosis put its reason on it).
fn refused(response: &Response<ReplyBody>) -> bool {
    response.status().is_client_error() && response.headers().contains_key(reply::REASON_HEADER)
}

/// The key of a pool a request went out with.
#[derive(Clone, Copy)]
struct Tried<'a> {
    slot: usize,
    key: &'a KeyState,
}

/// Bench the key as the refusal's diagnosis says; the reason when it was the key's fault.
fn bench(upstream: &Upstream, tried: Tried<'_>, response: &Response<ReplyBody>) -> Option<Reason> {
    let reason = response
        .headers()
        .get(reply::REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Reason::parse)?;
    let rest = keys::retry_after(response.headers(), std::time::SystemTime::now());
    let verdict = keys::Verdict::of(reason, rest, upstream.keys.cooldown)?;
    if let Some(snapshot) = tried.key.snapshot() {
        upstream.key_refused(tried.slot, snapshot.generation, verdict);
    }
    Some(reason)
}

/// The answer after a failover, and the key of the pool that gave it (index and snapshot) when
/// another key did.
type FailedOver = (Response<ReplyBody>, Option<(usize, Arc<KeyState>)>);

/// A pool's key was refused: bench it, and send a replayable request once more on the next usable
/// key; the app then sees only that answer (marked `x-keyproxy-failover: 1`). Also returns the
/// key that answered (its index and snapshot), for the log and the key's metrics. Boxed: the rare path (see `explaining`).
#[inline(never)]
fn failing_over<'a>(
    proxy: &'a Proxy,
    upstream: &'a Upstream,
    tried: Tried<'a>,
    replay: Option<Box<Replay>>,
    facts: RequestFacts<'a>,
    response: Response<ReplyBody>,
) -> Pin<Box<dyn Future<Output = FailedOver> + Send + 'a>> {
    Box::pin(async move {
        let Some(reason) = bench(upstream, tried, &response) else {
            return (response, None);
        };
        let Some(replay) = replay else {
            return (response, None);
        };
        let Some((slot, key)) = upstream.pick_key(Some(tried.slot)) else {
            return (response, None);
        };
        let Some(snapshot) = key.snapshot() else {
            return (response, None);
        };
        let req = replay.with_key(upstream, &snapshot.header);
        let (from, to) = (upstream.keys.name(tried.slot), upstream.keys.name(slot));
        tracing::info!(request_id = facts.request_id, upstream = %upstream.name, reason = reason.as_str(), from = %from, to = %to, key = %snapshot.fingerprint, "failover: key {from} was refused ({reason}); the request goes again on key {to}");
        upstream.keys.metrics.failover(reason);
        let deadline = tokio::time::Instant::now() + upstream.response_header_timeout;
        let answer = match upstream.pool.send(req, deadline).await {
            Ok(answer) => answer,
            // The second key's exchange failed: the first answer, explained, is the truest.
            Err(_) => return (response, None),
        };
        // The refused attempt counts for its key; the answer the app gets, for the next one.
        upstream
            .keys
            .request(tried.slot, response.status().as_u16());
        drop(response);
        let mut again = proxy
            .response_phase(upstream, &key, facts, None, answer)
            .await;
        if refused(&again) {
            bench(upstream, Tried { slot, key: &key }, &again);
        }
        again
            .headers_mut()
            .insert(FAILOVER_HEADER.clone(), http::HeaderValue::from_static("1"));
        (again, Some((slot, key)))
    })
}

/// A token credential's token was refused (401): refresh it at once (concurrent refusals share
/// one refresh) and send a replayable request once more with the new token (in a pool, on the
/// same key: refreshed, it is not benched); the app sees only that answer. When no new token came
/// (the token endpoint failed too), a pool fails over as for any refused key. Also returns the
/// key (index and snapshot) that answered. Boxed: the rare path (see `explaining`).
#[inline(never)]
fn refreshing<'a>(
    proxy: &'a Proxy,
    upstream: &'a Upstream,
    tried: Tried<'a>,
    pool: bool,
    replay: Option<Box<Replay>>,
    facts: RequestFacts<'a>,
    response: Response<ReplyBody>,
) -> Pin<Box<dyn Future<Output = FailedOver> + Send + 'a>> {
    Box::pin(async move {
        let Some(seen) = tried.key.snapshot().map(|k| k.generation) else {
            return (response, None);
        };
        let life = upstream.lifecycle(tried.slot);
        let renewed = matches!(
            life.refresh(Trigger::Refresh, Some(seen)).await,
            Some(Ok(_))
        );
        let key = life.current();
        let snapshot = key.snapshot().filter(|k| renewed && k.generation != seen);
        let (replay, snapshot) = match (replay, snapshot) {
            (Some(replay), Some(snapshot)) => (replay, snapshot),
            (replay, _) if pool && refused(&response) => {
                return failing_over(proxy, upstream, tried, replay, facts, response).await;
            }
            _ => return (response, None),
        };
        tracing::info!(request_id = facts.request_id, upstream = %upstream.name, key = %snapshot.fingerprint, generation = snapshot.generation, "the upstream refused the token (401): it was refreshed and the request goes again with the new one");
        let req = replay.with_key(upstream, &snapshot.header);
        let deadline = tokio::time::Instant::now() + upstream.response_header_timeout;
        let answer = match upstream.pool.send(req, deadline).await {
            Ok(answer) => answer,
            Err(_) => return (response, None),
        };
        drop(response);
        let again = proxy
            .response_phase(upstream, &key, facts, None, answer)
            .await;
        (again, Some((tried.slot, key)))
    })
}

/// Watch successful JSON and event-stream bodies for token usage (and streams for in-band errors).
fn tap_for(
    upstream: &Upstream,
    client: usize,
    status: StatusCode,
    headers: &http::HeaderMap,
    path: &str,
) -> Option<Tap> {
    if !status.is_success() {
        return None;
    }
    let content_type = headers.get(http::header::CONTENT_TYPE)?.as_bytes();
    if content_type.starts_with(b"text/event-stream") {
        let errors = SseTap::new(Arc::clone(&upstream.name), path);
        Some(Tap::new(client, Some(errors)))
    } else if content_type.starts_with(b"application/json") {
        Some(Tap::new(client, None))
    } else {
        None
    }
}

/// Count and log an upstream failure once, then answer with it.
fn upstream_failure(
    upstream: &Upstream,
    request_id: &str,
    failure: ProxyError,
) -> Response<ReplyBody> {
    if let Some(kind) = failure.upstream_error() {
        upstream.metrics.upstream_error(kind);
        tracing::warn!(request_id, upstream = %upstream.name, reason = failure.reason().map_or("", Reason::as_str), kind = kind.as_str(), "{}", failure.message());
    }
    failure.into_response()
}

#[cfg(test)]
mod tests {
    //! The request phase has no I/O: these drive `route` directly.
    use super::*;
    use crate::config::Config;
    use crate::key::store::KeyMeta;
    use crate::key::Secret;

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50000);
    const OPENAI_KEY: &str = "sk-proj-ROUTEtestROUTEtestROUTEtestROUTEtest0001";
    const ANTHROPIC_KEY: &str = "sk-ant-api03-ROUTEtestROUTEtestROUTEtestROUTEtest0002";

    fn proxy(install_keys: bool) -> Proxy {
        let text = "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\nkey = { env = \"A\" }\n\
                    [[upstreams]]\nname = \"claude\"\nprovider = \"anthropic\"\nbase_url = \"http://127.0.0.1:9/base\"\nprefix = \"/anthropic\"\nkey = { env = \"B\" }\n";
        let config = Config::parse(std::path::Path::new("/k.toml"), text).unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let upstreams: Vec<Upstream> = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, &metrics, 1).unwrap())
            .collect();
        if install_keys {
            for (u, key) in upstreams.iter().zip([OPENAI_KEY, ANTHROPIC_KEY]) {
                u.key
                    .store
                    .install(&Secret::new(key.into()), &u.auth_prefix, KeyMeta::default())
                    .unwrap();
            }
        }
        Proxy::new(upstreams, metrics, ClientTokens::none())
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn a_request_goes_to_its_prefix_with_our_key_and_without_the_apps() {
        let proxy = proxy(true);
        let mut req = request(
            "POST",
            "/anthropic/v1/messages?key=app-secret&beta=true",
            &[
                ("x-api-key", "sk-ant-the-apps-own"),
                ("connection", "x-drop"),
                ("x-drop", "1"),
            ],
        );
        let routed = proxy.route(&mut req, PEER).ok().unwrap();
        assert_eq!(&*routed.upstream.name, "claude");
        assert_eq!(req.uri().path(), "/base/v1/messages");
        assert_eq!(
            req.uri().query(),
            Some("beta=true"),
            "the key= parameter is stripped"
        );
        assert_eq!(req.headers()["x-api-key"], ANTHROPIC_KEY);
        assert_eq!(req.headers()["anthropic-version"], "2023-06-01");
        assert!(
            !req.headers().contains_key("x-drop"),
            "hop-by-hop named by Connection"
        );

        let mut req = request("GET", "/v1/models", &[("authorization", "Bearer sk-old")]);
        let routed = proxy.route(&mut req, PEER).ok().unwrap();
        assert_eq!(&*routed.upstream.name, "openai");
        assert_eq!(
            req.headers()["authorization"],
            format!("Bearer {OPENAI_KEY}")
        );
    }

    #[test]
    fn each_refusal_before_the_upstream_is_a_proxy_error() {
        let proxy = proxy(true);
        let refused = |method: &str, uri: &str| {
            let mut req = request(method, uri, &[]);
            match proxy.route(&mut req, PEER) {
                Ok(_) => panic!("{method} {uri} was routed"),
                Err(e) => (e.status().as_u16(), e.reason().map(Reason::as_str)),
            }
        };
        assert_eq!(refused("CONNECT", "127.0.0.1:443"), (405, None));
        assert_eq!(refused("GET", "/v1/../admin"), (400, None));
        let proxy_without_keys = super::tests::proxy(false);
        let mut req = request("GET", "/v1/models", &[]);
        let Err(e) = proxy_without_keys.route(&mut req, PEER) else {
            panic!("routed without a key")
        };
        assert_eq!(
            (e.status().as_u16(), e.reason()),
            (503, Some(Reason::MissingKey))
        );
        assert!(
            e.message().contains("no usable key for upstream openai"),
            "{}",
            e.message()
        );
    }
}
