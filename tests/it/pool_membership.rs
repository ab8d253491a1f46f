//! A pool's membership at run time, over real sockets: `mode=add` (a key joins, serves, and is
//! still there after a restart; a bad key never joins), `mode=retire` (the key leaves, an app
//! still sending it is named, the last usable key is refused), a grace period that retires the
//! replaced key by itself, standings (quarantine, cool-down) that outlive a restart, and a pool
//! that loses one key to revocation, one to a rate limit and one to expiry under load without a
//! failed request. No key ever reaches the database, /status or /metrics.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;
use http::Request;
use keyproxy::key::Fingerprint;

const TOKEN: &str = "membership-admin-token-0123456789ab";

const INVALID: &str = r#"{"error":{"message":"Incorrect API key provided: sk-proj-****abcd. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
const REVOKED: &str = r#"{"error":{"message":"This API key has been revoked.","type":"invalid_request_error","param":null,"code":null}}"#;
const RATE_LIMITED: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
const OK: &str = r#"{"ok":true}"#;
const BODY: &[u8] = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

/// An openai upstream whose keys are `keys` (`key = …` for one, else `keys = [...]` named by
/// their file names), with an admin token, a short settle and `extra` settings.
fn config(dir: &Path, base: &str, keys: &[(&str, &str)], extra: &str) -> String {
    let token = key_file(dir, "token", TOKEN);
    let keys = match keys {
        [(name, key)] => format!("key = {{ file = \"{}\" }}", key_file(dir, name, key)),
        many => format!(
            "keys = [ {} ]",
            many.iter()
                .map(|(name, key)| format!(
                    "{{ file = \"{}\", name = \"{name}\" }}",
                    key_file(dir, name, key)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "admin_token = {{ file = \"{token}\" }}\nkey_settle = \"10ms\"\nkey_reload_interval = \"100ms\"\n\
         [[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{base}\"\n{keys}\n{extra}\n"
    )
}

fn bearer(seen: &Seen) -> String {
    seen.headers["authorization"]
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned()
}

fn chat(proxy: &Proxy) -> Request<TestBody> {
    Request::post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(full(BODY))
        .unwrap()
}

/// `POST /keys/openai?{query}` with the admin token and `key` as the body.
async fn admin_post(proxy: &Proxy, query: &str, key: &str) -> (u16, serde_json::Value) {
    let req = Request::post(proxy.admin_url(&format!("/keys/openai?{query}")))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "text/plain")
        .body(full(key.to_owned()))
        .unwrap();
    let (resp, body) = send(req).await;
    (resp.status.as_u16(), json(&body))
}

async fn keys_of(proxy: &Proxy) -> Vec<serde_json::Value> {
    status(proxy).await["upstreams"][0]["keys"]
        .as_array()
        .unwrap()
        .clone()
}

async fn key_row(proxy: &Proxy, name: &str) -> Option<serde_json::Value> {
    keys_of(proxy).await.into_iter().find(|k| k["name"] == name)
}

async fn state_of(proxy: &Proxy, name: &str) -> String {
    key_row(proxy, name)
        .await
        .map(|k| k["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Every byte of the state store (the database and its WAL), for leak checks.
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["keyproxy.db", "keyproxy.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.join("state").join(name)) {
            all.extend(bytes);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A stand-in provider that refuses `key` as invalid and accepts every other.
async fn refusing(key: &str) -> StandIn {
    let refused = key.to_owned();
    StandIn::recording(move |seen| match bearer(seen) == refused {
        true => (401, INVALID.to_owned()),
        false => (200, OK.to_owned()),
    })
    .await
}

/// Which keys the stand-in saw, in order.
fn keys_seen(provider: &StandIn) -> Vec<String> {
    provider.seen().iter().map(bearer).collect()
}

#[tokio::test]
async fn an_added_key_joins_serves_and_is_still_there_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("ADDFIRST"), openai_key("ADDSECOND"));
    let provider = StandIn::recording(|_| (200, OK.to_owned())).await;
    let text = config(dir.path(), &provider.url(), &[("a", &a)], "");
    let proxy = Proxy::start(&text, dir.path()).await;

    let (code, body) = admin_post(&proxy, "mode=add&name=b", &b).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], "added");
    assert_eq!(body["fingerprint"], Fingerprint::of(&b).as_str());
    assert_eq!(state_of(&proxy, "b").await, "active");
    for _ in 0..4 {
        assert_eq!(send(chat(&proxy)).await.0.status, 200);
    }
    let seen = keys_seen(&provider);
    assert!(seen.contains(&a) && seen.contains(&b), "both keys serve");

    // The key lives in a 0600 file under the state directory, never in the database.
    let file = dir.path().join("state/keys/openai/b");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim_end(), b);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let m = metrics(&proxy).await;
    assert!(
        m.contains(r#"keyproxy_key_state{key="b",upstream="openai"} 0"#),
        "{m}"
    );
    let shown = status(&proxy).await.to_string();
    assert!(!shown.contains(&b) && !m.contains(&b));
    proxy.stop().await;
    assert!(!contains(&store_bytes(dir.path()), &b), "no key in the db");

    let proxy = Proxy::start(&text, dir.path()).await;
    assert_eq!(
        state_of(&proxy, "b").await,
        "active",
        "b is back after a restart"
    );
    let before = provider.seen().len();
    for _ in 0..4 {
        assert_eq!(send(chat(&proxy)).await.0.status, 200);
    }
    assert!(keys_seen(&provider)[before..].contains(&b));
    // Retired, an added key and its file are gone; it is not rotated back in place.
    let (code, body) = admin_post(&proxy, "mode=retire&name=b", "").await;
    assert_eq!(code, 200, "{body}");
    assert!(!file.exists(), "the retired key's file is removed");
    let (code, body) = admin_post(&proxy, "name=b", &openai_key("ADDTHIRD")).await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (409, "retired_key".into())
    );
    proxy.stop().await;
    let proxy = Proxy::start(&text, dir.path()).await;
    assert!(key_row(&proxy, "b").await.is_none(), "gone after a restart");
    proxy.stop().await;
}

/// keyproxy killed after an added key's file was written but before its row was: the next start
/// finds a key file that nothing names. It must not join, nor linger on disk.
#[tokio::test]
async fn a_key_file_left_by_a_crash_during_mode_add_is_removed_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, ghost) = (
        openai_key("ORPHANA"),
        openai_key("ORPHANB"),
        openai_key("ORPHANGHOST"),
    );
    let provider = StandIn::recording(|_| (200, OK.to_owned())).await;
    let text = config(dir.path(), &provider.url(), &[("a", &a)], "");
    let proxy = Proxy::start(&text, dir.path()).await;
    let (code, body) = admin_post(&proxy, "mode=add&name=b", &b).await;
    assert_eq!(code, 200, "{body}");
    proxy.stop().await;
    let orphan = dir.path().join("state/keys/openai/ghost");
    std::fs::write(&orphan, format!("{ghost}\n")).unwrap();

    let proxy = Proxy::start(&text, dir.path()).await;
    assert!(!orphan.exists(), "the orphan key file is removed");
    assert!(key_row(&proxy, "ghost").await.is_none(), "it never joins");
    assert_eq!(
        state_of(&proxy, "b").await,
        "active",
        "a recorded key stays"
    );
    assert!(dir.path().join("state/keys/openai/b").exists());
    for _ in 0..4 {
        assert_eq!(send(chat(&proxy)).await.0.status, 200);
    }
    assert!(!keys_seen(&provider).contains(&ghost));
    proxy.stop().await;
}

