//! Several keys per upstream: each key's standing (active, cooling after a rate limit, ramping
//! back, quarantined after a key-class refusal), decided by the diagnosis, and the choice of key
//! per request — smooth weighted round-robin over the usable keys, read from one `ArcSwap`
//! snapshot plus one atomic counter (no lock). A `key = …` upstream is a pool of one and never
//! touches any of it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use super::Upstream;
use crate::key::lifecycle::{KeyLifecycle, KeySettings};
use crate::key::rotation::Attempt;
use crate::key::KeyState;
use crate::metrics::{KeyMetric, KeyMetrics, UpstreamMetrics};
use crate::reason::Reason;
use crate::state::pool::StandingRow;

/// A recovered key comes back in this many steps of a growing share (1/4, 2/4, 3/4, all).
const RAMP_STEPS: u32 = 4;
/// The longest rest a provider's `Retry-After` can buy a key (a typo'd header must not bench a
/// key for a day).
const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// The keys of one upstream: the configured ones besides the first (which is `Upstream::key`),
/// the members added at run time, every key's name and weight, and the pool's standing.
pub struct KeyPool {
    /// Configured keys 1.. of the pool (fixed for the life of the process).
    pub others: Box<[KeyLifecycle]>,
    /// Keys added at run time, each set once and kept until the process ends (a retired one
    /// too), so a reference to one lives as long as the upstream: key `others.len() + 1 + k` is
    /// `added[k]`. Bounded by `members::MAX_MEMBERS`.
    pub(super) added: Box<[OnceLock<Box<KeyLifecycle>>]>,
    state: ArcSwap<PoolState>,
    /// More than one member: requests choose among them. A `key = …` upstream reads only this
    /// flag until a key is added to it.
    pooled: AtomicBool,
    /// Where each request is in the schedule: one relaxed add per request.
    cursor: AtomicUsize,
    /// A rate limit's rest when the provider names none.
    pub cooldown: Duration,
    /// How long a replaced key keeps serving after `mode=add&retire=…` (the upstream's `grace`).
    pub grace: Option<Duration>,
    pub metrics: KeyMetrics,
    /// What a key added at run time is set up with (its source and history name aside).
    pub(super) template: KeySettings,
    pub(super) upstream_metrics: Arc<UpstreamMetrics>,
    /// One membership change at a time (each awaits a probe, a file and the store).
    pub(super) changing: tokio::sync::Mutex<()>,
}

/// One key of the pool.
pub struct Member {
    pub name: Arc<str>,
    pub weight: u32,
    pub metric: KeyMetric,
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
    /// Left the pool (`mode=retire`, or a grace period's end): a configured key rejoins when its
    /// source yields another key (a generation other than `generation`); an added key never does.
    Retired {
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
            Standing::Retired { .. } => "retired",
        }
    }

    /// `keyproxy_key_state`'s value (3, no key loaded, is the lifecycle's to say).
    pub fn code(&self) -> i64 {
        match self {
            Standing::Active | Standing::Ramping { .. } => 0,
            Standing::Cooling { .. } => 1,
            Standing::Quarantined { .. } | Standing::Retired { .. } => 2,
        }
    }
}

/// One immutable picture of the pool, swapped whole: who is in it, how each stands, and the
/// schedule. Members are only ever appended (a retired key keeps its place until a restart), so
/// an index taken from one picture names the same key in every later one.
struct PoolState {
    members: Arc<[Arc<Member>]>,
    /// When each member retires by itself (a grace period running).
    retiring: Box<[Option<SystemTime>]>,
    plan: Plan,
}

/// The standings and what they make of the schedule.
#[derive(Debug)]
struct Plan {
    standing: Box<[Standing]>,
    /// Key indices in smooth weighted round-robin order, one slot per unit of effective weight.
    schedule: Box<[u16]>,
    /// When a cool-down or a ramp step ends (the picture must be redrawn then).
    next_change: Option<Instant>,
    /// Quarantined and retired keys and the generation they were benched at: a new key from the
    /// source lifts it.
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
    fn draw(
        members: Arc<[Arc<Member>]>,
        standing: Box<[Standing]>,
        retiring: Box<[Option<SystemTime>]>,
        now: Instant,
    ) -> PoolState {
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        PoolState {
            plan: Plan::draw(standing, &weights, now),
            members,
            retiring,
        }
    }
}

