//! A pool's membership at run time: a key added through the admin API joins the pool (validated
//! like any rotation, kept in a 0600 file under the state directory and named in the state
//! store), a key retired leaves it for good (remembered as retired), and a grace period retires
//! the replaced key by itself. All of it outlives a restart: membership and standings are read
//! back from the store at startup.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::keys::{Member, Membership, Standing};
use super::Upstream;
use crate::key::history::KeyHistory;
use crate::key::lifecycle::{App, KeyLifecycle, KeyProbe, RotateOptions, Rotated};
use crate::key::rotation::{RetiredKey, Trigger};
use crate::key::store::digest;
use crate::key::{KeySnapshot, KeySource, Secret};
use crate::metrics::CredentialMatch;
use crate::reason::Reason;
use crate::state::Store;

/// Keys a pool may hold, retired ones included until a restart (indexed by `u16` on the request
/// path, and each is a metric label).
pub const MAX_MEMBERS: usize = 64;
/// The longest name a key added at run time may have: it names a file (`keys/<upstream>/<name>`,
/// `kept/<upstream>.<name>`), a metric label and log lines.
pub const MAX_NAME: usize = 64;

/// What `add_key` is asked to do.
pub struct Addition {
    pub name: String,
    pub weight: u32,
    pub secret: Secret,
    pub options: RotateOptions,
}

impl Upstream {
    /// A lifecycle for a key of this upstream read from `file` (a key added at run time).
    fn added_lifecycle(&self, name: &str, file: PathBuf, store: &Arc<Store>) -> KeyLifecycle {
        let mut settings = self.keys.template.clone();
        settings.history = format!("{}/{name}", self.name).into();
        settings.primary = false;
        settings.source = KeySource::File(file);
        let life = KeyLifecycle::new(settings, Arc::clone(&self.keys.upstream_metrics));
        life.attach_history(Arc::clone(store) as Arc<dyn KeyHistory>);
        life
    }

    fn member(&self, name: &str, weight: u32) -> Member {
        let name: Arc<str> = name.into();
        Member {
            metric: self.keys.metrics.member(&name),
            name,
            weight,
        }
    }

