//! The real binary: `check` reports problems line by line and never prints a key; `run` drains an
//! open stream on SIGTERM and exits 0; a bad config names file, line and field.

use std::io::BufRead;
use std::process::{Command, Stdio};

use crate::common::*;
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;

const BIN: &str = env!("CARGO_BIN_EXE_keyproxy");
fn key() -> String {
    let mut k = openai_key("CLItestKEY");
    k.replace_range(k.len() - 4.., "0001");
    k
}

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("keyproxy.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn check_passes_a_good_config_and_shows_only_a_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", &key());
    let config = write_config(
        dir.path(),
        &format!("[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"https://api.openai.com\"\nkey = {{ file = \"{key}\" }}\n"),
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("✓ openai: key present"), "{stdout}");
    assert!(stdout.contains("✓ openai: lint"), "{stdout}");
    assert!(stdout.contains("sk-proj-…0001:"), "{stdout}");
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains("CLItestKEY"), "the key leaked: {all}");
}

#[test]
fn check_fails_with_one_line_per_missing_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[upstreams]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"https://api.openai.com\"\nkey = { env = \"KEYPROXY_CLI_TEST_UNSET\" }\n\
         [[upstreams]]\nname = \"b\"\nprovider = \"anthropic\"\nbase_url = \"https://api.anthropic.com\"\nprefix = \"/anthropic\"\nkey = { file = \"/nonexistent/key\" }\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .env_remove("KEYPROXY_CLI_TEST_UNSET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = stdout.lines().filter(|l| l.starts_with('✗')).collect();
    assert_eq!(problems.len(), 2, "{stdout}");
    assert!(problems[0].starts_with("✗ a: key") && problems[0].contains("KEYPROXY_CLI_TEST_UNSET"));
    assert!(problems[1].starts_with("✗ b: key") && problems[1].contains("/nonexistent/key"));
}

#[test]
fn a_bad_config_names_file_line_and_field_for_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"https://api.openai.com\"\nkey = { env = \"X\" }\nconnect_timout = \"5s\"\n",
    );
    let want = format!("{}:9:1: upstreams[0].connect_timout", config.display());
    for cmd in ["check", "run"] {
        let out = Command::new(BIN)
            .args([cmd, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd} succeeded");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(all.contains(&want), "{cmd}: {all}");
        assert!(all.contains("unknown field"), "{cmd}: {all}");
    }
}

#[test]
fn config_defaults_to_the_env_var() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "this is not toml");
    let out = Command::new(BIN)
        .arg("check")
        .env("KEYPROXY_CONFIG", &config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{}:1:", config.display())));
}

