//! When a minted token is replaced, and what is known about it for /status. A token is refreshed
//! at 80 % of its lifetime or 5 minutes before it expires, whichever is first, a little earlier
//! by a random jitter (so many keyproxies do not ask at the same second), and never before half
//! its lifetime nor within a second of the last (so a token of a few seconds does not spin). A failed refresh is retried with
//! backoff, 1 s doubling to 60 s, never past the token's expiry; the token in service stays until
//! it expires. One task per minted credential drives it (`spawn`); the refresh itself is the
//! lifecycle's, one at a time with any other.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{ExplainMint, Explained, MintError, MintedSource, Unexplained};
use crate::key::rotation::Trigger;
use crate::key::watch::Watched;

/// How long before expiry a token is replaced at the latest (when its lifetime allows).
pub const MARGIN: Duration = Duration::from_secs(300);
/// The longest wait between retries of a failing refresh.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The shortest wait between two refreshes, whatever lifetime the endpoint names (`0.001`): a
/// token endpoint is never asked in a loop.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// At most this share of the wait is taken off by the jitter.
const JITTER: f64 = 0.1;

/// How long after minting a token of `lifetime` the next one is minted. `jitter` is in [0, 1).
pub fn refresh_after(lifetime: Duration, jitter: f64) -> Duration {
    let life = lifetime.as_secs_f64();
    let planned = (0.8 * life).min(life - MARGIN.as_secs_f64());
    let floor = 0.5 * life;
    let at = planned.max(floor);
    Duration::from_secs_f64((at - at * JITTER * jitter.clamp(0.0, 1.0)).max(floor)).max(MIN_REFRESH)
}

/// The wait before retry number `failures` (1 = after the first failure).
pub fn backoff(failures: u32) -> Duration {
    let doubled = 1u64
        .checked_shl(failures.saturating_sub(1).min(16))
        .unwrap_or(u64::MAX);
    Duration::from_secs(doubled).min(MAX_BACKOFF)
}

/// A number in [0, 1) that differs between processes and calls: enough for spreading refreshes.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What /status, the status page and `check` show about a minted credential. Never a token or a
/// secret: the kind, the client id, the endpoint, times and the last result.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshStatus {
    pub kind: &'static str,
    pub client: String,
    pub endpoint: Option<String>,
    #[serde(serialize_with = "crate::time::rfc3339_opt")]
    pub token_expires_at: Option<SystemTime>,
    #[serde(serialize_with = "crate::time::rfc3339_opt")]
    pub last_refresh_at: Option<SystemTime>,
    /// `ok` or `failed`.
    pub last_result: Option<&'static str>,
    /// The reason and sentence of the last failure, while failing.
    pub problem: Option<Problem>,
    #[serde(serialize_with = "crate::time::rfc3339_opt")]
    pub next_refresh_at: Option<SystemTime>,
    pub consecutive_failures: u32,
    pub refreshes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// One minted credential's refresh state, kept by its lifecycle.
pub struct Refresher {
    source: Arc<MintedSource>,
    explain: OnceLock<Arc<dyn ExplainMint>>,
    status: Mutex<RefreshStatus>,
    /// Rings when the schedule changed (a refresh after a 401), so the task recomputes its wait.
    rescheduled: tokio::sync::Notify,
    /// When a refusal (401) last made it refresh: an upstream that refuses every token does not
    /// get to drive the token endpoint at its request rate.
    refused_at: Mutex<Option<std::time::Instant>>,
}

/// At most one refresh per this long is made because the upstream refused a token.
pub const REFUSAL_REFRESH_EVERY: Duration = Duration::from_secs(5);

impl Refresher {
    pub fn new(source: Arc<MintedSource>) -> Refresher {
        let status = RefreshStatus {
            kind: source.kind().as_str(),
            client: source.client(),
            endpoint: source.endpoint(),
            token_expires_at: None,
            last_refresh_at: None,
            last_result: None,
            problem: None,
            next_refresh_at: None,
            consecutive_failures: 0,
            refreshes: 0,
        };
        Refresher {
            source,
            explain: OnceLock::new(),
            status: Mutex::new(status),
            rescheduled: tokio::sync::Notify::new(),
            refused_at: Mutex::new(None),
        }
    }

    pub fn source(&self) -> &MintedSource {
        &self.source
    }

    /// Attach the diagnosis' explainer (once, before the first mint).
    pub fn attach_explainer(&self, explain: Arc<dyn ExplainMint>) {
        let _ = self.explain.set(explain);
    }

    pub fn explain(&self, error: &MintError) -> Explained {
        match self.explain.get() {
            Some(e) => e.explain(&self.source, error),
            None => Unexplained.explain(&self.source, error),
        }
    }

