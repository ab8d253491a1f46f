//! A key's whole life at one upstream: where it comes from, the key in service (`KeyStore`), the
//! keys rotated out, and the one way a key gets in. Every trigger (startup, file watch, periodic
//! re-read, SIGHUP, admin API) ends in the same validate-then-`store()`; a refused key never
//! replaces the one in service. Rotated-out keys are remembered by salted hash, so an app still
//! sending one can be told, and a source still holding one is refused rather than reinstalled; an
//! explicit rotation is written back (the key file, or the state store) so it outlives SIGHUP and
//! restarts. What outlives the process goes through `KeyHistory` and asking the provider about a
//! candidate through `KeyProbe`: both are passed in, so this module does no I/O of its own besides
//! reading the source and rewriting a key file.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::HeaderValue;

use super::expiry::{self, ExpiryPolicy};
use super::history::{self, Applied, Forgetful, KeyHistory, Recalled, Refused, Sighting};
use super::lint::{self, Finding, LintCode, LintMode, Severity};
use super::minted::refresh::{RefreshStatus, Refresher};
use super::minted::{Explained, Minted, MintedSource};
use super::rotation::{Attempt, Refusal, RetiredKey, RotationResult, Trigger, RETIRED_KEPT};
use super::store::{digest, header_value, salted_digest, KeyMeta, Unavailable};
use super::{Fingerprint, KeySnapshot, KeySource, KeyState, KeyStore, Secret};
use crate::metrics::{CredentialMatch, UpstreamMetrics};
use crate::provider::Provider;
use crate::reason::Reason;

/// What the provider said about a candidate key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The provider accepted the key (a 429 rate limit counts: the key itself was recognised).
    Accepted { status: u16 },
    /// The provider refused the key.
    Refused {
        reason: Reason,
        status: u16,
        message: String,
    },
    /// No answer to judge by (unreachable, timeout, 5xx).
    Failed { message: String },
}

/// Asks the provider whether a candidate key works, given the auth header value it would send.
pub trait KeyProbe: Sync {
    fn probe<'a>(
        &'a self,
        auth: &'a HeaderValue,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + 'a>>;
}

/// What the lifecycle needs to know about its upstream, fixed at startup.
#[derive(Debug, Clone)]
pub struct KeySettings {
    pub upstream: Arc<str>,
    /// What the durable history knows this key by: the upstream's name for a `key = …`
    /// upstream, `upstream/name` for each key of a pool.
    pub history: Arc<str>,
    /// The upstream's first key: the one whose state the upstream-wide key gauges
    /// (`keyproxy_key_usable`, `_generation`, `_loaded_…`, `_expiry_…`) show. A pool's other keys
    /// show theirs in `keyproxy_key_state` only, so no key overwrites another's.
    pub primary: bool,
    pub provider: Provider,
    /// The upstream's host, for lint (another provider's key is fine on that provider's host).
    pub host: String,
    /// What goes before the key in the auth header (`Bearer `).
    pub auth_prefix: String,
    pub source: KeySource,
    pub expiry: ExpiryPolicy,
    pub validate_on_rotate: bool,
    pub lint: LintMode,
}

/// What the lifecycle remembers between rotations.
#[derive(Debug, Default)]
struct Memory {
    last_attempt: Option<Attempt>,
    /// Digest of what the source held when last read: a re-read only rotates when the source changed,
    /// so a key set through the admin API is not undone by an unchanged file.
    last_source_digest: Option<[u8; 32]>,
    /// (generation, threshold) of the last expiry warning, so each is logged once.
    expiry_warned: Option<(u64, u32)>,
    /// The key in service as a retired key would be remembered (salted), ready to retire.
    in_service: Option<RetiredKey>,
    /// Expiries set with a rotation, by fingerprint (from the state store, and this run's).
    expiries: Vec<(String, SystemTime)>,
    /// Retired keys beyond the newest `RETIRED_KEPT` that requests are checked against: a source
    /// holding one is still refused.
    older_retired: Vec<RetiredKey>,
}

/// How an explicit rotation (admin API, `keyproxy rotate`) was asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct RotateOptions {
    /// Ask the provider first (`?probe=true`), besides `validate_on_rotate`.
    pub ask_provider: bool,
    /// Sent by `keyproxy rotate` rather than another admin API client.
    pub from_cli: bool,
    /// The new key's expiry (`--expires-at`, `--max-age`, `?expires_at=`).
    pub expires_at: Option<SystemTime>,
}

/// Where a candidate came from and what may be done with it.
struct Why<'a> {
    trigger: Trigger,
    who: &'static str,
    source: &'a str,
    /// An explicit rotation: it may reinstate a retired key, and it is written back to the source.
    explicit: bool,
    /// The key came from the configured source (so the config's simple `expires_at` may describe it).
    from_source: bool,
    expires_at: Option<SystemTime>,
    /// Keep the key itself in the state store (see `history::InService::stored`).
    keep: bool,
}

/// The app behind a request, for naming it when it sends a retired key: its `User-Agent`, else
/// its address. (An app that sent a retired key sent no client token, so there is no
/// `[[clients]]` name to give.) Holds references and looks nothing up until a name is needed, so
/// the common request pays nothing for it.
#[derive(Debug, Clone, Copy)]
pub struct App<'a> {
    pub headers: &'a http::HeaderMap,
    pub peer: SocketAddr,
}

