//! The store's schema, one migration per version (`PRAGMA user_version`). A migration is
//! appended, never edited: a database at version N runs migrations N+1.. in one transaction each.
//! Times are RFC 3339 text in UTC, so `sqlite3 keyproxy.db` shows them readably and they sort.

/// `MIGRATIONS[i]` takes the database from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the key lifecycle.
    "CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    INSERT INTO meta (name, value) VALUES ('salt', randomblob(32));
    CREATE TABLE rotations (
        id               INTEGER PRIMARY KEY,
        at               TEXT NOT NULL,
        upstream         TEXT NOT NULL,
        trigger          TEXT NOT NULL,
        who              TEXT NOT NULL,
        result           TEXT NOT NULL,
        from_fingerprint TEXT,
        from_generation  INTEGER,
        to_fingerprint   TEXT,
        to_generation    INTEGER,
        code             TEXT,
        sentence         TEXT
    );
    CREATE INDEX rotations_by_upstream ON rotations (upstream, at);
    CREATE TABLE retired_keys (
        upstream    TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        key_hash    BLOB NOT NULL,
        key_length  INTEGER NOT NULL,
        generation  INTEGER NOT NULL,
        retired_at  TEXT NOT NULL,
        PRIMARY KEY (upstream, key_hash)
    );
    CREATE TABLE sightings (
        upstream    TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        app         TEXT NOT NULL,
        first_seen  TEXT NOT NULL,
        last_seen   TEXT NOT NULL,
        count       INTEGER NOT NULL,
        PRIMARY KEY (upstream, fingerprint, app)
    );
    CREATE TABLE keys_in_service (
        upstream    TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        key_hash    BLOB NOT NULL,
        key_length  INTEGER NOT NULL,
        generation  INTEGER NOT NULL,
        since       TEXT NOT NULL,
        key         TEXT
    );
    CREATE TABLE key_expiry (
        upstream    TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        expires_at  TEXT NOT NULL,
        PRIMARY KEY (upstream, fingerprint)
    );",
    // 2: what the traffic said.
    "CREATE TABLE diagnoses (
        id          INTEGER PRIMARY KEY,
        at          TEXT NOT NULL,
        upstream    TEXT NOT NULL,
        status      INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        sentence    TEXT NOT NULL,
        fingerprint TEXT,
        generation  INTEGER
    );
    CREATE INDEX diagnoses_by_upstream ON diagnoses (upstream, id);
    CREATE TABLE usage_daily (
        day        TEXT NOT NULL,
        upstream   TEXT NOT NULL,
        client     TEXT NOT NULL,
        model      TEXT NOT NULL,
        tokens_in  INTEGER NOT NULL,
        tokens_out INTEGER NOT NULL,
        PRIMARY KEY (day, upstream, client, model)
    );",
    // 3: a pool's run-time membership and each key's standing, so both outlive a restart. A key
    // added at run time lives in a 0600 file under the state directory: `file` names it, the key
    // itself is never here. Likewise a key kept for the next start (`keys_in_service.key_file`;
    // `Store::open` moves what the old `key` column held out to such files and clears it).
    "ALTER TABLE keys_in_service ADD COLUMN key_file TEXT;
    CREATE TABLE pool_members (
        upstream   TEXT NOT NULL,
        name       TEXT NOT NULL,
        file       TEXT,
        weight     INTEGER NOT NULL DEFAULT 1,
        added_at   TEXT,
        retire_at  TEXT,
        retired_at TEXT,
        generation INTEGER,
        fingerprint TEXT,
        PRIMARY KEY (upstream, name)
    );
    CREATE TABLE key_standings (
        upstream    TEXT NOT NULL,
        name        TEXT NOT NULL,
        state       TEXT NOT NULL,
        cause       TEXT,
        since       TEXT NOT NULL,
        until       TEXT,
        rested_ms   INTEGER,
        generation  INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        PRIMARY KEY (upstream, name)
    );",
];

/// The version this keyproxy writes.
pub const VERSION: u32 = MIGRATIONS.len() as u32;
