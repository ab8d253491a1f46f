//! `keyproxy rotate`: hand a new key to a running keyproxy through its admin API.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use keyproxy::config::Config;
use keyproxy::key::{KeySource, Secret};

use super::admin_base;

/// The new key's expiry, as given on the command line.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct Expiry {
    /// When the new key expires: 2027-12-01 or 2027-12-01T09:00:00Z.
    #[arg(long, conflicts_with = "max_age")]
    pub expires_at: Option<String>,
    /// How long the new key lasts from now: 365d, 90d, 12h.
    #[arg(long)]
    pub max_age: Option<String>,
}

/// What the rotation does to the upstream's pool of keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// The new key joins the pool under --name (with --retire OLD, OLD leaves after --grace).
    Add,
    /// The key named --name (default: the first) is rotated in place.
    #[default]
    Replace,
    /// The key named --name leaves the pool (no new key is read).
    Retire,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Add => "add",
            Mode::Replace => "replace",
            Mode::Retire => "retire",
        }
    }
}

/// `--mode`, and what `--mode add` may say besides.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct PoolChange {
    /// add: a new key joins the pool; replace (default): a key is rotated in place; retire: a key
    /// leaves the pool.
    #[arg(long, value_enum, default_value_t = Mode::Replace)]
    pub mode: Mode,
    /// With --mode add: the key the new one replaces; it leaves the pool after --grace (or the
    /// upstream's `grace`), or at once.
    #[arg(long, value_name = "OLD_NAME")]
    pub retire: Option<String>,
    /// With --mode add --retire OLD: how long both keys serve before OLD retires (24h, 1h, 30m).
    #[arg(long, requires = "retire")]
    pub grace: Option<String>,
    /// With --mode add: the new key's share of the requests (default 1).
    #[arg(long)]
    pub weight: Option<u32>,
}

