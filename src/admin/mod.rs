//! The admin listener: `GET /healthz /readyz /status /metrics` for people, probes and Prometheus (no
//! token), and `POST /keys/{upstream}` to rotate a key, which always requires the admin token.

pub mod pool;
pub mod recent;
pub mod status_page;

pub use pool::resume_retirements;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::key::expiry;
use crate::key::lifecycle::RotateOptions;
use crate::key::rotation::{Refusal, Trigger};
use crate::key::store::digest;
use crate::key::KeyState;
use crate::key::{token, KeySource, Secret};
use crate::proxy::guard::{Guard, Verdict};
use crate::proxy::reply;
use crate::proxy::Proxy;
use crate::reason::Reason;
use crate::state::{Query, Store};
use crate::time::rfc3339_string;
use crate::upstream::keys::Standing;
use crate::upstream::Upstream;

/// The `User-Agent` prefix `keyproxy rotate` sends.
pub const ROTATE_USER_AGENT: &str = "keyproxy-rotate/";

/// `?expires_at=2027-12-01` or `?max_age=365d`: the new key's expiry.
fn expiry_param(query: &str) -> Result<Option<SystemTime>, String> {
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value
            .replace("%3A", ":")
            .replace("%3a", ":")
            .replace("%2B", "+");
        match name {
            "expires_at" => {
                return crate::time::parse_timestamp(&value).map(Some).map_err(|e| {
                    format!("expires_at={value:?}: {e}; write 2027-12-01 or 2027-12-01T09:00:00Z")
                });
            }
            "max_age" => {
                let age = crate::time::parse_duration(&value)
                    .map_err(|e| format!("max_age={value:?}: {e}; write e.g. 365d"))?;
                return pool::writable(SystemTime::now().checked_add(age))
                    .map(Some)
                    .ok_or_else(|| {
                        format!("max_age={value:?} ends beyond any date; write e.g. 365d")
                    });
            }
            _ => {}
        }
    }
    Ok(None)
}

/// A key is a few hundred bytes at most; anything bigger is not a key.
pub const MAX_KEY_BODY: usize = 4096;

/// The admin token, kept only as a hash.
pub enum AdminToken {
    NotConfigured,
    Unreadable(String),
    Hash([u8; 32]),
}

impl AdminToken {
    pub async fn load(source: Option<&KeySource>) -> AdminToken {
        let Some(source) = source else {
            return AdminToken::NotConfigured;
        };
        match token::load(source).await {
            Ok(hash) => AdminToken::Hash(hash),
            Err(e) => {
                let why = format!("admin_token: {e}; admin mutations stay disabled");
                tracing::error!("{why}");
                AdminToken::Unreadable(why)
            }
        }
    }
}

pub struct Admin {
    proxy: Arc<Proxy>,
    token: AdminToken,
    /// Host and browser checks; the admin port answers no web page at all.
    guard: Guard,
    started_at: SystemTime,
    started: Instant,
    /// The state store, or why there is none.
    state: Result<Arc<Store>, String>,
    /// The status page's "last hour".
    recent: recent::Recent,
}

impl Admin {
    pub fn new(proxy: Arc<Proxy>, token: AdminToken, guard: Guard) -> Admin {
        Admin {
            proxy,
            token,
            guard,
            started_at: SystemTime::now(),
            started: Instant::now(),
            state: Err("no state store attached".into()),
            recent: recent::Recent::new(SystemTime::now()),
        }
    }

    pub fn with_state(mut self, state: Result<Arc<Store>, String>) -> Admin {
        self.state = state;
        self
    }

