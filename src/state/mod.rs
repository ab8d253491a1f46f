//! The durable store: one SQLite file, `keyproxy.db` in `[server] state_dir` (WAL, created 0700 /
//! 0600), holding the key lifecycle's history — rotations and refusals, retired keys (as salted
//! hashes), which app still sends one, the last diagnoses. It implements `key::history::KeyHistory`
//! for the lifecycle. Nothing here runs per request: sightings and diagnoses go to a writer
//! thread over a bounded channel and are dropped when it is behind.

mod kept;
pub mod pool;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::key::history::{
    Applied, InService, KeyHistory, Recalled, Refused, Retirement, Sighting,
};
use crate::key::rotation::RetiredKey;
use crate::key::Fingerprint;
use crate::metrics::UsageSink;
use crate::time::rfc3339_string;

/// The file in `state_dir`.
pub const FILE_NAME: &str = "keyproxy.db";
/// Diagnoses kept per upstream.
pub const DIAGNOSES_KEPT: i64 = 1000;
/// Sightings and diagnoses waiting for the writer; beyond this they are dropped.
const WRITER_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path} has schema version {found}, newer than this keyproxy knows ({known}); use a newer keyproxy or another state_dir")]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
}

/// Distinct models kept per upstream and day; beyond this, tokens are counted under `other`.
pub const MODELS_PER_DAY: i64 = 50;

/// Work for the writer thread.
enum Write {
    Sighting(Sighting),
    Diagnosis(DiagnosisRow),
    Usage(UsageRow),
    Standing(pool::StandingWrite),
}

/// Tokens by day, upstream, client and model.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRow {
    pub day: String,
    pub upstream: String,
    pub client: String,
    pub model: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

/// One upstream's token counts, into `usage_daily` (through the writer thread).
struct DailyUsage {
    store: Arc<Store>,
    upstream: Arc<str>,
}

impl UsageSink for DailyUsage {
    fn record(&self, client: Option<&str>, model: &str, input: u64, output: u64) {
        let today = rfc3339_string(SystemTime::now());
        self.store.queue(Write::Usage(UsageRow {
            day: today.get(..10).unwrap_or(&today).to_owned(),
            upstream: self.upstream.to_string(),
            client: client.unwrap_or("").to_owned(),
            model: model.to_owned(),
            tokens_in: input,
            tokens_out: output,
        }));
    }
}

/// An explained refusal as the store keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct DiagnosisRow {
    pub at: String,
    pub upstream: String,
    pub status: u16,
    pub reason: String,
    pub sentence: String,
    pub fingerprint: Option<String>,
    pub generation: Option<u64>,
}

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    salt: [u8; 32],
    writer: Option<SyncSender<Write>>,
    /// The writer thread, joined on drop so what is queued at shutdown is written.
    written: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.writer = None;
        if let Some(thread) = self.written.take() {
            let _ = thread.join();
        }
    }
}