impl App<'_> {
    pub fn name(&self) -> String {
        let agent = self
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|ua| !ua.is_empty());
        match agent {
            Some(ua) => {
                let ua: String = ua.chars().take(120).collect();
                format!("user-agent {}", crate::redact::mask(&ua))
            }
            None => format!("address {}", self.peer.ip()),
        }
    }
}

static FORGETFUL: Forgetful = Forgetful;

/// A rotation that went through (or found nothing to do).
#[derive(Debug, Clone)]
pub struct Rotated {
    pub fingerprint: Fingerprint,
    pub generation: u64,
    /// False when the candidate was the key already in use.
    pub changed: bool,
    pub warnings: Vec<Finding>,
}

pub struct KeyLifecycle {
    settings: KeySettings,
    /// The key in service; requests read it lock-free.
    pub store: KeyStore,
    /// Keys rotated out, newest first; read lock-free on the request path.
    retired: ArcSwap<Vec<RetiredKey>>,
    memory: Mutex<Memory>,
    /// One rotation at a time (a probe may be in flight).
    rotating: tokio::sync::Mutex<()>,
    metrics: Arc<UpstreamMetrics>,
    /// The durable memory, attached once before the first load (none: `Forgetful`).
    history: OnceLock<Arc<dyn KeyHistory>>,
    /// One key of several: without a key it leaves requests to the others (see `in_pool`).
    pooled: std::sync::atomic::AtomicBool,
    /// A token credential's refresh state (`None`: a key read from its source).
    minted: Option<Refresher>,
}

impl KeyLifecycle {
    pub fn new(settings: KeySettings, metrics: Arc<UpstreamMetrics>) -> KeyLifecycle {
        let minted = settings
            .source
            .minted()
            .map(|m| Refresher::new(Arc::clone(m)));
        KeyLifecycle {
            store: KeyStore::new(&settings.source.to_string()),
            settings,
            retired: ArcSwap::from_pointee(Vec::new()),
            memory: Mutex::new(Memory::default()),
            rotating: tokio::sync::Mutex::new(()),
            metrics,
            history: OnceLock::new(),
            pooled: std::sync::atomic::AtomicBool::new(false),
            minted,
        }
    }

    /// Attach the state store before `load_initial`; later calls are ignored.
    pub fn attach_history(&self, history: Arc<dyn KeyHistory>) {
        let _ = self.history.set(history);
    }

    fn history(&self) -> &dyn KeyHistory {
        match self.history.get() {
            Some(h) => h.as_ref(),
            None => &FORGETFUL,
        }
    }

    fn salted(&self, key: &str) -> [u8; 32] {
        salted_digest(&self.history().salt(), key)
    }

    /// The retired key `key` is, if it is one.
    fn retired_match(&self, key: &str) -> Option<RetiredKey> {
        let retired = self.retired.load();
        let memory = self.memory();
        let candidates = || retired.iter().chain(memory.older_retired.iter());
        if !candidates().any(|r| r.len == key.len()) {
            return None;
        }
        let hash = self.salted(key);
        candidates().find(|r| r.digest == hash).cloned()
    }

    /// The key in service (or why there is none): one lock-free load.
    #[inline]
    pub fn current(&self) -> Arc<KeyState> {
        self.store.current()
    }

    pub fn source(&self) -> &KeySource {
        &self.settings.source
    }

    /// A source that renews itself (an aws `credential_process`) is due to be read again: the set
    /// in service reached the point a token would be refreshed at (80 % of its life, or 5 minutes
    /// before it expires), or there is none yet.
    pub fn renewal_due(&self, now: SystemTime) -> bool {
        if !self.settings.source.renews_itself() {
            return false;
        }
        let state = self.store.current();
        let Some(key) = state.snapshot() else {
            return true;
        };
        key.expires_at.is_some_and(|at| {
            let life = at.duration_since(key.loaded_at).unwrap_or_default();
            now >= key.loaded_at + super::minted::refresh::refresh_after(life, 0.0)
        })
    }

    pub fn validate_on_rotate(&self) -> bool {
        self.settings.validate_on_rotate
    }

    /// Keys rotated out, newest first.
    pub fn retired(&self) -> arc_swap::Guard<Arc<Vec<RetiredKey>>> {
        self.retired.load()
    }

    /// Startup: recall what the state store knows, read the source, lint, and install — or record
    /// why there is no usable key. A source still holding a retired key is refused; a key rotated
    /// in through the admin API and kept in the store is used instead when there is one.
    pub async fn load_initial(&self) -> Result<Rotated, Refusal> {
        if let Some(minted) = self.refresh(Trigger::Startup, None).await {
            return minted;
        }
        let _one_at_a_time = self.rotating.lock().await;
        let source = self.settings.source.to_string();
        if let Some(warning) = self.settings.source.permission_warning() {
            tracing::warn!(upstream = %self.settings.upstream, key = self.pool_key(), "{warning}");
        }
        let stored = self.remember(self.history().recall(&self.settings.history));
        let startup = |from_source: bool, keep: bool| Why {
            trigger: Trigger::Startup,
            who: history::who(Trigger::Startup, false),
            source: &source,
            explicit: false,
            from_source,
            expires_at: None,
            keep,
        };
        let secret = match self.settings.source.read().await {
            Ok(secret) => secret,
            Err(e) => {
                if let Some(stored) = stored {
                    tracing::warn!(upstream = %self.settings.upstream, key = self.pool_key(), "{e}; using the key rotated in through the admin API and kept in the state store ({})", Fingerprint::of(stored.expose()));
                    return self.admit(&stored, &startup(false, true), None).await;
                }
                let refusal = Refusal::Source(e.to_string());
                self.unusable(Reason::MissingKey, refusal.to_string());
                self.record_rejection(Trigger::Startup, "startup", None, &refusal);
                return Err(refusal);
            }
        };
        self.memory().last_source_digest = Some(digest(secret.expose()));
        if let Some(old) = self.retired_match(secret.expose()) {
            let refusal = self.retired_refusal(&source, &old);
            if let Some(stored) = stored.filter(|k| self.retired_match(k.expose()).is_none()) {
                tracing::warn!(
                    upstream = %self.settings.upstream, key = self.pool_key(),
                    "{refusal}; until then the key rotated in through the admin API and kept in the state store ({}) is used",
                    Fingerprint::of(stored.expose())
                );
                return self.admit(&stored, &startup(false, true), None).await;
            }
            return Err(self.refuse(Trigger::Startup, "startup", Some(&old.fingerprint), refusal));
        }
        self.admit(&secret, &startup(true, false), None).await
    }

