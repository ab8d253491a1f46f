//! Soak (bounded to a few seconds): sustained load on two upstreams while the key rotates every
//! 50 ms and one upstream flaps down and up. The stable upstream never fails a request; the flapping
//! one fails only with keyproxy's clear 502/504; memory and file descriptors stay flat.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;

const RUN: Duration = Duration::from_secs(6);
const WARMUP: Duration = Duration::from_secs(2);

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

/// A provider on a fixed port that goes down and comes back up until `stop`.
fn flapping_provider(port: u16, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let mut conns = tokio::task::JoinSet::new();
            let up_until = tokio::time::sleep(Duration::from_millis(300));
            tokio::pin!(up_until);
            loop {
                tokio::select! {
                    _ = &mut up_until => break,
                    Ok((stream, _)) = listener.accept() => {
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                                Ok::<_, std::convert::Infallible>(Response::new(full(r#"{"ok":true}"#)))
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
            }
            drop(listener);
            conns.abort_all();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_with_rotations_and_flaps_stays_correct_and_flat() {
    // Not a recording stand-in: keeping every request would itself grow memory.
    let stable: Handler =
        Arc::new(|_req| Box::pin(async { Response::new(full(r#"{"ok":true}"#)) }));
    let stable = format!("http://{}", serve_plain(stable).await);
    let flap_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = flapping_provider(flap_port, stop.clone());

    let dir = tempfile::tempdir().unwrap();
    let token = "soak-admin-token-0123456789abcdef";
    let config = format!(
        "admin_token = {{ file = \"{}\" }}\n\
         [[upstreams]]\nname = \"stable\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n\
         [[upstreams]]\nname = \"flaps\"\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:{flap_port}\"\nprefix = \"/flaps\"\nkey = {{ file = \"{}\" }}\nconnect_timeout = \"200ms\"\nresponse_header_timeout = \"1s\"\n",
        key_file(dir.path(), "token", token),
        stable,
        key_file(dir.path(), "key", &openai_key("SOAK000")),
        key_file(dir.path(), "key2", &openai_key("SOAKflap")),
    );
    let proxy = Arc::new(Proxy::start(&config, dir.path()).await);

    let started = Instant::now();
    let stable_ok = Arc::new(AtomicUsize::new(0));
    let flap_ok = Arc::new(AtomicUsize::new(0));
    let flap_refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..8 {
        let (proxy, stable_ok, flap_ok, flap_refused) = (
            proxy.clone(),
            stable_ok.clone(),
            flap_ok.clone(),
            flap_refused.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < RUN {
                let flapping = (n + c) % 2 == 0;
                let path = if flapping {
                    "/flaps/v1/chat/completions"
                } else {
                    "/v1/chat/completions"
                };
                let (resp, body) =
                    send(Request::post(proxy.url(path)).body(full("{}")).unwrap()).await;
                match (flapping, resp.status.as_u16()) {
                    (false, 200) => drop(stable_ok.fetch_add(1, Ordering::Relaxed)),
                    (true, 200) => drop(flap_ok.fetch_add(1, Ordering::Relaxed)),
                    (true, 502 | 504) => {
                        let reason = resp.headers["x-keyproxy-reason"].to_str().unwrap();
                        assert!(
                            reason == "upstream_unreachable" || reason == "upstream_timeout",
                            "{reason}"
                        );
                        flap_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    (f, s) => panic!(
                        "flapping={f}: unexpected {s}: {}",
                        String::from_utf8_lossy(&body)
                    ),
                }
                n += 1;
            }
        }));
    }
    let rotator = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut i = 1;
            while started.elapsed() < RUN {
                let req = Request::post(proxy.admin_url("/keys/stable"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(full(openai_key(&format!("SOAK{i:03}"))))
                    .unwrap();
                let (resp, _) = send(req).await;
                assert_eq!(resp.status, 200);
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            i
        })
    };

    tokio::time::sleep(WARMUP).await;
    let (rss_warm, fds_warm) = (rss_kib(), open_fds());
    for t in tasks {
        within("the load to finish", t).await.unwrap();
    }
    let rotations = rotator.await.unwrap();
    let (rss_end, fds_end) = (rss_kib(), open_fds());
    stop.store(true, Ordering::SeqCst);
    flapper.await.unwrap();

    let (ok, fok, frefused) = (
        stable_ok.load(Ordering::Relaxed),
        flap_ok.load(Ordering::Relaxed),
        flap_refused.load(Ordering::Relaxed),
    );
    assert!(
        ok > 500,
        "sustained load: {ok} requests to the stable upstream"
    );
    assert!(
        fok > 0 && frefused > 0,
        "the flapping upstream was both up ({fok}) and down ({frefused})"
    );
    assert!(rotations > 20, "{rotations} rotations");
    assert!(
        rss_end <= rss_warm + 20 * 1024,
        "RSS grew from {rss_warm} KiB to {rss_end} KiB"
    );
    assert!(
        fds_end <= fds_warm + 24,
        "file descriptors grew from {fds_warm} to {fds_end}"
    );
    eprintln!("soak: {ok} stable ok, {fok} flapping ok, {frefused} flapping refused, {rotations} rotations, RSS {rss_warm}->{rss_end} KiB, fds {fds_warm}->{fds_end}");
    Arc::try_unwrap(proxy).ok().unwrap().stop().await;
}