#[tokio::test]
async fn a_bad_key_never_joins() {
    let dir = tempfile::tempdir().unwrap();
    let (a, refused) = (openai_key("BADJOINA"), openai_key("BADJOINREFUSED"));
    let provider = refusing(&refused).await;
    let text = config(dir.path(), &provider.url(), &[("a", &a)], "");
    let proxy = Proxy::start(&text, dir.path()).await;

    // The lint refuses it; nothing is written.
    let (code, body) = admin_post(&proxy, "mode=add&name=b", "not a key at all").await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["error"]["type"], "key_rejected");
    // The provider refuses it when asked.
    let (code, body) = admin_post(&proxy, "mode=add&name=b&probe=true", &refused).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_key");
    assert!(!body.to_string().contains(&refused));
    assert!(key_row(&proxy, "b").await.is_none());
    assert!(!dir.path().join("state/keys/openai/b").exists());

    // A name that is taken, or none, or a key the pool holds already.
    let (code, body) = admin_post(&proxy, "mode=add&name=openai", &openai_key("OTHER")).await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (409, "name_taken".into())
    );
    let (code, _) = admin_post(&proxy, "mode=add", &openai_key("OTHER")).await;
    assert_eq!(code, 400);
    // A name is a file name under the state directory: nothing but letters, digits, - and _.
    for hostile in ["..%2F..%2Fevil", "../../evil", "a+b", "%00"] {
        let (code, body) = admin_post(
            &proxy,
            &format!("mode=add&name={hostile}"),
            &openai_key("OTHER"),
        )
        .await;
        assert_eq!(
            (code, body["error"]["code"].clone()),
            (409, "bad_name".into()),
            "{hostile}"
        );
    }
    let (code, _) = admin_post(
        &proxy,
        "mode=add&name=c&retire=openai&grace=999999999999d",
        &openai_key("C"),
    )
    .await;
    assert_eq!(code, 400, "a grace beyond any date");
    assert!(
        key_row(&proxy, "c").await.is_none(),
        "and the key did not join"
    );
    for query in [
        "mode=add&name=c&max_age=999999999999d",
        "max_age=999999999999d",
    ] {
        let (code, body) = admin_post(&proxy, query, &openai_key("C")).await;
        assert_eq!(
            (code, body["error"]["code"].clone()),
            (400, "bad_expiry".into()),
            "{query}"
        );
    }
    let (code, body) = admin_post(&proxy, "mode=add&name=c", &a).await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (409, "key_in_pool".into())
    );
    let (code, _) = admin_post(&proxy, "mode=add&name=c&grace=1h", &openai_key("C")).await;
    assert_eq!(code, 400, "grace without retire");
    let (code, _) = admin_post(&proxy, "mode=add&name=c&retire=zz", &openai_key("C")).await;
    assert_eq!(code, 404);
    assert_eq!(keys_of(&proxy).await.len(), 1);

    // Without the admin token nothing changes.
    let req = Request::post(proxy.admin_url("/keys/openai?mode=add&name=c"))
        .body(full(openai_key("C")))
        .unwrap();
    assert_eq!(send(req).await.0.status, 401);
    assert_eq!(keys_of(&proxy).await.len(), 1);
    proxy.stop().await;
    assert!(!contains(&store_bytes(dir.path()), &refused));
}

