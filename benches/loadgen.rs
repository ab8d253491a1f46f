//! The load generator behind `benches/load.sh` for what wrk cannot do: open-loop fixed-rate latency
//! (measured from each request's scheduled send time, so a stall is not hidden), SSE time to first
//! event, latency while the key is rotated 100x/s, and RSS with many open streams.
//! `cargo bench` runs it with no mode: it prints its usage and exits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn client() -> HttpClient {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(http)
}

/// Open loop: one request every 1/rate s for `duration` (sends do not wait for answers), latency from
/// the moment each is sent to its last byte. (Tokio's timer ticks in milliseconds, so measuring from the
/// scheduled instant would add up to a millisecond of the generator's own jitter to every target alike.)
async fn fixed_rate(url: &str, rate: u64, duration: Duration) -> (Vec<Duration>, usize) {
    let client = client();
    let uri: http::Uri = url.parse().unwrap();
    // Warm the pool so connection setup is not measured.
    for _ in 0..16 {
        let r = client.get(uri.clone()).await.unwrap();
        r.into_body().collect().await.unwrap();
    }
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let total = (duration.as_secs_f64() * rate as f64) as u64;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let start = tokio::time::Instant::now();
    for i in 0..total {
        let scheduled = start + interval * (i as u32);
        tokio::time::sleep_until(scheduled).await;
        let (client, uri, tx) = (client.clone(), uri.clone(), tx.clone());
        tokio::spawn(async move {
            let sent = tokio::time::Instant::now();
            let ok = match client.get(uri).await {
                Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
                Err(_) => false,
            };
            let _ = tx.send((sent.elapsed(), ok));
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(total as usize);
    let mut failed = 0;
    while let Some((latency, ok)) = rx.recv().await {
        latencies.push(latency);
        failed += usize::from(!ok);
    }
    latencies.sort();
    (latencies, failed)
}

async fn first_event(url: &str, requests: usize) -> Vec<Duration> {
    let client = client();
    let uri: http::Uri = url.parse().unwrap();
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let mut body = client.get(uri.clone()).await.unwrap().into_body();
        let _ = body.frame().await;
        times.push(t.elapsed());
        while body.frame().await.is_some() {}
    }
    times.sort();
    times
}

fn report(name: &str, lat: &[Duration]) -> (f64, f64) {
    let (p50, p99) = (percentile(lat, 0.5), percentile(lat, 0.99));
    println!(
        "  {name:<9} p50 {p50:8.1} us  p99 {p99:8.1} us  ({} requests)",
        lat.len()
    );
    (p50, p99)
}

async fn rotate_forever(admin: String, token: String, per_second: u64) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_second));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        let key = format!("sk-proj-Rotation{n:08}{}", "abcdefghij".repeat(15));
        let req = http::Request::post(admin.as_str())
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from(key)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert!(
            resp.status().is_success(),
            "rotation {n} refused: {}",
            resp.status()
        );
    }
}

