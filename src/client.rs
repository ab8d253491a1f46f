//! The connections each upstream sends through: a small pool of our own over hyper's connection API
//! (`client::conn::http1`/`http2`), dialled by hyper-rustls' connector (webpki roots plus the
//! upstream's own `ca_file`; HTTP/2 when ALPN offers it; plain `http://` allowed).
//!
//! An HTTP/1.1 connection goes back to the pool when its response body ends, from inside that body:
//! no task per request to watch for it. A connection closed by the upstream while idle is noticed by
//! hyper and skipped; a request that was never written to such a connection is retried on another.

use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{Either, Empty};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower_service::Service;

use crate::config::UpstreamConfig;
use crate::workers;

/// What goes upstream: the client's body streamed through, or nothing (probes).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

type Connector = HttpsConnector<HttpConnector>;
type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// Idle connections older than this are closed rather than reused (upstreams drop them anyway).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per upstream; more are closed when they come back.
const MAX_IDLE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream {0}: base_url has no host")]
    NoHost(String),
    #[error("upstream {upstream}: TLS setup failed: {source}")]
    Tls {
        upstream: String,
        source: rustls::Error,
    },
    #[error("upstream {upstream}: a certificate in ca_file was refused: {source}")]
    BadCa {
        upstream: String,
        source: rustls::Error,
    },
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: DNS, TCP or the TLS handshake.
    #[error("connect error: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed while the request was sent or the response awaited.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Which HTTP versions a pool may speak to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// HTTP/1.1 or HTTP/2, as ALPN decides: ordinary requests.
    Negotiated,
    /// HTTP/1.1 only, never reused: WebSocket upgrades (an HTTP/2 connection cannot carry an
    /// `Upgrade`, and an upgraded connection belongs to its socket).
    Upgrades,
}

/// One upstream's connections.
#[derive(Clone)]
pub struct Pool(Arc<Shared>);

struct Shared {
    connector: Connector,
    versions: Versions,
    scheme: Scheme,
    authority: Authority,
    /// `Host` for HTTP/1.1, computed once: the authority without a default port.
    host: HeaderValue,
    /// One per event-loop thread: a connection is only used by the thread whose runtime drives it.
    slots: Box<[Slot]>,
}

#[derive(Default)]
struct Slot {
    /// Idle HTTP/1.1 connections, most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection, shared by this thread's requests while it lives.
    h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

enum Conn {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

impl Pool {
    /// `threads`: how many event loops will send through it (see `workers`).
    pub fn new(
        cfg: &UpstreamConfig,
        authority: &Authority,
        versions: Versions,
        threads: usize,
    ) -> Result<Pool, ClientError> {
        let scheme = cfg.base_url.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let default_port = if scheme == Scheme::HTTP { 80 } else { 443 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => authority.as_str(),
            _ => authority.host(),
        };
        let host =
            HeaderValue::from_str(host).map_err(|_| ClientError::NoHost(cfg.name.clone()))?;
        Ok(Pool(Arc::new(Shared {
            connector: connector(cfg, versions)?,
            versions,
            scheme,
            authority: authority.clone(),
            host,
            slots: (0..threads.max(1)).map(|_| Slot::default()).collect(),
        })))
    }

    /// Send `req` (origin-form URI: path and query) and wait for the response head.
    pub async fn send(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                // Boxed: dialling (DNS, TCP, TLS) is a large future and the rare path; kept
                // inline it would make every request's future kilobytes bigger.
                None => (Box::pin(self.connect()).await?, false),
            };
            match conn {
                Conn::H2(mut sender) => {
                    self.absolute_form(&mut req);
                    let response = sender.send_request(req).await?;
                    return Ok(response.map(|body| PooledBody { body, lease: None }));
                }
                Conn::H1(mut sender) => {
                    req.headers_mut().insert(HOST, self.0.host.clone());
                    match sender.try_send_request(req).await {
                        Ok(response) => {
                            let lease = (self.0.versions == Versions::Negotiated).then(|| Lease {
                                sender,
                                pool: Arc::clone(&self.0),
                            });
                            return Ok(response.map(|body| PooledBody { body, lease }));
                        }
                        // A reused connection the upstream had closed: the request never left.
                        Err(mut e) => match e.take_message() {
                            Some(unsent) if reused => req = unsent,
                            _ => return Err(e.into_error().into()),
                        },
                    }
                }
            }
        }
    }