    /// `mode=add`: the key joins the pool under `name` once it passes what any rotation must (lint,
    /// expiry, the probe when asked); a refused key never joins and nothing of it is written.
    pub async fn add_key(
        &self,
        add: Addition,
        probe: &dyn KeyProbe,
    ) -> Result<Rotated, Membership> {
        let _one_at_a_time = self.keys.changing.lock().await;
        // A key added at run time is a plain key read from a file: it cannot stand beside keys
        // that keyproxy mints or signs with (their requests are built differently).
        if let Some((code, what)) = match &self.keys.template.source {
            KeySource::Minted(_) => Some(("minted_credential", "mints short-lived tokens")),
            KeySource::Aws(_) => Some(("aws_credentials", "signs with AWS credentials")),
            _ => None,
        } {
            return Err(Membership::Conflict {
                code,
                message: format!("upstream {} {what}, so no plain key can join it: change the credential's sources instead", self.name),
            });
        }
        let name = add.name.as_str();
        if !crate::config::valid_name(name) || name.len() > MAX_NAME {
            return Err(Membership::Conflict {
                code: "bad_name",
                message: format!("name={name:?}: key names use only letters, digits, '-' and '_', at most {MAX_NAME} of them"),
            });
        }
        if self.keys.position(name).is_some() {
            return Err(Membership::Conflict {
                code: "name_taken",
                message: format!("upstream {} already has a key named {name}; pick another name, or rotate it in place with mode=replace", self.name),
            });
        }
        if self.keys.count() >= MAX_MEMBERS {
            return Err(Membership::Conflict {
                code: "pool_full",
                message: format!("upstream {} holds {MAX_MEMBERS} keys, retired ones included; restart keyproxy to let the retired ones go", self.name),
            });
        }
        let Some(store) = self.store.get() else {
            return Err(Membership::Conflict {
                code: "no_state_store",
                message: "adding a key needs the state store (the key is kept in a 0600 file under [server] state_dir and named there, so it outlives a restart)".into(),
            });
        };
        let wanted = digest(add.secret.expose());
        let state = self.keys.standings();
        for (i, standing) in state.iter().enumerate() {
            let current = self.lifecycle(i).current();
            let Some(k) = current.snapshot() else {
                continue;
            };
            if k.digest == wanted && !matches!(standing, Standing::Retired { .. }) {
                return Err(Membership::Conflict {
                    code: "key_in_pool",
                    message: format!(
                        "that key ({}) is already in the pool of {} as {}",
                        k.fingerprint,
                        self.name,
                        self.keys.name(i)
                    ),
                });
            }
        }
        let file = store.added_key_file(&self.name, name).map_err(|e| {
            Membership::Failed(format!(
                "cannot make a place for the new key under the state directory: {e}"
            ))
        })?;
        let life = self.added_lifecycle(name, file.clone(), store);
        life.recall();
        let rotated = match life
            .rotate_with(add.secret, Trigger::Admin, add.options, probe)
            .await
        {
            Ok(rotated) => rotated,
            Err(refusal) => {
                let _ = std::fs::remove_file(&file);
                return Err(Membership::Refused(refusal));
            }
        };
        if let Err(e) = store.member_added(&self.name, name, &file, add.weight) {
            let _ = std::fs::remove_file(&file);
            return Err(Membership::Failed(format!(
                "the state store could not record the new key, so it did not join: {e}"
            )));
        }
        self.keys.join(self.member(name, add.weight), Some(life));
        for key in self.lifecycles() {
            key.in_pool();
        }
        tracing::info!(upstream = %self.name, key = name, fingerprint = %rotated.fingerprint, "key {name} ({}) joined the pool of {}", rotated.fingerprint, self.name);
        self.refresh_keys();
        Ok(rotated)
    }

    /// `mode=retire`: key `name` leaves the pool, its key remembered as retired (`None`: it had
    /// no key loaded). Never the last usable key.
    pub async fn retire_key(
        &self,
        name: &str,
        who: &'static str,
        why: &str,
    ) -> Result<Option<RetiredKey>, Membership> {
        let _one_at_a_time = self.keys.changing.lock().await;
        let Some(i) = self.keys.position(name) else {
            return Err(self.unknown_key(name));
        };
        let standings = self.keys.standings();
        if let Some(Standing::Retired { at, .. }) = standings.get(i) {
            return Err(Membership::Conflict {
                code: "already_retired",
                message: format!(
                    "key {name} of {} was retired at {} already",
                    self.name,
                    humantime::format_rfc3339_seconds(*at)
                ),
            });
        }
        let usable = |j: usize| {
            let loaded = self.lifecycle(j).current().snapshot().is_some();
            loaded
                && !matches!(
                    standings[j],
                    Standing::Quarantined { .. } | Standing::Retired { .. }
                )
        };
        if !(0..standings.len()).any(|j| j != i && usable(j)) {
            return Err(Membership::Conflict {
                code: "last_usable_key",
                message: format!("key {name} is the last usable key of {}: requests would have no key; add another first (POST /keys/{}?mode=add&name=…), or reinstate one", self.name, self.name),
            });
        }
        let life = self.lifecycle(i);
        let retired = life.retire_in_service(who, why).await;
        let generation = life.store.generation();
        let fingerprint = retired
            .as_ref()
            .map_or_else(|| "no key".to_owned(), |r| r.fingerprint.to_string());
        // Keys 0..=others.len() are configured; the rest were added at run time.
        let added = (i > self.keys.others.len()).then(|| life.source().clone());
        let at = SystemTime::now();
        let standing = Standing::Retired {
            at,
            generation,
            fingerprint: fingerprint.clone(),
        };
        tracing::info!(upstream = %self.name, key = name, fingerprint = %fingerprint, generation, who, "key {name} ({fingerprint}) left the pool of {}: {why}", self.name);
        self.keys.set_retiring(i, None);
        self.keys.redraw_now(|s| s[i] = standing.clone());
        if let Some(store) = self.store.get() {
            if let Err(e) =
                store.member_retired(&self.name, name, added.is_some(), generation, &fingerprint)
            {
                tracing::error!(upstream = %self.name, key = name, "the state store could not record that key {name} was retired ({e}); after a restart it may serve again");
            }
        }
        // The key itself goes with its member: nothing of it stays on disk.
        if let Some(KeySource::File(file)) = added {
            if let Err(e) = std::fs::remove_file(&file) {
                tracing::warn!(upstream = %self.name, key = name, "cannot remove the retired key's file {} ({e}); remove it by hand", file.display());
            }
        }
        self.refresh_keys();
        Ok(retired)
    }