impl Store {
    /// Open (creating it and its directory if need be) and migrate the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        create_private_dir(dir)?;
        let path = dir.join(FILE_NAME);
        create_private_file(&path)?;
        let sql = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(sql)?;
        configure(&conn).map_err(sql)?;
        migrate(&mut conn, &path)?;
        kept::move_out_of_the_database(&conn, dir).map_err(sql)?;
        let salt = read_salt(&conn).map_err(sql)?;
        let writer_conn = Connection::open(&path).map_err(sql)?;
        configure(&writer_conn).map_err(sql)?;
        let (tx, rx) = sync_channel::<Write>(WRITER_QUEUE);
        let written = std::thread::Builder::new()
            .name("keyproxy-state".into())
            .spawn(move || {
                while let Ok(write) = rx.recv() {
                    if let Err(e) = apply(&writer_conn, write) {
                        tracing::warn!("state store: a write failed: {e}");
                    }
                }
            })
            .map_err(|source| StateError::File {
                path: path.clone(),
                source,
            })?;
        Ok(Store {
            path,
            conn: Mutex::new(conn),
            salt,
            writer: Some(tx),
            written: Some(written),
        })
    }

    /// Open an existing store for reading only (`keyproxy history` while the server runs).
    pub fn open_read_only(dir: &Path) -> Result<Store, StateError> {
        let path = dir.join(FILE_NAME);
        let sql = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            return Err(StateError::File {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no store yet (keyproxy run creates it)",
                ),
            });
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        let salt = read_salt(&conn).map_err(sql)?;
        Ok(Store {
            path,
            conn: Mutex::new(conn),
            salt,
            writer: None,
            written: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the file.
    pub fn version(&self) -> Result<u32, rusqlite::Error> {
        self.conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self, write: Write) {
        if let Some(writer) = &self.writer {
            if let Err(TrySendError::Full(_)) = writer.try_send(write) {
                tracing::debug!("state store writer is behind; a record was dropped");
            }
        }
    }

    /// Where `upstream`'s token counts go (`metrics::UsageSink`).
    pub fn usage_sink(self: &Arc<Self>, upstream: &str) -> Arc<dyn UsageSink> {
        Arc::new(DailyUsage {
            store: Arc::clone(self),
            upstream: upstream.into(),
        })
    }

    /// Tokens by day, newest day first.
    pub fn usage(&self, query: &Query) -> Result<Vec<UsageRow>, rusqlite::Error> {
        let conn = self.conn();
        let since_day: String = query.since_text().chars().take(10).collect();
        let mut stmt = conn.prepare(
            "SELECT day, upstream, client, model, tokens_in, tokens_out FROM usage_daily
             WHERE (?1 IS NULL OR upstream = ?1) AND day >= ?2
             ORDER BY day DESC, upstream, client, model LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![query.upstream, since_day, query.limit], |r| {
            Ok(UsageRow {
                day: r.get(0)?,
                upstream: r.get(1)?,
                client: r.get(2)?,
                model: r.get(3)?,
                tokens_in: r.get(4)?,
                tokens_out: r.get(5)?,
            })
        })?;
        rows.collect()
    }

    /// Keep an explained refusal (off the request path; dropped when the writer is behind).
    pub fn diagnosis(&self, row: DiagnosisRow) {
        self.queue(Write::Diagnosis(row));
    }

    /// Rotations and refusals, newest first.
    pub fn rotations(&self, query: &Query) -> Result<Vec<RotationRow>, rusqlite::Error> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, upstream, trigger, who, result, from_fingerprint, from_generation,
                    to_fingerprint, to_generation, code, sentence
             FROM rotations
             WHERE (?1 IS NULL OR upstream = ?1) AND at >= ?2
             ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![query.upstream, query.since_text(), query.limit],
            |r| {
                Ok(RotationRow {
                    at: r.get(0)?,
                    upstream: r.get(1)?,
                    trigger: r.get(2)?,
                    who: r.get(3)?,
                    result: r.get(4)?,
                    from_fingerprint: r.get(5)?,
                    from_generation: r.get(6)?,
                    to_fingerprint: r.get(7)?,
                    to_generation: r.get(8)?,
                    code: r.get(9)?,
                    sentence: r.get(10)?,
                })
            },
        )?;
        rows.collect()
    }

    /// Retired keys, newest first, each with the apps seen sending it.
    pub fn retired(&self, query: &Query) -> Result<Vec<RetiredRow>, rusqlite::Error> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT upstream, fingerprint, generation, retired_at FROM retired_keys
             WHERE (?1 IS NULL OR upstream = ?1)
             ORDER BY retired_at DESC, generation DESC LIMIT ?2",
        )?;
        let mut retired: Vec<RetiredRow> = stmt
            .query_map(params![query.upstream, query.limit], |r| {
                Ok(RetiredRow {
                    upstream: r.get(0)?,
                    fingerprint: r.get(1)?,
                    generation: r.get(2)?,
                    retired_at: r.get(3)?,
                    sightings: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut seen = conn.prepare(
            "SELECT app, first_seen, last_seen, count FROM sightings
             WHERE upstream = ?1 AND fingerprint = ?2 AND last_seen >= ?3 ORDER BY last_seen DESC",
        )?;
        for row in &mut retired {
            row.sightings = seen
                .query_map(
                    params![row.upstream, row.fingerprint, query.since_text()],
                    |r| {
                        Ok(SightingRow {
                            app: r.get(0)?,
                            first_seen: r.get(1)?,
                            last_seen: r.get(2)?,
                            count: r.get(3)?,
                        })
                    },
                )?
                .collect::<Result<_, _>>()?;
        }
        Ok(retired)
    }

    /// The last explained refusals, newest first.
    pub fn diagnoses(&self, query: &Query) -> Result<Vec<DiagnosisRow>, rusqlite::Error> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, upstream, status, reason, sentence, fingerprint, generation FROM diagnoses
             WHERE (?1 IS NULL OR upstream = ?1) AND at >= ?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![query.upstream, query.since_text(), query.limit],
            |r| {
                Ok(DiagnosisRow {
                    at: r.get(0)?,
                    upstream: r.get(1)?,
                    status: r.get(2)?,
                    reason: r.get(3)?,
                    sentence: r.get(4)?,
                    fingerprint: r.get(5)?,
                    generation: r.get(6)?,
                })
            },
        )?;
        rows.collect()
    }
}

