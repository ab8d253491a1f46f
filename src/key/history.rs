//! What the key lifecycle remembers across restarts, as a trait this layer defines and the
//! durable store (`state`, a layer above) implements: the lifecycle says what happened and asks
//! what was. Without a store (none configured, or it could not be opened) `Forgetful` remembers
//! nothing and keyproxy behaves as it did before it had one.

use std::time::SystemTime;

use super::rotation::{RetiredKey, Trigger};
use super::{Fingerprint, Secret};

/// The lifecycle's memory beyond this process.
pub trait KeyHistory: Send + Sync {
    /// The per-install salt retired keys are hashed with (`store::salted_digest`).
    fn salt(&self) -> [u8; 32];
    /// What was known about `upstream` when keyproxy last ran.
    fn recall(&self, upstream: &str) -> Recalled;
    /// A key went into service (and the one before it retired). Durable when it returns `Ok`.
    fn applied(&self, rotation: &Applied<'_>) -> Result<(), String>;
    /// A candidate was refused; the key in use stays.
    fn refused(&self, refusal: &Refused<'_>);
    /// An app sent a retired key. Must not block: called on the request path.
    fn sighted(&self, sighting: Sighting);
    /// A key left its pool for good, with no key taking its place.
    fn retired(&self, _retirement: &Retirement<'_>) {}
    /// Whether what it is told outlives the process.
    fn durable(&self) -> bool {
        true
    }
}

/// The key in service when keyproxy last ran.
#[derive(Debug)]
pub struct InService {
    pub fingerprint: Fingerprint,
    /// Salted, as retired keys are, so it can become one.
    pub hash: [u8; 32],
    pub len: usize,
    pub generation: u64,
    /// The key itself, only for a key rotated in through the admin API whose source cannot be
    /// rewritten (env, command, a read-only file). The store keeps it in a 0600 file beside the
    /// database, never in it.
    pub stored: Option<Secret>,
}

/// What `recall` finds.
#[derive(Debug, Default)]
pub struct Recalled {
    pub in_service: Option<InService>,
    /// Newest first, hashes salted.
    pub retired: Vec<RetiredKey>,
    /// The highest generation ever recorded, so generations keep counting across restarts.
    pub last_generation: u64,
    /// Expiries set with a rotation (`--expires-at`, `--max-age`), by fingerprint.
    pub expiries: Vec<(String, SystemTime)>,
}

/// Who asked, in the words `keyproxy history` shows: `admin API`, `CLI`, `file`, `SIGHUP`,
/// `periodic`, `startup`.
pub fn who(trigger: Trigger, from_cli: bool) -> &'static str {
    match trigger {
        Trigger::Admin if from_cli => "CLI",
        Trigger::Admin => "admin API",
        Trigger::Startup => "startup",
        Trigger::File => "file",
        Trigger::Periodic => "periodic",
        Trigger::Sighup => "SIGHUP",
        Trigger::Refresh => "refresh",
    }
}

/// The key that went into service, and what became of the one before it.
#[derive(Debug)]
pub struct Applied<'a> {
    pub upstream: &'a str,
    pub at: SystemTime,
    pub trigger: Trigger,
    pub who: &'a str,
    /// The key rotated out, if there was one.
    pub retired: Option<&'a RetiredKey>,
    pub fingerprint: &'a Fingerprint,
    pub generation: u64,
    pub hash: [u8; 32],
    pub len: usize,
    pub expires_at: Option<SystemTime>,
    /// Set with the rotation (kept by fingerprint, so it travels with the key).
    pub explicit_expiry: bool,
    /// Keep the key itself (see `InService::stored`); `None` forgets any kept before.
    pub keep: Option<&'a Secret>,
}

#[derive(Debug)]
pub struct Refused<'a> {
    pub upstream: &'a str,
    pub at: SystemTime,
    pub trigger: Trigger,
    pub who: &'a str,
    pub fingerprint: Option<&'a Fingerprint>,
    /// The key in service, which stays.
    pub kept: Option<(&'a Fingerprint, u64)>,
    pub code: &'a str,
    pub sentence: &'a str,
}

/// A key retired from its pool (`KeyLifecycle::retire_in_service`).
#[derive(Debug)]
pub struct Retirement<'a> {
    pub upstream: &'a str,
    pub at: SystemTime,
    pub who: &'a str,
    pub retired: &'a RetiredKey,
}

/// A retired key seen in a request, and the app that sent it.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub upstream: std::sync::Arc<str>,
    pub fingerprint: Fingerprint,
    pub app: String,
    pub at: SystemTime,
}

/// No store: nothing recalled, nothing kept.
pub struct Forgetful;

impl KeyHistory for Forgetful {
    fn salt(&self) -> [u8; 32] {
        [0; 32]
    }
    fn recall(&self, _: &str) -> Recalled {
        Recalled::default()
    }
    fn applied(&self, _: &Applied<'_>) -> Result<(), String> {
        Ok(())
    }
    fn refused(&self, _: &Refused<'_>) {}
    fn sighted(&self, _: Sighting) {}
    fn durable(&self) -> bool {
        false
    }
}
