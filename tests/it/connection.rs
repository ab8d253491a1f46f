//! The app-facing HTTP/1.1 connection, byte by byte: keep-alive, pipelining, short bodies read
//! whole, HEAD, `Connection: close`, and the hand-over to hyper of the shapes `http1::server` leaves
//! to it (chunked uploads, `Expect: 100-continue`, long bodies) in the middle of a connection.

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn proxy_to(provider: &StandIn, dir: &std::path::Path) -> Proxy {
    let config = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n",
        provider.url(),
        key_file(dir, "key", &openai_key("FRONT"))
    );
    Proxy::start(&config, dir).await
}

/// One response read off a raw connection: status, lower-cased head text, body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Read exactly one response (framed by Content-Length or chunked) from `stream`, keeping any
/// bytes after it in `buf` for the next call.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Answer {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut slots);
        if let httparse::Status::Complete(len) = resp.parse(buf).unwrap() {
            let status = resp.code.unwrap();
            let head = String::from_utf8_lossy(&buf[..len]).to_ascii_lowercase();
            let length = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .unwrap()
                        .parse::<usize>()
                        .unwrap()
                });
            let chunked = head.contains("transfer-encoding: chunked");
            buf.drain(..len);
            let body = if head_only || status == 204 || status == 304 {
                Vec::new()
            } else if let Some(n) = length {
                fill(stream, buf, n).await;
                buf.drain(..n).collect()
            } else {
                assert!(chunked, "neither length nor chunked: {head}");
                let mut body = Vec::new();
                loop {
                    let line_end = loop {
                        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                            break i;
                        }
                        more(stream, buf).await;
                    };
                    let size = usize::from_str_radix(
                        std::str::from_utf8(&buf[..line_end]).unwrap().trim(),
                        16,
                    )
                    .unwrap();
                    fill(stream, buf, line_end + 2 + size + 2).await;
                    body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                    buf.drain(..line_end + 2 + size + 2);
                    if size == 0 {
                        break body;
                    }
                }
            };
            return Answer { status, head, body };
        }
        more(stream, buf).await;
    }
}

/// One `GET /v1/models` on the connection, answered 200.
async fn get_models(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    stream
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(stream, buf, false).await.status, 200);
}

/// Wait for the proxy to close the connection, with nothing more sent.
async fn closed_by_the_proxy(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    within(
        "the idle connection to be closed",
        stream.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) {
    while buf.len() < n {
        more(stream, buf).await;
    }
}

async fn more(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16 * 1024];
    let n = within("the proxy to answer", stream.read(&mut chunk))
        .await
        .unwrap();
    assert!(
        n > 0,
        "closed early; have {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

#[tokio::test]
async fn one_connection_carries_every_request_shape_in_order() {
    let provider = StandIn::recording(|seen| {
        let body = format!(
            "{{\"path\":\"{}\",\"got\":{}}}",
            seen.uri.path(),
            seen.body.len()
        );
        (200, body)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_to(&provider, dir.path()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();

    // A GET: framed by its length, dated, kept alive.
    stream
        .write_all(b"GET /v1/a HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sk-app\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert!(a.head.contains("content-length: "), "{}", a.head);
    assert!(a.head.contains("\r\ndate: "), "{}", a.head);
    assert!(a.head.contains("x-keyproxy-request-id: "), "{}", a.head);
    assert!(!a.head.contains("connection: close"), "{}", a.head);
    assert_eq!(a.body, br#"{"path":"/v1/a","got":0}"#);

    // A short body whose head and body arrive in separate writes.
    let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let head = format!(
        "POST /v1/b HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    stream.write_all(body).await.unwrap();
    let b = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(b.status, 200, "{}", b.head);
    assert_eq!(
        b.body,
        format!("{{\"path\":\"/v1/b\",\"got\":{}}}", body.len()).as_bytes()
    );

    // Two requests in one write (pipelined), then a HEAD: answers in order.
    stream
        .write_all(b"GET /v1/c HTTP/1.1\r\nHost: localhost\r\n\r\nDELETE /v1/d HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let c = read_answer(&mut stream, &mut buf, false).await;
    let d = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(c.body, br#"{"path":"/v1/c","got":0}"#);
    assert_eq!(d.body, br#"{"path":"/v1/d","got":0}"#);
    stream
        .write_all(b"HEAD /v1/e HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let e = read_answer(&mut stream, &mut buf, true).await;
    assert_eq!(e.status, 200, "{}", e.head);

    // A chunked upload: hyper takes the connection over from here and serves it to the end.
    stream
        .write_all(b"POST /v1/f HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let f = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(f.body, br#"{"path":"/v1/f","got":11}"#);
    stream
        .write_all(b"GET /v1/g HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let g = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(g.body, br#"{"path":"/v1/g","got":0}"#);
    let mut rest = Vec::new();
    within("the proxy to close", stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty() && buf.is_empty(), "{rest:?} {buf:?}");

    let seen = provider.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.uri.path()).collect();
    assert_eq!(
        paths,
        ["/v1/a", "/v1/b", "/v1/c", "/v1/d", "/v1/e", "/v1/f", "/v1/g"]
    );
    assert_eq!(seen[1].body.as_ref(), body);
    assert_eq!(seen[5].body.as_ref(), b"hello world");
    for s in &seen {
        let auth = s.headers["authorization"].to_str().unwrap();
        assert!(auth.contains("FRONT"), "our key, not the app's: {auth}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn connection_close_and_expect_continue_are_honoured() {
    let provider =
        StandIn::recording(|seen| (200, format!("{{\"got\":{}}}", seen.body.len()))).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_to(&provider, dir.path()).await;

    // `Connection: close`: said in the answer, then the connection ends.
    let answer = raw_request(
        proxy.addr,
        b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");

    // `Expect: 100-continue`: the body is asked for, then forwarded.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    while !String::from_utf8_lossy(&buf).contains("100 Continue\r\n\r\n") {
        more(&mut stream, &mut buf).await;
    }
    buf.clear();
    stream.write_all(b"ping").await.unwrap();
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(answer.body, br#"{"got":4}"#);

    // A body longer than `http1::server` reads whole streams through hyper, intact.
    let big = vec![b'x'; 200_000];
    let head = format!(
        "POST /v1/y HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&big).await.unwrap();
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(answer.body, br#"{"got":200000}"#);
    let seen = provider.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].body.as_ref(), b"ping");
    assert_eq!(seen[2].body.len(), big.len());
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_shutdown() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = proxy_to(&provider, dir.path()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    get_models(&mut stream, &mut buf).await;
    proxy.begin_stop();
    closed_by_the_proxy(&mut stream).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_keep_alive_connection_left_idle_is_closed_after_the_header_timeout() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "client_header_timeout = \"300ms\"\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n",
        provider.url(),
        key_file(dir.path(), "key", &openai_key("IDLE"))
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    // Two requests on the connection: the one timer it has is re-armed for the second wait.
    for _ in 0..2 {
        get_models(&mut stream, &mut buf).await;
    }
    let idle_since = std::time::Instant::now();
    closed_by_the_proxy(&mut stream).await;
    assert!(
        idle_since.elapsed() >= std::time::Duration::from_millis(250),
        "closed before the timeout: {:?}",
        idle_since.elapsed()
    );
    proxy.stop().await;
}
