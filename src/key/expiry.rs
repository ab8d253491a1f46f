//! Expiry: when the key in use stops working, and the warnings at 30, 7 and 1 days before and at
//! expiry. Requests still go after expiry (the provider decides); diagnosis uses the date.

use std::time::{Duration, SystemTime};

/// When the key expires: a fixed `expires_at`, or `max_age` counted from `issued_at` (or the load time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiryPolicy {
    pub expires_at: Option<SystemTime>,
    pub issued_at: Option<SystemTime>,
    pub max_age: Option<Duration>,
}

/// Days before expiry at which keyproxy warns; 0 = expired.
pub const THRESHOLDS: [u32; 4] = [30, 7, 1, 0];

/// The expiry of a key that is about to be installed. The configured `expires_at` / `issued_at`
/// describe the first key keyproxy loads; a key rotated in later is new, so only `max_age` counts,
/// from when it was loaded.
pub fn expires_at(
    cfg: &ExpiryPolicy,
    first_key: bool,
    loaded_at: SystemTime,
) -> Option<SystemTime> {
    if first_key {
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

pub use crate::time::{days_left, describe, unix_seconds};
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DAY_SECS: u64 = 86_400;

    #[test]
    fn first_key_uses_the_config_later_keys_their_load_time() {
        let now = SystemTime::now();
        let fixed = now + Duration::from_secs(100 * DAY_SECS);
        let cfg = ExpiryPolicy {
            expires_at: Some(fixed),
            ..Default::default()
        };
        assert_eq!(expires_at(&cfg, true, now), Some(fixed));
        assert_eq!(expires_at(&cfg, false, now), None);

        let issued = now - Duration::from_secs(300 * DAY_SECS);
        let cfg = ExpiryPolicy {
            issued_at: Some(issued),
            max_age: Some(Duration::from_secs(365 * DAY_SECS)),
            ..Default::default()
        };
        assert_eq!(
            expires_at(&cfg, true, now),
            Some(issued + Duration::from_secs(365 * DAY_SECS))
        );
        assert_eq!(
            expires_at(&cfg, false, now),
            Some(now + Duration::from_secs(365 * DAY_SECS))
        );
        assert_eq!(expires_at(&ExpiryPolicy::default(), true, now), None);
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
