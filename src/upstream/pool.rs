//! The connections each upstream sends through: a small pool of our own, dialled by hyper-rustls'
//! connector (webpki roots plus the upstream's own `ca_file`; HTTP/2 when ALPN offers it; plain
//! `http://` allowed).
//!
//! HTTP/1.1 exchanges run on our own connection code (`http1::client`) in the request's task;
//! HTTP/2 and WebSocket upgrades go through hyper's connection API (`client::conn::http2`/`http1`).
//! An HTTP/1.1 connection goes back to the pool when its response body ends, from inside that body.
//! A connection the upstream closed while idle is noticed at checkout and skipped; a request that
//! can safely go again (nothing of it or of the response was lost) is retried on another.
//!
//! `response_header_timeout` is counted from the end of the request body; the app's streamed
//! body ([`AppBody`]) has its own gap timer (`client_body_timeout`), and its failures are
//! [`ClientFault`]s (`SendError::Client`), never the upstream's.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::timeout_at;
use tower_service::Service;

use crate::config::UpstreamConfig;
use crate::http1::client as h1;
use crate::http1::ClientFault;
use crate::workers;

/// An upstream connection for `http1::client`: plain TCP read and written directly, or TLS through
/// hyper-rustls (the plain case skips two adapter layers per read and write).
pub enum Stream {
    Plain(tokio::net::TcpStream),
    /// Boxed: rustls's state is over a kilobyte.
    Tls(Box<TokioIo<Io>>),
}

impl From<Io> for Stream {
    fn from(io: Io) -> Stream {
        match io {
            MaybeHttpsStream::Http(tcp) => Stream::Plain(tcp.into_inner()),
            tls => Stream::Tls(Box::new(TokioIo::new(tls))),
        }
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }
}

/// The watch of a streamed app body still to be sent, if the request has one.
fn app_watch(req: &Request<UpstreamBody>) -> Option<Arc<BodyWatch>> {
    match req.body() {
        UpstreamBody::App(body) if !body.is_end_stream() => Some(Arc::clone(&body.watch)),
        // Known to fail: nothing of it goes upstream on a shared or upgraded connection.
        UpstreamBody::Faulted { fault, .. } => {
            let watch = BodyWatch::default();
            watch.set(None, Some(*fault));
            Some(Arc::new(watch))
        }
        _ => None,
    }
}

/// hyper's answer (HTTP/2, upgrades), which sends the body beside waiting for the head. Without a
/// streamed body: by `deadline`. With one: its `response_header_timeout` starts when the body has
/// ended (the app's pace before that is `client_body_timeout`'s business), and the body's fault
/// ends the wait at once.
async fn watched<T>(
    deadline: tokio::time::Instant,
    watch: Option<Arc<BodyWatch>>,
    answer: impl Future<Output = Result<T, hyper::Error>>,
) -> Result<T, SendError> {
    let Some(watch) = watch else {
        return match timeout_at(deadline, answer).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(SendError::Timeout),
        };
    };
    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    let mut answer = std::pin::pin!(answer);
    loop {
        let (ended, fault) = watch.get();
        if let Some(fault) = fault {
            return Err(SendError::Client(fault));
        }
        let due = ended.map(|at| at + timeout);
        tokio::select! {
            biased;
            answer = &mut answer => {
                return answer.map_err(|e| match (ClientFault::find(&e), watch.get().1) {
                    (Some(fault), _) | (None, Some(fault)) => SendError::Client(fault),
                    (None, None) => e.into(),
                });
            }
            () = watch.changed.notified() => {}
            () = tokio::time::sleep_until(due.unwrap_or(deadline)), if due.is_some() => {
                return Err(SendError::Timeout);
            }
        }
    }
}

/// What goes upstream: the client's body streamed through, a short body read whole with its head
/// (`http1::server`), or nothing (probes, GETs).
#[derive(Default)]
pub enum UpstreamBody {
    /// The app's request body, streamed as it arrives.
    App(AppBody),
    Whole(Option<Bytes>),
    /// A short body `http1::server` could not read whole: what arrived of its `length`, then
    /// the app's fault (as a streamed body would fail).
    Faulted {
        partial: Option<Bytes>,
        length: u64,
        fault: ClientFault,
    },
    #[default]
    Empty,
}