    /// Take in what the store recalled; the key kept in it, if any.
    fn remember(&self, recalled: Recalled) -> Option<Secret> {
        let mut retired = recalled.retired;
        let older = retired.split_off(retired.len().min(RETIRED_KEPT));
        self.retired.store(Arc::new(retired));
        self.store.resume_after(recalled.last_generation);
        let mut memory = self.memory();
        memory.expiries = recalled.expiries;
        memory.older_retired = older;
        let in_service = recalled.in_service?;
        memory.in_service = Some(RetiredKey {
            digest: in_service.hash,
            len: in_service.len,
            fingerprint: in_service.fingerprint,
            generation: in_service.generation,
            retired_at: SystemTime::now(),
        });
        in_service.stored
    }

    fn retired_refusal(&self, source: &str, old: &RetiredKey) -> Refusal {
        let mut when = crate::time::rfc3339_string(old.retired_at);
        // 2026-12-01T10:00:00Z -> 2026-12-01T10:00Z: minutes are enough to find it in the history.
        if when.len() == 20 {
            when.replace_range(16..19, "");
        }
        Refusal::Retired {
            message: format!(
                "{source} still holds the key retired at {when} ({}); update it",
                old.fingerprint
            ),
        }
    }

    /// Validate, probe when asked to (or when the upstream has `validate_on_rotate`), then swap in.
    /// On refusal the old key stays in service.
    pub async fn rotate(
        &self,
        secret: Secret,
        trigger: Trigger,
        ask_provider: bool,
        probe: &dyn KeyProbe,
    ) -> Result<Rotated, Refusal> {
        let options = RotateOptions {
            ask_provider,
            ..RotateOptions::default()
        };
        self.rotate_with(secret, trigger, options, probe).await
    }

    /// An explicit rotation: it sticks (a `file` source is rewritten atomically; for `env` and
    /// `command` the key is kept in the state store and used at the next start), and it may
    /// reinstate a retired key.
    pub async fn rotate_with(
        &self,
        secret: Secret,
        trigger: Trigger,
        options: RotateOptions,
        probe: &dyn KeyProbe,
    ) -> Result<Rotated, Refusal> {
        if let Some(minted) = &self.minted {
            return Err(self.refuse_manual_rotation(minted.source()));
        }
        let _one_at_a_time = self.rotating.lock().await;
        let source = format!("POST /keys/{}", self.settings.upstream);
        let why = Why {
            trigger,
            who: history::who(trigger, options.from_cli),
            source: &source,
            explicit: true,
            from_source: false,
            expires_at: options.expires_at,
            keep: false,
        };
        let probe = (options.ask_provider || self.settings.validate_on_rotate).then_some(probe);
        self.admit(&secret, &why, probe).await
    }

    /// Re-read the key source. With `force` (SIGHUP) the source wins whenever it differs from the key
    /// in use; otherwise (file events, periodic) only when the source itself changed since it was last
    /// read, so a key set through the admin API is not undone by an untouched file.
    /// `None` when there was nothing to do.
    /// `probe` is asked when the upstream has `validate_on_rotate`.
    pub async fn reload(
        &self,
        trigger: Trigger,
        force: bool,
        probe: &dyn KeyProbe,
    ) -> Option<Result<Rotated, Refusal>> {
        // A token credential's secret is read at each refresh: SIGHUP mints a token now (the
        // secret just replaced is used at once), other triggers leave it to the schedule.
        if self.minted.is_some() {
            return match force {
                true => self.refresh(trigger, None).await,
                false => None,
            };
        }
        let _one_at_a_time = self.rotating.lock().await;
        let source = self.settings.source.to_string();
        let secret = match self.settings.source.read().await {
            Ok(secret) => secret,
            Err(e) => {
                let refusal = Refusal::Source(e.to_string());
                let repeated =
                    self.memory().last_attempt.as_ref().is_some_and(|a| {
                        a.finding.as_deref() == Some(refusal.to_string().as_str())
                    });
                if repeated {
                    return None;
                }
                if self.store.current().snapshot().is_none() {
                    self.unusable(Reason::MissingKey, refusal.to_string());
                }
                self.record_rejection(trigger, history::who(trigger, false), None, &refusal);
                return Some(Err(refusal));
            }
        };
        let source_digest = digest(secret.expose());
        {
            let mut lifecycle = self.memory();
            if !force && lifecycle.last_source_digest == Some(source_digest) {
                return None;
            }
            lifecycle.last_source_digest = Some(source_digest);
        }
        let why = Why {
            trigger,
            who: history::who(trigger, false),
            source: &source,
            explicit: false,
            from_source: true,
            expires_at: None,
            keep: false,
        };
        Some(
            self.admit(
                &secret,
                &why,
                self.settings.validate_on_rotate.then_some(probe),
            )
            .await,
        )
    }

