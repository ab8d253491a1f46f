//! Test harness: an in-process stand-in provider, keyproxy itself on 127.0.0.1:0, and a real HTTP client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};

use keyproxy::config::Config;
use keyproxy::server::Server;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;
pub type HandlerFuture = Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> HandlerFuture + Send + Sync>;

/// Every test waits on signals, never on the clock; this deadline only turns a hang into a failure.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

pub fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

/// What the stand-in provider saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An in-process stand-in for a provider. Records every request (with its body) it answers.
pub struct StandIn {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    pub arrived: Arc<Notify>,
}

impl StandIn {
    /// Answers every request with `200 {"ok":true}` after reading the whole body.
    pub async fn ok() -> StandIn {
        StandIn::recording(|_| (200, r#"{"ok":true}"#.to_string())).await
    }

    /// Reads each request's body fully, records it, answers with `(status, body)` from `answer`.
    pub async fn recording(
        answer: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
    ) -> StandIn {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let answer = Arc::new(answer);
        let (s, a) = (seen.clone(), arrived.clone());
        let handler: Handler = Arc::new(move |req: Request<Incoming>| {
            let (seen, arrived, answer) = (s.clone(), a.clone(), answer.clone());
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let record = Seen {
                    method: parts.method,
                    uri: parts.uri,
                    version: parts.version,
                    headers: parts.headers,
                    body,
                };
                let (status, text) = answer(&record);
                seen.lock().unwrap().push(record);
                arrived.notify_waiters();
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(full(text))
                    .unwrap()
            })
        });
        let addr = serve_plain(handler).await;
        StandIn {
            addr,
            seen,
            arrived,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Serve `handler` over plain HTTP/1.1 + h2c on 127.0.0.1:0.
pub async fn serve_plain(handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// keyproxy running in this process on 127.0.0.1:0.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Start keyproxy from config text; `listen`/`admin_listen` are forced to 127.0.0.1:0.
    pub async fn start(config_text: &str, dir: &Path) -> Proxy {
        // Each test its own state store, never the user's.
        let state = dir.join("state");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n{config_text}",
            state.display()
        );
        let path = dir.join("keyproxy.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap();
        let server = Server::bind(&config).await.unwrap();
        let (addr, admin) = (server.proxy_addr(), server.admin_addr());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Proxy {
            addr,
            admin,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Start shutting down (as SIGTERM would) without waiting for it to finish.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn stop(mut self) {
        self.begin_stop();
        if let Some(task) = self.task.take() {
            within("keyproxy to shut down", task).await.unwrap();
        }
    }
}

pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2c_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// Send a request and collect the response.
pub async fn send(req: Request<TestBody>) -> (http::response::Parts, Bytes) {
    let resp = within("a response", client().request(req)).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = within("the body", body.collect()).await.unwrap().to_bytes();
    (parts, body)
}

pub async fn get(url: &str) -> (http::response::Parts, Bytes) {
    send(Request::get(url).body(full("")).unwrap()).await
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Write `key` to a file in `dir` and return its path as TOML-ready text.
pub fn key_file(dir: &Path, name: &str, key: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{key}\n")).unwrap();
    p.display().to_string()
}

/// Realistic keys (they pass the lint), each with a distinctive tag so a leak is easy to spot.
pub fn openai_key(tag: &str) -> String {
    pad(&format!("sk-proj-{tag}"), 164)
}

pub fn anthropic_key(tag: &str) -> String {
    pad(&format!("sk-ant-api03-{tag}"), 108)
}

/// `AIza` + 35 characters; `tag` must be short.
pub fn gemini_key(tag: &str) -> String {
    pad(&format!("AIza{tag}"), 39)
}

/// 32 hex digits; `tag` must be hex.
pub fn azure_key(tag: &str) -> String {
    let mut k = tag.to_string();
    while k.len() < 32 {
        k.push_str("0123456789abcdef");
    }
    k.truncate(32);
    k
}

fn pad(start: &str, len: usize) -> String {
    const FILL: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
    let mut k = start.to_string();
    while k.len() < len {
        k.push_str(FILL);
    }
    k.truncate(len);
    k
}

/// Poll `check` until it holds; the deadline only turns a hang into a failure.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// `GET /status` from the admin listener.
pub async fn status(proxy: &Proxy) -> serde_json::Value {
    let (_, body) = get(&proxy.admin_url("/status")).await;
    json(&body)
}

/// `GET /metrics` from the admin listener.
pub async fn metrics(proxy: &Proxy) -> String {
    let (_, body) = get(&proxy.admin_url("/metrics")).await;
    String::from_utf8(body.to_vec()).unwrap()
}

/// The bearer token the stand-in saw on its last request.
pub fn last_bearer(stand_in: &StandIn) -> Option<String> {
    stand_in.seen().last().and_then(|s| {
        s.headers.get("authorization").map(|v| {
            v.to_str()
                .unwrap()
                .trim_start_matches("Bearer ")
                .to_string()
        })
    })
}

/// A raw TCP "upstream" that answers every connection with `script`: bytes to write, then what
/// to do (close, or hold the connection open).
pub async fn raw_upstream(response: &'static [u8], then_close: bool) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                // Read the request head before answering.
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response).await;
                if !then_close {
                    // Hold the connection open until the peer goes away.
                    let _ = stream.read(&mut buf).await;
                }
            });
        }
    });
    addr
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Send raw bytes to `addr` and read until the peer closes or `DEADLINE`; returns what was read.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = within("the peer to answer and close", stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A CA and a `localhost` server certificate signed by it: (CA PEM, server TLS config with ALPN h2 + http/1.1).
pub fn test_pki() -> (String, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![server_cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca.pem(), config)
}

/// Serve `handler` over TLS (HTTP/1.1 with upgrades, or h2 by ALPN) on 127.0.0.1:0; returns the port.
pub async fn serve_tls(handler: Handler, config: rustls::ServerConfig) -> u16 {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

/// A provider whose event stream sends `first`, then waits for the returned sender to fire before
/// sending `rest` and ending: the test decides when the stream moves on (one request only).
pub fn held_stream(
    first: &'static [u8],
    rest: &'static [u8],
) -> (Handler, tokio::sync::oneshot::Sender<()>) {
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let handler: Handler = Arc::new(move |_req: Request<Incoming>| {
        let release_rx = release_rx.clone();
        Box::pin(async move {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
            tokio::spawn(async move {
                tx.send_data(Bytes::from_static(first)).await.unwrap();
                let rx = release_rx.lock().await.take().unwrap();
                rx.await.unwrap();
                tx.send_data(Bytes::from_static(rest)).await.unwrap();
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body.boxed())
                .unwrap()
        })
    });
    (handler, release_tx)
}

/// The real binary, `run` with JSON logs at debug level. keyproxy's stderr, collected until it exits, with the addresses it logged at startup.
pub struct Running {
    pub child: std::process::Child,
    logs: std::thread::JoinHandle<String>,
    pub proxy: String,
    pub admin: String,
    /// Log text as it arrives, and how far `wait_log` has read it.
    lines: std::sync::mpsc::Receiver<String>,
    text: String,
    read: usize,
}

pub fn run_binary(config: &std::path::Path, env: &[(&str, &str)]) -> Running {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyproxy"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env("RUST_LOG", "debug")
        // Each test its own state store, never the user's (a test's own env may say otherwise).
        .env(
            "KEYPROXY_STATE_DIR",
            config.parent().unwrap_or(Path::new(".")).join("state"),
        )
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let logs = std::thread::spawn(move || {
        let mut all = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stderr, &mut buf) {
            if n == 0 {
                break;
            }
            let chunk = String::from_utf8_lossy(&buf[..n]).into_owned();
            let _ = tx.send(chunk.clone());
            all.push_str(&chunk);
        }
        all
    });
    let mut early = String::new();
    let mut addr_of = |message: &str| -> String {
        let rx = &rx;
        loop {
            for line in early.lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    if v["message"] == message {
                        return v["addr"].as_str().unwrap().to_owned();
                    }
                }
            }
            early.push_str(&rx.recv_timeout(DEADLINE).expect("keyproxy started"));
        }
    };
    let proxy = addr_of("proxy listening");
    let admin = addr_of("admin listening");
    Running {
        child,
        logs,
        proxy,
        admin,
        lines: rx,
        text: early,
        read: 0,
    }
}

impl Running {
    /// The next JSON log line (after the last one this returned) whose message is `message`.
    pub async fn wait_log(&mut self, message: &str) -> serde_json::Value {
        within(&format!("the log line {message:?}"), async {
            loop {
                while let Ok(chunk) = self.lines.try_recv() {
                    self.text.push_str(&chunk);
                }
                let mut offset = self.read;
                for line in self.text[self.read..].split_inclusive('\n') {
                    offset += line.len();
                    if !line.ends_with('\n') {
                        break;
                    }
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                        if v["message"] == message {
                            self.read = offset;
                            return v;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub async fn kill(self) {
        let mut child = self.child;
        child.kill().unwrap();
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        let _ = self.logs.join();
    }

    /// SIGTERM, a clean exit, and every line it logged.
    pub async fn stop(self) -> String {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let mut child = self.child;
        let exit = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.code(), Some(0));
        self.logs.join().unwrap()
    }
}

/// Did a run of the binary succeed, and all it printed (stdout, then stderr).
pub fn printed(out: std::process::Output) -> (bool, String) {
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `keyproxy check ARGS --config FILE`, with a state store of its own next to the file and `env`.
pub fn keyproxy_check(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let state = config.parent().map(|d| d.join("state")).unwrap_or_default();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyproxy"))
        .arg("check")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("KEYPROXY_STATE_DIR", state)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    printed(out)
}
