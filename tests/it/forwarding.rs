//! The forwarding contract over real sockets: each provider's scheme injected, every client
//! credential stripped, everything else passed through unchanged; keyproxy's own errors.

use crate::common::*;
use http::Request;

const GENERIC_KEY: &str = "gen-TESTkeyGENERIC00000000000000000005";

struct Keys {
    openai: String,
    anthropic: String,
    azure: String,
    gemini: String,
}

fn keys() -> Keys {
    Keys {
        openai: openai_key("TESTkeyOPENAI"),
        anthropic: anthropic_key("TESTkeyANTHROPIC"),
        azure: azure_key("abcdef0123"),
        gemini: gemini_key("TESTkeyGEMINI"),
    }
}

fn five_upstreams(dir: &std::path::Path, base: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "openai"
provider = "openai"
base_url = "{base}/p-openai"
key = {{ file = "{}" }}

[[upstreams]]
name = "anthropic"
provider = "anthropic"
base_url = "{base}/p-anthropic"
prefix = "/anthropic"
key = {{ file = "{}" }}

[[upstreams]]
name = "azure"
provider = "azure"
base_url = "{base}/p-azure"
prefix = "/azure"
key = {{ file = "{}" }}

[[upstreams]]
name = "gemini"
provider = "gemini"
base_url = "{base}/p-gemini"
prefix = "/gemini"
key = {{ file = "{}" }}

[[upstreams]]
name = "generic"
provider = "generic"
base_url = "{base}/p-generic"
prefix = "/generic"
key = {{ file = "{}" }}
auth_header = "x-custom-key"
auth_prefix = "Token "
"#,
        key_file(dir, "openai", &keys().openai),
        key_file(dir, "anthropic", &keys().anthropic),
        key_file(dir, "azure", &keys().azure),
        key_file(dir, "gemini", &keys().gemini),
        key_file(dir, "generic", GENERIC_KEY),
    )
}

