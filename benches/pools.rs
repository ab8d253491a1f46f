//! Load on a pool of keys: `cargo bench --bench pools`. Fixed-rate POSTs (replayable: small JSON
//! bodies) through keyproxy to the in-process stand-in provider, first with one key, then with two
//! keys of which the stand-in revokes one halfway through. Reports the failed requests of the pool
//! run (the issue asks for none) and p99 latency outside the failover moment against the one-key
//! run (the issue asks for within 10 %). Knobs: RATE (req/s, 1000), DURATION (s, 10).
//! Without `--bench` (as `cargo test --all-targets` runs it) it only says so and exits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use http_body_util::BodyExt;

const INVALID: &str = r#"{"error":{"message":"Incorrect API key provided: sk-proj-****abcd.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
/// Requests sent this close to the revocation are the failover moment, left out of the p99.
const MOMENT: Duration = Duration::from_millis(500);

struct Sample {
    sent: Duration,
    latency: Duration,
    ok: bool,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn p99(mut latencies: Vec<Duration>) -> f64 {
    latencies.sort();
    if latencies.is_empty() {
        return f64::NAN;
    }
    let i = ((latencies.len() as f64 - 1.0) * 0.99).round() as usize;
    latencies[i].as_secs_f64() * 1e3
}

/// One run: `keys` keys (the first revoked at half time when there are two).
async fn run(keys: usize, rate: u64, duration: Duration) -> (Vec<Sample>, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("LOADPOOLA"), openai_key("LOADPOOLB"));
    let revoked = Arc::new(AtomicBool::new(false));
    let (gone, refused) = (Arc::clone(&revoked), a.clone());
    let provider = StandIn::recording(move |seen| {
        let sent = seen.headers["authorization"].to_str().unwrap_or("");
        if gone.load(Ordering::Relaxed) && sent.ends_with(refused.as_str()) {
            (401, INVALID.to_owned())
        } else {
            (200, r#"{"ok":true}"#.to_owned())
        }
    })
    .await;
    let source =
        |name: &str, key: &str| format!("{{ file = \"{}\" }}", key_file(dir.path(), name, key));
    let key_line = match keys {
        1 => format!("key = {}", source("a", &a)),
        _ => format!("keys = [ {}, {} ]", source("a", &a), source("b", &b)),
    };
    let config = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\n{key_line}\n",
        provider.url()
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let client = client();
    let url = proxy.url("/v1/chat/completions");
    for _ in 0..32 {
        let req = Request::post(&url).body(full(BODY)).unwrap();
        client
            .request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
    }
    let start = Instant::now();
    let revoke_at = duration / 2;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    let mut tasks = Vec::new();
    while start.elapsed() < duration {
        tick.tick().await;
        if keys > 1 && start.elapsed() >= revoke_at {
            revoked.store(true, Ordering::Relaxed);
        }
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let sent = start.elapsed();
            let begun = Instant::now();
            let req = Request::post(&url)
                .header("content-type", "application/json")
                .body(full(BODY))
                .unwrap();
            let ok = match client.request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    resp.into_body().collect().await.is_ok() && status == 200
                }
                Err(_) => false,
            };
            Sample {
                sent,
                latency: begun.elapsed(),
                ok,
            }
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for t in tasks {
        samples.push(t.await.unwrap());
    }
    proxy.stop().await;
    (samples, revoke_at)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("pools: a load benchmark; run it with `cargo bench --bench pools`");
        return;
    }
    let rate = env("RATE", 1000);
    let duration = Duration::from_secs(env("DURATION", 10));
    let (one, _) = run(1, rate, duration).await;
    let (pool, revoke_at) = run(2, rate, duration).await;
    let failed = pool.iter().filter(|s| !s.ok).count();
    let outside = |samples: &[Sample]| {
        samples
            .iter()
            .filter(|s| s.sent + MOMENT < revoke_at || s.sent > revoke_at + MOMENT)
            .map(|s| s.latency)
            .collect::<Vec<_>>()
    };
    let (p99_one, p99_pool) = (p99(outside(&one)), p99(outside(&pool)));
    println!(
        "one key:  {} requests, {} failed, p99 {p99_one:.3} ms",
        one.len(),
        one.iter().filter(|s| !s.ok).count()
    );
    println!(
        "two keys, one revoked at {:.1}s: {} requests, {failed} failed, p99 outside the failover moment {p99_pool:.3} ms ({:+.1} % vs one key)",
        revoke_at.as_secs_f64(),
        pool.len(),
        (p99_pool / p99_one - 1.0) * 100.0
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