impl UpstreamBody {
    /// The app's streamed body, with `gap` (`client_body_timeout`) allowed between two reads.
    pub fn app(incoming: Incoming, gap: Duration) -> UpstreamBody {
        UpstreamBody::App(AppBody {
            incoming,
            gap,
            timer: None,
            moved: false,
            watch: Arc::default(),
        })
    }
}

/// The app's request body as hyper reads it, streamed on: its failures become [`ClientFault`]s
/// (never the upstream's), a gap of `client_body_timeout` between two reads is one, and its end or
/// fault is told to the sender waiting for the response (see `watched`).
pub struct AppBody {
    incoming: Incoming,
    gap: Duration,
    /// Armed the first time the body has to wait (most bodies arrive with their head).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Data arrived since the timer was last set.
    moved: bool,
    watch: Arc<BodyWatch>,
}

/// What the sender of a streamed body learns from it: when it ended, or its fault.
#[derive(Default)]
struct BodyWatch {
    state: Mutex<(Option<tokio::time::Instant>, Option<ClientFault>)>,
    changed: tokio::sync::Notify,
}

impl BodyWatch {
    fn set(&self, ended: Option<tokio::time::Instant>, fault: Option<ClientFault>) {
        let mut state = lock(&self.state);
        state.0 = state.0.or(ended);
        state.1 = state.1.or(fault);
        self.changed.notify_one();
    }

    fn get(&self) -> (Option<tokio::time::Instant>, Option<ClientFault>) {
        *lock(&self.state)
    }
}

impl AppBody {
    fn fault(&mut self, fault: ClientFault) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.watch.set(None, Some(fault));
        Poll::Ready(Some(Err(Box::new(fault))))
    }
}

/// What hyper's failure to read the app's body means: the app went away (a reset), or its
/// framing is broken (the connection ended inside the body, a bad chunk).
fn fault_of(e: &hyper::Error) -> ClientFault {
    use std::io::ErrorKind;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe => ClientFault::Disconnected,
                ErrorKind::UnexpectedEof => ClientFault::Malformed(crate::http1::BODY_CUT),
                _ => ClientFault::Malformed("invalid chunked encoding"),
            };
        }
        next = err.source();
    }
    if e.is_incomplete_message() {
        return ClientFault::Malformed(crate::http1::BODY_CUT);
    }
    if e.is_canceled() || e.is_closed() {
        return ClientFault::Disconnected;
    }
    ClientFault::Malformed("invalid framing")
}

/// A short body `http1::server` read whole with its head.
impl From<Bytes> for UpstreamBody {
    fn from(bytes: Bytes) -> UpstreamBody {
        UpstreamBody::Whole(Some(bytes))
    }
}

impl crate::http1::server::AppBody for UpstreamBody {
    fn faulted(partial: Bytes, length: u64, fault: ClientFault) -> UpstreamBody {
        UpstreamBody::Faulted {
            partial: Some(partial),
            length,
            fault,
        }
    }
}

type Connector = HttpsConnector<HttpConnector>;
type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
/// An upstream connection as tokio reads and writes it, for `http1::client`.
type H1Io = Stream;
type H1Conn = Box<h1::Connection<H1Io>>;

pub use crate::http1::BodyError;

/// Idle connections older than this are closed rather than reused (upstreams drop them anyway).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per upstream; more are closed when they come back.
const MAX_IDLE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("upstream {0}: base_url has no host")]
    NoHost(String),
    #[error("upstream {0} has no key")]
    NoKey(String),
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
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed while the request was sent or the response awaited (HTTP/2, upgrades).
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The same, on an HTTP/1.1 connection.
    #[error(transparent)]
    H1(#[from] h1::Error),
    /// No response head by the deadline.
    #[error("no response headers in time")]
    Timeout,
    /// The app's request body failed (see [`ClientFault`]): nothing is wrong with the upstream.
    #[error(transparent)]
    Client(ClientFault),
}

/// Whether the HTTP/2 error in `e`'s chain says the stream was never processed.
fn unprocessed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        next = err.source();
    }
    false
}

