//! An upstream's key lifecycle. Every trigger (startup, file watch, periodic re-read, SIGHUP, admin
//! API) ends in the same validate-then-`store()`; a refused key never replaces the one in service.
//! Rotated-out keys are remembered by hash, so an app still sending one can be told.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName};

use crate::headers::presented_credential;

use crate::key::expiry;
use crate::key::lint::{self, Finding, LintCode, Severity};
use crate::key::rotation::{Attempt, Refusal, RetiredKey, RotationResult, Trigger, RETIRED_KEPT};
use crate::key::store::{digest, header_value, KeyMeta, Unavailable};
use crate::key::{Fingerprint, KeySnapshot, KeyState, Secret};
use crate::metrics::CredentialMatch;
use crate::probe::{self, ProbeOutcome};
use crate::reason::Reason;
use crate::upstream::Upstream;

/// A rotation that went through (or found nothing to do).
#[derive(Debug, Clone)]
pub struct Rotated {
    pub fingerprint: Fingerprint,
    pub generation: u64,
    /// False when the candidate was the key already in use.
    pub changed: bool,
    pub warnings: Vec<Finding>,
}

impl Upstream {
    /// Startup: read the source, lint, and install, or record why there is no usable key.
    pub async fn load_initial(&self) -> Result<Rotated, Refusal> {
        let _one_at_a_time = self.rotating.lock().await;
        let source = self.key_source.to_string();
        if let Some(warning) = self.key_source.permission_warning() {
            tracing::warn!(upstream = %self.name, "{warning}");
        }
        let secret = match self.key_source.read().await {
            Ok(secret) => secret,
            Err(e) => {
                let refusal = Refusal::Source(e.to_string());
                self.unusable(Reason::MissingKey, refusal.to_string());
                self.record_rejection(Trigger::Startup, None, &refusal);
                return Err(refusal);
            }
        };
        self.lock_lifecycle().last_source_digest = Some(digest(secret.expose()));
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

    /// Validate, optionally probe, then swap in. On refusal the old key stays in service.
    pub async fn rotate(
        &self,
        secret: Secret,
        trigger: Trigger,
        probe: bool,
    ) -> Result<Rotated, Refusal> {
        let _one_at_a_time = self.rotating.lock().await;
        let source = format!("POST /keys/{}", self.name);
        self.rotate_locked(&secret, trigger, &source, probe).await
    }

    /// Re-read the key source. With `force` (SIGHUP) the source wins whenever it differs from the key
    /// in use; otherwise (file events, periodic) only when the source itself changed since it was last
    /// read, so a key set through the admin API is not undone by an untouched file.
    /// `None` when there was nothing to do.
    pub async fn reload(&self, trigger: Trigger, force: bool) -> Option<Result<Rotated, Refusal>> {
        let _one_at_a_time = self.rotating.lock().await;
        let source = self.key_source.to_string();
        let secret = match self.key_source.read().await {
            Ok(secret) => secret,
            Err(e) => {
                let refusal = Refusal::Source(e.to_string());
                let repeated = self
                    .lock_lifecycle()
                    .last_attempt
                    .as_ref()
                    .is_some_and(|a| a.finding.as_deref() == Some(refusal.to_string().as_str()));
                if repeated {
                    return None;
                }
                if self.key.current().snapshot().is_none() {
                    self.unusable(Reason::MissingKey, refusal.to_string());
                }
                self.record_rejection(trigger, None, &refusal);
                return Some(Err(refusal));
            }
        };
        let source_digest = digest(secret.expose());
        {
            let mut lifecycle = self.lock_lifecycle();
            if !force && lifecycle.last_source_digest == Some(source_digest) {
                return None;
            }
            lifecycle.last_source_digest = Some(source_digest);
        }
        Some(
            self.rotate_locked(&secret, trigger, &source, self.validate_on_rotate)
                .await,
        )
    }

    async fn rotate_locked(
        &self,
        secret: &Secret,
        trigger: Trigger,
        source: &str,
        probe: bool,
    ) -> Result<Rotated, Refusal> {
        let fingerprint = Fingerprint::of(secret.expose());
        if let Some(current) = self.key.current().snapshot() {
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
        if probe || self.validate_on_rotate {
            if let Err(refusal) = self.probe_candidate(secret, &fingerprint, source).await {
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
            self.provider,
            self.host(),
            source,
            self.lint,
        );
        if let Some(error) = lint::first_error(&findings) {
            let reason = match error.code {
                LintCode::Empty => Reason::MissingKey,
                LintCode::WrongProvider => Reason::WrongProviderKey,
                _ => Reason::MalformedKey,
            };
            let refusal = Refusal::Lint {
                code: error.code.as_str().to_owned(),
                message: error.message.clone(),
            };
            return Err((reason, refusal));
        }
        for warning in findings.iter().filter(|f| f.severity == Severity::Warning) {
            tracing::warn!(upstream = %self.name, lint = %warning.code, "{}", warning.message);
        }
        Ok(findings)
    }

    async fn probe_candidate(
        &self,
        secret: &Secret,
        fingerprint: &Fingerprint,
        source: &str,
    ) -> Result<(), Refusal> {
        let header =
            header_value(secret, &self.auth_prefix, source).map_err(|e| Refusal::Lint {
                code: LintCode::BadCharacters.as_str().to_owned(),
                message: e.to_string(),
            })?;
        match probe::probe(self, &header).await {
            ProbeOutcome::Accepted { .. } => Ok(()),
            ProbeOutcome::Refused { reason, message, .. } => Err(Refusal::Probe {
                code: reason.as_str().to_owned(),
                message: format!("{} refused the new key {fingerprint} ({reason}): {message}; the key in use stays", self.name),
            }),
            ProbeOutcome::Failed { message } => Err(Refusal::Probe {
                code: "probe_failed".to_owned(),
                message: format!("the new key {fingerprint} could not be verified: {message}; the key in use stays (retry, or rotate without the probe)"),
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
        let previous = self.key.current();
        let first_key = self.key.generation() == 0;
        let expires_at = expiry::expires_at(&self.expiry, first_key, SystemTime::now());
        let meta = KeyMeta {
            source: source.to_owned(),
            expires_at,
            warnings: warnings.clone(),
        };
        let state = self
            .key
            .install(secret, &self.auth_prefix, meta)
            .map_err(|e| {
                let refusal = Refusal::Lint {
                    code: LintCode::BadCharacters.as_str().to_owned(),
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
                upstream = %self.name,
                trigger = trigger.as_str(),
                from = %old.fingerprint,
                from_generation = old.generation,
                to = %new.fingerprint,
                to_generation = new.generation,
                "key rotated"
            );
        } else {
            tracing::info!(upstream = %self.name, trigger = trigger.as_str(), key = %new.fingerprint, generation = new.generation, source = %new.source, "key loaded");
        }
        self.publish(new);
        self.metrics
            .rotation(trigger.as_str(), RotationResult::Applied.as_str());
        self.lock_lifecycle().last_attempt = Some(Attempt {
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
            upstream = %self.name,
            reason = %reason,
            "NO USABLE KEY: {message}. Requests to this upstream get 503 and /readyz stays 503 until it is fixed."
        );
        self.key.mark_unavailable(Unavailable {
            reason,
            message,
            source: self.key_source.to_string().into(),
        });
        self.metrics.key_usable.set(0);
    }

    fn record_rejection(
        &self,
        trigger: Trigger,
        fingerprint: Option<&Fingerprint>,
        refusal: &Refusal,
    ) {
        let in_service = self.key.current();
        let kept = in_service.snapshot();
        match kept {
            Some(k) => tracing::warn!(
                upstream = %self.name,
                trigger = trigger.as_str(),
                code = refusal.code(),
                kept = %k.fingerprint,
                "key rotation refused: {refusal}; the key in use ({}, generation {}) stays",
                k.fingerprint,
                k.generation
            ),
            None => {
                tracing::warn!(upstream = %self.name, trigger = trigger.as_str(), code = refusal.code(), "key refused: {refusal}")
            }
        }
        self.metrics
            .rotation(trigger.as_str(), RotationResult::Rejected.as_str());
        self.lock_lifecycle().last_attempt = Some(Attempt {
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
        let state = self.key.current();
        let Some(key) = state.snapshot() else { return };
        let Some(at) = key.expires_at else { return };
        let Some(threshold) = expiry::threshold(expiry::days_left(at, now)) else {
            return;
        };
        {
            let mut lifecycle = self.lock_lifecycle();
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
                upstream = %self.name,
                key = %key.fingerprint,
                "the key {} expired {when}; requests still go, and the provider will refuse them: create a new key and rotate it in (update {}, or `keyproxy rotate`)",
                key.fingerprint,
                key.source
            );
        } else {
            tracing::warn!(
                upstream = %self.name,
                key = %key.fingerprint,
                days = threshold,
                "the key {} expires {when}; create a new key and rotate it in before then (update {}, or `keyproxy rotate`)",
                key.fingerprint,
                key.source
            );
        }
    }

    /// Compare the credential the app sent (before it is stripped) with the keys keyproxy knows.
    /// Costs a few header lookups; a hash only when the length matches a known key.
    pub fn observe_client_credential(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        custom: &[HeaderName],
        peer: SocketAddr,
        key: &KeySnapshot,
    ) {
        let Some(sent) = presented_credential(headers, query, custom) else {
            return;
        };
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
                    upstream = %self.name,
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

    fn lock_lifecycle(&self) -> std::sync::MutexGuard<'_, crate::upstream::Lifecycle> {
        self.lifecycle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last rotation attempt, for status and diagnosis.
    pub fn last_attempt(&self) -> Option<Attempt> {
        self.lock_lifecycle().last_attempt.clone()
    }

    /// Is there a usable key? (`/readyz`)
    pub fn key_problem(&self) -> Option<Unavailable> {
        match &*self.key.current() {
            KeyState::Ready(_) => None,
            KeyState::Unavailable(why) => Some(why.clone()),
        }
    }
}