/// Which part of the history to read.
#[derive(Debug, Clone)]
pub struct Query {
    pub upstream: Option<String>,
    pub since: Option<SystemTime>,
    pub limit: i64,
}

impl Query {
    fn since_text(&self) -> String {
        self.since.map(rfc3339_string).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RotationRow {
    pub at: String,
    pub upstream: String,
    pub trigger: String,
    pub who: String,
    pub result: String,
    pub from_fingerprint: Option<String>,
    pub from_generation: Option<u64>,
    pub to_fingerprint: Option<String>,
    pub to_generation: Option<u64>,
    pub code: Option<String>,
    pub sentence: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetiredRow {
    pub upstream: String,
    pub fingerprint: String,
    pub generation: u64,
    pub retired_at: String,
    pub sightings: Vec<SightingRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SightingRow {
    pub app: String,
    pub first_seen: String,
    pub last_seen: String,
    pub count: u64,
}

fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a rotation acknowledged is a rotation on disk, even on power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    let sql = |source| StateError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let found: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if found > schema::VERSION {
        return Err(StateError::TooNew {
            path: path.to_owned(),
            found,
            known: schema::VERSION,
        });
    }
    for (version, migration) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(sql)?;
        tx.execute_batch(migration).map_err(sql)?;
        tx.pragma_update(None, "user_version", version as u32 + 1)
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        tracing::info!(path = %path.display(), version = version + 1, "state store migrated");
    }
    Ok(())
}

fn read_salt(conn: &Connection) -> Result<[u8; 32], rusqlite::Error> {
    let salt: Vec<u8> = conn.query_row("SELECT value FROM meta WHERE name = 'salt'", [], |r| {
        r.get(0)
    })?;
    let mut out = [0u8; 32];
    for (o, s) in out.iter_mut().zip(salt) {
        *o = s;
    }
    Ok(out)
}

fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    private_dir(dir).map_err(|source| StateError::Dir {
        path: dir.to_owned(),
        source,
    })
}

/// `dir` and its missing parents, created 0700 (the state directory, and where keys are kept in it).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The file exists 0600 before SQLite opens it (its -wal and -shm files take the same mode).
fn create_private_file(path: &Path) -> Result<(), StateError> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map(drop)
        .map_err(|source| StateError::File {
            path: path.to_owned(),
            source,
        })
}