impl Plan {
    /// Draw the picture for these standings at `now`: ended cool-downs become ramps, finished
    /// ramps become active, and the schedule gives each key its share.
    fn draw(mut standing: Box<[Standing]>, weights: &[u32], now: Instant) -> Plan {
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
                Standing::Quarantined { generation, .. } | Standing::Retired { generation, .. } => {
                    quarantined.push((i as u16, *generation));
                    0
                }
            };
        }
        Plan {
            schedule: schedule(&effective),
            standing,
            next_change,
            quarantined: quarantined.into_boxed_slice(),
        }
    }
}

impl KeyPool {
    pub fn new(
        members: Vec<Member>,
        others: Vec<KeyLifecycle>,
        cooldown: Duration,
        grace: Option<Duration>,
        metrics: KeyMetrics,
        template: KeySettings,
        upstream_metrics: Arc<UpstreamMetrics>,
    ) -> KeyPool {
        let n = members.len();
        let members: Arc<[Arc<Member>]> = members.into_iter().map(Arc::new).collect();
        let standing = vec![Standing::Active; n].into_boxed_slice();
        let state = PoolState::draw(members, standing, vec![None; n].into(), Instant::now());
        KeyPool {
            others: others.into_boxed_slice(),
            added: (0..super::members::MAX_MEMBERS)
                .map(|_| OnceLock::new())
                .collect(),
            state: ArcSwap::from_pointee(state),
            pooled: AtomicBool::new(n > 1),
            cursor: AtomicUsize::new(0),
            cooldown,
            grace,
            metrics,
            template,
            upstream_metrics,
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// More than one key: requests choose among them.
    #[inline]
    pub fn is_pool(&self) -> bool {
        self.pooled.load(Ordering::Relaxed)
    }

    /// Each key's standing now (for /status, metrics and the exhausted sentence).
    pub fn standings(&self) -> Vec<Standing> {
        self.state.load().plan.standing.to_vec()
    }

    /// Every member's name, in order (retired ones too, until a restart).
    pub fn names(&self) -> Vec<Arc<str>> {
        self.state
            .load()
            .members
            .iter()
            .map(|m| Arc::clone(&m.name))
            .collect()
    }

    /// Key `i`'s name.
    pub fn name(&self, i: usize) -> Arc<str> {
        self.state
            .load()
            .members
            .get(i)
            .map_or_else(|| "?".into(), |m| Arc::clone(&m.name))
    }

    /// The index of the key named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.state
            .load()
            .members
            .iter()
            .position(|m| &*m.name == name)
    }

    /// When each key retires by itself, for those with a grace period running.
    pub fn retiring(&self) -> Vec<(Arc<str>, SystemTime)> {
        let state = self.state.load();
        state
            .members
            .iter()
            .zip(state.retiring.iter())
            .filter_map(|(m, at)| Some((Arc::clone(&m.name), (*at)?)))
            .collect()
    }

    /// Key `i` retires by itself at `at`, if it is still in the pool (`None`: no longer).
    pub(super) fn set_retiring(&self, i: usize, at: Option<SystemTime>) {
        self.state.rcu(|old| {
            let mut retiring = old.retiring.clone();
            if let Some(r) = retiring.get_mut(i) {
                *r = at;
            }
            PoolState {
                members: Arc::clone(&old.members),
                retiring,
                plan: Plan::draw(
                    old.plan.standing.clone(),
                    &weights(&old.members),
                    Instant::now(),
                ),
            }
        });
    }

    /// One request answered through key `slot`.
    pub fn request(&self, slot: usize, status: u16) {
        if let Some(m) = self.state.load().members.get(slot) {
            m.metric.request(status);
        }
    }

    /// Redraw the picture at `now`, with `change` applied to the standings first.
    fn redraw(&self, now: Instant, change: impl Fn(&mut [Standing])) {
        self.state.rcu(|old| {
            let mut standing = old.plan.standing.clone();
            change(&mut standing);
            PoolState::draw(
                Arc::clone(&old.members),
                standing,
                old.retiring.clone(),
                now,
            )
        });
    }

    /// Redraw the picture now, with `change` applied to the standings first.
    pub(super) fn redraw_now(&self, change: impl Fn(&mut [Standing])) {
        self.redraw(Instant::now(), change);
    }

    /// A key joins the pool (active at once); `added`: its lifecycle, for a key added at run
    /// time. Joins are one at a time (`changing`, or startup), and `members::MAX_MEMBERS` was
    /// checked: the next slot is free.
    pub(super) fn join(&self, member: Member, added: Option<KeyLifecycle>) {
        if let Some(life) = added {
            let slot = self.count().saturating_sub(1 + self.others.len());
            if let Some(Err(_)) = self.added.get(slot).map(|s| s.set(Box::new(life))) {
                tracing::error!(key = %member.name, "a pool slot for an added key was taken twice");
            }
        }
        let member = Arc::new(member);
        self.state.rcu(|old| {
            let mut members = old.members.to_vec();
            members.push(Arc::clone(&member));
            let mut standing = old.plan.standing.to_vec();
            standing.push(Standing::Active);
            let mut retiring = old.retiring.to_vec();
            retiring.push(None);
            PoolState::draw(
                members.into(),
                standing.into(),
                retiring.into(),
                Instant::now(),
            )
        });
        self.pooled.store(true, Ordering::Relaxed);
    }

    /// How many keys the pool holds (retired ones too, until a restart).
    pub fn count(&self) -> usize {
        self.state.load().members.len()
    }
}

fn weights(members: &[Arc<Member>]) -> Vec<u32> {
    members.iter().map(|m| m.weight).collect()
}

impl Upstream {
    /// Key `i` of the pool: 0 is `self.key`, then the configured keys, then those added at run
    /// time. (`self.key` for an index the pool never handed out.)
    pub fn lifecycle(&self, i: usize) -> &KeyLifecycle {
        let Some(j) = i.checked_sub(1) else {
            return &self.key;
        };
        if let Some(life) = self.keys.others.get(j) {
            return life;
        }
        self.keys
            .added
            .get(j - self.keys.others.len())
            .and_then(OnceLock::get)
            .map_or(&self.key, |life| &**life)
    }