    /// The one way in: unchanged, or refused (retired, lint, probe), or installed.
    async fn admit(
        &self,
        secret: &Secret,
        why: &Why<'_>,
        probe: Option<&dyn KeyProbe>,
    ) -> Result<Rotated, Refusal> {
        let (trigger, source) = (why.trigger, why.source);
        let fingerprint = Fingerprint::of(secret.expose());
        if let Some(current) = self.store.current().snapshot() {
            if current.digest == digest(secret.expose()) {
                return Ok(Rotated {
                    fingerprint,
                    generation: current.generation,
                    changed: false,
                    warnings: current.warnings.to_vec(),
                });
            }
        }
        if !why.explicit {
            if let Some(old) = self.retired_match(secret.expose()) {
                let refusal = self.retired_refusal(source, &old);
                return Err(self.refuse(trigger, why.who, Some(&fingerprint), refusal));
            }
        }
        let warnings = self
            .validate(secret, source)
            .map_err(|refusal| self.refuse(trigger, why.who, Some(&fingerprint), refusal))?;
        if let Some(probe) = probe {
            if let Err(refusal) = self
                .probe_candidate(probe, secret, &fingerprint, source)
                .await
            {
                return Err(self.refuse(trigger, why.who, Some(&fingerprint), refusal));
            }
        }
        self.install(secret, why, warnings)
    }

    /// Record a refusal (and, with no key in service yet, why there is none); hand it back.
    fn refuse(
        &self,
        trigger: Trigger,
        who: &str,
        fingerprint: Option<&Fingerprint>,
        refusal: Refusal,
    ) -> Refusal {
        if self.store.current().snapshot().is_none() {
            self.unusable(refusal.reason(), refusal.to_string());
        }
        self.record_rejection(trigger, who, fingerprint, &refusal);
        refusal
    }

    /// Lint the candidate: the warnings to keep, or the refusal.
    fn validate(&self, secret: &Secret, source: &str) -> Result<Vec<Finding>, Refusal> {
        if matches!(self.settings.source, KeySource::Aws(_))
            && !super::aws::is_bundle(secret.expose())
        {
            return Err(Refusal::Lint {
                code: LintCode::AwsCredentials,
                message: format!("upstream {} signs its requests with the AWS credentials of its aws table; a key from {source} cannot replace them: update the sources the aws table names", self.settings.upstream),
            });
        }
        let findings = lint::lint(
            secret.expose(),
            self.settings.provider,
            &self.settings.host,
            source,
            self.settings.lint,
        );
        if let Some(error) = lint::first_error(&findings) {
            return Err(Refusal::Lint {
                code: error.code,
                message: error.message.clone(),
            });
        }
        for warning in findings.iter().filter(|f| f.severity == Severity::Warning) {
            tracing::warn!(upstream = %self.settings.upstream, key = self.pool_key(), lint = %warning.code, "{}", warning.message);
        }
        Ok(findings)
    }

    async fn probe_candidate(
        &self,
        probe: &dyn KeyProbe,
        secret: &Secret,
        fingerprint: &Fingerprint,
        source: &str,
    ) -> Result<(), Refusal> {
        let header = header_value(secret, &self.settings.auth_prefix, source).map_err(|e| {
            Refusal::Lint {
                code: LintCode::BadCharacters,
                message: e.to_string(),
            }
        })?;
        match probe.probe(&header).await {
            ProbeOutcome::Accepted { .. } => Ok(()),
            ProbeOutcome::Refused { reason, message, .. } => Err(Refusal::Probe {
                reason,
                message: format!("{} refused the new key {fingerprint} ({reason}): {message}", self.settings.upstream),
            }),
            ProbeOutcome::Failed { message } => Err(Refusal::ProbeFailed {
                message: format!("the new key {fingerprint} could not be verified: {message} (retry, or rotate without the probe)"),
            }),
        }
    }

