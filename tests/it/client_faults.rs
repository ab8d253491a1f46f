//! Client faults over real sockets (issue #17): a slow upload is not an upstream timeout; a body
//! that is malformed, cut or stalled is the app's fault (400, 408) at once and never an upstream
//! error; an app that leaves cancels its upstream request (499); one framing goes back to the app.
//! Each on the fast path (`http1::server`) and on the paths it hands over (hyper, h2c, upgrades).
//! The stand-in upstream is a raw socket, so what it received is seen byte for byte, and it tells
//! when keyproxy closes its connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::common::*;

/// What the raw upstream saw happen on one of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A whole request arrived on connection `n`.
    Request(usize),
    /// keyproxy closed connection `n`, at this instant.
    Closed(usize, Instant),
}

/// A raw-socket stand-in upstream: keeps every byte each connection brought, answers each whole
/// request with `response` (never, when `None`), and reports requests and closes as `Event`s.
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
    pub events: mpsc::UnboundedReceiver<Event>,
}

/// What the raw upstream answers a whole request with (its head as text), if anything.
pub type Answerer = Arc<dyn Fn(&str) -> Option<&'static [u8]> + Send + Sync>;

impl RawUpstream {
    pub async fn start(response: Option<&'static [u8]>) -> RawUpstream {
        RawUpstream::start_with(Arc::new(move |_: &str| response)).await
    }

    pub async fn start_with(answer: Answerer) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let (tx, events) = mpsc::unbounded_channel();
        let conns = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = {
                    let mut all = conns.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let (conns, tx, answer) = (Arc::clone(&conns), tx.clone(), Arc::clone(&answer));
                tokio::spawn(async move {
                    let mut buf = [0u8; 16 * 1024];
                    let mut pending = Vec::new();
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                let _ = tx.send(Event::Closed(n, Instant::now()));
                                return;
                            }
                            Ok(k) => {
                                conns.lock().unwrap()[n].extend_from_slice(&buf[..k]);
                                pending.extend_from_slice(&buf[..k]);
                            }
                        }
                        while let Some(len) = whole_request(&pending) {
                            let head = String::from_utf8_lossy(&pending[..len]).into_owned();
                            pending.drain(..len);
                            let _ = tx.send(Event::Request(n));
                            if let Some(response) = answer(&head) {
                                let _ = stream.write_all(response).await;
                            }
                        }
                    }
                });
            }
        });
        RawUpstream {
            addr,
            received,
            events,
        }
    }

    /// The next event, within the test deadline.
    pub async fn next(&mut self) -> Event {
        within("the upstream to see something", self.events.recv())
            .await
            .unwrap()
    }

    /// Wait for `conn` to be closed by keyproxy; when it was.
    pub async fn closed(&mut self, conn: usize) -> Instant {
        loop {
            if let Event::Closed(n, at) = self.next().await {
                if n == conn {
                    return at;
                }
            }
        }
    }

    /// Wait for a whole request; which connection it came on.
    pub async fn request(&mut self) -> usize {
        loop {
            if let Event::Request(n) = self.next().await {
                return n;
            }
        }
    }

    pub fn bytes(&self, conn: usize) -> Vec<u8> {
        self.received.lock().unwrap()[conn].clone()
    }
}

