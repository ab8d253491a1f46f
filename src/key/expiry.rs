//! Expiry: when the key in use stops working, and the warnings at 30, 7 and 1 days before and at
//! expiry. Requests still go after expiry (the provider decides); diagnosis uses the date.

use std::time::{Duration, SystemTime};

/// When keys expire. `expires_at` (the simple form) describes the key in the source when keyproxy
/// starts; `expires_at_by_key` (the map form, `{ "sk-proj-…abcd" = "2027-01-01" }`) describes
/// keys by fingerprint, whenever they come in; `max_age` counts from `issued_at` (for the key in
/// the source) or from when a key is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiryPolicy {
    pub expires_at: Option<SystemTime>,
    pub expires_at_by_key: Vec<(String, SystemTime)>,
    pub issued_at: Option<SystemTime>,
    pub max_age: Option<Duration>,
}

/// Days before expiry at which keyproxy warns; 0 = expired.
pub const THRESHOLDS: [u32; 4] = [30, 7, 1, 0];

/// What is known about a key about to be installed, for its expiry.
#[derive(Debug, Clone, Copy)]
pub struct KeyFacts<'a> {
    pub fingerprint: &'a str,
    /// Set with its rotation (`--expires-at`, `--max-age`, `?expires_at=`), now or before a restart.
    pub set_with_rotation: Option<SystemTime>,
    /// The key read from the source at startup: the one the simple form was written for.
    pub the_sources_key: bool,
}

/// A map-form entry names a key by its fingerprint, with or without the `:hash` part.
fn names(entry: &str, fingerprint: &str) -> bool {
    fingerprint == entry
        || fingerprint
            .strip_prefix(entry)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// The expiry of a key that is about to be installed: what its rotation said, else the config's
/// entry for its fingerprint, else (for the source's key at startup) the simple form or
/// `issued_at + max_age`, else `max_age` from now. Never another key's date.
pub fn expires_at(
    cfg: &ExpiryPolicy,
    key: &KeyFacts<'_>,
    loaded_at: SystemTime,
) -> Option<SystemTime> {
    if let Some(at) = key.set_with_rotation {
        return Some(at);
    }
    if let Some((_, at)) = cfg
        .expires_at_by_key
        .iter()
        .find(|(entry, _)| names(entry, key.fingerprint))
    {
        return Some(*at);
    }
    if key.the_sources_key {
        if let Some(at) = cfg.expires_at {
            return Some(at);
        }
        if let (Some(issued), Some(age)) = (cfg.issued_at, cfg.max_age) {
            return issued.checked_add(age);
        }
    }
    cfg.max_age.and_then(|age| loaded_at.checked_add(age))
}

/// The most urgent threshold already reached, if any (`Some(7)` with 5 days left).
pub fn threshold(days_left: f64) -> Option<u32> {
    THRESHOLDS
        .iter()
        .rev()
        .find(|&&t| days_left <= f64::from(t))
        .copied()
}

/// The expiry of a key about to be installed, the key's own first: a Bedrock short-term API key
/// or a `credential_process` set says when it stops working; any other key is judged by
/// `expires_at`.
pub fn expires_at_of(
    key: &str,
    cfg: &ExpiryPolicy,
    facts: &KeyFacts<'_>,
    loaded_at: SystemTime,
) -> Option<SystemTime> {
    super::aws::expires_at(key).or_else(|| expires_at(cfg, facts, loaded_at))
}

pub use crate::time::{days_left, describe, unix_seconds};
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DAY_SECS: u64 = 86_400;

    fn facts(the_sources_key: bool) -> KeyFacts<'static> {
        KeyFacts {
            fingerprint: "sk-proj-…abcd:01020304",
            set_with_rotation: None,
            the_sources_key,
        }
    }

    #[test]
    fn expiry_travels_with_the_key() {
        let now = SystemTime::now();
        let (mine, config) = (
            now + Duration::from_secs(400 * DAY_SECS),
            now + Duration::from_secs(200 * DAY_SECS),
        );
        let cfg = ExpiryPolicy {
            expires_at: Some(now + Duration::from_secs(9 * DAY_SECS)),
            expires_at_by_key: vec![("sk-proj-…abcd".into(), config)],
            ..Default::default()
        };
        let rotated = KeyFacts {
            set_with_rotation: Some(mine),
            ..facts(false)
        };
        assert_eq!(
            expires_at(&cfg, &rotated, now),
            Some(mine),
            "the rotation's own date first"
        );
        assert_eq!(
            expires_at(&cfg, &facts(false), now),
            Some(config),
            "then the entry for its fingerprint"
        );
        let other = KeyFacts {
            fingerprint: "sk-proj-…wxyz:05060708",
            ..facts(false)
        };
        assert_eq!(
            expires_at(&cfg, &other, now),
            None,
            "never another key's date"
        );
        let by_full = ExpiryPolicy {
            expires_at_by_key: vec![("sk-proj-…abcd:01020304".into(), config)],
            ..Default::default()
        };
        assert_eq!(expires_at(&by_full, &facts(false), now), Some(config));
        let not_a_prefix = ExpiryPolicy {
            expires_at_by_key: vec![("sk-proj-…ab".into(), config)],
            ..Default::default()
        };
        assert_eq!(expires_at(&not_a_prefix, &facts(false), now), None);
    }

    #[test]
    fn first_key_uses_the_config_later_keys_their_load_time() {
        let now = SystemTime::now();
        let fixed = now + Duration::from_secs(100 * DAY_SECS);
        let cfg = ExpiryPolicy {
            expires_at: Some(fixed),
            ..Default::default()
        };
        assert_eq!(expires_at(&cfg, &facts(true), now), Some(fixed));
        assert_eq!(expires_at(&cfg, &facts(false), now), None);

        let issued = now - Duration::from_secs(300 * DAY_SECS);
        let cfg = ExpiryPolicy {
            issued_at: Some(issued),
            max_age: Some(Duration::from_secs(365 * DAY_SECS)),
            ..Default::default()
        };
        assert_eq!(
            expires_at(&cfg, &facts(true), now),
            Some(issued + Duration::from_secs(365 * DAY_SECS))
        );
        assert_eq!(
            expires_at(&cfg, &facts(false), now),
            Some(now + Duration::from_secs(365 * DAY_SECS))
        );
        assert_eq!(
            expires_at(&ExpiryPolicy::default(), &facts(true), now),
            None
        );
    }

    #[test]
    fn thresholds() {
        assert_eq!(threshold(45.0), None);
        assert_eq!(threshold(30.0), Some(30));
        assert_eq!(threshold(12.0), Some(30));
        assert_eq!(threshold(5.0), Some(7));
        assert_eq!(threshold(0.5), Some(1));
        assert_eq!(threshold(-3.0), Some(0));
    }

    #[test]
    fn descriptions() {
        let now = SystemTime::now();
        assert!(
            describe(now + Duration::from_secs(5 * DAY_SECS + 60), now).starts_with("in 5 days")
        );
        assert!(describe(now + Duration::from_secs(3 * 3600 + 60), now).starts_with("in 3 hours"));
        assert!(
            describe(now - Duration::from_secs(2 * DAY_SECS + 60), now).starts_with("2 days ago")
        );
    }
}
