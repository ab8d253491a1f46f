//! The `keyproxy` command: `run` serves, `check` validates the config and every key offline.
//! Parsing arguments and building the runtime is all that happens here; each subcommand lives in
//! `cli/`.
#![forbid(unsafe_code)]

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use keyproxy::telemetry::{self, LogFormat};

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
        /// Which key of the upstream's pool (`keys = [...]`) to replace; default the first. With
        /// `--mode add` the new key's name, with `--mode retire` the key to retire.
        #[arg(long)]
        name: Option<String>,
        /// Read the new key from this file.
        #[arg(long, conflicts_with = "key_stdin")]
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
        expiry: cli::rotate::Expiry,
        #[command(flatten)]
        pool: cli::rotate::PoolChange,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Rotations, refusals, retired keys and the apps still sending them, from the state store.
    History(cli::history::Args),
    /// Explain a provider's refusal offline: `keyproxy explain --status 401 [--provider openai] [FILE|-]`.
    Explain(cli::explain::Args),
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
        Command::Run(args) => runtime.block_on(cli::run::run(args.config)),
        Command::Check { config, probe } => {
            runtime.block_on(cli::check::check(config.config, probe))
        }
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
            name,
            key_file,
            key_stdin,
            admin,
            probe,
            expiry,
            pool,
            config,
        } => runtime.block_on(cli::rotate::rotate(
            upstream,
            name,
            (key_file, key_stdin),
            admin,
            probe,
            expiry,
            pool,
            config.config,
        )),
        Command::History(args) => cli::history::run(args),
        Command::Health { admin, config } => {
            runtime.block_on(cli::health::health(admin, config.config))
        }
        Command::Explain(args) => cli::explain::run(args),
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
