//! Amazon Bedrock over real sockets, against a loopback Bedrock stand-in: requests signed with
//! SigV4 from `key = { aws = … }` (the app's own signature gone), the body bound, rotated STS
//! credentials swapped in from files, short-term Bedrock API keys' own expiry, Bedrock's refusals
//! explained, and no AWS secret in any output. (botocore checks the signatures themselves in the
//! Python stage, `tests/sdk/test_bedrock.py`.)

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::common::*;

const ID: &str = "ASIAQWERTY2345ABCDEF";
const SECRET: &str = "SECRETsecretSECRETsecretSECRETsecret1234";
const TOKEN: &str = "FwoGZXIvYXdzEBsaDTOKENtokenTOKENtokenTOKEN0123456789abcdef==";
const ID2: &str = "ASIAZXCVBN2345GHIJKL";
const SECRET2: &str = "SECONDsecondSECONDsecondSECONDsecond5678";
const TOKEN2: &str = "FwoGZXIvYXdzEBsaDSECONDtokenSECONDtokenSECOND9876543210zyxw==";

/// Replace a file whole (as `aws sts` wrappers and Kubernetes do): a rename over it.
fn replace(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("{text}\n")).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn aws_config(base_url: &str, dir: &Path) -> String {
    replace(dir, "id", ID);
    replace(dir, "secret", SECRET);
    replace(dir, "token", TOKEN);
    let f = |n: &str| dir.join(n).display().to_string();
    format!(
        "[[upstreams]]\nname = \"bedrock\"\nprovider = \"bedrock\"\nbase_url = \"{base_url}\"\n\
         key = {{ aws = {{ access_key_id = {{ file = \"{}\" }}, secret_access_key = {{ file = \"{}\" }}, session_token = {{ file = \"{}\" }}, region = \"eu-west-3\" }} }}\n",
        f("id"),
        f("secret"),
        f("token")
    )
}

/// What boto3 sends: its own signature made with dummy credentials.
fn invoke(proxy: &Proxy, body: &'static str) -> Request<TestBody> {
    Request::post(proxy.url("/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke?trace=1"))
        .header("content-type", "application/json")
        .header("x-amz-date", "20200101T000000Z")
        .header("x-amz-security-token", "app-dummy-session-token")
        .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        .header("x-amzn-bedrock-trace", "ENABLED")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIADUMMYDUMMYDUMMY1/20200101/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=0000",
        )
        .body(full(body))
        .unwrap()
}