/// A provider that sends one event and then holds every stream open.
async fn hold_server(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
                tokio::spawn(async move {
                    let _ = tx
                        .send_data(Bytes::from_static(b"data: {\"n\":1}\n\n"))
                        .await;
                    std::future::pending::<()>().await;
                    drop(tx);
                });
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(body)
                        .unwrap(),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let duration = arg(&args, "--duration").map_or(Duration::from_secs(10), |d| {
        humantime::parse_duration(&d).unwrap()
    });
    let rate: u64 = arg(&args, "--rate").map_or(2000, |r| r.parse().unwrap());
    match mode {
        "fixed" => {
            // The targets take turns in short segments, so drift falls on all alike.
            let segments: u32 = arg(&args, "--segments").map_or(5, |s| s.parse().unwrap());
            let targets: Vec<(&str, String)> = ["direct", "nginx", "keyproxy"]
                .into_iter()
                .filter_map(|t| arg(&args, &format!("--{t}")).map(|url| (t, url)))
                .collect();
            let mut pooled: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
            for _ in 0..segments {
                for ((target, url), all) in targets.iter().zip(&mut pooled) {
                    let (lat, failed) = fixed_rate(url, rate, duration / segments).await;
                    assert_eq!(failed, 0, "{target}: {failed} requests failed");
                    all.extend(lat);
                }
            }
            let mut p = Vec::new();
            for ((target, _), mut lat) in targets.iter().zip(pooled) {
                lat.sort();
                p.push((*target, report(target, &lat)));
            }
            let direct = p.iter().find(|(t, _)| *t == "direct").map(|x| x.1);
            if let Some((d50, d99)) = direct {
                for (t, (p50, p99)) in p.iter().filter(|(t, _)| *t != "direct") {
                    println!(
                        "  {t:<9} adds p50 {:+.1} us  p99 {:+.1} us over direct",
                        p50 - d50,
                        p99 - d99
                    );
                }
            }
        }
        "sse" => {
            let n: usize = arg(&args, "--requests").map_or(2000, |r| r.parse().unwrap());
            let direct = first_event(&arg(&args, "--direct").unwrap(), n).await;
            let keyproxy = first_event(&arg(&args, "--keyproxy").unwrap(), n).await;
            let (d50, d99) = report("direct", &direct);
            let (k50, k99) = report("keyproxy", &keyproxy);
            println!(
                "  keyproxy adds p50 {:+.1} us  p99 {:+.1} us to the first event",
                k50 - d50,
                k99 - d99
            );
        }
        "rotate" => {
            // Steady and rotating segments alternate, so drift in the machine's speed falls on
            // both alike; each condition's latencies are pooled over its segments.
            let url = arg(&args, "--keyproxy").unwrap();
            let per_second: u64 =
                arg(&args, "--rotations-per-second").map_or(100, |r| r.parse().unwrap());
            let segments: u32 = arg(&args, "--segments").map_or(5, |s| s.parse().unwrap());
            let each = duration / segments;
            let (mut quiet, mut busy) = (Vec::new(), Vec::new());
            for _ in 0..segments {
                let (lat, failed) = fixed_rate(&url, rate, each).await;
                assert_eq!(failed, 0);
                quiet.extend(lat);
                let rotator = tokio::spawn(rotate_forever(
                    arg(&args, "--admin").unwrap(),
                    arg(&args, "--token").unwrap(),
                    per_second,
                ));
                let (lat, failed) = fixed_rate(&url, rate, each).await;
                rotator.abort();
                assert_eq!(failed, 0, "{failed} requests failed during rotation");
                busy.extend(lat);
            }
            quiet.sort();
            busy.sort();
            let (_, q99) = report("steady", &quiet);
            let (_, b99) = report("rotating", &busy);
            println!(
                "  p99 with {per_second} rotations/s: {:+.1}% ({} requests in {segments} alternating segments each, none failed)",
                (b99 / q99 - 1.0) * 100.0,
                busy.len()
            );
        }
        "streams" => {
            let count: usize = arg(&args, "--count").map_or(1000, |r| r.parse().unwrap());
            let pid = arg(&args, "--pid").unwrap();
            let hold_port: u16 = arg(&args, "--hold-port").unwrap().parse().unwrap();
            tokio::spawn(hold_server(hold_port));
            let idle = rss_kib(&pid);
            let client = client();
            let uri: http::Uri = arg(&args, "--keyproxy").unwrap().parse().unwrap();
            let mut open = Vec::with_capacity(count);
            for _ in 0..count {
                let mut body = client.get(uri.clone()).await.unwrap().into_body();
                body.frame().await.unwrap().unwrap();
                open.push(body);
            }
            let loaded = rss_kib(&pid);
            println!(
                "  keyproxy RSS: {idle} KiB before, {loaded} KiB with {} open streams",
                open.len()
            );
        }
        _ => println!("usage: loadgen fixed|sse|rotate|streams ... (driven by benches/load.sh)"),
    }
}
