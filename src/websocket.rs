//! WebSocket pass-through (OpenAI Realtime, Azure realtime, Gemini Live): the upgrade is routed
//! and keyed like any request; on the upstream's 101 the two connections are spliced, bytes copied
//! both ways unbuffered until either side closes. Open sockets keep the key they were opened with,
//! and get `shutdown_grace` at shutdown before they are closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};

use crate::http1::ConnectionOptions;
use crate::metrics::UpstreamMetrics;

/// `Connection: upgrade` + `Upgrade: websocket` (case-insensitive), as RFC 6455 asks.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    // Values that are not visible ASCII are skipped whole.
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok() && ConnectionOptions::parse(v.as_bytes()).upgrade);
    connection_upgrade
        && headers
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Put back the two hop-by-hop headers an upgrade needs (dropping hop-by-hop headers removed them).
pub fn restore_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// The open sockets, so shutdown can wait for them and then close them.
pub struct Sockets {
    open: AtomicUsize,
    all_closed: Notify,
    close_now: watch::Sender<bool>,
}

impl Default for Sockets {
    fn default() -> Self {
        Sockets {
            open: AtomicUsize::new(0),
            all_closed: Notify::new(),
            close_now: watch::channel(false).0,
        }
    }
}

impl Sockets {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Resolves when no socket is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The grace is over: close every socket still open.
    pub fn close_all(&self) {
        let _ = self.close_now.send(true);
    }
}

/// Splice the client's and the upstream's upgraded connections until either closes (or shutdown's
/// grace ends), then log one line with the duration and the bytes each way.
pub fn splice(
    sockets: Arc<Sockets>,
    metrics: Arc<UpstreamMetrics>,
    upstream: Arc<str>,
    request_id: String,
    client: OnUpgrade,
    server: OnUpgrade,
) {
    sockets.open.fetch_add(1, Ordering::SeqCst);
    metrics.websockets_open.inc();
    let mut close_now = sockets.close_now.subscribe();
    tokio::spawn(async move {
        let started = Instant::now();
        let result = match tokio::try_join!(client, server) {
            Ok((client, server)) => {
                let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
                tokio::select! {
                    copied = tokio::io::copy_bidirectional(&mut client, &mut server) => copied.map_err(|e| e.to_string()),
                    _ = async { while close_now.changed().await.is_ok() && !*close_now.borrow() {} } => {
                        Err("closed at shutdown after the grace period".to_owned())
                    }
                }
            }
            Err(e) => Err(format!("the upgrade did not complete: {e}")),
        };
        let duration_s = started.elapsed().as_secs_f64();
        match result {
            Ok((to_upstream, to_client)) => tracing::info!(
                request_id,
                upstream = %upstream,
                duration_s,
                bytes_to_upstream = to_upstream,
                bytes_to_client = to_client,
                "websocket closed"
            ),
            Err(why) => {
                tracing::info!(request_id, upstream = %upstream, duration_s, "websocket closed: {why}")
            }
        }
        metrics.websockets_open.dec();
        if sockets.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            sockets.all_closed.notify_waiters();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_upgrades() {
        let mut h = HeaderMap::new();
        assert!(!is_upgrade(&h));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_upgrade(&h));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_upgrade(&h));
    }
}
