//! Bodies stream both ways with nothing buffered; TLS with HTTP/2 to the upstream; upstream
//! failures become keyproxy's own errors; only configured upstreams are ever reachable.

use std::sync::Arc;

use crate::common::*;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

fn one_upstream(dir: &std::path::Path, base_url: &str, extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{base_url}\"\nkey = {{ file = \"{}\" }}\n{extra}\n",
        key_file(dir, "key", &openai_key("STREAMtest"))
    )
}

#[tokio::test]
async fn sse_events_reach_the_client_as_the_upstream_sends_them() {
    // The stand-in sends event 1, then waits until the client has it before sending event 2:
    // if keyproxy buffered anything, the client would never see event 1 and the test would time out.
    let (handler, release_tx) = held_stream(
        b"data: {\"n\":1}\n\n",
        b"data: {\"n\":2}\n\ndata: [DONE]\n\n",
    );
    let upstream = serve_plain(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &one_upstream(dir.path(), &format!("http://{upstream}"), ""),
        dir.path(),
    )
    .await;

    let req = Request::post(proxy.url("/v1/chat/completions"))
        .body(full(r#"{"stream":true}"#))
        .unwrap();
    let resp = within("response headers", client().request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while !got.ends_with(b"\n\n") {
        let frame = within("the first event", body.frame())
            .await
            .unwrap()
            .unwrap();
        got.extend_from_slice(frame.data_ref().unwrap());
    }
    assert_eq!(got, b"data: {\"n\":1}\n\n", "event 1 arrived on its own");
    release_tx.send(()).unwrap();
    let rest = within("the rest of the stream", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"data: {\"n\":2}\n\ndata: [DONE]\n\n");
    proxy.stop().await;
}

#[tokio::test]
async fn a_large_upload_reaches_the_upstream_while_the_client_is_still_sending() {
    // The stand-in reports its first received bytes; the client sends the rest only after that.
    let (first_tx, mut first_rx) = mpsc::channel::<usize>(1);
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        let first_tx = first_tx.clone();
        Box::pin(async move {
            let mut body = req.into_body();
            let mut total = 0usize;
            let mut told = false;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    total += data.len();
                    if !told {
                        first_tx.send(total).await.unwrap();
                        told = true;
                    }
                }
            }
            Response::new(full(total.to_string()))
        })
    });
    let upstream = serve_plain(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &one_upstream(dir.path(), &format!("http://{upstream}"), ""),
        dir.path(),
    )
    .await;

    let (mut tx, body) = Channel::<Bytes, BoxError>::new(1);
    let req = Request::post(proxy.url("/v1/files"))
        .body(body.boxed())
        .unwrap();
    let pending = tokio::spawn(client().request(req));
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    tx.send_data(chunk.clone()).await.unwrap();
    let first = within("the upstream to see the first bytes", first_rx.recv())
        .await
        .unwrap();
    assert!(first > 0 && first <= chunk.len());
    for _ in 1..128 {
        tx.send_data(chunk.clone()).await.unwrap();
    }
    drop(tx);
    let resp = within("the response", pending).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        (128 * 64 * 1024).to_string()
    );
    proxy.stop().await;
}