    fn install(
        &self,
        secret: &Secret,
        why: &Why<'_>,
        warnings: Vec<Finding>,
    ) -> Result<Rotated, Refusal> {
        let (trigger, source) = (why.trigger, why.source);
        let key = secret.expose();
        let fingerprint = Fingerprint::of(key);
        // Checked before anything is written back to the source or the store.
        header_value(secret, &self.settings.auth_prefix, source).map_err(|e| {
            let refusal = Refusal::Lint {
                code: LintCode::BadCharacters,
                message: e.to_string(),
            };
            self.refuse(trigger, why.who, Some(&fingerprint), refusal)
        })?;
        let now = SystemTime::now();
        let hash = self.salted(key);
        let (expires_at, previous) = {
            let memory = self.memory();
            let set_with_rotation = why.expires_at.or_else(|| {
                memory
                    .expiries
                    .iter()
                    .find(|(fp, _)| fp == fingerprint.as_str())
                    .map(|(_, at)| *at)
            });
            let facts = expiry::KeyFacts {
                fingerprint: fingerprint.as_str(),
                set_with_rotation,
                the_sources_key: why.from_source && trigger == Trigger::Startup,
            };
            (
                expiry::expires_at_of(key, &self.settings.expiry, &facts, now),
                memory.in_service.clone(),
            )
        };
        // The same key as before a restart keeps its generation.
        let same_as_before = previous
            .as_ref()
            .filter(|p| p.digest == hash)
            .map(|p| p.generation);
        if let Some(generation) = same_as_before {
            self.store.resume_after(generation.saturating_sub(1));
        }
        let keep = self.write_back(secret, why);
        let meta = KeyMeta {
            source: source.to_owned(),
            expires_at,
            warnings: warnings.clone(),
        };
        // Recorded before it is served: a request (or a reader of the store) that sees the new key
        // finds the rotation and the retired key written already, even after a kill -9.
        let state = self
            .store
            .prepare(secret, &self.settings.auth_prefix, meta)
            .map_err(|e| {
                let refusal = Refusal::Lint {
                    code: LintCode::BadCharacters,
                    message: e.to_string(),
                };
                self.refuse(trigger, why.who, Some(&fingerprint), refusal)
            })?;
        let Some(new) = state.snapshot() else {
            return Err(Refusal::Source("the key store did not take the key".into()));
        };
        let retired = previous.filter(|p| p.digest != hash).map(|mut p| {
            p.retired_at = now;
            p
        });
        self.retire(retired.clone(), hash);
        {
            let mut memory = self.memory();
            memory.in_service = Some(RetiredKey {
                digest: hash,
                len: key.len(),
                fingerprint: new.fingerprint.clone(),
                generation: new.generation,
                retired_at: now,
            });
            if let Some(at) = why.expires_at {
                memory.expiries.retain(|(fp, _)| fp != fingerprint.as_str());
                memory.expiries.push((fingerprint.to_string(), at));
            }
        }
        // The key that was in service before a restart is not a new rotation (and is stored already).
        if same_as_before.is_none() {
            let applied = Applied {
                upstream: &self.settings.history,
                at: now,
                trigger,
                who: why.who,
                retired: retired.as_ref(),
                fingerprint: &new.fingerprint,
                generation: new.generation,
                hash,
                len: key.len(),
                expires_at,
                explicit_expiry: why.expires_at.is_some(),
                keep: keep.then_some(secret),
            };
            if let Err(e) = self.history().applied(&applied) {
                tracing::error!(upstream = %self.settings.upstream, key = self.pool_key(), "the state store could not record the rotation ({e}); the new key is in service, and after a restart keyproxy may not remember it");
            }
        }
        self.store.swap_in(Arc::clone(&state));
        match &retired {
            Some(old) => tracing::info!(
                upstream = %self.settings.upstream, key = self.pool_key(),
                trigger = trigger.as_str(),
                who = why.who,
                from = %old.fingerprint,
                from_generation = old.generation,
                to = %new.fingerprint,
                to_generation = new.generation,
                "key rotated"
            ),
            None => {
                tracing::info!(upstream = %self.settings.upstream, key = self.pool_key(), trigger = trigger.as_str(), fingerprint = %new.fingerprint, generation = new.generation, source = %new.source, "key loaded")
            }
        }
        self.publish(new);
        self.record_applied(trigger, new);
        self.check_expiry(SystemTime::now());
        Ok(Rotated {
            fingerprint: new.fingerprint.clone(),
            generation: new.generation,
            changed: true,
            warnings,
        })
    }

    /// Make an explicit rotation stick: rewrite a `file` source atomically; otherwise (or when the
    /// file cannot be written) keep the key in the state store. True when the store should keep it.
    fn write_back(&self, secret: &Secret, why: &Why<'_>) -> bool {
        if !why.explicit {
            return why.keep;
        }
        let upstream = &self.settings.upstream;
        let kept_where = if self.history().durable() {
            "it is kept in the state store and used at the next start"
        } else {
            "there is no state store, so it lasts until keyproxy restarts"
        };
        match &self.settings.source {
            KeySource::File(path) => match super::source::write_atomically(path, secret) {
                Ok(()) => {
                    self.memory().last_source_digest = Some(digest(secret.expose()));
                    false
                }
                Err(e) => {
                    tracing::warn!(upstream = %upstream, key = self.pool_key(), "cannot rewrite the key file {} ({e}); {kept_where}", path.display());
                    true
                }
            },
            other => {
                tracing::warn!(upstream = %upstream, key = self.pool_key(), "{other} still holds the key this rotation retired; {kept_where}; update {other}");
                true
            }
        }
    }

    /// Remember `old` as retired (newest first) and forget `now_in_service` as retired, should an
    /// explicit rotation have reinstated it.
    fn retire(&self, old: Option<RetiredKey>, now_in_service: [u8; 32]) {
        let current = self.retired.load();
        if old.is_none() && !current.iter().any(|r| r.digest == now_in_service) {
            return;
        }
        let newest = old.as_ref().map(|o| o.digest);
        let mut retired: Vec<RetiredKey> = Vec::with_capacity(RETIRED_KEPT + 1);
        retired.extend(old);
        retired.extend(
            current
                .iter()
                .filter(|r| r.digest != now_in_service && Some(r.digest) != newest)
                .cloned(),
        );
        let older = retired.split_off(retired.len().min(RETIRED_KEPT));
        {
            let mut memory = self.memory();
            memory.older_retired.retain(|r| r.digest != now_in_service);
            memory.older_retired.extend(older);
        }
        self.retired.store(Arc::new(retired));
    }

