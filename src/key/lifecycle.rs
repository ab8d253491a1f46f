//! A key's whole life at one upstream: where it comes from, the key in service (`KeyStore`), the
//! keys rotated out, and the one way a key gets in. Every trigger (startup, file watch, periodic
//! re-read, SIGHUP, admin API) ends in the same validate-then-`store()`; a refused key never
//! replaces the one in service. Rotated-out keys are remembered by hash, so an app still sending
//! one can be told. Asking the provider about a candidate is someone else's job: it comes in as a
//! `KeyProbe`, so this module sends nothing itself.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::HeaderValue;

use super::expiry::{self, ExpiryPolicy};
use super::lint::{self, Finding, LintCode, LintMode, Severity};
use super::rotation::{Attempt, Refusal, RetiredKey, RotationResult, Trigger, RETIRED_KEPT};
use super::store::{digest, header_value, KeyMeta, Unavailable};
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
}

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
}

impl KeyLifecycle {
    pub fn new(settings: KeySettings, metrics: Arc<UpstreamMetrics>) -> KeyLifecycle {
        KeyLifecycle {
            store: KeyStore::new(&settings.source.to_string()),
            settings,
            retired: ArcSwap::from_pointee(Vec::new()),
            memory: Mutex::new(Memory::default()),
            rotating: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// The key in service (or why there is none): one lock-free load.
    #[inline]
    pub fn current(&self) -> Arc<KeyState> {
        self.store.current()
    }

    pub fn source(&self) -> &KeySource {
        &self.settings.source
    }

    pub fn validate_on_rotate(&self) -> bool {
        self.settings.validate_on_rotate
    }

    /// Keys rotated out, newest first.
    pub fn retired(&self) -> arc_swap::Guard<Arc<Vec<RetiredKey>>> {
        self.retired.load()
    }

    /// Startup: read the source, lint, and install, or record why there is no usable key.
    pub async fn load_initial(&self) -> Result<Rotated, Refusal> {
        let _one_at_a_time = self.rotating.lock().await;
        let source = self.settings.source.to_string();
        if let Some(warning) = self.settings.source.permission_warning() {
            tracing::warn!(upstream = %self.settings.upstream, "{warning}");
        }
        let secret = match self.settings.source.read().await {
            Ok(secret) => secret,
            Err(e) => {
                let refusal = Refusal::Source(e.to_string());
                self.unusable(Reason::MissingKey, refusal.to_string());
                self.record_rejection(Trigger::Startup, None, &refusal);
                return Err(refusal);
            }
        };
        self.memory().last_source_digest = Some(digest(secret.expose()));
        let fingerprint = Fingerprint::of(secret.expose());
        let warnings = match self.validate(&secret, &source) {
            Ok(warnings) => warnings,
            Err((reason, refusal)) => {
                self.unusable(reason, refusal.to_string());
                self.record_rejection(Trigger::Startup, Some(&fingerprint), &refusal);
                return Err(refusal);
            }
        };
        self.install(&secret, Trigger::Startup, &source, warnings)
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
        let _one_at_a_time = self.rotating.lock().await;
        let source = format!("POST /keys/{}", self.settings.upstream);
        let probe = (ask_provider || self.settings.validate_on_rotate).then_some(probe);
        self.rotate_locked(&secret, trigger, &source, probe).await
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
                self.record_rejection(trigger, None, &refusal);
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
        Some(
            self.rotate_locked(
                &secret,
                trigger,
                &source,
                self.settings.validate_on_rotate.then_some(probe),
            )
            .await,
        )
    }

    async fn rotate_locked(
        &self,
        secret: &Secret,
        trigger: Trigger,
        source: &str,
        probe: Option<&dyn KeyProbe>,
    ) -> Result<Rotated, Refusal> {
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
        let warnings = match self.validate(secret, source) {
            Ok(warnings) => warnings,
            Err((_, refusal)) => {
                self.record_rejection(trigger, Some(&fingerprint), &refusal);
                return Err(refusal);
            }
        };
        if let Some(probe) = probe {
            if let Err(refusal) = self
                .probe_candidate(probe, secret, &fingerprint, source)
                .await
            {
                self.record_rejection(trigger, Some(&fingerprint), &refusal);
                return Err(refusal);
            }
        }
        self.install(secret, trigger, source, warnings)
    }

    /// Lint the candidate: the warnings to keep, or the reason and refusal.
    fn validate(&self, secret: &Secret, source: &str) -> Result<Vec<Finding>, (Reason, Refusal)> {
        let findings = lint::lint(
            secret.expose(),
            self.settings.provider,
            &self.settings.host,
            source,
            self.settings.lint,
        );
        if let Some(error) = lint::first_error(&findings) {
            let reason = match error.code {
                LintCode::Empty => Reason::MissingKey,
                LintCode::WrongProvider => Reason::WrongProviderKey,
                _ => Reason::MalformedKey,
            };
            let refusal = Refusal::Lint {
                code: error.code,
                message: error.message.clone(),
            };
            return Err((reason, refusal));
        }
        for warning in findings.iter().filter(|f| f.severity == Severity::Warning) {
            tracing::warn!(upstream = %self.settings.upstream, lint = %warning.code, "{}", warning.message);
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
        trigger: Trigger,
        source: &str,
        warnings: Vec<Finding>,
    ) -> Result<Rotated, Refusal> {
        let previous = self.store.current();
        let first_key = self.store.generation() == 0;
        let expires_at = expiry::expires_at(&self.settings.expiry, first_key, SystemTime::now());
        let meta = KeyMeta {
            source: source.to_owned(),
            expires_at,
            warnings: warnings.clone(),
        };
        let state = self
            .store
            .install(secret, &self.settings.auth_prefix, meta)
            .map_err(|e| {
                let refusal = Refusal::Lint {
                    code: LintCode::BadCharacters,
                    message: e.to_string(),
                };
                if previous.snapshot().is_none() {
                    self.unusable(Reason::MalformedKey, refusal.to_string());
                }
                self.record_rejection(trigger, Some(&Fingerprint::of(secret.expose())), &refusal);
                refusal
            })?;
        let Some(new) = state.snapshot() else {
            return Err(Refusal::Source("the key store did not take the key".into()));
        };
        if let Some(old) = previous.snapshot() {
            self.retire(old);
            tracing::info!(
                upstream = %self.settings.upstream,
                trigger = trigger.as_str(),
                from = %old.fingerprint,
                from_generation = old.generation,
                to = %new.fingerprint,
                to_generation = new.generation,
                "key rotated"
            );
        } else {
            tracing::info!(upstream = %self.settings.upstream, trigger = trigger.as_str(), key = %new.fingerprint, generation = new.generation, source = %new.source, "key loaded");
        }
        self.publish(new);
        self.metrics
            .rotation(trigger.as_str(), RotationResult::Applied.as_str());
        self.memory().last_attempt = Some(Attempt {
            at: new.loaded_at,
            trigger,
            result: RotationResult::Applied,
            fingerprint: Some(new.fingerprint.to_string()),
            generation: Some(new.generation),
            code: None,
            finding: None,
        });
        self.check_expiry(SystemTime::now());
        Ok(Rotated {
            fingerprint: new.fingerprint.clone(),
            generation: new.generation,
            changed: true,
            warnings,
        })
    }

    fn retire(&self, old: &KeySnapshot) {
        let mut retired: Vec<RetiredKey> = Vec::with_capacity(RETIRED_KEPT);
        retired.push(RetiredKey {
            digest: old.digest,
            len: old.len,
            fingerprint: old.fingerprint.clone(),
            generation: old.generation,
            retired_at: SystemTime::now(),
        });
        retired.extend(self.retired.load().iter().take(RETIRED_KEPT - 1).cloned());
        self.retired.store(Arc::new(retired));
    }

    fn publish(&self, key: &KeySnapshot) {
        self.metrics.key_generation.set(key.generation as i64);
        self.metrics
            .key_loaded
            .set(expiry::unix_seconds(key.loaded_at));
        self.metrics
            .set_expiry(key.expires_at.map(expiry::unix_seconds));
        self.metrics.key_usable.set(1);
    }

    fn unusable(&self, reason: Reason, message: String) {
        tracing::error!(
            upstream = %self.settings.upstream,
            reason = %reason,
            "NO USABLE KEY: {message}. Requests to this upstream get 503 and /readyz stays 503 until it is fixed."
        );
        self.store.mark_unavailable(Unavailable {
            reason,
            message,
            source: self.settings.source.to_string().into(),
        });
        self.metrics.key_usable.set(0);
    }

    fn record_rejection(
        &self,
        trigger: Trigger,
        fingerprint: Option<&Fingerprint>,
        refusal: &Refusal,
    ) {
        let in_service = self.store.current();
        let kept = in_service.snapshot();
        match kept {
            Some(k) => tracing::warn!(
                upstream = %self.settings.upstream,
                trigger = trigger.as_str(),
                code = refusal.code(),
                kept = %k.fingerprint,
                "key rotation refused: {refusal}; the key in use ({}, generation {}) stays",
                k.fingerprint,
                k.generation
            ),
            None => {
                tracing::warn!(upstream = %self.settings.upstream, trigger = trigger.as_str(), code = refusal.code(), "key refused: {refusal}")
            }
        }
        self.metrics
            .rotation(trigger.as_str(), RotationResult::Rejected.as_str());
        self.memory().last_attempt = Some(Attempt {
            at: SystemTime::now(),
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
        let state = self.store.current();
        let Some(key) = state.snapshot() else { return };
        let Some(at) = key.expires_at else { return };
        let Some(threshold) = expiry::threshold(expiry::days_left(at, now)) else {
            return;
        };
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
                upstream = %self.settings.upstream,
                key = %key.fingerprint,
                "the key {} expired {when}; requests still go, and the provider will refuse them: create a new key and rotate it in (update {}, or `keyproxy rotate`)",
                key.fingerprint,
                key.source
            );
        } else {
            tracing::warn!(
                upstream = %self.settings.upstream,
                key = %key.fingerprint,
                warned_at_days = threshold,
                "the key {} expires {when}; create a new key and rotate it in before then (update {}, or `keyproxy rotate`)",
                key.fingerprint,
                key.source
            );
        }
    }

    /// Compare the credential the app sent (before it is stripped) with the keys keyproxy knows.
    /// A hash only when the length matches a known key.
    pub fn observe_client_credential(&self, sent: &str, peer: SocketAddr, key: &KeySnapshot) {
        let retired = self.retired.load();
        let worth_hashing = sent.len() == key.len || retired.iter().any(|r| r.len == sent.len());
        let seen = if !worth_hashing {
            CredentialMatch::Unknown
        } else {
            let d = digest(sent);
            if d == key.digest {
                CredentialMatch::Current
            } else if let Some(old) = retired.iter().find(|r| r.digest == d) {
                let when = humantime::format_rfc3339_seconds(old.retired_at);
                tracing::warn!(
                    client = %peer,
                    upstream = %self.settings.upstream,
                    retired_key = %old.fingerprint,
                    rotated_out_at = %when,
                    "this app still holds the key that was rotated out at {when} ({}); remove it from the app — keyproxy supplies the key",
                    old.fingerprint
                );
                CredentialMatch::Retired
            } else {
                CredentialMatch::Unknown
            }
        };
        self.metrics.credential(seen);
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