/// A copy of a request whose body is in hand (none, or read whole), to send again if the
/// upstream refuses it unprocessed; `None` for a streamed body, which can only go once.
fn replay_copy(req: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    let body = match req.body() {
        UpstreamBody::Empty => UpstreamBody::Empty,
        UpstreamBody::Whole(bytes) => UpstreamBody::Whole(bytes.clone()),
        UpstreamBody::App(_) | UpstreamBody::Faulted { .. } => return None,
    };
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

impl SendError {
    /// True when the upstream says it never processed the request: an HTTP/2 stream refused
    /// (`REFUSED_STREAM`) or above the last stream a graceful GOAWAY (`NO_ERROR`) accepted. Such a
    /// request may be sent again, even a POST (RFC 9113 §8.7).
    pub fn unprocessed(&self) -> bool {
        let SendError::Http(e) = self else {
            return false;
        };
        unprocessed(e)
    }

    /// True when the failure was the TLS handshake (unknown issuer, wrong name, protocol), told by
    /// the error's type: rustls' own error, raw or carried inside `io::Error`s.
    pub fn is_tls(&self) -> bool {
        let SendError::Connect(e) = self else {
            return false;
        };
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
        while let Some(err) = next {
            if err.is::<rustls::Error>() {
                return true;
            }
            // An `io::Error`'s `source()` skips the error it carries (hyper-rustls wraps
            // tokio-rustls' `io::Error` in another), so step into what it carries instead.
            next = match err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => err.source(),
            };
        }
        false
    }
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
pub struct UpstreamPool(Arc<Shared>);

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
    /// Idle HTTP/1.1 connections.
    idle: Mutex<IdleList<H1Conn>>,
    /// Woken when the upstream closes an idle connection, so it is let go at once (see `watch`).
    watcher: Mutex<Option<Waker>>,
    watching: AtomicBool,
    /// The HTTP/2 connection, shared by this thread's requests while it lives.
    h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
    /// The last dial negotiated HTTP/2: one connection serves every request, so a request that
    /// finds none waits for a dial in flight instead of dialling one of its own (after a GOAWAY,
    /// every refused request would otherwise open a connection at once).
    speaks_h2: AtomicBool,
    h2_dial: tokio::sync::Mutex<()>,
}

/// The checkout policy, apart from the sockets: the most recently returned connection goes out
/// first (it is the likeliest still open, and the others can age out); one idle longer than
/// `IDLE_TIMEOUT` is never handed out; at most `MAX_IDLE` are kept.
struct IdleList<C> {
    /// Oldest first.
    entries: Vec<Idle<C>>,
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

impl<C> Default for IdleList<C> {
    fn default() -> Self {
        IdleList {
            entries: Vec::new(),
        }
    }
}

impl<C> IdleList<C> {
    /// Keep a connection that came back at `now`; one expired connection is let go per return.
    fn put(&mut self, conn: C, now: Instant) {
        if self
            .entries
            .first()
            .is_some_and(|e| now.duration_since(e.since) >= IDLE_TIMEOUT)
        {
            self.entries.remove(0);
        }
        if self.entries.len() < MAX_IDLE {
            self.entries.push(Idle { conn, since: now });
        }
    }

    /// The most recently returned connection not yet expired at `now`; expired ones met on the
    /// way are dropped.
    fn take(&mut self, now: Instant) -> Option<C> {
        while let Some(entry) = self.entries.pop() {
            if now.duration_since(entry.since) < IDLE_TIMEOUT {
                return Some(entry.conn);
            }
        }
        None
    }