    /// Guard first (no web page, no foreign Host), then the endpoint.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if let Verdict::Refused(refusal) = self.guard.check(&req) {
            self.proxy.metrics.refused(true, refusal.reason);
            tracing::info!(path = req.uri().path(), status = refusal.status.as_u16(), reason = %refusal.reason, "admin: {}", refusal.message);
            let mut resp = admin_error(refusal.status, refusal.reason.as_str(), &refusal.message);
            resp.headers_mut().insert(
                reply::REASON_HEADER,
                HeaderValue::from_static(refusal.reason.as_str()),
            );
            return resp;
        }
        self.endpoint(req).await
    }

    async fn endpoint(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let read = req.method() == Method::GET || req.method() == Method::HEAD;
        match (read, path.as_str()) {
            (true, "/healthz") => reply::text(StatusCode::OK, "ok\n"),
            (true, "/readyz") => self.readyz(),
            (true, "/status") => json_response(StatusCode::OK, &self.status()),
            (true, "/") => {
                let mut resp = reply::text(
                    StatusCode::OK,
                    crate::admin::status_page::render(&self.status()),
                );
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                resp
            }
            (true, "/metrics") => {
                let mut resp = reply::text(StatusCode::OK, self.proxy.metrics.render());
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            (false, p) if req.method() == Method::POST && p.starts_with("/keys/") => {
                let name = p.trim_start_matches("/keys/").to_owned();
                match name
                    .strip_suffix("/reinstate")
                    .and_then(|r| r.split_once('/'))
                {
                    Some((upstream, key)) => self.reinstate(upstream, key, &req),
                    None => self.post_key(&name, req).await,
                }
            }
            (_, p) if p.starts_with("/keys/") => reply::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST with the new key as the body\n",
            ),
            (false, _) => reply::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
            _ => reply::text(
                StatusCode::NOT_FOUND,
                "not found; try /, /healthz, /readyz, /status, /metrics or POST /keys/{upstream}\n",
            ),
        }
    }

    fn readyz(&self) -> Response<Full<Bytes>> {
        let mut problems = String::new();
        for upstream in &self.proxy.upstreams {
            // A pool is ready while any of its keys is loaded (the first key's problem is shown).
            let any = upstream.lifecycles().any(|k| k.key_problem().is_none());
            if let Some(why) = upstream.key.key_problem().filter(|_| !any) {
                problems.push_str(&format!(
                    "upstream {}: no usable key ({}): {}\n",
                    upstream.name, why.reason, why.message
                ));
            }
        }
        // Not a reason to take keyproxy out of service: it serves without the store.
        let state = match &self.state {
            Ok(_) => String::new(),
            Err(why) => format!("warning: {why}\n"),
        };
        if problems.is_empty() {
            reply::text(StatusCode::OK, format!("ready\n{state}"))
        } else {
            reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready\n{problems}{state}"),
            )
        }
    }

    /// `POST /keys/{upstream}/{name}/reinstate`: an operator says a benched key of a pool is fine.
    fn reinstate<B>(&self, upstream: &str, key: &str, req: &Request<B>) -> Response<Full<Bytes>> {
        if let Some(refused) = self.refuse_unauthorized(req) {
            return refused;
        }
        let Some(u) = self.proxy.upstream(upstream) else {
            return admin_error(
                StatusCode::NOT_FOUND,
                "unknown_upstream",
                &format!("no upstream named {upstream:?} is configured"),
            );
        };
        if let Err(refused) = u.reinstate_key(key) {
            return pool::membership_error(u, refused);
        }
        json_response(
            StatusCode::OK,
            &json!({"upstream": upstream, "key": key, "state": "active"}),
        )
    }

    /// `POST /keys/{upstream}[?probe=true]`, body = the new key as text.
    async fn post_key(&self, name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if let Some(refused) = self.refuse_unauthorized(&req) {
            return refused;
        }
        if !key_body_type(req.headers()) {
            return admin_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the new key as the raw body with Content-Type: text/plain (or application/octet-stream), e.g. curl --data-binary @new-key.txt -H 'Content-Type: text/plain' …",
            );
        }
        let Some(upstream) = self.proxy.upstream(name) else {
            return admin_error(
                StatusCode::NOT_FOUND,
                "unknown_upstream",
                &format!("no upstream named {name:?} is configured"),
            );
        };
        let query = req.uri().query().unwrap_or("").to_owned();
        let query = query.as_str();
        let probe = query
            .split('&')
            .any(|p| p == "probe=true" || p == "probe=1" || p == "probe");
        let expires_at = match expiry_param(query) {
            Ok(at) => at,
            Err(message) => {
                return admin_error(StatusCode::BAD_REQUEST, "bad_expiry", &message);
            }
        };
        // `?name=` picks the key of a pool (default: the first); `mode=add|retire` change who is
        // in the pool (`admin::pool`), `mode=replace` (the default) rotates a key in place.
        let param = |field: &str| pool::param(query, field);
        let mode = param("mode").unwrap_or("replace");
        if !matches!(mode, "replace" | "add" | "retire") {
            return admin_error(
                StatusCode::BAD_REQUEST,
                "unsupported_mode",
                &format!("mode={mode:?}: use mode=add (a new key joins the pool), mode=replace (the default: the named key is rotated in place) or mode=retire (the named key leaves the pool)"),
            );
        }
        if mode == "retire" {
            return pool::retire(upstream, query, from_cli(&req)).await;
        }
        let slot = match (mode, param("name")) {
            ("add", _) => 0,
            (_, None) => 0,
            (_, Some(key)) => match upstream.keys.position(key) {
                Some(slot) => slot,
                None => return pool::membership_error(upstream, upstream.unknown_key(key)),
            },
        };
        if let Err(refused) = upstream.replaceable(slot) {
            return pool::membership_error(upstream, refused);
        }
        let key = upstream.lifecycle(slot);
        let from_cli = from_cli(&req);
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_KEY_BODY) {
            return too_large();
        }
        let body = match Limited::new(req.into_body(), MAX_KEY_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
            Err(e) => {
                return admin_error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    &format!("could not read the request body: {e}"),
                )
            }
        };
        let Ok(text) = String::from_utf8(body.to_vec()) else {
            return admin_error(
                StatusCode::BAD_REQUEST,
                "not_utf8",
                "the body must be the key as UTF-8 text",
            );
        };
        let mut text = text;
        crate::key::source::trim_one_newline(&mut text);
        let secret = Secret::new(text);
        let options = RotateOptions {
            ask_provider: probe,
            from_cli,
            expires_at,
        };
        if mode == "add" {
            return pool::add(self, upstream, query, secret, options).await;
        }
        let rotated = key
            .rotate_with(secret, Trigger::Admin, options, upstream)
            .await;
        // A quarantined key rotated in place serves again at once.
        upstream.refresh_keys();
        match rotated {
            Ok(done) => json_response(
                StatusCode::OK,
                &json!({
                    "upstream": &*upstream.name,
                    "key": &*upstream.keys.name(slot),
                    "result": if done.changed { "applied" } else { "unchanged" },
                    "fingerprint": done.fingerprint.as_str(),
                    "generation": done.generation,
                    "probed": probe || key.validate_on_rotate(),
                    "expires_at": key.current().snapshot().and_then(|k| k.expires_at).map(rfc3339_string),
                    "warnings": done.warnings.iter().map(|w| json!({"code": w.code.as_str(), "message": w.message})).collect::<Vec<_>>(),
                }),
            ),
            Err(refusal) => {
                let status = match &refusal {
                    Refusal::ProbeFailed { .. } => StatusCode::BAD_GATEWAY,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                let kept = key.current();
                let kept = kept.snapshot().map(
                    |k| json!({"fingerprint": k.fingerprint.as_str(), "generation": k.generation}),
                );
                json_response(
                    status,
                    &json!({
                        "error": {"message": refusal.to_string(), "type": "key_rejected", "code": refusal.code()},
                        "upstream": &*upstream.name,
                        "kept": kept,
                    }),
                )
            }
        }
    }

    /// Admin mutations need `Authorization: Bearer <admin_token>`, compared in constant time.
    /// `Some(refusal)` when the request may not proceed.
    fn refuse_unauthorized<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let expected = match &self.token {
            AdminToken::Hash(h) => h,
            AdminToken::NotConfigured => {
                return Some(admin_error(
                    StatusCode::FORBIDDEN,
                    "admin_disabled",
                    "admin mutations are disabled: set [server] admin_token = { env = \"KEYPROXY_ADMIN_TOKEN\" } (or { file = \"PATH\" }) in the config, restart, and send Authorization: Bearer <token>",
                ))
            }
            AdminToken::Unreadable(why) => {
                return Some(admin_error(StatusCode::FORBIDDEN, "admin_disabled", why))
            }
        };
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| digest(t.trim()));
        match presented {
            Some(p) if bool::from(p.ct_eq(expected)) => None,
            _ => {
                let mut resp = admin_error(
                    StatusCode::UNAUTHORIZED,
                    "admin_unauthorized",
                    "this needs Authorization: Bearer <admin token> (the value of [server] admin_token)",
                );
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Some(resp)
            }
        }
    }

    /// The `/status` document: which key is live for each upstream, and its recent history.
    pub fn status(&self) -> Value {
        let now = SystemTime::now();
        let store = self.state.as_ref().ok();
        let mut upstreams: Vec<Value> = self
            .proxy
            .upstreams
            .iter()
            .map(|u| upstream_status(u, store, now))
            .collect();
        let counts: Vec<recent::Counts> = self
            .proxy
            .upstreams
            .iter()
            .map(|u| recent::Counts {
                by_status: u.metrics.requests_by_status(),
                tokens: u.metrics.tokens_totals(),
            })
            .collect();
        let (since, window) = self.recent.since_an_hour_ago(now, &counts);
        for ((up, total), last) in upstreams.iter_mut().zip(&counts).zip(&window) {
            up["tokens"] = json!({"input": total.tokens.0, "output": total.tokens.1});
            up["last_hour"] = json!({
                "since": rfc3339_string(since),
                "by_status": last.by_status.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "tokens": {"input": last.tokens.0, "output": last.tokens.1},
            });
        }
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": rfc3339_string(self.started_at),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "state": match &self.state {
                Ok(s) => json!({"path": s.path().display().to_string(), "ok": true}),
                Err(why) => json!({"ok": false, "problem": why}),
            },
            "history": store.map(|s| history(s, None)).unwrap_or_default(),
            "upstreams": upstreams,
        })
    }
}

