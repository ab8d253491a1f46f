//! The records of a key's life: what triggered a rotation, how it ended, and the keys rotated
//! out (as hashes, never the keys) so an app still sending one can be told.

use std::time::SystemTime;

use serde::Serialize;

use super::lint::LintCode;
use super::Fingerprint;
use crate::reason::Reason;

/// What asked for the key to be (re)loaded. The strings are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Startup,
    File,
    Periodic,
    Sighup,
    Admin,
    /// A minted token replaced before it expires, or after the upstream refused it (401).
    Refresh,
}

impl Trigger {
    pub const fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::File => "file",
            Trigger::Periodic => "periodic",
            Trigger::Sighup => "sighup",
            Trigger::Admin => "admin",
            Trigger::Refresh => "refresh",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationResult {
    Applied,
    Rejected,
}

impl RotationResult {
    pub const fn as_str(self) -> &'static str {
        match self {
            RotationResult::Applied => "applied",
            RotationResult::Rejected => "rejected",
        }
    }
}

/// The last rotation attempt, for /status and for diagnosis ("a rotation was refused moments ago").
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    #[serde(serialize_with = "crate::time::rfc3339")]
    pub at: SystemTime,
    pub trigger: Trigger,
    pub result: RotationResult,
    /// The candidate key's fingerprint, when there was a key to fingerprint.
    pub fingerprint: Option<String>,
    /// Generation in service after the attempt.
    pub generation: Option<u64>,
    /// Why it was refused: a lint code or a probe reason, and the sentence.
    pub code: Option<String>,
    pub finding: Option<String>,
}

/// A key that was rotated out: enough to recognise it, nothing to reuse it.
#[derive(Debug, Clone)]
pub struct RetiredKey {
    /// Salted with the install's salt (`store::salted_digest`), as the state store keeps it.
    pub digest: [u8; 32],
    pub len: usize,
    pub fingerprint: Fingerprint,
    pub generation: u64,
    pub retired_at: SystemTime,
}

/// How many rotated-out keys each upstream remembers.
pub const RETIRED_KEPT: usize = 16;

/// Why a candidate key was not swapped in. The old key stays in service.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The lint found an error in the candidate.
    #[error("{message}")]
    Lint { code: LintCode, message: String },
    /// The provider refused the candidate when probed.
    #[error("{message}")]
    Probe { reason: Reason, message: String },
    /// The probe got no answer to judge by (unreachable, timeout, 5xx).
    #[error("{message}")]
    ProbeFailed { message: String },
    /// The source could not be read.
    #[error("{0}")]
    Source(String),
    /// The source holds a key that was rotated out; only an explicit rotation may reinstate it.
    #[error("{message}")]
    Retired { message: String },
    /// The token endpoint gave no token (explained by the diagnosis).
    #[error("{message}")]
    Refresh { reason: Reason, message: String },
    /// A minted credential cannot be rotated by hand: its secret is rotated in its own source.
    #[error("{message}")]
    Minted { message: String },
}

impl Refusal {
    /// The reason a request gets when this refusal leaves the upstream without a key.
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::Lint {
                code: LintCode::Empty,
                ..
            } => Reason::MissingKey,
            Refusal::Lint {
                code: LintCode::WrongProvider,
                ..
            } => Reason::WrongProviderKey,
            Refusal::Lint {
                code: LintCode::Expired,
                ..
            } => Reason::ExpiredKey,
            Refusal::Lint { .. } => Reason::MalformedKey,
            Refusal::Probe { reason, .. } => *reason,
            Refusal::ProbeFailed { .. } | Refusal::Source(_) => Reason::MissingKey,
            Refusal::Retired { .. } => Reason::RevokedKey,
            Refusal::Refresh { reason, .. } => *reason,
            Refusal::Minted { .. } => Reason::CredentialRefreshFailed,
        }
    }

    /// The code shown in /status, the admin API's answer and the log: a lint code, the provider's
    /// reason, `probe_failed` or `source_unreadable`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Lint { code, .. } => code.as_str(),
            Refusal::Probe { reason, .. } => reason.as_str(),
            Refusal::ProbeFailed { .. } => "probe_failed",
            Refusal::Source(_) => "source_unreadable",
            Refusal::Retired { .. } => "retired_key",
            Refusal::Refresh { reason, .. } => reason.as_str(),
            Refusal::Minted { .. } => "minted_credential",
        }
    }
}