    /// Every key that is read from its source: the configured ones (a retired one rejoins when
    /// its source yields another key) and those added at run time that are still in the pool.
    pub fn lifecycles(&self) -> impl Iterator<Item = &KeyLifecycle> {
        let state = self.keys.state.load();
        let configured = 1 + self.keys.others.len();
        let added: Vec<&KeyLifecycle> = (configured..state.members.len())
            .filter(|&i| !matches!(state.plan.standing.get(i), Some(Standing::Retired { .. })))
            .map(|i| self.lifecycle(i))
            .collect();
        std::iter::once(&self.key)
            .chain(self.keys.others.iter())
            .chain(added)
    }

    /// The key for the next request of a pool, other than `except`: its index and snapshot, or
    /// `None` when no key is usable. One `ArcSwap` load, one atomic add.
    pub fn pick_key(&self, except: Option<usize>) -> Option<(usize, Arc<KeyState>)> {
        let pool = &self.keys;
        let mut state = pool.state.load();
        let stale = state.plan.next_change.is_some_and(|t| Instant::now() >= t)
            || state
                .plan
                .quarantined
                .iter()
                .any(|&(i, g)| self.lifecycle(usize::from(i)).store.generation() != g);
        if stale || state.plan.schedule.is_empty() {
            self.refresh_keys();
            state = pool.state.load();
        }
        let schedule = &state.plan.schedule;
        let len = schedule.len();
        let start = pool.cursor.fetch_add(1, Ordering::Relaxed);
        for k in 0..len {
            let i = usize::from(schedule[(start + k) % len]);
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

    /// Set `keyproxy_key_state` (and, for a pool, each key's expiry) from the pool's picture and
    /// each key's lifecycle. A retired key's series go.
    fn publish_key_states(&self) {
        let state = self.keys.state.load();
        let pooled = self.keys.is_pool();
        let mut any_loaded = false;
        for (i, (member, standing)) in state
            .members
            .iter()
            .zip(state.plan.standing.iter())
            .enumerate()
        {
            if let Standing::Retired { .. } = standing {
                member.metric.remove();
                continue;
            }
            let key = self.lifecycle(i).current();
            any_loaded |= key.snapshot().is_some();
            let code = match &*key {
                KeyState::Unavailable(_) => 3,
                KeyState::Ready(_) => standing.code(),
            };
            member.metric.state(code);
            if pooled {
                let at = key.snapshot().and_then(|k| k.expires_at);
                member.metric.expiry(at.map(crate::time::unix_seconds));
            }
        }
        // A pool has a usable key while any of its keys is loaded (as `/readyz` says).
        if pooled {
            self.metrics.key_usable.set(i64::from(any_loaded));
        }
    }

    /// Bring the pool's picture up to date: ended cool-downs and ramp steps, quarantined (or
    /// retired configured) keys whose source now yields another key.
    pub fn refresh_keys(&self) {
        let state = self.keys.state.load();
        let generations: Vec<u64> = (0..state.members.len())
            .map(|i| self.lifecycle(i).store.generation())
            .collect();
        let lifted: Vec<(usize, bool)> = state
            .plan
            .standing
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Standing::Quarantined { generation, .. } if generations[i] != *generation => {
                    Some((i, false))
                }
                Standing::Retired { generation, .. } if generations[i] != *generation => {
                    Some((i, true))
                }
                _ => None,
            })
            .collect();
        drop(state);
        self.keys.redraw(Instant::now(), |standing| {
            for (i, s) in standing.iter_mut().enumerate() {
                if let Standing::Quarantined { generation, .. }
                | Standing::Retired { generation, .. } = s
                {
                    if generations.get(i).is_some_and(|g| g != generation) {
                        *s = Standing::Active;
                    }
                }
            }
        });
        for (i, retired) in lifted {
            let name = self.keys.name(i);
            match retired {
                true => {
                    tracing::info!(upstream = %self.name, key = %name, "key {name} is back in the pool: its source yields another key");
                    if let Some(store) = self.store.get() {
                        if let Err(e) = store.member_rejoined(&self.name, &name) {
                            tracing::warn!(upstream = %self.name, key = %name, "state store: cannot record that key {name} rejoined: {e}");
                        }
                    }
                }
                false => self.remember_standing(&name, None),
            }
        }
        self.publish_key_states();
    }