fn apply(conn: &Connection, write: Write) -> Result<(), rusqlite::Error> {
    match write {
        Write::Sighting(s) => {
            let at = rfc3339_string(s.at);
            conn.execute(
                "INSERT INTO sightings (upstream, fingerprint, app, first_seen, last_seen, count)
                 VALUES (?1, ?2, ?3, ?4, ?4, 1)
                 ON CONFLICT (upstream, fingerprint, app)
                 DO UPDATE SET last_seen = excluded.last_seen, count = count + 1",
                params![&*s.upstream, s.fingerprint.as_str(), s.app, at],
            )?;
        }
        Write::Diagnosis(d) => {
            conn.execute(
                "INSERT INTO diagnoses (at, upstream, status, reason, sentence, fingerprint, generation)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![d.at, d.upstream, d.status, d.reason, d.sentence, d.fingerprint, d.generation],
            )?;
            conn.execute(
                "DELETE FROM diagnoses WHERE upstream = ?1 AND id <= (
                    SELECT id FROM diagnoses WHERE upstream = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![d.upstream, DIAGNOSES_KEPT],
            )?;
        }
        Write::Standing(w) => pool::apply_standing(conn, w)?,
        Write::Usage(mut u) => {
            let known: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM usage_daily WHERE day = ?1 AND upstream = ?2 AND model = ?3)",
                params![u.day, u.upstream, u.model],
                |r| r.get(0),
            )?;
            if !known {
                let models: i64 = conn.query_row(
                    "SELECT COUNT(DISTINCT model) FROM usage_daily WHERE day = ?1 AND upstream = ?2",
                    params![u.day, u.upstream],
                    |r| r.get(0),
                )?;
                if models >= MODELS_PER_DAY {
                    u.model = "other".into();
                }
            }
            conn.execute(
                "INSERT INTO usage_daily (day, upstream, client, model, tokens_in, tokens_out)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (day, upstream, client, model) DO UPDATE SET
                    tokens_in = tokens_in + excluded.tokens_in, tokens_out = tokens_out + excluded.tokens_out",
                params![u.day, u.upstream, u.client, u.model, u.tokens_in, u.tokens_out],
            )?;
        }
    }
    Ok(())
}

fn parse_time(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap_or(SystemTime::UNIX_EPOCH)
}

fn hash_of(bytes: Vec<u8>) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = b;
    }
    out
}

