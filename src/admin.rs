//! The admin listener: `/healthz` (the process is up) and `/readyz` (every upstream has a usable key).
//! Read-only endpoints need no token so probes and Prometheus can reach them.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::key::KeyState;
use crate::proxy::Proxy;
use crate::reply;

pub async fn handle(proxy: &Proxy, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match req.uri().path() {
        "/healthz" => reply::text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(proxy),
        _ => reply::text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz or /readyz\n",
        ),
    }
}

fn readyz(proxy: &Proxy) -> Response<Full<Bytes>> {
    let mut problems = String::new();
    for upstream in &proxy.upstreams {
        if let KeyState::Unavailable(why) = &*upstream.key.current() {
            problems.push_str(&format!(
                "upstream {}: no usable key ({}): {}\n",
                upstream.name, why.reason, why.message
            ));
        }
    }
    if problems.is_empty() {
        reply::text(StatusCode::OK, "ready\n")
    } else {
        reply::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{problems}"),
        )
    }
}
