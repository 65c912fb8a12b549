//! The history's schema and its migrations. The version is SQLite's `user_version`; the file
//! is marked as simpool's by `application_id`, so a database of something else given as
//! `--history` is left alone instead of having tables added to it.
//!
//! A change of schema appends a step to [`MIGRATIONS`]: step *i* takes version *i* to *i*+1,
//! in one transaction with the version bump, so a failed step leaves the file as it was.
//! A file newer than this build is not touched (an older simpool after a downgrade runs
//! without history rather than damage it).

use rusqlite::{Connection, TransactionBehavior};

/// `SPOL`: what `PRAGMA application_id` says in simpool's history.
pub const APPLICATION_ID: i32 = 0x5350_4f4c;

/// Times are milliseconds since the Unix epoch (UTC); words are those of `record.rs`.
const V1: &str = "
CREATE TABLE leases (
    id              INTEGER PRIMARY KEY,
    card            INTEGER NOT NULL CHECK (card BETWEEN 1 AND 256),
    iccid           TEXT,
    imsi            TEXT,
    holder_kind     TEXT NOT NULL,
    front_end       TEXT NOT NULL,
    user            TEXT,
    reservation     INTEGER,
    note            TEXT,
    start_ms        INTEGER NOT NULL,
    end_ms          INTEGER,
    why             TEXT,                       -- NULL while the lease is held
    exchanges       INTEGER NOT NULL DEFAULT 0,
    errors          INTEGER NOT NULL DEFAULT 0,
    authentications INTEGER NOT NULL DEFAULT 0,
    pin_failures    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX leases_start ON leases (start_ms);
CREATE INDEX leases_end ON leases (end_ms);
CREATE INDEX leases_card ON leases (card, start_ms);
CREATE INDEX leases_iccid ON leases (iccid, start_ms);
CREATE INDEX leases_user ON leases (user, start_ms);
CREATE INDEX leases_open ON leases (id) WHERE why IS NULL;

CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    card    INTEGER NOT NULL CHECK (card BETWEEN 1 AND 256),
    time_ms INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    iccid   TEXT,
    imsi    TEXT,
    user    TEXT,
    lease   INTEGER,
    detail  TEXT
);
CREATE INDEX events_time ON events (time_ms);
CREATE INDEX events_card ON events (card, time_ms);

CREATE TABLE labels (
    card   INTEGER NOT NULL CHECK (card BETWEEN 1 AND 256),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    set_ms INTEGER NOT NULL,
    PRIMARY KEY (card, key)
) WITHOUT ROWID;
CREATE INDEX labels_key_value ON labels (key, value);
";

/// Step *i* takes the schema from version *i* to *i*+1.
pub const MIGRATIONS: &[&str] = &[V1];

/// The schema version this build writes.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

/// Why a file cannot be taken as this build's history.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "schema version {found} is newer than this simpool's ({known}); the file is left untouched"
    )]
    Newer { found: u32, known: u32 },
    #[error(
        "not simpool's history (a SQLite database of something else); the file is left untouched"
    )]
    NotOurs,
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Whether this build can take the file with `steps`, without writing to it: the version it
/// has (0: a new, empty file).
pub fn inspect(conn: &Connection, steps: &[&str]) -> Result<u32, SchemaError> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let app: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let known = steps.len() as u32;
    if app != APPLICATION_ID {
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        if app != 0 || found != 0 || tables != 0 {
            return Err(SchemaError::NotOurs);
        }
    }
    if found > known {
        return Err(SchemaError::Newer { found, known });
    }
    Ok(found)
}

/// Brings the file to the last version of `steps`: from nothing, or from an older version.
/// Returns the version it found.
pub fn migrate(conn: &mut Connection, steps: &[&str]) -> Result<u32, SchemaError> {
    let found = inspect(conn, steps)?;
    for (i, step) in steps.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.commit()?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[&str] = &[
        "CREATE TABLE a (x INTEGER);",
        "ALTER TABLE a ADD COLUMN y TEXT; CREATE TABLE b (z INTEGER);",
    ];

    fn version(c: &Connection) -> u32 {
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn migrates_from_nothing_and_from_each_older_version() {
        let mut c = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut c, &STEPS[..1]).unwrap(), 0);
        c.execute("INSERT INTO a (x) VALUES (7)", []).unwrap();
        // An older file (version 1) gets only the missing step; its rows stay.
        assert_eq!(migrate(&mut c, STEPS).unwrap(), 1);
        assert_eq!(version(&c), 2);
        let y: Option<String> = c
            .query_row("SELECT y FROM a WHERE x = 7", [], |r| r.get(0))
            .unwrap();
        assert_eq!(y, None);
        assert_eq!(migrate(&mut c, STEPS).unwrap(), 2);
    }

    #[test]
    fn a_failing_step_leaves_the_version_and_the_file_as_they_were() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c, &STEPS[..1]).unwrap();
        let bad = [STEPS[0], "CREATE TABLE c (q INTEGER); THIS IS NOT SQL;"];
        assert!(migrate(&mut c, &bad).is_err());
        assert_eq!(version(&c), 1);
        let c_exists: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'c'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(c_exists, 0);
    }

    #[test]
    fn newer_files_and_other_databases_are_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c, STEPS).unwrap();
        assert!(matches!(
            migrate(&mut c, &STEPS[..1]),
            Err(SchemaError::Newer { found: 2, known: 1 })
        ));
        let mut other = Connection::open_in_memory().unwrap();
        other
            .execute_batch("CREATE TABLE mine (x INTEGER);")
            .unwrap();
        assert!(matches!(
            migrate(&mut other, STEPS),
            Err(SchemaError::NotOurs)
        ));
        let mut real = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut real, MIGRATIONS).unwrap(), 0);
        assert_eq!(version(&real), VERSION);
    }
}
