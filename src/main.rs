//! The `keyproxy` command: `run` serves, `check` validates the config and every key offline.
//! Parsing arguments and building the runtime is all that happens here.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use keyproxy::config::Config;
use keyproxy::server::Server;
use keyproxy::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "keyproxy",
    version,
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
    /// Validate the config and every key source offline; exit non-zero on any problem.
    Check(ConfigArg),
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyproxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run(args.config)),
        Command::Check(args) => runtime.block_on(check(args.config)),
        Command::Health { admin, config } => runtime.block_on(health(admin, config.config)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path)?;
    let server = Server::bind(&config)
        .await
        .context("keyproxy cannot start")?;
    server.run(shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

async fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            println!("✗ config: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("✓ config: {}", path.display());
    let mut problems = 0;
    for up in &config.upstreams {
        match up.key.read().await {
            Ok(secret) => {
                if http::HeaderValue::from_str(secret.expose()).is_err() {
                    problems += 1;
                    println!(
                        "✗ upstream {}: the key from {} contains characters that cannot be sent in an HTTP header",
                        up.name, up.key
                    );
                } else {
                    let fp = keyproxy::key::Fingerprint::of(secret.expose());
                    println!("✓ upstream {}: key {fp} from {}", up.name, up.key);
                }
            }
            Err(e) => {
                problems += 1;
                println!("✗ upstream {}: key: {e}", up.name);
            }
        }
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn health(admin: Option<String>, config: PathBuf) -> anyhow::Result<ExitCode> {
    let base = match admin {
        Some(url) => url,
        None => {
            let mut addr = Config::load(&config)?.server.admin_listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
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

/// SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