    /// Whether key `i` may be rotated in place: a key added at run time and retired since is gone
    /// (its file with it); it comes back only as a new key. (A configured key that was retired
    /// rejoins with the new key, as when its source yields one.)
    pub fn replaceable(&self, i: usize) -> Result<(), Membership> {
        let added = i > self.keys.others.len();
        match self.keys.standings().get(i) {
            Some(Standing::Retired { .. }) if added => Err(Membership::Conflict {
                code: "retired_key",
                message: format!(
                    "key {} of {} was retired; add a key with mode=add",
                    self.keys.name(i),
                    self.name
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Key `name` retires by itself at `at` (a grace period; `None`: no longer): remembered in
    /// the store so a restart keeps the appointment. The caller arms the timer.
    pub fn retire_later(&self, name: &str, at: Option<SystemTime>) -> Result<(), Membership> {
        let Some(i) = self.keys.position(name) else {
            return Err(self.unknown_key(name));
        };
        if let Some(Standing::Retired { .. }) = self.keys.standings().get(i) {
            return Err(Membership::Conflict {
                code: "already_retired",
                message: format!("key {name} of {} was retired already", self.name),
            });
        }
        if let Some(store) = self.store.get() {
            store.member_retires_at(&self.name, name, at).map_err(|e| {
                Membership::Failed(format!(
                    "the state store could not record the grace period: {e}"
                ))
            })?;
        }
        self.keys.set_retiring(i, at);
        Ok(())
    }

    /// Startup, before the keys are loaded: the keys added at run time that are still in the
    /// pool join it again, and grace periods still running are picked up. (Also where every key of
    /// a pool learns it is one.)
    pub fn restore_members(&self) {
        self.restore_added_members();
        if self.keys.is_pool() {
            for key in self.lifecycles() {
                key.in_pool();
            }
        }
    }

    fn restore_added_members(&self) {
        let Some(store) = self.store.get() else {
            return;
        };
        let rows = match store.pool_members(&self.name) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(upstream = %self.name, "state store: cannot read the pool's keys added at run time ({e}); starting with the configured keys");
                return;
            }
        };
        let kept: Vec<PathBuf> = rows
            .iter()
            .filter(|row| row.retired.is_none())
            .filter_map(|row| row.file.clone())
            .collect();
        for name in store.remove_orphan_key_files(&self.name, &kept) {
            tracing::warn!(upstream = %self.name, key = %name, "removed the key file of {name}, which never joined the pool (keyproxy stopped between writing it and recording it); add the key again if it is wanted");
        }
        for row in rows {
            match (self.keys.position(&row.name), &row.file) {
                (None, Some(file)) if row.retired.is_none() && self.keys.count() < MAX_MEMBERS => {
                    let life = self.added_lifecycle(&row.name, file.clone(), store);
                    self.keys
                        .join(self.member(&row.name, row.weight), Some(life));
                }
                _ => {}
            }
            if let (Some(i), Some(at)) = (self.keys.position(&row.name), row.retire_at) {
                self.keys.set_retiring(i, Some(at));
            }
        }
    }

    /// Startup, after the keys are loaded: a key retired stays retired (a configured one until
    /// its source yields another key), a quarantined key stays quarantined and a cooling key
    /// keeps cooling until its time, as long as each still holds the key they were about.
    pub fn restore_standings(&self) {
        let Some(store) = self.store.get() else {
            return;
        };
        let now = SystemTime::now();
        let mut restored: Vec<(usize, Standing)> = Vec::new();
        if let Ok(rows) = store.pool_members(&self.name) {
            for row in rows {
                let (Some(i), Some((at, generation, fingerprint))) =
                    (self.keys.position(&row.name), row.retired)
                else {
                    continue;
                };
                let life = self.lifecycle(i);
                if life.current().snapshot().is_none() || life.store.generation() == generation {
                    restored.push((
                        i,
                        Standing::Retired {
                            at,
                            generation: life.store.generation(),
                            fingerprint,
                        },
                    ));
                } else {
                    tracing::info!(upstream = %self.name, key = %row.name, "key {} is back in the pool: its source yields another key than the one retired", row.name);
                    let _ = store.member_rejoined(&self.name, &row.name);
                }
            }
        }
        let standings = store.standings(&self.name).unwrap_or_else(|e| {
            tracing::warn!(upstream = %self.name, "state store: cannot read the keys' standings ({e}); every key starts active");
            Vec::new()
        });
        for row in standings {
            let Some(i) = self.keys.position(&row.name) else {
                continue;
            };
            let same_key = self.lifecycle(i).current().snapshot().map(|k| k.generation)
                == Some(row.generation);
            let standing = match (row.state.as_str(), row.until) {
                _ if !same_key => None,
                ("quarantined", _) => row.cause.as_deref().and_then(Reason::parse).map(|cause| {
                    Standing::Quarantined {
                        cause,
                        at: row.since,
                        generation: row.generation,
                        fingerprint: row.fingerprint.clone(),
                    }
                }),
                ("cooling", Some(until_wall)) => {
                    until_wall
                        .duration_since(now)
                        .ok()
                        .map(|left| Standing::Cooling {
                            until: Instant::now() + left,
                            until_wall,
                            rested: std::time::Duration::from_millis(row.rested_ms),
                            fingerprint: row.fingerprint.clone(),
                        })
                }
                _ => None,
            };
            match standing {
                Some(s) if !restored.iter().any(|(j, _)| *j == i) => restored.push((i, s)),
                Some(_) => {}
                None => store.standing_changed(&self.name, &row.name, None),
            }
        }
        for (i, standing) in &restored {
            let name = self.keys.name(*i);
            tracing::info!(upstream = %self.name, key = %name, state = standing.as_str(), "key {name} is {} as before the restart", standing.as_str());
        }
        if !restored.is_empty() {
            self.keys.redraw_now(|s| {
                for (i, standing) in &restored {
                    if let Some(slot) = s.get_mut(*i) {
                        *slot = standing.clone();
                    }
                }
            });
        }
        self.refresh_keys();
    }

    /// Compare the credential an app sent (before it is stripped) with the keys keyproxy knows:
    /// in a pool, every key's current and retired keys.
    pub fn observe_credential(
        &self,
        slot: Option<usize>,
        sent: &str,
        app: App<'_>,
        snapshot: &KeySnapshot,
    ) {
        if slot.is_none() || !self.keys.is_pool() {
            return self.key.observe_client_credential(sent, app, snapshot);
        }
        let keys: Vec<_> = (0..self.keys.count()).map(|i| self.lifecycle(i)).collect();
        let hashed = digest(sent);
        let current = keys.iter().any(|l| {
            l.current()
                .snapshot()
                .is_some_and(|k| k.len == sent.len() && k.digest == hashed)
        });
        let seen = if current {
            CredentialMatch::Current
        } else if keys.iter().any(|l| l.sighted_retired(sent, app)) {
            CredentialMatch::Retired
        } else {
            CredentialMatch::Unknown
        };
        self.metrics.credential(seen);
    }
}
