//! Keys kept for the next start (a key rotated in through the admin API whose source cannot be
//! rewritten: env, command, a read-only file) live in 0600 files under `<state_dir>/kept/`, one
//! per upstream (`openai`, or `openai.a` for key `a` of a pool), and `keys_in_service.key_file`
//! names the file: no key is ever in the database. A store written by an older keyproxy, which
//! kept such keys in `keys_in_service.key`, has them moved out when it is opened — the column
//! cleared with `secure_delete` and the file vacuumed, so no page of it still holds the key.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use crate::key::source::{trim_one_newline, write_atomically};
use crate::key::Secret;

/// The file that keeps `upstream`'s key (its history name: `openai` or `openai/a`).
fn file_for(dir: &Path, upstream: &str) -> PathBuf {
    dir.join("kept").join(upstream.replace('/', "."))
}

/// Keep `key` for `upstream` (`None`: keep none, and remove what was kept). The file's path, for
/// the database.
pub(super) fn keep(
    dir: &Path,
    upstream: &str,
    key: Option<&Secret>,
) -> Result<Option<PathBuf>, rusqlite::Error> {
    let file = file_for(dir, upstream);
    let Some(key) = key else {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                upstream,
                "cannot remove the kept key {} ({e}); remove it by hand",
                file.display()
            ),
        }
        return Ok(None);
    };
    let written = super::private_dir(&dir.join("kept")).and_then(|()| write_atomically(&file, key));
    written.map_err(|e| {
        rusqlite::Error::ToSqlConversionFailure(
            format!("cannot keep the key in {}: {e}", file.display()).into(),
        )
    })?;
    Ok(Some(file))
}

/// The key kept in `file`, if it can be read.
pub(super) fn read(upstream: &str, file: &Path) -> Option<Secret> {
    match std::fs::read_to_string(file) {
        Ok(mut text) => {
            trim_one_newline(&mut text);
            Some(Secret::new(text))
        }
        Err(e) => {
            tracing::warn!(
                upstream,
                "cannot read the key kept in {} ({e}); starting without it",
                file.display()
            );
            None
        }
    }
}

/// Move keys an older keyproxy kept in `keys_in_service.key` out to files, and leave no trace of
/// them in the database file or its WAL.
pub(super) fn move_out_of_the_database(
    conn: &Connection,
    dir: &Path,
) -> Result<(), rusqlite::Error> {
    let mut stmt =
        conn.prepare("SELECT upstream, key FROM keys_in_service WHERE key IS NOT NULL")?;
    let held: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    drop(stmt);
    if held.is_empty() {
        return Ok(());
    }
    conn.pragma_update(None, "secure_delete", true)?;
    for (upstream, key) in held {
        let file = keep(dir, &upstream, Some(&Secret::new(key)))?;
        conn.execute(
            "UPDATE keys_in_service SET key = NULL, key_file = ?2 WHERE upstream = ?1",
            params![upstream, file.map(|f| f.display().to_string())],
        )?;
        tracing::info!(upstream, "state store: the key kept for the next start moved out of the database into a 0600 file under {}", dir.join("kept").display());
    }
    conn.execute_batch("VACUUM")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}