fn header(seen: &Seen, name: &str) -> String {
    seen.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn requests_are_signed_with_our_credentials_and_the_apps_signature_is_gone() {
    let bedrock = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&aws_config(&bedrock.url(), dir.path()), dir.path()).await;
    let (parts, _) = send(invoke(&proxy, r#"{"messages":[]}"#)).await;
    assert_eq!(parts.status, 200);
    let seen = bedrock.seen().pop().unwrap();
    let auth = header(&seen, "authorization");
    let day = &keyproxy::time::rfc3339_string(SystemTime::now()).replace('-', "")[..8];
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ID}/{day}/eu-west-3/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amzn-bedrock-trace, Signature=")),
        "{auth}"
    );
    let signature = auth.rsplit("Signature=").next().unwrap();
    assert_eq!(signature.len(), 64, "{auth}");
    assert_eq!(header(&seen, "x-amz-security-token"), TOKEN);
    assert!(header(&seen, "x-amz-date").starts_with(day));
    assert!(!seen.headers.contains_key("x-amz-content-sha256"));
    assert_eq!(
        seen.uri.to_string(),
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke?trace=1"
    );
    assert_eq!(seen.body, Bytes::from_static(br#"{"messages":[]}"#));
    // Signed over what was sent: the stand-in's own authority.
    assert_eq!(header(&seen, "host"), bedrock.addr.to_string());

    // An app speaking HTTP/2 (h2c): its body comes through hyper, and is read and signed the same.
    let resp = within(
        "an h2c answer",
        h2c_client().request(invoke(&proxy, r#"{"over":"h2"}"#)),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = bedrock.seen().pop().unwrap();
    assert_eq!(seen.body, Bytes::from_static(br#"{"over":"h2"}"#));
    assert!(header(&seen, "authorization").contains(&format!("Credential={ID}/")));

    // A request without a body (GET) is signed too, with the empty body's hash.
    let (parts, _) = get(&proxy.url("/async-invoke?maxResults=1")).await;
    assert_eq!(parts.status, 200);
    let seen = bedrock.seen().pop().unwrap();
    assert!(header(&seen, "authorization").contains(&format!("Credential={ID}/")));

    let status = status(&proxy).await;
    let key = &status["upstreams"][0]["key"];
    assert_eq!(key["credential"], "aws");
    assert_eq!(key["region"], "eu-west-3");
    let fingerprint = key["fingerprint"].as_str().unwrap();
    assert!(fingerprint.starts_with("ASIA…CDEF:"), "{fingerprint}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_body_over_the_bound_is_a_413_with_a_sentence_and_never_a_hang() {
    let bedrock = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&aws_config(&bedrock.url(), dir.path()), dir.path()).await;
    // Declared too large: refused before a byte of the body is read (this one never sends it).
    let head = format!(
        "POST /model/m/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"a\":",
        21 * 1024 * 1024
    );
    let answer = raw_request(proxy.addr, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than 20 MiB"), "{answer}");
    assert!(answer.contains("SigV4"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-amzn-errortype: payload_too_large"),
        "{answer}"
    );

    // Streamed without a length: read up to the bound, then refused.
    let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
    tokio::spawn(async move {
        for _ in 0..21 {
            if tx.send_data(chunk.clone()).await.is_err() {
                return;
            }
        }
    });
    let req = Request::post(proxy.url("/model/m/invoke"))
        .header("content-type", "application/json")
        .body(http_body_util::BodyExt::boxed(body))
        .unwrap();
    let (parts, body) = send(req).await;
    assert_eq!(parts.status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("larger than 20 MiB"));

    // Exactly at the bound is fine.
    let big = vec![b'y'; 20 * 1024 * 1024];
    let req = Request::post(proxy.url("/model/m/invoke"))
        .body(full(big))
        .unwrap();
    let (parts, _) = send(req).await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        bedrock.seen().len(),
        1,
        "only the request within the bound went upstream"
    );
    assert_eq!(bedrock.seen()[0].body.len(), 20 * 1024 * 1024);
    proxy.stop().await;
}

#[tokio::test]
async fn rotated_session_credentials_in_files_are_swapped_in_without_a_restart() {
    let bedrock = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "key_settle = \"50ms\"\n{}",
        aws_config(&bedrock.url(), dir.path())
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let (parts, _) = send(invoke(&proxy, "{}")).await;
    assert_eq!(parts.status, 200);
    let before = status(&proxy).await["upstreams"][0]["key"]["fingerprint"].clone();
    // What a credentials refresher does: new id, secret and token, each file replaced whole.
    replace(dir.path(), "token", TOKEN2);
    replace(dir.path(), "secret", SECRET2);
    replace(dir.path(), "id", ID2);
    eventually("the new session credentials to sign requests", || async {
        let (parts, _) = send(invoke(&proxy, "{}")).await;
        assert_eq!(parts.status, 200);
        let seen = bedrock.seen().pop().unwrap();
        header(&seen, "authorization").contains(&format!("Credential={ID2}/"))
            && header(&seen, "x-amz-security-token") == TOKEN2
    })
    .await;
    let key = status(&proxy).await["upstreams"][0]["key"].clone();
    assert_ne!(key["fingerprint"], before);
    assert!(key["fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("ASIA…IJKL:"));
    assert!(key["generation"].as_u64().unwrap() >= 2);
    proxy.stop().await;
}

/// `bedrock-api-key-` + base64 of a presigned URL signed at `signed` for `expires` seconds.
fn short_term_key(signed: SystemTime, expires: u64) -> String {
    let date: String = keyproxy::time::rfc3339_string(signed)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let url = format!("bedrock.amazonaws.com/?Action=CallWithBearerToken&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAQWERTY2345ABCDEF%2F20261206%2Fus-east-1%2Fbedrock%2Faws4_request&X-Amz-Date={date}&X-Amz-Expires={expires}&X-Amz-Security-Token=IQoJb3JpZ2luX2VjSHORTtermTOKEN&X-Amz-Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef&X-Amz-SignedHeaders=host&Version=1");
    format!(
        "bedrock-api-key-{}",
        base64::engine::general_purpose::STANDARD.encode(url)
    )
}

fn whole_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_short_term_api_keys_own_expiry_is_tracked_and_shown() {
    let bedrock = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let signed =
        SystemTime::UNIX_EPOCH + Duration::from_secs(whole_seconds(SystemTime::now()) - 3600);
    let key = short_term_key(signed, 43200);
    let config = format!(
        "[[upstreams]]\nname = \"bedrock\"\nprovider = \"bedrock\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n",
        bedrock.url(),
        key_file(dir.path(), "key", &key)
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    // boto3 signs with its dummy credentials even here: its SigV4 headers go, the key is sent.
    let (parts, _) = send(invoke(&proxy, "{}")).await;
    assert_eq!(parts.status, 200);
    assert_eq!(last_bearer(&bedrock).as_deref(), Some(key.as_str()));
    let seen = bedrock.seen().pop().unwrap();
    assert_eq!(header(&seen, "authorization"), format!("Bearer {key}"));
    for name in ["x-amz-date", "x-amz-security-token", "x-amz-content-sha256"] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream"
        );
    }
    let expires = whole_seconds(signed) + 43200;
    let status = status(&proxy).await;
    let shown = &status["upstreams"][0]["key"];
    assert_eq!(shown["credential"], "bedrock_api_key");
    assert_eq!(
        shown["expires_at"],
        keyproxy::time::rfc3339_string(SystemTime::UNIX_EPOCH + Duration::from_secs(expires))
    );
    assert!(shown["fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("bedrock-api-key-…"));
    let metrics = metrics(&proxy).await;
    assert!(
        metrics.contains(&format!(
            "keyproxy_key_expiry_timestamp_seconds{{upstream=\"bedrock\"}} {expires}"
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("expiry"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (_, page) = get(&proxy.admin_url("/")).await;
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("bedrock_api_key"),
        "the status page names the credential"
    );
    assert!(page.contains("hours"), "and says when it expires in hours");
    proxy.stop().await;
}

#[tokio::test]
async fn an_expired_short_term_api_key_is_refused_at_load_with_a_sentence() {
    let bedrock = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let key = short_term_key(SystemTime::now() - Duration::from_secs(13 * 3600), 43200);
    let config = format!(
        "[[upstreams]]\nname = \"bedrock\"\nprovider = \"bedrock\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n",
        bedrock.url(),
        key_file(dir.path(), "key", &key)
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let (parts, body) = send(
        Request::post(proxy.url("/model/m/converse"))
            .body(full("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 503);
    assert_eq!(parts.headers["x-keyproxy-reason"], "expired_key");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("short-term API key") && text.contains("expired"),
        "{text}"
    );
    assert!(bedrock.seen().is_empty());
    proxy.stop().await;
}

/// A Bedrock stand-in that refuses every request as AWS does: the code in `x-amzn-ErrorType`.
async fn refusing(error_type: &'static str, message: &'static str) -> std::net::SocketAddr {
    let handler: Handler = Arc::new(move |_req: Request<Incoming>| {
        Box::pin(async move {
            Response::builder()
                .status(403)
                .header("content-type", "application/json")
                .header(
                    "x-amzn-errortype",
                    format!(
                        "{error_type}:http://internal.amazon.com/coral/com.amazon.coral.service/"
                    ),
                )
                .header("x-amzn-requestid", "0f0e0d0c-aaaa-bbbb-cccc-000000000001")
                .body(full(format!("{{\"message\":\"{message}\"}}")))
                .unwrap()
        })
    });
    serve_plain(handler).await
}

#[tokio::test]
async fn bedrocks_refusals_are_explained_with_what_to_do_about_aws_credentials() {
    let cases = [
        (
            "ExpiredTokenException",
            "The security token included in the request is expired",
            "expired_key",
            "temporary (STS) credentials",
        ),
        (
            "InvalidSignatureException",
            "Signature expired: 20261206T000000Z is now earlier than 20261206T010000Z (20261206T010500Z - 5 min.)",
            "invalid_key",
            "clock",
        ),
        (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
            "invalid_key",
            "does not know this access key id",
        ),
        (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
            "insufficient_permissions",
            "bedrock:InvokeModel",
        ),
    ];
    for (error_type, message, reason, advice) in cases {
        let addr = refusing(error_type, message).await;
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::start(
            &aws_config(&format!("http://{addr}"), dir.path()),
            dir.path(),
        )
        .await;
        let (parts, body) = send(invoke(&proxy, "{}")).await;
        assert_eq!(parts.status, 403);
        assert_eq!(parts.headers["x-keyproxy-reason"], reason, "{error_type}");
        let v = json(&body);
        let said = v["message"].as_str().unwrap();
        assert!(said.starts_with(message), "AWS's words first: {said}");
        assert!(said.contains(advice), "{error_type}: {said}");
        assert_eq!(v["keyproxy"]["reason"], reason);
        let diagnosis = &status(&proxy).await["upstreams"][0]["recent_diagnoses"][0];
        assert_eq!(diagnosis["reason"], reason);
        proxy.stop().await;
    }
}

#[tokio::test]
async fn aws_credentials_need_provider_bedrock_and_one_upstream_each() {
    let dir = tempfile::tempdir().unwrap();
    let text = aws_config("http://127.0.0.1:9", dir.path())
        .replace("provider = \"bedrock\"", "provider = \"openai\"");
    let path = dir.path().join("k.toml");
    std::fs::write(&path, &text).unwrap();
    let e = keyproxy::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("provider = \"bedrock\""), "{e}");
    let pool = "[[upstreams]]\nname = \"b\"\nprovider = \"bedrock\"\nbase_url = \"http://127.0.0.1:9\"\nkeys = [ { aws = { access_key_id = { env = \"A\" }, secret_access_key = { env = \"B\" }, region = \"us-east-1\" } } ]\n";
    std::fs::write(&path, pool).unwrap();
    let e = keyproxy::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("key = { aws = … }"), "{e}");
    let pasted = "[[upstreams]]\nname = \"b\"\nprovider = \"bedrock\"\nbase_url = \"http://127.0.0.1:9\"\nkey = { aws = { access_key_id = \"AKIAIOSFODNN7EXAMPLE\", secret_access_key = { env = \"B\" }, region = \"us-east-1\" } }\n";
    std::fs::write(&path, pasted).unwrap();
    let e = keyproxy::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot be written into the config") && !e.contains("AKIAIOSFODNN7EXAMPLE"),
        "{e}"
    );
    // No region: named with an example, at the table (not serde's bare "missing field").
    let no_region = "[[upstreams]]\nname = \"b\"\nprovider = \"bedrock\"\nbase_url = \"http://127.0.0.1:9\"\nkey = { aws = { access_key_id = { env = \"A\" }, secret_access_key = { env = \"B\" } } }\n";
    std::fs::write(&path, no_region).unwrap();
    let e = keyproxy::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":5:") && e.contains("needs region") && e.contains("region = \"us-east-1\""),
        "{e}"
    );
}

#[tokio::test]
async fn lint_refuses_malformed_aws_credentials_without_repeating_them() {
    let bedrock = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let config = aws_config(&bedrock.url(), dir.path());
    replace(dir.path(), "secret", "TooShortSecretVALUE12345");
    let proxy = Proxy::start(&config, dir.path()).await;
    let (parts, body) = send(invoke(&proxy, "{}")).await;
    assert_eq!(parts.status, 503);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("secret access key") && text.contains("exactly 40"),
        "{text}"
    );
    assert!(!text.contains("TooShortSecretVALUE"), "{text}");
    assert!(bedrock.seen().is_empty());
    proxy.stop().await;
}

/// Every place a person or a program can read: none holds the secret access key, the session
/// token or the whole access key id.
#[tokio::test]
async fn no_aws_secret_reaches_logs_metrics_status_check_or_the_state_store() {
    // Answers the first request, refuses the second (echoing the access key id, as AWS's
    // signature errors do) so the refusal path is exercised too.
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Box::pin(async move {
            if n == 0 {
                return Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(full("{}"))
                    .unwrap();
            }
            let body = serde_json::json!({"message": format!("The request signature we calculated does not match the signature you provided. The Canonical String for this request should have been ... {auth}")});
            Response::builder()
                .status(403)
                .header("content-type", "application/json")
                .header("x-amzn-errortype", "InvalidSignatureException")
                .body(full(body.to_string()))
                .unwrap()
        })
    });
    let addr = serve_plain(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let config_text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"bedrock\"\nprovider = \"bedrock\"\nbase_url = \"http://{addr}\"\n\
         key = {{ aws = {{ access_key_id = {{ env = \"KP_TEST_AWS_ID\" }}, secret_access_key = {{ env = \"KP_TEST_AWS_SECRET\" }}, session_token = {{ env = \"KP_TEST_AWS_TOKEN\" }}, region = \"us-west-2\" }} }}\n"
    );
    let config = dir.path().join("keyproxy.toml");
    std::fs::write(&config, config_text).unwrap();
    let env = [
        ("KP_TEST_AWS_ID", ID),
        ("KP_TEST_AWS_SECRET", SECRET),
        ("KP_TEST_AWS_TOKEN", TOKEN),
    ];
    let running = run_binary(&config, &env);
    let url = |p: &str| format!("http://{}{p}", running.proxy);
    let admin = |p: &str| format!("http://{}{p}", running.admin);
    let post = || {
        Request::post(url("/model/m/invoke"))
            .header("content-type", "application/json")
            .body(full("{}"))
            .unwrap()
    };
    let (ok, _) = send(post()).await;
    assert_eq!(ok.status, 200);
    let (refused, refused_body) = send(post()).await;
    assert_eq!(refused.status, 403);
    let (_, status) = get(&admin("/status")).await;
    let (_, page) = get(&admin("/")).await;
    let (_, metrics) = get(&admin("/metrics")).await;
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_keyproxy"))
        .args(["check", "--config"])
        .arg(&config)
        .env("KEYPROXY_STATE_DIR", dir.path().join("state"))
        .envs(env)
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        check.contains("credential: aws, signing for region us-west-2"),
        "{check}"
    );
    assert!(check.contains("ASIA…CDEF:"), "{check}");
    let logs = running.stop().await;
    let mut store = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("state")).unwrap() {
        store.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let store = String::from_utf8_lossy(&store).into_owned();
    let status = String::from_utf8_lossy(&status).into_owned();
    assert!(
        status.contains("ASIA…CDEF:") && status.contains("\"credential\":\"aws\""),
        "{status}"
    );
    for (what, text) in [
        (
            "the refused answer",
            String::from_utf8_lossy(&refused_body).into_owned(),
        ),
        ("/status", status),
        (
            "the status page",
            String::from_utf8_lossy(&page).into_owned(),
        ),
        ("/metrics", String::from_utf8_lossy(&metrics).into_owned()),
        ("check", check),
        ("the log", logs),
        ("the state store", store),
    ] {
        for secret in [SECRET, TOKEN, ID, &SECRET[8..20], &TOKEN[10..30]] {
            assert!(
                !text.contains(secret),
                "{what} holds an AWS secret ({secret}): {text}"
            );
        }
    }
}

#[tokio::test]
async fn check_probe_signs_its_request_and_reads_the_error_type_header() {
    let bedrock = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyproxy.toml");
    std::fs::write(&config, aws_config(&bedrock.url(), dir.path())).unwrap();
    let probe = |config: std::path::PathBuf| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyproxy"))
            .args(["check", "--probe", "--config"])
            .arg(config)
            .env("KEYPROXY_STATE_DIR", "/nonexistent/keyproxy-test-state")
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = probe(config.clone()).await;
    assert!(
        out.contains("✓ bedrock: probe: the provider accepts the key (200)"),
        "{out}"
    );
    let seen = bedrock.seen().pop().unwrap();
    assert_eq!(seen.uri.to_string(), "/async-invoke?maxResults=1");
    assert!(
        header(&seen, "authorization").contains(&format!("Credential={ID}/")),
        "the probe is signed"
    );
    assert_eq!(header(&seen, "x-amz-security-token"), TOKEN);

    let addr = refusing("UnrecognizedClientException", "nothing specific").await;
    std::fs::write(&config, aws_config(&format!("http://{addr}"), dir.path())).unwrap();
    let out = probe(config).await;
    assert!(
        out.contains("✗ bedrock: probe: invalid_key"),
        "the header names the error: {out}"
    );
}

#[tokio::test]
async fn a_key_posted_to_the_admin_api_cannot_replace_aws_credentials() {
    let bedrock = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let token = key_file(
        dir.path(),
        "admin-token",
        "admin-token-for-tests-0123456789",
    );
    let config = format!(
        "admin_token = {{ file = \"{token}\" }}\n{}",
        aws_config(&bedrock.url(), dir.path())
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let post = |query: &str| {
        send(
            Request::post(proxy.admin_url(&format!("/keys/bedrock{query}")))
                .header("authorization", "Bearer admin-token-for-tests-0123456789")
                .body(full(
                    "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxlLWF0LTEyMzQ1Njc4OTAxMjpzZWNyZXQ=",
                ))
                .unwrap(),
        )
    };
    let (parts, body) = post("").await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(parts.status, 422, "{text}");
    assert!(
        text.contains("update the sources the aws table names"),
        "{text}"
    );
    assert!(text.contains("aws_credentials"), "{text}");
    // Nor can a plain key join it as a second key of a pool (it would go unsigned).
    let (parts, body) = post("?mode=add&name=extra").await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(parts.status, 409, "{text}");
    assert!(text.contains("aws_credentials"), "{text}");
    // The credentials in service still sign.
    let (parts, _) = send(invoke(&proxy, "{}")).await;
    assert_eq!(parts.status, 200);
    let seen = bedrock.seen().pop().unwrap();
    assert!(header(&seen, "authorization").contains(&format!("Credential={ID}/")));
    proxy.stop().await;
}

#[tokio::test]
async fn a_short_term_api_key_that_expires_in_service_is_explained_as_expired() {
    let addr = refusing(
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Signed so that it expires one to two seconds from now.
    let now = whole_seconds(SystemTime::now());
    let key = short_term_key(
        SystemTime::UNIX_EPOCH + Duration::from_secs(now + 2 - 43200),
        43200,
    );
    let config = format!(
        "[[upstreams]]\nname = \"bedrock\"\nprovider = \"bedrock\"\nbase_url = \"http://{addr}\"\nkey = {{ file = \"{}\" }}\n",
        key_file(dir.path(), "key", &key)
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let (parts, _) = send(invoke(&proxy, "{}")).await;
    assert_eq!(
        parts.headers["x-keyproxy-reason"], "invalid_key",
        "still valid by its own date: AWS's word stands"
    );
    eventually("the key's own expiry to explain the refusal", || async {
        let (parts, _) = send(invoke(&proxy, "{}")).await;
        parts.headers["x-keyproxy-reason"] == "expired_key"
    })
    .await;
    let (_, body) = send(invoke(&proxy, "{}")).await;
    let said = json(&body)["message"].as_str().unwrap().to_owned();
    assert!(said.contains("12 hours at most"), "{said}");
    proxy.stop().await;
}

/// A Bedrock base_url for one region and `aws.region` for another: every signature would be
/// refused (`InvalidSignatureException`), so `keyproxy check` says it where it is written.
#[test]
fn a_base_url_in_another_region_than_the_signing_one_is_named_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyproxy.toml");
    let run = |base: &str| {
        std::fs::write(&config, format!(
            "[[upstreams]]\nname = \"bedrock\"\nprovider = \"bedrock\"\nbase_url = \"{base}\"\n\
             key = {{ aws = {{ access_key_id = {{ env = \"KP_REGION_ID\" }}, secret_access_key = {{ env = \"KP_REGION_SECRET\" }}, region = \"us-east-1\" }} }}\n"
        )).unwrap();
        keyproxy_check(
            &config,
            &[],
            &[
                ("KP_REGION_ID", "AKIAIOSFODNN7EXAMPLE"),
                (
                    "KP_REGION_SECRET",
                    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                ),
            ],
        )
    };
    let (ok, text) = run("https://bedrock-runtime.us-west-2.amazonaws.com");
    assert!(
        !ok && text.contains("keyproxy.toml:5:")
            && text.contains("\"us-east-1\"")
            && text.contains("\"us-west-2\""),
        "{text}"
    );
    assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
    let (ok, text) = run("https://bedrock-runtime.us-east-1.amazonaws.com");
    assert!(ok, "{text}");
}