impl Store {
    fn try_recall(&self, upstream: &str) -> Result<Recalled, rusqlite::Error> {
        let conn = self.conn();
        let in_service = conn
            .query_row(
                "SELECT fingerprint, key_hash, key_length, generation, key_file FROM keys_in_service WHERE upstream = ?1",
                [upstream],
                |r| {
                    let fingerprint: String = r.get(0)?;
                    Ok(InService {
                        fingerprint: Fingerprint::from_stored(&fingerprint),
                        hash: hash_of(r.get(1)?),
                        len: r.get(2)?,
                        generation: r.get(3)?,
                        stored: r
                            .get::<_, Option<String>>(4)?
                            .and_then(|file| kept::read(upstream, Path::new(&file))),
                    })
                },
            )
            .optional()?;
        let mut stmt = conn.prepare(
            "SELECT fingerprint, key_hash, key_length, generation, retired_at FROM retired_keys
             WHERE upstream = ?1 ORDER BY retired_at DESC, generation DESC",
        )?;
        let retired = stmt
            .query_map([upstream], |r| {
                let fingerprint: String = r.get(0)?;
                let at: String = r.get(4)?;
                Ok(RetiredKey {
                    fingerprint: Fingerprint::from_stored(&fingerprint),
                    digest: hash_of(r.get(1)?),
                    len: r.get(2)?,
                    generation: r.get(3)?,
                    retired_at: parse_time(&at),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let last_generation: u64 = conn.query_row(
            "SELECT MAX(g) FROM (
                SELECT COALESCE(MAX(to_generation), 0) AS g FROM rotations WHERE upstream = ?1
                UNION ALL SELECT COALESCE(MAX(generation), 0) FROM retired_keys WHERE upstream = ?1
                UNION ALL SELECT COALESCE(MAX(generation), 0) FROM keys_in_service WHERE upstream = ?1)",
            [upstream],
            |r| r.get(0),
        )?;
        let mut stmt =
            conn.prepare("SELECT fingerprint, expires_at FROM key_expiry WHERE upstream = ?1")?;
        let expiries = stmt
            .query_map([upstream], |r| {
                let at: String = r.get(1)?;
                Ok((r.get(0)?, parse_time(&at)))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Recalled {
            in_service,
            retired,
            last_generation,
            expiries,
        })
    }

    fn try_applied(&self, a: &Applied<'_>) -> Result<(), rusqlite::Error> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let at = rfc3339_string(a.at);
        tx.execute(
            "INSERT INTO rotations (at, upstream, trigger, who, result, from_fingerprint, from_generation, to_fingerprint, to_generation)
             VALUES (?1, ?2, ?3, ?4, 'applied', ?5, ?6, ?7, ?8)",
            params![
                at,
                a.upstream,
                a.trigger.as_str(),
                a.who,
                a.retired.map(|r| r.fingerprint.as_str()),
                a.retired.map(|r| r.generation),
                a.fingerprint.as_str(),
                a.generation
            ],
        )?;
        if let Some(r) = a.retired {
            tx.execute(
                "INSERT INTO retired_keys (upstream, fingerprint, key_hash, key_length, generation, retired_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (upstream, key_hash) DO UPDATE SET generation = excluded.generation, retired_at = excluded.retired_at",
                params![a.upstream, r.fingerprint.as_str(), &r.digest[..], r.len, r.generation, rfc3339_string(r.retired_at)],
            )?;
        }
        // A retired key reinstated by an explicit rotation is in service again, not retired.
        tx.execute(
            "DELETE FROM retired_keys WHERE upstream = ?1 AND key_hash = ?2",
            params![a.upstream, &a.hash[..]],
        )?;
        // A key kept for the next start goes to a 0600 file beside the store, never into it.
        let key_file = kept::keep(&self.dir(), a.upstream, a.keep)?;
        tx.execute(
            "INSERT INTO keys_in_service (upstream, fingerprint, key_hash, key_length, generation, since, key, key_file)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7)
             ON CONFLICT (upstream) DO UPDATE SET fingerprint = excluded.fingerprint, key_hash = excluded.key_hash,
                key_length = excluded.key_length, generation = excluded.generation, since = excluded.since,
                key = NULL, key_file = excluded.key_file",
            params![a.upstream, a.fingerprint.as_str(), &a.hash[..], a.len, a.generation, at, key_file.map(|f| f.display().to_string())],
        )?;
        if let (true, Some(expires)) = (a.explicit_expiry, a.expires_at) {
            tx.execute(
                "INSERT INTO key_expiry (upstream, fingerprint, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (upstream, fingerprint) DO UPDATE SET expires_at = excluded.expires_at",
                params![a.upstream, a.fingerprint.as_str(), rfc3339_string(expires)],
            )?;
        }
        tx.commit()
    }
}

impl KeyHistory for Store {
    fn salt(&self) -> [u8; 32] {
        self.salt
    }

    fn recall(&self, upstream: &str) -> Recalled {
        self.try_recall(upstream).unwrap_or_else(|e| {
            tracing::warn!(upstream, path = %self.path.display(), "state store: cannot read what was known about this upstream ({e}); starting without it");
            Recalled::default()
        })
    }

    fn applied(&self, rotation: &Applied<'_>) -> Result<(), String> {
        self.try_applied(rotation).map_err(|e| e.to_string())
    }

    fn refused(&self, r: &Refused<'_>) {
        let result = self.conn().execute(
            "INSERT INTO rotations (at, upstream, trigger, who, result, from_fingerprint, from_generation, to_fingerprint, code, sentence)
             VALUES (?1, ?2, ?3, ?4, 'rejected', ?5, ?6, ?7, ?8, ?9)",
            params![
                rfc3339_string(r.at),
                r.upstream,
                r.trigger.as_str(),
                r.who,
                r.kept.map(|k| k.0.as_str()),
                r.kept.map(|k| k.1),
                r.fingerprint.map(Fingerprint::as_str),
                r.code,
                r.sentence
            ],
        );
        if let Err(e) = result {
            tracing::warn!(
                upstream = r.upstream,
                "state store: cannot record the refused rotation: {e}"
            );
        }
    }

    fn sighted(&self, sighting: Sighting) {
        self.queue(Write::Sighting(sighting));
    }

    fn retired(&self, r: &Retirement<'_>) {
        if let Err(e) = self.try_retired(r) {
            tracing::warn!(
                upstream = r.upstream,
                "state store: cannot record the retired key: {e}"
            );
        }
    }
}

impl Store {
    fn try_retired(&self, r: &Retirement<'_>) -> Result<(), rusqlite::Error> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let at = rfc3339_string(r.at);
        let old = r.retired;
        tx.execute(
            "INSERT INTO rotations (at, upstream, trigger, who, result, from_fingerprint, from_generation)
             VALUES (?1, ?2, 'admin', ?3, 'retired', ?4, ?5)",
            params![at, r.upstream, r.who, old.fingerprint.as_str(), old.generation],
        )?;
        tx.execute(
            "INSERT INTO retired_keys (upstream, fingerprint, key_hash, key_length, generation, retired_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (upstream, key_hash) DO UPDATE SET generation = excluded.generation, retired_at = excluded.retired_at",
            params![r.upstream, old.fingerprint.as_str(), &old.digest[..], old.len, old.generation, at],
        )?;
        tx.execute(
            "DELETE FROM keys_in_service WHERE upstream = ?1",
            [r.upstream],
        )?;
        kept::keep(&self.dir(), r.upstream, None)?;
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_run_creates_a_private_store_at_the_latest_version() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nested/state");
        let store = Store::open(&state).unwrap();
        assert_eq!(store.version().unwrap(), schema::VERSION);
        assert_ne!(store.salt(), [0; 32], "a random salt per install");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&state), 0o700);
            assert_eq!(mode(&state.join(FILE_NAME)), 0o600);
        }
        let salt = store.salt();
        drop(store);
        assert_eq!(
            Store::open(&state).unwrap().salt(),
            salt,
            "the salt is kept"
        );
        assert_eq!(Store::open_read_only(&state).unwrap().salt(), salt);
    }

    #[test]
    fn a_store_from_the_previous_version_is_migrated_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO retired_keys VALUES ('openai', 'sk-proj-…abcd:01020304', x'00', 164, 3, '2026-12-01T10:00:00Z')",
                [],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.version().unwrap(), schema::VERSION);
        let recalled = store.recall("openai");
        assert_eq!(recalled.retired.len(), 1);
        assert_eq!(
            recalled.retired[0].fingerprint.as_str(),
            "sk-proj-…abcd:01020304"
        );
        assert_eq!(recalled.last_generation, 3);
        let query = Query {
            upstream: None,
            since: None,
            limit: 10,
        };
        assert!(
            store.diagnoses(&query).unwrap().is_empty(),
            "the new tables exist"
        );
    }

    #[test]
    fn a_key_an_older_store_kept_moves_to_a_private_file_and_leaves_no_trace_in_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let key = format!("sk-proj-KEPTINTHEDB{}", "x".repeat(140));
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
            conn.execute_batch(schema::MIGRATIONS[1]).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute(
                "INSERT INTO keys_in_service VALUES ('openai', 'sk-proj-…xxxx:01020304', x'00', 160, 2, '2026-12-01T10:00:00Z', ?1)",
                [&key],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let kept = dir.path().join("kept/openai");
        assert_eq!(std::fs::read_to_string(&kept).unwrap().trim_end(), key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let recalled = store.recall("openai");
        let stored = recalled.in_service.unwrap().stored.unwrap();
        assert_eq!(stored.expose(), key, "the next start still finds it");
        drop(store);
        for name in [FILE_NAME, "keyproxy.db-wal"] {
            let bytes = std::fs::read(dir.path().join(name)).unwrap_or_default();
            assert!(
                !bytes.windows(19).any(|w| w == b"sk-proj-KEPTINTHEDB"),
                "{name} still holds the key"
            );
        }
        // A later rotation from the source keeps nothing: the file goes.
        let store = Store::open(dir.path()).unwrap();
        store
            .applied(&Applied {
                upstream: "openai",
                at: SystemTime::now(),
                trigger: crate::key::rotation::Trigger::File,
                who: "file",
                retired: None,
                fingerprint: &Fingerprint::from_stored("sk-proj-…yyyy:01020304"),
                generation: 3,
                hash: [1; 32],
                len: 160,
                expires_at: None,
                explicit_expiry: false,
                keep: None,
            })
            .unwrap();
        assert!(!kept.exists());
        assert!(store.recall("openai").in_service.unwrap().stored.is_none());
    }

    #[test]
    fn a_store_from_a_newer_keyproxy_is_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
            conn.pragma_update(None, "user_version", schema::VERSION + 1)
                .unwrap();
        }
        let e = Store::open(dir.path()).err().unwrap();
        assert!(matches!(e, StateError::TooNew { .. }), "{e}");
        assert!(
            e.to_string().contains("newer than this keyproxy knows"),
            "{e}"
        );
    }

    #[test]
    fn daily_usage_adds_up_and_keeps_the_models_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let conn = store.conn();
        let row = |model: String, n: u64| UsageRow {
            day: "2026-12-01".into(),
            upstream: "openai".into(),
            client: "notebook".into(),
            model,
            tokens_in: n,
            tokens_out: 2 * n,
        };
        apply(&conn, Write::Usage(row("gpt-4o".into(), 10))).unwrap();
        apply(&conn, Write::Usage(row("gpt-4o".into(), 5))).unwrap();
        for i in 0..MODELS_PER_DAY + 3 {
            apply(&conn, Write::Usage(row(format!("m{i}"), 1))).unwrap();
        }
        drop(conn);
        let all = store
            .usage(&Query {
                upstream: Some("openai".into()),
                since: None,
                limit: 1000,
            })
            .unwrap();
        let gpt = all.iter().find(|u| u.model == "gpt-4o").unwrap();
        assert_eq!((gpt.tokens_in, gpt.tokens_out), (15, 30));
        assert_eq!(
            all.len() as i64,
            MODELS_PER_DAY + 1,
            "the rest counted as other"
        );
        let other = all.iter().find(|u| u.model == "other").unwrap();
        assert_eq!(other.tokens_in, 4);
    }

    #[test]
    fn what_is_queued_when_the_store_closes_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for _ in 0..3 {
            store.sighted(Sighting {
                upstream: "openai".into(),
                fingerprint: Fingerprint::from_stored("sk-proj-…abcd:01020304"),
                app: "user-agent app/1".into(),
                at: SystemTime::now(),
            });
        }
        drop(store);
        let store = Store::open_read_only(dir.path()).unwrap();
        let count: u64 = store
            .conn()
            .query_row("SELECT count FROM sightings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 3);
    }

    #[test]
    fn diagnoses_are_bounded_per_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let conn = store.conn();
        for i in 0..(DIAGNOSES_KEPT + 5) {
            let row = DiagnosisRow {
                at: format!("2026-12-01T10:00:{:02}Z", i % 60),
                upstream: "openai".into(),
                status: 401,
                reason: "invalid_key".into(),
                sentence: format!("refusal {i}"),
                fingerprint: None,
                generation: None,
            };
            apply(&conn, Write::Diagnosis(row)).unwrap();
        }
        let kept: i64 = conn
            .query_row("SELECT COUNT(*) FROM diagnoses", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, DIAGNOSES_KEPT);
    }
}