    fn publish(&self, key: &KeySnapshot) {
        if !self.settings.primary {
            return;
        }
        self.metrics.key_generation.set(key.generation as i64);
        self.metrics
            .key_loaded
            .set(expiry::unix_seconds(key.loaded_at));
        self.metrics
            .set_expiry(key.expires_at.map(expiry::unix_seconds));
        self.metrics.key_usable.set(1);
    }

    fn unusable(&self, reason: Reason, message: String) {
        let pooled = self.pooled.load(std::sync::atomic::Ordering::Relaxed);
        if pooled {
            let name = self.pool_key().unwrap_or_default();
            tracing::warn!(upstream = %self.settings.upstream, key = name, reason = %reason, "key {name} has no usable key: {message}; requests use the pool's other keys");
        } else {
            tracing::error!(
                upstream = %self.settings.upstream, key = self.pool_key(),
                reason = %reason,
                "NO USABLE KEY: {message}. Requests to this upstream get 503 and /readyz stays 503 until it is fixed."
            );
        }
        self.store.mark_unavailable(Unavailable {
            reason,
            message,
            source: self.settings.source.to_string().into(),
        });
        // In a pool the upstream still has a key while another is loaded (`/readyz` says which).
        if self.settings.primary && !pooled {
            self.metrics.key_usable.set(0);
        }
    }

    fn record_rejection(
        &self,
        trigger: Trigger,
        who: &str,
        fingerprint: Option<&Fingerprint>,
        refusal: &Refusal,
    ) {
        let in_service = self.store.current();
        let kept = in_service.snapshot();
        match kept {
            Some(k) => tracing::warn!(
                upstream = %self.settings.upstream, key = self.pool_key(),
                trigger = trigger.as_str(),
                code = refusal.code(),
                kept = %k.fingerprint,
                "key rotation refused: {refusal}; the key in use ({}, generation {}) stays",
                k.fingerprint,
                k.generation
            ),
            None => {
                tracing::warn!(upstream = %self.settings.upstream, key = self.pool_key(), trigger = trigger.as_str(), code = refusal.code(), "key refused: {refusal}")
            }
        }
        self.metrics
            .rotation(trigger.as_str(), RotationResult::Rejected.as_str());
        let now = SystemTime::now();
        self.history().refused(&Refused {
            upstream: &self.settings.history,
            at: now,
            trigger,
            who,
            fingerprint,
            kept: kept.map(|k| (&k.fingerprint, k.generation)),
            code: refusal.code(),
            sentence: &refusal.to_string(),
        });
        self.memory().last_attempt = Some(Attempt {
            at: now,
            trigger,
            result: RotationResult::Rejected,
            fingerprint: fingerprint.map(ToString::to_string),
            generation: kept.map(|k| k.generation),
            code: Some(refusal.code().to_owned()),
            finding: Some(refusal.to_string()),
        });
    }

    /// Warn once per threshold (30, 7, 1 days before, and at expiry) for the key in use.
    pub fn check_expiry(&self, now: SystemTime) {
        // A token expiring within the hour is the plan, not news: its refresher replaces it.
        if self.minted.is_some() {
            return;
        }
        let state = self.store.current();
        let Some(key) = state.snapshot() else { return };
        let Some(at) = key.expires_at else { return };
        let Some(threshold) = expiry::threshold(expiry::days_left(at, now)) else {
            return;
        };
        // Nor is a session that is fetched again before it expires, until it did expire.
        if threshold > 0 && self.settings.source.renews_itself() {
            return;
        }
        {
            let mut lifecycle = self.memory();
            if let Some((generation, warned)) = lifecycle.expiry_warned {
                if generation == key.generation && warned <= threshold {
                    return;
                }
            }
            lifecycle.expiry_warned = Some((key.generation, threshold));
        }
        let when = expiry::describe(at, now);
        if threshold == 0 {
            tracing::warn!(
                upstream = %self.settings.upstream, key = self.pool_key(),
                fingerprint = %key.fingerprint,
                "the key {} expired {when}; requests still go, and the provider will refuse them: create a new key and rotate it in (update {}, or `keyproxy rotate`)",
                key.fingerprint,
                key.source
            );
        } else {
            tracing::warn!(
                upstream = %self.settings.upstream, key = self.pool_key(),
                fingerprint = %key.fingerprint,
                warned_at_days = threshold,
                "the key {} expires {when}; create a new key and rotate it in before then (update {}, or `keyproxy rotate`)",
                key.fingerprint,
                key.source
            );
        }
    }

    /// Compare the credential the app sent (before it is stripped) with the keys keyproxy knows.
    /// A hash only when the length matches a known key.
    pub fn observe_client_credential(&self, sent: &str, app: App<'_>, key: &KeySnapshot) {
        let retired = self.retired.load();
        let seen = if sent.len() == key.len && digest(sent) == key.digest {
            CredentialMatch::Current
        } else if !retired.iter().any(|r| r.len == sent.len()) {
            CredentialMatch::Unknown
        } else {
            let hash = self.salted(sent);
            match retired.iter().find(|r| r.digest == hash) {
                Some(old) => {
                    self.sighted(old, app);
                    CredentialMatch::Retired
                }
                None => CredentialMatch::Unknown,
            }
        };
        self.metrics.credential(seen);
    }

