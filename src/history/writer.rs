//! The writer: one std thread that takes records from a bounded channel and writes them in
//! batches, one transaction each; retention once a day; the last records and the open leases
//! at shutdown. Problems are logged once per cause and counted, never raised: the daemon goes
//! on serving whatever the disk does.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::ffi::ErrorCode;
use serde::Serialize;

use super::record::EndReason;
use super::store::{is_corrupt, Record, Store};
use super::time::Timestamp;
use super::HistoryError;

pub(crate) enum Msg {
    Record(Record),
    /// Answered once everything sent before it is written (or has failed).
    Flush(Reply),
    /// Write what is queued, close the open leases (`daemon-stopped`), stop.
    Close(Reply),
}

/// Where the answer to a flush or close goes: an async waiter or a blocked thread.
pub(crate) enum Reply {
    Async(tokio::sync::oneshot::Sender<()>),
    Blocking(std::sync::mpsc::SyncSender<()>),
}

impl Reply {
    fn send(self) {
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(());
            }
            Reply::Blocking(tx) => {
                let _ = tx.try_send(());
            }
        }
    }
}

/// The history's counters (for logs, metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Records taken into the queue.
    pub queued: u64,
    /// Records written.
    pub written: u64,
    /// Records dropped because the queue was full (or the history closed).
    pub dropped: u64,
    /// Records lost to a write error (disk full, I/O error, a refused row).
    pub failed: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Corrupt files moved aside while running.
    pub moved_aside: u64,
    /// Rows deleted by retention.
    pub expired: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub queued: AtomicU64,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
    pub batches: AtomicU64,
    pub moved_aside: AtomicU64,
    pub expired: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            queued: g(&self.queued),
            written: g(&self.written),
            dropped: g(&self.dropped),
            failed: g(&self.failed),
            batches: g(&self.batches),
            moved_aside: g(&self.moved_aside),
            expired: g(&self.expired),
        }
    }
}

/// What the writer and the readers share.
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub counters: Counters,
}

impl Shared {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        // Nothing panics while holding it; if something did, the store is still usable.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct Settings {
    pub batch: usize,
    /// 0: keep everything.
    pub retention_days: u32,
    pub retention_every: Duration,
}

/// Logs each cause of failure once, until writing works again.
#[derive(Default)]
struct Problems {
    seen: BTreeSet<String>,
    lost: u64,
}

impl Problems {
    fn failed(&mut self, path: &str, cause: &str, detail: &str, lost: u64) {
        self.lost += lost;
        if self.seen.insert(cause.to_string()) {
            log::warn!(
                "history {path}: {cause} ({detail}); records are lost until it clears \
                 (counted in the history's failed records)"
            );
        }
    }

    fn worked(&mut self, path: &str) {
        if !self.seen.is_empty() {
            log::info!(
                "history {path}: writing again, after {} records lost",
                self.lost
            );
            self.seen.clear();
            self.lost = 0;
        }
    }
}

/// A word for what went wrong, one per cause.
fn cause(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => "disk full",
        Some(ErrorCode::SystemIoFailure) => "I/O error",
        Some(ErrorCode::ReadOnly) => "read-only",
        Some(ErrorCode::PermissionDenied) => "permission denied",
        Some(ErrorCode::CannotOpen) => "cannot open",
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => "busy",
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => "corrupt",
        Some(ErrorCode::ConstraintViolation) => "a record refused",
        Some(ErrorCode::TooBig) => "a record too big",
        Some(ErrorCode::OutOfMemory) => "out of memory",
        _ => "SQLite error",
    }
}

