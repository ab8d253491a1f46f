//! The first mistakes a new user makes, through the real binary: each config slip is named at its
//! table, field and line with the fix; `check` warns about the silent traps (a `/v1` base_url, plain
//! http:// beyond this machine, a port already taken); `run` says once that a port is in use.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_keyproxy");

fn check(config: &str) -> (bool, String) {
    keyproxy("check", config)
}

/// `keyproxy COMMAND --config FILE` with `config` in the file: did it succeed, and all it printed.
fn keyproxy(command: &str, config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyproxy.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .args([command, "--config"])
        .arg(&path)
        // Its own state store, never the user's.
        .env("KEYPROXY_STATE_DIR", dir.path().join("state"))
        .env(
            "KEYPROXY_FIRST_RUN_KEY",
            format!("sk-proj-{}", "FirstRun1".repeat(16)),
        )
        .output()
        .unwrap();
    crate::common::printed(out)
}

const UPSTREAM: &str = "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"https://api.openai.com\"\nkey = { env = \"KEYPROXY_FIRST_RUN_KEY\" }\n";

#[test]
fn each_config_slip_names_its_place_and_the_fix() {
    let cases: &[(&str, String, &str)] = &[
        (
            "missing base_url",
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nkey = { env = \"K\" }\n".into(),
            ":5:8: upstreams[0].base_url: upstream \"openai\" has no base_url: write base_url under [[upstreams]] (e.g. base_url = \"https://api.openai.com\")",
        ),
        (
            "single brackets",
            format!("[server]\nlisten = \"127.0.0.1:0\"\n\n{}", UPSTREAM.replace("[[upstreams]]", "[upstreams]")),
            ":4:1: upstreams: [upstreams] is a single table: use [[upstreams]] (an array of tables",
        ),
        (
            "unquoted date",
            format!("{UPSTREAM}expires_at = 2027-11-27\n"),
            ":6:14: upstreams[0].expires_at: dates are strings here: write \"2027-11-27\"",
        ),
        (
            "the env var's name as the key",
            UPSTREAM.replace("{ env = \"KEYPROXY_FIRST_RUN_KEY\" }", "\"OPENAI_API_KEY\""),
            ":5:7: upstreams[0].key: a key source is a table: did you mean { env = \"OPENAI_API_KEY\" }?",
        ),
        (
            "a bare number of seconds",
            format!("{UPSTREAM}connect_timeout = 5\n"),
            ":6:19: upstreams[0].connect_timeout: durations are strings with a unit: write \"5s\"",
        ),
        (
            "two upstreams on one prefix",
            format!("{UPSTREAM}\n{}", UPSTREAM.replace("name = \"openai\"", "name = \"second\"")),
            ":8:8: upstreams[1].prefix: prefix \"/\" is already used by upstream \"openai\" (line 2)",
        ),
    ];
    for (what, config, want) in cases {
        let (ok, out) = check(config);
        assert!(!ok, "{what}: {out}");
        assert!(out.contains(want), "{what}: want {want:?} in\n{out}");
    }
}

#[test]
fn check_warns_about_a_version_in_base_url_and_plain_http_beyond_this_machine() {
    let versioned = UPSTREAM.replace("https://api.openai.com", "https://api.openai.com/v1");
    let (_, out) = check(&versioned);
    assert!(
        out.contains("⚠ openai: base_url: base_url https://api.openai.com/v1 ends in /v1")
            && out.contains("/v1/v1/")
            && out.contains("Write base_url = \"https://api.openai.com\""),
        "{out}"
    );
    let gemini = "[[upstreams]]\nname = \"g\"\nprovider = \"gemini\"\nbase_url = \"https://generativelanguage.googleapis.com/v1beta/\"\nkey = { env = \"KEYPROXY_FIRST_RUN_KEY\" }\n";
    assert!(check(gemini).1.contains("ends in /v1beta"));

    let plain = UPSTREAM.replace("https://api.openai.com", "http://gateway.internal:8080");
    let (_, out) = check(&plain);
    assert!(
        out.contains("⚠ openai: base_url: base_url http://gateway.internal:8080/ is plain http:// to gateway.internal")
            && out.contains("unencrypted"),
        "{out}"
    );
    // Neither warning for the ordinary cases: https, or http to this machine, without a version.
    for fine in [
        UPSTREAM.to_owned(),
        UPSTREAM.replace("https://api.openai.com", "http://127.0.0.1:9000/openai"),
        UPSTREAM.replace("https://api.openai.com", "http://localhost:9000"),
    ] {
        let (_, out) = check(&fine);
        assert!(!out.contains("base_url:"), "{out}");
    }
}

#[test]
fn a_taken_port_is_named_once_with_the_likely_cause() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\n\n{UPSTREAM}"
    );
    let (_, out) = check(&config);
    let said = format!("port {port} is in use (is another keyproxy running? `keyproxy health`)");
    assert!(
        out.contains(&format!(
            "⚠ server.listen: cannot listen on 127.0.0.1:{port} (server.listen): {said}"
        )),
        "{out}"
    );

    let (ok, stderr) = keyproxy("run", &config);
    assert!(!ok);
    assert_eq!(stderr.matches(&said).count(), 1, "{stderr}");
    assert_eq!(stderr.matches("in use").count(), 1, "said once: {stderr}");
    drop(taken);
}