    /// An app sent a retired key: say so, naming the app, and have the store count it.
    fn sighted(&self, old: &RetiredKey, app: App<'_>) {
        let when = humantime::format_rfc3339_seconds(old.retired_at);
        let name = app.name();
        tracing::warn!(
            client = %app.peer,
            app = %name,
            upstream = %self.settings.upstream, key = self.pool_key(),
            retired_key = %old.fingerprint,
            rotated_out_at = %when,
            "this app ({name}) still holds the key that was rotated out at {when} ({}); remove it from the app — keyproxy supplies the key",
            old.fingerprint
        );
        self.history().sighted(Sighting {
            upstream: Arc::clone(&self.settings.history),
            fingerprint: old.fingerprint.clone(),
            app: name,
            at: SystemTime::now(),
        });
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last rotation attempt, for status and diagnosis.
    pub fn last_attempt(&self) -> Option<Attempt> {
        self.memory().last_attempt.clone()
    }

    /// Is there a usable key? (`/readyz`)
    pub fn key_problem(&self) -> Option<Unavailable> {
        match &*self.store.current() {
            KeyState::Ready(_) => None,
            KeyState::Unavailable(why) => Some(why.clone()),
        }
    }
}

/// A pool's run-time membership: a key added through the admin API joins, a key retired from the
/// pool leaves for good (its key remembered as retired).
impl KeyLifecycle {
    /// The key's name in its pool, for log lines: `None` for the one key of a `key = …`
    /// upstream, which is named after the upstream once a key is added to it.
    pub fn pool_key(&self) -> Option<&str> {
        let named = self
            .settings
            .history
            .strip_prefix(&*self.settings.upstream)
            .and_then(|rest| rest.strip_prefix('/'));
        match named {
            Some(name) => Some(name),
            None if self.pooled.load(std::sync::atomic::Ordering::Relaxed) => {
                Some(&self.settings.upstream)
            }
            None => None,
        }
    }

    /// This key is one of several of its upstream (a pool, or a `key = …` upstream a key was
    /// added to): without a key of its own it says so as one key of a pool, not as the upstream.
    pub fn in_pool(&self) {
        self.pooled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// What the durable history knows this key by (`upstream` or `upstream/name`).
    pub fn history_name(&self) -> &str {
        &self.settings.history
    }

    /// A key joining a pool at run time: take in what the store remembers of its name (retired
    /// keys, generations) before its first key is admitted through `rotate_with`.
    pub fn recall(&self) {
        let _ = self.remember(self.history().recall(&self.settings.history));
    }

    /// Take the key in service out of use for good (it leaves its pool): it is remembered as
    /// retired — an app still sending it is told, a source still holding it is refused — and
    /// this lifecycle holds no key until its source yields another one.
    pub async fn retire_in_service(&self, who: &'static str, why: &str) -> Option<RetiredKey> {
        let _one_at_a_time = self.rotating.lock().await;
        let now = SystemTime::now();
        let mut old = self.memory().in_service.take()?;
        old.retired_at = now;
        self.retire(Some(old.clone()), [0; 32]);
        self.history().retired(&history::Retirement {
            upstream: &self.settings.history,
            at: now,
            who,
            retired: &old,
        });
        self.store.mark_unavailable(Unavailable {
            reason: Reason::RevokedKey,
            message: format!("the key {} was retired: {why}", old.fingerprint),
            source: self.settings.source.to_string().into(),
        });
        self.metrics
            .rotation(Trigger::Admin.as_str(), RotationResult::Applied.as_str());
        // The upstream-wide expiry gauge must not keep warning about a key no longer in use.
        if self.settings.primary {
            self.metrics.set_expiry(None);
        }
        Some(old)
    }

    /// `sent` is one of this key's retired keys: the app is named (as `observe_client_credential`
    /// does) and true is returned.
    pub fn sighted_retired(&self, sent: &str, app: App<'_>) -> bool {
        let retired = self.retired.load();
        if !retired.iter().any(|r| r.len == sent.len()) {
            return false;
        }
        let hash = self.salted(sent);
        match retired.iter().find(|r| r.digest == hash) {
            Some(old) => {
                self.sighted(old, app);
                true
            }
            None => false,
        }
    }
}

/// Token credentials (`key::minted`): minted at startup and by the refresher, never read from a
/// source nor rotated by hand. Their tokens never reach the durable history: a token lives an hour
/// and is worthless after, so recording each would fill the store with rows nobody can act on;
/// what a person manages (the client secret, the service-account key) lives in its own source.
impl KeyLifecycle {
    /// The refresh state of a token credential (`None`: a key read from its source).
    pub fn refresher(&self) -> Option<&Refresher> {
        self.minted.as_ref()
    }

    /// What /status shows about a token credential.
    pub fn credential_status(&self) -> Option<RefreshStatus> {
        self.minted.as_ref().map(Refresher::status)
    }

