//! A pool's run-time membership and its keys' standing, kept beyond a restart: keys added through
//! the admin API (by the 0600 file that holds each, never the key), keys retired from the pool or
//! due to retire after a grace period, and quarantines and cool-downs. Membership changes are
//! operator actions, written at once; standings change on the rare path of a refusal and go
//! through the writer thread, never blocking a request.

use std::path::PathBuf;
use std::time::SystemTime;

use rusqlite::params;

use super::{parse_time, Store, Write};
use crate::time::rfc3339_string;

/// One key of a pool as the store remembers it.
#[derive(Debug, Clone)]
pub struct MemberRow {
    pub name: String,
    /// The key file of a key added at run time; `None` for a configured key.
    pub file: Option<PathBuf>,
    pub weight: u32,
    /// When it retires by itself (a grace period after its successor was added).
    pub retire_at: Option<SystemTime>,
    /// When it left the pool, the generation it left at (a configured key rejoins when its
    /// source yields another key) and the retired key's fingerprint.
    pub retired: Option<(SystemTime, u64, String)>,
}

/// A key's standing other than active, as of `generation` (a new key lifts it).
#[derive(Debug, Clone)]
pub struct StandingRow {
    pub name: String,
    /// `quarantined` or `cooling`.
    pub state: String,
    pub cause: Option<String>,
    pub since: SystemTime,
    pub until: Option<SystemTime>,
    pub rested_ms: u64,
    pub generation: u64,
    pub fingerprint: String,
}

/// A standing to keep (`Some`) or forget (`None`), for the writer thread.
pub(super) struct StandingWrite {
    upstream: String,
    name: String,
    row: Option<StandingRow>,
}

