//! What an operator sees, over real sockets: metrics that move with traffic, rotations and refusals;
//! /readyz following key usability; the status page; request ids; token usage from the providers'
//! own usage fields, streamed and not.

use std::sync::Arc;

use crate::common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

const TOKEN: &str = "observability-admin-token-0123456789";

fn config(dir: &std::path::Path, base: &str, key_path: &std::path::Path, extra: &str) -> String {
    format!(
        "admin_token = {{ file = \"{}\" }}\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{base}\"\nkey = {{ file = \"{}\" }}\n{extra}\n",
        key_file(dir, "token", TOKEN),
        key_path.display()
    )
}

/// Like the provider: JSON with usage, a 401, and an SSE stream that ends with usage.
fn provider() -> Handler {
    Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let (status, ctype, body) = match req.uri().path() {
                "/v1/denied" => (401, "application/json", r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#.to_string()),
                "/v1/stream" => (200, "text/event-stream", "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\ndata: [DONE]\n\n".to_string()),
                "/v1/messages" => (200, "application/json", r#"{"id":"msg_1","content":[],"usage":{"input_tokens":100,"output_tokens":200}}"#.to_string()),
                _ => (200, "application/json", r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}"#.to_string()),
            };
            Response::builder()
                .status(status)
                .header("content-type", ctype)
                .header("x-request-id", "req_provider_42")
                .body(full(body))
                .unwrap()
        })
    })
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

