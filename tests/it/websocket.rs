//! WebSocket pass-through: the handshake carries the injected key (never the app's), bytes flow both
//! ways, an open socket survives a rotation while new handshakes use the new key, a refused handshake
//! is diagnosed, and shutdown closes open sockets after the grace period. ws:// and wss://.

use std::sync::{Arc, Mutex};

use crate::common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "websocket-admin-token-0123456789";

/// A realtime provider: upgrades only with an accepted key, then echoes every byte back.
struct Realtime {
    handshakes: Arc<Mutex<Vec<http::HeaderMap>>>,
    handler: Handler,
}

fn realtime(accepted: Vec<String>) -> Realtime {
    let handshakes: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let seen = handshakes.clone();
    let accepted = Arc::new(accepted);
    let handler: Handler = Arc::new(move |mut req: Request<Incoming>| {
        let (seen, accepted) = (seen.clone(), accepted.clone());
        Box::pin(async move {
            seen.lock().unwrap().push(req.headers().clone());
            let bearer = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().trim_start_matches("Bearer ").to_owned());
            if !bearer.is_some_and(|b| accepted.contains(&b)) {
                return Response::builder()
                    .status(401)
                    .header("content-type", "application/json")
                    .body(full(r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#))
                    .unwrap();
            }
            let upgraded = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgraded.await.unwrap());
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .header("sec-websocket-protocol", "realtime")
                .body(full(""))
                .unwrap()
        })
    });
    Realtime {
        handshakes,
        handler,
    }
}

fn config(dir: &std::path::Path, base: &str, key: &str, extra: &str) -> String {
    format!(
        "admin_token = {{ file = \"{}\" }}\nshutdown_grace = \"2s\"\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{base}\"\nkey = {{ file = \"{}\" }}\n{extra}\n",
        key_file(dir, "token", TOKEN),
        key_file(dir, "key", key)
    )
}

/// Open a WebSocket through keyproxy the way a client library does; returns the socket and the response head.
async fn open(addr: std::net::SocketAddr, path: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let handshake = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: realtime\r\nAuthorization: Bearer sk-dummy-app-key\r\nOpenAI-Beta: realtime=v1\r\n\r\n"
    );
    stream.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within("the handshake answer", stream.read(&mut byte))
            .await
            .unwrap();
        assert!(
            n > 0,
            "closed during the handshake: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (stream, String::from_utf8(head).unwrap())
}

async fn echo(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).await.unwrap();
    let mut got = vec![0u8; message.len()];
    within("the echo", stream.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, message);
}

fn bearer(h: &http::HeaderMap) -> String {
    h["authorization"]
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned()
}