    fn retain(&mut self, mut keep: impl FnMut(&mut C) -> bool) {
        self.entries.retain_mut(|e| keep(&mut e.conn));
    }
}

enum Conn {
    H1(H1Conn),
    H2(http2::SendRequest<UpstreamBody>),
    /// A fresh HTTP/1.1 connection for one upgrade, driven by hyper.
    Upgrade(http1::SendRequest<UpstreamBody>),
}

impl UpstreamPool {
    /// `threads`: how many event loops will send through it (see `workers`).
    pub fn new(
        cfg: &UpstreamConfig,
        authority: &Authority,
        versions: Versions,
        threads: usize,
    ) -> Result<UpstreamPool, PoolError> {
        let scheme = cfg.base_url.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let default_port = if scheme == Scheme::HTTP { 80 } else { 443 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => authority.as_str(),
            _ => authority.host(),
        };
        let host = HeaderValue::from_str(host).map_err(|_| PoolError::NoHost(cfg.name.clone()))?;
        Ok(UpstreamPool(Arc::new(Shared {
            connector: connector(cfg, versions)?,
            versions,
            scheme,
            authority: authority.clone(),
            host,
            slots: (0..threads.max(1)).map(|_| Slot::default()).collect(),
        })))
    }

    /// The `Host` this pool sends over HTTP/1.1 (the authority without a default port), and
    /// its scheme: what a signature must name.
    pub fn host(&self) -> (&Scheme, &HeaderValue) {
        (&self.0.scheme, &self.0.host)
    }

    /// Send `req` (origin-form URI: path and query) and wait for the response head until
    /// `deadline`.
    pub async fn send(
        &self,
        mut req: Request<UpstreamBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut replays = 1u8;
        loop {
            let (conn, reused) = match self.checkout().await {
                Some(conn) => (conn, true),
                // Boxed: dialling (DNS, TCP, TLS) is a large future and the rare path; kept
                // inline it would make every request's future kilobytes bigger.
                None => self.dial_or_join(deadline).await?,
            };
            match conn {
                // The HTTP/1.1 connection keeps the deadline itself (one timer per connection).
                Conn::H1(conn) => match conn.send(&mut req, &self.0.host, deadline).await {
                    Ok(response) => {
                        let pool = Arc::clone(&self.0);
                        return Ok(response.map(|body| PooledBody(Inner::H1 { body, pool })));
                    }
                    // A reused connection the upstream had closed, and the request can go again.
                    Err(failed) if reused && failed.replayable => continue,
                    Err(failed) => {
                        return Err(match failed.error {
                            h1::Error::Timeout => SendError::Timeout,
                            h1::Error::RequestBody(e) => match ClientFault::find(&*e) {
                                Some(fault) => SendError::Client(fault),
                                None => h1::Error::RequestBody(e).into(),
                            },
                            error => error.into(),
                        })
                    }
                },
                Conn::H2(mut sender) => {
                    self.absolute_form(&mut req);
                    // A request the connection never took (it was closing), or a stream the
                    // upstream refused unprocessed (GOAWAY, REFUSED_STREAM: RFC 9113 §8.7), goes
                    // again on a new connection, once; the latter only with its body in hand.
                    let again = if replays > 0 { replay_copy(&req) } else { None };
                    let watch = app_watch(&req);
                    let mut returned = None;
                    let answer = async {
                        sender.try_send_request(req).await.map_err(|mut e| {
                            returned = e.take_message();
                            e.into_error()
                        })
                    };
                    let answer = watched(deadline, watch, answer).await;
                    match answer {
                        Ok(response) => {
                            return Ok(response.map(|body| PooledBody(Inner::Hyper(body))))
                        }
                        Err(e) => {
                            let retry = match (returned, again) {
                                (Some(unsent), _) if replays > 0 => unsent,
                                (_, Some(copy)) if e.unprocessed() => copy,
                                _ => return Err(e),
                            };
                            replays -= 1;
                            lock(&self.0.slot().h2).take();
                            req = retry;
                            continue;
                        }
                    }
                }
                Conn::Upgrade(mut sender) => {
                    req.headers_mut().insert(HOST, self.0.host.clone());
                    let watch = app_watch(&req);
                    let response = watched(deadline, watch, sender.send_request(req)).await?;
                    return Ok(response.map(|body| PooledBody(Inner::Hyper(body))));
                }
            }
        }
    }

    /// A live HTTP/2 connection, or the most recently used idle HTTP/1.1 one still open.
    async fn checkout(&self) -> Option<Conn> {
        if self.0.versions == Versions::Upgrades {
            return None;
        }
        let slot = self.0.slot();
        {
            let mut h2 = lock(&slot.h2);
            match &*h2 {
                Some(sender) if !sender.is_closed() => return Some(Conn::H2(sender.clone())),
                Some(_) => *h2 = None,
                None => {}
            }
        }
        loop {
            let mut conn = lock(&slot.idle).take(Instant::now())?;
            if conn.is_usable().await {
                return Some(Conn::H1(conn));
            }
        }
    }

