//! The `keyproxy` command: `run` serves, `check` validates the config and every key offline.
//! Parsing arguments and building the runtime is all that happens here.
#![forbid(unsafe_code)]

mod explain_cmd;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use bytes::Bytes;
use clap::{CommandFactory, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use tokio::signal::unix::{signal, SignalKind};

use keyproxy::config::Config;
use keyproxy::key::lint::{self, Severity};
use keyproxy::key::rotation::Trigger;
use keyproxy::key::{expiry, Fingerprint, KeySource, Secret};
use keyproxy::metrics::Metrics;
use keyproxy::probe::ProbeOutcome;
use keyproxy::server::Server;
use keyproxy::telemetry::{self, LogFormat};
use keyproxy::upstream::Upstream;

/// mimalloc: per-thread free lists, measurably less time in the allocator than glibc's under load
/// (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KEYPROXY_GIT_SHA"),
    ", ",
    env!("KEYPROXY_TARGET"),
    ", ",
    env!("KEYPROXY_PROFILE"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "keyproxy",
    version,
    long_version = LONG_VERSION,
    about = "Holds your LLM API keys, injects them upstream, and explains every auth failure."
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "pretty")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The config file.
    #[arg(long, env = "KEYPROXY_CONFIG", default_value = "config/keyproxy.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run(ConfigArg),
    /// Validate the config and every key (presence, lint, expiry) offline; exit non-zero on any problem.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also ask each provider whether it accepts the key (one cheap authenticated request each).
        #[arg(long)]
        probe: bool,
    },
    /// Print a shell completion script: `keyproxy completions bash > /etc/bash_completion.d/keyproxy`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Rotate an upstream's key in a running keyproxy, through its admin API.
    Rotate {
        /// The upstream whose key to replace.
        #[arg(long)]
        upstream: String,
        /// Read the new key from this file.
        #[arg(
            long,
            conflicts_with = "key_stdin",
            required_unless_present = "key_stdin"
        )]
        key_file: Option<PathBuf>,
        /// Read the new key from standard input.
        #[arg(long)]
        key_stdin: bool,
        /// The admin base URL; defaults to `server.admin_listen` from the config.
        #[arg(long)]
        admin: Option<String>,
        /// Have keyproxy ask the provider to accept the key before swapping it in.
        #[arg(long)]
        probe: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Explain a provider's refusal offline: `keyproxy explain --status 401 [--provider openai] [FILE|-]`.
    Explain(explain_cmd::Args),
    /// Ask a running keyproxy's admin listener for /healthz (for container HEALTHCHECKs: no shell needed).
    Health {
        /// The admin base URL; defaults to `server.admin_listen` from the config.
        #[arg(long)]
        admin: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match build_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyproxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run(args.config)),
        Command::Check { config, probe } => runtime.block_on(check(config.config, probe)),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "keyproxy",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Rotate {
            upstream,
            key_file,
            key_stdin: _,
            admin,
            probe,
            config,
        } => runtime.block_on(rotate(upstream, key_file, admin, probe, config.config)),
        Command::Health { admin, config } => runtime.block_on(health(admin, config.config)),
        Command::Explain(args) => explain_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The main runtime: one thread for the CLI, the admin API, the key lifecycle and accepting
/// connections (it is also proxy worker 0). `[server] workers` adds event-loop threads of their own,
/// each a runtime like this one (see `workers.rs`).
fn build_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

async fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path)?;
    // Handlers first: a signal that arrives while starting must not take its default action (exit).
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let server = Server::bind(&config)
        .await
        .context("keyproxy cannot start")?;
    let proxy = Arc::clone(server.proxy());
    let sighup = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: re-reading every key source");
            proxy.reload_all(Trigger::Sighup, true).await;
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    server.run(shutdown).await;
    sighup.abort();
    Ok(ExitCode::SUCCESS)
}