/// A request the way SDKs send it: dummy keys in every credential slot, plus ordinary headers.
fn sdk_request(url: &str) -> Request<TestBody> {
    Request::post(url)
        .header("authorization", "Bearer sk-dummy-from-the-app")
        .header("x-api-key", "dummy-x-api-key")
        .header("api-key", "dummy-api-key")
        .header("x-goog-api-key", "dummy-goog")
        .header("x-custom-key", "dummy-custom")
        .header("host", "localhost:8787")
        .header("openai-organization", "org-123")
        .header("x-app-header", "kept")
        .header("content-type", "application/json")
        .body(full(r#"{"model":"m","messages":[]}"#))
        .unwrap()
}

#[tokio::test]
async fn each_provider_gets_its_own_scheme_and_nothing_of_the_clients() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let proxy = Proxy::start(&five_upstreams(dir.path(), &provider.url()), dir.path()).await;

    let cases = [
        (
            "/v1/chat/completions?stream=false",
            "/p-openai/v1/chat/completions?stream=false",
            "authorization",
            format!("Bearer {}", keys().openai),
        ),
        (
            "/anthropic/v1/messages",
            "/p-anthropic/v1/messages",
            "x-api-key",
            keys().anthropic,
        ),
        (
            "/azure/openai/deployments/d/chat/completions?api-version=2024-10-21",
            "/p-azure/openai/deployments/d/chat/completions?api-version=2024-10-21",
            "api-key",
            keys().azure,
        ),
        (
            "/gemini/v1beta/models/g:generateContent?key=AIzaDUMMYfromTHEapp&alt=sse",
            "/p-gemini/v1beta/models/g:generateContent?alt=sse",
            "x-goog-api-key",
            keys().gemini,
        ),
        (
            "/generic/v1/chat/completions",
            "/p-generic/v1/chat/completions",
            "x-custom-key",
            format!("Token {GENERIC_KEY}"),
        ),
    ];
    for (i, (path, want_uri, header, want_value)) in cases.iter().enumerate() {
        let (resp, body) = send(sdk_request(&proxy.url(path))).await;
        assert_eq!(
            resp.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(&body[..], br#"{"ok":true}"#);
        let seen = &provider.seen()[i];
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.uri.to_string(), *want_uri, "{path}");
        assert_eq!(seen.headers[*header], want_value.as_str(), "{path}");
        let credential_headers = [
            "authorization",
            "x-api-key",
            "api-key",
            "x-goog-api-key",
            "x-custom-key",
        ];
        for other in credential_headers.iter().filter(|h| *h != header) {
            assert!(
                !seen.headers.contains_key(*other),
                "{path}: {other} leaked through"
            );
        }
        assert_eq!(
            seen.headers.get_all(*header).iter().count(),
            1,
            "{path}: exactly one credential"
        );
        assert_eq!(seen.headers["host"], provider.addr.to_string(), "{path}");
        assert_eq!(seen.headers["openai-organization"], "org-123");
        assert_eq!(seen.headers["x-app-header"], "kept");
        assert_eq!(seen.headers["content-type"], "application/json");
        assert_eq!(&seen.body[..], br#"{"model":"m","messages":[]}"#);
        let dummy = format!("{:?}", seen.headers);
        assert!(
            !dummy.contains("dummy") && !dummy.contains("DUMMY"),
            "{path}: {dummy}"
        );
    }
    let anthropic = &provider.seen()[1];
    assert_eq!(anthropic.headers["anthropic-version"], "2023-06-01");
    proxy.stop().await;
}

#[tokio::test]
async fn anthropic_version_from_the_client_is_kept_and_hop_by_hop_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let proxy = Proxy::start(&five_upstreams(dir.path(), &provider.url()), dir.path()).await;
    let req = Request::get(proxy.url("/anthropic/v1/models"))
        .header("anthropic-version", "2099-01-01")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret-hop")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .body(full(""))
        .unwrap();
    let (resp, _) = send(req).await;
    assert_eq!(resp.status, 200);
    let seen = &provider.seen()[0];
    assert_eq!(seen.headers["anthropic-version"], "2099-01-01");
    for hop in ["x-hop", "proxy-authorization", "te"] {
        assert!(!seen.headers.contains_key(hop), "{hop} forwarded");
    }
    assert_eq!(seen.method, "GET");
    proxy.stop().await;
}

#[tokio::test]
async fn http2_clients_are_served_too() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let proxy = Proxy::start(&five_upstreams(dir.path(), &provider.url()), dir.path()).await;
    let req = Request::post(proxy.url("/v1/embeddings"))
        .header("authorization", "Bearer dummy")
        .body(full("{}"))
        .unwrap();
    let resp = within("h2c response", h2c_client().request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(
        provider.seen()[0].headers["authorization"],
        format!("Bearer {}", keys().openai).as_str()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_status_and_body_come_back_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let provider =
        StandIn::recording(|_| (418, r#"{"error":{"message":"teapot"}}"#.to_string())).await;
    let proxy = Proxy::start(&five_upstreams(dir.path(), &provider.url()), dir.path()).await;
    let (resp, body) = get(&proxy.url("/v1/models")).await;
    assert_eq!(resp.status, 418);
    assert_eq!(&body[..], br#"{"error":{"message":"teapot"}}"#);
    assert!(resp.headers.get("x-keyproxy-reason").is_none());
    proxy.stop().await;
}

#[tokio::test]
async fn no_route_is_404_no_route() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let config = format!(
        "[[upstreams]]\nname = \"a\"\nprovider = \"anthropic\"\nbase_url = \"{}\"\nprefix = \"/anthropic\"\nkey = {{ file = \"{}\" }}\n",
        provider.url(),
        key_file(dir.path(), "k", &keys().anthropic)
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let (resp, body) = get(&proxy.url("/v1/chat/completions")).await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.headers["x-keyproxy-reason"], "no_route");
    let v = json(&body);
    assert_eq!(v["error"]["code"], "no_route");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/chat/completions"));
    // Which paths do route, and that asking again will not help.
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the configured prefixes are \"/anthropic\""));
    assert_eq!(resp.headers["x-should-retry"], "false");
    assert!(provider.seen().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn missing_key_is_503_naming_the_source_and_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let missing = dir.path().join("no-such-key");
    let config = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n\
         [[upstreams]]\nname = \"env\"\nprovider = \"openai\"\nbase_url = \"{}\"\nprefix = \"/env\"\nkey = {{ env = \"KEYPROXY_TEST_UNSET_VAR_1\" }}\n",
        provider.url(),
        missing.display(),
        provider.url(),
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let (resp, body) = get(&proxy.url("/v1/models")).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.headers["x-keyproxy-reason"], "missing_key");
    let v = json(&body);
    assert_eq!(v["error"]["code"], "missing_key");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");

    let (resp, body) = get(&proxy.url("/env/v1/models")).await;
    assert_eq!(resp.status, 503);
    assert!(String::from_utf8_lossy(&body).contains("KEYPROXY_TEST_UNSET_VAR_1"));
    assert!(
        provider.seen().is_empty(),
        "nothing goes upstream without a key"
    );

    let (health, _) = get(&proxy.admin_url("/healthz")).await;
    assert_eq!(health.status, 200);
    let (ready, body) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, 503);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("upstream openai") && text.contains("upstream env"),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn readyz_is_200_when_every_upstream_has_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let proxy = Proxy::start(&five_upstreams(dir.path(), &provider.url()), dir.path()).await;
    let (ready, body) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", String::from_utf8_lossy(&body));
    proxy.stop().await;
}

#[tokio::test]
async fn dot_segments_are_refused_before_routing() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let proxy = Proxy::start(&five_upstreams(dir.path(), &provider.url()), dir.path()).await;
    for path in [
        "/anthropic/../v1/models",
        "/anthropic/%2e%2e/v1/models",
        "/v1/./x",
    ] {
        let (resp, _) = get(&proxy.url(path)).await;
        assert_eq!(resp.status, 400, "{path}");
    }
    assert!(provider.seen().is_empty());
    proxy.stop().await;
}