    /// A new connection; over HTTP/2, the one another request is dialling if there is one.
    async fn dial_or_join(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<(Conn, bool), SendError> {
        let slot = self.0.slot();
        let _one_dial = if slot.speaks_h2.load(Ordering::Relaxed) {
            let guard = timeout_at(deadline, slot.h2_dial.lock())
                .await
                .map_err(|_| SendError::Timeout)?;
            if let Some(conn) = self.checkout().await {
                return Ok((conn, true));
            }
            Some(guard)
        } else {
            None
        };
        match timeout_at(deadline, self.dial()).await {
            Ok(conn) => Ok((conn?, false)),
            Err(_) => Err(SendError::Timeout),
        }
    }

    /// `connect`, boxed in a function of its own so its large future stays out of `send`'s.
    #[inline(never)]
    fn dial(&self) -> Pin<Box<dyn Future<Output = Result<Conn, SendError>> + Send + '_>> {
        Box::pin(self.connect())
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
            let slot = self.0.slot();
            *lock(&slot.h2) = Some(sender.clone());
            slot.speaks_h2.store(true, Ordering::Relaxed);
            return Ok(Conn::H2(sender));
        }
        self.0.slot().speaks_h2.store(false, Ordering::Relaxed);
        if self.0.versions == Versions::Negotiated {
            return Ok(Conn::H1(Box::new(h1::Connection::new(Stream::from(io)))));
        }
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(Conn::Upgrade(sender))
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

impl Shared {
    fn slot(&self) -> &Slot {
        &self.slots[workers::current() % self.slots.len()]
    }

    fn put(self: &Arc<Self>, mut conn: H1Conn) {
        let index = workers::current() % self.slots.len();
        let slot = &self.slots[index];
        match &*lock(&slot.watcher) {
            // Closed already, or sent something unasked: not kept.
            Some(waker) if !conn.is_idle(&mut Context::from_waker(waker)) => return,
            Some(_) => {}
            // Its first poll looks at every idle connection.
            None if !slot.watching.swap(true, Ordering::Relaxed) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(watch(Arc::downgrade(self), index));
                }
            }
            None => {}
        }
        lock(&slot.idle).put(conn, Instant::now());
    }
}

/// Each thread's idle connections are registered with this task's waker: when the upstream closes
/// one (or sends something unasked), it is dropped then, not at the next checkout. Nothing runs
/// while the connections stay quiet. Ends once the pool is gone.
async fn watch(pool: Weak<Shared>, index: usize) {
    std::future::poll_fn(|cx| {
        let Some(shared) = pool.upgrade() else {
            return Poll::Ready(());
        };
        let slot = &shared.slots[index];
        *lock(&slot.watcher) = Some(cx.waker().clone());
        lock(&slot.idle).retain(|conn| conn.is_idle(cx));
        Poll::Pending
    })
    .await
}

