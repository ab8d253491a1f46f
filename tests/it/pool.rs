//! keyproxy's own connection pool, over real sockets: upstream connections are kept alive and
//! reused, one the upstream closed while idle is replaced without failing a request, and a response
//! abandoned mid-body does not hand its connection to the next request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

/// A raw HTTP/1.1 upstream that counts connections and answers each request on a connection with
/// `ok`, keeping the connection open; `close` makes it shut every open connection down, and each
/// connection reports on `closed` once keyproxy has let go of it too.
struct CountingUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    close: Arc<Notify>,
    closed: mpsc::UnboundedReceiver<()>,
}

impl CountingUpstream {
    async fn start() -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(Notify::new());
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let (count, shut) = (accepted.clone(), close.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, shut.clone(), closed_tx.clone()));
            }
        });
        CountingUpstream {
            addr,
            accepted,
            close,
            closed,
        }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve(mut stream: TcpStream, close: Arc<Notify>, closed: mpsc::UnboundedSender<()>) {
    let mut buf = [0u8; 8192];
    let mut seen = Vec::new();
    loop {
        let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            seen.drain(..end + 4);
            let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
            if stream.write_all(reply).await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            },
            () = close.notified() => {
                let _ = stream.shutdown().await;
                // keyproxy's side closes once it has noticed: the read sees the end.
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed.send(());
                return;
            }
        }
    }
}

/// One event loop unless `workers` says otherwise: each keeps its own upstream connections.
fn config(dir: &std::path::Path, addr: SocketAddr) -> String {
    config_with_workers(dir, addr, 1)
}

fn config_with_workers(dir: &std::path::Path, addr: SocketAddr, workers: usize) -> String {
    let key = key_file(dir, "openai.key", &openai_key("POOL"));
    format!(
        "workers = {workers}\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"http://{addr}\"\nkey = {{ file = \"{key}\" }}\n"
    )
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = CountingUpstream::start().await;
    let proxy = Proxy::start(&config(dir.path(), upstream.addr), dir.path()).await;
    for _ in 0..20 {
        let (parts, body) = get(&proxy.url("/v1/models")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(&body[..], br#"{"ok":true}"#);
    }
    assert_eq!(upstream.connections(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn client_connections_are_dealt_to_every_worker_and_each_keeps_its_upstream_connection() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = CountingUpstream::start().await;
    let proxy = Proxy::start(
        &config_with_workers(dir.path(), upstream.addr, 2),
        dir.path(),
    )
    .await;
    // A new client connection each time: dealt round-robin to the two workers.
    for _ in 0..6 {
        let (parts, body) = get(&proxy.url("/v1/models")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(&body[..], br#"{"ok":true}"#);
    }
    assert_eq!(
        upstream.connections(),
        2,
        "one upstream connection per worker"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut upstream = CountingUpstream::start().await;
    let proxy = Proxy::start(&config(dir.path(), upstream.addr), dir.path()).await;
    let (parts, _) = get(&proxy.url("/v1/models")).await;
    assert_eq!(parts.status, 200);

    upstream.close.notify_waiters();
    within(
        "keyproxy to let go of the closed connection",
        upstream.closed.recv(),
    )
    .await
    .unwrap();

    for _ in 0..3 {
        let (parts, body) = get(&proxy.url("/v1/models")).await;
        assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(upstream.connections(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn a_response_abandoned_mid_body_does_not_lend_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    // The stream sends one event and then holds; the client hangs up after the first bytes.
    let (addr, release) = held_upstream().await;
    let proxy = Proxy::start(&config(dir.path(), addr), dir.path()).await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /v1/stream HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = within("the first bytes of the stream", client.read(&mut buf))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("data: 1"));
    drop(client);

    // The next request must not be written onto the abandoned stream's connection.
    let (parts, body) = get(&proxy.url("/v1/models")).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], br#"{"ok":true}"#);
    release.notify_waiters();
    proxy.stop().await;
}

/// `/v1/stream` sends a chunked event and holds the connection; anything else gets `ok`.
async fn held_upstream() -> (SocketAddr, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(Notify::new());
    let held = release.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let held = held.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let mut seen = Vec::new();
                loop {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let streaming = seen.starts_with(b"GET /v1/stream");
                    seen.clear();
                    if streaming {
                        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n";
                        let _ = stream.write_all(head).await;
                        held.notified().await;
                        return;
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, release)
}
