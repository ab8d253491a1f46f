//! The key lifecycle across restarts (issue 18), over the real binary: rotations stick through
//! SIGHUP and restart, retired keys stay known and the apps sending them are named, a source still
//! holding a retired key is refused, a half-written key file is never installed, `kill -9` mid-
//! rotation leaves the old key or the new one, and `keyproxy history` tells the story.

use std::path::Path;
use std::process::Command;

use http::Request;
use keyproxy::key::Fingerprint;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_keyproxy");
const TOKEN: &str = "admin-token-for-durable-tests-0123";

fn fp(key: &str) -> String {
    Fingerprint::of(key).to_string()
}

/// A config with one openai upstream whose key comes from `source` (TOML), and an admin token.
fn write_config(dir: &Path, base: &str, source: &str) -> std::path::PathBuf {
    let token = key_file(dir, "admin-token", TOKEN);
    let path = dir.join("keyproxy.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = {{ file = \"{token}\" }}\n\
             [[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{base}\"\nkey = {source}\n"
        ),
    )
    .unwrap();
    path
}

/// A key file holding `key` and a config reading it: (config path, key file path).
fn with_key_file(dir: &Path, base: &str, key: &str) -> (std::path::PathBuf, String) {
    let key_path = key_file(dir, "key", key);
    let config = write_config(dir, base, &format!("{{ file = \"{key_path}\" }}"));
    (config, key_path)
}

async fn admin_get(running: &Running, path: &str) -> (u16, String) {
    let (parts, body) = get(&format!("http://{}{path}", running.admin)).await;
    (
        parts.status.as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn status_of(running: &Running) -> serde_json::Value {
    serde_json::from_str(&admin_get(running, "/status").await.1).unwrap()
}

async fn post_key(running: &Running, key: &str) -> (u16, serde_json::Value) {
    let req = Request::post(format!("http://{}/keys/openai", running.admin))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "text/plain")
        .body(full(key.to_owned()))
        .unwrap();
    let (parts, body) = send(req).await;
    (parts.status.as_u16(), json(&body))
}

/// A request as an app would send it, with its own (maybe retired) key and User-Agent.
async fn app_request(running: &Running, key: &str, user_agent: Option<&str>) -> u16 {
    let mut req = Request::get(format!("http://{}/v1/models", running.proxy))
        .header("authorization", format!("Bearer {key}"));
    if let Some(ua) = user_agent {
        req = req.header("user-agent", ua);
    }
    send(req.body(full("")).unwrap()).await.0.status.as_u16()
}

fn hup(running: &Running) {
    Command::new("kill")
        .args(["-HUP", &running.child.id().to_string()])
        .status()
        .unwrap();
}

/// The bytes of the state store (with its WAL), as anyone who can read the files would see them.
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for name in ["keyproxy.db", "keyproxy.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join("state").join(name)) {
            bytes.extend(b);
        }
    }
    bytes
}

/// Neither the key nor any 12-character piece of it is in `bytes`.
fn assert_absent(bytes: &[u8], key: &str, what: &str) {
    let key = key.as_bytes();
    for piece in key.windows(12) {
        assert!(
            !bytes.windows(12).any(|w| w == piece),
            "{what}: the store holds the piece {:?} of a key",
            String::from_utf8_lossy(piece)
        );
    }
}