const INVALID: &str = r#"{"error":{"message":"Incorrect API key provided: sk-proj-****abcd.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;

/// A keyproxy (the real binary) whose key comes from an env var, in front of a provider that
/// refuses it; with or without an admin token.
async fn refused_env_key(
    admin_token: bool,
) -> (
    crate::common::Running,
    String,
    tempfile::TempDir,
    crate::common::StandIn,
) {
    use crate::common::*;
    let provider = StandIn::recording(|_| (401, INVALID.to_owned())).await;
    let dir = tempfile::tempdir().unwrap();
    let token = if admin_token {
        "admin_token = { env = \"KEYPROXY_HINT_ADMIN\" }\n"
    } else {
        ""
    };
    let config = dir.path().join("keyproxy.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{token}\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ env = \"KEYPROXY_HINT_KEY\" }}\n",
            provider.url()
        ),
    )
    .unwrap();
    let key = openai_key("HINTkey");
    let running = run_binary(
        &config,
        &[
            ("KEYPROXY_HINT_KEY", &key),
            ("KEYPROXY_HINT_ADMIN", "hint-admin-token-0123456789abcdef"),
        ],
    );
    let (resp, body) = get(&format!("http://{}/v1/models", running.proxy)).await;
    assert_eq!(resp.status, 401);
    let message = json(&body)["error"]["message"].as_str().unwrap().to_owned();
    (running, message, dir, provider)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_401_hint_names_only_what_works_with_this_setup() {
    let (running, message, _dir, _provider) = refused_env_key(false).await;
    assert!(
        message.contains("set KEYPROXY_HINT_KEY to it and restart keyproxy")
            && !message.contains("keyproxy rotate"),
        "without an admin token, rotate cannot work: {message}"
    );
    running.stop().await;

    let (running, message, _dir, _provider) = refused_env_key(true).await;
    assert!(
        message.contains("`keyproxy rotate --upstream openai --key-stdin`"),
        "{message}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_with_admin_needs_no_config_file() {
    let (running, _, dir, _provider) = refused_env_key(true).await;
    let admin = format!("http://{}", running.admin);
    let missing = dir.path().join("no-such-config.toml");
    let rotate = move |token: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "rotate",
            "--upstream",
            "openai",
            "--key-stdin",
            "--admin",
            &admin,
            "--config",
        ])
        .arg(&missing)
        .env_remove("KEYPROXY_ADMIN_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        if let Some(t) = token {
            cmd.env("KEYPROXY_ADMIN_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        // Piped input: the key and a newline; it may be refused before it is read.
        let _ = std::io::Write::write_all(
            &mut input,
            format!("{}\n", crate::common::openai_key("HINTnew")).as_bytes(),
        );
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = tokio::task::spawn_blocking({
        let rotate = rotate.clone();
        move || rotate(None)
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        out.contains("no admin token: set KEYPROXY_ADMIN_TOKEN"),
        "{out}"
    );
    assert!(
        !out.contains("cannot read config"),
        "--admin needs no config file: {out}"
    );
    let (ok, out) =
        tokio::task::spawn_blocking(move || rotate(Some("hint-admin-token-0123456789abcdef")))
            .await
            .unwrap();
    assert!(ok && out.contains("✓ openai: applied"), "{out}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_a_usable_key_is_one_log_line_and_counted_on_the_status_page() {
    use crate::common::*;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyproxy.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"https://api.openai.com\"\nkey = { env = \"KEYPROXY_FIRST_RUN_UNSET\" }\n",
    )
    .unwrap();
    let running = run_binary(&config, &[]);
    let (resp, _) = get(&format!("http://{}/v1/models", running.proxy)).await;
    assert_eq!(resp.status, 503);
    let id = resp.headers["x-keyproxy-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let (_, body) = get(&format!("http://{}/status", running.admin)).await;
    let up = &json(&body)["upstreams"][0];
    assert_eq!(up["requests"]["total"], 1, "{up}");
    let logs = running.stop().await;
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains(&id)).collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("\"WARN\"") && lines[0].contains("missing_key"),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn a_404_caused_by_a_version_in_base_url_says_so() {
    use crate::common::*;
    let provider = StandIn::recording(|_| {
        (404, r#"{"error":{"message":"Invalid URL (GET /v1/v1/models)","type":"invalid_request_error","param":null,"code":null}}"#.to_owned())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = |base: &str| {
        format!(
            "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{base}\"\nkey = {{ file = \"{}\" }}\n",
            key_file(dir.path(), "key", &openai_key("VERSIONED"))
        )
    };
    let proxy = Proxy::start(&config(&format!("{}/v1", provider.url())), dir.path()).await;
    let (resp, body) = get(&proxy.url("/v1/models")).await;
    assert_eq!(resp.status, 404);
    let message = json(&body)["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message
            .starts_with("Invalid URL (GET /v1/v1/models) — keyproxy: this went to /v1/v1/models")
            && message.contains("remove /v1 from base_url"),
        "{message}"
    );
    proxy.stop().await;
    // Without the version in base_url, a 404 is the provider's alone.
    let proxy = Proxy::start(&config(&provider.url()), dir.path()).await;
    let (_, body) = get(&proxy.url("/v1/models")).await;
    assert!(!String::from_utf8_lossy(&body).contains("keyproxy"));
    proxy.stop().await;
}
