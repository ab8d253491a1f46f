//! Several keys per upstream, over real sockets: a key the provider refuses is quarantined and the
//! request goes again on the next key (the app sees only the success); a rate-limited key cools
//! down and comes back; when no key is left the app gets `503 keys_exhausted` naming each key; an
//! operator can reinstate a key; streamed uploads and non-key refusals are never replayed.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;
use http::Request;
use keyproxy::config::Config;
use keyproxy::key::Fingerprint;

const TOKEN: &str = "pools-admin-token-0123456789abcdef";

const INVALID: &str = r#"{"error":{"message":"Incorrect API key provided: sk-proj-****abcd. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
const RATE_LIMITED: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
const OK: &str = r#"{"ok":true}"#;

/// An openai upstream with a pool of keys `a`, `b` (files), an admin token and `extra` settings.
fn pool_config(dir: &Path, base: &str, a: &str, b: &str, extra: &str) -> String {
    format!(
        "admin_token = {{ file = \"{}\" }}\nkey_settle = \"10ms\"\n\
         [[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{base}\"\n\
         keys = [ {{ file = \"{}\", name = \"a\" }}, {{ file = \"{}\", name = \"b\" }} ]\n{extra}\n",
        key_file(dir, "token", TOKEN),
        key_file(dir, "a.key", a),
        key_file(dir, "b.key", b),
    )
}

fn bearer(seen: &Seen) -> String {
    seen.headers["authorization"]
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned()
}

fn chat(proxy: &Proxy, body: Vec<u8>) -> Request<TestBody> {
    Request::post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap()
}

const BODY: &[u8] = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

async fn key_row(proxy: &Proxy, name: &str) -> serde_json::Value {
    let s = status(proxy).await;
    s["upstreams"][0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .cloned()
        .unwrap()
}

async fn reinstate(proxy: &Proxy, key: &str, token: Option<&str>) -> u16 {
    let mut req = Request::post(proxy.admin_url(&format!("/keys/openai/{key}/reinstate")));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(req.body(full("")).unwrap()).await.0.status.as_u16()
}

#[tokio::test]
async fn a_refused_key_is_quarantined_and_the_request_goes_again_on_the_next_key() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, good) = (openai_key("POOLBAD"), openai_key("POOLGOOD"));
    let refused = bad.clone();
    let provider = StandIn::recording(move |seen| match bearer(seen) == refused {
        true => (401, INVALID.to_owned()),
        false => (200, OK.to_owned()),
    })
    .await;
    let proxy = Proxy::start(
        &pool_config(dir.path(), &provider.url(), &bad, &good, ""),
        dir.path(),
    )
    .await;

    let mut failed_over = 0;
    for _ in 0..6 {
        let (resp, body) = send(chat(&proxy, BODY.to_vec())).await;
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(&body[..], OK.as_bytes(), "the app sees only the success");
        if let Some(v) = resp.headers.get("x-keyproxy-failover") {
            assert_eq!(v, "1");
            failed_over += 1;
        }
    }
    assert_eq!(failed_over, 1, "one request met the bad key, and only once");
    let seen = provider.seen();
    let to_bad: Vec<_> = seen.iter().filter(|s| bearer(s) == bad).collect();
    assert_eq!(to_bad.len(), 1, "the quarantined key is not tried again");
    assert!(
        seen.iter().all(|s| &s.body[..] == BODY),
        "the replay carries the same body"
    );
    assert_eq!(seen.len(), 7);

    let a = key_row(&proxy, "a").await;
    assert_eq!(a["state"], "quarantined");
    assert_eq!(a["cause"], "invalid_key");
    assert_eq!(a["fingerprint"], Fingerprint::of(&bad).as_str());
    assert_eq!(key_row(&proxy, "b").await["state"], "active");
    let m = metrics(&proxy).await;
    assert!(
        m.contains(r#"keyproxy_key_state{key="a",upstream="openai"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"keyproxy_key_state{key="b",upstream="openai"} 0"#),
        "{m}"
    );
    assert!(
        m.contains(r#"keyproxy_failovers_total{reason="invalid_key",upstream="openai"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"keyproxy_key_requests_total{key="b",status="200",upstream="openai"} 6"#),
        "{m}"
    );
    let a_refused = r#"keyproxy_key_requests_total{key="a",status="401",upstream="openai"} 1"#;
    assert!(m.contains(a_refused), "{m}");
    assert!(!m.contains(&bad) && !m.contains(&good));
    let s = status(&proxy).await.to_string();
    assert!(!s.contains(&bad) && !s.contains(&good));
    let (_, page) = get(&proxy.admin_url("/")).await;
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("quarantined</span> (invalid_key since "),
        "{page}"
    );

    // A new key in the quarantined key's source lifts the quarantine.
    let fresh = openai_key("POOLFRESH");
    key_file(dir.path(), "a.key", &fresh);
    eventually("the new key a to be served", || async {
        send(chat(&proxy, BODY.to_vec())).await;
        provider.seen().iter().any(|s| bearer(s) == fresh)
    })
    .await;
    assert_eq!(key_row(&proxy, "a").await["state"], "active");
    proxy.stop().await;
}

