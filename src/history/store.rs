//! The database itself, synchronous: opening (lock, WAL, check, migration, a corrupt file moved
//! aside), writing a batch in one transaction, the queries, labels, retention. One `Store` is
//! shared by the writer thread and the readers behind a mutex; nothing here is called on the
//! exchange path.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use rusqlite::ffi::ErrorCode;
use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, params_from_iter, Connection, OpenFlags, Row, TransactionBehavior};

use super::query::{Query, EVENT_COLUMNS, LEASE_COLUMNS};
use super::record::{
    check_key, Counters, EndReason, Event, EventRow, Label, Labels, LeaseBegan, LeaseEnded,
    LeaseId, LeaseRow,
};
use super::schema::{self, SchemaError};
use super::time::Timestamp;
use super::HistoryError;

impl ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.millis()))
    }
}

impl FromSql for Timestamp {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Timestamp> {
        v.as_i64().map(Timestamp::from_millis)
    }
}

impl ToSql for LeaseId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0))
    }
}

impl FromSql for LeaseId {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<LeaseId> {
        v.as_i64().map(LeaseId)
    }
}

/// One thing to write, as the writer thread receives it.
#[derive(Debug, Clone)]
pub(crate) enum Record {
    Began(LeaseId, Box<LeaseBegan>),
    /// The whole row again: a lost "began" (queue full, a failed batch) costs nothing here.
    Ended(LeaseId, Box<LeaseBegan>, LeaseEnded),
    Event(Box<Event>),
}

/// What a batch did.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub rows: u64,
    /// Records refused one by one (a constraint, a value too big); the rest went in.
    pub refused: Vec<rusqlite::Error>,
}

/// What opening found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// Where a corrupt or unreadable file was moved, and why.
    pub moved_aside: Option<(PathBuf, String)>,
    /// The schema version the file had (0: a new file).
    pub version_found: u32,
}

/// The history database of one daemon.
pub struct Store {
    path: PathBuf,
    conn: Connection,
    /// `FILE.lock`, locked while this store is open: a second daemon on the same file would
    /// close this one's open leases as crashed.
    _lock: File,
}

/// True for the errors that mean the file is not (or no longer) a sound database.
pub(crate) fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// True for errors that belong to one record rather than to the database.
fn is_record_error(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch)
    ) || matches!(e, rusqlite::Error::ToSqlConversionFailure(_))
}

enum OpenFailure {
    Corrupt(String),
    Fatal(HistoryError),
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> HistoryError + '_ {
    move |source| HistoryError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// u64 counters in SQLite's i64.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn lease_row(r: &Row<'_>) -> rusqlite::Result<LeaseRow> {
    let n = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok(LeaseRow {
        id: r.get(0)?,
        began: LeaseBegan {
            card: r.get(1)?,
            iccid: r.get(2)?,
            imsi: r.get(3)?,
            holder_kind: r.get(4)?,
            front_end: r.get(5)?,
            user: r.get(6)?,
            reservation: r.get::<_, Option<i64>>(7)?.map(|v| v.max(0) as u64),
            note: r.get(8)?,
            start: r.get(9)?,
        },
        end: r.get(10)?,
        why: r.get(11)?,
        counters: Counters {
            exchanges: n(12)?,
            errors: n(13)?,
            authentications: n(14)?,
            pin_failures: n(15)?,
        },
    })
}

fn event_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: r.get(0)?,
        event: Event {
            card: r.get(1)?,
            time: r.get(2)?,
            kind: r.get(3)?,
            iccid: r.get(4)?,
            imsi: r.get(5)?,
            user: r.get(6)?,
            lease: r.get(7)?,
            detail: r.get(8)?,
        },
    })
}

fn check_card(card: u16) -> Result<(), HistoryError> {
    if (1..=256).contains(&card) {
        Ok(())
    } else {
        Err(HistoryError::NoSuchCard(card))
    }
}