/// `keyproxy check`: a checklist, one ✓/⚠/✗ line per item; non-zero exit on any ✗.
async fn check(path: PathBuf, probe: bool) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            println!("✗ config: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("✓ config: {}", path.display());
    let mut failed = security_checklist(&config).await;
    let metrics = Metrics::new()?;
    let now = SystemTime::now();
    for cfg in &config.upstreams {
        let name = &cfg.name;
        let upstream = Upstream::new(cfg, &metrics, 1)?;
        let secret = match cfg.key.read().await {
            Ok(secret) => secret,
            Err(e) => {
                failed = true;
                println!("✗ {name}: key: {e}");
                continue;
            }
        };
        println!(
            "✓ {name}: key present ({}): {}",
            cfg.key,
            Fingerprint::of(secret.expose())
        );
        if let Some(warning) = cfg.key.permission_warning() {
            println!("⚠ {name}: permissions: {warning}");
        }
        let source = cfg.key.to_string();
        let findings = lint::lint(
            secret.expose(),
            cfg.provider,
            upstream.host(),
            &source,
            cfg.lint,
        );
        if findings.is_empty() {
            println!("✓ {name}: lint: no copy/paste mistakes found");
        }
        for f in &findings {
            let mark = if f.severity == Severity::Error {
                "✗"
            } else {
                "⚠"
            };
            failed |= f.severity == Severity::Error;
            println!("{mark} {name}: lint {}: {}", f.code, f.message);
        }
        match expiry::expires_at(&cfg.expiry, true, now) {
            None => println!("⚠ {name}: expiry: unknown; set expires_at or max_age to be warned before the key stops working"),
            Some(at) => {
                let days = expiry::days_left(at, now);
                let when = expiry::describe(at, now);
                if days < 0.0 {
                    failed = true;
                    println!("✗ {name}: expiry: the key expired {when}");
                } else if days < 30.0 {
                    println!("⚠ {name}: expiry: the key expires {when}");
                } else {
                    println!("✓ {name}: expiry: {when}");
                }
            }
        }
        if probe && lint::first_error(&findings).is_none() {
            let header =
                keyproxy::key::store::header_value(&secret, &upstream.auth_prefix, &source)?;
            match keyproxy::probe::probe(&upstream, &header).await {
                ProbeOutcome::Accepted { status } => {
                    println!("✓ {name}: probe: the provider accepts the key ({status})")
                }
                ProbeOutcome::Refused {
                    reason, message, ..
                } => {
                    failed = true;
                    println!("✗ {name}: probe: {reason}: {message}");
                }
                ProbeOutcome::Failed { message } => {
                    failed = true;
                    println!("✗ {name}: probe: {message}");
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The security settings, as checklist lines; true when any is a ✗.
async fn security_checklist(config: &Config) -> bool {
    let mut failed = false;
    let server = &config.server;
    match (server.listen.ip().is_loopback(), config.clients.len(), server.allow_unauthenticated) {
        (true, 0, _) => println!("✓ listen: {} is loopback: only this machine's apps can use it", server.listen),
        (_, n, _) if n > 0 => println!("✓ listen: {} requires one of {n} client tokens", server.listen),
        _ => println!(
            "⚠ listen: {} is reachable beyond this machine without client tokens (allow_unauthenticated); be sure something else restricts who connects",
            server.listen
        ),
    }
    for client in &config.clients {
        match client.token.read().await {
            Ok(t) if t.expose().len() >= 16 => {
                println!("✓ client {}: token from {}", client.name, client.token)
            }
            Ok(_) => {
                failed = true;
                println!(
                    "✗ client {}: the token from {} is shorter than 16 characters",
                    client.name, client.token
                );
            }
            Err(e) => {
                failed = true;
                println!("✗ client {}: token: {e}", client.name);
            }
        }
        if let Some(warning) = client.token.permission_warning() {
            println!("⚠ client {}: permissions: {warning}", client.name);
        }
    }
    match &server.admin_token {
        None => println!("⚠ admin: no admin_token, so POST /keys and `keyproxy rotate` are disabled (key files and SIGHUP still rotate)"),
        Some(source) => match source.read().await {
            Ok(t) if t.expose().len() >= 16 => println!("✓ admin: admin_token from {source} enables POST /keys"),
            Ok(_) => {
                failed = true;
                println!("✗ admin: the admin_token from {source} is shorter than 16 characters");
            }
            Err(e) => {
                failed = true;
                println!("✗ admin: admin_token: {e}");
            }
        },
    }
    if !server.admin_listen.ip().is_loopback() {
        println!(
            "⚠ admin: admin_listen {} is reachable beyond this machine (status and metrics are readable without a token)",
            server.admin_listen
        );
    }
    if server.allowed_origins.is_empty() {
        println!("✓ browsers: no web origins allowed: a page in a browser cannot use the key (Origin and Sec-Fetch-Site are refused, preflights are never forwarded)");
    } else {
        println!(
            "⚠ browsers: pages on these origins can use the key through the proxy: {}",
            server.allowed_origins.join(", ")
        );
    }
    let answered = if server.listen.ip().is_unspecified() {
        "loopback names and IP addresses"
    } else {
        "loopback names and addresses"
    };
    if server.allowed_hosts.is_empty() {
        println!("✓ hosts: only {answered} are answered (a DNS-rebinding name gets 421)");
    } else {
        println!(
            "✓ hosts: {answered} and {} are answered; any other Host gets 421",
            server.allowed_hosts.join(", ")
        );
    }
    failed
}

/// `keyproxy rotate`: POST the new key to a running keyproxy's admin API.
async fn rotate(
    upstream: String,
    key_file: Option<PathBuf>,
    admin: Option<String>,
    probe: bool,
    config_path: PathBuf,
) -> anyhow::Result<ExitCode> {
    let key = match key_file {
        Some(path) => KeySource::File(path).read().await?,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the key from standard input")?;
            keyproxy::key::source::trim_one_newline(&mut text);
            Secret::new(text)
        }
    };
    let config = if admin.is_none() || std::env::var_os("KEYPROXY_ADMIN_TOKEN").is_none() {
        Some(Config::load(&config_path)?)
    } else {
        None
    };
    let base = match (admin, &config) {
        (Some(url), _) => url,
        (None, Some(c)) => admin_base(c.server.admin_listen),
        (None, None) => anyhow::bail!("give --admin URL or a config"),
    };
    let token = match std::env::var("KEYPROXY_ADMIN_TOKEN") {
        Ok(t) => Secret::new(t),
        Err(_) => match config.as_ref().and_then(|c| c.server.admin_token.as_ref()) {
            Some(source) => source.read().await.context("cannot read the admin token")?,
            None => anyhow::bail!(
                "no admin token: set KEYPROXY_ADMIN_TOKEN, or [server] admin_token in the config"
            ),
        },
    };
    let url = format!(
        "{}/keys/{upstream}{}",
        base.trim_end_matches('/'),
        if probe { "?probe=true" } else { "" }
    );
    let mut request = http::Request::post(url.as_str())
        .header(http::header::CONTENT_TYPE, "text/plain")
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
    if status.is_success() {
        println!(
            "✓ {upstream}: {} {} (generation {})",
            v["result"].as_str().unwrap_or("applied"),
            v["fingerprint"].as_str().unwrap_or("?"),
            v["generation"]
        );
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

fn admin_base(mut addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

async fn health(admin: Option<String>, config: PathBuf) -> anyhow::Result<ExitCode> {
    let base = match admin {
        Some(url) => url,
        None => admin_base(Config::load(&config)?.server.admin_listen),
    };
    let url = format!("{}/healthz", base.trim_end_matches('/'));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = client.get(url.parse().context("invalid --admin URL")?);
    let response = tokio::time::timeout(std::time::Duration::from_secs(5), request)
        .await
        .with_context(|| format!("{url}: no answer within 5s"))?
        .with_context(|| format!("{url}: request failed"))?;
    if response.status().is_success() {
        println!("healthy: {url}");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("unhealthy: {url} answered {}", response.status());
        Ok(ExitCode::FAILURE)
    }
}
