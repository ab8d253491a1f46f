//! The per-request hot path without I/O: route lookup, one key-snapshot load, credential
//! stripping, header injection and URI rewrite, on a request shaped like an SDK's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::Request;

use keyproxy::clients::Clients;
use keyproxy::config::Config;
use keyproxy::key::store::KeyMeta;
use keyproxy::key::Secret;
use keyproxy::metrics::Metrics;
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
        .map(|u| Upstream::new(u, &metrics).unwrap())
        .collect();
    for u in &upstreams {
        let key = Secret::new("sk-proj-BENCHbenchBENCHbenchBENCHbench0000".into());
        let meta = KeyMeta {
            source: "bench".into(),
            ..KeyMeta::default()
        };
        u.key.install(&key, &u.auth_prefix, meta).unwrap();
    }
    Proxy::new(upstreams, metrics, Clients::none())
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
            |req| proxy.route(req, PEER).ok().unwrap().request,
            BatchSize::SmallInput,
        )
    });
    c.bench_function("route+key+rewrite (anthropic, prefixed)", |b| {
        b.iter_batched(
            || sdk_request("/anthropic/v1/messages"),
            |req| proxy.route(req, PEER).ok().unwrap().request,
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