#[tokio::test]
async fn the_handshake_carries_our_key_and_bytes_flow_both_ways() {
    let key = openai_key("WSkey1");
    let provider = realtime(vec![key.clone()]);
    let upstream = serve_plain(provider.handler.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config(dir.path(), &format!("http://{upstream}"), &key, ""),
        dir.path(),
    )
    .await;

    let (mut socket, head) = open(proxy.addr, "/v1/realtime?model=gpt-4o-realtime-preview").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("upgrade: websocket")
            && lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    echo(&mut socket, b"\x81\x05hello").await;
    echo(&mut socket, &vec![7u8; 100_000]).await;

    let seen = provider.handshakes.lock().unwrap()[0].clone();
    assert_eq!(bearer(&seen), key, "the injected key, not the app's");
    assert!(!format!("{seen:?}").contains("sk-dummy-app-key"));
    assert_eq!(seen["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(seen["sec-websocket-version"], "13");
    assert_eq!(seen["sec-websocket-protocol"], "realtime");
    assert_eq!(seen["openai-beta"], "realtime=v1");
    assert!(seen["upgrade"]
        .to_str()
        .unwrap()
        .eq_ignore_ascii_case("websocket"));

    let m = metrics(&proxy).await;
    assert!(
        m.contains("keyproxy_websockets_open{upstream=\"openai\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("keyproxy_requests_total{status=\"101\",upstream=\"openai\"} 1"),
        "{m}"
    );
    drop(socket);
    eventually("the socket to be counted closed", || async {
        metrics(&proxy)
            .await
            .contains("keyproxy_websockets_open{upstream=\"openai\"} 0")
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_open_socket_survives_a_rotation_and_new_handshakes_use_the_new_key() {
    let (old, new) = (openai_key("WSold"), openai_key("WSnew"));
    let provider = realtime(vec![old.clone(), new.clone()]);
    let upstream = serve_plain(provider.handler.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config(dir.path(), &format!("http://{upstream}"), &old, ""),
        dir.path(),
    )
    .await;

    let (mut first, head) = open(proxy.addr, "/v1/realtime").await;
    assert!(head.starts_with("HTTP/1.1 101"));
    let (resp, _) = send(
        Request::post(proxy.admin_url("/keys/openai"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(full(new.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);
    echo(&mut first, b"still here after the rotation").await;
    let (mut second, head) = open(proxy.addr, "/v1/realtime").await;
    assert!(head.starts_with("HTTP/1.1 101"));
    echo(&mut second, b"new socket").await;
    echo(&mut first, b"old socket too").await;
    let handshakes = provider.handshakes.lock().unwrap().clone();
    assert_eq!(bearer(&handshakes[0]), old);
    assert_eq!(bearer(&handshakes[1]), new);
    drop((first, second));
    proxy.stop().await;
}

#[tokio::test]
async fn a_refused_handshake_is_diagnosed() {
    let provider = realtime(vec![openai_key("WSsomeoneelse")]);
    let upstream = serve_plain(provider.handler.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config(
            dir.path(),
            &format!("http://{upstream}"),
            &openai_key("WSrefused"),
            "",
        ),
        dir.path(),
    )
    .await;
    let (mut socket, head) = open(proxy.addr, "/v1/realtime").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-keyproxy-reason: invalid_key"),
        "{head}"
    );
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0u8; length];
    within("the body", socket.read_exact(&mut body))
        .await
        .unwrap();
    let v = json(&body);
    assert_eq!(v["keyproxy"]["reason"], "invalid_key");
    assert!(v["keyproxy"]["message"]
        .as_str()
        .unwrap()
        .contains("rejected the key"));
    assert!(metrics(&proxy)
        .await
        .contains("keyproxy_websockets_open{upstream=\"openai\"} 0"));
    proxy.stop().await;
}

#[tokio::test]
async fn shutdown_gives_open_sockets_the_grace_then_closes_them() {
    let key = openai_key("WSshutdown");
    let provider = realtime(vec![key.clone()]);
    let upstream = serve_plain(provider.handler.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::start(
        &config(dir.path(), &format!("http://{upstream}"), &key, ""),
        dir.path(),
    )
    .await;
    let (mut socket, head) = open(proxy.addr, "/v1/realtime").await;
    assert!(head.starts_with("HTTP/1.1 101"));

    proxy.begin_stop();
    echo(&mut socket, b"during the grace period").await;
    let mut rest = Vec::new();
    let n = within(
        "the socket to be closed after the grace",
        socket.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert_eq!(n, 0, "closed, nothing more sent");
    proxy.stop().await;
}

#[tokio::test]
async fn wss_upstreams_work_over_tls() {
    let key = openai_key("WSStls");
    let provider = realtime(vec![key.clone()]);
    let (ca_pem, tls) = test_pki();
    let port = serve_tls(provider.handler.clone(), tls).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let proxy = Proxy::start(
        &config(
            dir.path(),
            &format!("https://localhost:{port}"),
            &key,
            &format!("ca_file = \"{}\"", ca_file.display()),
        ),
        dir.path(),
    )
    .await;
    let (mut socket, head) = open(proxy.addr, "/v1/realtime").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo(&mut socket, b"over TLS").await;
    assert_eq!(bearer(&provider.handshakes.lock().unwrap()[0]), key);
    drop(socket);
    proxy.stop().await;
}