    /// Mint a token and swap it in (`None`: not a token credential). One at a time with any
    /// rotation. With `seen` (the generation a request was refused with), a refresh another
    /// request made meanwhile is taken as it is: concurrent 401s share one refresh; and refusals
    /// refresh at most once per `REFUSAL_REFRESH_EVERY` (else the token in service stays).
    pub async fn refresh(
        &self,
        trigger: Trigger,
        seen: Option<u64>,
    ) -> Option<Result<Rotated, Refusal>> {
        let refresher = self.minted.as_ref()?;
        let _one_at_a_time = self.rotating.lock().await;
        if let Some(seen) = seen {
            let state = self.store.current();
            let taken = |k: &&KeySnapshot| {
                k.generation != seen || !refresher.take_refusal_refresh(std::time::Instant::now())
            };
            if let Some(current) = state.snapshot().filter(taken) {
                return Some(Ok(Rotated {
                    fingerprint: current.fingerprint.clone(),
                    generation: current.generation,
                    changed: false,
                    warnings: Vec::new(),
                }));
            }
        }
        Some(match refresher.source().mint().await {
            Ok(minted) => self.install_minted(refresher, trigger, minted),
            Err(error) => {
                let why = refresher.explain(&error);
                Err(self.refresh_refused(refresher, trigger, why))
            }
        })
    }

    fn install_minted(
        &self,
        refresher: &Refresher,
        trigger: Trigger,
        minted: Minted,
    ) -> Result<Rotated, Refusal> {
        let meta = KeyMeta {
            source: self.settings.source.to_string(),
            expires_at: Some(minted.expires_at),
            warnings: Vec::new(),
        };
        let state = match self
            .store
            .prepare(&minted.token, &self.settings.auth_prefix, meta)
        {
            Ok(state) => state,
            Err(_) => {
                let why = Explained {
                    reason: Reason::CredentialRefreshFailed,
                    sentence: format!("{} issued a token that cannot be sent in an HTTP header (control characters or line breaks)", refresher.source()),
                };
                return Err(self.refresh_refused(refresher, trigger, why));
            }
        };
        let Some(new) = state.snapshot() else {
            return Err(Refusal::Source(
                "the key store did not take the token".into(),
            ));
        };
        self.store.swap_in(Arc::clone(&state));
        let now = SystemTime::now();
        refresher.succeeded(now, minted.expires_at, minted.lifetime);
        tracing::info!(
            upstream = %self.settings.upstream,
            trigger = trigger.as_str(),
            credential = refresher.source().kind().as_str(),
            token = %new.fingerprint,
            generation = new.generation,
            expires_at = %crate::time::rfc3339_string(minted.expires_at),
            "token minted"
        );
        self.publish(new);
        self.record_applied(trigger, new);
        self.metrics.credential_refresh("ok");
        Ok(Rotated {
            fingerprint: new.fingerprint.clone(),
            generation: new.generation,
            changed: true,
            warnings: Vec::new(),
        })
    }

    /// No token this time: keep serving the one in service while it is valid, else say there is
    /// no usable key, with the cause.
    fn refresh_refused(&self, refresher: &Refresher, trigger: Trigger, why: Explained) -> Refusal {
        let now = SystemTime::now();
        let retry = refresher.failed(now, &why);
        self.metrics
            .rotation(trigger.as_str(), RotationResult::Rejected.as_str());
        self.metrics.credential_refresh("failed");
        let state = self.store.current();
        let in_service = state.snapshot();
        match in_service.filter(|k| k.expires_at.is_some_and(|at| at > now)) {
            Some(k) => tracing::warn!(
                upstream = %self.settings.upstream,
                trigger = trigger.as_str(),
                reason = why.reason.as_str(),
                kept = %k.fingerprint,
                "refreshing the token failed: {}; the token in service ({}) is valid until {} and stays; retrying in {}s",
                why.sentence,
                k.fingerprint,
                k.expires_at.map(crate::time::rfc3339_string).unwrap_or_default(),
                retry.as_secs_f64().ceil()
            ),
            None => {
                // The last token minted, even when an earlier failure already took it out.
                let message = match refresher.status().token_expires_at {
                    Some(at) => format!(
                        "the token expired at {} and could not be refreshed: {}",
                        crate::time::rfc3339_string(at),
                        why.sentence
                    ),
                    None => why.sentence.clone(),
                };
                self.unusable(why.reason, message);
            }
        }
        self.memory().last_attempt = Some(Attempt {
            at: now,
            trigger,
            result: RotationResult::Rejected,
            fingerprint: None,
            generation: in_service.map(|k| k.generation),
            code: Some(why.reason.as_str().to_owned()),
            finding: Some(why.sentence.clone()),
        });
        Refusal::Refresh {
            reason: why.reason,
            message: why.sentence,
        }
    }

    /// Count a key swapped in (any key: this block's tokens and `install`'s keys) and remember it
    /// as the last attempt.
    fn record_applied(&self, trigger: Trigger, key: &KeySnapshot) {
        self.metrics
            .rotation(trigger.as_str(), RotationResult::Applied.as_str());
        self.memory().last_attempt = Some(Attempt {
            at: key.loaded_at,
            trigger,
            result: RotationResult::Applied,
            fingerprint: Some(key.fingerprint.to_string()),
            generation: Some(key.generation),
            code: None,
            finding: None,
        });
    }

    /// An explicit rotation of a token credential: refused, saying where its secret is rotated.
    fn refuse_manual_rotation(&self, source: &MintedSource) -> Refusal {
        let secret = match source {
            MintedSource::ClientCredentials { .. } => "client secret",
            MintedSource::ServiceAccount(_) => "service-account key",
        };
        let message = format!(
            "upstream {} mints its own short-lived tokens ({}), so there is no key to rotate in by hand: rotate the {secret} in its source ({}) and the next refresh uses it",
            self.settings.upstream,
            source.kind().as_str(),
            source.secret_source()
        );
        tracing::warn!(upstream = %self.settings.upstream, "rotation refused: {message}");
        Refusal::Minted { message }
    }
}
