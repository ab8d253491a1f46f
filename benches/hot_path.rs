//! Micro-benchmarks: the per-request hot path without I/O (route lookup, one key-snapshot load,
//! credential stripping, header injection, URI rewrite, metric updates) on a request shaped like an
//! SDK's; the classifier on each fixture body; and `ArcSwap` loads while another thread keeps storing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::Request;
use keyproxy::diagnose::{self, Knowledge};
use keyproxy::key::KeyStore;

use keyproxy::config::Config;
use keyproxy::key::store::KeyMeta;
use keyproxy::key::Secret;
use keyproxy::metrics::Metrics;
use keyproxy::proxy::client_tokens::ClientTokens;
use keyproxy::proxy::Proxy;
use keyproxy::upstream::Upstream;

const CONFIG: &str = r#"
[[upstreams]]
name = "openai"
provider = "openai"
base_url = "https://api.openai.com"
key = { env = "UNUSED" }

[[upstreams]]
name = "anthropic"
provider = "anthropic"
base_url = "https://api.anthropic.com"
prefix = "/anthropic"
key = { env = "UNUSED" }
"#;

fn proxy() -> Proxy {
    let config = Config::parse(Path::new("bench.toml"), CONFIG).unwrap();
    let metrics = Arc::new(Metrics::new().unwrap());
    let upstreams: Vec<Upstream> = config
        .upstreams
        .iter()
        .map(|u| Upstream::new(u, &metrics, 1).unwrap())
        .collect();
    for u in &upstreams {
        let key = Secret::new("sk-proj-BENCHbenchBENCHbenchBENCHbench0000".into());
        let meta = KeyMeta {
            source: "bench".into(),
            ..KeyMeta::default()
        };
        u.key.store.install(&key, &u.auth_prefix, meta).unwrap();
    }
    Proxy::new(upstreams, metrics, ClientTokens::none())
}

const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50000);

fn sdk_request(path: &str) -> Request<()> {
    Request::post(path)
        .header("host", "127.0.0.1:8787")
        .header("authorization", "Bearer sk-dummy")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("user-agent", "OpenAI/Python 1.55.0")
        .header("x-stainless-lang", "python")
        .header("x-stainless-package-version", "1.55.0")
        .header("connection", "keep-alive")
        .header("content-length", "120")
        .body(())
        .unwrap()
}

fn hot_path(c: &mut Criterion) {
    let proxy = proxy();
    c.bench_function("route+key+rewrite (openai, root prefix)", |b| {
        b.iter_batched(
            || sdk_request("/v1/chat/completions"),
            |mut req| {
                let _ = proxy.route(&mut req, PEER).ok().unwrap();
                req
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("route+key+rewrite (anthropic, prefixed)", |b| {
        b.iter_batched(
            || sdk_request("/anthropic/v1/messages"),
            |mut req| {
                let _ = proxy.route(&mut req, PEER).ok().unwrap();
                req
            },
            BatchSize::SmallInput,
        )
    });
}

fn metric_updates(c: &mut Criterion) {
    let metrics = Metrics::new().unwrap();
    let upstream = metrics.upstream("openai");
    c.bench_function("metrics: count + 2 histograms + in-flight guard", |b| {
        b.iter(|| {
            let guard = keyproxy::metrics::InFlight::start(&upstream);
            upstream.request(0, 200);
            upstream.request_duration.observe(0.0012);
            upstream.upstream_duration.observe(0.0011);
            drop(guard);
        })
    });
}

fn classifier(c: &mut Criterion) {
    #[derive(serde::Deserialize)]
    struct Row {
        status: u16,
        body: String,
    }
    let rows: Vec<Row> = include_str!("../tests/fixtures/provider-errors.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut group = c.benchmark_group("classifier");
    for (n, row) in rows.iter().enumerate() {
        let status = http::StatusCode::from_u16(row.status).unwrap();
        group.bench_function(format!("fixture line {}", n + 1), |b| {
            b.iter(|| {
                let facts = diagnose::facts(black_box(row.body.as_bytes()));
                diagnose::classify(
                    status,
                    facts.as_ref(),
                    &Knowledge::default(),
                    SystemTime::now(),
                )
            })
        });
    }
    group.finish();
}

fn key_store(c: &mut Criterion) {
    let store = Arc::new(KeyStore::new("bench"));
    let install = |store: &KeyStore, n: u64| {
        let key = Secret::new(format!("sk-proj-Bench{n:020}{}", "x".repeat(60)));
        let meta = KeyMeta {
            source: "bench".into(),
            ..KeyMeta::default()
        };
        store.install(&key, "Bearer ", meta).unwrap();
    };
    install(&store, 0);
    c.bench_function("key store: load (quiet)", |b| {
        b.iter(|| black_box(store.current()))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                install(&store, n);
                n += 1;
            }
            n
        })
    };
    // Measure only once the writer is actually storing.
    while store.generation() < 3 {
        std::thread::yield_now();
    }
    c.bench_function("key store: load while another thread stores nonstop", |b| {
        b.iter(|| black_box(store.current()))
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}

criterion_group!(benches, hot_path, metric_updates, classifier, key_store);
criterion_main!(benches);