#[tokio::test]
async fn metrics_move_with_traffic_refusals_and_rotations() {
    let upstream = serve_plain(provider()).await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, openai_key("METRICSa")).unwrap();
    let proxy = Proxy::start(
        &config(dir.path(), &format!("http://{upstream}"), &key_path, ""),
        dir.path(),
    )
    .await;

    let before = metrics(&proxy).await;
    assert_eq!(
        metric(
            &before,
            "keyproxy_requests_total{status=\"200\",upstream=\"openai\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(&before, "keyproxy_key_usable{upstream=\"openai\"}"),
        1.0
    );
    assert_eq!(
        metric(&before, "keyproxy_key_generation{upstream=\"openai\"}"),
        1.0
    );

    for path in [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/stream",
        "/v1/denied",
    ] {
        get(&proxy.url(path)).await;
    }
    let (code, _) = {
        let (resp, body) = send(
            Request::post(proxy.admin_url("/keys/openai"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(full(openai_key("METRICSb")))
                .unwrap(),
        )
        .await;
        (resp.status, body)
    };
    assert_eq!(code, 200);

    let after = metrics(&proxy).await;
    let m = |s: &str| metric(&after, s);
    assert_eq!(
        m("keyproxy_requests_total{status=\"200\",upstream=\"openai\"}"),
        3.0
    );
    assert_eq!(
        m("keyproxy_requests_total{status=\"401\",upstream=\"openai\"}"),
        1.0
    );
    assert_eq!(
        m("keyproxy_auth_failures_total{reason=\"invalid_key\",upstream=\"openai\"}"),
        1.0
    );
    assert_eq!(
        m("keyproxy_request_duration_seconds_count{upstream=\"openai\"}"),
        4.0
    );
    assert_eq!(
        m("keyproxy_upstream_duration_seconds_count{upstream=\"openai\"}"),
        4.0
    );
    assert_eq!(m("keyproxy_requests_in_flight{upstream=\"openai\"}"), 0.0);
    assert_eq!(
        m("keyproxy_tokens_total{kind=\"input\",upstream=\"openai\"}"),
        113.0
    );
    assert_eq!(
        m("keyproxy_tokens_total{kind=\"output\",upstream=\"openai\"}"),
        224.0
    );
    assert_eq!(m("keyproxy_key_generation{upstream=\"openai\"}"), 2.0);
    assert_eq!(m("keyproxy_key_rotations_total{result=\"applied\",trigger=\"admin\",upstream=\"openai\"}"), 1.0);
    assert!(m("keyproxy_key_loaded_timestamp_seconds{upstream=\"openai\"}") > 1.7e9);
    assert!(after.contains("keyproxy_build_info{version=\""));
    assert!(after.contains("process_resident_memory_bytes"));
    assert!(!after.contains("METRICS"), "a key leaked into /metrics");
    proxy.stop().await;
}

#[tokio::test]
async fn an_open_stream_is_in_flight_until_it_ends() {
    let (handler, release_tx) = held_stream(b"data: 1\n\n", b"data: [DONE]\n\n");
    let upstream = serve_plain(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, openai_key("INFLIGHT")).unwrap();
    let proxy = Proxy::start(
        &config(dir.path(), &format!("http://{upstream}"), &key_path, ""),
        dir.path(),
    )
    .await;

    let resp = within(
        "headers",
        client().request(
            Request::get(proxy.url("/v1/stream"))
                .body(full(""))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    let mut body = resp.into_body();
    within("the first event", body.frame())
        .await
        .unwrap()
        .unwrap();
    let open = metrics(&proxy).await;
    assert_eq!(
        metric(&open, "keyproxy_requests_in_flight{upstream=\"openai\"}"),
        1.0
    );
    release_tx.send(()).unwrap();
    within("the end of the stream", body.collect())
        .await
        .unwrap();
    eventually("in flight back to 0", || async {
        metric(
            &metrics(&proxy).await,
            "keyproxy_requests_in_flight{upstream=\"openai\"}",
        ) == 0.0
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn readyz_follows_key_usability() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key");
    let proxy = Proxy::start(
        &config(dir.path(), &provider.url(), &key_path, ""),
        dir.path(),
    )
    .await;
    let (ready, body) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, 503);
    assert!(String::from_utf8_lossy(&body).contains("upstream openai"));
    assert!(metrics(&proxy)
        .await
        .contains("keyproxy_key_usable{upstream=\"openai\"} 0"));

    std::fs::write(&key_path, openai_key("READY")).unwrap();
    eventually("ready", || async {
        get(&proxy.admin_url("/readyz")).await.0.status == 200
    })
    .await;
    assert!(metrics(&proxy)
        .await
        .contains("keyproxy_key_usable{upstream=\"openai\"} 1"));

    // A provider's 401 is a diagnosis, not unreadiness; a refused rotation keeps the key usable.
    std::fs::write(&key_path, "YOUR_API_KEY").unwrap();
    eventually("the refusal", || async {
        status(&proxy).await["upstreams"][0]["last_rotation"]["code"] == "placeholder"
    })
    .await;
    assert_eq!(get(&proxy.admin_url("/readyz")).await.0.status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn the_status_page_shows_the_key_its_expiry_and_recent_failures() {
    let upstream = serve_plain(provider()).await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key");
    let key = openai_key("PAGE");
    std::fs::write(&key_path, &key).unwrap();
    let soon = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(12 * 86_400 + 3600),
    );
    let proxy = Proxy::start(
        &config(
            dir.path(),
            &format!("http://{upstream}"),
            &key_path,
            &format!("expires_at = \"{soon}\""),
        ),
        dir.path(),
    )
    .await;
    get(&proxy.url("/v1/denied")).await;

    let (resp, body) = get(&proxy.admin_url("/")).await;
    assert_eq!(resp.status, 200);
    assert!(resp.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = String::from_utf8(body.to_vec()).unwrap();
    let fingerprint = keyproxy::key::Fingerprint::of(&key).to_string();
    assert!(page.contains("<h2>openai"), "{page}");
    assert!(page.contains(&fingerprint));
    assert!(
        page.contains("class=\"warn\">in 12 days"),
        "expiry under 30 days is highlighted: {page}"
    );
    assert!(
        page.contains("invalid_key") && page.contains("rejected the key"),
        "{page}"
    );
    assert!(!page.contains("PAGE"), "the key leaked into the page");
    proxy.stop().await;
}

#[tokio::test]
async fn request_ids_are_returned_and_provider_ids_pass_through() {
    let upstream = serve_plain(provider()).await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, openai_key("RID")).unwrap();
    let proxy = Proxy::start(
        &config(dir.path(), &format!("http://{upstream}"), &key_path, ""),
        dir.path(),
    )
    .await;

    let (resp, _) = get(&proxy.url("/v1/chat/completions")).await;
    let made = resp.headers["x-keyproxy-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(made.starts_with("kp-"), "{made}");
    assert_eq!(
        resp.headers["x-request-id"], "req_provider_42",
        "the provider's id passes unchanged"
    );
    let (again, _) = get(&proxy.url("/v1/chat/completions")).await;
    assert_ne!(
        again.headers["x-keyproxy-request-id"].to_str().unwrap(),
        made
    );

    let (resp, _) = send(
        Request::get(proxy.url("/v1/denied"))
            .header("x-request-id", "app-trace-7")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.headers["x-keyproxy-request-id"], "app-trace-7");
    let s = status(&proxy).await;
    assert_eq!(
        s["upstreams"][0]["recent_diagnoses"][0]["provider_request_id"],
        "req_provider_42"
    );

    let (resp, _) = get(&proxy.url("/../nowhere")).await;
    assert!(
        resp.headers.contains_key("x-keyproxy-request-id"),
        "keyproxy's own errors carry it too"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_errors_are_counted_by_kind() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let hangs: Handler = Arc::new(|_req| Box::pin(std::future::pending()));
    let hanging = serve_plain(hangs).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[upstreams]]\nname = \"closed\"\nprovider = \"openai\"\nbase_url = \"http://{closed}\"\nkey = {{ file = \"{}\" }}\n\
         [[upstreams]]\nname = \"hangs\"\nprovider = \"openai\"\nbase_url = \"http://{hanging}\"\nprefix = \"/h\"\nkey = {{ file = \"{}\" }}\nresponse_header_timeout = \"200ms\"\n",
        key_file(dir.path(), "a", &openai_key("ERRa")),
        key_file(dir.path(), "b", &openai_key("ERRb")),
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    assert_eq!(get(&proxy.url("/v1/models")).await.0.status, 502);
    assert_eq!(get(&proxy.url("/h/v1/models")).await.0.status, 504);
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "keyproxy_upstream_errors_total{kind=\"connect\",upstream=\"closed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "keyproxy_upstream_errors_total{kind=\"timeout\",upstream=\"hangs\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "keyproxy_requests_total{status=\"502\",upstream=\"closed\"}"
        ),
        1.0
    );
    proxy.stop().await;
}
