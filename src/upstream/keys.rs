//! Several keys per upstream: each key's standing (active, cooling after a rate limit, ramping
//! back, quarantined after a key-class refusal), decided by the diagnosis, and the choice of key
//! per request — smooth weighted round-robin over the usable keys, read from one `ArcSwap`
//! snapshot plus one atomic counter (no lock). A `key = …` upstream is a pool of one and never
//! touches any of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use super::Upstream;
use crate::key::lifecycle::KeyLifecycle;
use crate::key::KeyState;
use crate::metrics::KeyMetrics;
use crate::reason::Reason;

/// A recovered key comes back in this many steps of a growing share (1/4, 2/4, 3/4, all).
const RAMP_STEPS: u32 = 4;
/// The longest rest a provider's `Retry-After` can buy a key (a typo'd header must not bench a
/// key for a day).
const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// The keys of one upstream besides the first (which is `Upstream::key`), their names and
/// weights, and the pool's standing.
pub struct KeyPool {
    /// `names[i]`, `weights[i]`: key i (0 is `Upstream::key`).
    pub names: Box<[Arc<str>]>,
    weights: Box<[u32]>,
    /// Keys 1.. of the pool.
    pub others: Box<[KeyLifecycle]>,
    state: ArcSwap<PoolState>,
    /// Where each request is in the schedule: one relaxed add per request.
    cursor: AtomicUsize,
    /// A rate limit's rest when the provider names none.
    pub cooldown: Duration,
    pub metrics: KeyMetrics,
}

/// How a key stands, with why.
#[derive(Debug, Clone)]
pub enum Standing {
    Active,
    /// Back from a cool-down, on a growing share until `since + over`.
    Ramping {
        since: Instant,
        over: Duration,
    },
    /// Rate-limited: rests until `until` (`rested` long; the ramp back takes as long).
    Cooling {
        until: Instant,
        until_wall: SystemTime,
        rested: Duration,
        fingerprint: String,
    },
    /// Refused for the key itself: out until its source yields another key (a generation other
    /// than `generation`) or an operator reinstates it.
    Quarantined {
        cause: Reason,
        at: SystemTime,
        generation: u64,
        fingerprint: String,
    },
}

impl Standing {
    /// The word for the state (/status, the exhausted sentence).
    pub fn as_str(&self) -> &'static str {
        match self {
            Standing::Active | Standing::Ramping { .. } => "active",
            Standing::Cooling { .. } => "cooling",
            Standing::Quarantined { .. } => "quarantined",
        }
    }

    /// `keyproxy_key_state`'s value (3, no key loaded, is the lifecycle's to say).
    pub fn code(&self) -> i64 {
        match self {
            Standing::Active | Standing::Ramping { .. } => 0,
            Standing::Cooling { .. } => 1,
            Standing::Quarantined { .. } => 2,
        }
    }
}

/// One immutable picture of the pool, swapped whole.
#[derive(Debug)]
struct PoolState {
    standing: Box<[Standing]>,
    /// Key indices in smooth weighted round-robin order, one slot per unit of effective weight.
    schedule: Box<[u16]>,
    /// When a cool-down or a ramp step ends (the picture must be redrawn then).
    next_change: Option<Instant>,
    /// Quarantined keys and the generation they were refused at: a new key from the source lifts it.
    quarantined: Box<[(u16, u64)]>,
}

/// What the diagnosis of a refusal means for the key that was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The key itself is refused: quarantine.
    Quarantine(Reason),
    /// The key is limited for now: cool down this long.
    Cool(Duration),
}

impl Verdict {
    /// `None` for what is not the key's fault (5xx, unreachable, a bad request, a permission the
    /// key lacks for this one request).
    pub fn of(
        reason: Reason,
        retry_after: Option<Duration>,
        cooldown: Duration,
    ) -> Option<Verdict> {
        match reason {
            Reason::InvalidKey
            | Reason::RevokedKey
            | Reason::ExpiredKey
            | Reason::AccountInactive
            | Reason::QuotaExhausted
            | Reason::WrongProviderKey => Some(Verdict::Quarantine(reason)),
            Reason::RateLimited => Some(Verdict::Cool(
                retry_after.unwrap_or(cooldown).min(MAX_COOLDOWN),
            )),
            _ => None,
        }
    }
}