#[tokio::test]
async fn with_every_key_refused_the_app_gets_keys_exhausted_naming_each_key() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("POOLDEADA"), openai_key("POOLDEADB"));
    let provider = StandIn::recording(|_| (401, INVALID.to_owned())).await;
    let proxy = Proxy::start(
        &pool_config(dir.path(), &provider.url(), &a, &b, ""),
        dir.path(),
    )
    .await;

    // The first request meets both keys: the second refusal is what the app sees, explained.
    let (resp, _) = send(chat(&proxy, BODY.to_vec())).await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.headers["x-keyproxy-reason"], "invalid_key");
    assert_eq!(provider.seen().len(), 2);

    let (resp, body) = send(chat(&proxy, BODY.to_vec())).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.headers["x-keyproxy-reason"], "keys_exhausted");
    assert_eq!(resp.headers["x-should-retry"], "false");
    let message = json(&body)["error"]["message"].as_str().unwrap().to_owned();
    for (name, key) in [("a", &a), ("b", &b)] {
        let fp = Fingerprint::of(key);
        assert!(
            message.contains(&format!("{name} {} invalid_key (quarantined ", fp.as_str())),
            "{message}"
        );
        assert!(!message.contains(key.as_str()));
    }
    assert!(
        message.contains("POST /keys/openai/NAME/reinstate"),
        "{message}"
    );
    assert_eq!(provider.seen().len(), 2, "nothing was forwarded");

    // Reinstating takes the admin token; then the key serves again.
    assert_eq!(reinstate(&proxy, "a", None).await, 401);
    assert_eq!(reinstate(&proxy, "nope", Some(TOKEN)).await, 404);
    assert_eq!(reinstate(&proxy, "a", Some(TOKEN)).await, 200);
    assert_eq!(key_row(&proxy, "a").await["state"], "active");
    let (resp, _) = send(chat(&proxy, BODY.to_vec())).await;
    assert_eq!(resp.status, 401, "a is tried again (and refused again)");
    assert_eq!(bearer(provider.seen().last().unwrap()), a);

    // A rotation names the key of the pool it replaces; the quarantine ends with it.
    let rotate = |query: &str, key: &str| {
        Request::post(proxy.admin_url(&format!("/keys/openai{query}")))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "text/plain")
            .body(full(key.to_owned()))
            .unwrap()
    };
    let fresh = openai_key("POOLROTATEDB");
    let (resp, body) = send(rotate("?name=b", &fresh)).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["key"], "b");
    let row = key_row(&proxy, "b").await;
    assert_eq!(row["state"], "active");
    assert_eq!(row["fingerprint"], Fingerprint::of(&fresh).as_str());
    assert_eq!(send(rotate("?name=zzz", &fresh)).await.0.status, 404);
    // `mode=add` under a name the pool holds already is a conflict, not a rotation.
    let (resp, body) = send(rotate("?name=b&mode=add", &fresh)).await;
    assert_eq!(resp.status, 409);
    assert_eq!(json(&body)["error"]["code"], "name_taken");
    assert_eq!(send(rotate("?mode=rotate", &fresh)).await.0.status, 400);
    proxy.stop().await;
}