/// The last 20 rotations and refusals from the store (all upstreams, or one).
fn history(store: &Store, upstream: Option<&str>) -> Value {
    let query = Query {
        upstream: upstream.map(str::to_owned),
        since: None,
        limit: 20,
    };
    match store.rotations(&query) {
        Ok(rows) => json!(rows),
        Err(e) => json!({"problem": format!("cannot read the history: {e}")}),
    }
}

/// Retired keys with the apps seen sending each: from the store when there is one (it remembers
/// across restarts), else from memory. In a pool, every key's (each under `upstream/name`).
fn retired_status(u: &Upstream, store: Option<&Arc<Store>>) -> Value {
    let keys: Vec<_> = (0..u.keys.count()).map(|i| u.lifecycle(i)).collect();
    let mut names: Vec<&str> = keys.iter().map(|k| k.history_name()).collect();
    names.dedup();
    if let Some(store) = store {
        let mut rows = Vec::new();
        for name in &names {
            let query = Query {
                upstream: Some((*name).to_owned()),
                since: None,
                limit: 50,
            };
            match store.retired(&query) {
                Ok(found) => rows.extend(found),
                Err(_) => {
                    rows.clear();
                    break;
                }
            }
        }
        if !rows.is_empty() || names.len() == 1 {
            return json!(rows);
        }
    }
    json!(keys
        .iter()
        .flat_map(|k| {
            k.retired()
                .iter()
                .map(|r| {
                    json!({
                        "fingerprint": r.fingerprint.as_str(),
                        "generation": r.generation,
                        "retired_at": rfc3339_string(r.retired_at),
                        "sightings": [],
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>())
}

fn upstream_status(u: &Upstream, store: Option<&Arc<Store>>, now: SystemTime) -> Value {
    let state = u.key.current();
    let mut key = match state.snapshot() {
        Some(k) => json!({
            "usable": true,
            "fingerprint": k.fingerprint.as_str(),
            "generation": k.generation,
            "source": &*k.source,
            "loaded_at": rfc3339_string(k.loaded_at),
            "age_seconds": now.duration_since(k.loaded_at).map(|d| d.as_secs()).unwrap_or(0),
            "expires_at": k.expires_at.map(rfc3339_string),
            "days_to_expiry": k.expires_at.map(|at| (expiry::days_left(at, now) * 10.0).round() / 10.0),
            "warnings": k.warnings.iter().map(|w| json!({"code": w.code.as_str(), "message": w.message})).collect::<Vec<_>>(),
        }),
        None => {
            let why = u.key.key_problem();
            json!({
                "usable": false,
                "source": u.key.source().to_string(),
                "problem": why.map(|w| json!({"reason": w.reason.as_str(), "message": w.message})),
            })
        }
    };
    if let Some(k) = state.snapshot() {
        credential_status(k, &mut key);
    }
    let token_refresh = u.key.credential_status();
    if let Some(token) = &token_refresh {
        key["credential"] = json!(token.kind);
    }
    json!({
        "name": &*u.name,
        "provider": u.provider.as_str(),
        "base_url": u.base_url.to_string(),
        "prefix": u.prefix,
        "key": key,
        "keys": keys_status(u),
        "last_rotation": u.key.last_attempt(),
        "token_refresh": token_refresh,
        "retired_keys": retired_status(u, store),
        "requests": {
            "total": u.metrics.requests_total(),
            "in_flight": u.metrics.in_flight.get(),
            "auth_failures": u.metrics.auth_failures_total(),
        },
        "client_credentials": u.metrics.credential_counts(),
        "recent_diagnoses": u.recent_diagnoses(),
    })
}

/// Which credential a Bedrock upstream holds (`aws`, `bedrock_api_key`) and the region AWS
/// credentials sign for; nothing for other keys.
fn credential_status(k: &crate::key::KeySnapshot, key: &mut Value) {
    if let Some(kind) = crate::key::aws::snapshot_kind(k) {
        key["credential"] = json!(kind);
    }
    if let Some(aws) = &k.aws {
        key["region"] = json!(aws.region);
    }
}

/// Every key of the upstream (one for `key = …`) with its state, cause and until-when.
fn keys_status(u: &Upstream) -> Value {
    let standings = u.keys.standings();
    let retiring = u.keys.retiring();
    let rows: Vec<Value> = standings
        .iter()
        .enumerate()
        .map(|(i, standing)| {
            let key = u.lifecycle(i).current();
            let snapshot = key.snapshot();
            let mut row = json!({
                "name": &*u.keys.name(i),
                "fingerprint": snapshot.map(|k| k.fingerprint.as_str()),
                "generation": snapshot.map(|k| k.generation),
                "state": match (snapshot, standing) {
                    (_, Standing::Retired { .. }) | (Some(_), _) => standing.as_str(),
                    (None, _) => "unavailable",
                },
            });
            if let Some((_, at)) = retiring.iter().find(|(n, _)| **n == *u.keys.name(i)) {
                row["retires_at"] = json!(rfc3339_string(*at));
            }
            if let Some(at) = snapshot.and_then(|k| k.expires_at) {
                row["expires_at"] = json!(rfc3339_string(at));
            }
            // Each token credential of a pool refreshes on its own schedule.
            if let Some(token) = u.lifecycle(i).credential_status() {
                row["token_refresh"] = json!(token);
            }
            match (standing, &*key) {
                (
                    Standing::Retired {
                        at, fingerprint, ..
                    },
                    _,
                ) => {
                    row["fingerprint"] = json!(fingerprint);
                    row["since"] = json!(rfc3339_string(*at));
                }
                (Standing::Quarantined { cause, at, .. }, _) => {
                    row["cause"] = json!(cause.as_str());
                    row["since"] = json!(rfc3339_string(*at));
                }
                (Standing::Cooling { until_wall, .. }, _) => {
                    row["cause"] = json!(Reason::RateLimited.as_str());
                    row["until"] = json!(rfc3339_string(*until_wall));
                }
                (_, KeyState::Unavailable(why)) => {
                    row["cause"] = json!(why.reason.as_str());
                    row["message"] = json!(why.message);
                }
                _ => {}
            }
            row
        })
        .collect();
    json!(rows)
}

fn too_large() -> Response<Full<Bytes>> {
    admin_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("the body must be just the key (at most {MAX_KEY_BODY} bytes)"),
    )
}

fn admin_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": "admin_error", "code": code}}),
    )
}

/// `POST /keys/…` takes the key as a raw body: `text/plain` (what `keyproxy rotate` sends),
/// `application/octet-stream`, or no type. A form's types are refused, a second wall behind the
/// Origin check against a page posting to the admin port.
fn key_body_type(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return true;
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "text/plain" || essence == "application/octet-stream"
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let text = value.to_string();
    let text = crate::redact::mask(&text);
    let mut resp = Response::new(Full::new(Bytes::from(text.into_owned())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `keyproxy rotate` says who it is, so the history can tell the CLI from other clients.
fn from_cli<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with(ROTATE_USER_AGENT))
}