/// The provider's `retry-after-ms` (OpenAI, Azure) or `Retry-After` (seconds, or an HTTP date).
pub fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|t| t.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// Smooth weighted round-robin (nginx's): spread each key's slots evenly through the cycle.
fn schedule(weights: &[u32]) -> Box<[u16]> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            current[i] += i64::from(w);
            if best.map_or(true, |b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
            out.push(b as u16);
        }
    }
    out.into_boxed_slice()
}

impl PoolState {
    /// Draw the picture for these standings at `now`: ended cool-downs become ramps, finished
    /// ramps become active, and the schedule gives each key its share.
    fn draw(mut standing: Box<[Standing]>, weights: &[u32], now: Instant) -> PoolState {
        let mut next_change: Option<Instant> = None;
        let mut soonest = |t: Instant| {
            next_change = Some(next_change.map_or(t, |n| n.min(t)));
        };
        let mut effective = vec![0u32; standing.len()];
        let mut quarantined = Vec::new();
        for (i, s) in standing.iter_mut().enumerate() {
            if let Standing::Cooling { until, rested, .. } = s {
                if *until <= now {
                    *s = Standing::Ramping {
                        since: *until,
                        over: *rested,
                    };
                }
            }
            if let Standing::Ramping { since, over } = s {
                if *since + *over <= now || over.is_zero() {
                    *s = Standing::Active;
                }
            }
            effective[i] = match s {
                Standing::Active => weights[i] * RAMP_STEPS,
                Standing::Ramping { since, over } => {
                    let step = *over / RAMP_STEPS;
                    let done =
                        now.saturating_duration_since(*since).as_nanos() / step.as_nanos().max(1);
                    let stage = (done as u32 + 1).min(RAMP_STEPS);
                    soonest(*since + step * stage);
                    weights[i] * stage
                }
                Standing::Cooling { until, .. } => {
                    soonest(*until);
                    0
                }
                Standing::Quarantined { generation, .. } => {
                    quarantined.push((i as u16, *generation));
                    0
                }
            };
        }
        PoolState {
            schedule: schedule(&effective),
            standing,
            next_change,
            quarantined: quarantined.into_boxed_slice(),
        }
    }
}

impl KeyPool {
    pub fn new(
        names: Vec<Arc<str>>,
        weights: Vec<u32>,
        others: Vec<KeyLifecycle>,
        cooldown: Duration,
        metrics: KeyMetrics,
    ) -> KeyPool {
        let standing = vec![Standing::Active; names.len()].into_boxed_slice();
        let state = PoolState::draw(standing, &weights, Instant::now());
        KeyPool {
            names: names.into_boxed_slice(),
            weights: weights.into_boxed_slice(),
            others: others.into_boxed_slice(),
            state: ArcSwap::from_pointee(state),
            cursor: AtomicUsize::new(0),
            cooldown,
            metrics,
        }
    }

    /// More than one key: requests choose among them.
    #[inline]
    pub fn is_pool(&self) -> bool {
        !self.others.is_empty()
    }

    /// Each key's standing now (for /status, metrics and the exhausted sentence).
    pub fn standings(&self) -> Vec<Standing> {
        self.state.load().standing.to_vec()
    }

    /// Redraw the picture at `now`, with `change` applied to the standings first.
    fn redraw(&self, now: Instant, change: impl Fn(&mut [Standing])) {
        self.state.rcu(|old| {
            let mut standing = old.standing.clone();
            change(&mut standing);
            PoolState::draw(standing, &self.weights, now)
        });
    }
}

impl Upstream {
    /// Key `i` of the pool (0 is `self.key`).
    pub fn lifecycle(&self, i: usize) -> &KeyLifecycle {
        match i.checked_sub(1) {
            None => &self.key,
            Some(j) => &self.keys.others[j],
        }
    }

    /// Every key of the upstream, in config order.
    pub fn lifecycles(&self) -> impl Iterator<Item = &KeyLifecycle> {
        std::iter::once(&self.key).chain(self.keys.others.iter())
    }

