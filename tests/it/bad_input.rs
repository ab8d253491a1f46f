//! Bad input never crashes, hangs or misroutes: malformed and oversized requests, smuggling shapes,
//! path tricks, oversized admin bodies, and key files that are not keys.

use crate::common::*;
use http::Request;
use http_body_util::channel::Channel;
use http_body_util::BodyExt;

async fn proxy_with(provider: &StandIn, dir: &std::path::Path) -> Proxy {
    let config = format!(
        "admin_token = {{ file = \"{}\" }}\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}/base\"\nkey = {{ file = \"{}\" }}\n",
        key_file(dir, "token", "bad-input-admin-token-0123456789"),
        provider.url(),
        key_file(dir, "key", &openai_key("BADINPUT"))
    );
    Proxy::start(&config, dir).await
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_4xx() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(&provider, dir.path()).await;

    let answer = raw_request(proxy.addr, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw_request(
        proxy.addr,
        b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nBad Header Name: 1\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let huge = format!(
        "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nx-big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let answer = raw_request(proxy.addr, huge.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(provider.seen().is_empty());

    let (resp, _) = get(&proxy.url("/v1/models")).await;
    assert_eq!(resp.status, 200, "still serving");
    proxy.stop().await;
}

#[tokio::test]
async fn smuggling_shapes_never_make_a_second_upstream_request() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(&provider, dir.path()).await;
    let smuggle_te = b"POST /v1/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /v1/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let answer = raw_request(proxy.addr, smuggle_te).await;
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.matches("HTTP/1.1 ").count() <= 1,
        "{answer}"
    );
    let double_cl = b"POST /v1/b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 40\r\nConnection: close\r\n\r\nabcdGET /v1/smuggled HTTP/1.1\r\n\r\n";
    let answer = raw_request(proxy.addr, double_cl).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let seen: Vec<String> = provider
        .seen()
        .iter()
        .map(|s| s.uri.path().to_owned())
        .collect();
    assert!(!seen.iter().any(|p| p.contains("smuggled")), "{seen:?}");
    assert!(
        seen.len() <= 1,
        "at most the first request went upstream: {seen:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn path_tricks_stay_inside_the_upstream() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(&provider, dir.path()).await;
    for path in [
        "/..%2f..%2fadmin",
        "/v1/%2e%2e/%2e%2e/x",
        "/v1/../../x",
        "/v1/%2E/x",
    ] {
        let (resp, _) = get(&proxy.url(path)).await;
        assert_eq!(resp.status, 400, "{path}");
    }
    let answer = raw_request(
        proxy.addr,
        b"GET //evil.example/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = provider.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].uri.path().starts_with("/base/"), "{}", seen[0].uri);
    assert_eq!(seen[0].headers["host"], provider.addr.to_string().as_str());
    proxy.stop().await;
}

#[tokio::test]
async fn oversized_admin_bodies_are_refused_even_without_a_length() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_with(&provider, dir.path()).await;
    let (mut tx, body) = Channel::<bytes::Bytes, BoxError>::new(4);
    let req = Request::post(proxy.admin_url("/keys/openai"))
        .header("authorization", "Bearer bad-input-admin-token-0123456789")
        .body(body.boxed())
        .unwrap();
    let pending = tokio::spawn(client().request(req));
    let chunk = bytes::Bytes::from(vec![b'k'; 1024]);
    for _ in 0..8 {
        if tx.send_data(chunk.clone()).await.is_err() {
            break;
        }
    }
    drop(tx);
    let resp = within("the admin answer", pending).await.unwrap().unwrap();
    assert_eq!(resp.status(), 413);
    let s = status(&proxy).await;
    assert_eq!(s["upstreams"][0]["key"]["generation"], 1);
    proxy.stop().await;
}

#[tokio::test]
async fn key_files_that_are_not_keys_leave_the_upstream_unusable_with_a_clear_message() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    type Make = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Make, &str)> = vec![
        (
            "empty",
            Box::new(|p| std::fs::write(p, "").unwrap()),
            "empty",
        ),
        (
            "binary",
            Box::new(|p| std::fs::write(p, [0u8, 159, 146, 150, 0, 1]).unwrap()),
            "UTF-8",
        ),
        (
            "huge",
            Box::new(|p| std::fs::write(p, vec![b'a'; 1 << 20]).unwrap()),
            "larger than",
        ),
        (
            "directory",
            Box::new(|p| std::fs::create_dir(p).unwrap()),
            "cannot read key file",
        ),
        ("missing", Box::new(|_| ()), "No such file"),
    ];
    for (name, make, words) in cases {
        let path = dir.path().join(format!("key-{name}"));
        make(&path);
        let config = format!(
            "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n",
            provider.url(),
            path.display()
        );
        let proxy = Proxy::start(&config, dir.path()).await;
        let (resp, body) = get(&proxy.url("/v1/models")).await;
        assert_eq!(resp.status, 503, "{name}");
        let message = json(&body)["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains(words) && message.contains(&path.display().to_string()),
            "{name}: {message}"
        );
        proxy.stop().await;
    }
    assert!(provider.seen().is_empty());
}