impl Store {
    /// The directory the store lives in (added keys' files go under it).
    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map_or_else(|| PathBuf::from("."), ToOwned::to_owned)
    }

    /// Where key `name` of `upstream`, added at run time, is kept: `<state_dir>/keys/<upstream>/
    /// <name>` (its directory made 0700 if need be). The file itself is the caller's to write.
    pub fn added_key_file(&self, upstream: &str, name: &str) -> std::io::Result<PathBuf> {
        let dir = self.dir().join("keys").join(upstream);
        super::private_dir(&dir)?;
        let file = dir.join(name);
        // Proven writable before the key is checked and joins: the file is all that keeps an
        // added key, and a rotation only warns when it cannot write one (a read-only state
        // directory, a name too long for the file system). Nothing of the key is in it yet; a
        // file left by a crash before its row was written goes (the name is in no pool).
        let mut options = std::fs::OpenOptions::new();
        options.create(true).truncate(true).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&file)?;
        std::fs::remove_file(&file)?;
        Ok(file)
    }

    /// Key files under `<state_dir>/keys/<upstream>/` that no row names (`kept`: the files of the
    /// keys in the pool): a crash between writing an added key's file and recording its row
    /// leaves one. Removed, so no key lingers on disk that nothing uses; their names are returned.
    pub fn remove_orphan_key_files(&self, upstream: &str, kept: &[PathBuf]) -> Vec<String> {
        let dir = self.dir().join("keys").join(upstream);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|path| path.is_file() && !kept.contains(path))
            .filter_map(|path| {
                let name = path.file_name()?.to_string_lossy().into_owned();
                std::fs::remove_file(&path).ok().map(|()| name)
            })
            .collect()
    }

    /// Every key of `upstream` the store knows something about.
    pub fn pool_members(&self, upstream: &str) -> Result<Vec<MemberRow>, rusqlite::Error> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, file, weight, retire_at, retired_at, generation, fingerprint FROM pool_members
             WHERE upstream = ?1 ORDER BY added_at, name",
        )?;
        let rows = stmt.query_map([upstream], |r| {
            let retire_at: Option<String> = r.get(3)?;
            let retired_at: Option<String> = r.get(4)?;
            let generation: Option<u64> = r.get(5)?;
            let fingerprint: Option<String> = r.get(6)?;
            Ok(MemberRow {
                name: r.get(0)?,
                file: r.get::<_, Option<String>>(1)?.map(PathBuf::from),
                weight: r.get(2)?,
                retire_at: retire_at.as_deref().map(parse_time),
                retired: retired_at.as_deref().map(|at| {
                    (
                        parse_time(at),
                        generation.unwrap_or(0),
                        fingerprint.unwrap_or_default(),
                    )
                }),
            })
        })?;
        rows.collect()
    }

    /// A key joined the pool at run time (a name used before starts afresh).
    pub fn member_added(
        &self,
        upstream: &str,
        name: &str,
        file: &std::path::Path,
        weight: u32,
    ) -> Result<(), rusqlite::Error> {
        self.conn().execute(
            "INSERT INTO pool_members (upstream, name, file, weight, added_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (upstream, name) DO UPDATE SET file = excluded.file, weight = excluded.weight,
                added_at = excluded.added_at, retire_at = NULL, retired_at = NULL, generation = NULL,
                fingerprint = NULL",
            params![upstream, name, file.display().to_string(), weight, rfc3339_string(SystemTime::now())],
        )?;
        Ok(())
    }

    /// Key `name` retires by itself at `at` (`None`: it no longer does).
    pub fn member_retires_at(
        &self,
        upstream: &str,
        name: &str,
        at: Option<SystemTime>,
    ) -> Result<(), rusqlite::Error> {
        self.conn().execute(
            "INSERT INTO pool_members (upstream, name, retire_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (upstream, name) DO UPDATE SET retire_at = excluded.retire_at",
            params![upstream, name, at.map(rfc3339_string)],
        )?;
        Ok(())
    }

    /// Key `name` left the pool at `generation`. An added key's row goes (its file is gone); a
    /// configured key's stays, so it stays out after a restart.
    pub fn member_retired(
        &self,
        upstream: &str,
        name: &str,
        added: bool,
        generation: u64,
        fingerprint: &str,
    ) -> Result<(), rusqlite::Error> {
        let conn = self.conn();
        if added {
            conn.execute(
                "DELETE FROM pool_members WHERE upstream = ?1 AND name = ?2",
                params![upstream, name],
            )?;
        } else {
            conn.execute(
                "INSERT INTO pool_members (upstream, name, retired_at, generation, fingerprint)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (upstream, name) DO UPDATE SET retire_at = NULL, retired_at = excluded.retired_at,
                    generation = excluded.generation, fingerprint = excluded.fingerprint",
                params![upstream, name, rfc3339_string(SystemTime::now()), generation, fingerprint],
            )?;
        }
        conn.execute(
            "DELETE FROM key_standings WHERE upstream = ?1 AND name = ?2",
            params![upstream, name],
        )?;
        Ok(())
    }

    /// A configured key whose source yielded another key is back in the pool.
    pub fn member_rejoined(&self, upstream: &str, name: &str) -> Result<(), rusqlite::Error> {
        self.conn().execute(
            "DELETE FROM pool_members WHERE upstream = ?1 AND name = ?2 AND file IS NULL",
            params![upstream, name],
        )?;
        Ok(())
    }

    /// The standings kept for `upstream`'s keys.
    pub fn standings(&self, upstream: &str) -> Result<Vec<StandingRow>, rusqlite::Error> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, state, cause, since, until, rested_ms, generation, fingerprint
             FROM key_standings WHERE upstream = ?1",
        )?;
        let rows = stmt.query_map([upstream], |r| {
            let since: String = r.get(3)?;
            let until: Option<String> = r.get(4)?;
            Ok(StandingRow {
                name: r.get(0)?,
                state: r.get(1)?,
                cause: r.get(2)?,
                since: parse_time(&since),
                until: until.as_deref().map(parse_time),
                rested_ms: r.get::<_, Option<u64>>(5)?.unwrap_or(0),
                generation: r.get(6)?,
                fingerprint: r.get(7)?,
            })
        })?;
        rows.collect()
    }

    /// Key `name`'s standing changed: keep it (`Some`) or forget it (`None`, active again). Off
    /// the request path, through the writer thread.
    pub fn standing_changed(&self, upstream: &str, name: &str, row: Option<StandingRow>) {
        self.queue(Write::Standing(StandingWrite {
            upstream: upstream.to_owned(),
            name: name.to_owned(),
            row,
        }));
    }
}

pub(super) fn apply_standing(
    conn: &rusqlite::Connection,
    w: StandingWrite,
) -> Result<(), rusqlite::Error> {
    match w.row {
        None => conn.execute(
            "DELETE FROM key_standings WHERE upstream = ?1 AND name = ?2",
            params![w.upstream, w.name],
        )?,
        Some(s) => conn.execute(
            "INSERT INTO key_standings (upstream, name, state, cause, since, until, rested_ms, generation, fingerprint)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (upstream, name) DO UPDATE SET state = excluded.state, cause = excluded.cause,
                since = excluded.since, until = excluded.until, rested_ms = excluded.rested_ms,
                generation = excluded.generation, fingerprint = excluded.fingerprint",
            params![
                w.upstream,
                w.name,
                s.state,
                s.cause,
                rfc3339_string(s.since),
                s.until.map(rfc3339_string),
                s.rested_ms,
                s.generation,
                s.fingerprint
            ],
        )?,
    };
    Ok(())
}