fn history(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("history")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn a_rotation_survives_sighup_and_restart_and_the_retired_key_stays_known() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let (a, b) = (openai_key("DURABLEa"), openai_key("DURABLEb"));
    let (config, key_path) = with_key_file(dir.path(), &provider.url(), &a);
    let mut running = run_binary(&config, &[]);

    // `keyproxy rotate` with an expiry, as a person would.
    let new_key = key_file(dir.path(), "new-key", &b);
    let out = Command::new(BIN)
        .args(["rotate", "--upstream", "openai", "--key-file", &new_key])
        .args(["--admin", &format!("http://{}", running.admin)])
        .args(["--expires-at", "2027-12-01", "--config"])
        .arg(&config)
        .env("KEYPROXY_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("generation 2") && said.contains("expires 2027-12-01T00:00:00Z"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(&key_path).unwrap(),
        format!("{b}\n"),
        "the key file is the source of truth"
    );

    // SIGHUP: the file holds the rotated-in key, so nothing changes.
    hup(&running);
    running.wait_log("SIGHUP: every key source re-read").await;
    assert_eq!(app_request(&running, "", None).await, 200);
    assert_eq!(last_bearer(&provider).as_deref(), Some(b.as_str()));
    running.stop().await;

    // Restart: the same key, the same generation, its expiry, and the old key still known.
    let running = run_binary(&config, &[]);
    let s = status_of(&running).await;
    let key = &s["upstreams"][0]["key"];
    assert_eq!(key["fingerprint"], fp(&b));
    assert_eq!(key["generation"], 2);
    assert_eq!(key["expires_at"], "2027-12-01T00:00:00Z");
    assert_eq!(s["upstreams"][0]["retired_keys"][0]["fingerprint"], fp(&a));
    assert_eq!(s["history"][0]["who"], "CLI");
    assert_eq!(s["history"][0]["to_fingerprint"], fp(&b));

    assert_eq!(
        app_request(&running, &a, Some("billing-worker/2.1")).await,
        200
    );
    assert_eq!(
        app_request(&running, &a, Some("billing-worker/2.1")).await,
        200
    );
    assert_eq!(app_request(&running, &a, None).await, 200);
    let (_, m) = admin_get(&running, "/metrics").await;
    assert!(
        m.contains("keyproxy_client_credentials_total{match=\"retired\",upstream=\"openai\"} 3"),
        "{m}"
    );
    eventually("the sightings in the store", || async {
        let s = status_of(&running).await;
        let seen = &s["upstreams"][0]["retired_keys"][0]["sightings"];
        seen.as_array().is_some_and(|apps| {
            apps.iter()
                .any(|x| x["app"] == "user-agent billing-worker/2.1" && x["count"] == 2)
                && apps
                    .iter()
                    .any(|x| x["app"] == "address 127.0.0.1" && x["count"] == 1)
        })
    })
    .await;
    // A refused CLI rotation is recorded as the CLI's, with its code.
    let masked = key_file(dir.path(), "masked-key", "sk-proj-…abcd");
    let out = Command::new(BIN)
        .args(["rotate", "--upstream", "openai", "--key-file", &masked])
        .args(["--admin", &format!("http://{}", running.admin), "--config"])
        .arg(&config)
        .env("KEYPROXY_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let s = status_of(&running).await;
    assert_eq!(s["history"][0]["result"], "rejected");
    assert_eq!(s["history"][0]["who"], "CLI");
    assert_eq!(s["history"][0]["code"], "masked");
    assert_eq!(s["upstreams"][0]["key"]["fingerprint"], fp(&b));
    let logs = running.stop().await;
    assert!(
        logs.contains(
            "this app (user-agent billing-worker/2.1) still holds the key that was rotated out"
        ),
        "{logs}"
    );

    // The history, from the store, while nothing runs (and read-only).
    let (ok, text) = history(dir.path(), &[]);
    assert!(ok, "{text}");
    assert!(text.contains("applied   by CLI"), "{text}");
    assert!(
        text.contains(&format!(
            "{} (generation 1) → {} (generation 2)",
            fp(&a),
            fp(&b)
        )),
        "{text}"
    );
    assert!(
        text.contains("still sent by user-agent billing-worker/2.1: 2 time(s)"),
        "{text}"
    );
    let (ok, doc) = history(
        dir.path(),
        &["--json", "--upstream", "openai", "--since", "7d"],
    );
    assert!(ok, "{doc}");
    let doc = json(doc.as_bytes());
    assert_eq!(doc["rotations"][0]["result"], "rejected");
    assert_eq!(doc["rotations"][1]["result"], "applied");
    assert_eq!(doc["rotations"][1]["who"], "CLI");
    assert_eq!(doc["retired_keys"][0]["fingerprint"], fp(&a));
    let (_, none) = history(dir.path(), &["--json", "--upstream", "anthropic"]);
    assert_eq!(json(none.as_bytes())["rotations"], serde_json::json!([]));

    // A file source: no key in the store at all, not even a piece of one.
    let bytes = store_bytes(dir.path());
    assert!(!bytes.is_empty());
    assert_absent(&bytes, &a, "retired key");
    assert_absent(&bytes, &b, "key in service");
}

#[tokio::test]
async fn an_env_source_still_holding_the_retired_key_is_refused_and_the_stored_key_used() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let (a, b) = (openai_key("ENVKEEPa"), openai_key("ENVKEEPb"));
    let config = write_config(
        dir.path(),
        &provider.url(),
        "{ env = \"DURABLE_TEST_OPENAI_KEY\" }",
    );
    let env = [("DURABLE_TEST_OPENAI_KEY", a.as_str())];
    let mut running = run_binary(&config, &env);
    let (code, answer) = post_key(&running, &b).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["generation"], 2);

    hup(&running);
    running.wait_log("SIGHUP: every key source re-read").await;
    let s = status_of(&running).await;
    let up = &s["upstreams"][0];
    assert_eq!(
        up["key"]["fingerprint"],
        fp(&b),
        "the retired key is not reinstalled"
    );
    assert_eq!(up["last_rotation"]["result"], "rejected");
    assert_eq!(up["last_rotation"]["code"], "retired_key");
    let sentence = up["last_rotation"]["finding"].as_str().unwrap();
    assert!(
        sentence.starts_with("env DURABLE_TEST_OPENAI_KEY still holds the key retired at ")
            && sentence.ends_with(&format!("({}); update it", fp(&a))),
        "{sentence}"
    );
    assert_eq!(s["history"][0]["result"], "rejected");
    assert_eq!(s["history"][0]["who"], "SIGHUP");
    let (_, m) = admin_get(&running, "/metrics").await;
    assert!(m.contains("trigger=\"sighup\""), "{m}");
    running.stop().await;

    // `check` reads the same store, and says what the server does with that source.
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .env("DURABLE_TEST_OPENAI_KEY", &a)
        .env("KEYPROXY_STATE_DIR", dir.path().join("state"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("✗ openai: env DURABLE_TEST_OPENAI_KEY holds the key retired at ")
            && stdout.contains(&format!(
                "({}); keyproxy refuses it and serves {} instead",
                fp(&a),
                fp(&b)
            )),
        "{stdout}"
    );
    assert!(!stdout.contains("ENVKEEP"), "a key leaked: {stdout}");

    // Restart with the env var unchanged: the key kept in the store serves, with a warning.
    let running = run_binary(&config, &env);
    let s = status_of(&running).await;
    assert_eq!(s["upstreams"][0]["key"]["fingerprint"], fp(&b));
    assert_eq!(app_request(&running, "", None).await, 200);
    assert_eq!(last_bearer(&provider).as_deref(), Some(b.as_str()));
    // Only an explicit rotation reinstates a retired key.
    let (code, answer) = post_key(&running, &a).await;
    assert_eq!((code, answer["result"].as_str()), (200, Some("applied")));
    let logs = running.stop().await;
    assert!(
        logs.contains("still holds the key retired at")
            && logs.contains("kept in the state store")
            && logs.contains(&fp(&b)),
        "{logs}"
    );

    // The store: private; the key rotated in for an env source is kept in a 0600 file beside
    // it, never in it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        assert_eq!(mode(&dir.path().join("state/keyproxy.db")), 0o600);
        assert_eq!(mode(&dir.path().join("state/kept/openai")), 0o600);
    }
    let kept = std::fs::read_to_string(dir.path().join("state/kept/openai")).unwrap();
    assert_eq!(kept.trim_end(), a);
    for name in ["keyproxy.db", "keyproxy.db-wal"] {
        let bytes = std::fs::read(dir.path().join("state").join(name)).unwrap_or_default();
        assert!(
            !bytes
                .windows(8)
                .any(|w| w == b"ENVKEEPa" || w == b"ENVKEEPb"),
            "{name} holds a key"
        );
    }
}