    pub fn status(&self) -> RefreshStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RefreshStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token was minted at `now`: schedule the next.
    pub fn succeeded(&self, now: SystemTime, expires_at: SystemTime, lifetime: Duration) {
        // A service account's file may have been unreadable (or replaced) since the last.
        let (client, endpoint) = (self.source.client(), self.source.endpoint());
        {
            let mut s = self.lock();
            s.token_expires_at = Some(expires_at);
            s.last_refresh_at = Some(now);
            s.last_result = Some("ok");
            s.problem = None;
            s.consecutive_failures = 0;
            s.refreshes += 1;
            s.next_refresh_at = Some(now + refresh_after(lifetime, jitter()));
            s.client = client;
            s.endpoint = endpoint;
        }
        self.rescheduled.notify_one();
    }

    /// A refresh failed at `now`: retry after the backoff, and no later than the token's expiry
    /// (when it is still ahead), so an expiry is noticed when it happens.
    pub fn failed(&self, now: SystemTime, why: &Explained) -> Duration {
        let mut s = self.lock();
        s.last_refresh_at = Some(now);
        s.last_result = Some("failed");
        s.problem = Some(Problem {
            reason: why.reason.as_str(),
            message: why.sentence.clone(),
        });
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        let mut wait = backoff(s.consecutive_failures);
        if let Some(left) = s
            .token_expires_at
            .and_then(|at| at.duration_since(now).ok())
            .filter(|left| !left.is_zero())
        {
            wait = wait.min(left);
        }
        s.next_refresh_at = Some(now + wait);
        wait
    }

    /// May a refusal of the token make a refresh now? (At most one per `REFUSAL_REFRESH_EVERY`.)
    pub fn take_refusal_refresh(&self, now: std::time::Instant) -> bool {
        let mut last = self.refused_at.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < REFUSAL_REFRESH_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// How long until the next refresh is due (zero when it is overdue or none was planned).
    pub fn due_in(&self, now: SystemTime) -> Duration {
        self.lock()
            .next_refresh_at
            .and_then(|at| at.duration_since(now).ok())
            .unwrap_or_default()
    }
}

/// Drive every minted credential's refreshes, one task each, until the returned tasks are aborted.
pub fn spawn<W: Watched>(watched: Arc<W>) -> Vec<tokio::task::JoinHandle<()>> {
    let count = watched.lifecycles().len();
    (0..count)
        .filter(|&i| watched.lifecycles()[i].0.refresher().is_some())
        .map(|i| {
            let watched = Arc::clone(&watched);
            tokio::spawn(async move {
                let lives = watched.lifecycles();
                let life = lives[i].0;
                let Some(refresher) = life.refresher() else {
                    return;
                };
                loop {
                    let wait = refresher.due_in(SystemTime::now());
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {
                            life.refresh(Trigger::Refresh, None).await;
                        }
                        () = refresher.rescheduled.notified() => {}
                    }
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshed_at_80_percent_or_5_minutes_early_whichever_first_and_never_before_half() {
        let hour = Duration::from_secs(3600);
        assert_eq!(refresh_after(hour, 0.0), Duration::from_secs(2880));
        let day = Duration::from_secs(86_400);
        assert_eq!(refresh_after(day, 0.0), Duration::from_secs(69_120));
        let twenty_minutes = Duration::from_secs(1200);
        assert_eq!(refresh_after(twenty_minutes, 0.0), Duration::from_secs(900));
        let short = Duration::from_secs(3);
        assert_eq!(refresh_after(short, 0.0), Duration::from_millis(1500));
        assert_eq!(refresh_after(short, 0.99), Duration::from_millis(1500));
        let jittered = refresh_after(hour, 0.5);
        assert!(
            jittered < Duration::from_secs(2880) && jittered >= Duration::from_secs(2592),
            "{jittered:?}"
        );
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_failing_refresh_retries_no_later_than_the_expiry() {
        let source = Arc::new(MintedSource::ServiceAccount(
            super::super::google::ServiceAccountFile {
                path: "/nonexistent/sa.json".into(),
                scopes: vec![],
            },
        ));
        let r = Refresher::new(source);
        let now = SystemTime::now();
        r.succeeded(now, now + Duration::from_secs(3), Duration::from_secs(3));
        let why = Explained {
            reason: crate::reason::Reason::CredentialRefreshFailed,
            sentence: "down".into(),
        };
        let later = now + Duration::from_millis(1500);
        assert_eq!(r.failed(later, &why), Duration::from_secs(1));
        assert_eq!(
            r.failed(later, &why),
            Duration::from_millis(1500),
            "2 s backoff, 1.5 s to expiry"
        );
        let status = r.status();
        assert_eq!(
            (status.last_result, status.consecutive_failures),
            (Some("failed"), 2)
        );
    }
}