pub(crate) fn run(rx: Receiver<Msg>, shared: Arc<Shared>, settings: Settings) {
    let path = shared.store().path().display().to_string();
    let c = &shared.counters;
    let mut problems = Problems::default();
    let mut next_expiry = Instant::now() + settings.retention_every;
    let mut batch: Vec<Record> = Vec::with_capacity(settings.batch);
    let mut flushes = Vec::new();
    loop {
        let wait = next_expiry.saturating_duration_since(Instant::now());
        // None: go on; Some(None): every sender is gone; Some(Some(tx)): asked to close.
        let mut closing = None;
        let mut take = |m: Msg, batch: &mut Vec<Record>, closing: &mut Option<_>| match m {
            Msg::Record(r) => batch.push(r),
            Msg::Flush(tx) => flushes.push(tx),
            Msg::Close(tx) => *closing = Some(Some(tx)),
        };
        match rx.recv_timeout(wait) {
            Ok(m) => take(m, &mut batch, &mut closing),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => closing = Some(None),
        }
        while closing.is_none() && batch.len() < settings.batch {
            match rx.try_recv() {
                Ok(m) => take(m, &mut batch, &mut closing),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => closing = Some(None),
            }
        }
        if closing.is_some() {
            // What other handles sent before the end goes in too.
            while let Ok(m) = rx.try_recv() {
                let mut ignored = None;
                take(m, &mut batch, &mut ignored);
            }
        }
        if !batch.is_empty() {
            write(&shared, &path, &batch, &mut problems);
            batch.clear();
        }
        if Instant::now() >= next_expiry {
            maintain(&shared, &path, settings.retention_days, &mut problems);
            next_expiry = Instant::now() + settings.retention_every;
        }
        for reply in flushes.drain(..) {
            reply.send();
        }
        if let Some(done) = closing {
            match shared
                .store()
                .close_open(EndReason::DaemonStopped, Some(Timestamp::now()))
            {
                Ok(0) => {}
                Ok(n) => {
                    log::info!("history {path}: {n} leases still open closed as daemon-stopped")
                }
                Err(e) => log::warn!("{e}"),
            }
            log::debug!("history {path}: writer stopped ({:?})", c.snapshot());
            if let Some(reply) = done {
                reply.send();
            }
            return;
        }
    }
}

fn write(shared: &Shared, path: &str, batch: &[Record], problems: &mut Problems) {
    let c = &shared.counters;
    let mut store = shared.store();
    let mut result = store.write(batch);
    if let Err(e) = &result {
        if is_corrupt(e) {
            let why = e.to_string();
            match store.recover(&why) {
                Ok(_) => {
                    c.moved_aside.fetch_add(1, Ordering::Relaxed);
                    result = store.write(batch);
                }
                Err(e2) => {
                    c.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    problems.failed(path, "corrupt", &e2.to_string(), batch.len() as u64);
                    return;
                }
            }
        }
    }
    match result {
        Ok(w) => {
            c.written.fetch_add(w.rows, Ordering::Relaxed);
            c.batches.fetch_add(1, Ordering::Relaxed);
            if w.rows > 0 {
                problems.worked(path);
            }
            for e in &w.refused {
                c.failed.fetch_add(1, Ordering::Relaxed);
                problems.failed(path, cause(e), &e.to_string(), 1);
            }
        }
        Err(e) => {
            c.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
            problems.failed(path, cause(&e), &e.to_string(), batch.len() as u64);
        }
    }
}

/// Once a day: retention, then a check of the whole file (what the exchange-free write path
/// would not read for months may have gone bad meanwhile).
fn maintain(shared: &Shared, path: &str, days: u32, problems: &mut Problems) {
    let c = &shared.counters;
    let mut store = shared.store();
    if days > 0 {
        let cutoff = Timestamp::now().before(Duration::from_secs(u64::from(days) * 86_400));
        match store.expire(cutoff) {
            Ok(n) => {
                c.expired.fetch_add(n, Ordering::Relaxed);
                if n > 0 {
                    log::info!("history {path}: {n} rows older than {days} days deleted");
                }
            }
            Err(e) => problems.failed(path, "retention failed", &e.to_string(), 0),
        }
    }
    let why = match store.check() {
        Ok(true) => return,
        Ok(false) => "the daily integrity check failed".to_string(),
        Err(HistoryError::Sqlite { source, .. }) if is_corrupt(&source) => source.to_string(),
        Err(e) => {
            problems.failed(path, "integrity check failed", &e.to_string(), 0);
            return;
        }
    };
    match store.recover(&why) {
        Ok(_) => {
            c.moved_aside.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => problems.failed(path, "corrupt", &e.to_string(), 0),
    }
}