/// The length of the whole request (head and body, by Content-Length or chunked) at the front.
fn whole_request(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    if text.contains("transfer-encoding: chunked") {
        let end = buf[head..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(head + end + 5);
    }
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    (buf.len() >= head + length).then_some(head + length)
}

pub async fn proxy_to(
    upstream: SocketAddr,
    server: &str,
    upstream_extra: &str,
    dir: &std::path::Path,
) -> Proxy {
    let config = format!(
        "{server}\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"http://{upstream}\"\nkey = {{ file = \"{}\" }}\n{upstream_extra}\n",
        key_file(dir, "key", &openai_key("FAULTS"))
    );
    Proxy::start(&config, dir).await
}

/// keyproxy in front of a raw upstream answering with `response`, with the two timeouts.
async fn set_up(
    response: Option<&'static [u8]>,
    client_body_timeout: &str,
    response_header_timeout: &str,
) -> (tempfile::TempDir, RawUpstream, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let upstream = RawUpstream::start(response).await;
    let proxy = proxy_to(
        upstream.addr,
        &format!("client_body_timeout = \"{client_body_timeout}\""),
        &format!("response_header_timeout = \"{response_header_timeout}\""),
        dir.path(),
    )
    .await;
    (dir, upstream, proxy)
}

/// Everything the app got until keyproxy closed the connection: the final response's status and
/// its text (interim 1xx responses skipped).
async fn until_closed(stream: &mut TcpStream) -> (u16, String) {
    let mut out = Vec::new();
    let _ = within("keyproxy to answer and close", stream.read_to_end(&mut out)).await;
    final_response(&out)
}

pub fn final_response(bytes: &[u8]) -> (u16, String) {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    while text.starts_with("HTTP/1.1 1") {
        let end = text.find("\r\n\r\n").unwrap() + 4;
        text.drain(..end);
    }
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A metric's value in the exposition (0 when the series is absent).
pub fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The sum of every series of a family.
pub fn family_sum(metrics: &str, family: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().unwrap())
        .sum()
}

/// `n` requests counted as the app's: the client-error kind, the status, no upstream error.
async fn counted_as_the_apps(proxy: &Proxy, kind: &str, status: u16, n: f64) {
    let m = metrics(proxy).await;
    let kind = format!("keyproxy_client_errors_total{{kind=\"{kind}\"}}");
    assert_eq!(value(&m, &kind), n, "{m}");
    let status = format!("keyproxy_requests_total{{status=\"{status}\",upstream=\"openai\"}}");
    assert_eq!(value(&m, &status), n, "{m}");
    assert_eq!(family_sum(&m, "keyproxy_upstream_errors_total"), 0.0, "{m}");
}

pub const CHAT: &str = "/v1/chat/completions";

fn post_head(length: usize, extra: &str) -> Vec<u8> {
    format!(
        "POST {CHAT} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n{extra}\r\n"
    )
    .into_bytes()
}

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

/// An upload slower than `response_header_timeout` succeeds: that timer starts once the body has
/// been sent, and a body that keeps moving is never cut (here: chunked, and a Content-Length body
/// too long for the fast path, each piece arriving well within `client_body_timeout`).
#[tokio::test]
async fn a_slow_upload_is_not_an_upstream_timeout() {
    let (_dir, mut upstream, proxy) = set_up(Some(OK), "10s", "1s").await;
    let pace = Duration::from_millis(250);
    // Chunked: 6 pieces, 1.5 s in all.
    let mut app = TcpStream::connect(proxy.addr).await.unwrap();
    app.write_all(format!("POST {CHAT} HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    for _ in 0..6 {
        // Pacing the upload is what is under test, not a wait for something to happen.
        tokio::time::sleep(pace).await;
        app.write_all(b"4\r\nabcd\r\n").await.unwrap();
    }
    app.write_all(b"0\r\n\r\n").await.unwrap();
    let (status, text) = until_closed(&mut app).await;
    assert_eq!(status, 200, "{text}");
    // Content-Length over 64 KiB: 7 pieces of 10 000 bytes, 1.75 s in all.
    let mut app = TcpStream::connect(proxy.addr).await.unwrap();
    app.write_all(&post_head(70_000, "connection: close\r\n"))
        .await
        .unwrap();
    for _ in 0..7 {
        tokio::time::sleep(pace).await;
        app.write_all(&[b'x'; 10_000]).await.unwrap();
    }
    let (status, text) = until_closed(&mut app).await;
    assert_eq!(status, 200, "{text}");
    let first = upstream.request().await;
    let second = upstream.request().await;
    assert!(upstream.bytes(first).ends_with(b"0\r\n\r\n"));
    assert!(upstream.bytes(second).ends_with(&[b'x'; 70_000]));
    let m = metrics(&proxy).await;
    assert_eq!(family_sum(&m, "keyproxy_upstream_errors_total"), 0.0, "{m}");
    proxy.stop().await;
}

/// Fast path: a short Content-Length body. Handed over: the same with `Expect: 100-continue`.
const PATHS: [(&str, &str); 2] = [("fast", ""), ("hyper", "expect: 100-continue\r\n")];

/// A body that stops arriving is a 408 after `client_body_timeout` (not a 504 after
/// `response_header_timeout`), on both paths; what the upstream got is the same, and its
/// connection is closed. Counted as the app's, never as an upstream error.
#[tokio::test]
async fn a_stalled_body_is_408_on_both_paths() {
    let (_dir, mut upstream, proxy) = set_up(Some(OK), "300ms", "30s").await;
    let mut seen = Vec::new();
    for (path, extra) in PATHS {
        let mut app = TcpStream::connect(proxy.addr).await.unwrap();
        let started = Instant::now();
        app.write_all(&post_head(100, extra)).await.unwrap();
        app.write_all(&[b'{'; 50]).await.unwrap();
        let (status, text) = until_closed(&mut app).await;
        assert_eq!(status, 408, "{path}: {text}");
        assert!(
            text.contains(
                "the request body stopped arriving: nothing came for 300ms (client_body_timeout)"
            ),
            "{path}: {text}"
        );
        assert!(!text.contains("x-keyproxy-reason"), "{path}: {text}");
        assert!(started.elapsed() < Duration::from_secs(10), "{path}");
        let conn = loop {
            if let Event::Closed(n, _) = upstream.next().await {
                break n;
            }
        };
        seen.push(
            String::from_utf8(upstream.bytes(conn))
                .unwrap()
                .replace("expect: 100-continue\r\n", ""),
        );
    }
    assert_eq!(seen[0], seen[1], "the upstream saw different bytes");
    assert!(seen[0].ends_with(&"{".repeat(50)), "{}", seen[0]);
    counted_as_the_apps(&proxy, "body_timeout", 408, 2.0).await;
    proxy.stop().await;
}

/// Malformed bodies are a 400 naming the fault at once: bad chunk sizes, bare-LF chunk lines,
/// chunk data not followed by CRLF, and a connection half-closed inside a Content-Length body
/// (on both paths). The timeouts are long, so an answer that waited for one would fail.
#[tokio::test]
async fn a_malformed_body_is_400_at_once() {
    let (_dir, mut upstream, proxy) = set_up(Some(OK), "60s", "60s").await;
    let chunked =
        format!("POST {CHAT} HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n");
    let mut cases: Vec<(String, Vec<u8>, bool)> = [
        &b"ffffffffffffffffff1\r\nabc\r\n"[..],
        b"-3\r\nabc\r\n",
        b"0x3\r\nabc\r\n",
        b"3\nabc\n0\n\n",
        b"3\r\nabcXY0\r\n\r\n",
    ]
    .iter()
    .map(|body| {
        let mut bytes = chunked.clone().into_bytes();
        bytes.extend_from_slice(body);
        (
            format!("chunked {:?}", String::from_utf8_lossy(body)),
            bytes,
            false,
        )
    })
    .collect();
    for (path, extra) in PATHS {
        let mut bytes = post_head(100, extra);
        bytes.extend_from_slice(&[b'{'; 50]);
        cases.push((
            format!("half-closed inside a Content-Length body ({path})"),
            bytes,
            true,
        ));
    }
    let started = Instant::now();
    for (name, bytes, half_close) in &cases {
        let mut app = TcpStream::connect(proxy.addr).await.unwrap();
        app.write_all(bytes).await.unwrap();
        if *half_close {
            app.shutdown().await.unwrap();
        }
        let (status, text) = until_closed(&mut app).await;
        assert_eq!(status, 400, "{name}: {text}");
        assert!(
            text.contains("the request body is malformed: "),
            "{name}: {text}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    while let Ok(event) = upstream.events.try_recv() {
        assert!(
            !matches!(event, Event::Request(_)),
            "a broken request was answered upstream"
        );
    }
    counted_as_the_apps(&proxy, "malformed_body", 400, cases.len() as f64).await;
    proxy.stop().await;
}

/// How an app leaves while waiting: on each path, a complete request whose upstream never
/// answers, then the app goes. Within 100 ms of the close being observable, keyproxy closes the
/// upstream connection (or resets the HTTP/2 stream); the request is logged and counted once as
/// 499, and as a `disconnected` client error, never as an upstream error.
#[tokio::test]
async fn an_app_that_leaves_cancels_its_upstream_request() {
    let (_dir, mut upstream, proxy) = set_up(None, "60s", "60s").await;
    let ws = "GET /v1/realtime HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut chunked =
        format!("POST {CHAT} HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n")
            .into_bytes();
    chunked.extend_from_slice(b"2\r\n{}\r\n0\r\n\r\n");
    let mut raw: Vec<(&str, Vec<u8>)> = Vec::new();
    for (path, extra) in PATHS {
        let mut bytes = post_head(2, extra);
        bytes.extend_from_slice(b"{}");
        raw.push((path, bytes));
    }
    raw.push(("chunked", chunked));
    raw.push(("websocket handshake", ws.as_bytes().to_vec()));
    for (path, bytes) in &raw {
        let mut app = TcpStream::connect(proxy.addr).await.unwrap();
        app.write_all(bytes).await.unwrap();
        let conn = upstream.request().await;
        drop(app);
        let left = Instant::now();
        let closed = upstream.closed(conn).await;
        let took = closed.duration_since(left);
        assert!(took < Duration::from_millis(100), "{path}: {took:?}");
    }
    // h2c: the app resets its stream (the request is dropped).
    let h2 = h2c_client();
    let req = http::Request::post(proxy.url(CHAT))
        .header("content-type", "application/json")
        .body(full("{}"))
        .unwrap();
    let pending = tokio::spawn(async move { h2.request(req).await });
    let conn = upstream.request().await;
    pending.abort();
    let left = Instant::now();
    let closed = upstream.closed(conn).await;
    assert!(
        closed.duration_since(left) < Duration::from_millis(100),
        "h2c: {:?}",
        closed.duration_since(left)
    );

    let n = raw.len() as f64 + 1.0;
    // Counted when the request is let go, which may be a moment after its upstream connection.
    eventually("every departure counted", || {
        let proxy = &proxy;
        async move {
            let m = metrics(proxy).await;
            value(
                &m,
                "keyproxy_requests_total{status=\"499\",upstream=\"openai\"}",
            ) == n
        }
    })
    .await;
    counted_as_the_apps(&proxy, "disconnected", 499, n).await;
    proxy.stop().await;
}

/// One framing goes back to the app, the same on the fast path, the hyper path and h2c: a list
/// of identical lengths becomes one, a 204 carries no length, never both Content-Length and
/// Transfer-Encoding; a conflicting length is a 502 naming it.
#[tokio::test]
async fn one_framing_goes_back_on_every_path() {
    // Name, the upstream's answer, the status, words of the body, framing lines the app gets.
    type Case = (
        &'static str,
        &'static [u8],
        u16,
        &'static str,
        &'static [&'static str],
    );
    let cases: [Case; 4] = [
        (
            "a list of identical lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\nconnection: close\r\n\r\nhello",
            200,
            "hello",
            &["content-length: 5\r\n"],
        ),
        (
            "a 204 with a length",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
            204,
            "",
            &[],
        ),
        (
            "both Content-Length and chunked",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            200,
            "hello",
            &["transfer-encoding: chunked\r\n"],
        ),
        (
            "conflicting lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\nconnection: close\r\n\r\nhello",
            502,
            "conflicting Content-Length values",
            &[],
        ),
    ];
    for (name, response, status, body, framing) in cases {
        let dir = tempfile::tempdir().unwrap();
        let upstream = RawUpstream::start(Some(response)).await;
        let proxy = proxy_to(upstream.addr, "", "", dir.path()).await;
        for (path, extra) in PATHS {
            let mut app = TcpStream::connect(proxy.addr).await.unwrap();
            let mut bytes = post_head(2, &format!("{extra}connection: close\r\n"));
            bytes.extend_from_slice(b"{}");
            app.write_all(&bytes).await.unwrap();
            let (got, text) = until_closed(&mut app).await;
            assert_eq!(got, status, "{name} ({path}): {text}");
            let lower = text.to_ascii_lowercase();
            let (head, rest) = lower.split_once("\r\n\r\n").unwrap();
            let head = format!("{head}\r\n");
            assert!(
                rest.contains(&body.to_ascii_lowercase()),
                "{name} ({path}): {text}"
            );
            let lengths = head.matches("content-length").count();
            let chunked = head.contains("transfer-encoding");
            assert!(
                lengths + usize::from(chunked) <= 1,
                "{name} ({path}): {text}"
            );
            for line in framing {
                assert!(head.contains(line), "{name} ({path}): {text}");
            }
            if status == 204 {
                assert_eq!((lengths, chunked, rest), (0, false, ""), "{name} ({path})");
            }
        }
        let req = http::Request::post(proxy.url(CHAT))
            .body(full("{}"))
            .unwrap();
        let resp = within("an h2c answer", h2c_client().request(req))
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{name} (h2c)");
        let lengths: Vec<_> = resp.headers().get_all("content-length").iter().collect();
        assert!(lengths.len() <= 1, "{name} (h2c): {lengths:?}");
        if status == 200 {
            assert!(
                lengths.iter().all(|v| *v == "5"),
                "{name} (h2c): {lengths:?}"
            );
        } else if status == 204 {
            assert!(lengths.is_empty(), "{name} (h2c): {lengths:?}");
        }
        proxy.stop().await;
    }
}

/// A request head begun and not finished within `client_header_timeout` is counted as the
/// app's `header_timeout`; an idle keep-alive connection closed by the same timer is not a fault.
#[tokio::test]
async fn a_head_that_stops_arriving_is_counted_idle_connections_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = RawUpstream::start(Some(OK)).await;
    let proxy = proxy_to(
        upstream.addr,
        "client_header_timeout = \"300ms\"",
        "",
        dir.path(),
    )
    .await;
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    let mut partial = TcpStream::connect(proxy.addr).await.unwrap();
    partial
        .write_all(format!("POST {CHAT} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-ty").as_bytes())
        .await
        .unwrap();
    for stream in [&mut idle, &mut partial] {
        let mut out = Vec::new();
        within("the timeout to close it", stream.read_to_end(&mut out))
            .await
            .unwrap();
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }
    let m = metrics(&proxy).await;
    assert_eq!(
        value(&m, "keyproxy_client_errors_total{kind=\"header_timeout\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(family_sum(&m, "keyproxy_upstream_errors_total"), 0.0, "{m}");
    proxy.stop().await;
}

/// The same over an HTTP/2 upstream (TLS, ALPN h2), where hyper sends the body beside waiting for
/// the head: a slow upload is not a 504, and a stalled body is a 408 on both app paths, never an
/// upstream error.
#[tokio::test]
async fn over_an_http2_upstream_the_timers_measure_what_they_name() {
    let versions: Arc<Mutex<Vec<http::Version>>> = Arc::default();
    let seen = Arc::clone(&versions);
    let handler: Handler = Arc::new(move |req: http::Request<hyper::body::Incoming>| {
        let seen = Arc::clone(&seen);
        Box::pin(async move {
            seen.lock().unwrap().push(req.version());
            let body = http_body_util::BodyExt::collect(req.into_body()).await;
            let status = if body.is_ok() { 200 } else { 400 };
            http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(full(r#"{"ok":true}"#))
                .unwrap()
        })
    });
    let (ca_pem, tls) = test_pki();
    let port = serve_tls(handler, tls).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let config = format!(
        "client_body_timeout = \"300ms\"\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"https://localhost:{port}\"\nkey = {{ file = \"{}\" }}\nca_file = \"{}\"\nresponse_header_timeout = \"1s\"\n",
        key_file(dir.path(), "key", &openai_key("HTTP2")),
        ca_file.display()
    );
    let proxy = Proxy::start(&config, dir.path()).await;

    // Chunked, 6 pieces 200 ms apart: longer than response_header_timeout, each gap shorter
    // than client_body_timeout.
    let mut app = TcpStream::connect(proxy.addr).await.unwrap();
    app.write_all(format!("POST {CHAT} HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    for _ in 0..6 {
        // Pacing the upload is what is under test.
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.write_all(b"2\r\n{}\r\n").await.unwrap();
    }
    app.write_all(b"0\r\n\r\n").await.unwrap();
    let (status, text) = until_closed(&mut app).await;
    assert_eq!(status, 200, "{text}");

    for (path, extra) in PATHS {
        let mut app = TcpStream::connect(proxy.addr).await.unwrap();
        app.write_all(&post_head(100, extra)).await.unwrap();
        app.write_all(&[b'{'; 50]).await.unwrap();
        let (status, text) = until_closed(&mut app).await;
        assert_eq!(status, 408, "{path}: {text}");
    }
    // Over HTTP/2 each time; the fast path's stalled body is known broken before it is sent, so
    // nothing of it goes onto the shared connection (the handed-over one streamed its head).
    assert_eq!(
        *versions.lock().unwrap(),
        [http::Version::HTTP_2, http::Version::HTTP_2]
    );
    counted_as_the_apps(&proxy, "body_timeout", 408, 2.0).await;
    proxy.stop().await;
}
