//! Listeners and lifecycle: bind the proxy and admin ports, load the keys, serve HTTP/1.1 and h2c,
//! and on shutdown stop accepting and let in-flight requests and streams finish within the grace.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body as HttpBody, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admin::{Admin, AdminToken};
use crate::config::Config;
use crate::metrics::{ClientError, Metrics};
use crate::proxy::client_tokens::ClientTokens;
use crate::proxy::guard::Guard;
use crate::proxy::Proxy;
use crate::state::Store;
use crate::upstream::pool::UpstreamBody;
use crate::upstream::Upstream;
use crate::workers::{self, Job, Workers};
use crate::{http1, key};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Not a `#[source]`: the sentence already says it, and a chain would say it twice.
    #[error("cannot listen on {addr} ({what}): {}", bind_failure(*addr, error))]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        error: std::io::Error,
    },
    #[error(transparent)]
    Pool(#[from] crate::upstream::pool::PoolError),
    #[error(transparent)]
    ClientToken(#[from] crate::proxy::client_tokens::ClientTokenError),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}

/// A bound, ready-to-run keyproxy.
pub struct Server {
    proxy: Arc<Proxy>,
    admin: Arc<Admin>,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown_grace: Duration,
    client_header_timeout: Duration,
    client_body_timeout: Duration,
    /// Key-file watching starts at bind, so a change right after startup is not missed.
    watcher: AbortOnDrop,
    /// The event-loop threads that serve proxy connections besides this runtime.
    workers: Workers,
    /// One task per token credential, replacing its token before it expires.
    refreshers: Vec<AbortOnDrop>,
}

/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often expiry is re-checked; warnings are at day granularity.
const EXPIRY_CHECK: Duration = Duration::from_secs(3600);

impl Server {
    /// Build the upstreams, load and lint every key (a missing or bad key is logged, not fatal) and
    /// bind both ports.
    pub async fn bind(config: &Config) -> Result<Server, ServerError> {
        let clients = ClientTokens::load(&config.clients).await?;
        let metrics = Arc::new(Metrics::with_clients(clients.names())?);
        let loops = workers::count(config.server.workers);
        let mut upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, &metrics, loops + 1))
            .collect::<Result<Vec<_>, _>>()?;
        for upstream in &mut upstreams {
            upstream.rotate_command = config.server.admin_token.is_some();
        }
        let server = &config.server;
        let proxy = Arc::new(
            Proxy::new(upstreams, metrics, clients).with_guard(Guard::new(
                server.listen.ip(),
                &server.allowed_hosts,
                &server.allowed_origins,
            )),
        );
        let state = open_state(server.state_dir.as_deref());
        for upstream in &proxy.upstreams {
            if let Ok(store) = &state {
                for key in upstream.lifecycles() {
                    key.attach_history(Arc::clone(store) as Arc<dyn key::history::KeyHistory>);
                }
                upstream.attach_store(Arc::clone(store));
                upstream
                    .metrics
                    .attach_usage(store.usage_sink(&upstream.name));
            }
            // Keys added to a pool at run time join it again before anything is loaded.
            upstream.restore_members();
            for key in upstream.lifecycles() {
                if let Some(refresher) = key.refresher() {
                    refresher
                        .attach_explainer(Arc::new(crate::diagnose::token_endpoint::TokenEndpoint));
                }
            }
        }
        // Failures are logged and recorded by the upstream; the proxy starts regardless. All at
        // once: a token endpoint that never answers delays the start by its timeout once, not
        // once per credential.
        let loads = proxy.upstreams.iter().flat_map(|u| u.lifecycles());
        all(loads.map(|key| key.load_initial()).collect()).await;
        for upstream in &proxy.upstreams {
            upstream.refresh_keys();
            upstream.restore_standings();
        }
        let token = AdminToken::load(config.server.admin_token.as_ref()).await;
        let admin_guard = Guard::new(server.admin_listen.ip(), &server.allowed_hosts, &[]);
        let admin = Arc::new(Admin::new(Arc::clone(&proxy), token, admin_guard).with_state(state));
        crate::admin::resume_retirements(&proxy);
        let proxy_for_watch = Arc::clone(&proxy);
        for upstream in &config.upstreams {
            for warning in upstream
                .warnings()
                .into_iter()
                .chain(upstream.token_warnings())
            {
                tracing::warn!(upstream = %upstream.name, "{warning}");
            }
        }
        Ok(Server {
            proxy,
            admin,
            proxy_listener: listen_on(config.server.listen, "server.listen").await?,
            admin_listener: listen_on(config.server.admin_listen, "server.admin_listen").await?,
            shutdown_grace: config.server.shutdown_grace,
            client_header_timeout: config.server.client_header_timeout,
            client_body_timeout: config.server.client_body_timeout,
            watcher: AbortOnDrop(key::watch::spawn(
                Arc::clone(&proxy_for_watch),
                config.server.key_reload_interval,
                config.server.key_settle,
            )),
            workers: Workers::start(loops).map_err(ServerError::Workers)?,
            refreshers: key::minted::refresh::spawn(Arc::clone(&proxy_for_watch))
                .into_iter()
                .map(AbortOnDrop)
                .collect(),
        })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_listener
            .local_addr()
            .unwrap_or(([0, 0, 0, 0], 0).into())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(([0, 0, 0, 0], 0).into())
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Serve until `shutdown` resolves, then drain for at most `shutdown_grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(addr = %self.proxy_addr(), "proxy listening");
        tracing::info!(addr = %self.admin_addr(), "admin listening");
        let expiry = AbortOnDrop(tokio::spawn(check_expiry(Arc::clone(&self.proxy))));
        let watcher = self.watcher;
        // Tokens keep being refreshed while in-flight requests drain.
        let refreshers = self.refreshers;
        let (stop_tx, stop_rx) = watch::channel(false);
        let grace = self.shutdown_grace;
        let header_timeout = self.client_header_timeout;
        let timeouts = http1::server::Timeouts {
            header: header_timeout,
            body: self.client_body_timeout,
        };
        let builder = hyper_builder(header_timeout);
        let proxy = Arc::clone(&self.proxy);
        let closing = Arc::new(http1::server::Shutdown::default());
        let (proxy_builder, proxy_closing) = (Arc::clone(&builder), Arc::clone(&closing));
        // The common request shapes are served by `http1::server`; the rest of a connection goes to
        // hyper.
        let proxy_connection = move |stream, peer, watcher| {
            let (proxy, builder) = (Arc::clone(&proxy), Arc::clone(&proxy_builder));
            let closing = Arc::clone(&proxy_closing);
            async move {
                let answer = |req| proxy.handle(req, peer);
                let io = match http1::server::serve(stream, answer, timeouts, &closing).await {
                    http1::server::Ended::Closed => return,
                    http1::server::Ended::HeaderTimeout(io) => {
                        proxy.metrics.client_error(ClientError::HeaderTimeout);
                        drop(io);
                        return;
                    }
                    http1::server::Ended::HandOff(io) => io,
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let proxy = Arc::clone(&proxy);
                    async move {
                        let req = req.map(|body| UpstreamBody::app(body, timeouts.body));
                        Ok::<_, Infallible>(proxy.handle(req, peer).await)
                    }
                });
                hyper_connection(io, peer, service, &builder, watcher).await;
            }
        };
        let admin = Arc::clone(&self.admin);
        let admin_connection = move |stream: TcpStream, peer: SocketAddr, watcher| {
            let (admin, builder) = (Arc::clone(&admin), Arc::clone(&builder));
            async move {
                if !sends_something(&stream, peer, header_timeout).await {
                    return;
                }
                let service = service_fn(move |req: Request<Incoming>| {
                    let admin = Arc::clone(&admin);
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                hyper_connection(stream, peer, service, &builder, watcher).await;
            }
        };
        let workers = Arc::new(self.workers);
        let proxy_task = tokio::spawn(serve(
            self.proxy_listener,
            proxy_connection,
            stop_rx.clone(),
            grace,
            Arc::clone(&workers),
        ));
        let admin_task = tokio::spawn(serve(
            self.admin_listener,
            admin_connection,
            stop_rx,
            grace,
            Arc::new(Workers::none()),
        ));
        shutdown.await;
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(grace = %humantime::format_duration(grace), "shutting down: no new connections; draining in-flight requests");
        drop(watcher);
        drop(expiry);
        let _ = stop_tx.send(true);
        closing.begin();
        let _ = tokio::join!(proxy_task, admin_task);
        let sockets = &self.proxy.sockets;
        if tokio::time::timeout_at(deadline, sockets.drained())
            .await
            .is_err()
        {
            tracing::warn!(
                open = sockets.open(),
                "shutdown grace elapsed; closing the WebSockets still open"
            );
            sockets.close_all();
            let _ = tokio::time::timeout(Duration::from_secs(1), sockets.drained()).await;
        }
        if let Ok(workers) = Arc::try_unwrap(workers) {
            workers.finish().await;
        }
        drop(refreshers);
        tracing::info!("shutdown complete");
    }
}

/// The state store, or why there is none (keyproxy serves either way; `/readyz` and `check` say so).
fn open_state(dir: Option<&std::path::Path>) -> Result<Arc<Store>, String> {
    let Some(dir) = dir else {
        let why = "no state directory ($HOME is not set; set [server] state_dir or $KEYPROXY_STATE_DIR): rotations and retired keys are forgotten at restart".to_owned();
        tracing::warn!("{why}");
        return Err(why);
    };
    match Store::open(dir) {
        Ok(store) => {
            tracing::info!(path = %store.path().display(), "state store open");
            Ok(Arc::new(store))
        }
        Err(e) => {
            let why = format!("the state store cannot be opened ({e}): keyproxy serves, but forgets rotations and retired keys at restart");
            tracing::warn!("{why}");
            Err(why)
        }
    }
}

/// Bind a listening socket (`run`, and `check` to find a port that is taken before `run` does).
pub async fn listen_on(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServerError::Bind { addr, what, error })
}

/// Why a port could not be had, with the likeliest cause of a taken one.
fn bind_failure(addr: SocketAddr, error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "port {} is in use (is another keyproxy running? `keyproxy health`)",
            addr.port()
        ),
        _ => error.to_string(),
    }
}

async fn check_expiry(proxy: Arc<Proxy>) {
    let mut every = tokio::time::interval(EXPIRY_CHECK);
    loop {
        every.tick().await;
        let now = std::time::SystemTime::now();
        for upstream in &proxy.upstreams {
            for key in upstream.lifecycles() {
                key.check_expiry(now);
            }
            // Also where a quarantined key whose source changed rejoins, when no request asks.
            upstream.refresh_keys();
        }
    }
}

/// hyper's HTTP/1.1 and h2c server, with upgrades: the admin port, and proxy connections
/// `http1::server` hands over. (`http1::server` enforces `client_header_timeout` before a
/// hand-over; after it, as on the admin port, hyper's own header timeout does.) Request heads
/// larger than `http1::MAX_HEAD` get 431; LLM API requests carry a few hundred bytes of headers.
fn hyper_builder(header_timeout: Duration) -> Arc<auto::Builder<TokioExecutor>> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(http1::MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(http1::MAX_HEAD as u32);
    Arc::new(builder)
}

/// Accept connections until told to stop, deal each to a worker, then wait for open ones up to
/// `grace`. `connection` serves one; it holds its `Watcher` until it is done.
async fn serve<C, F>(
    listener: TcpListener,
    connection: C,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    workers: Arc<Workers>,
) where
    C: Fn(TcpStream, SocketAddr, Watcher) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let connection = Arc::new(connection);
    let graceful = GracefulShutdown::new();
    let mut next = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (connection, watcher) = (Arc::clone(&connection), graceful.watcher());
                let job: Job = Box::new(move |stream| Box::pin(connection(stream, peer, watcher)));
                workers.dispatch(next, stream, job);
                next = next.wrapping_add(1);
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace elapsed; closing the connections still open");
    }
}

/// A client that connects and sends nothing is dropped like one that stalls mid-header
/// (telling HTTP/1 from h2c needs its first bytes).
async fn sends_something(stream: &TcpStream, peer: SocketAddr, within: Duration) -> bool {
    let mut first = [0u8; 1];
    let sent = tokio::time::timeout(within, stream.peek(&mut first))
        .await
        .is_ok();
    if !sent {
        tracing::debug!(%peer, "client sent nothing; connection closed");
    }
    sent
}

/// One connection served by hyper: HTTP/1.1 or h2c (with upgrades), watched for graceful shutdown.
async fn hyper_connection<I, S, B>(
    io: I,
    peer: SocketAddr,
    service: S,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

/// Every future run to its end, polled together on this task.
async fn all<F: std::future::Future>(futures: Vec<F>) {
    let mut futures: Vec<Option<std::pin::Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in &mut futures {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(_) => *slot = None,
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        match pending {
            true => std::task::Poll::Pending,
            false => std::task::Poll::Ready(()),
        }
    })
    .await
}
