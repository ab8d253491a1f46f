//! The key is never lent to a web page and never leaked. Over real sockets, against keyproxy on
//! 127.0.0.1:0 with an in-process stand-in provider: cross-site request shapes, DNS rebinding,
//! allowed origins end to end, the admin port's refusals, credentials in odd spellings, path
//! tricks; and the real binary facing an upstream that echoes the key back, and configs that hold
//! a secret literally.

use std::process::Command;
use std::sync::Arc;

use crate::common::*;
use http::{Request, Response};
use hyper::body::Incoming;

const BIN: &str = env!("CARGO_BIN_EXE_keyproxy");

fn config(provider: &StandIn, dir: &std::path::Path, server_extra: &str) -> String {
    format!(
        "{server_extra}\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n",
        provider.url(),
        key_file(dir, "key", &openai_key("SECguardKEY"))
    )
}

/// One raw HTTP/1.1 exchange (keyproxy closes after `Connection: close`).
async fn raw(addr: std::net::SocketAddr, head: &str, body: &str) -> (u16, String) {
    let text = raw_request(
        addr,
        format!(
            "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn web_pages_and_rebinding_hosts_get_nothing_and_the_upstream_sees_nothing() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(&provider, dir.path(), ""), dir.path()).await;
    let post = "POST /v1/chat/completions HTTP/1.1\r\n";
    let cases: &[(&str, &str, u16, &str)] = &[
        // A cross-site fetch() with a text/plain body: no preflight, the browser sends Origin.
        (
            "simple cross-site POST",
            "Host: 127.0.0.1\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\n",
            403,
            "origin_not_allowed",
        ),
        (
            "sandboxed page (Origin: null)",
            "Host: 127.0.0.1\r\nOrigin: null\r\n",
            403,
            "origin_not_allowed",
        ),
        (
            "cross-site without Origin",
            "Host: 127.0.0.1\r\nSec-Fetch-Site: cross-site\r\n",
            403,
            "origin_not_allowed",
        ),
        (
            "same-site page on another port",
            "Host: localhost\r\nSec-Fetch-Site: same-site\r\n",
            403,
            "origin_not_allowed",
        ),
        (
            "DNS rebinding",
            "Host: attacker.example:8787\r\n",
            421,
            "host_not_allowed",
        ),
        (
            "rebinding with a loopback-looking name",
            "Host: 127.0.0.1.attacker.example\r\n",
            421,
            "host_not_allowed",
        ),
        (
            "rebinding, same-origin POST",
            "Host: attacker.example:8787\r\nOrigin: http://attacker.example:8787\r\n",
            421,
            "host_not_allowed",
        ),
        (
            "rebinding handed to hyper (Expect)",
            "Host: attacker.example:8787\r\nExpect: 100-continue\r\n",
            421,
            "host_not_allowed",
        ),
    ];
    for (what, headers, status, reason) in cases {
        let (got, text) = raw(proxy.addr, &format!("{post}{headers}"), "{}").await;
        assert_eq!(got, *status, "{what}: {text}");
        assert_eq!(
            header(&text, "x-keyproxy-reason"),
            Some(*reason),
            "{what}: {text}"
        );
        assert_eq!(header(&text, "access-control-allow-origin"), None, "{what}");
        let body = json(text.split("\r\n\r\n").nth(1).unwrap().as_bytes());
        assert_eq!(body["error"]["code"], *reason, "{what}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("[server] allowed_"),
            "{what}: the sentence says what to change: {body}"
        );
    }
    // A preflight would carry the key upstream if it were forwarded; it never is.
    let (got, text) = raw(
        proxy.addr,
        "OPTIONS /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:8787\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: anthropic-dangerous-direct-browser-access, x-api-key\r\n",
        "",
    )
    .await;
    assert_eq!(got, 403, "{text}");
    assert_eq!(header(&text, "access-control-allow-origin"), None);
    // Over h2c the authority is checked as well.
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::post("http://attacker.example:8787/v1/chat/completions")
                .body(full("{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 421);
    assert_eq!(resp.headers()["x-keyproxy-reason"], "host_not_allowed");

    assert!(
        provider.seen().is_empty(),
        "nothing was forwarded: {:?}",
        provider.seen()
    );
    let metrics = metrics(&proxy).await;
    assert!(
        metrics.contains(
            "keyproxy_refusals_total{listener=\"proxy\",reason=\"origin_not_allowed\"} 5"
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("keyproxy_refusals_total{listener=\"proxy\",reason=\"host_not_allowed\"} 5"),
        "{metrics}"
    );
    // Ordinary apps (no Origin, a loopback Host) still work.
    let (got, text) = raw(proxy.addr, &format!("{post}Host: localhost:8787\r\n"), "{}").await;
    assert_eq!(got, 200, "{text}");
    assert_eq!(provider.seen().len(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn an_allowed_origin_works_end_to_end_with_keyproxys_own_cors_headers() {
    // The provider answers CORS for anyone; keyproxy decides instead.
    let cors_provider: Handler = Arc::new(|_req: Request<Incoming>| {
        Box::pin(async {
            Response::builder()
                .header("access-control-allow-origin", "*")
                .header("access-control-allow-credentials", "true")
                .header("content-type", "application/json")
                .body(full(r#"{"ok":true}"#))
                .unwrap()
        })
    });
    let cors_addr = serve_plain(cors_provider).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "allowed_origins = [\"http://localhost:3000\"]\nallowed_hosts = [\"keyproxy.internal\"]\n\
         [[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"http://{cors_addr}\"\nkey = {{ file = \"{}\" }}\n",
        key_file(dir.path(), "key", &openai_key("SECcorsKEY"))
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    let (got, pre) = raw(
        proxy.addr,
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: keyproxy.internal:8787\r\nOrigin: http://localhost:3000\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\nAccess-Control-Request-Private-Network: true\r\n",
        "",
    )
    .await;
    assert_eq!(got, 204, "{pre}");
    assert_eq!(
        header(&pre, "access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(header(&pre, "access-control-allow-methods"), Some("POST"));
    assert_eq!(
        header(&pre, "access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(
        header(&pre, "access-control-allow-private-network"),
        Some("true")
    );
    assert!(header(&pre, "access-control-max-age").is_some());
    assert!(header(&pre, "vary").unwrap().contains("Origin"));

    let (got, text) = raw(
        proxy.addr,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:8787\r\nOrigin: http://localhost:3000\r\nContent-Type: application/json\r\n",
        "{}",
    )
    .await;
    assert_eq!(got, 200, "{text}");
    assert_eq!(
        header(&text, "access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(
        header(&text, "access-control-allow-credentials"),
        None,
        "the upstream's CORS is gone"
    );
    assert!(header(&text, "access-control-expose-headers")
        .unwrap()
        .contains("x-keyproxy-reason"));
    // keyproxy's own refusals are readable by the allowed page too.
    let (got, text) = raw(
        proxy.addr,
        "GET /v1/../admin HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\n",
        "",
    )
    .await;
    assert_eq!(got, 400, "{text}");
    assert_eq!(
        header(&text, "access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    // Another origin is still refused, and the admin port has no allow-list at all.
    let (got, _) = raw(
        proxy.addr,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3001\r\n",
        "{}",
    )
    .await;
    assert_eq!(got, 403);
    let (got, _) = raw(
        proxy.admin,
        "GET /status HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\n",
        "",
    )
    .await;
    assert_eq!(got, 403);
    proxy.stop().await;
}

#[tokio::test]
async fn the_admin_port_answers_no_web_page_and_no_foreign_host() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let token = "security-admin-token-0123456789";
    let server = format!(
        "admin_token = {{ file = \"{}\" }}",
        key_file(dir.path(), "admin", token)
    );
    let proxy = Proxy::start(&config(&provider, dir.path(), &server), dir.path()).await;
    for (what, request, status, reason) in [
        ("status page, rebinding", "GET / HTTP/1.1\r\nHost: attacker.example:8788\r\n".to_string(), 421, Some("host_not_allowed")),
        ("/status, rebinding", "GET /status HTTP/1.1\r\nHost: attacker.example\r\n".to_string(), 421, Some("host_not_allowed")),
        ("/status from a page", "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n".to_string(), 403, Some("origin_not_allowed")),
        ("/metrics, cross-site", "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nSec-Fetch-Site: cross-site\r\n".to_string(), 403, Some("origin_not_allowed")),
        ("rotation from a page", format!("POST /keys/openai HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain\r\n"), 403, Some("origin_not_allowed")),
        ("rotation as a form", format!("POST /keys/openai HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-www-form-urlencoded\r\n"), 415, None),
        ("rotation as multipart", format!("POST /keys/openai HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: multipart/form-data; boundary=x\r\n"), 415, None),
    ] {
        let (got, text) = raw(proxy.admin, &request, &openai_key("SECadminNEW")).await;
        assert_eq!(got, status, "{what}: {text}");
        assert_eq!(header(&text, "x-keyproxy-reason"), reason, "{what}: {text}");
    }
    // The key in use was never replaced.
    let status = status(&proxy).await;
    assert_eq!(status["upstreams"][0]["key"]["generation"], 1);
    let metrics = metrics(&proxy).await;
    assert!(
        metrics
            .contains("keyproxy_refusals_total{listener=\"admin\",reason=\"host_not_allowed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "keyproxy_refusals_total{listener=\"admin\",reason=\"origin_not_allowed\"} 3"
        ),
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn credentials_in_any_spelling_and_path_tricks_never_reach_the_upstream() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(&provider, dir.path(), ""), dir.path()).await;
    let (got, text) = raw(
        proxy.addr,
        "POST /v1/chat/completions?alt=sse&Key=AIzaAppKey1&KEY=AIzaAppKey2&%6bey=AIzaAppKey3&k%65y=AIzaAppKey4 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         x_api_key: sk-underscored-1\r\napi_key: sk-underscored-2\r\nx_goog_api_key: sk-underscored-3\r\nopenai_api_key: sk-underscored-4\r\n",
        "{}",
    )
    .await;
    assert_eq!(got, 200, "{text}");
    let seen = provider.seen();
    let seen = seen.last().unwrap();
    assert_eq!(seen.uri.query(), Some("alt=sse"));
    for (name, value) in &seen.headers {
        assert!(!name.as_str().contains('_'), "{name} reached the upstream");
        assert!(
            !value.to_str().unwrap_or("").contains("underscored"),
            "{name}: {value:?}"
        );
    }
    for path in [
        "/v1/%252e%252e/admin",
        "/v1/..;/admin",
        "/v1/..;jsessionid=x/admin",
        "/v1/.;/models",
        "/v1/%25%32%65%25%32%65/admin",
    ] {
        let (got, text) = raw(
            proxy.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
            "",
        )
        .await;
        assert_eq!(got, 400, "{path}: {text}");
    }
    assert_eq!(provider.seen().len(), 1, "no trick was forwarded");
    proxy.stop().await;
}

/// An upstream that quotes the key it received: whole and as a 12-character piece, in the body
/// and in headers, for 400/401/403/429 and a 500, plain and gzip-compressed.
fn echoing_upstream() -> Handler {
    Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let key = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().trim_start_matches("Bearer ").to_owned())
                .unwrap_or_default();
            let path = req.uri().path().to_owned();
            let status: u16 = path
                .trim_start_matches("/v1/echo/")
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap_or(401);
            let piece = &key[20..32];
            let body = format!(
                r#"{{"error":{{"message":"Incorrect API key provided: {key}. You passed '{piece}'.","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
            );
            let mut resp = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("x-echo-key", key.as_str())
                .header("x-echo-piece", format!("got {piece} here"));
            let body = if path.ends_with("/gzip") {
                use std::io::Write;
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(body.as_bytes()).unwrap();
                resp = resp.header("content-encoding", "gzip");
                gz.finish().unwrap()
            } else {
                body.into_bytes()
            };
            resp.body(full(body)).unwrap()
        })
    })
}

fn assert_no_piece(secret: &str, what: &str, text: &str) {
    let chars: Vec<char> = secret.chars().collect();
    for piece in chars.windows(12) {
        let piece: String = piece.iter().collect();
        assert!(
            !text.contains(&piece),
            "a 12-character piece of a secret ({piece}) is in {what}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_echoes_the_key_gets_it_masked_everywhere() {
    let upstream = serve_plain(echoing_upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = openai_key("SECechoKEYq7Wv3Nx");
    let config = dir.path().join("keyproxy.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"http://{upstream}\"\nkey = {{ file = \"{}\" }}\n",
            key_file(dir.path(), "key", &key)
        ),
    )
    .unwrap();
    let running = run_binary(&config, &[]);
    let mut seen = String::new();
    for path in [
        "/v1/echo/401",
        "/v1/echo/400",
        "/v1/echo/403",
        "/v1/echo/429",
        "/v1/echo/500",
        "/v1/echo/404",
        "/v1/echo/401/gzip",
        "/v1/echo/403/gzip",
    ] {
        let (parts, body) = send(
            Request::post(format!("http://{}{path}", running.proxy))
                .body(full("{}"))
                .unwrap(),
        )
        .await;
        let status: u16 = path.split('/').nth(3).unwrap().parse().unwrap();
        assert_eq!(parts.status.as_u16(), status, "{path}");
        if let Some(len) = parts.headers.get("content-length") {
            assert_eq!(
                len.to_str().unwrap(),
                body.len().to_string(),
                "{path}: Content-Length stays true"
            );
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        assert!(
            text.contains("Incorrect API key provided: sk-proj-****"),
            "{path}: masked in place: {text}"
        );
        if status == 401 {
            let v = json(&body);
            assert_eq!(
                v["keyproxy"]["reason"], "invalid_key",
                "{path}: still explained: {v}"
            );
        }
        for (name, value) in &parts.headers {
            seen.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        seen.push_str(&text);
        seen.push('\n');
    }
    for path in ["/status", "/", "/metrics"] {
        let (_, body) = get(&format!("http://{}{path}", running.admin)).await;
        seen.push_str(&String::from_utf8_lossy(&body));
    }
    let status: serde_json::Value = json(&get(&format!("http://{}/status", running.admin)).await.1);
    assert!(
        !status["upstreams"][0]["recent_diagnoses"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the refusals were recorded: {status}"
    );
    let logs = running.stop().await;
    assert!(logs.contains("invalid_key"), "the refusals were logged");
    assert_no_piece(
        &key,
        "responses, /status, the status page or /metrics",
        &seen,
    );
    assert_no_piece(&key, "the log", &logs);
}

#[test]
fn a_secret_written_into_the_config_is_refused_without_being_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let key = openai_key("SECliteralKEYz9");
    let token = "SEC-literal-client-token-Hq3Lm8Vb";
    let admin = "SEC-literal-admin-token-Xw2Rt6Yu";
    let upstream = |key_line: &str| {
        format!("[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"https://api.openai.com\"\n{key_line}\n")
    };
    let cases = [
        ("upstreams[0].key", upstream(&format!("key = \"{key}\""))),
        (
            "upstreams[0].key",
            upstream(&format!("key = {{ env = \"{key}\" }}")),
        ),
        (
            "upstreams[0].key",
            upstream(&format!("key = {{ file = \"{key}\" }}")),
        ),
        (
            "upstreams[0].key",
            upstream(&format!("key = {{ {key} = \"x\" }}")),
        ),
        (
            "upstreams[0].key",
            upstream(&format!("key = {{ env = \"A\", file = \"{key}\" }}")),
        ),
        (
            "clients[0].token",
            format!(
                "{}[[clients]]\nname = \"app\"\ntoken = \"{token}\"\n",
                upstream("key = { env = \"OPENAI_API_KEY\" }")
            ),
        ),
        (
            "server.admin_token",
            format!(
                "[server]\nadmin_token = \"{admin}\"\n{}",
                upstream("key = { env = \"OPENAI_API_KEY\" }")
            ),
        ),
    ];
    for (field, text) in cases {
        let path = dir.path().join("keyproxy.toml");
        std::fs::write(&path, &text).unwrap();
        for command in ["check", "run"] {
            let out = Command::new(BIN)
                .args([command, "--config"])
                .arg(&path)
                .env("OPENAI_API_KEY", openai_key("SECenvKEY"))
                .output()
                .unwrap();
            assert!(!out.status.success(), "{command} refused: {text}");
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                all.contains(field),
                "{command}: names the field {field}: {all}"
            );
            assert!(
                all.contains("{ env = "),
                "{command}: says what to write instead: {all}"
            );
            for secret in [key.as_str(), token, admin] {
                assert_no_piece(secret, &format!("`{command}` output"), &all);
            }
        }
    }
    // An environment variable's name is not a secret: the hint can name it.
    let path = dir.path().join("keyproxy.toml");
    std::fs::write(&path, upstream("key = \"OPENAI_API_KEY\"")).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        all.contains("did you mean { env = \"OPENAI_API_KEY\" }"),
        "{all}"
    );
}

#[tokio::test]
async fn a_command_source_is_shown_by_its_program_and_argument_count() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_arg = "SEC-command-arg-token-Jk4Pz7Qe";
    let text = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ command = [\"/bin/false\", \"--token\", \"{secret_arg}\"] }}\n",
        provider.url()
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    let status = status(&proxy).await;
    let source = status["upstreams"][0]["key"]["source"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(source, "command /bin/false (2 arguments)");
    let (_, body) = send(
        Request::post(proxy.url("/v1/chat/completions"))
            .body(full("{}"))
            .unwrap(),
    )
    .await;
    let all = format!("{status}{}", String::from_utf8_lossy(&body));
    assert!(!all.contains(secret_arg), "{all}");
    proxy.stop().await;
}

#[test]
fn check_prints_the_browser_and_host_posture() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", &openai_key("SECpostureKEY"));
    let upstream = format!("[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"https://api.openai.com\"\nkey = {{ file = \"{key}\" }}\n");
    let path = dir.path().join("keyproxy.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let closed = check(&upstream);
    assert!(
        closed.contains("✓ browsers: no web origins allowed"),
        "{closed}"
    );
    assert!(
        closed.contains("✓ hosts: only loopback names and addresses are answered"),
        "{closed}"
    );
    let open = check(&format!(
        "[server]\nallowed_origins = [\"http://localhost:3000\"]\nallowed_hosts = [\"keyproxy.internal\"]\n{upstream}"
    ));
    assert!(
        open.contains("⚠ browsers: pages on these origins can use the key through the proxy: http://localhost:3000"),
        "{open}"
    );
    assert!(open.contains("keyproxy.internal are answered"), "{open}");
}
