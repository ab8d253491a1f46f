//! `keyproxy check`: the config and every key, offline (or with `--probe`, asked of each provider).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use keyproxy::config::Config;
use keyproxy::key::lifecycle::ProbeOutcome;
use keyproxy::key::lint::{self, Severity};
use keyproxy::key::{expiry, token, Fingerprint};
use keyproxy::metrics::Metrics;
use keyproxy::upstream::Upstream;

/// `keyproxy check`: a checklist, one ✓/⚠/✗ line per item; non-zero exit on any ✗.
pub(crate) async fn check(path: PathBuf, probe: bool) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            println!("✗ config: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("✓ config: {}", path.display());
    let mut failed = security_checklist(&config).await;
    ports_checklist(&config).await;
    for cfg in &config.upstreams {
        for warning in cfg.warnings() {
            println!("⚠ {}: base_url: {warning}", cfg.name);
        }
        for warning in cfg.token_warnings() {
            println!("⚠ {}: token_url: {warning}", cfg.name);
        }
    }
    let metrics = Metrics::new()?;
    let now = SystemTime::now();
    // What the server would recall at startup: a source still holding a retired key is refused.
    let store = config
        .server
        .state_dir
        .as_deref()
        .and_then(|dir| keyproxy::state::Store::open_read_only(dir).ok());
    for cfg in &config.upstreams {
        let upstream = Upstream::new(cfg, &metrics, 1)?;
        // Each key of a pool on its own lines (`openai/b`); a single key as always (`openai`).
        for key in &cfg.keys {
            let label = match cfg.is_pool() {
                true => format!("{}/{}", cfg.name, key.name),
                false => cfg.name.clone(),
            };
            let name = &label;
            let (source, policy) = (&key.source, &key.expiry);
            if let Some(minted) = source.minted() {
                failed |= check_minted(name, minted, &upstream, probe).await;
                continue;
            }
            let secret = match source.read().await {
                Ok(secret) => secret,
                Err(e) => {
                    failed = true;
                    println!("✗ {name}: key: {e}");
                    continue;
                }
            };
            println!(
                "✓ {name}: key present ({}): {}",
                source,
                Fingerprint::of(secret.expose())
            );
            if let Some(kind) = keyproxy::key::aws::kind(secret.expose()) {
                let region = keyproxy::key::aws::region_of(secret.expose())
                    .map_or(String::new(), |r| {
                        format!(", signing for region {r} (SigV4)")
                    });
                println!("✓ {name}: credential: {kind}{region}");
            }
            if let Some(warning) = source.permission_warning() {
                println!("⚠ {name}: permissions: {warning}");
            }
            let source_text = source.to_string();
            // A pool's key is remembered as `upstream/name`, which is its label here.
            if let Some(store) = &store {
                failed |= stored_history_line(store, name, &source_text, &secret);
            }
            let findings = lint::lint(
                secret.expose(),
                cfg.provider,
                upstream.host(),
                &source_text,
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
            let fingerprint = Fingerprint::of(secret.expose());
            let facts = expiry::KeyFacts {
                fingerprint: fingerprint.as_str(),
                set_with_rotation: None,
                the_sources_key: true,
            };
            match expiry::expires_at_of(secret.expose(), policy, &facts, now) {
                None => println!("⚠ {name}: expiry: unknown; set expires_at or max_age to be warned before the key stops working"),
                Some(at) => {
                    let days = expiry::days_left(at, now);
                    let when = expiry::describe(at, now);
                    if days < 0.0 {
                        failed = true;
                        println!("✗ {name}: expiry: the key expired {when}");
                    } else if source.renews_itself() {
                        println!("✓ {name}: expiry: {when}; the command is run again before then");
                    } else if days < 30.0 {
                        println!("⚠ {name}: expiry: the key expires {when}");
                    } else {
                        println!("✓ {name}: expiry: {when}");
                    }
                }
            }
            if probe && lint::first_error(&findings).is_none() {
                let header = keyproxy::key::store::header_value(
                    &secret,
                    &upstream.auth_prefix,
                    &source_text,
                )?;
                match keyproxy::diagnose::probe::probe(&upstream, &header).await {
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
    }
    state_line(config.server.state_dir.as_deref());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Where the state store is, and whether it can be read. keyproxy serves without it, so a problem
/// is a warning, not a failure.
fn state_line(dir: Option<&std::path::Path>) {
    use keyproxy::state::{Store, FILE_NAME};
    let Some(dir) = dir else {
        println!("⚠ state: no state directory ($HOME is not set; set [server] state_dir): rotations and retired keys are forgotten at restart");
        return;
    };
    let path = dir.join(FILE_NAME);
    if !path.exists() {
        println!(
            "✓ state: {} will be created at the first run",
            path.display()
        );
        return;
    }
    match Store::open_read_only(dir).and_then(|s| s.version().map_err(|source| keyproxy::state::StateError::Sqlite { path: path.clone(), source })) {
        Ok(version) => println!("✓ state: {} (schema version {version})", path.display()),
        Err(e) => println!("⚠ state: cannot open the state store: {e}; keyproxy serves without it, and forgets rotations and retired keys at restart"),
    }
}

/// Whether `run` could listen: a taken port is a ⚠, not a ✗ (it may be this config's own keyproxy).
async fn ports_checklist(config: &Config) {
    let server = &config.server;
    for (addr, what) in [
        (server.listen, "server.listen"),
        (server.admin_listen, "server.admin_listen"),
    ] {
        if addr.port() == 0 {
            continue;
        }
        if let Err(e) = keyproxy::server::listen_on(addr, what).await {
            println!("⚠ {what}: {e}");
        }
    }
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
        match token::load(&client.token).await {
            Ok(_) => println!("✓ client {}: token from {}", client.name, client.token),
            Err(e) => {
                failed = true;
                println!("✗ client {}: {e}", client.name);
            }
        }
        if let Some(warning) = client.token.permission_warning() {
            println!("⚠ client {}: permissions: {warning}", client.name);
        }
    }
    match &server.admin_token {
        None => println!("⚠ admin: no admin_token, so POST /keys and `keyproxy rotate` are disabled (key files and SIGHUP still rotate)"),
        Some(source) => match token::load(source).await {
            Ok(_) => println!("✓ admin: admin_token from {source} enables POST /keys"),
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

/// Compare the source's key with what the state store remembers: a retired key is refused by the
/// server (✗, true), and a key rotated in through the admin API and kept in the store is served
/// instead of the source's (⚠).
fn stored_history_line(
    store: &keyproxy::state::Store,
    name: &str,
    source: &str,
    secret: &keyproxy::key::Secret,
) -> bool {
    use keyproxy::key::history::KeyHistory;
    let recalled = store.recall(name);
    let hash = keyproxy::key::store::salted_digest(&store.salt(), secret.expose());
    if let Some(old) = recalled.retired.iter().find(|r| r.digest == hash) {
        let serving = recalled.in_service.as_ref().map_or(String::new(), |s| {
            format!(" and serves {} instead", s.fingerprint)
        });
        println!(
            "✗ {name}: {source} holds the key retired at {} ({}); keyproxy refuses it{serving}: put the current key there",
            keyproxy::time::rfc3339_string(old.retired_at),
            old.fingerprint
        );
        return true;
    }
    if let Some(kept) = recalled
        .in_service
        .as_ref()
        .filter(|s| s.hash != hash && s.stored.is_some())
    {
        println!(
            "⚠ {name}: keyproxy serves {} (generation {}), rotated in through the admin API and kept in the state store, not the key in {source}; update {source} to it",
            kept.fingerprint, kept.generation
        );
    }
    false
}

/// A token credential: its long-lived secret (read, never shown: a fingerprint), and with
/// `--probe` one token minted at the endpoint (its refusal explained) and shown to the provider.
/// True when something failed.
async fn check_minted(
    name: &str,
    minted: &keyproxy::key::minted::MintedSource,
    upstream: &Upstream,
    probe: bool,
) -> bool {
    use keyproxy::key::minted::{ExplainMint, MintedSource};
    println!("✓ {name}: token credential: {minted}");
    match minted {
        MintedSource::ClientCredentials { grant, kind } => match grant.client_secret.read().await {
            Ok(secret)
                if *kind == keyproxy::key::minted::CredentialKind::AzureAd
                    && keyproxy::key::minted::oauth2::secret_id_instead_of_value(
                        secret.expose(),
                    ) =>
            {
                println!(
                    "✗ {name}: client secret: {} holds a UUID, the secret's Secret ID; Entra wants its Value (shown once, when the secret was created; make a new one if it is lost)",
                    grant.client_secret
                );
                return true;
            }
            Ok(secret) => println!(
                "✓ {name}: client secret present ({}): {}",
                grant.client_secret,
                Fingerprint::of(secret.expose())
            ),
            Err(e) => {
                println!("✗ {name}: client secret: {e}");
                return true;
            }
        },
        MintedSource::ServiceAccount(account) => {
            let text = std::fs::read_to_string(&account.path).map_err(|e| {
                format!(
                    "cannot read the service-account key file {}: {e}",
                    account.path.display()
                )
            });
            match text.and_then(|t| {
                keyproxy::key::minted::google::lint(&account.path, &zeroize::Zeroizing::new(t))
            }) {
                Ok(sa) => println!(
                    "✓ {name}: service-account key file {}: {} (token endpoint {})",
                    account.path.display(),
                    sa.client_email,
                    sa.token_uri
                ),
                Err(e) => {
                    println!("✗ {name}: service-account key: {e}");
                    return true;
                }
            }
        }
    }
    if !probe {
        println!("✓ {name}: token: minted at startup and refreshed before it expires (`keyproxy check --probe` mints one now)");
        return false;
    }
    let token = match minted.mint().await {
        Ok(token) => token,
        Err(e) => {
            let why = keyproxy::diagnose::token_endpoint::TokenEndpoint.explain(minted, &e);
            println!(
                "✗ {name}: probe: token endpoint: {}: {}",
                why.reason, why.sentence
            );
            return true;
        }
    };
    println!(
        "✓ {name}: probe: the token endpoint issued a token ({}), valid for {} (until {})",
        Fingerprint::of(token.token.expose()),
        humantime::format_duration(std::time::Duration::from_secs(token.lifetime.as_secs())),
        keyproxy::time::rfc3339_string(token.expires_at)
    );
    let header = match keyproxy::key::store::header_value(
        &token.token,
        &upstream.auth_prefix,
        &minted.to_string(),
    ) {
        Ok(h) => h,
        Err(e) => {
            println!("✗ {name}: probe: {e}");
            return true;
        }
    };
    match keyproxy::diagnose::probe::probe(upstream, &header).await {
        ProbeOutcome::Accepted { status } => {
            println!("✓ {name}: probe: the provider accepts the token ({status})");
            false
        }
        ProbeOutcome::Refused {
            reason, message, ..
        } => {
            println!("✗ {name}: probe: {reason}: {message}");
            true
        }
        ProbeOutcome::Failed { message } => {
            println!("✗ {name}: probe: {message}");
            true
        }
    }
}