#[tokio::test]
async fn a_retired_key_leaves_the_pool_and_an_app_still_sending_it_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("RETIREA"), openai_key("RETIREB"));
    let provider = StandIn::recording(|_| (200, OK.to_owned())).await;
    let text = config(dir.path(), &provider.url(), &[("a", &a), ("b", &b)], "");
    let proxy = Proxy::start(&text, dir.path()).await;

    let (code, body) = admin_post(&proxy, "mode=retire&name=a", "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["fingerprint"], Fingerprint::of(&a).as_str());
    let row = key_row(&proxy, "a").await.unwrap();
    assert_eq!(row["state"], "retired");
    let before = provider.seen().len();
    for _ in 0..4 {
        assert_eq!(send(chat(&proxy)).await.0.status, 200);
    }
    assert!(keys_seen(&provider)[before..].iter().all(|k| *k == b));
    let m = metrics(&proxy).await;
    assert!(
        !m.contains(r#"keyproxy_key_state{key="a""#),
        "a retired key is not counted: {m}"
    );

    // The last usable key stays, with a sentence that says why.
    let (code, body) = admin_post(&proxy, "mode=retire&name=b", "").await;
    assert_eq!(code, 409);
    assert_eq!(body["error"]["code"], "last_usable_key");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("last usable key"));
    let (code, _) = admin_post(&proxy, "mode=retire&name=a", "").await;
    assert_eq!(code, 409, "retired already");
    let (code, _) = admin_post(&proxy, "mode=retire&name=zz", "").await;
    assert_eq!(code, 404);
    let req = Request::post(proxy.admin_url("/keys/openai/a/reinstate"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(full(""))
        .unwrap();
    assert_eq!(
        send(req).await.0.status,
        409,
        "a retired key is not reinstated"
    );

    // An app that still sends the retired key is named.
    let req = Request::post(proxy.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {a}"))
        .header("user-agent", "legacy-batch/2.1")
        .body(full(BODY))
        .unwrap();
    assert_eq!(send(req).await.0.status, 200);
    eventually("the sighting of the retired key", || async {
        let s = status(&proxy).await;
        s["upstreams"][0]["retired_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| {
                r["fingerprint"] == Fingerprint::of(&a).as_str()
                    && r["sightings"].to_string().contains("legacy-batch/2.1")
            })
    })
    .await;
    proxy.stop().await;

    // After a restart a is still out: its file still holds the retired key.
    let proxy = Proxy::start(&text, dir.path()).await;
    assert_eq!(state_of(&proxy, "a").await, "retired");
    let before = provider.seen().len();
    for _ in 0..3 {
        assert_eq!(send(chat(&proxy)).await.0.status, 200);
    }
    assert!(keys_seen(&provider)[before..].iter().all(|k| *k == b));
    // A new key in its file brings it back.
    let fresh = openai_key("RETIREAFRESH");
    key_file(dir.path(), "a", &fresh);
    eventually("a to rejoin with its new key", || async {
        state_of(&proxy, "a").await == "active"
    })
    .await;
    proxy.stop().await;
    assert!(!contains(&store_bytes(dir.path()), &a));
    // `keyproxy history` tells the retirement apart from a rotation and a refusal.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyproxy"))
        .args(["history", "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let told = String::from_utf8_lossy(&out.stdout);
    assert!(
        told.contains(&format!(
            "openai/a  retired   by admin API  {} (generation 1) left the pool",
            Fingerprint::of(&a)
        )),
        "{told}"
    );
}

#[tokio::test]
async fn a_grace_period_retires_the_replaced_key_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (openai_key("GRACEOLD"), openai_key("GRACENEW"));
    let provider = StandIn::recording(|_| (200, OK.to_owned())).await;
    let text = config(
        dir.path(),
        &provider.url(),
        &[("old", &old)],
        "max_age = \"30d\"",
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    let expiry = r#"keyproxy_key_expiry_timestamp_seconds{upstream="openai"}"#;
    assert!(metrics(&proxy).await.contains(expiry));

    let (code, body) = admin_post(&proxy, "mode=add&name=new&retire=old&grace=1s", &new).await;
    assert_eq!(code, 404, "{body}");
    // A `key = …` upstream's one key carries the upstream's name.
    let name = keys_of(&proxy).await[0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(name, "openai");
    let (code, body) = admin_post(
        &proxy,
        &format!("mode=add&name=new&retire={name}&grace=1s"),
        &new,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["retires"]["key"], name);
    let row = key_row(&proxy, &name).await.unwrap();
    assert_eq!(row["state"], "active", "both serve during the grace");
    assert!(row["retires_at"].is_string());
    eventually("the old key to retire after its grace", || async {
        state_of(&proxy, &name).await == "retired"
    })
    .await;
    let before = provider.seen().len();
    for _ in 0..3 {
        assert_eq!(send(chat(&proxy)).await.0.status, 200);
    }
    assert!(keys_seen(&provider)[before..].iter().all(|k| *k == new));
    // The retired key's expiry warns no more; the key in use shows its own.
    let m = metrics(&proxy).await;
    assert!(!m.contains(expiry), "{m}");
    assert!(
        m.contains(r#"keyproxy_pool_key_expiry_timestamp_seconds{key="new",upstream="openai"}"#),
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_grace_period_running_at_shutdown_ends_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (openai_key("GRACERESTOLD"), openai_key("GRACERESTNEW"));
    let provider = StandIn::recording(|_| (200, OK.to_owned())).await;
    let text = config(
        dir.path(),
        &provider.url(),
        &[("x", &old), ("y", &openai_key("GRACERESTY"))],
        "grace = \"4s\"",
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    // The upstream's `grace` applies when the request names none.
    let (code, body) = admin_post(&proxy, "mode=add&name=z&retire=x", &new).await;
    assert_eq!(code, 200, "{body}");
    assert!(body["retires"]["at"].is_string(), "{body}");
    proxy.stop().await;

    let proxy = Proxy::start(&text, dir.path()).await;
    assert_eq!(state_of(&proxy, "z").await, "active");
    assert_ne!(state_of(&proxy, "x").await, "retired");
    eventually("x to retire once its grace is over", || async {
        state_of(&proxy, "x").await == "retired"
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn quarantine_and_cool_down_outlive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, limited, good) = (
        openai_key("RESTARTBAD"),
        openai_key("RESTARTLIMITED"),
        openai_key("RESTARTGOOD"),
    );
    let (no, slow) = (bad.clone(), limited.clone());
    let provider = StandIn::recording(move |seen| {
        let key = bearer(seen);
        if key == no {
            (401, INVALID.to_owned())
        } else if key == slow {
            (429, RATE_LIMITED.to_owned())
        } else {
            (200, OK.to_owned())
        }
    })
    .await;
    let keys = [
        ("bad", bad.as_str()),
        ("limited", &limited),
        ("good", &good),
    ];
    let text = config(dir.path(), &provider.url(), &keys, "cooldown = \"10m\"");
    let proxy = Proxy::start(&text, dir.path()).await;
    for _ in 0..6 {
        assert_eq!(send(chat(&proxy)).await.0.status, 200);
    }
    assert_eq!(state_of(&proxy, "bad").await, "quarantined");
    assert_eq!(state_of(&proxy, "limited").await, "cooling");
    let until = key_row(&proxy, "limited").await.unwrap()["until"].clone();
    proxy.stop().await;
    // The standings reach the store through its writer, which has finished when it closes.
    let proxy = Proxy::start(&text, dir.path()).await;
    let row = key_row(&proxy, "bad").await.unwrap();
    assert_eq!(row["state"], "quarantined");
    assert_eq!(row["cause"], "invalid_key");
    let row = key_row(&proxy, "limited").await.unwrap();
    assert_eq!(row["state"], "cooling");
    assert_eq!(row["until"], until);
    let before = provider.seen().len();
    for _ in 0..4 {
        assert_eq!(send(chat(&proxy)).await.0.status, 200);
    }
    assert!(
        keys_seen(&provider)[before..].iter().all(|k| *k == good),
        "neither benched key is tried after the restart"
    );
    // A different key in the quarantined key's file lifts the quarantine.
    key_file(dir.path(), "bad", &openai_key("RESTARTBADFRESH"));
    eventually("the new key to lift the quarantine", || async {
        state_of(&proxy, "bad").await == "active"
    })
    .await;
    proxy.stop().await;
    let proxy = Proxy::start(&text, dir.path()).await;
    assert_eq!(
        state_of(&proxy, "bad").await,
        "active",
        "the lifted quarantine stays lifted"
    );
    proxy.stop().await;
    assert!(!contains(&store_bytes(dir.path()), &bad));
    assert!(!contains(&store_bytes(dir.path()), &limited));
}

#[tokio::test]
async fn under_load_a_pool_loses_a_key_to_revocation_a_rate_limit_and_expiry_and_no_request_fails()
{
    let dir = tempfile::tempdir().unwrap();
    let (revoked, limited, expired, good) = (
        openai_key("LOADREVOKED"),
        openai_key("LOADLIMITED"),
        openai_key("LOADEXPIRED"),
        openai_key("LOADGOOD"),
    );
    // One key goes bad at a time, each while the load runs: revoked, then rate-limited, then
    // expired (the provider's plain 401 for a key past its `expires_at`).
    let phase = Arc::new(AtomicUsize::new(0));
    let (r, l, e, p) = (
        revoked.clone(),
        limited.clone(),
        expired.clone(),
        Arc::clone(&phase),
    );
    let provider = StandIn::recording(move |seen| {
        let key = bearer(seen);
        let now = p.load(Ordering::SeqCst);
        if key == r && now >= 1 {
            (401, REVOKED.to_owned())
        } else if key == l && now >= 2 {
            (429, RATE_LIMITED.to_owned())
        } else if key == e && now >= 3 {
            (401, INVALID.to_owned())
        } else {
            (200, OK.to_owned())
        }
    })
    .await;
    let token = key_file(dir.path(), "token", TOKEN);
    let file = |name: &str, key: &str| key_file(dir.path(), name, key);
    let text = format!(
        "admin_token = {{ file = \"{token}\" }}\n\
         [[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\ncooldown = \"10m\"\n\
         keys = [ {{ file = \"{}\", name = \"revoked\" }}, {{ file = \"{}\", name = \"limited\" }},\n\
                  {{ file = \"{}\", name = \"expired\", expires_at = \"2021-01-01\" }}, {{ file = \"{}\", name = \"good\" }} ]\n",
        provider.url(),
        file("revoked", &revoked),
        file("limited", &limited),
        file("expired", &expired),
        file("good", &good),
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    let url = proxy.url("/v1/chat/completions");
    let done = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (url, done) = (url.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !done.load(Ordering::SeqCst) || statuses.len() < 5 {
                    let req = Request::post(url.as_str())
                        .header("content-type", "application/json")
                        .body(full(BODY))
                        .unwrap();
                    statuses.push(send(req).await.0.status.as_u16());
                }
                statuses
            })
        })
        .collect();
    for (next, name) in [(1, "revoked"), (2, "limited"), (3, "expired")] {
        phase.store(next, Ordering::SeqCst);
        eventually(&format!("key {name} to be benched under load"), || async {
            state_of(&proxy, name).await != "active"
        })
        .await;
    }
    done.store(true, Ordering::SeqCst);
    let mut served = 0;
    for task in load {
        let statuses = task.await.unwrap();
        served += statuses.len();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert!(served >= 30, "{served}");
    let expect = [
        ("revoked", "quarantined", "revoked_key"),
        ("limited", "cooling", "rate_limited"),
        ("expired", "quarantined", "expired_key"),
    ];
    for (name, state, cause) in expect {
        let row = key_row(&proxy, name).await.unwrap();
        assert_eq!(
            (row["state"].as_str(), row["cause"].as_str()),
            (Some(state), Some(cause)),
            "{row}"
        );
    }
    assert_eq!(state_of(&proxy, "good").await, "active");
    let m = metrics(&proxy).await;
    for (name, code) in [("revoked", 2), ("limited", 1), ("expired", 2), ("good", 0)] {
        let line = format!(r#"keyproxy_key_state{{key="{name}",upstream="openai"}} {code}"#);
        assert!(m.contains(&line), "{line}\n{m}");
    }
    // Every key of the pool shows its own expiry (the first key is not the only one).
    assert!(
        m.contains(r#"keyproxy_pool_key_expiry_timestamp_seconds{key="expired",upstream="openai"} 1609459200"#),
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keyproxy_rotate_adds_with_a_grace_and_retires_with_the_same_sentences() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("CLIPOOLA"), openai_key("CLIPOOLB"));
    let provider = StandIn::recording(|_| (200, OK.to_owned())).await;
    let text = config(
        dir.path(),
        &provider.url(),
        &[("a", &a), ("c", &openai_key("CLIPOOLC"))],
        "",
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    let admin = proxy.admin_url("");
    let new_key = dir.path().join("new-key");
    std::fs::write(&new_key, format!("{b}\n")).unwrap();
    let rotate = |args: &[&str]| {
        let mut all: Vec<String> = vec!["rotate".into(), "--upstream".into(), "openai".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        all.extend(["--admin".to_owned(), admin.clone()]);
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyproxy"))
                .args(&all)
                .env("KEYPROXY_ADMIN_TOKEN", TOKEN)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            printed(out)
        })
    };
    let key_file_arg = new_key.display().to_string();
    let (ok, out) = rotate(&[
        "--mode",
        "add",
        "--name",
        "b",
        "--key-file",
        &key_file_arg,
        "--retire",
        "a",
        "--grace",
        "1h",
    ])
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("✓ openai: b added"), "{out}");
    assert!(out.contains("a retires at"), "{out}");
    assert!(!out.contains("CLIPOOLB"), "the key was printed: {out}");
    assert!(key_row(&proxy, "a").await.unwrap()["retires_at"].is_string());

    let (ok, out) = rotate(&["--mode", "retire", "--name", "a"]).await.unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("key a retired"), "{out}");
    let (ok, out) = rotate(&["--mode", "retire", "--name", "zz"]).await.unwrap();
    assert!(!ok);
    assert!(out.contains("no key named \"zz\""), "{out}");
    let (ok, out) = rotate(&["--mode", "retire"]).await.unwrap();
    assert!(!ok);
    assert!(out.contains("--mode retire needs --name"), "{out}");
    let (ok, out) = rotate(&["--mode", "add", "--name", "d"]).await.unwrap();
    assert!(!ok);
    assert!(out.contains("--key-file PATH or --key-stdin"), "{out}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_refusal_is_explained_with_the_refused_keys_own_last_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("EXPLAINA"), openai_key("EXPLAINB"));
    let provider = refusing(&b).await;
    let text = config(dir.path(), &provider.url(), &[("a", &a), ("b", &b)], "");
    let proxy = Proxy::start(&text, dir.path()).await;
    // b's last rotation was refused (a quoted key); a's never was.
    let quoted = format!("\"{}\"", openai_key("EXPLAINQUOTED"));
    let (code, _) = admin_post(&proxy, "name=b", &quoted).await;
    assert_eq!(code, 422);
    for _ in 0..3 {
        assert_eq!(send(chat(&proxy)).await.0.status, 200);
    }
    let s = status(&proxy).await;
    let diagnoses = s["upstreams"][0]["recent_diagnoses"].as_array().unwrap();
    let about_b = diagnoses
        .iter()
        .find(|d| d["key_fingerprint"] == Fingerprint::of(&b).as_str())
        .unwrap_or_else(|| panic!("{s}"));
    let message = about_b["message"].as_str().unwrap();
    assert!(
        message.contains("was refused") && message.contains(Fingerprint::of(&quoted).as_str()),
        "b's refusal names b's refused rotation: {message}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_key_of_a_pool_is_named_in_its_lifecycle_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, fresh) = (
        openai_key("LOGNAMEA"),
        openai_key("LOGNAMEB"),
        openai_key("LOGNAMEFRESH"),
    );
    let provider = StandIn::ok().await;
    let text = config(dir.path(), &provider.url(), &[("a", &a), ("b", &b)], "");
    let path = dir.path().join("keyproxy.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{text}"),
    )
    .unwrap();
    let mut running = run_binary(&path, &[]);
    let mut loaded = Vec::new();
    for _ in 0..2 {
        let line = running.wait_log("key loaded").await;
        assert_eq!(line["upstream"], "openai");
        loaded.push((line["key"].clone(), line["fingerprint"].clone()));
    }
    loaded.sort_by_key(|(k, _)| k.to_string());
    assert_eq!(
        loaded,
        vec![
            ("a".into(), Fingerprint::of(&a).as_str().into()),
            ("b".into(), Fingerprint::of(&b).as_str().into())
        ]
    );
    key_file(dir.path(), "b", &fresh);
    let rotated = running.wait_log("key rotated").await;
    assert_eq!(rotated["key"], "b", "{rotated}");
    let logs = running.stop().await;
    for key in [&a, &b, &fresh] {
        assert!(!logs.contains(key.as_str()), "a key reached the log");
    }
}

#[tokio::test]
async fn a_pool_whose_first_key_cannot_be_loaded_still_has_a_usable_key() {
    let dir = tempfile::tempdir().unwrap();
    let b = openai_key("FIRSTMISSINGB");
    let provider = StandIn::ok().await;
    let text = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\n\
         keys = [ {{ env = \"KEYPROXY_MEMBERSHIP_TEST_NEVER_SET\", name = \"a\" }}, {{ file = \"{}\", name = \"b\" }} ]\n",
        provider.url(),
        key_file(dir.path(), "b", &b),
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    assert_eq!(send(chat(&proxy)).await.0.status, 200);
    let m = metrics(&proxy).await;
    assert!(
        m.contains(r#"keyproxy_key_usable{upstream="openai"} 1"#),
        "no KeyproxyKeyNotUsable page while b serves: {m}"
    );
    assert!(m.contains(r#"keyproxy_key_state{key="a",upstream="openai"} 3"#));
    proxy.stop().await;
}

/// A key joins only when its file can be written: a name too long for a file name is refused,
/// and a place that cannot take the file (here a directory in its way; a read-only state
/// directory alike) refuses the key instead of serving it until the next restart loses it.
#[tokio::test]
async fn an_added_key_whose_file_cannot_be_written_never_joins() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let text = config(
        dir.path(),
        &provider.url(),
        &[("a", &openai_key("UNWRITA"))],
        "",
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    for long in [65, 300, 5000] {
        let name = "n".repeat(long);
        let (code, body) = admin_post(
            &proxy,
            &format!("mode=add&name={name}"),
            &openai_key("LONG"),
        )
        .await;
        assert_eq!(
            (code, body["error"]["code"].clone()),
            (409, "bad_name".into()),
            "{long}: {body}"
        );
    }
    std::fs::create_dir_all(dir.path().join("state/keys/openai/c/in-the-way")).unwrap();
    let c = openai_key("UNWRITC");
    let (code, body) = admin_post(&proxy, "mode=add&name=c", &c).await;
    assert!(code >= 500, "{code} {body}");
    assert!(!body.to_string().contains(&c), "{body}");
    assert!(key_row(&proxy, "c").await.is_none(), "{body}");
    assert_eq!(keys_of(&proxy).await.len(), 1);
    // The name is free again once the way is clear.
    std::fs::remove_dir_all(dir.path().join("state/keys/openai/c")).unwrap();
    let (code, body) = admin_post(&proxy, "mode=add&name=c", &c).await;
    assert_eq!(code, 200, "{body}");
    proxy.stop().await;
    let proxy = Proxy::start(&text, dir.path()).await;
    assert!(key_row(&proxy, "c").await.is_some(), "kept over a restart");
    proxy.stop().await;
}