#[tokio::test]
async fn a_key_file_written_in_two_steps_is_installed_only_whole() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let (a, b) = (openai_key("TWOSTEPa"), openai_key("TWOSTEPb"));
    let (config, key_path) = with_key_file(dir.path(), &provider.url(), &a);
    let running = run_binary(&config, &[]);
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&key_path)
            .unwrap();
        file.write_all(&b.as_bytes()[..90]).unwrap();
        file.flush().unwrap();
        // The slow writer this test is about, not a wait for keyproxy.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        file.write_all(format!("{}\n", &b[90..]).as_bytes())
            .unwrap();
    }
    eventually("the whole new key", || async {
        status_of(&running).await["upstreams"][0]["key"]["fingerprint"] == fp(&b)
    })
    .await;
    let s = status_of(&running).await;
    assert_eq!(
        s["upstreams"][0]["key"]["generation"], 2,
        "one rotation, not two"
    );
    let rotations = s["history"].as_array().unwrap();
    let installed: Vec<_> = rotations
        .iter()
        .map(|r| r["to_fingerprint"].clone())
        .collect();
    assert_eq!(installed, [fp(&b), fp(&a)], "{rotations:?}");
    running.stop().await;
}

#[tokio::test]
async fn kill_9_at_any_moment_of_a_rotation_leaves_the_old_key_or_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let mut current = openai_key("KILLNINE0");
    let (config, key_path) = with_key_file(dir.path(), &provider.url(), &current);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut running = run_binary(&config, &[]);
    // [old key, unanswered], [new key, unanswered], [old, answered], [new, answered]
    let mut outcomes = [0usize; 4];
    for i in 1..=20u64 {
        let next = openai_key(&format!("KILLNINE{i}"));
        let admin = running.admin.clone();
        let body = next.clone();
        let rotation = tokio::spawn(async move {
            let req = Request::post(format!("http://{admin}/keys/openai"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(full(body))
                .unwrap();
            client().request(req).await.map(|r| r.status().as_u16())
        });
        // A different moment each time: before, during or after the rotation (0-8 ms).
        let pause = (seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(i.wrapping_mul(1442695040888963407))
            >> 33)
            % 8000;
        tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
        running.kill().await;
        let answered = rotation.await.unwrap();

        let in_file = std::fs::read_to_string(&key_path).unwrap();
        let in_file = in_file.trim_end_matches('\n');
        assert!(
            in_file == current || in_file == next,
            "iteration {i}: the file holds neither the old key nor the new one ({} bytes)",
            in_file.len()
        );
        outcomes[usize::from(in_file == next) + 2 * usize::from(answered.is_ok())] += 1;
        if answered.is_ok_and(|code| code == 200) {
            assert_eq!(
                in_file, next,
                "iteration {i}: an acknowledged rotation was lost"
            );
        }
        running = run_binary(&config, &[]);
        let s = status_of(&running).await;
        assert_eq!(
            s["upstreams"][0]["key"]["fingerprint"],
            fp(in_file),
            "iteration {i}: keyproxy serves the key in the file"
        );
        let stored = s["history"][0]["to_fingerprint"].clone();
        if stored != serde_json::Value::Null {
            assert_eq!(
                stored,
                fp(in_file),
                "iteration {i}: the store agrees with the file"
            );
        }
        current = in_file.to_owned();
    }
    eprintln!("kill -9 outcomes (old/new key × unanswered/answered): {outcomes:?}");
    running.stop().await;
}

#[tokio::test]
async fn without_a_usable_state_store_keyproxy_serves_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let (config, key_path) = with_key_file(dir.path(), &provider.url(), &openai_key("NOSTORE"));
    // A state directory that cannot exist: its parent is a file.
    let blocked = format!("{key_path}/state");
    let running = run_binary(&config, &[("KEYPROXY_STATE_DIR", blocked.as_str())]);
    assert_eq!(app_request(&running, "", None).await, 200);
    let (code, text) = admin_get(&running, "/readyz").await;
    assert_eq!(code, 200);
    assert!(
        text.starts_with("ready\n") && text.contains("the state store cannot be opened"),
        "{text}"
    );
    let s = status_of(&running).await;
    assert_eq!(s["state"]["ok"], false);
    running.stop().await;

    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .env("KEYPROXY_STATE_DIR", dir.path().join("fresh"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("state:") && said.contains("will be created"),
        "{said}"
    );
}

#[tokio::test]
async fn a_configured_expiry_belongs_to_the_key_it_was_written_for() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let (a, b, c) = (
        openai_key("EXPIRYa"),
        openai_key("EXPIRYb"),
        openai_key("EXPIRYc"),
    );
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, format!("{a}\n")).unwrap();
    let text = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n\
         expires_at = {{ \"{}\" = \"2027-01-01\", \"{}\" = \"2027-06-01\" }}\n",
        provider.url(),
        key_path.display(),
        fp(&a),
        fp(&b)
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    let expiry = || async { status(&proxy).await["upstreams"][0]["key"]["expires_at"].clone() };
    assert_eq!(expiry().await, "2027-01-01T00:00:00Z");
    for (key, expected) in [
        (&b, serde_json::json!("2027-06-01T00:00:00Z")),
        (&c, serde_json::Value::Null),
    ] {
        let tmp = dir.path().join(".key.new");
        std::fs::write(&tmp, format!("{key}\n")).unwrap();
        std::fs::rename(&tmp, &key_path).unwrap();
        eventually("the rotation", || async {
            status(&proxy).await["upstreams"][0]["key"]["fingerprint"] == fp(key)
        })
        .await;
        assert_eq!(expiry().await, expected, "never another key's date");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn tokens_are_kept_by_day_client_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::recording(|_| {
        (
            200,
            r#"{"id":"c1","model":"gpt-4o-mini-2024-07-18","usage":{"prompt_tokens":11,"completion_tokens":7}}"#.into(),
        )
    })
    .await;
    let key_path = key_file(dir.path(), "key", &openai_key("USAGE"));
    let text = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{key_path}\" }}\n",
        provider.url()
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    for _ in 0..2 {
        let req = Request::post(proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(full(r#"{"model":"gpt-4o-mini"}"#))
            .unwrap();
        assert_eq!(send(req).await.0.status, 200);
    }
    let read = || {
        keyproxy::state::Store::open_read_only(&dir.path().join("state"))
            .unwrap()
            .usage(&keyproxy::state::Query {
                upstream: None,
                since: None,
                limit: 10,
            })
            .unwrap()
    };
    eventually("both responses' tokens in usage_daily", || async {
        read()
            .iter()
            .any(|u| u.model == "gpt-4o-mini-2024-07-18" && u.tokens_in == 22 && u.tokens_out == 14)
    })
    .await;
    proxy.stop().await;
    let (ok, text) = history(dir.path(), &[]);
    assert!(
        ok && text.contains("gpt-4o-mini-2024-07-18  22 / 14"),
        "{text}"
    );
}

#[tokio::test]
async fn with_client_tokens_an_app_sending_a_retired_key_instead_is_still_named() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let (a, b) = (openai_key("TOKENSa"), openai_key("TOKENSb"));
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, format!("{a}\n")).unwrap();
    let token = key_file(dir.path(), "notebook-token", "notebook-token-0123456789");
    let text = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n\
         [[clients]]\nname = \"notebook\"\ntoken = {{ file = \"{token}\" }}\n",
        provider.url(),
        key_path.display()
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    let tmp = dir.path().join(".key.new");
    std::fs::write(&tmp, format!("{b}\n")).unwrap();
    std::fs::rename(&tmp, &key_path).unwrap();
    eventually("the rotation", || async {
        status(&proxy).await["upstreams"][0]["key"]["fingerprint"] == fp(&b)
    })
    .await;
    let req = Request::get(proxy.url("/v1/models"))
        .header("authorization", format!("Bearer {a}"))
        .header("user-agent", "old-notebook/0.9")
        .body(full(""))
        .unwrap();
    assert_eq!(send(req).await.0.status, 401, "no client token: refused");
    eventually("the sighting", || async {
        let s = status(&proxy).await;
        s["upstreams"][0]["retired_keys"][0]["sightings"][0]["app"] == "user-agent old-notebook/0.9"
    })
    .await;
    let m = metrics(&proxy).await;
    assert!(
        m.contains("keyproxy_client_credentials_total{match=\"retired\",upstream=\"openai\"} 1"),
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_key_retired_long_ago_is_still_refused_from_the_source() {
    use keyproxy::config::Config;
    use keyproxy::key::rotation::{Trigger, RETIRED_KEPT};
    use keyproxy::key::Secret;
    use keyproxy::metrics::Metrics;
    use keyproxy::upstream::Upstream;

    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..RETIRED_KEPT + 3)
        .map(|i| openai_key(&format!("LONGAGO{i}x")))
        .collect();
    let key_path = key_file(dir.path(), "key", &keys[0]);
    let text = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\nkey = {{ file = \"{key_path}\" }}\n"
    );
    let config = Config::parse(&dir.path().join("k.toml"), &text).unwrap();
    let metrics = Metrics::new().unwrap();
    let up = Upstream::new(&config.upstreams[0], &metrics, 1).unwrap();
    up.key.load_initial().await.unwrap();
    for key in &keys[1..] {
        up.key
            .rotate(Secret::new(key.clone()), Trigger::Admin, false, &up)
            .await
            .unwrap();
    }
    assert_eq!(
        up.key.retired().len(),
        RETIRED_KEPT,
        "the request path checks the newest"
    );
    std::fs::write(&key_path, format!("{}\n", keys[0])).unwrap();
    let refused = up
        .key
        .reload(Trigger::Sighup, true, &up)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code(), "retired_key", "{refused}");
    assert_eq!(
        up.key.current().snapshot().unwrap().fingerprint.to_string(),
        fp(keys.last().unwrap())
    );
}