    /// The key for the next request of a pool, other than `except`: its index and snapshot, or
    /// `None` when no key is usable. One `ArcSwap` load, one atomic add.
    pub fn pick_key(&self, except: Option<usize>) -> Option<(usize, Arc<KeyState>)> {
        let pool = &self.keys;
        let mut state = pool.state.load();
        let stale = state.next_change.is_some_and(|t| Instant::now() >= t)
            || state
                .quarantined
                .iter()
                .any(|&(i, g)| self.lifecycle(usize::from(i)).store.generation() != g);
        if stale || state.schedule.is_empty() {
            self.refresh_keys();
            state = pool.state.load();
        }
        let len = state.schedule.len();
        let start = pool.cursor.fetch_add(1, Ordering::Relaxed);
        for k in 0..len {
            let i = usize::from(state.schedule[(start + k) % len]);
            if Some(i) == except {
                continue;
            }
            let key = self.lifecycle(i).current();
            if key.snapshot().is_some() {
                return Some((i, key));
            }
        }
        None
    }

    /// Set `keyproxy_key_state` from the pool's picture and each key's lifecycle.
    fn publish_key_states(&self) {
        for (i, standing) in self.keys.standings().iter().enumerate() {
            let code = match &*self.lifecycle(i).current() {
                KeyState::Unavailable(_) => 3,
                KeyState::Ready(_) => standing.code(),
            };
            self.keys.metrics.state(i, code);
        }
    }

    /// Bring the pool's picture up to date: ended cool-downs and ramp steps, quarantined keys
    /// whose source now yields another key.
    pub fn refresh_keys(&self) {
        let generations: Vec<u64> = self.lifecycles().map(|l| l.store.generation()).collect();
        self.keys.redraw(Instant::now(), |standing| {
            for (i, s) in standing.iter_mut().enumerate() {
                if let Standing::Quarantined { generation, .. } = s {
                    if generations[i] != *generation {
                        *s = Standing::Active;
                    }
                }
            }
        });
        self.publish_key_states();
    }

    /// The provider refused key `i` (as of `generation`) for `reason`: bench it as the verdict
    /// says. A refusal of a key already rotated out is old news and changes nothing.
    pub fn key_refused(&self, i: usize, generation: u64, verdict: Verdict) {
        let life = self.lifecycle(i);
        let current = life.current();
        let Some(snapshot) = current.snapshot().filter(|s| s.generation == generation) else {
            return;
        };
        let name = &self.keys.names[i];
        let fingerprint = snapshot.fingerprint.to_string();
        let now = Instant::now();
        let wall = SystemTime::now();
        let standing = match verdict {
            Verdict::Quarantine(cause) => {
                tracing::warn!(upstream = %self.name, key = %name, fingerprint = %fingerprint, reason = cause.as_str(), "key {name} ({fingerprint}) quarantined after {cause}: requests use the pool's other keys until its source yields another key or it is reinstated (POST /keys/{}/{name}/reinstate)", self.name);
                Standing::Quarantined {
                    cause,
                    at: wall,
                    generation,
                    fingerprint,
                }
            }
            Verdict::Cool(rest) => {
                let until_wall = wall + rest;
                tracing::info!(upstream = %self.name, key = %name, fingerprint = %fingerprint, "key {name} ({fingerprint}) rate-limited: cooling until {}", humantime::format_rfc3339_seconds(until_wall));
                Standing::Cooling {
                    until: now + rest,
                    until_wall,
                    rested: rest,
                    fingerprint,
                }
            }
        };
        self.keys.redraw(now, |s| {
            // A quarantine outranks a cool-down; a cool-down already running keeps the later end.
            let keep = match (&s[i], &standing) {
                (Standing::Quarantined { .. }, Standing::Cooling { .. }) => true,
                (Standing::Cooling { until: a, .. }, Standing::Cooling { until: b, .. }) => a >= b,
                _ => false,
            };
            if !keep {
                s[i] = standing.clone();
            }
        });
        self.publish_key_states();
    }

    /// An operator says key `name` is fine again: it rejoins at once (false: no such key).
    pub fn reinstate_key(&self, name: &str) -> bool {
        let Some(i) = self.keys.names.iter().position(|n| &**n == name) else {
            return false;
        };
        tracing::info!(upstream = %self.name, key = %name, "key {name} reinstated by an operator");
        self.keys
            .redraw(Instant::now(), |s| s[i] = Standing::Active);
        self.publish_key_states();
        true
    }