    /// Keep key `name`'s standing in the state store (`None`: active again), off the request path.
    fn remember_standing(&self, name: &str, standing: Option<&Standing>) {
        let Some(store) = self.store.get() else {
            return;
        };
        let row = match standing {
            Some(Standing::Quarantined {
                cause,
                at,
                generation,
                fingerprint,
            }) => Some(StandingRow {
                name: name.to_owned(),
                state: "quarantined".into(),
                cause: Some(cause.as_str().to_owned()),
                since: *at,
                until: None,
                rested_ms: 0,
                generation: *generation,
                fingerprint: fingerprint.clone(),
            }),
            Some(Standing::Cooling {
                until_wall,
                rested,
                fingerprint,
                ..
            }) => Some(StandingRow {
                name: name.to_owned(),
                state: "cooling".into(),
                cause: Some(Reason::RateLimited.as_str().to_owned()),
                since: SystemTime::now(),
                until: Some(*until_wall),
                rested_ms: u64::try_from(rested.as_millis()).unwrap_or(u64::MAX),
                generation: self.lifecycle_generation(name),
                fingerprint: fingerprint.clone(),
            }),
            _ => None,
        };
        store.standing_changed(&self.name, name, row);
    }

    fn lifecycle_generation(&self, name: &str) -> u64 {
        self.keys
            .position(name)
            .and_then(|i| self.lifecycle(i).current().snapshot().map(|k| k.generation))
            .unwrap_or(0)
    }

    /// The last rotation attempt of the key `key` is (the first key's when it is none of the
    /// pool's), for the explanation of a refusal.
    pub fn last_attempt_for(&self, key: &KeyState) -> Option<Attempt> {
        if !self.keys.is_pool() {
            return self.key.last_attempt();
        }
        let digest = key.snapshot()?.digest;
        let state = self.keys.state.load();
        (0..state.members.len())
            .map(|i| self.lifecycle(i))
            .find(|l| l.current().snapshot().is_some_and(|k| k.digest == digest))
            .unwrap_or(&self.key)
            .last_attempt()
    }