async fn tls_stand_in(config: rustls::ServerConfig) -> (u16, Arc<std::sync::Mutex<Vec<Seen>>>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, record) = (acceptor.clone(), record.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    let first = first.swap(false, std::sync::atomic::Ordering::Relaxed);
                    async move {
                        let (mut parts, _) = req.into_parts();
                        if first {
                            // Recorded as if sent: which requests opened a connection.
                            parts
                                .headers
                                .insert("x-new-connection", http::HeaderValue::from_static("1"));
                        }
                        record.lock().unwrap().push(Seen {
                            method: parts.method,
                            uri: parts.uri,
                            version: parts.version,
                            headers: parts.headers,
                            body: Bytes::new(),
                        });
                        Ok::<_, std::convert::Infallible>(Response::new(full("tls ok")))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    (port, seen)
}

type Recorded = Arc<std::sync::Mutex<Vec<Seen>>>;

/// keyproxy in front of a TLS stand-in signed by a private CA (given as `ca_file`), offering `alpn`.
async fn behind_private_ca(alpn: &[&[u8]]) -> (Proxy, Recorded, tempfile::TempDir, u16) {
    let (ca_pem, mut server_config) = test_pki();
    server_config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let (port, seen) = tls_stand_in(server_config).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let config = one_upstream(
        dir.path(),
        &format!("https://localhost:{port}"),
        &format!("ca_file = \"{}\"", ca_file.display()),
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    (proxy, seen, dir, port)
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_speaks_http2() {
    let (proxy, seen, _dir, _) = behind_private_ca(&[b"h2", b"http/1.1"]).await;
    let (resp, body) = get(&proxy.url("/v1/models")).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], b"tls ok");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, http::Version::HTTP_2, "ALPN chose h2");
    assert_eq!(seen[0].uri.path(), "/v1/models");
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {}", openai_key("STREAMtest")).as_str()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn https_upstream_without_http2_is_spoken_to_in_http1_on_one_connection() {
    let (proxy, seen, _dir, port) = behind_private_ca(&[b"http/1.1"]).await;
    // One client connection, so one worker and its pool serve all three.
    let app = client();
    for _ in 0..3 {
        let resp = app
            .request(
                Request::get(proxy.url("/v1/models"))
                    .body(full(""))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"tls ok");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_11));
    assert_eq!(
        seen[2].headers["host"],
        format!("localhost:{port}").as_str()
    );
    assert_eq!(
        seen[2].headers["authorization"],
        format!("Bearer {}", openai_key("STREAMtest")).as_str()
    );
    assert_eq!(
        seen.iter()
            .filter(|s| s.headers.contains_key("x-new-connection"))
            .count(),
        1,
        "three requests, one TLS connection"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_unknown_ca_is_a_502_that_says_so() {
    let (_ca_pem, server_config) = test_pki();
    let (port, seen) = tls_stand_in(server_config).await;
    let dir = tempfile::tempdir().unwrap();
    let config = one_upstream(dir.path(), &format!("https://localhost:{port}"), "");
    let proxy = Proxy::start(&config, dir.path()).await;
    let (resp, body) = get(&proxy.url("/v1/models")).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.headers["x-keyproxy-reason"], "upstream_unreachable");
    let msg = json(&body)["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    assert!(msg.contains("TLS handshake"), "{msg}");
    assert!(seen.lock().unwrap().is_empty());
    assert!(metrics(&proxy)
        .await
        .contains("keyproxy_upstream_errors_total{kind=\"tls\",upstream=\"openai\"} 1"));
    proxy.stop().await;
}

#[tokio::test]
async fn absolute_form_uris_and_host_headers_cannot_reach_another_server() {
    let provider = StandIn::ok().await;
    let other = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&one_upstream(dir.path(), &provider.url(), ""), dir.path()).await;

    let requests = [
        format!("GET http://{0}/v1/models HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n", other.addr),
        format!("GET /v1/models HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", other.addr),
        format!("GET /v1/models HTTP/1.1\r\nHost: {}\r\nX-Forwarded-Host: {0}\r\nConnection: close\r\n\r\n", other.addr),
    ];
    for raw in &requests {
        let response = raw_exchange(proxy.addr, raw).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    let connect = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", other.addr);
    let response = raw_exchange(proxy.addr, &connect).await;
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");

    assert!(other.seen().is_empty(), "the other server was reached");
    let seen = provider.seen();
    assert_eq!(seen.len(), 3);
    for s in seen {
        assert_eq!(s.uri.path(), "/v1/models");
        assert_eq!(s.headers["host"], provider.addr.to_string().as_str());
    }
    proxy.stop().await;
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    // Read until the status line and headers are in; the connection may stay open.
    loop {
        let mut chunk = [0u8; 4096];
        let n = within("a raw response", stream.read(&mut chunk))
            .await
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        if n == 0 || buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_upstream_unreachable() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &one_upstream(dir.path(), &format!("http://{closed}"), ""),
        dir.path(),
    )
    .await;
    let (resp, body) = get(&proxy.url("/v1/models")).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.headers["x-keyproxy-reason"], "upstream_unreachable");
    let v = json(&body);
    assert_eq!(v["error"]["code"], "upstream_unreachable");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&closed.to_string()));
    proxy.stop().await;
}

#[tokio::test]
async fn no_response_headers_in_time_is_504_upstream_timeout() {
    let handler: Handler = Arc::new(|_req| Box::pin(std::future::pending()));
    let upstream = serve_plain(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let config = one_upstream(
        dir.path(),
        &format!("http://{upstream}"),
        "response_header_timeout = \"300ms\"",
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let (resp, body) = get(&proxy.url("/v1/models")).await;
    assert_eq!(resp.status, 504);
    assert_eq!(resp.headers["x-keyproxy-reason"], "upstream_timeout");
    assert!(String::from_utf8_lossy(&body).contains("response_header_timeout"));
    proxy.stop().await;
}