impl Store {
    /// Opens (or creates) the history at `path` for writing: takes `FILE.lock`, sets WAL,
    /// checks the file (`PRAGMA quick_check`), migrates it. A file that is not a sound database
    /// is moved aside to `FILE.corrupt-<time>` (its `-wal` with it) with a warning, and a new
    /// one is started. Blocking.
    pub fn open(path: &Path) -> Result<(Store, Opened), HistoryError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| HistoryError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let lock_path = sidecar(path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| HistoryError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(HistoryError::InUse {
                    path: path.to_path_buf(),
                    lock: lock_path,
                })
            }
            Err(TryLockError::Error(source)) => {
                return Err(HistoryError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let mut opened = Opened::default();
        // SQLite deletes a WAL it cannot read when it closes the file: a second name keeps
        // it for the file moved aside.
        let wal_kept = sidecar(path, "-wal.at-open");
        let _ = std::fs::remove_file(&wal_kept);
        let kept = std::fs::hard_link(sidecar(path, "-wal"), &wal_kept).is_ok();
        let first = Self::open_checked(path);
        if !matches!(first, Err(OpenFailure::Corrupt(_))) {
            let _ = std::fs::remove_file(&wal_kept);
        }
        let (conn, found) = match first {
            Ok(c) => c,
            Err(OpenFailure::Fatal(e)) => return Err(e),
            Err(OpenFailure::Corrupt(why)) => {
                let aside =
                    move_aside(path, kept.then_some(wal_kept.as_path())).map_err(|source| {
                        HistoryError::Io {
                            path: path.to_path_buf(),
                            source,
                        }
                    })?;
                log::warn!(
                    "history {}: {why}; moved aside to {} and started a new one",
                    path.display(),
                    aside.display()
                );
                opened.moved_aside = Some((aside, why));
                match Self::open_checked(path) {
                    Ok(c) => c,
                    Err(OpenFailure::Fatal(e)) => return Err(e),
                    Err(OpenFailure::Corrupt(why)) => {
                        return Err(HistoryError::Unusable {
                            path: path.to_path_buf(),
                            why,
                        })
                    }
                }
            }
        };
        opened.version_found = found;
        Ok((
            Store {
                path: path.to_path_buf(),
                conn,
                _lock: lock,
            },
            opened,
        ))
    }

    fn open_checked(path: &Path) -> Result<(Connection, u32), OpenFailure> {
        let classify = |e: rusqlite::Error| {
            if is_corrupt(&e) {
                OpenFailure::Corrupt(e.to_string())
            } else {
                OpenFailure::Fatal(sqlite_err(path)(e))
            }
        };
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(classify)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(classify)?;
        // Nothing is written before the file is known to be sound and this build's to take.
        let problems: Vec<String> = {
            let mut st = conn.prepare("PRAGMA quick_check").map_err(classify)?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(classify)?;
            rows.collect::<Result<_, _>>().map_err(classify)?
        };
        if problems != ["ok"] {
            return Err(OpenFailure::Corrupt(format!(
                "integrity check failed: {}",
                problems.join("; ")
            )));
        }
        let schema_refusal = |e: SchemaError| match e {
            SchemaError::Sqlite(e) => classify(e),
            source => OpenFailure::Fatal(HistoryError::Schema {
                path: path.to_path_buf(),
                source,
            }),
        };
        schema::inspect(&conn, schema::MIGRATIONS).map_err(schema_refusal)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(classify)?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!(
                "history {}: SQLite keeps journal mode {mode:?} (no WAL here)",
                path.display()
            );
        }
        // WAL + NORMAL: a commit survives the process being killed; power loss may cost the
        // last transactions, never the file.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(classify)?;
        let found = schema::migrate(&mut conn, schema::MIGRATIONS).map_err(schema_refusal)?;
        // The version says the tables are there: make sure they are what this build reads.
        for sql in [
            format!("SELECT {LEASE_COLUMNS} FROM leases LIMIT 0"),
            format!("SELECT {EVENT_COLUMNS} FROM events LIMIT 0"),
            "SELECT card, key, value, set_ms FROM labels LIMIT 0".to_string(),
        ] {
            if let Err(e) = conn.prepare(&sql) {
                return Err(OpenFailure::Corrupt(format!(
                    "schema version {found} but its tables are not as they should be: {e}"
                )));
            }
        }
        Ok((conn, found))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file turned out corrupt while in use: it is moved aside and a new one started, in
    /// place. Returns where it went.
    pub(crate) fn recover(&mut self, why: &str) -> Result<PathBuf, HistoryError> {
        // Close our connection first (an in-memory one stands in meanwhile).
        let scratch = Connection::open_in_memory().map_err(sqlite_err(&self.path))?;
        drop(std::mem::replace(&mut self.conn, scratch));
        let aside = move_aside(&self.path, None).map_err(|source| HistoryError::Io {
            path: self.path.clone(),
            source,
        })?;
        log::warn!(
            "history {}: {why}; moved aside to {} and started a new one",
            self.path.display(),
            aside.display()
        );
        match Self::open_checked(&self.path) {
            Ok((conn, _)) => {
                self.conn = conn;
                Ok(aside)
            }
            Err(OpenFailure::Fatal(e)) => Err(e),
            Err(OpenFailure::Corrupt(why)) => Err(HistoryError::Unusable {
                path: self.path.clone(),
                why,
            }),
        }
    }

    /// The highest lease id in the file (0 when there is none).
    pub fn max_lease_id(&self) -> Result<i64, HistoryError> {
        self.conn
            .query_row("SELECT coalesce(max(id), 0) FROM leases", [], |r| r.get(0))
            .map_err(sqlite_err(&self.path))
    }

    /// Closes the leases left open (`why` NULL): by a crash at start-up (`daemon-crashed`,
    /// end unknown), or at shutdown (`daemon-stopped`, ended `end`). Returns how many.
    pub fn close_open(
        &mut self,
        why: EndReason,
        end: Option<Timestamp>,
    ) -> Result<u64, HistoryError> {
        self.conn
            .execute(
                "UPDATE leases SET why = ?1, end_ms = ?2 WHERE why IS NULL",
                params![why, end],
            )
            .map(|n| n as u64)
            .map_err(sqlite_err(&self.path))
    }

    /// Deletes what ended before `cutoff` (leases still open stay). Returns the rows deleted.
    pub fn expire(&mut self, cutoff: Timestamp) -> Result<u64, HistoryError> {
        let err = sqlite_err(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let leases = tx
            .execute(
                "DELETE FROM leases WHERE why IS NOT NULL AND coalesce(end_ms, start_ms) < ?1",
                [cutoff],
            )
            .map_err(&err)?;
        let events = tx
            .execute("DELETE FROM events WHERE time_ms < ?1", [cutoff])
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok((leases + events) as u64)
    }

    /// Writes a batch in one transaction. A record the database refuses by itself (a card
    /// outside 1–256, a value too big) is skipped and reported; any other error rolls the
    /// whole batch back and is returned.
    pub(crate) fn write(&mut self, batch: &[Record]) -> Result<Written, rusqlite::Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut done = Written::default();
        {
            let mut began = tx.prepare_cached(
                "INSERT OR IGNORE INTO leases (id, card, iccid, imsi, holder_kind, front_end, \
                 user, reservation, note, start_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            let mut ended = tx.prepare_cached(
                "INSERT INTO leases (id, card, iccid, imsi, holder_kind, front_end, user, \
                 reservation, note, start_ms, end_ms, why, exchanges, errors, authentications, \
                 pin_failures) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
                 ON CONFLICT (id) DO UPDATE SET card = excluded.card, iccid = excluded.iccid, \
                 imsi = excluded.imsi, holder_kind = excluded.holder_kind, \
                 front_end = excluded.front_end, user = excluded.user, \
                 reservation = excluded.reservation, note = excluded.note, \
                 start_ms = excluded.start_ms, end_ms = excluded.end_ms, why = excluded.why, \
                 exchanges = excluded.exchanges, errors = excluded.errors, \
                 authentications = excluded.authentications, pin_failures = excluded.pin_failures",
            )?;
            let mut event = tx.prepare_cached(
                "INSERT INTO events (card, time_ms, kind, iccid, imsi, user, lease, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for rec in batch {
                let r = match rec {
                    Record::Began(id, b) => began.execute(params![
                        id,
                        b.card,
                        b.iccid,
                        b.imsi,
                        b.holder_kind,
                        b.front_end,
                        b.user,
                        b.reservation.map(int),
                        b.note,
                        b.start
                    ]),
                    Record::Ended(id, b, e) => ended.execute(params![
                        id,
                        b.card,
                        b.iccid,
                        b.imsi,
                        b.holder_kind,
                        b.front_end,
                        b.user,
                        b.reservation.map(int),
                        b.note,
                        b.start,
                        e.end,
                        e.why,
                        int(e.counters.exchanges),
                        int(e.counters.errors),
                        int(e.counters.authentications),
                        int(e.counters.pin_failures),
                    ]),
                    Record::Event(ev) => event.execute(params![
                        ev.card, ev.time, ev.kind, ev.iccid, ev.imsi, ev.user, ev.lease, ev.detail
                    ]),
                };
                match r {
                    Ok(_) => done.rows += 1,
                    Err(e) if is_record_error(&e) => done.refused.push(e),
                    Err(e) => return Err(e),
                }
            }
        }
        tx.commit()?;
        Ok(done)
    }

    /// Leases matching `q`, newest first.
    pub fn leases(&self, q: &Query, now: Timestamp) -> Result<Vec<LeaseRow>, HistoryError> {
        q.check()?;
        let (sql, params) = q.lease_sql(now);
        let err = sqlite_err(&self.path);
        let mut st = self.conn.prepare_cached(&sql).map_err(&err)?;
        let rows = st
            .query_map(params_from_iter(params), lease_row)
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Events matching `q`, newest first.
    pub fn events(&self, q: &Query, now: Timestamp) -> Result<Vec<EventRow>, HistoryError> {
        q.check()?;
        let (sql, params) = q.event_sql(now);
        let err = sqlite_err(&self.path);
        let mut st = self.conn.prepare_cached(&sql).map_err(&err)?;
        let rows = st
            .query_map(params_from_iter(params), event_row)
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// One card's labels.
    pub fn labels(&self, card: u16) -> Result<Labels, HistoryError> {
        check_card(card)?;
        let err = sqlite_err(&self.path);
        let mut st = self
            .conn
            .prepare_cached("SELECT key, value FROM labels WHERE card = ?1")
            .map_err(&err)?;
        let rows = st
            .query_map([card], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Every labelled card's labels.
    pub fn all_labels(&self) -> Result<BTreeMap<u16, Labels>, HistoryError> {
        let err = sqlite_err(&self.path);
        let mut st = self
            .conn
            .prepare_cached("SELECT card, key, value FROM labels")
            .map_err(&err)?;
        let mut rows = st.query([]).map_err(&err)?;
        let mut all: BTreeMap<u16, Labels> = BTreeMap::new();
        while let Some(r) = rows.next().map_err(&err)? {
            let card: u16 = r.get(0).map_err(&err)?;
            all.entry(card)
                .or_default()
                .insert(r.get(1).map_err(&err)?, r.get(2).map_err(&err)?);
        }
        Ok(all)
    }

    /// Sets labels on a card (a key it has gets the new value). Returns the card's labels.
    pub fn set_labels(&mut self, card: u16, labels: &[Label]) -> Result<Labels, HistoryError> {
        self.change_labels(card, false, labels, &[])
    }

    /// Removes keys from a card (a key it does not have is no error). Returns its labels.
    pub fn remove_labels(&mut self, card: u16, keys: &[String]) -> Result<Labels, HistoryError> {
        self.change_labels(card, false, &[], keys)
    }

    /// Makes `labels` the card's whole set (`PUT /api/v1/cards/{n}/labels`).
    pub fn replace_labels(&mut self, card: u16, labels: &[Label]) -> Result<Labels, HistoryError> {
        self.change_labels(card, true, labels, &[])
    }

    /// `simpool label CARD KEY=VALUE… --remove KEY`: removals, then settings, in one
    /// transaction.
    pub fn change_labels(
        &mut self,
        card: u16,
        replace: bool,
        set: &[Label],
        remove: &[String],
    ) -> Result<Labels, HistoryError> {
        check_card(card)?;
        for k in remove {
            check_key(k)?;
        }
        let err = sqlite_err(&self.path);
        let now = Timestamp::now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        if replace {
            tx.execute("DELETE FROM labels WHERE card = ?1", [card])
                .map_err(&err)?;
        }
        for k in remove {
            tx.execute(
                "DELETE FROM labels WHERE card = ?1 AND key = ?2",
                params![card, k],
            )
            .map_err(&err)?;
        }
        for l in set {
            tx.execute(
                "INSERT INTO labels (card, key, value, set_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (card, key) DO UPDATE SET value = excluded.value, \
                 set_ms = excluded.set_ms",
                params![card, l.key(), l.value(), now],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        self.labels(card)
    }

    /// The cards that carry every one of `wanted` (`--label KEY=VALUE`, repeatable: all must
    /// hold), in card order. No label at all selects every card.
    pub fn cards_matching(&self, wanted: &[Label]) -> Result<Vec<u16>, HistoryError> {
        let mut wanted: Vec<&Label> = wanted.iter().collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok((1..=256).collect());
        }
        let err = sqlite_err(&self.path);
        let ors = vec!["(key = ? AND value = ?)"; wanted.len()].join(" OR ");
        let sql = format!(
            "SELECT card FROM labels WHERE {ors} GROUP BY card HAVING count(*) = ? ORDER BY card"
        );
        let mut params: Vec<rusqlite::types::Value> = Vec::new();
        for l in &wanted {
            params.push(l.key().to_string().into());
            params.push(l.value().to_string().into());
        }
        params.push((wanted.len() as i64).into());
        let mut st = self.conn.prepare_cached(&sql).map_err(&err)?;
        let rows = st
            .query_map(params_from_iter(params), |r| r.get(0))
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// `PRAGMA quick_check` now: true when the file is sound.
    pub fn check(&self) -> Result<bool, HistoryError> {
        let err = sqlite_err(&self.path);
        let mut st = self.conn.prepare("PRAGMA quick_check").map_err(&err)?;
        let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(&err)?;
        let v: Vec<String> = rows.collect::<Result<_, _>>().map_err(err)?;
        Ok(v == ["ok"])
    }
}

/// Renames `FILE` to `FILE.corrupt-<time>` (and its WAL, `wal` if given, and `FILE-journal`
/// beside it; the `-shm` index is rebuilt by SQLite and removed). A stale WAL must not meet
/// the new file.
fn move_aside(path: &Path, wal: Option<&Path>) -> std::io::Result<PathBuf> {
    let stamp = Timestamp::now().compact();
    let mut aside = sidecar(path, &format!(".corrupt-{stamp}"));
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = sidecar(path, &format!(".corrupt-{stamp}-{n}"));
    }
    let live_wal = sidecar(path, "-wal");
    let moves = [
        (path.to_path_buf(), aside.clone()),
        (
            wal.map_or(live_wal.clone(), Path::to_path_buf),
            sidecar(&aside, "-wal"),
        ),
        (sidecar(path, "-journal"), sidecar(&aside, "-journal")),
    ];
    for (from, to) in moves {
        match std::fs::rename(from, to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    for stale in [live_wal, sidecar(path, "-shm")] {
        match std::fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(aside)
}