impl hyper::body::Body for AppBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.moved = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.watch.set(Some(tokio::time::Instant::now()), None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.fault(fault_of(&e)),
            Poll::Pending => {
                let due = || tokio::time::Instant::now() + this.gap;
                let timer = match &mut this.timer {
                    Some(timer) if this.moved => {
                        timer.as_mut().reset(due());
                        timer
                    }
                    Some(timer) => timer,
                    None => this.timer.insert(Box::pin(tokio::time::sleep(this.gap))),
                };
                this.moved = false;
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let gap = this.gap;
                        this.fault(ClientFault::BodyTimeout(gap))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::App(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Faulted { partial, fault, .. } => match partial.take() {
                Some(bytes) if !bytes.is_empty() => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                _ => Poll::Ready(Some(Err(Box::new(*fault)))),
            },
            UpstreamBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::App(body) => body.is_end_stream(),
            UpstreamBody::Whole(bytes) => bytes.is_none(),
            UpstreamBody::Faulted { .. } => false,
            UpstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::App(body) => body.size_hint(),
            UpstreamBody::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            UpstreamBody::Faulted { length, .. } => SizeHint::with_exact(*length),
            UpstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// An upstream response body. An HTTP/1.1 one puts its connection back in the pool when it ends
/// cleanly; dropped before its end, it takes the connection with it.
pub struct PooledBody(Inner);

enum Inner {
    H1 {
        body: h1::ResponseBody<H1Io>,
        pool: Arc<Shared>,
    },
    Hyper(Incoming),
}

impl PooledBody {
    /// Whether its head came over HTTP/1.1 through `http1::client`, which leaves connection-level
    /// headers out (unless `Connection` names others, when `Connection` stays).
    pub fn is_h1(&self) -> bool {
        matches!(self.0, Inner::H1 { .. })
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().0 {
            Inner::H1 { body, pool } => {
                let frame = std::task::ready!(Pin::new(&mut *body).poll_frame(cx));
                if let Some(conn) = body.into_reusable() {
                    pool.put(conn);
                }
                Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
            }
            Inner::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BodyError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::H1 { body, .. } => body.is_end_stream(),
            Inner::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::H1 { body, .. } => body.size_hint(),
            Inner::Hyper(body) => body.size_hint(),
        }
    }
}

fn connector(cfg: &UpstreamConfig, versions: Versions) -> Result<Connector, PoolError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &cfg.ca_certs {
        roots.add(cert.clone()).map_err(|source| PoolError::BadCa {
            upstream: cfg.name.clone(),
            source,
        })?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|source| PoolError::Tls {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_streams_the_upstream_refused_unprocessed_go_again() {
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert!(unprocessed(&refused));
        for processed in [
            h2::Reason::CANCEL,
            h2::Reason::INTERNAL_ERROR,
            h2::Reason::NO_ERROR,
        ] {
            assert!(!unprocessed(&h2::Error::from(processed)), "{processed:?}");
        }
        let other = std::io::Error::other("connection reset");
        assert!(!unprocessed(&other));
    }

    #[test]
    fn a_request_is_copied_for_a_replay_only_with_its_body_in_hand() {
        let mut whole = Request::new(UpstreamBody::Whole(Some(Bytes::from_static(b"{}"))));
        *whole.method_mut() = http::Method::POST;
        whole
            .headers_mut()
            .insert("x-a", HeaderValue::from_static("1"));
        let copy = replay_copy(&whole).unwrap();
        assert_eq!(copy.method(), http::Method::POST);
        assert_eq!(copy.headers()["x-a"], "1");
        assert!(matches!(copy.body(), UpstreamBody::Whole(Some(b)) if b == "{}"));
        assert!(replay_copy(&Request::new(UpstreamBody::Empty)).is_some());
    }

    #[test]
    fn checkout_takes_the_most_recent_fresh_connection_and_drops_expired_ones() {
        let start = Instant::now();
        let mut idle = IdleList::default();
        idle.put(1, start);
        idle.put(2, start + Duration::from_secs(10));
        idle.put(3, start + Duration::from_secs(20));
        let now = start + Duration::from_secs(30);
        assert_eq!(idle.take(now), Some(3), "last in, first out");
        assert_eq!(idle.take(now), Some(2));
        // 1 is 95 s old at this point: expired, dropped, nothing handed out.
        assert_eq!(
            idle.take(start + IDLE_TIMEOUT + Duration::from_secs(5)),
            None
        );
        assert!(idle.entries.is_empty());
    }

    #[test]
    fn a_return_lets_one_expired_connection_go_and_the_list_is_bounded() {
        let start = Instant::now();
        let mut idle = IdleList::default();
        idle.put(1, start);
        idle.put(2, start);
        idle.put(3, start + IDLE_TIMEOUT);
        assert_eq!(idle.entries.len(), 2, "the oldest expired one went");
        for n in 0..MAX_IDLE * 2 {
            idle.put(n, start + IDLE_TIMEOUT);
        }
        assert_eq!(idle.entries.len(), MAX_IDLE);
        idle.retain(|c| *c % 2 == 0);
        assert!(idle.entries.iter().all(|e| e.conn % 2 == 0));
    }
}