    /// Every key's name, fingerprint, state, cause and until-when, for the `keys_exhausted`
    /// sentence: "openai-a sk-…abcd revoked_key (quarantined 10:02:00Z); openai-b sk-…wxyz
    /// rate-limited until 10:03:30Z".
    pub fn keys_sentence(&self) -> String {
        let standings = self.keys.standings();
        let mut parts = Vec::with_capacity(standings.len());
        for (i, standing) in standings.iter().enumerate() {
            let name = &self.keys.names[i];
            let key = self.lifecycle(i).current();
            let fingerprint = key
                .snapshot()
                .map_or_else(|| "no key".to_owned(), |s| s.fingerprint.to_string());
            let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
            parts.push(match (standing, &*key) {
                (
                    Standing::Quarantined {
                        cause,
                        at: when,
                        fingerprint,
                        ..
                    },
                    _,
                ) => {
                    format!("{name} {fingerprint} {cause} (quarantined {})", at(*when))
                }
                (
                    Standing::Cooling {
                        until_wall,
                        fingerprint,
                        ..
                    },
                    _,
                ) => {
                    format!(
                        "{name} {fingerprint} rate-limited until {}",
                        at(*until_wall)
                    )
                }
                (_, KeyState::Unavailable(why)) => {
                    format!("{name} unavailable ({}: {})", why.reason, why.message)
                }
                _ => format!("{name} {fingerprint} active"),
            });
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_round_robin_spreads_each_share_evenly() {
        assert_eq!(&*schedule(&[2, 1]), &[0, 1, 0]);
        assert_eq!(&*schedule(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(&*schedule(&[0, 3]), &[1, 1, 1]);
        assert!(schedule(&[0, 0]).is_empty());
    }

    #[test]
    fn a_cooled_key_ramps_back_then_takes_its_whole_share() {
        let t0 = Instant::now();
        let rest = Duration::from_secs(40);
        let standing: Box<[Standing]> = vec![
            Standing::Active,
            Standing::Cooling {
                until: t0 + rest,
                until_wall: SystemTime::now() + rest,
                rested: rest,
                fingerprint: "sk-…abcd".into(),
            },
        ]
        .into();
        let share = |s: &PoolState| s.schedule.iter().filter(|&&i| i == 1).count();
        let cooling = PoolState::draw(standing, &[1, 1], t0);
        assert_eq!(share(&cooling), 0);
        assert_eq!(cooling.next_change, Some(t0 + rest));
        let back = PoolState::draw(cooling.standing.clone(), &[1, 1], t0 + rest);
        assert_eq!(share(&back), 1, "a quarter of its share first");
        let later = PoolState::draw(back.standing.clone(), &[1, 1], t0 + rest + rest / 2);
        assert_eq!(share(&later), 3);
        let done = PoolState::draw(later.standing.clone(), &[1, 1], t0 + rest * 2);
        assert!(matches!(done.standing[1], Standing::Active));
        assert_eq!(share(&done), 4);
        assert_eq!(done.next_change, None);
    }

    #[test]
    fn retry_after_in_milliseconds_seconds_or_a_date() {
        let now = SystemTime::now();
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(1500)));
        let mut h = http::HeaderMap::new();
        let later = now + Duration::from_secs(90);
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let got = retry_after(&h, now).unwrap().as_secs();
        assert!((89..=90).contains(&got), "{got}");
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn only_key_class_reasons_bench_a_key() {
        let cd = Duration::from_secs(30);
        assert_eq!(
            Verdict::of(Reason::RevokedKey, None, cd),
            Some(Verdict::Quarantine(Reason::RevokedKey))
        );
        assert_eq!(
            Verdict::of(Reason::RateLimited, None, cd),
            Some(Verdict::Cool(cd))
        );
        assert_eq!(
            Verdict::of(Reason::RateLimited, Some(Duration::from_secs(5)), cd),
            Some(Verdict::Cool(Duration::from_secs(5)))
        );
        for not_the_key in [
            Reason::UpstreamUnreachable,
            Reason::UpstreamTimeout,
            Reason::UnknownAuthError,
            Reason::InsufficientPermissions,
            Reason::OrgMismatch,
        ] {
            assert_eq!(Verdict::of(not_the_key, None, cd), None, "{not_the_key}");
        }
    }
}