/// `keyproxy rotate`: POST the new key to a running keyproxy's admin API.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn rotate(
    upstream: String,
    name: Option<String>,
    (key_file, key_stdin): (Option<PathBuf>, bool),
    admin: Option<String>,
    probe: bool,
    expiry: Expiry,
    pool: PoolChange,
    config_path: PathBuf,
) -> anyhow::Result<ExitCode> {
    let mode = pool.mode;
    let mut query: Vec<String> = Vec::new();
    anyhow::ensure!(
        mode == Mode::Retire || key_file.is_some() || key_stdin,
        "give the new key with --key-file PATH or --key-stdin"
    );
    anyhow::ensure!(
        mode != Mode::Replace || (pool.retire.is_none() && pool.weight.is_none()),
        "--retire, --grace and --weight go with --mode add"
    );
    anyhow::ensure!(
        name.is_some() || mode == Mode::Replace,
        "--mode {} needs --name (the key to {})",
        mode.as_str(),
        match mode {
            Mode::Add => "add",
            _ => "retire",
        }
    );
    if mode != Mode::Replace {
        query.push(format!("mode={}", mode.as_str()));
    }
    if let Some(old) = &pool.retire {
        anyhow::ensure!(
            keyproxy::config::valid_name(old),
            "--retire {old:?}: key names use only letters, digits, '-' and '_'"
        );
        query.push(format!("retire={old}"));
    }
    if let Some(grace) = &pool.grace {
        keyproxy::time::parse_duration(grace)
            .map_err(|e| anyhow::anyhow!("--grace {grace:?}: {e}; write e.g. 24h"))?;
        query.push(format!("grace={grace}"));
    }
    if let Some(weight) = pool.weight {
        query.push(format!("weight={weight}"));
    }
    if let Some(name) = &name {
        // The config allows no other names, so there is nothing to escape.
        anyhow::ensure!(
            keyproxy::config::valid_name(name),
            "--name {name:?}: key names use only letters, digits, '-' and '_' (as in keys = [...])"
        );
        query.push(format!("name={name}"));
    }
    if probe {
        query.push("probe=true".into());
    }
    if let Some(at) = &expiry.expires_at {
        let at = keyproxy::time::parse_timestamp(at).map_err(|e| {
            anyhow::anyhow!("--expires-at {at:?}: {e}; write 2027-12-01 or 2027-12-01T09:00:00Z")
        })?;
        query.push(format!("expires_at={}", keyproxy::time::rfc3339_string(at)));
    }
    if let Some(age) = &expiry.max_age {
        let age = keyproxy::time::parse_duration(age)
            .map_err(|e| anyhow::anyhow!("--max-age {age:?}: {e}; write e.g. 365d"))?;
        let at = std::time::SystemTime::now() + age;
        query.push(format!("expires_at={}", keyproxy::time::rfc3339_string(at)));
    }
    // The admin URL and token first: a missing token is said before anyone pastes a key.
    let from_env = std::env::var("KEYPROXY_ADMIN_TOKEN").ok();
    // With --admin the config is only a place to find the token: not needed, nor required to exist.
    let config = match (&admin, &from_env) {
        (None, _) => Some(Config::load(&config_path)?),
        (Some(_), None) if config_path.exists() => Some(Config::load(&config_path)?),
        (Some(_), _) => None,
    };
    let base = match (admin, &config) {
        (Some(url), _) => url,
        (None, Some(c)) => admin_base(c.server.admin_listen),
        (None, None) => anyhow::bail!("give --admin URL or a config"),
    };
    let token = match from_env {
        Some(t) => Secret::new(t),
        None => match config.as_ref().and_then(|c| c.server.admin_token.as_ref()) {
            Some(source) => source.read().await.context("cannot read the admin token")?,
            None => anyhow::bail!(
                "no admin token: set KEYPROXY_ADMIN_TOKEN to the running keyproxy's admin token, or set [server] admin_token in {} and restart keyproxy (without one, rotate by writing the key file, or by changing the key's env var and restarting)",
                config_path.display()
            ),
        },
    };
    let key = match (mode, key_file) {
        (Mode::Retire, _) => Secret::new(String::new()),
        (_, Some(path)) => KeySource::File(path).read().await?,
        (_, None) => read_key_from_stdin(&upstream)?,
    };
    let url = format!(
        "{}/keys/{upstream}{}{}",
        base.trim_end_matches('/'),
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    let mut request = http::Request::post(url.as_str())
        .header(http::header::CONTENT_TYPE, "text/plain")
        .header(
            http::header::USER_AGENT,
            format!(
                "{}{}",
                keyproxy::admin::ROTATE_USER_AGENT,
                env!("CARGO_PKG_VERSION")
            ),
        )
        .body(Full::new(Bytes::from(key.expose().to_owned())))
        .context("invalid --admin URL")?;
    let mut auth = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .context("the admin token cannot be sent in a header")?;
    auth.set_sensitive(true);
    request
        .headers_mut()
        .insert(http::header::AUTHORIZATION, auth);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(60), client.request(request))
            .await
            .with_context(|| format!("{url}: no answer within 60s"))?
            .with_context(|| format!("{url}: request failed"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status.is_success() && mode == Mode::Retire {
        println!(
            "✓ {upstream}: key {} retired ({}); apps still sending it are named in the log and on /status",
            v["key"].as_str().unwrap_or("?"),
            v["fingerprint"].as_str().unwrap_or("?"),
        );
        Ok(ExitCode::SUCCESS)
    } else if status.is_success() {
        // `add` names the key that joined; a rotation in place reads as it always did.
        let key = match mode {
            Mode::Add => format!("{} ", v["key"].as_str().unwrap_or("?")),
            _ => String::new(),
        };
        println!(
            "✓ {upstream}: {key}{} {} (generation {})",
            v["result"].as_str().unwrap_or("applied"),
            v["fingerprint"].as_str().unwrap_or("?"),
            v["generation"]
        );
        match (&v["retires"]["at"], &v["retires"]["error"]) {
            (_, serde_json::Value::String(e)) => println!(
                "⚠ {upstream}: {} stays in the pool: {e}",
                v["retires"]["key"].as_str().unwrap_or("?")
            ),
            (serde_json::Value::String(at), _) => println!(
                "  {} retires at {at}; both keys serve until then",
                v["retires"]["key"].as_str().unwrap_or("?")
            ),
            _ => {
                if let Some(at) = v["retires"]["retired_at"].as_str() {
                    println!(
                        "  {} retired at {at} ({})",
                        v["retires"]["key"].as_str().unwrap_or("?"),
                        v["retires"]["fingerprint"].as_str().unwrap_or("?")
                    );
                }
            }
        }
        match v["expires_at"].as_str() {
            Some(at) => println!("  expires {at}"),
            None => println!("  expiry unknown (give --expires-at or --max-age to be warned before it stops working)"),
        }
        for w in v["warnings"].as_array().into_iter().flatten() {
            println!("⚠ {upstream}: {}", w["message"].as_str().unwrap_or(""));
        }
        Ok(ExitCode::SUCCESS)
    } else {
        let message = v["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        println!("✗ {upstream}: {status}: {message}");
        Ok(ExitCode::FAILURE)
    }
}

/// On a terminal: a prompt, no echo, one line (Enter ends it). Piped: everything, one trailing
/// newline dropped.
fn read_key_from_stdin(upstream: &str) -> anyhow::Result<Secret> {
    let mut text = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("Paste the new key for {upstream}, then Enter: "))
            .context("cannot read the key from the terminal")?
    } else {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the key from standard input")?;
        text
    };
    keyproxy::key::source::trim_one_newline(&mut text);
    Ok(Secret::new(text))
}
