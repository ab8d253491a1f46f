//! The secret canary: drive every kind of traffic through the real binary with distinctive keys and
//! tokens — success, streams, every fixture refusal, client-token failures, rotations accepted and
//! refused, probes, status, metrics, shutdown — and assert that no key or token, nor any 12-character
//! piece of one, appears in the logs, /metrics, /status, the status page, or any response.

use std::sync::Arc;

use crate::common::*;
use http::{Request, Response};
use hyper::body::Incoming;

#[derive(serde::Deserialize)]
struct Row {
    status: u16,
    body: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn no_key_or_token_ever_leaves_keyproxy() {
    let key = openai_key("CANARYk1Qz7Wv");
    let rotated = openai_key("CANARYk2Rx8Yu");
    let quoted = format!("\"{}\"", openai_key("CANARYk3Sy9Xt"));
    let refused_by_probe = openai_key("CANARYk4Tz0Ws");
    let admin_token = "CANARYadmin-token-Pq5Lm8Nb3Vc";
    let client_a = "CANARYclient-a-Hj4Kd7Fs2Gw";
    let client_b = "CANARYclient-b-Yt6Re1Wq9Zx";
    let secrets: Vec<String> = [
        key.as_str(),
        &rotated,
        &quoted,
        &refused_by_probe,
        admin_token,
        client_a,
        client_b,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let rows: Arc<Vec<Row>> = Arc::new(
        include_str!("../fixtures/provider-errors.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    );
    let good = Arc::new(vec![key.clone(), rotated.clone()]);
    let provider: Handler = Arc::new(move |req: Request<Incoming>| {
        let (rows, good) = (rows.clone(), good.clone());
        Box::pin(async move {
            let bearer = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().trim_start_matches("Bearer ").to_owned())
                .unwrap_or_default();
            let (status, ctype, body) = if let Some(n) = req.headers().get("x-fixture-row") {
                let row = &rows[n.to_str().unwrap().parse::<usize>().unwrap()];
                (row.status, "application/json", row.body.clone())
            } else if !good.contains(&bearer) {
                (401, "application/json", r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#.to_owned())
            } else if req.uri().path() == "/v1/stream" {
                (200, "text/event-stream", "data: {\"choices\":[]}\n\nevent: error\ndata: {\"type\":\"error\"}\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n".to_owned())
            } else {
                (
                    200,
                    "application/json",
                    r#"{"ok":true,"usage":{"prompt_tokens":3,"completion_tokens":4}}"#.to_owned(),
                )
            };
            Response::builder()
                .status(status)
                .header("content-type", ctype)
                .body(full(body))
                .unwrap()
        })
    });
    let upstream = serve_plain(provider).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyproxy.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = {{ file = \"{}\" }}\n\
             [[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"http://{upstream}\"\nkey = {{ file = \"{}\" }}\nexpires_at = \"2020-01-01\"\n\
             [[clients]]\nname = \"a\"\ntoken = {{ file = \"{}\" }}\n\
             [[clients]]\nname = \"b\"\ntoken = {{ env = \"CANARY_CLIENT_B\" }}\n",
            key_file(dir.path(), "admin", admin_token),
            key_file(dir.path(), "key", &key),
            key_file(dir.path(), "client-a", client_a),
        ),
    )
    .unwrap();
    let running = run_binary(&config, &[("CANARY_CLIENT_B", client_b)]);
    let (proxy, admin) = (running.proxy.clone(), running.admin.clone());

    let mut seen = String::new();
    let mut exchange = |parts: http::response::Parts, body: bytes::Bytes| {
        for (name, value) in &parts.headers {
            seen.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        seen.push_str(&String::from_utf8_lossy(&body));
        seen.push('\n');
    };
    let as_client = |path: &str, token: Option<&str>| {
        let mut r = Request::post(format!("http://{proxy}{path}"));
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r
    };
    for (path, token) in [
        ("/v1/chat/completions", Some(client_a)),
        ("/v1/stream", Some(client_b)),
        ("/v1/chat/completions", None),
        ("/v1/chat/completions", Some("not-a-client-token-at-all")),
    ] {
        let (p, b) = send(as_client(path, token).body(full("{}")).unwrap()).await;
        exchange(p, b);
    }
    let x_api_key = Request::post(format!("http://{proxy}/v1/chat/completions"))
        .header("x-api-key", client_a)
        .body(full("{}"))
        .unwrap();
    let (p, b) = send(x_api_key).await;
    exchange(p, b);
    for n in 0..include_str!("../fixtures/provider-errors.jsonl")
        .lines()
        .count()
    {
        let req = as_client("/v1/fixture", Some(client_a))
            .header("x-fixture-row", n.to_string())
            .body(full("{}"))
            .unwrap();
        let (p, b) = send(req).await;
        exchange(p, b);
    }
    let rotate = |body: String, query: &str| {
        Request::post(format!("http://{admin}/keys/openai{query}"))
            .header("authorization", format!("Bearer {admin_token}"))
            .body(full(body))
            .unwrap()
    };
    for (body, query, want) in [
        (quoted.clone(), "", 422u16),
        (refused_by_probe.clone(), "?probe=true", 422),
        (rotated.clone(), "?probe=true", 200),
    ] {
        let (p, b) = send(rotate(body, query)).await;
        assert_eq!(p.status.as_u16(), want);
        exchange(p, b);
    }
    let wrong_admin = Request::post(format!("http://{admin}/keys/openai"))
        .header("authorization", format!("Bearer {client_a}"))
        .body(full(key.clone()))
        .unwrap();
    let (p, b) = send(wrong_admin).await;
    assert_eq!(p.status, 401);
    exchange(p, b);
    // The app still holding the rotated-out key: stripped, never echoed.
    let (p, b) = send(
        as_client("/v1/chat/completions", Some(client_a))
            .header("x-api-key", key.as_str())
            .body(full("{}"))
            .unwrap(),
    )
    .await;
    exchange(p, b);
    for path in ["/status", "/metrics", "/", "/readyz", "/healthz"] {
        let (p, b) = get(&format!("http://{admin}{path}")).await;
        exchange(p, b);
    }

    let logs = running.stop().await;
    assert!(
        logs.contains("key rotated") && logs.contains("key rotation refused"),
        "the traffic happened"
    );
    assert!(logs.contains("reported an error inside the event stream"));

    for (what, text) in [
        ("the log", &logs),
        ("responses, /status, /metrics and the status page", &seen),
    ] {
        for secret in &secrets {
            let chars: Vec<char> = secret.chars().collect();
            for piece in chars.windows(12) {
                let piece: String = piece.iter().collect();
                assert!(
                    !text.contains(&piece),
                    "a 12-character piece of a secret ({piece}) is in {what}"
                );
            }
        }
    }
}