#[tokio::test]
async fn a_rate_limited_key_cools_down_then_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("POOLLIMITA"), openai_key("POOLLIMITB"));
    let limited = a.clone();
    let refusals = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&refusals);
    // Key a is limited for its first request only.
    let provider = StandIn::recording(move |seen| {
        if bearer(seen) == limited && counted.fetch_add(1, Ordering::SeqCst) == 0 {
            return (429, RATE_LIMITED.to_owned());
        }
        (200, OK.to_owned())
    })
    .await;
    let config = pool_config(dir.path(), &provider.url(), &a, &b, "cooldown = \"300ms\"");
    let proxy = Proxy::start(&config, dir.path()).await;

    let (resp, body) = send(chat(&proxy, BODY.to_vec())).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(resp.headers["x-keyproxy-failover"], "1");
    let row = key_row(&proxy, "a").await;
    if row["state"] == "cooling" {
        assert_eq!(row["cause"], "rate_limited");
        assert!(row["until"].is_string(), "{row}");
    }
    eventually("key a to serve again after its cool-down", || async {
        send(chat(&proxy, BODY.to_vec())).await;
        provider.seen().iter().filter(|s| bearer(s) == a).count() >= 2
    })
    .await;
    assert_eq!(key_row(&proxy, "a").await["state"], "active");
    let m = metrics(&proxy).await;
    assert!(
        m.contains(r#"keyproxy_failovers_total{reason="rate_limited",upstream="openai"} 1"#),
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_streamed_upload_and_a_server_error_are_never_sent_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("POOLSTREAMA"), openai_key("POOLSTREAMB"));
    let refused = a.clone();
    let provider =
        StandIn::recording(
            move |seen| match (bearer(seen) == refused, seen.body.len()) {
                (true, n) if n > 64 * 1024 => (401, INVALID.to_owned()),
                (true, _) => (500, r#"{"error":{"message":"boom"}}"#.to_owned()),
                (false, _) => (200, OK.to_owned()),
            },
        )
        .await;
    let proxy = Proxy::start(
        &pool_config(dir.path(), &provider.url(), &a, &b, ""),
        dir.path(),
    )
    .await;

    // Equal weights start on a: a 500 is the upstream's, not the key's.
    let (resp, _) = send(chat(&proxy, BODY.to_vec())).await;
    assert_eq!(resp.status, 500);
    assert!(resp.headers.get("x-keyproxy-failover").is_none());
    assert_eq!(key_row(&proxy, "a").await["state"], "active");
    let (resp, _) = send(chat(&proxy, BODY.to_vec())).await;
    assert_eq!(resp.status, 200, "b's turn");

    // a again, with an upload too big to be read whole: refused, benched, not replayed.
    let big = vec![b' '; 100 * 1024];
    let (resp, _) = send(chat(&proxy, big)).await;
    assert_eq!(resp.status, 401);
    assert!(resp.headers.get("x-keyproxy-failover").is_none());
    assert_eq!(provider.seen().len(), 3, "nothing was sent twice");
    assert_eq!(key_row(&proxy, "a").await["state"], "quarantined");
    proxy.stop().await;
}

#[tokio::test]
async fn weights_share_the_requests_and_a_single_key_is_a_pool_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("POOLWEIGHTA"), openai_key("POOLWEIGHTB"));
    let provider = StandIn::ok().await;
    let config = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\n\
         keys = [ {{ file = \"{}\" }}, {{ file = \"{}\", weight = 3 }} ]\n",
        provider.url(),
        key_file(dir.path(), "a.key", &a),
        key_file(dir.path(), "b.key", &b),
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    for _ in 0..8 {
        assert_eq!(send(chat(&proxy, BODY.to_vec())).await.0.status, 200);
    }
    let seen = provider.seen();
    assert_eq!(seen.iter().filter(|s| bearer(s) == a).count(), 2);
    assert_eq!(seen.iter().filter(|s| bearer(s) == b).count(), 6);
    let s = status(&proxy).await;
    let names: Vec<_> = s["upstreams"][0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["key-1", "key-2"], "unnamed keys are numbered");
    proxy.stop().await;

    // `key = …`: one key, named after the upstream, active; no pool series are counted.
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n",
        provider.url(),
        key_file(dir.path(), "k", &a),
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    assert_eq!(send(chat(&proxy, BODY.to_vec())).await.0.status, 200);
    let row = key_row(&proxy, "openai").await;
    assert_eq!(row["state"], "active");
    assert_eq!(row["fingerprint"], Fingerprint::of(&a).as_str());
    let m = metrics(&proxy).await;
    assert!(!m.contains(
        "keyproxy_key_requests_total{key=\"openai\",status=\"200\",upstream=\"openai\"} 1"
    ));
    proxy.stop().await;
}

#[test]
fn pool_config_mistakes_name_their_field_and_never_echo_a_key() {
    let base = "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"https://api.openai.com\"\n";
    let err = |extra: &str| match Config::parse(Path::new("/k.toml"), &format!("{base}{extra}\n")) {
        Ok(_) => panic!("accepted: {extra}"),
        Err(e) => e.to_string(),
    };
    let both = err("key = { env = \"A\" }\nkeys = [ { env = \"B\" } ]");
    assert!(both.contains("upstreams[0].keys: set either key"), "{both}");
    let none = err("");
    assert!(
        none.contains("upstreams[0].key: upstream \"openai\" has no key"),
        "{none}"
    );
    let dup = err("keys = [ { env = \"A\", name = \"x\" }, { env = \"B\", name = \"x\" } ]");
    assert!(dup.contains("upstreams[0].keys[1].name"), "{dup}");
    let weight = err("keys = [ { env = \"A\", weight = 0 } ]");
    assert!(weight.contains("upstreams[0].keys[0].weight"), "{weight}");
    let empty = err("keys = []");
    assert!(empty.contains("upstreams[0].keys"), "{empty}");
    let secret = openai_key("PASTEDINPOOL");
    for pasted in [
        format!("keys = [ \"{secret}\" ]"),
        format!("keys = [ {{ name = \"a\", key = \"{secret}\" }} ]"),
    ] {
        let e = err(&pasted);
        assert!(!e.contains(&secret[8..40]), "{e}");
        assert!(e.contains("upstreams[0].keys[0]"), "{e}");
    }
    let ok = Config::parse(
        Path::new("/k.toml"),
        &format!("{base}keys = [ {{ file = \"a\", name = \"a\", weight = 2, max_age = \"90d\" }}, {{ env = \"B\" }} ]\ncooldown = \"5s\"\n"),
    )
    .unwrap();
    let u = &ok.upstreams[0];
    assert_eq!(u.keys.len(), 2);
    assert_eq!((u.keys[0].name.as_str(), u.keys[0].weight), ("a", 2));
    assert_eq!(u.keys[0].source.to_string(), "file /a");
    assert!(u.keys[0].expiry.max_age.is_some() && u.keys[1].expiry.max_age.is_none());
    assert_eq!(u.keys[1].name, "key-2");
    assert_eq!(u.cooldown, std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn a_rate_limited_key_rests_as_long_as_the_provider_says() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("POOLRETRYA"), openai_key("POOLRETRYB"));
    let limited = format!("Bearer {a}");
    let seen_a = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&seen_a);
    let handler: Handler = Arc::new(move |req: Request<hyper::body::Incoming>| {
        let is_a = req.headers()["authorization"] == limited.as_str();
        if is_a {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async move {
            let resp = http::Response::builder().header("content-type", "application/json");
            match is_a {
                true => resp
                    .status(429)
                    .header("retry-after", "120")
                    .body(full(RATE_LIMITED)),
                false => resp.status(200).body(full(OK)),
            }
            .unwrap()
        })
    });
    let addr = serve_plain(handler).await;
    let config = pool_config(dir.path(), &format!("http://{addr}"), &a, &b, "");
    let proxy = Proxy::start(&config, dir.path()).await;

    let (resp, _) = send(chat(&proxy, BODY.to_vec())).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers["x-keyproxy-failover"], "1");
    let row = key_row(&proxy, "a").await;
    assert_eq!(row["state"], "cooling");
    assert_eq!(row["cause"], "rate_limited");
    let until = keyproxy::time::parse_timestamp(row["until"].as_str().unwrap()).unwrap();
    let rest = until
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((100..=121).contains(&rest), "cooling for {rest}s");
    for _ in 0..4 {
        assert_eq!(send(chat(&proxy, BODY.to_vec())).await.0.status, 200);
    }
    assert_eq!(seen_a.load(Ordering::SeqCst), 1, "a rests");
    let m = metrics(&proxy).await;
    assert!(
        m.contains(r#"keyproxy_key_state{key="a",upstream="openai"} 1"#),
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_pool_key_that_cannot_be_loaded_is_skipped_and_overwrites_no_other_keys_gauges() {
    let dir = tempfile::tempdir().unwrap();
    let a = openai_key("POOLLOADEDA");
    let provider = StandIn::ok().await;
    let config = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\n\
         keys = [ {{ file = \"{}\" }}, {{ env = \"KEYPROXY_POOLS_TEST_NEVER_SET\" }} ]\n",
        provider.url(),
        key_file(dir.path(), "a.key", &a),
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    for _ in 0..4 {
        assert_eq!(send(chat(&proxy, BODY.to_vec())).await.0.status, 200);
    }
    assert!(provider.seen().iter().all(|s| bearer(s) == a));
    let (ready, _) = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200, "a pool serves while any key is loaded");
    let row = key_row(&proxy, "key-2").await;
    assert_eq!(row["state"], "unavailable");
    assert_eq!(row["cause"], "missing_key");
    let m = metrics(&proxy).await;
    assert!(
        m.contains(r#"keyproxy_key_usable{upstream="openai"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"keyproxy_key_state{key="key-2",upstream="openai"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"keyproxy_key_state{key="key-1",upstream="openai"} 0"#),
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_bodiless_http2_request_fails_over_too() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, good) = (openai_key("POOLHTWOBAD"), openai_key("POOLHTWOGOOD"));
    let refused = bad.clone();
    let provider = StandIn::recording(move |seen| match bearer(seen) == refused {
        true => (401, INVALID.to_owned()),
        false => (200, OK.to_owned()),
    })
    .await;
    let config = pool_config(dir.path(), &provider.url(), &bad, &good, "");
    let proxy = Proxy::start(&config, dir.path()).await;
    let req = Request::get(proxy.url("/v1/models"))
        .body(full(""))
        .unwrap();
    let resp = within("the answer", h2c_client().request(req))
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-keyproxy-failover"], "1");
    assert_eq!(provider.seen().len(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn with_every_key_cooling_keys_exhausted_says_until_when_and_leaves_retrying_to_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("POOLCOOLA"), openai_key("POOLCOOLB"));
    let handler: Handler = Arc::new(move |_req: Request<hyper::body::Incoming>| {
        Box::pin(async move {
            http::Response::builder()
                .status(429)
                .header("content-type", "application/json")
                .header("retry-after-ms", "90000")
                .body(full(RATE_LIMITED))
                .unwrap()
        })
    });
    let addr = serve_plain(handler).await;
    let config = pool_config(dir.path(), &format!("http://{addr}"), &a, &b, "");
    let proxy = Proxy::start(&config, dir.path()).await;

    let (resp, _) = send(chat(&proxy, BODY.to_vec())).await;
    assert_eq!(resp.status, 429, "both keys were tried");
    assert_eq!(resp.headers["x-keyproxy-failover"], "1");
    let (resp, body) = send(chat(&proxy, BODY.to_vec())).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.headers["x-keyproxy-reason"], "keys_exhausted");
    assert!(resp.headers.get("x-should-retry").is_none());
    let message = json(&body)["error"]["message"].as_str().unwrap().to_owned();
    for (name, key) in [("a", &a), ("b", &b)] {
        let said = format!(
            "{name} {} rate-limited until 20",
            Fingerprint::of(key).as_str()
        );
        assert!(message.contains(&said), "{message}");
    }
    assert_eq!(key_row(&proxy, "b").await["state"], "cooling");
    proxy.stop().await;
}