    /// A live HTTP/2 connection, or the most recently used idle HTTP/1.1 one that is ready.
    fn checkout(&self) -> Option<Conn> {
        let slot = self.0.slot();
        {
            let mut h2 = lock(&slot.h2);
            match &*h2 {
                Some(sender) if !sender.is_closed() => return Some(Conn::H2(sender.clone())),
                Some(_) => *h2 = None,
                None => {}
            }
        }
        let mut idle = lock(&slot.idle);
        while let Some(entry) = idle.pop() {
            if entry.sender.is_ready() && entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(Conn::H1(entry.sender));
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let uri = self
            .absolute(Some(PathAndQuery::from_static("/")))
            .map_err(|e| SendError::Connect(e.into()))?;
        let io: Io = self
            .0
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("upstream HTTP/2 connection ended: {e}");
                }
            });
            *lock(&self.0.slot().h2) = Some(sender.clone());
            return Ok(Conn::H2(sender));
        }
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        match self.0.versions {
            Versions::Negotiated => tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("upstream connection ended: {e}");
                }
            }),
            Versions::Upgrades => tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!("upstream connection ended: {e}");
                }
            }),
        };
        Ok(Conn::H1(sender))
    }

    /// This upstream's scheme and authority with `path_and_query`.
    fn absolute(
        &self,
        path_and_query: Option<PathAndQuery>,
    ) -> Result<Uri, http::uri::InvalidUriParts> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.0.scheme.clone());
        parts.authority = Some(self.0.authority.clone());
        parts.path_and_query = path_and_query;
        Uri::from_parts(parts)
    }

    /// HTTP/2 carries scheme and authority as pseudo-headers, taken from an absolute URI.
    fn absolute_form(&self, req: &mut Request<UpstreamBody>) {
        if let Ok(uri) = self.absolute(req.uri().path_and_query().cloned()) {
            *req.uri_mut() = uri;
        }
        req.headers_mut().remove(HOST);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An HTTP/1.1 connection lent to one response, returned when its body has ended.
struct Lease {
    sender: http1::SendRequest<UpstreamBody>,
    pool: Arc<Shared>,
}

impl Lease {
    fn give_back(mut self) {
        if self.sender.is_ready() {
            self.pool.put(self.sender);
            return;
        }
        // hyper marks the connection ready once it has seen the end of the exchange; on one
        // thread that happened before the body's end reached us, so this is the rare path.
        tokio::spawn(async move {
            if self.sender.ready().await.is_ok() {
                self.pool.put(self.sender);
            }
        });
    }
}

impl Shared {
    fn slot(&self) -> &Slot {
        &self.slots[workers::current() % self.slots.len()]
    }

    fn put(&self, sender: http1::SendRequest<UpstreamBody>) {
        let now = Instant::now();
        let mut idle = lock(&self.slot().idle);
        // The oldest sits first; let one expired connection go per return.
        if idle
            .first()
            .is_some_and(|e| now.duration_since(e.since) >= IDLE_TIMEOUT)
        {
            idle.remove(0);
        }
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since: now });
        }
    }
}

/// An upstream response body; its end puts the connection back in the pool. A body dropped
/// before its end takes the connection with it (hyper closes it).
pub struct PooledBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl PooledBody {
    fn finished(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.give_back();
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(std::pin::Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.finished(),
            Some(Ok(_)) if self.body.is_end_stream() => self.finished(),
            Some(Ok(_)) => {}
            Some(Err(_)) => self.lease = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn connector(cfg: &UpstreamConfig, versions: Versions) -> Result<Connector, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &cfg.ca_certs {
        roots
            .add(cert.clone())
            .map_err(|source| ClientError::BadCa {
                upstream: cfg.name.clone(),
                source,
            })?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|source| ClientError::Tls {
        upstream: cfg.name.clone(),
        source,
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));

    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    Ok(match versions {
        Versions::Negotiated => https.enable_http2().wrap_connector(http),
        Versions::Upgrades => https.wrap_connector(http),
    })
}
