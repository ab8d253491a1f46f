//! The records of a key's life: what triggered a rotation, how it ended, and the keys rotated
//! out (as hashes, never the keys) so an app still sending one can be told.

use std::time::SystemTime;

use serde::Serialize;

use super::Fingerprint;

/// What asked for the key to be (re)loaded. The strings are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Startup,
    File,
    Periodic,
    Sighup,
    Admin,
}

impl Trigger {
    pub const fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::File => "file",
            Trigger::Periodic => "periodic",
            Trigger::Sighup => "sighup",
            Trigger::Admin => "admin",
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
    pub digest: [u8; 32],
    pub len: usize,
    pub fingerprint: Fingerprint,
    pub generation: u64,
    pub retired_at: SystemTime,
}

/// How many rotated-out keys each upstream remembers.
pub const RETIRED_KEPT: usize = 5;

/// Why a candidate key was not swapped in. The old key stays in service.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("{message}")]
    Lint { code: String, message: String },
    #[error("{message}")]
    Probe { code: String, message: String },
    #[error("{0}")]
    Source(String),
}

impl Refusal {
    pub fn code(&self) -> &str {
        match self {
            Refusal::Lint { code, .. } | Refusal::Probe { code, .. } => code,
            Refusal::Source(_) => "source_unreadable",
        }
    }
}
