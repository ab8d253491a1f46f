//! Key lifecycle over real sockets: lint at startup, each rotation trigger, refused rotations that
//! keep the old key, the Kubernetes Secret volume swap, probes, retired keys, and rotation under load.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;
use http::Request;
use keyproxy::key::Fingerprint;

fn fp(key: &str) -> String {
    Fingerprint::of(key).to_string()
}

/// One openai upstream reading its key from `key_path`, with an admin token; `extra` goes into the
/// upstream table.
fn config(dir: &Path, base: &str, key_path: &Path, extra: &str) -> String {
    let token = key_file(dir, "admin-token", TOKEN);
    format!(
        "admin_token = {{ file = \"{token}\" }}\n\
         [[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{base}\"\nkey = {{ file = \"{}\" }}\n{extra}\n",
        key_path.display()
    )
}

const TOKEN: &str = "admin-token-for-tests-0123456789";

async fn current_fingerprint(proxy: &Proxy) -> Option<String> {
    status(proxy).await["upstreams"][0]["key"]["fingerprint"]
        .as_str()
        .map(str::to_owned)
}

async fn post_key(
    proxy: &Proxy,
    token: Option<&str>,
    query: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut req = Request::post(proxy.admin_url(&format!("/keys/openai{query}")));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (resp, body) = send(req.body(full(body.to_owned())).unwrap()).await;
    (
        resp.status.as_u16(),
        serde_json::from_slice(&body).unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_badly_pasted_key_is_refused_at_startup_with_the_finding() {
    let cases = [
        (
            format!("Bearer {}", openai_key("PASTED")),
            "malformed_key",
            "auth scheme",
        ),
        (
            format!("\"{}\"", openai_key("QUOTED")),
            "malformed_key",
            "quotes",
        ),
        ("sk-proj-...Xy7Q".to_string(), "malformed_key", "masked"),
        (
            anthropic_key("ANTHROPICinOPENAI"),
            "wrong_provider_key",
            "Anthropic",
        ),
    ];
    for (key, reason, words) in cases {
        let dir = tempfile::tempdir().unwrap();
        let provider = StandIn::ok().await;
        let key_path = dir.path().join("key");
        std::fs::write(&key_path, &key).unwrap();
        let proxy = Proxy::start(
            &config(dir.path(), &provider.url(), &key_path, ""),
            dir.path(),
        )
        .await;
        let (resp, body) = get(&proxy.url("/v1/models")).await;
        assert_eq!(resp.status, 503, "{key}");
        assert_eq!(resp.headers["x-keyproxy-reason"], reason);
        let message = json(&body)["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains(words) && message.contains(&key_path.display().to_string()),
            "{message}"
        );
        assert!(
            provider.seen().is_empty(),
            "a wrongly pasted key never reaches the provider"
        );
        let (ready, _) = get(&proxy.admin_url("/readyz")).await;
        assert_eq!(ready.status, 503);
        let s = status(&proxy).await;
        assert_eq!(s["upstreams"][0]["key"]["usable"], false);
        assert_eq!(s["upstreams"][0]["key"]["problem"]["reason"], reason);
        assert!(metrics(&proxy)
            .await
            .contains("keyproxy_key_usable{upstream=\"openai\"} 0"));
        proxy.stop().await;
    }
}

#[tokio::test]
async fn a_rewritten_key_file_rotates_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let key_path = dir.path().join("key");
    let (a, b, c) = (
        openai_key("FILEa"),
        openai_key("FILEb"),
        openai_key("FILEc"),
    );
    std::fs::write(&key_path, format!("{a}\n")).unwrap();
    let proxy = Proxy::start(
        &config(dir.path(), &provider.url(), &key_path, ""),
        dir.path(),
    )
    .await;
    get(&proxy.url("/v1/models")).await;
    assert_eq!(last_bearer(&provider).as_deref(), Some(a.as_str()));

    // An editor's save: write a temporary file and rename it over the key file.
    let tmp = dir.path().join(".key.swp");
    std::fs::write(&tmp, format!("{b}\n")).unwrap();
    std::fs::rename(&tmp, &key_path).unwrap();
    eventually("the renamed-over key", || async {
        current_fingerprint(&proxy).await == Some(fp(&b))
    })
    .await;
    get(&proxy.url("/v1/models")).await;
    assert_eq!(last_bearer(&provider).as_deref(), Some(b.as_str()));

    // `echo KEY > file`: truncate and write in place.
    std::fs::write(&key_path, format!("{c}\n")).unwrap();
    eventually("the rewritten key", || async {
        current_fingerprint(&proxy).await == Some(fp(&c))
    })
    .await;
    get(&proxy.url("/v1/models")).await;
    assert_eq!(last_bearer(&provider).as_deref(), Some(c.as_str()));

    let s = status(&proxy).await;
    let up = &s["upstreams"][0];
    assert_eq!(up["key"]["generation"], 3);
    assert_eq!(up["last_rotation"]["result"], "applied");
    assert_eq!(up["retired_keys"][0]["fingerprint"], fp(&b));
    assert_eq!(up["retired_keys"][1]["fingerprint"], fp(&a));
    let m = metrics(&proxy).await;
    assert!(
        m.contains("keyproxy_key_generation{upstream=\"openai\"} 3"),
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_bad_or_emptied_key_file_keeps_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let key_path = dir.path().join("key");
    let good = openai_key("KEEPME");
    std::fs::write(&key_path, &good).unwrap();
    let proxy = Proxy::start(
        &config(dir.path(), &provider.url(), &key_path, ""),
        dir.path(),
    )
    .await;

    for (content, code) in [
        (
            format!("\"{}\"", openai_key("QUOTED")),
            "surrounding_quotes",
        ),
        (String::new(), "empty"),
        (
            format!("{} ", openai_key("SPACE")),
            "surrounding_whitespace",
        ),
    ] {
        std::fs::write(&key_path, &content).unwrap();
        eventually(&format!("the {code} rejection"), || async {
            let s = status(&proxy).await;
            s["upstreams"][0]["last_rotation"]["code"] == code
        })
        .await;
        let s = status(&proxy).await;
        assert_eq!(s["upstreams"][0]["last_rotation"]["result"], "rejected");
        assert!(s["upstreams"][0]["last_rotation"]["finding"]
            .as_str()
            .unwrap()
            .contains("file "));
        let (resp, _) = get(&proxy.url("/v1/models")).await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            last_bearer(&provider).as_deref(),
            Some(good.as_str()),
            "the old key stays after {code}"
        );
    }
    let m = metrics(&proxy).await;
    assert!(m.contains("keyproxy_key_rotations_total{result=\"rejected\",trigger=\"file\",upstream=\"openai\"}"), "{m}");
    assert!(m.contains("keyproxy_key_usable{upstream=\"openai\"} 1"));
    proxy.stop().await;
}

#[tokio::test]
async fn the_kubernetes_secret_volume_swap_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let (a, b) = (openai_key("K8Sa"), openai_key("K8Sb"));
    // What the kubelet's atomic writer lays out.
    std::fs::create_dir(secret.join("..2026_a")).unwrap();
    std::fs::write(secret.join("..2026_a/key"), &a).unwrap();
    std::os::unix::fs::symlink("..2026_a", secret.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/key", secret.join("key")).unwrap();

    let provider = StandIn::ok().await;
    let proxy = Proxy::start(
        &config(dir.path(), &provider.url(), &secret.join("key"), ""),
        dir.path(),
    )
    .await;
    get(&proxy.url("/v1/models")).await;
    assert_eq!(last_bearer(&provider).as_deref(), Some(a.as_str()));

    // The update: a new timestamped dir, a ..data_tmp link renamed over ..data, the old dir removed.
    std::fs::create_dir(secret.join("..2026_b")).unwrap();
    std::fs::write(secret.join("..2026_b/key"), &b).unwrap();
    std::os::unix::fs::symlink("..2026_b", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    std::fs::remove_dir_all(secret.join("..2026_a")).unwrap();

    eventually("the swapped Secret", || async {
        current_fingerprint(&proxy).await == Some(fp(&b))
    })
    .await;
    get(&proxy.url("/v1/models")).await;
    assert_eq!(last_bearer(&provider).as_deref(), Some(b.as_str()));
    proxy.stop().await;
}

#[tokio::test]
async fn the_admin_api_rotates_with_the_token_and_refuses_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let key_path = dir.path().join("key");
    let (a, b) = (openai_key("ADMINa"), openai_key("ADMINb"));
    std::fs::write(&key_path, &a).unwrap();
    let proxy = Proxy::start(
        &config(dir.path(), &provider.url(), &key_path, ""),
        dir.path(),
    )
    .await;

    let (code, v) = post_key(&proxy, None, "", &b).await;
    assert_eq!(code, 401, "{v}");
    let (code, _) = post_key(&proxy, Some("wrong-token-wrong-token"), "", &b).await;
    assert_eq!(code, 401);
    let (code, v) = post_key(&proxy, Some(TOKEN), "", &format!("Bearer {b}")).await;
    assert_eq!(code, 422);
    assert_eq!(v["error"]["code"], "bearer_prefix");
    assert_eq!(v["kept"]["fingerprint"], fp(&a));
    let (code, _) = post_key(&proxy, Some(TOKEN), "", &"k".repeat(10_000)).await;
    assert_eq!(code, 413);
    let (resp, _) = send(
        Request::post(proxy.admin_url("/keys/nope"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(full(b.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 404);
    get(&proxy.url("/v1/models")).await;
    assert_eq!(
        last_bearer(&provider).as_deref(),
        Some(a.as_str()),
        "nothing refused was swapped in"
    );

    let (code, v) = post_key(&proxy, Some(TOKEN), "", &format!("{b}\n")).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"], "applied");
    assert_eq!(v["fingerprint"], fp(&b));
    assert_eq!(v["generation"], 2);
    get(&proxy.url("/v1/models")).await;
    assert_eq!(last_bearer(&provider).as_deref(), Some(b.as_str()));

    let (code, v) = post_key(&proxy, Some(TOKEN), "", &b).await;
    assert_eq!((code, v["result"].as_str()), (200, Some("unchanged")));
    assert_eq!(v["generation"], 2, "unchanged content is not a rotation");
    let s = status(&proxy).await;
    assert_eq!(s["upstreams"][0]["last_rotation"]["trigger"], "admin");
    let rendered = s.to_string();
    assert!(
        !rendered.contains("ADMINa") && !rendered.contains("ADMINb"),
        "a key leaked into /status"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn without_an_admin_token_key_mutations_are_403_with_how_to_enable() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let config = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n",
        provider.url(),
        key_file(dir.path(), "key", &openai_key("NOTOKEN"))
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let (code, v) = post_key(
        &proxy,
        Some("anything-anything-anything"),
        "",
        &openai_key("NEW"),
    )
    .await;
    assert_eq!(code, 403);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin_token"),
        "{v}"
    );
    proxy.stop().await;
}

/// A provider that accepts only the keys in `good` (on every path, including the probe's).
async fn picky_provider(good: Vec<String>) -> StandIn {
    StandIn::recording(move |seen| {
        let bearer = seen
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().trim_start_matches("Bearer ").to_string())
            .unwrap_or_default();
        if good.contains(&bearer) {
            (200, r#"{"object":"list","data":[]}"#.into())
        } else {
            (401, r#"{"error":{"message":"Incorrect API key provided: sk-proj-****. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#.into())
        }
    })
    .await
}

#[tokio::test]
async fn a_probe_keeps_a_key_the_provider_refuses_out() {
    let (a, b, refused) = (
        openai_key("PROBEa"),
        openai_key("PROBEb"),
        openai_key("PROBEnope"),
    );
    let provider = picky_provider(vec![a.clone(), b.clone()]).await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, &a).unwrap();
    let proxy = Proxy::start(
        &config(dir.path(), &provider.url(), &key_path, ""),
        dir.path(),
    )
    .await;

    let (code, v) = post_key(&proxy, Some(TOKEN), "?probe=true", &refused).await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid_key");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&fp(&refused)),
        "{v}"
    );
    assert_eq!(
        provider.seen().last().unwrap().uri.path(),
        "/v1/models",
        "the probe used the cheap endpoint"
    );
    assert_eq!(current_fingerprint(&proxy).await, Some(fp(&a)));

    let (code, v) = post_key(&proxy, Some(TOKEN), "?probe=true", &b).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["probed"], true);
    assert_eq!(current_fingerprint(&proxy).await, Some(fp(&b)));
    proxy.stop().await;
}

#[tokio::test]
async fn validate_on_rotate_probes_file_rotations_too() {
    let (a, b, refused) = (
        openai_key("VORa"),
        openai_key("VORb"),
        openai_key("VORnope"),
    );
    let provider = picky_provider(vec![a.clone(), b.clone()]).await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, &a).unwrap();
    let proxy = Proxy::start(
        &config(
            dir.path(),
            &provider.url(),
            &key_path,
            "validate_on_rotate = true",
        ),
        dir.path(),
    )
    .await;

    std::fs::write(&key_path, &refused).unwrap();
    eventually("the probe's refusal", || async {
        status(&proxy).await["upstreams"][0]["last_rotation"]["code"] == "invalid_key"
    })
    .await;
    assert_eq!(current_fingerprint(&proxy).await, Some(fp(&a)));
    std::fs::write(&key_path, &b).unwrap();
    eventually("the accepted key", || async {
        current_fingerprint(&proxy).await == Some(fp(&b))
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_app_still_sending_the_rotated_out_key_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let key_path = dir.path().join("key");
    let (old, new) = (openai_key("RETIREDold"), openai_key("RETIREDnew"));
    std::fs::write(&key_path, &old).unwrap();
    let proxy = Proxy::start(
        &config(dir.path(), &provider.url(), &key_path, ""),
        dir.path(),
    )
    .await;
    let (code, _) = post_key(&proxy, Some(TOKEN), "", &new).await;
    assert_eq!(code, 200);

    for sent in [old.as_str(), new.as_str(), "sk-dummy"] {
        let req = Request::get(proxy.url("/v1/models"))
            .header("authorization", format!("Bearer {sent}"))
            .body(full(""))
            .unwrap();
        let (resp, _) = send(req).await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            last_bearer(&provider).as_deref(),
            Some(new.as_str()),
            "the app's credential never goes upstream"
        );
    }
    let m = metrics(&proxy).await;
    for kind in ["retired", "current", "unknown"] {
        let line =
            format!("keyproxy_client_credentials_total{{match=\"{kind}\",upstream=\"openai\"}} 1");
        assert!(m.contains(&line), "{line} missing:\n{m}");
    }
    let s = status(&proxy).await;
    assert_eq!(s["upstreams"][0]["client_credentials"]["retired"], 1);
    assert_eq!(
        s["upstreams"][0]["retired_keys"][0]["fingerprint"],
        fp(&old)
    );
    proxy.stop().await;
}

#[tokio::test]
async fn status_and_metrics_show_the_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, openai_key("EXPIRY")).unwrap();
    let in_ten_days =
        std::time::SystemTime::now() + std::time::Duration::from_secs(10 * 86_400 + 3600);
    let at = humantime::format_rfc3339_seconds(in_ten_days).to_string();
    let proxy = Proxy::start(
        &config(
            dir.path(),
            &provider.url(),
            &key_path,
            &format!("expires_at = \"{at}\""),
        ),
        dir.path(),
    )
    .await;
    let s = status(&proxy).await;
    assert_eq!(s["upstreams"][0]["key"]["expires_at"], at.as_str());
    let days = s["upstreams"][0]["key"]["days_to_expiry"].as_f64().unwrap();
    assert!((10.0..10.2).contains(&days), "{days}");
    let m = metrics(&proxy).await;
    assert!(
        m.contains("keyproxy_key_expiry_timestamp_seconds{upstream=\"openai\"}"),
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_fails_nothing_and_never_sends_a_stale_key() {
    const ROTATIONS: usize = 40;
    const CLIENTS: usize = 16;
    let keys: Vec<String> = (0..=ROTATIONS)
        .map(|i| openai_key(&format!("LOAD{i:03}x")))
        .collect();
    let provider = StandIn::recording(|seen| {
        if seen.uri.path() == "/v1/stream" {
            (
                200,
                "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n".into(),
            )
        } else {
            (200, r#"{"ok":true}"#.into())
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, &keys[0]).unwrap();
    let proxy = Arc::new(
        Proxy::start(
            &config(dir.path(), &provider.url(), &key_path, ""),
            dir.path(),
        )
        .await,
    );

    // Rotation i is "started" before its POST and "completed" once the POST answered 200.
    let started = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (proxy, started, completed, done) = (
            proxy.clone(),
            started.clone(),
            completed.clone(),
            done.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut windows = Vec::new();
            let mut n = 0;
            while done.load(Ordering::SeqCst) == 0 || n < 3 {
                let id = format!("{c}-{n}");
                let path = if n % 2 == 0 {
                    "/v1/stream"
                } else {
                    "/v1/chat/completions"
                };
                let lo = completed.load(Ordering::SeqCst);
                let req = Request::post(proxy.url(path))
                    .header("x-test-id", id.as_str())
                    .body(full("{}"))
                    .unwrap();
                let (resp, body) = send(req).await;
                let hi = started.load(Ordering::SeqCst);
                assert_eq!(
                    resp.status,
                    200,
                    "request {id} failed: {}",
                    String::from_utf8_lossy(&body)
                );
                if path == "/v1/stream" {
                    assert!(body.ends_with(b"data: [DONE]\n\n"), "stream {id} cut short");
                }
                windows.push((id, lo, hi));
                n += 1;
            }
            windows
        }));
    }
    for (i, key) in keys.iter().enumerate().skip(1) {
        started.store(i, Ordering::SeqCst);
        let (code, v) = post_key(&proxy, Some(TOKEN), "", key).await;
        assert_eq!(code, 200, "rotation {i}: {v}");
        completed.store(i, Ordering::SeqCst);
        tokio::task::yield_now().await;
    }
    done.store(1, Ordering::SeqCst);
    let mut windows = std::collections::HashMap::new();
    for client in clients {
        for (id, lo, hi) in client.await.unwrap() {
            windows.insert(id, (lo, hi));
        }
    }
    let seen = provider.seen();
    assert_eq!(
        seen.len(),
        windows.len(),
        "every request reached the provider exactly once"
    );
    let mut used = std::collections::HashSet::new();
    for s in &seen {
        let id = s.headers["x-test-id"].to_str().unwrap();
        let bearer = s.headers["authorization"]
            .to_str()
            .unwrap()
            .trim_start_matches("Bearer ");
        let k = keys
            .iter()
            .position(|key| key == bearer)
            .expect("a key keyproxy was given");
        let (lo, hi) = windows[id];
        assert!(
            lo <= k && k <= hi,
            "request {id} carried key {k}, outside {lo}..={hi}"
        );
        used.insert(k);
    }
    assert!(
        used.len() > 5,
        "the load overlapped the rotations ({} keys seen)",
        used.len()
    );
    Arc::try_unwrap(proxy).ok().unwrap().stop().await;
}

#[tokio::test]
async fn rereading_an_unchanged_source_is_not_a_rotation_and_sighup_keeps_an_explicit_rotation() {
    use keyproxy::config::Config;
    use keyproxy::key::rotation::Trigger;
    use keyproxy::key::Secret;
    use keyproxy::metrics::Metrics;
    use keyproxy::upstream::Upstream;

    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("REREADa"), openai_key("REREADb"));
    let key_path = key_file(dir.path(), "key", &a);
    let text = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\nkey = {{ file = \"{key_path}\" }}\n"
    );
    let config = Config::parse(&dir.path().join("k.toml"), &text).unwrap();
    let metrics = Metrics::new().unwrap();
    let up = Upstream::new(&config.upstreams[0], &metrics, 1).unwrap();
    up.key.load_initial().await.unwrap();
    let generation = || up.key.current().snapshot().unwrap().generation;

    assert!(up.key.reload(Trigger::File, false, &up).await.is_none());
    std::fs::write(&key_path, format!("{a}\n")).unwrap();
    assert!(
        up.key.reload(Trigger::File, false, &up).await.is_none(),
        "same content, no rotation"
    );
    assert_eq!(generation(), 1);

    up.key
        .rotate(Secret::new(b.clone()), Trigger::Admin, false, &up)
        .await
        .unwrap();
    assert_eq!(generation(), 2);
    assert!(
        up.key.reload(Trigger::Periodic, false, &up).await.is_none(),
        "an untouched file does not undo the admin rotation"
    );
    assert_eq!(
        up.key.current().snapshot().unwrap().fingerprint.to_string(),
        fp(&b)
    );

    // Issue 18: the explicit rotation rewrote the file, so SIGHUP finds the new key there...
    assert_eq!(std::fs::read_to_string(&key_path).unwrap().trim_end(), b);
    let again = up
        .key
        .reload(Trigger::Sighup, true, &up)
        .await
        .unwrap()
        .unwrap();
    assert!(!again.changed, "SIGHUP keeps the rotated-in key");
    assert_eq!(again.fingerprint.to_string(), fp(&b));
    // ...and a source set back to the retired key is refused with a sentence, never installed.
    std::fs::write(&key_path, format!("{a}\n")).unwrap();
    let refused = up
        .key
        .reload(Trigger::Sighup, true, &up)
        .await
        .unwrap()
        .unwrap_err();
    let sentence = refused.to_string();
    assert_eq!(refused.code(), "retired_key");
    assert!(
        sentence.starts_with(&format!("file {key_path} still holds the key retired at "))
            && sentence.ends_with(&format!("({}); update it", fp(&a))),
        "{sentence}"
    );
    assert_eq!(
        up.key.current().snapshot().unwrap().fingerprint.to_string(),
        fp(&b)
    );
}