/// Reads the child's JSON log lines on a thread and hands them over one by one.
fn log_lines(stderr: std::process::ChildStderr) -> std::sync::mpsc::Receiver<serde_json::Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let value = serde_json::from_str(&line)
                .unwrap_or_else(|_| serde_json::json!({ "message": line }));
            if tx.send(value).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for_log(
    rx: &std::sync::mpsc::Receiver<serde_json::Value>,
    message: &str,
) -> serde_json::Value {
    loop {
        let line = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no log line {message:?}"));
        if line["message"] == message {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_open_stream_finish_then_exits_zero() {
    let (handler, release_tx) = held_stream(b"data: first\n\n", b"data: last\n\n");
    let upstream = serve_plain(handler).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"60s\"\n\
             [[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"http://{upstream}\"\nkey = {{ env = \"OPENAI_API_KEY\" }}\n"
        ),
    );
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("KEYPROXY_STATE_DIR", dir.path().join("state"))
        .env("OPENAI_API_KEY", key())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = log_lines(child.stderr.take().unwrap());
    let listening = wait_for_log(&logs, "proxy listening");
    let addr = listening["addr"].as_str().unwrap().to_owned();

    let req = Request::get(format!("http://{addr}/v1/chat/completions"))
        .body(full(""))
        .unwrap();
    let resp = within("response headers", client().request(req))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = within("the first event", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.data_ref().unwrap(),
        &Bytes::from_static(b"data: first\n\n")
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_log(
        &logs,
        "shutting down: no new connections; draining in-flight requests",
    );

    release_tx.send(()).unwrap();
    let rest = within("the rest of the stream", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"data: last\n\n");

    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "keyproxy exits 0 after draining");
    let mut all = Vec::new();
    while let Ok(line) = logs.recv_timeout(std::time::Duration::from_secs(5)) {
        all.push(line.to_string());
    }
    let all = all.join("\n");
    assert!(all.contains("shutdown complete"), "{all}");
    assert!(!all.contains("CLItestKEY"), "the key leaked into the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_asks_the_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let provider = StandIn::ok().await;
    let config = format!(
        "[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n",
        provider.url(),
        key_file(dir.path(), "key", &key())
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let admin = proxy.admin_url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["health", "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    proxy.stop().await;

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(BIN)
        .args(["health", "--admin", &format!("http://{closed}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rereads_a_command_source_and_expiry_is_warned_at_startup() {
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("HUPa"), openai_key("HUPb"));
    let key_path = key_file(dir.path(), "key", &a);
    let expires = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(10 * 86_400 + 3600),
    );
    let config = write_config(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\n\
             key = {{ command = [\"cat\", \"{key_path}\"] }}\nexpires_at = \"{expires}\"\n",
            provider.url()
        ),
    );
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("KEYPROXY_STATE_DIR", dir.path().join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = log_lines(child.stderr.take().unwrap());
    let mut startup = Vec::new();
    let addr = loop {
        let line = logs.recv_timeout(DEADLINE).expect("startup logs");
        if line["message"] == "proxy listening" {
            break line["addr"].as_str().unwrap().to_owned();
        }
        startup.push(line.to_string());
    };
    let startup = startup.join("\n");
    assert!(startup.contains("expires in 10 days"), "{startup}");

    std::fs::write(&key_path, &b).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let rotated = wait_for_log(&logs, "key rotated");
    assert_eq!(rotated["trigger"], "sighup");
    let (resp, _) = get(&format!("http://{addr}/v1/models")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(last_bearer(&provider).as_deref(), Some(b.as_str()));

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_sends_the_new_key_to_a_running_keyproxy() {
    const TOKEN: &str = "cli-admin-token-0123456789abcdef";
    let provider = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_key("ROTa"), openai_key("ROTb"));
    let config = format!(
        "admin_token = {{ file = \"{}\" }}\n[[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"{}\"\nkey = {{ file = \"{}\" }}\n",
        key_file(dir.path(), "token", TOKEN),
        provider.url(),
        key_file(dir.path(), "key", &a),
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let admin = proxy.admin_url("");

    let run = |args: Vec<String>, stdin: Option<String>| {
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new(BIN)
                .args(&args)
                .env("KEYPROXY_ADMIN_TOKEN", TOKEN)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut input = child.stdin.take().unwrap();
            if let Some(text) = stdin {
                std::io::Write::write_all(&mut input, text.as_bytes()).unwrap();
            }
            drop(input);
            child.wait_with_output().unwrap()
        })
    };
    let out = run(
        vec![
            "rotate".into(),
            "--upstream".into(),
            "openai".into(),
            "--key-stdin".into(),
            "--admin".into(),
            admin.clone(),
        ],
        Some(format!("{b}\n")),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("✓ openai: applied") && stdout.contains("generation 2"),
        "{stdout}"
    );
    assert!(!stdout.contains("ROTb"), "the key was printed: {stdout}");
    get(&proxy.url("/v1/models")).await;
    assert_eq!(last_bearer(&provider).as_deref(), Some(b.as_str()));

    let bad = dir.path().join("bad-key");
    std::fs::write(&bad, format!("'{}'", openai_key("ROTc"))).unwrap();
    let out = run(
        vec![
            "rotate".into(),
            "--upstream".into(),
            "openai".into(),
            "--key-file".into(),
            bad.display().to_string(),
            "--admin".into(),
            admin,
        ],
        None,
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("✗ openai") && stdout.contains("quotes"),
        "{stdout}"
    );
    get(&proxy.url("/v1/models")).await;
    assert_eq!(
        last_bearer(&provider).as_deref(),
        Some(b.as_str()),
        "the refused key was not swapped in"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_lints_dates_and_probes_each_key() {
    let rejecting = StandIn::recording(|_| {
        (401, r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#.into())
    })
    .await;
    let accepting = StandIn::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[[upstreams]]\nname = \"quoted\"\nprovider = \"openai\"\nbase_url = \"{0}\"\nkey = {{ file = \"{1}\" }}\n\
             [[upstreams]]\nname = \"refused\"\nprovider = \"openai\"\nbase_url = \"{0}\"\nprefix = \"/r\"\nkey = {{ file = \"{2}\" }}\nmax_age = \"365d\"\n\
             [[upstreams]]\nname = \"fine\"\nprovider = \"openai\"\nbase_url = \"{3}\"\nprefix = \"/f\"\nkey = {{ file = \"{4}\" }}\nexpires_at = \"2020-01-01\"\n",
            rejecting.url(),
            key_file(dir.path(), "q", &format!("\"{}\"", openai_key("CHECKq"))),
            key_file(dir.path(), "r", &openai_key("CHECKr")),
            accepting.url(),
            key_file(dir.path(), "f", &openai_key("CHECKf")),
        ),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check", "--probe", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("✗ quoted: lint surrounding_quotes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✓ refused: expiry: in 364 days")
            || stdout.contains("✓ refused: expiry: in 365 days"),
        "{stdout}"
    );
    assert!(stdout.contains("✗ refused: probe: invalid_key"), "{stdout}");
    assert!(
        stdout.contains("✗ fine: expiry: the key expired"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✓ fine: probe: the provider accepts the key"),
        "{stdout}"
    );
    assert!(!stdout.contains("CHECK"), "a key was printed: {stdout}");
    assert_eq!(
        rejecting.seen().len(),
        1,
        "no probe for a key that fails the lint"
    );
}

#[test]
fn completions_version_and_the_security_checklist() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("keyproxy") && script.contains("rotate"),
            "{shell}: {script}"
        );
    }
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with("keyproxy ") && version.contains("commit "),
        "{version}"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[server]\nlisten = \"0.0.0.0:8787\"\nadmin_listen = \"0.0.0.0:8788\"\nadmin_token = {{ env = \"KEYPROXY_CLI_UNSET_ADMIN\" }}\n\
             [[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"https://api.openai.com\"\nkey = {{ file = \"{}\" }}\n\
             [[clients]]\nname = \"notebook\"\ntoken = {{ file = \"{}\" }}\n",
            key_file(dir.path(), "key", &key()),
            key_file(dir.path(), "client", "notebook-client-token-0123456789"),
        ),
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "an unreadable admin token fails the check: {stdout}"
    );
    assert!(
        stdout.contains("✓ listen: 0.0.0.0:8787 requires one of 1 client tokens"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✓ client notebook: token from file"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "✗ admin: admin_token: environment variable KEYPROXY_CLI_UNSET_ADMIN is not set"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("⚠ admin: admin_listen 0.0.0.0:8788"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("notebook-client-token"),
        "a token was printed"
    );
}

/// One token rule: `check` shows ✓ for exactly the client and admin tokens the server accepts.
#[tokio::test]
async fn check_and_the_server_agree_on_every_token() {
    let tokens = [
        ("good", "0123456789abcdef-token"),
        ("short", "0123456789abcde"),
        ("inner space", "0123456789 abcdef-token"),
        ("surrounding space", " 0123456789abcdef-token"),
        ("non-ascii", "0123456789abcdef-tokén"),
    ];
    for (what, token) in tokens {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path(), "key", &key());
        // Written raw (no trailing newline) so the file holds exactly the token.
        std::fs::write(dir.path().join("client"), token).unwrap();
        std::fs::write(dir.path().join("admin"), token).unwrap();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = {{ file = \"{}\" }}\n\
             [[clients]]\nname = \"app\"\ntoken = {{ file = \"{}\" }}\n\
             [[upstreams]]\nname = \"openai\"\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\nkey = {{ file = \"{key}\" }}\n",
            dir.path().join("admin").display(),
            dir.path().join("client").display()
        );
        let config = write_config(dir.path(), &text);
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let check_client_ok = stdout.contains("✓ client app");
        let check_admin_ok = stdout.contains("✓ admin: admin_token");

        let parsed = keyproxy::config::Config::parse(&config, &text).unwrap();
        let server_client_ok = keyproxy::proxy::client_tokens::ClientTokens::load(&parsed.clients)
            .await
            .is_ok();
        let admin = keyproxy::admin::AdminToken::load(parsed.server.admin_token.as_ref()).await;
        let server_admin_ok = matches!(admin, keyproxy::admin::AdminToken::Hash(_));

        assert_eq!(
            check_client_ok, server_client_ok,
            "{what}: client token\n{stdout}"
        );
        assert_eq!(
            check_admin_ok, server_admin_ok,
            "{what}: admin token\n{stdout}"
        );
        assert_eq!(server_client_ok, what == "good", "{what}: the rule itself");
        assert!(
            !stdout.contains(token.trim()),
            "{what}: the token leaked: {stdout}"
        );
    }
}

/// A missing config file is said once, with its path and the OS's reason, by `run` and `check`.
#[test]
fn a_missing_config_file_is_reported_once() {
    for cmd in ["run", "check"] {
        let out = Command::new(BIN)
            .args([cmd, "--config", "/nonexistent/keyproxy.toml"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            all.contains("cannot read config file /nonexistent/keyproxy.toml"),
            "{cmd}: {all}"
        );
        assert_eq!(
            all.matches("No such file or directory").count(),
            1,
            "{cmd}: {all}"
        );
    }
}
