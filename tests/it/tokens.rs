//! Token credentials over real sockets: a stand-in token endpoint (OAuth2 / Entra ID / Google's,
//! the Google one verifying the JWT assertion's RS256 signature with the service account's public
//! key) and a stand-in provider that accepts only a token the endpoint issued and that has not
//! expired. Tokens live a second or two, so refreshes happen under load while the test watches.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;

use crate::common::*;
use crate::load::Load;

/// The client secret the stand-in Entra endpoint expects (never to be seen in any output).
const CLIENT_SECRET: &str = "entra-client-secret-Qx7~TESTONLY-0123456789";
const TEST_PEM: &str = include_str!("../fixtures/test-only-service-account-rsa.pem");
const TEST_PUB: &str = include_str!("../fixtures/test-only-service-account-rsa.pub.pem");
const OTHER_PEM: &str = include_str!("../fixtures/test-only-other-rsa.pem");
const SA_EMAIL: &str = "keyproxy-test@test-project.iam.gserviceaccount.com";
/// In every token the endpoint issues, and in no fingerprint (those keep the last 4 characters).
const TOKEN_MARK: &str = "Zq8xTOKENzq8x";

/// What the stand-in token endpoint answers.
#[derive(Clone)]
enum Mode {
    Issue,
    Refuse(u16, String),
}

/// The stand-in token endpoint's memory: tokens issued (with their expiry), calls, what to answer.
struct Issuer {
    issued: Mutex<Vec<(String, Instant)>>,
    revoked: Mutex<Vec<String>>,
    mode: Mutex<Mode>,
    lifetime: AtomicU64,
    calls: AtomicUsize,
    /// Why the last request was refused by the stand-in's own checks (wrong form, bad JWT).
    complaint: Mutex<Option<String>>,
}