    /// The provider refused key `i` (as of `generation`) for `reason`: bench it as the verdict
    /// says. A refusal of a key already rotated out is old news and changes nothing.
    pub fn key_refused(&self, i: usize, generation: u64, verdict: Verdict) {
        let current = self.lifecycle(i).current();
        let Some(snapshot) = current.snapshot().filter(|s| s.generation == generation) else {
            return;
        };
        let name = self.keys.name(i);
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
        // A quarantine outranks a cool-down; a cool-down already running keeps the later end; a
        // retired key stays retired.
        let keep = |s: &Standing| match (s, &standing) {
            (Standing::Quarantined { .. }, Standing::Cooling { .. }) => true,
            (Standing::Cooling { until: a, .. }, Standing::Cooling { until: b, .. }) => a >= b,
            (Standing::Retired { .. }, _) => true,
            _ => false,
        };
        let before = self.keys.state.load().plan.standing.get(i).cloned();
        self.keys.redraw(now, |s| {
            if !keep(&s[i]) {
                s[i] = standing.clone();
            }
        });
        // Kept only on a change of state (a key refused again while benched writes nothing).
        if before
            .as_ref()
            .map_or(true, |b| !keep(b) && b.as_str() != standing.as_str())
        {
            self.remember_standing(&name, Some(&standing));
        }
        self.publish_key_states();
    }

    /// An operator says key `name` is fine again: it rejoins at once.
    pub fn reinstate_key(&self, name: &str) -> Result<(), Membership> {
        let Some(i) = self.keys.position(name) else {
            return Err(self.unknown_key(name));
        };
        if let Some(Standing::Retired { .. }) = self.keys.standings().get(i) {
            return Err(Membership::Conflict {
                code: "retired_key",
                message: format!("key {name} of {} was retired; a retired key comes back only when its source yields another key, or as a new key (POST /keys/{}?mode=add&name=…)", self.name, self.name),
            });
        }
        tracing::info!(upstream = %self.name, key = %name, "key {name} reinstated by an operator");
        self.keys
            .redraw(Instant::now(), |s| s[i] = Standing::Active);
        self.remember_standing(name, None);
        self.publish_key_states();
        Ok(())
    }

    /// The answer for a key name the pool does not hold, naming those it does.
    pub fn unknown_key(&self, name: &str) -> Membership {
        let names: Vec<String> = self.keys.names().iter().map(|n| n.to_string()).collect();
        Membership::NotFound(format!(
            "upstream {} has no key named {name:?}; its keys are {}",
            self.name,
            names.join(", ")
        ))
    }

    /// Every key's name, fingerprint, state, cause and until-when, for the `keys_exhausted`
    /// sentence: "openai-a sk-…abcd revoked_key (quarantined 10:02:00Z); openai-b sk-…wxyz
    /// rate-limited until 10:03:30Z". Retired keys have left the pool and are not named.
    pub fn keys_sentence(&self) -> String {
        let state = self.keys.state.load();
        let mut parts = Vec::with_capacity(state.members.len());
        for (i, standing) in state.plan.standing.iter().enumerate() {
            let name = &state.members[i].name;
            let key = self.lifecycle(i).current();
            let fingerprint = key
                .snapshot()
                .map_or_else(|| "no key".to_owned(), |s| s.fingerprint.to_string());
            let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
            parts.push(match (standing, &*key) {
                (Standing::Retired { .. }, _) => continue,
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

/// Why a change to a pool's keys (add, retire, reinstate) was not made.
#[derive(Debug, thiserror::Error)]
pub enum Membership {
    /// No such key.
    #[error("{0}")]
    NotFound(String),
    /// The pool is not in a state that allows it (the last usable key, a name taken, …).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The candidate key was refused, as a rotation's would be.
    #[error("{0}")]
    Refused(crate::key::rotation::Refusal),
    /// The change could not be made to stick (a file, the state store).
    #[error("{0}")]
    Failed(String),
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
        let share = |s: &Plan| s.schedule.iter().filter(|&&i| i == 1).count();
        let cooling = Plan::draw(standing, &[1, 1], t0);
        assert_eq!(share(&cooling), 0);
        assert_eq!(cooling.next_change, Some(t0 + rest));
        let back = Plan::draw(cooling.standing.clone(), &[1, 1], t0 + rest);
        assert_eq!(share(&back), 1, "a quarter of its share first");
        let later = Plan::draw(back.standing.clone(), &[1, 1], t0 + rest + rest / 2);
        assert_eq!(share(&later), 3);
        let done = Plan::draw(later.standing.clone(), &[1, 1], t0 + rest * 2);
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
