//! Upstream and client faults: each gets a clear status and reason, is counted by kind, and the
//! proxy stays up for everyone else without leaking file descriptors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use http::Request;
use http_body_util::BodyExt;

/// The fd-leak check counts this whole process's descriptors, so the tests here run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn upstream(name: &str, base: &str, prefix: &str, key: &str, extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"{name}\"\nprovider = \"openai\"\nbase_url = \"{base}\"\nprefix = \"{prefix}\"\nkey = {{ file = \"{key}\" }}\n{extra}\n"
    )
}

struct Faulty {
    proxy: Proxy,
    _dir: tempfile::TempDir,
}

/// One healthy upstream at `/` and one per fault, each under its own prefix.
async fn faulty_proxy() -> Faulty {
    let healthy = StandIn::ok().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let silent: Handler = Arc::new(|_req| Box::pin(std::future::pending()));
    let silent = serve_plain(silent).await;
    let stalls = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nf\r\ndata: {\"n\":1}\n\n\r\n",
        false,
    )
    .await;
    let resets = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nf\r\ndata: {\"n\":1}\n\n\r\n",
        true,
    )
    .await;
    let garbage = raw_upstream(b"this is not HTTP at all\r\n\r\n", true).await;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", &openai_key("FAULTS"));
    let config = [
        "client_header_timeout = \"300ms\"\n".to_string(),
        upstream("healthy", &healthy.url(), "/", &key, ""),
        upstream("closed", &format!("http://{closed}"), "/closed", &key, ""),
        upstream(
            "silent",
            &format!("http://{silent}"),
            "/silent",
            &key,
            "response_header_timeout = \"300ms\"",
        ),
        upstream(
            "stalls",
            &format!("http://{stalls}"),
            "/stalls",
            &key,
            "stream_idle_timeout = \"300ms\"",
        ),
        upstream("resets", &format!("http://{resets}"), "/resets", &key, ""),
        upstream(
            "garbage",
            &format!("http://{garbage}"),
            "/garbage",
            &key,
            "",
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config, dir.path()).await;
    Faulty { proxy, _dir: dir }
}

/// One pass over every fault; returns nothing, asserts everything.
async fn every_fault_once(proxy: &Proxy) {
    let (resp, body) = get(&proxy.url("/closed/v1/models")).await;
    assert_eq!(
        (
            resp.status.as_u16(),
            resp.headers["x-keyproxy-reason"].to_str().unwrap()
        ),
        (502, "upstream_unreachable")
    );
    assert!(String::from_utf8_lossy(&body).contains("could not connect"));

    let (resp, _) = get(&proxy.url("/silent/v1/models")).await;
    assert_eq!(
        (
            resp.status.as_u16(),
            resp.headers["x-keyproxy-reason"].to_str().unwrap()
        ),
        (504, "upstream_timeout")
    );

    let (resp, body) = get(&proxy.url("/garbage/v1/models")).await;
    assert_eq!(resp.status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("lost the connection"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    for path in ["/stalls/v1/chat/completions", "/resets/v1/chat/completions"] {
        let resp = within(
            "headers",
            client().request(Request::get(proxy.url(path)).body(full("")).unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200, "{path}: the headers were already good");
        let cut = within("the stream to be cut", resp.into_body().collect()).await;
        assert!(
            cut.is_err(),
            "{path}: the client sees the stream break off, not a clean end"
        );
    }

    // Everyone else is still served.
    let (resp, _) = get(&proxy.url("/v1/models")).await;
    assert_eq!(resp.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_are_answered_clearly_counted_and_leak_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let f = faulty_proxy().await;
    every_fault_once(&f.proxy).await;
    let m = metrics(&f.proxy).await;
    for (upstream, kind) in [
        ("closed", "connect"),
        ("silent", "timeout"),
        ("garbage", "reset"),
        ("stalls", "timeout"),
        ("resets", "body"),
    ] {
        let series =
            format!("keyproxy_upstream_errors_total{{kind=\"{kind}\",upstream=\"{upstream}\"}} 1");
        assert!(m.contains(&series), "{series} missing:\n{m}");
    }
    eventually("streams to leave in-flight", || async {
        !metrics(&f.proxy)
            .await
            .lines()
            .any(|l| l.starts_with("keyproxy_requests_in_flight") && !l.ends_with(" 0"))
    })
    .await;

    // More rounds must not leave more descriptors behind than the first did.
    let after_first = open_fds();
    for _ in 0..5 {
        every_fault_once(&f.proxy).await;
    }
    let after_more = open_fds();
    assert!(
        after_more <= after_first + 4,
        "file descriptors grew from {after_first} to {after_more}"
    );
    f.proxy.stop().await;
}

#[tokio::test]
async fn stalled_and_idle_clients_are_disconnected() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let f = faulty_proxy().await;
    // Half a request head, then nothing: closed after client_header_timeout.
    let answer = raw_request(
        f.proxy.addr,
        b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n",
    )
    .await;
    assert!(!answer.contains("200 OK"), "{answer}");
    // A connection that never sends anything is closed too.
    let answer = raw_request(f.proxy.addr, b"").await;
    assert_eq!(answer, "");
    let (resp, _) = get(&f.proxy.url("/v1/models")).await;
    assert_eq!(resp.status, 200);
    f.proxy.stop().await;
}
