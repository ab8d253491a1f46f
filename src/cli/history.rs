//! `keyproxy history`: the key lifecycle's story from the state store — rotations and refusals,
//! retired keys and the apps still sending them, the last explained refusals. Opens the store
//! read-only, so it can run beside the server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use keyproxy::config::{default_state_dir, Config};
use keyproxy::state::{Query, Store};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this upstream.
    #[arg(long)]
    upstream: Option<String>,
    /// Only what happened in this last stretch of time: 7d, 12h.
    #[arg(long)]
    since: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The state directory; defaults to the config's `[server] state_dir`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The config file (for its `state_dir`).
    #[arg(long, env = "KEYPROXY_CONFIG", default_value = "config/keyproxy.toml")]
    config: PathBuf,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let since = match &args.since {
        Some(text) => {
            let age = keyproxy::time::parse_duration(text)
                .map_err(|e| anyhow::anyhow!("--since {text:?}: {e}; write e.g. 7d or 12h"))?;
            Some(SystemTime::now() - age)
        }
        None => None,
    };
    let dir = match args.state_dir {
        Some(dir) => Some(dir),
        None => match Config::load(&args.config) {
            Ok(config) => config.server.state_dir,
            Err(_) => default_state_dir(),
        },
    };
    let Some(dir) = dir else {
        anyhow::bail!("no state directory: give --state-dir, or set [server] state_dir");
    };
    let store = Store::open_read_only(&dir)?;
    let query = Query {
        upstream: args.upstream,
        since,
        limit: 1000,
    };
    let rotations = store.rotations(&query)?;
    let retired = store.retired(&query)?;
    let usage = store.usage(&query)?;
    let diagnoses = store.diagnoses(&Query { limit: 20, ..query })?;
    if args.json {
        let doc = serde_json::json!({
            "store": store.path().display().to_string(),
            "rotations": rotations,
            "retired_keys": retired,
            "diagnoses": diagnoses,
            "usage_daily": usage,
        });
        println!("{}", keyproxy::redact::mask(&doc.to_string()));
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", store.path().display());
    println!("\nRotations and refusals, newest first:");
    if rotations.is_empty() {
        println!("  (none)");
    }
    for r in &rotations {
        let key = |fp: &Option<String>, generation: Option<u64>| match (fp, generation) {
            (Some(fp), Some(g)) => format!("{fp} (generation {g})"),
            (Some(fp), None) => fp.clone(),
            _ => "no key".into(),
        };
        if r.result == "retired" {
            println!(
                "  {}  {}  retired   by {:<9}  {} left the pool",
                r.at,
                r.upstream,
                r.who,
                key(&r.from_fingerprint, r.from_generation)
            );
        } else if r.result == "applied" {
            println!(
                "  {}  {}  applied   by {:<9}  {} → {}",
                r.at,
                r.upstream,
                r.who,
                key(&r.from_fingerprint, r.from_generation),
                key(&r.to_fingerprint, r.to_generation)
            );
        } else {
            println!(
                "  {}  {}  REFUSED   by {:<9}  {}: {} (kept {})",
                r.at,
                r.upstream,
                r.who,
                r.code.as_deref().unwrap_or("?"),
                r.sentence.as_deref().unwrap_or(""),
                key(&r.from_fingerprint, r.from_generation)
            );
        }
    }
    println!("\nRetired keys, and the apps still sending them:");
    if retired.is_empty() {
        println!("  (none)");
    }
    for k in &retired {
        println!(
            "  {}  {} (generation {}), retired {}",
            k.upstream, k.fingerprint, k.generation, k.retired_at
        );
        if k.sightings.is_empty() {
            println!("      no app seen sending it");
        }
        for s in &k.sightings {
            println!(
                "      still sent by {}: {} time(s), first {}, last {}",
                s.app, s.count, s.first_seen, s.last_seen
            );
        }
    }
    if !usage.is_empty() {
        println!("\nTokens by day (in / out):");
        for u in &usage {
            let client = if u.client.is_empty() { "-" } else { &u.client };
            println!(
                "  {}  {}  {}  {}  {} / {}",
                u.day, u.upstream, client, u.model, u.tokens_in, u.tokens_out
            );
        }
    }
    if !diagnoses.is_empty() {
        println!("\nLast explained refusals:");
        for d in &diagnoses {
            println!(
                "  {}  {}  {} {}: {}",
                d.at, d.upstream, d.status, d.reason, d.sentence
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