impl Issuer {
    fn new(lifetime_secs: u64) -> Arc<Issuer> {
        Arc::new(Issuer {
            issued: Mutex::default(),
            revoked: Mutex::default(),
            mode: Mutex::new(Mode::Issue),
            lifetime: AtomicU64::new(lifetime_secs),
            calls: AtomicUsize::new(0),
            complaint: Mutex::default(),
        })
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn tokens(&self) -> Vec<String> {
        self.issued
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Issue (or refuse) after `check` found the request well-formed.
    fn answer(&self, check: Result<(), String>) -> (u16, String) {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Err(why) = check {
            *self.complaint.lock().unwrap() = Some(why.clone());
            return (
                400,
                serde_json::json!({"error": "invalid_request", "error_description": why})
                    .to_string(),
            );
        }
        match self.mode.lock().unwrap().clone() {
            Mode::Refuse(status, body) => (status, body),
            Mode::Issue => {
                let lifetime = self.lifetime.load(Ordering::SeqCst);
                let token = format!("eyJ0.tok{n:04}.{TOKEN_MARK}{n:04}");
                self.issued.lock().unwrap().push((
                    token.clone(),
                    Instant::now() + Duration::from_secs(lifetime),
                ));
                (
                    200,
                    serde_json::json!({"token_type": "Bearer", "expires_in": lifetime, "access_token": token}).to_string(),
                )
            }
        }
    }

    /// A token the endpoint issued, not revoked, not expired.
    fn accepts(&self, token: &str) -> bool {
        if self.revoked.lock().unwrap().iter().any(|t| t == token) {
            return false;
        }
        self.issued
            .lock()
            .unwrap()
            .iter()
            .any(|(t, until)| t == token && Instant::now() < *until)
    }
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An Entra ID stand-in at `/{tenant}/oauth2/v2.0/token`, checking the client-credentials form.
async fn entra(issuer: Arc<Issuer>) -> StandIn {
    StandIn::recording(move |seen| {
        let f = form(&seen.body);
        let check = (|| {
            if seen.uri.path() != "/contoso-tenant/oauth2/v2.0/token" {
                return Err(format!("wrong path {}", seen.uri.path()));
            }
            let expect = [
                ("grant_type", "client_credentials"),
                ("client_id", "11111111-app"),
                ("client_secret", CLIENT_SECRET),
                ("scope", "https://cognitiveservices.azure.com/.default"),
            ];
            for (k, v) in expect {
                if field(&f, k) != Some(v) {
                    return Err(format!("{k} is not {v}"));
                }
            }
            Ok(())
        })();
        issuer.answer(check)
    })
    .await
}

/// A provider stand-in that answers 200 only to `Authorization: Bearer <a token the issuer
/// accepts>` (with no `api-key` left from the app), else Azure's 401 for a bad Entra token.
async fn provider(issuer: Arc<Issuer>) -> StandIn {
    StandIn::recording(move |seen| {
        let bearer = seen
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match bearer {
            Some(t) if issuer.accepts(t) && !seen.headers.contains_key("api-key") => {
                (200, r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[]}"#.into())
            }
            _ => (
                401,
                r#"{"error":{"code":"401","message":"Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired."}}"#.into(),
            ),
        }
    })
    .await
}

fn azure_config(dir: &Path, base: &str, authority: &str) -> String {
    let secret = key_file(dir, "client-secret", CLIENT_SECRET);
    format!(
        "[[upstreams]]\nname = \"azure\"\nprovider = \"azure\"\nbase_url = \"{base}\"\n\
         key = {{ azure_ad = {{ tenant_id = \"contoso-tenant\", client_id = \"11111111-app\", client_secret = {{ file = \"{secret}\" }}, authority = \"{authority}\" }} }}\n"
    )
}

/// An Entra stand-in issuing tokens of `lifetime_secs`, an Azure stand-in checking them, and
/// keyproxy between (the directory holds its config and state).
async fn azure(lifetime_secs: u64) -> (tempfile::TempDir, Arc<Issuer>, StandIn, StandIn, Proxy) {
    azure_with(Issuer::new(lifetime_secs)).await
}

/// `azure`, with an issuer set up beforehand (refusing from the start, say).
async fn azure_with(
    issuer: Arc<Issuer>,
) -> (tempfile::TempDir, Arc<Issuer>, StandIn, StandIn, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = entra(Arc::clone(&issuer)).await;
    let upstream = provider(Arc::clone(&issuer)).await;
    let proxy = Proxy::start(
        &azure_config(dir.path(), &upstream.url(), &endpoint.url()),
        dir.path(),
    )
    .await;
    (dir, issuer, endpoint, upstream, proxy)
}

const CHAT: &str = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";

async fn chat(proxy: &Proxy) -> (http::response::Parts, bytes::Bytes) {
    send(
        Request::post(proxy.url(CHAT))
            .header("api-key", "dummy-key-the-sdk-insists-on")
            .header("content-type", "application/json")
            .body(full(r#"{"messages":[{"role":"user","content":"hi"}]}"#))
            .unwrap(),
    )
    .await
}

/// The value of one series in a /metrics text (0 when absent).
fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map_or(0, |v| v as u64)
}

/// Wait (polling /metrics) until `upstream` has minted its first token and `refreshes` more, then
/// stop the load: every request was answered 200, and no refresh failed.
async fn refreshed_under(load: Load, proxy: &Proxy, upstream: &str, refreshes: u64) {
    let ok =
        format!("keyproxy_credential_refreshes_total{{result=\"ok\",upstream=\"{upstream}\"}}");
    let failed =
        format!("keyproxy_credential_refreshes_total{{result=\"failed\",upstream=\"{upstream}\"}}");
    within("refreshes under load", async {
        while series(&metrics(proxy).await, &ok) < refreshes + 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    load.stop_expecting_no_failure(100).await;
    assert_eq!(
        series(&metrics(proxy).await, &failed),
        0,
        "no refresh failed"
    );
}

/// The distinct `Authorization` values that reached `upstream`.
fn credentials_used(upstream: &StandIn) -> std::collections::HashSet<String> {
    upstream
        .seen()
        .iter()
        .filter_map(|s| {
            s.headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect()
}

const REFRESH_FAILED: &str =
    "keyproxy_credential_refreshes_total{result=\"failed\",upstream=\"azure\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entra_tokens_are_refreshed_under_load_with_no_failed_request() {
    let (dir, issuer, _endpoint, upstream, proxy) = azure(2).await;
    let url = proxy.url(CHAT);
    let load = Load::start(4, move || {
        Request::post(&url)
            .header("api-key", "dummy")
            .body(full(r#"{"messages":[]}"#))
            .unwrap()
    });
    // 1 token at startup, then at least 10 refreshes while the load runs.
    refreshed_under(load, &proxy, "azure", 10).await;
    assert_eq!(
        *issuer.complaint.lock().unwrap(),
        None,
        "the token requests were well-formed"
    );
    let used = credentials_used(&upstream);
    assert!(
        used.len() >= 10,
        "requests went out with {} tokens",
        used.len()
    );
    let m = metrics(&proxy).await;
    assert!(series(&m, "keyproxy_key_rotations_total{result=\"applied\",trigger=\"refresh\",upstream=\"azure\"}") >= 10);
    let expiry = series(
        &m,
        "keyproxy_key_expiry_timestamp_seconds{upstream=\"azure\"}",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry >= now.saturating_sub(1) && expiry <= now + 3,
        "the expiry gauge carries the token's ({expiry} vs now {now})"
    );
    let status = status(&proxy).await;
    assert_eq!(status["upstreams"][0]["key"]["credential"], "azure_ad");
    let credential = &status["upstreams"][0]["token_refresh"];
    assert_eq!(credential["kind"], "azure_ad", "{credential}");
    assert_eq!(credential["client"], "11111111-app");
    assert_eq!(credential["last_result"], "ok");
    assert!(
        credential["token_expires_at"].is_string() && credential["next_refresh_at"].is_string()
    );
    assert_no_secret(&status.to_string(), &issuer.tokens());
    assert_no_secret(&m, &issuer.tokens());
    let (_, page) = get(&proxy.admin_url("/")).await;
    let page = String::from_utf8_lossy(&page).into_owned();
    assert!(
        page.contains("azure_ad") && page.contains("last refresh"),
        "the status page shows the credential"
    );
    assert_no_secret(&page, &issuer.tokens());
    proxy.stop().await;
    let db = std::fs::read(dir.path().join("state").join("keyproxy.db")).unwrap_or_default();
    assert_no_secret(&String::from_utf8_lossy(&db), &issuer.tokens());
}

/// Neither the client secret nor any issued token (nor a telling part of one) is in `text`.
fn assert_no_secret(text: &str, tokens: &[String]) {
    assert!(!text.contains(CLIENT_SECRET), "the client secret leaked");
    assert!(!text.contains(TOKEN_MARK), "a token leaked");
    for t in tokens {
        assert!(!text.contains(t.as_str()), "token {t} leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_refreshed_once_and_the_request_replayed() {
    let (_dir, issuer, _endpoint, upstream, proxy) = azure(3600).await;
    let (head, _) = chat(&proxy).await;
    assert_eq!(head.status, 200);
    assert_eq!(issuer.calls.load(Ordering::SeqCst), 1);
    // The provider stops accepting the token long before its expiry (revoked, key regenerated):
    // five requests at once each get a 401, share one refresh, and go again with the new token.
    issuer.revoked.lock().unwrap().extend(issuer.tokens());
    let answers = futures_join(&proxy, 5).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    assert_eq!(
        issuer.calls.load(Ordering::SeqCst),
        2,
        "one refresh for five refusals"
    );
    // Those sent before the refresh were refused once and replayed; any sent after it went out
    // with the new token at once.
    let first = format!("Bearer {}", issuer.tokens()[0]);
    let after: Vec<_> = upstream.seen().into_iter().skip(1).collect();
    let refused = after
        .iter()
        .filter(|s| s.headers["authorization"] == first.as_str())
        .count();
    assert!(refused >= 1, "the first request at least was refused");
    assert_eq!(
        after.len(),
        5 + refused,
        "each refused request went again once"
    );
    let bodies: Vec<_> = after.iter().map(|s| s.body.clone()).collect();
    assert!(
        bodies
            .iter()
            .all(|b| b.as_ref() == br#"{"messages":[{"role":"user","content":"hi"}]}"#),
        "the replay carries the body"
    );
    // A token the provider still refuses after the refresh: the 401 goes back, explained, and
    // refusals do not drive the endpoint (at most one refresh per 5 s).
    issuer.revoked.lock().unwrap().extend(issuer.tokens());
    let (head, body) = chat(&proxy).await;
    assert_eq!(head.status, 401, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8_lossy(&body);
    assert_eq!(head.headers["x-keyproxy-reason"], "invalid_key");
    assert!(
        text.contains("a token minted by its azure_ad credential")
            && text.contains("Cognitive Services OpenAI User")
            && !text.contains("dashboard"),
        "{text}"
    );
    let (head, _) = chat(&proxy).await;
    assert_eq!(head.status, 401);
    assert_eq!(
        issuer.calls.load(Ordering::SeqCst),
        2,
        "no refresh within 5 s of the last one a refusal made"
    );
    proxy.stop().await;
}

/// `keyproxy check --probe` on `config`: whether it passed, and everything it printed.
async fn check_probe(config: std::path::PathBuf) -> (bool, String) {
    tokio::task::spawn_blocking(move || keyproxy_check(&config, &["--probe"], &[]))
        .await
        .unwrap()
}

/// A 503 of keyproxy's own with `reason`: its sentence.
fn unavailable(answer: (http::response::Parts, bytes::Bytes), reason: &str) -> String {
    let (head, body) = answer;
    assert_eq!(head.status, 503);
    assert_eq!(head.headers["x-keyproxy-reason"], reason);
    String::from_utf8_lossy(&body).into_owned()
}

/// `n` chat requests at once; each one's status and body.
async fn futures_join(proxy: &Proxy, n: usize) -> Vec<(u16, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = proxy.url(CHAT);
            tokio::spawn(async move {
                let (head, body) = send(
                    Request::post(url)
                        .header("api-key", "dummy")
                        .body(full(r#"{"messages":[{"role":"user","content":"hi"}]}"#))
                        .unwrap(),
                )
                .await;
                (
                    head.status.as_u16(),
                    String::from_utf8_lossy(&body).into_owned(),
                )
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

const EXPIRED_SECRET: &str = r#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys for app '11111111-app' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds. Trace ID: 0000 Correlation ID: 1111 Timestamp: 2026-12-06 22:00:00Z","error_codes":[7000222],"timestamp":"2026-12-06 22:00:00Z","trace_id":"0000","correlation_id":"1111"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_secret_at_startup_is_expired_key_and_not_ready() {
    let issuer = Issuer::new(3600);
    issuer.set(Mode::Refuse(401, EXPIRED_SECRET.into()));
    let (_dir, issuer, _endpoint, upstream, proxy) = azure_with(issuer).await;
    let text = unavailable(chat(&proxy).await, "expired_key");
    assert!(
        text.contains("client secret of app 11111111-app has expired")
            && text.contains("Certificates & secrets"),
        "{text}"
    );
    assert!(
        upstream.seen().is_empty(),
        "nothing went upstream without a token"
    );
    let (ready, why) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, 503, "{}", String::from_utf8_lossy(&why));
    let credential = status(&proxy).await["upstreams"][0]["token_refresh"].clone();
    assert_eq!(credential["last_result"], "failed");
    assert_eq!(credential["problem"]["reason"], "expired_key");
    // A new secret in Entra: the retry (backoff from 1 s) mints a token and the upstream serves.
    issuer.set(Mode::Issue);
    eventually("a token after the secret was renewed", || async {
        chat(&proxy).await.0.status == 200
    })
    .await;
    let (ready, _) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refresh_keeps_the_valid_token_then_says_why_once_it_expired() {
    let (_dir, issuer, _endpoint, _upstream, proxy) = azure(3).await;
    assert_eq!(chat(&proxy).await.0.status, 200);
    issuer.set(Mode::Refuse(
        400,
        r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID."}"#.into(),
    ));
    // The refresh at half the lifetime fails; the token in service is still valid and serves.
    eventually("a failed refresh", || async {
        series(&metrics(&proxy).await, REFRESH_FAILED) >= 1
    })
    .await;
    let minted = issuer.issued.lock().unwrap()[0].1;
    if Instant::now() + Duration::from_millis(300) < minted {
        assert_eq!(
            chat(&proxy).await.0.status,
            200,
            "the valid token stays in service"
        );
    }
    // Once it expired: 503 with the explained cause, and not ready.
    eventually("the upstream to stop serving the expired token", || async {
        chat(&proxy).await.0.status == 503
    })
    .await;
    let text = unavailable(chat(&proxy).await, "credential_refresh_failed");
    assert!(
        text.contains("token expired")
            && text.contains("AADSTS7000215")
            && text.contains("not its Secret ID"),
        "{text}"
    );
    assert_eq!(get(&proxy.admin_url("/readyz")).await.0.status, 503);
    assert_no_secret(&text, &issuer.tokens());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_token_endpoint_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let authority = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let upstream = StandIn::ok().await;
    let proxy = Proxy::start(
        &azure_config(dir.path(), &upstream.url(), &authority),
        dir.path(),
    )
    .await;
    let text = unavailable(chat(&proxy).await, "credential_refresh_failed");
    assert!(
        text.contains("could not be reached") && text.contains("/contoso-tenant/oauth2/v2.0/token"),
        "{text}"
    );
    proxy.stop().await;
}

/// A Google token endpoint stand-in: verifies the assertion's RS256 signature with the service
/// account's public key, its issuer, audience, scope and times (RFC 7523), and answers as Google
/// does when it does not verify.
async fn google(issuer: Arc<Issuer>, token_uri: Arc<Mutex<String>>) -> StandIn {
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(TEST_PUB.as_bytes()).unwrap();
    StandIn::recording(move |seen| {
        let f = form(&seen.body);
        if field(&f, "grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return issuer.answer(Err("grant_type".into()));
        }
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&[token_uri.lock().unwrap().as_str()]);
        validation.set_issuer(&[SA_EMAIL]);
        validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
        let assertion = field(&f, "assertion").unwrap_or("");
        match jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation) {
            Ok(data)
                if data.claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
                    && data.header.kid.as_deref() == Some("test-key-1") =>
            {
                issuer.answer(Ok(()))
            }
            Ok(data) => issuer.answer(Err(format!("claims {}", data.claims))),
            Err(_) => {
                issuer.calls.fetch_add(1, Ordering::SeqCst);
                (
                    400,
                    r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
                        .into(),
                )
            }
        }
    })
    .await
}

async fn generate(proxy: &Proxy) -> (http::response::Parts, bytes::Bytes) {
    send(
        Request::post(proxy.url(GENERATE))
            .body(full(
                r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
            ))
            .unwrap(),
    )
    .await
}

fn service_account(dir: &Path, name: &str, pem: &str, token_uri: &str) -> String {
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "test-key-1",
        "private_key": pem,
        "client_email": SA_EMAIL,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    });
    let path = dir.join(name);
    std::fs::write(&path, json.to_string()).unwrap();
    path.display().to_string()
}

fn vertex_config(base: &str, sa: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"vertex\"\nprovider = \"vertex\"\nbase_url = \"{base}\"\n\
         key = {{ google_service_account = {{ file = \"{sa}\", scopes = [\"https://www.googleapis.com/auth/cloud-platform\"] }} }}\n"
    )
}

/// A Google token endpoint issuing 2-second tokens, a Vertex stand-in checking them, and keyproxy
/// between with a service-account key file (its path) in the directory.
async fn vertex() -> (
    tempfile::TempDir,
    Arc<Issuer>,
    Arc<Mutex<String>>,
    StandIn,
    StandIn,
    String,
    Proxy,
) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(2);
    let token_uri = Arc::new(Mutex::new(String::new()));
    let endpoint = google(Arc::clone(&issuer), Arc::clone(&token_uri)).await;
    *token_uri.lock().unwrap() = format!("{}/token", endpoint.url());
    let upstream = provider(Arc::clone(&issuer)).await;
    let sa = service_account(dir.path(), "sa.json", TEST_PEM, &token_uri.lock().unwrap());
    let proxy = Proxy::start(&vertex_config(&upstream.url(), &sa), dir.path()).await;
    (dir, issuer, token_uri, endpoint, upstream, sa, proxy)
}

const GENERATE: &str = "/v1/projects/test-project/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_signs_a_jwt_that_the_google_stand_in_verifies() {
    let (dir, issuer, token_uri, _endpoint, upstream, sa, proxy) = vertex().await;
    let (head, body) = generate(&proxy).await;
    assert_eq!(head.status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(*issuer.complaint.lock().unwrap(), None);
    // Refreshed before the 2 s token expires, each with a newly signed assertion.
    eventually("three tokens minted", || async {
        issuer.calls.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert_eq!(generate(&proxy).await.0.status, 200);
    assert_eq!(*issuer.complaint.lock().unwrap(), None);
    let status_text = status(&proxy).await;
    let credential = status_text["upstreams"][0]["token_refresh"].clone();
    assert_eq!(credential["kind"], "google_service_account");
    assert_eq!(credential["client"], SA_EMAIL);
    let pem_body = &TEST_PEM[40..100];
    for text in [status_text.to_string(), metrics(&proxy).await] {
        assert!(!text.contains(pem_body) && !text.contains("PRIVATE KEY"));
        assert_no_secret(&text, &issuer.tokens());
    }
    proxy.stop().await;
    // `keyproxy check --probe`: the key file judged, one token minted and shown to the provider.
    let config = dir.path().join("check.toml");
    std::fs::write(&config, vertex_config(&upstream.url(), &sa)).unwrap();
    let (ok, text) = check_probe(config).await;
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "✓ vertex: service-account key file {sa}: {SA_EMAIL}"
        )),
        "{text}"
    );
    assert!(
        text.contains("✓ vertex: probe: the token endpoint issued a token")
            && text.contains("✓ vertex: probe: the provider accepts the token (200)"),
        "{text}"
    );
    assert!(
        !text.contains(pem_body) && !text.contains("PRIVATE KEY"),
        "{text}"
    );
    assert_no_secret(&text, &issuer.tokens());

    // Another key in the file (the account's key was deleted and the file holds an old one):
    // Google cannot verify the signature, and keyproxy says what that means.
    let dir = tempfile::tempdir().unwrap();
    let sa = service_account(dir.path(), "sa.json", OTHER_PEM, &token_uri.lock().unwrap());
    let proxy = Proxy::start(&vertex_config(&upstream.url(), &sa), dir.path()).await;
    let text = unavailable(generate(&proxy).await, "credential_refresh_failed");
    assert!(
        text.contains("deleted or disabled in IAM") && text.contains("Invalid JWT Signature"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn google_tokens_are_refreshed_under_load_with_no_failed_request() {
    let (_dir, issuer, _token_uri, _endpoint, upstream, _sa, proxy) = vertex().await;
    let url = proxy.url(GENERATE);
    let load = Load::start(4, move || {
        Request::post(&url)
            .header("content-type", "application/json")
            .body(full(
                r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
            ))
            .unwrap()
    });
    refreshed_under(load, &proxy, "vertex", 10).await;
    // Every assertion the endpoint saw verified (signature, issuer, audience, scope, times).
    assert_eq!(*issuer.complaint.lock().unwrap(), None);
    assert!(
        credentials_used(&upstream).len() >= 10,
        "requests went out with the refreshed tokens"
    );
    let pem_body = &TEST_PEM[40..100];
    for text in [status(&proxy).await.to_string(), metrics(&proxy).await] {
        assert!(!text.contains(pem_body) && !text.contains("PRIVATE KEY"));
        assert_no_secret(&text, &issuer.tokens());
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oauth2_tokens_with_body_credentials_are_refreshed_under_load_with_no_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(2);
    let i = Arc::clone(&issuer);
    let endpoint = StandIn::recording(move |seen| {
        let f = form(&seen.body);
        let check = match (
            seen.headers.contains_key("authorization"),
            field(&f, "grant_type"),
            field(&f, "client_id"),
            field(&f, "client_secret"),
        ) {
            (false, Some("client_credentials"), Some("gateway-client"), Some(CLIENT_SECRET)) => {
                Ok(())
            }
            other => Err(format!("{:?}", (other.0, other.1, other.2))),
        };
        i.answer(check)
    })
    .await;
    let upstream = provider(Arc::clone(&issuer)).await;
    let secret = key_file(dir.path(), "client-secret", CLIENT_SECRET);
    let config = format!(
        "[[upstreams]]\nname = \"gateway\"\nprovider = \"openai\"\nbase_url = \"{}\"\n\
         key = {{ oauth2 = {{ token_url = \"{}/oauth/token\", client_id = \"gateway-client\", client_secret = {{ file = \"{secret}\" }}, auth = \"body\" }} }}\n",
        upstream.url(),
        endpoint.url()
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let url = proxy.url("/v1/chat/completions");
    let load = Load::start(4, move || {
        Request::post(&url)
            .header("content-type", "application/json")
            .body(full(r#"{"model":"m","messages":[]}"#))
            .unwrap()
    });
    refreshed_under(load, &proxy, "gateway", 10).await;
    assert_eq!(
        *issuer.complaint.lock().unwrap(),
        None,
        "the secret went in the form, never as Basic"
    );
    assert!(credentials_used(&upstream).len() >= 10);
    for text in [status(&proxy).await.to_string(), metrics(&proxy).await] {
        assert_no_secret(&text, &issuer.tokens());
    }
    proxy.stop().await;
}

#[tokio::test]
async fn an_oauth_client_file_instead_of_a_service_account_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.json");
    std::fs::write(&path, r#"{"installed":{"client_id":"1.apps.googleusercontent.com","client_secret":"GOCSPX-TESTONLY-secret","token_uri":"https://oauth2.googleapis.com/token"}}"#).unwrap();
    let upstream = StandIn::ok().await;
    let proxy = Proxy::start(
        &vertex_config(&upstream.url(), &path.display().to_string()),
        dir.path(),
    )
    .await;
    let (head, body) = send(Request::post(proxy.url(GENERATE)).body(full("{}")).unwrap()).await;
    assert_eq!(head.status, 503);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("OAuth client file") && !text.contains("GOCSPX"),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_sends_basic_credentials_by_default_and_rotation_by_hand_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(3600);
    let i = Arc::clone(&issuer);
    let endpoint = StandIn::recording(move |seen| {
        let f = form(&seen.body);
        let basic = seen
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        use base64::Engine;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "gateway-client:{}",
                form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect::<String>()
            ))
        );
        let check = match (
            basic == expected,
            field(&f, "grant_type"),
            field(&f, "scope"),
            field(&f, "client_secret"),
        ) {
            (true, Some("client_credentials"), Some("llm.invoke"), None) => Ok(()),
            other => Err(format!("{:?}", (other.0, other.1, other.2))),
        };
        i.answer(check)
    })
    .await;
    let upstream = provider(Arc::clone(&issuer)).await;
    let secret = key_file(dir.path(), "client-secret", CLIENT_SECRET);
    let admin = key_file(
        dir.path(),
        "admin-token",
        "admin-token-for-tests-0123456789",
    );
    let config = format!(
        "admin_token = {{ file = \"{admin}\" }}\n[[upstreams]]\nname = \"gateway\"\nprovider = \"openai\"\nbase_url = \"{}\"\n\
         key = {{ oauth2 = {{ token_url = \"{}/oauth/token\", client_id = \"gateway-client\", client_secret = {{ file = \"{secret}\" }}, scope = \"llm.invoke\" }} }}\n",
        upstream.url(),
        endpoint.url()
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let (head, _) = send(
        Request::get(proxy.url("/v1/models"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(*issuer.complaint.lock().unwrap(), None);
    let (head, body) = send(
        Request::post(proxy.admin_url("/keys/gateway"))
            .header("authorization", "Bearer admin-token-for-tests-0123456789")
            .body(full("sk-proj-some-key-someone-pasted-0000000000"))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, 422);
    let answer = json(&body);
    assert_eq!(answer["error"]["code"], "minted_credential", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("rotate the client secret in its source (file "),
        "{message}"
    );
    // Nor can a plain key join it as a second key of a pool.
    let (head, body) = send(
        Request::post(proxy.admin_url("/keys/gateway?mode=add&name=extra"))
            .header("authorization", "Bearer admin-token-for-tests-0123456789")
            .body(full("sk-proj-some-key-someone-pasted-0000000000"))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, 409, "{}", String::from_utf8_lossy(&body));
    let answer = json(&body);
    assert_eq!(answer["error"]["code"], "minted_credential", "{answer}");
    let (head, _) = send(
        Request::get(proxy.url("/v1/models"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, 200, "the token credential still serves alone");
    proxy.stop().await;
}

#[test]
fn token_credentials_in_the_config_are_checked_where_they_are_written() {
    let parse = |key: &str| {
        let text = format!("[[upstreams]]\nname = \"u\"\nprovider = \"azure\"\nbase_url = \"https://x.openai.azure.com\"\n{key}\n");
        keyproxy::config::Config::parse(Path::new("/etc/keyproxy/k.toml"), &text)
            .map(|c| c.upstreams[0].key.to_string())
    };
    let ok = parse(r#"key = { azure_ad = { tenant_id = "t", client_id = "c", client_secret = { file = "s" } } }"#).unwrap();
    assert_eq!(
        ok,
        "azure_ad client c at https://login.microsoftonline.com/t/oauth2/v2.0/token"
    );
    let refused = [
        (
            r#"key = { azure_ad = { tenant_id = "t", client_id = "c" } }"#,
            "client_secret",
        ),
        (
            r#"key = { azure_ad = { tenant_id = "t", client_id = "c", client_secret = { azure_ad = { tenant_id = "t", client_id = "c", client_secret = { env = "S" } } } } }"#,
            "client_secret is read from",
        ),
        (
            r#"key = { oauth2 = { token_url = "ftp://x/token", client_id = "c", client_secret = { env = "S" } } }"#,
            "https://",
        ),
        (
            r#"key = { oauth2 = { token_url = "https://x/token", client_id = "c", client_secret = { env = "S" }, auth = "digest" } }"#,
            "expected `basic` or `body`",
        ),
        (
            r#"key = { oauth2 = { token_url = "https://x/token", client_id = "c", client_secret = "the-secret-itself-0123456789" } }"#,
            "cannot be written into the config",
        ),
        (
            r#"key = { google_service_account = { file = "sa.json", scopes = [] } }"#,
            "scopes",
        ),
        (
            r#"key = { google_service_account = { file = "sa.json" }, env = "X" }"#,
            "one entry",
        ),
        (
            r#"keys = [ { env = "A" }, { google_service_account = { file = "sa.json" } } ]"#,
            "mixes token credentials",
        ),
    ];
    let warnings = |token_url: &str| {
        let text = format!("[[upstreams]]\nname = \"u\"\nprovider = \"openai\"\nbase_url = \"https://api.openai.com\"\nkey = {{ oauth2 = {{ token_url = \"{token_url}\", client_id = \"c\", client_secret = {{ env = \"S\" }} }} }}\n");
        keyproxy::config::Config::parse(Path::new("k.toml"), &text)
            .unwrap()
            .upstreams[0]
            .token_warnings()
    };
    let clear = warnings("http://idp.example.com/oauth2/token");
    assert!(
        clear.len() == 1
            && clear[0].contains("the client secret and the tokens would travel unencrypted"),
        "{clear:?}"
    );
    assert!(warnings("http://127.0.0.1:9/token").is_empty());
    assert!(warnings("https://idp.example.com/oauth2/token").is_empty());
    for (key, says) in refused {
        let e = parse(key).unwrap_err().to_string();
        assert!(e.contains(says), "{key}: {e}");
        assert!(!e.contains("the-secret-itself"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_refreshes_and_check_probe_mints_without_showing_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(2);
    let endpoint = entra(Arc::clone(&issuer)).await;
    let upstream = provider(Arc::clone(&issuer)).await;
    let config = dir.path().join("keyproxy.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{}",
            azure_config(dir.path(), &upstream.url(), &endpoint.url())
        ),
    )
    .unwrap();
    let (ok, out) = check_probe(config.clone()).await;
    assert!(ok, "{out}");
    for line in [
        "✓ azure: token credential: azure_ad client 11111111-app at",
        "✓ azure: client secret present (file ",
        "✓ azure: probe: the token endpoint issued a token",
        "✓ azure: probe: the provider accepts the token (200)",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    assert_no_secret(&out, &issuer.tokens());
    issuer.set(Mode::Refuse(401, EXPIRED_SECRET.into()));
    let (ok, out) = check_probe(config.clone()).await;
    assert!(!ok, "{out}");
    assert!(out.contains("✗ azure: probe: token endpoint: expired_key: the client secret of app 11111111-app has expired"), "{out}");
    issuer.set(Mode::Issue);

    let mut running = run_binary(&config, &[]);
    running.wait_log("token minted").await;
    let url = format!("http://{}{CHAT}", running.proxy);
    let chat_status = || async {
        let req = Request::post(&url).header("api-key", "dummy");
        send(req.body(full("{}")).unwrap()).await.0.status
    };
    for _ in 0..3 {
        assert_eq!(chat_status().await, 200);
    }
    // A refresh by the clock, and one after the provider refused the token.
    running.wait_log("token minted").await;
    issuer.revoked.lock().unwrap().extend(issuer.tokens());
    assert_eq!(chat_status().await, 200, "refreshed and replayed");
    // SIGHUP mints a token at once (with the secret the source holds now).
    let calls = issuer.calls.load(Ordering::SeqCst);
    std::process::Command::new("kill")
        .args(["-HUP", &running.child.id().to_string()])
        .status()
        .unwrap();
    // (Scheduled refreshes may come first.)
    while running.wait_log("token minted").await["trigger"] != "sighup" {}
    assert!(issuer.calls.load(Ordering::SeqCst) > calls);
    let admin = running.admin.clone();
    let (_, status_body) = get(&format!("http://{admin}/status")).await;
    let (_, metrics_body) = get(&format!("http://{admin}/metrics")).await;
    let logs = running.stop().await;
    assert!(
        logs.contains("token minted") && logs.contains("\"trigger\":\"refresh\""),
        "{logs}"
    );
    let tokens = issuer.tokens();
    assert!(tokens.len() >= 3);
    for text in [
        logs,
        String::from_utf8_lossy(&status_body).into_owned(),
        String::from_utf8_lossy(&metrics_body).into_owned(),
        String::from_utf8_lossy(
            &std::fs::read(dir.path().join("state").join("keyproxy.db")).unwrap_or_default(),
        )
        .into_owned(),
    ] {
        assert_no_secret(&text, &tokens);
    }
}

/// `azure`, with a pool of two Entra credentials, `east` and `west`, minting 1-hour tokens.
async fn azure_pool() -> (tempfile::TempDir, Arc<Issuer>, StandIn, StandIn, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(3600);
    let endpoint = entra(Arc::clone(&issuer)).await;
    let upstream = provider(Arc::clone(&issuer)).await;
    let proxy = Proxy::start(
        &pool_config(dir.path(), &upstream.url(), &endpoint.url()),
        dir.path(),
    )
    .await;
    (dir, issuer, endpoint, upstream, proxy)
}

/// Four chat requests, each answered 200; then the pool's keys' states.
async fn four_chats_then_states(proxy: &Proxy) -> Vec<serde_json::Value> {
    for _ in 0..4 {
        let (head, body) = chat(proxy).await;
        assert_eq!(head.status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let keys = status(proxy).await["upstreams"][0]["keys"].clone();
    keys.as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].clone())
        .collect()
}

/// An azure upstream with a pool of two Entra credentials, `east` and `west`.
fn pool_config(dir: &Path, base: &str, authority: &str) -> String {
    let secret = key_file(dir, "client-secret", CLIENT_SECRET);
    let credential = format!(
        "{{ azure_ad = {{ tenant_id = \"contoso-tenant\", client_id = \"11111111-app\", client_secret = {{ file = \"{secret}\" }}, authority = \"{authority}\" }}, name = \"NAME\" }}"
    );
    format!(
        "[[upstreams]]\nname = \"azure\"\nprovider = \"azure\"\nbase_url = \"{base}\"\nkeys = [ {}, {} ]\n",
        credential.replace("NAME", "east"),
        credential.replace("NAME", "west"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_key_whose_token_is_refused_is_refreshed_not_quarantined() {
    let (_dir, issuer, _endpoint, _upstream, proxy) = azure_pool().await;
    assert_eq!(issuer.calls.load(Ordering::SeqCst), 2, "a token per key");
    issuer.revoked.lock().unwrap().extend(issuer.tokens());
    // Both tokens refused: whichever key a request tries is refreshed and the request goes again
    // on the other (refreshed, or about to be); no key is quarantined.
    assert_eq!(four_chats_then_states(&proxy).await, ["active", "active"]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_key_whose_token_cannot_be_refreshed_fails_over_and_is_quarantined() {
    let (_dir, issuer, _endpoint, _upstream, proxy) = azure_pool().await;
    // East's token is refused, and the token endpoint refuses from now on. (Both keys' first
    // tokens are minted together: east's is the one its fingerprint ends like.)
    let east = status(&proxy).await["upstreams"][0]["keys"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let east = issuer
        .tokens()
        .into_iter()
        .find(|t| east.contains(&format!("{}:", &t[t.len() - 4..])))
        .unwrap();
    issuer.revoked.lock().unwrap().push(east);
    issuer.set(Mode::Refuse(401, EXPIRED_SECRET.into()));
    assert_eq!(
        four_chats_then_states(&proxy).await,
        ["quarantined", "active"]
    );
    // Each key of the pool shows its own refresh: east's failed, west's still fine.
    let keys = status(&proxy).await["upstreams"][0]["keys"].clone();
    let (east_refresh, west_refresh) = (&keys[0]["token_refresh"], &keys[1]["token_refresh"]);
    assert_eq!(east_refresh["kind"], "azure_ad", "{keys}");
    assert_eq!(east_refresh["last_result"], "failed", "{keys}");
    assert_eq!(east_refresh["problem"]["reason"], "expired_key", "{keys}");
    assert_eq!(west_refresh["last_result"], "ok", "{keys}");
    assert!(keys[1]["expires_at"].is_string(), "{keys}");
    let shown = keys.to_string();
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
    for token in issuer.tokens() {
        assert!(!shown.contains(&token), "a token in /status: {shown}");
    }
    proxy.stop().await;
}

/// A token endpoint (hostile, or broken) names a lifetime no clock holds: keyproxy stays up,
/// believes at most a day, and serves the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_lifetime_too_big_for_a_clock_is_taken_as_a_day() {
    for expires_in in ["1e300", "18446744073709551615", "\"18446744073709551615\""] {
        let issuer = Issuer::new(3600);
        issuer.set(Mode::Refuse(
            200,
            format!(r#"{{"access_token":"eyJ0.huge.{TOKEN_MARK}","expires_in":{expires_in}}}"#),
        ));
        let (_dir, issuer, _endpoint, _upstream, proxy) = azure_with(issuer).await;
        let credential = status(&proxy).await["upstreams"][0]["token_refresh"].clone();
        assert_eq!(
            credential["last_result"], "ok",
            "{expires_in}: {credential}"
        );
        let until = credential["token_expires_at"].as_str().unwrap_or_default();
        let until = humantime::parse_rfc3339(until).unwrap();
        let ahead = until
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        assert!(
            ahead > Duration::from_secs(23 * 3600) && ahead <= Duration::from_secs(24 * 3600),
            "{expires_in}: {credential}"
        );
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 1);
        proxy.stop().await;
    }
}

/// A token endpoint that names a lifetime of a millisecond is not asked in a loop: at most one
/// refresh a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_lifetime_of_a_millisecond_does_not_make_keyproxy_spin() {
    let issuer = Issuer::new(3600);
    issuer.set(Mode::Refuse(
        200,
        format!(r#"{{"access_token":"eyJ0.tiny.{TOKEN_MARK}","expires_in":0.001}}"#),
    ));
    let (_dir, issuer, _endpoint, _upstream, proxy) = azure_with(issuer).await;
    let (start, first) = (Instant::now(), issuer.calls.load(Ordering::SeqCst));
    eventually("two more refreshes", || async {
        issuer.calls.load(Ordering::SeqCst) >= first + 2
    })
    .await;
    let (elapsed, calls) = (start.elapsed(), issuer.calls.load(Ordering::SeqCst) - first);
    assert!(
        elapsed >= Duration::from_millis(1500) && calls <= 3,
        "{calls} refreshes in {elapsed:?}"
    );
    proxy.stop().await;
}

/// A token endpoint that refuses with no OAuth error (a bare 503, an HTML 404, a redirect) is
/// still named, with its status, and a redirect is not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_without_an_oauth_error_still_names_the_endpoint_and_status() {
    for (status, body, says) in [
        (503, "<html>Service Unavailable</html>", "retries"),
        (404, "<html>Not Found</html>", "(404)"),
        (302, "", "does not follow"),
    ] {
        let issuer = Issuer::new(3600);
        issuer.set(Mode::Refuse(status, body.into()));
        let (_dir, _issuer, endpoint, _upstream, proxy) = azure_with(issuer).await;
        let text = unavailable(chat(&proxy).await, "credential_refresh_failed");
        assert!(
            text.contains("/contoso-tenant/oauth2/v2.0/token")
                && text.contains(&status.to_string())
                && text.contains(says),
            "{status}: {text}"
        );
        assert!(!text.contains(CLIENT_SECRET), "{text}");
        assert!(endpoint
            .seen()
            .iter()
            .all(|s| s.uri.path().ends_with("/token")));
        proxy.stop().await;
    }
}

/// A token endpoint that answers 10 MB is read no further than 64 KiB and said to be no token
/// answer (not "could not be reached": it was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_token_answer_is_cut_short_and_named() {
    let issuer = Issuer::new(3600);
    issuer.set(Mode::Refuse(200, "x".repeat(10 << 20)));
    let (_dir, _issuer, _endpoint, _upstream, proxy) = azure_with(issuer).await;
    let text = unavailable(chat(&proxy).await, "credential_refresh_failed");
    assert!(
        text.contains("answered 200")
            && text.contains("longer than 64 KiB")
            && !text.contains("could not be reached"),
        "{text}"
    );
    proxy.stop().await;
}

/// First-run mistakes with Entra, said by `keyproxy check` before any token endpoint is asked:
/// the secret's ID (a UUID) pasted instead of its Value, and ids pasted with their quotes.
#[test]
fn keyproxy_check_names_an_entra_secret_id_and_a_pasted_id() {
    let dir = tempfile::tempdir().unwrap();
    let secret_id = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    let secret = key_file(dir.path(), "client-secret", secret_id);
    let check = |tenant: &str, client: &str| {
        let config = dir.path().join("keyproxy.toml");
        std::fs::write(&config, format!(
            "[[upstreams]]\nname = \"azure\"\nprovider = \"azure\"\nbase_url = \"https://r.openai.azure.com\"\n\
             key = {{ azure_ad = {{ tenant_id = {tenant}, client_id = {client}, client_secret = {{ file = \"{secret}\" }} }} }}\n"
        )).unwrap();
        keyproxy_check(&config, &[], &[])
    };
    let (ok, text) = check("\"contoso-tenant\"", "\"11111111-app\"");
    assert!(
        !ok && text.contains("Secret ID") && text.contains("Value"),
        "{text}"
    );
    assert!(!text.contains(&secret_id[..12]), "{text}");
    for (tenant, client, field) in [
        (r#""'contoso-tenant'""#, r#""1111""#, "azure_ad.tenant_id"),
        (
            r#""contoso-tenant""#,
            r#"" \"1111\" ""#,
            "azure_ad.client_id",
        ),
        (
            r#""contoso-tenant""#,
            r#""1111 2222""#,
            "azure_ad.client_id",
        ),
    ] {
        let (ok, text) = check(tenant, client);
        assert!(
            !ok && text.contains("keyproxy.toml:5:")
                && text.contains(field)
                && text.contains("quotes or spaces"),
            "{client}: {text}"
        );
    }
}

/// A token endpoint that repeats the JWT assertion in its refusal (a signed assertion is a
/// credential for its hour: anyone holding it can mint a token): its signature reaches no
/// answer, status or log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_assertion_echoed_by_the_token_endpoint_is_masked() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = StandIn::recording(|seen| {
        let f = form(&seen.body);
        let assertion = field(&f, "assertion").unwrap_or("");
        (
            400,
            serde_json::json!({"error": "invalid_grant", "error_description": format!("Invalid JWT: {assertion}")}).to_string(),
        )
    })
    .await;
    let upstream = StandIn::ok().await;
    let sa = service_account(
        dir.path(),
        "sa.json",
        TEST_PEM,
        &format!("{}/token", endpoint.url()),
    );
    let proxy = Proxy::start(&vertex_config(&upstream.url(), &sa), dir.path()).await;
    let answer = unavailable(generate(&proxy).await, "credential_refresh_failed");
    let status = status(&proxy).await.to_string();
    let sent = endpoint.seen();
    let f = form(&sent[0].body);
    let signature = field(&f, "assertion")
        .unwrap()
        .rsplit('.')
        .next()
        .unwrap()
        .to_owned();
    assert!(signature.len() > 100, "{signature}");
    for text in [&answer, &status] {
        for run in signature.as_bytes().chunks(24).filter(|c| c.len() == 24) {
            let run = std::str::from_utf8(run).unwrap();
            assert!(
                !text.contains(run),
                "the assertion's signature leaked: {text}"
            );
        }
    }
    assert!(answer.contains("Invalid JWT"), "{answer}");
    proxy.stop().await;
}

/// Token endpoints that never answer delay the start by their timeout once, not once per
/// credential: the first tokens are asked for together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoints_that_never_answer_delay_the_start_once() {
    let dir = tempfile::tempdir().unwrap();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            connections.push(socket);
        }
    });
    let upstream = StandIn::ok().await;
    let one = azure_config(dir.path(), &upstream.url(), &authority);
    let two = one.replacen(
        "name = \"azure\"",
        "name = \"azure2\"\nprefix = \"/two\"",
        1,
    );
    let three = one.replacen(
        "name = \"azure\"",
        "name = \"azure3\"\nprefix = \"/three\"",
        1,
    );
    let started = Instant::now();
    let proxy = Proxy::start(&format!("{one}{two}{three}"), dir.path()).await;
    let took = started.elapsed();
    assert!(
        took < keyproxy::key::minted::endpoint::TIMEOUT * 2,
        "three silent token endpoints held the start for {took:?}"
    );
    let text = unavailable(chat(&proxy).await, "credential_refresh_failed");
    assert!(text.contains("no answer within"), "{text}");
    proxy.stop().await;
    held.abort();
}

/// The Entra quickstart with the deployment's whole URL from the portal as base_url: `check`
/// warns before every request 404s.
#[test]
fn keyproxy_check_warns_about_a_deployment_url_as_base_url() {
    let dir = tempfile::tempdir().unwrap();
    let secret = key_file(dir.path(), "client-secret", CLIENT_SECRET);
    let config = dir.path().join("keyproxy.toml");
    let write = |base: &str| {
        std::fs::write(&config, format!(
            "[[upstreams]]\nname = \"azure\"\nprovider = \"azure\"\nbase_url = \"{base}\"\n\
             key = {{ azure_ad = {{ tenant_id = \"contoso-tenant\", client_id = \"11111111-app\", client_secret = {{ file = \"{secret}\" }} }} }}\n"
        )).unwrap();
    };
    write("https://res.openai.azure.com/openai/deployments/gpt-4o");
    let (_, text) = keyproxy_check(&config, &[], &[]);
    assert!(
        text.contains("⚠")
            && text.contains("names a deployment")
            && text.contains("base_url = \"https://res.openai.azure.com\""),
        "{text}"
    );
    write("https://res.openai.azure.com/openai/v1");
    let (_, text) = keyproxy_check(&config, &[], &[]);
    assert!(!text.contains("names a deployment"), "{text}");
}
