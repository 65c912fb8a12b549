//! The history of every card (issue 19 §4) and its labels (§5), in an embedded SQLite
//! database (`--history FILE`, config `history`, `off` for none; `history_days`, default 90).
//!
//! History observes lease lifecycles and card events, never single exchanges: the exchange
//! path stays as it is. The interface the daemon plugs in:
//!
//! ```text
//! History::open(Options::new(path))            blocking: lock, WAL, check, migrate, crash
//!     -> Result<History, HistoryError>           recovery, retention; spawns the writer thread
//!
//! history.lease_began(LeaseBegan) -> OpenLease   never blocks; writes the open row
//! history.lease_ended(OpenLease, LeaseEnded)     never blocks; rewrites the row whole
//! history.event(Event)                           never blocks
//! history.stats() -> Stats                       queued, written, dropped, failed, …
//! history.flush().await / flush_blocking()       until everything sent so far is written
//! history.close().await                          flush, close open leases (daemon-stopped)
//!
//! history.leases(Query).await -> Vec<LeaseRow>   newest first (`simpool history`, the API)
//! history.events(Query).await -> Vec<EventRow>
//! history.labels(card) / all_labels() / set_labels / remove_labels / replace_labels /
//!     change_labels / cards_matching(&[Label])   (async; `with_store` for the same, blocking)
//! ```
//!
//! - **No blocking on the caller**: the record calls put the record in a bounded channel
//!   (`Options::queue`, 4096) and return; a full channel drops the record and counts it
//!   (`Stats::dropped`). A std thread takes records in batches (up to `Options::batch`, 512)
//!   and writes each batch in one transaction.
//! - **A crash loses at most the leases not yet ended**: a lease's row is inserted when it
//!   begins (open: `why` null) and rewritten whole when it ends, so the end alone is enough
//!   if the beginning was dropped. At start-up, rows a crash left open get
//!   `why` = `daemon-crashed` and `end` = null (unknown). WAL with `synchronous = NORMAL`: a
//!   committed batch survives `kill -9`; power loss can cost the last batches, not the file.
//!   At [`History::close`], the leases still open get `daemon-stopped`.
//! - **The daemon keeps serving**: a file that is not a sound database at start-up (the whole
//!   file is checked), or turns out corrupt while running (a write fails so, or the daily
//!   check finds it), is moved aside to `FILE.corrupt-<time>` (its WAL beside it) with a
//!   warning and a new one started. Disk full, I/O errors and the like are logged once per cause (again after
//!   writing has worked in between) and counted (`Stats::failed`); nothing panics. Errors
//!   [`History::open`] cannot cure (the file in use by another daemon, a newer schema, a
//!   database of something else, a directory that cannot be created) are returned: the daemon
//!   logs them and runs without history.
//! - **One daemon per file**: `FILE.lock` is held while it is open.
//! - **Retention**: rows that ended more than `history_days` ago are deleted at start-up and
//!   then once a day (0 keeps everything), with the integrity check. Labels are kept until
//!   removed.
//! - **Reads** share one connection with the writer behind a mutex (the writer holds it for one
//!   batch); a query sees what the writer has committed, a few milliseconds after the call.
//! - **Rows** serialize to the JSON the API and `simpool history --json` print (see
//!   [`LeaseRow`], [`EventRow`]); times are RFC 3339 UTC (`2026-12-02T06:41:13.123Z`).
//!
//! The schema is in `schema.rs` (versioned by `user_version`, migrations appended there).

mod query;
mod record;
mod schema;
mod store;
mod time;
mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use query::{Query, QueryError, DEFAULT_LIMIT, MAX_LIMIT};
pub use record::{
    check_key, Counters, EndReason, Event, EventKind, EventRow, HolderKind, Label, LabelError,
    Labels, LeaseBegan, LeaseEnded, LeaseId, LeaseRow, UnknownWord, LABEL_KEY_MAX, LABEL_VALUE_MAX,
};
pub use schema::{SchemaError, APPLICATION_ID, VERSION as SCHEMA_VERSION};
pub use store::{Opened, Store};
pub use time::{parse_duration, Since, TimeError, Timestamp};
pub use writer::Stats;

use store::Record;
use writer::{Msg, Reply, Settings, Shared};

/// Everything that can go wrong with the history, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history {}: in use by another simpool (it holds {})", path.display(), lock.display())]
    InUse { path: PathBuf, lock: PathBuf },
    #[error("history {}: {source}", path.display())]
    Schema { path: PathBuf, source: SchemaError },
    #[error("history {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("history {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("history {}: a new file is unusable too ({why})", path.display())]
    Unusable { path: PathBuf, why: String },
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Label(#[from] LabelError),
    #[error("card {0} does not exist: cards are 1-256")]
    NoSuchCard(u16),
}

/// How to open the history.
#[derive(Debug, Clone)]
pub struct Options {
    pub path: PathBuf,
    /// `history_days`: rows that ended longer ago are deleted; 0 keeps everything.
    pub retention_days: u32,
    /// How often retention runs after start-up (a day; tests shorten it).
    pub retention_every: Duration,
    /// Records the channel holds before it drops.
    pub queue: usize,
    /// Records per transaction at most.
    pub batch: usize,
}

pub const DEFAULT_RETENTION_DAYS: u32 = 90;

impl Options {
    pub fn new(path: impl Into<PathBuf>) -> Options {
        Options {
            path: path.into(),
            retention_days: DEFAULT_RETENTION_DAYS,
            retention_every: Duration::from_secs(86_400),
            queue: 4096,
            batch: 512,
        }
    }
}

/// What [`History::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub opened: Opened,
    /// Leases a crash had left open, now `daemon-crashed`.
    pub crashed_leases: u64,
    /// Rows deleted by retention at start-up.
    pub expired: u64,
}

/// A lease whose beginning was recorded; hand it back to [`History::lease_ended`]. Its
/// `began` may be completed meanwhile (the ICCID read after the start, the user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenLease {
    pub id: LeaseId,
    pub began: LeaseBegan,
}

struct Inner {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    next_id: AtomicI64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    report: OpenReport,
}

/// The daemon's history. Cheap to clone; the writer stops when [`History::close`] is called
/// or the last clone is dropped (writing what was queued first).
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("path", &self.path())
            .field("stats", &self.stats())
            .finish()
    }
}

impl History {
    /// Opens the history and starts its writer thread. Blocking (checks the whole file): call
    /// it before serving or on the blocking pool.
    pub fn open(opts: Options) -> Result<History, HistoryError> {
        let (mut store, opened) = Store::open(&opts.path)?;
        let crashed_leases = store.close_open(EndReason::DaemonCrashed, None)?;
        if crashed_leases > 0 {
            log::warn!(
                "history {}: {crashed_leases} leases were left open by a crash: closed as \
                 daemon-crashed, their end unknown",
                opts.path.display()
            );
        }
        let expired = if opts.retention_days > 0 {
            let cutoff = Timestamp::now()
                .before(Duration::from_secs(u64::from(opts.retention_days) * 86_400));
            store.expire(cutoff)?
        } else {
            0
        };
        let next_id = store.max_lease_id()? + 1;
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            counters: Default::default(),
        });
        shared
            .counters
            .expired
            .fetch_add(expired, Ordering::Relaxed);
        let (tx, rx) = sync_channel(opts.queue.max(1));
        let settings = Settings {
            batch: opts.batch.max(1),
            retention_days: opts.retention_days,
            retention_every: opts.retention_every,
        };
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("history".into())
                .spawn(move || writer::run(rx, shared, settings))
                .map_err(|source| HistoryError::Io {
                    path: opts.path.clone(),
                    source,
                })?
        };
        Ok(History {
            inner: Arc::new(Inner {
                tx,
                shared,
                next_id: AtomicI64::new(next_id),
                thread: Mutex::new(Some(thread)),
                report: OpenReport {
                    opened,
                    crashed_leases,
                    expired,
                },
            }),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.inner.shared.store().path().to_path_buf()
    }

    /// What opening found (a file moved aside, leases a crash left open, rows expired).
    pub fn report(&self) -> &OpenReport {
        &self.inner.report
    }

    pub fn stats(&self) -> Stats {
        self.inner.shared.counters.snapshot()
    }

    fn send(&self, r: Record) -> bool {
        let c = &self.inner.shared.counters;
        match self.inner.tx.try_send(Msg::Record(r)) {
            Ok(()) => {
                c.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// A lease began: its open row is queued. Never blocks.
    pub fn lease_began(&self, began: LeaseBegan) -> OpenLease {
        let id = LeaseId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        self.send(Record::Began(id, Box::new(began.clone())));
        OpenLease { id, began }
    }

    /// A lease ended: its whole row is queued. Never blocks; false if it was dropped.
    pub fn lease_ended(&self, lease: OpenLease, ended: LeaseEnded) -> bool {
        self.send(Record::Ended(lease.id, Box::new(lease.began), ended))
    }

    /// A card event is queued. Never blocks; false if it was dropped.
    pub fn event(&self, event: Event) -> bool {
        self.send(Record::Event(Box::new(event)))
    }

    fn control(&self, make: impl FnOnce(Reply) -> Msg, blocking: bool) -> Waiter {
        let (reply, wait) = if blocking {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            (Reply::Blocking(tx), Wait::Blocking(rx))
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Reply::Async(tx), Wait::Async(rx))
        };
        match self.inner.tx.try_send(make(reply)) {
            Ok(()) => Waiter::Sent(wait),
            Err(TrySendError::Full(m)) => Waiter::Full(self.inner.tx.clone(), m, wait),
            Err(TrySendError::Disconnected(_)) => Waiter::Gone,
        }
    }

    /// Waits until everything recorded before the call is written (or has failed).
    pub async fn flush(&self) {
        self.control(Msg::Flush, false).wait().await
    }

    /// [`History::flush`] for plain threads (it blocks the thread; inside the runtime, use
    /// `flush`).
    pub fn flush_blocking(&self) {
        self.control(Msg::Flush, true).wait_blocking()
    }

    /// Writes what is queued, closes the leases still open as `daemon-stopped` and stops the
    /// writer. Records sent afterwards are dropped (and counted); queries still work.
    pub async fn close(&self) {
        self.control(Msg::Close, false).wait().await;
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// [`History::close`] for plain threads.
    pub fn close_blocking(&self) {
        self.control(Msg::Close, true).wait_blocking();
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Runs `f` on the store, blocking (the writer may hold it for one batch).
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        f(&mut self.inner.shared.store())
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> R + Send + 'static,
    ) -> R {
        let h = self.clone();
        match tokio::task::spawn_blocking(move || h.with_store(f)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Leases matching `q`, newest first.
    pub async fn leases(&self, q: Query) -> Result<Vec<LeaseRow>, HistoryError> {
        self.blocking(move |s| s.leases(&q, Timestamp::now())).await
    }

    /// Events matching `q`, newest first.
    pub async fn events(&self, q: Query) -> Result<Vec<EventRow>, HistoryError> {
        self.blocking(move |s| s.events(&q, Timestamp::now())).await
    }

    pub async fn labels(&self, card: u16) -> Result<Labels, HistoryError> {
        self.blocking(move |s| s.labels(card)).await
    }

    pub async fn all_labels(&self) -> Result<BTreeMap<u16, Labels>, HistoryError> {
        self.blocking(|s| s.all_labels()).await
    }

    pub async fn set_labels(&self, card: u16, labels: Vec<Label>) -> Result<Labels, HistoryError> {
        self.blocking(move |s| s.set_labels(card, &labels)).await
    }

    pub async fn remove_labels(
        &self,
        card: u16,
        keys: Vec<String>,
    ) -> Result<Labels, HistoryError> {
        self.blocking(move |s| s.remove_labels(card, &keys)).await
    }

    pub async fn replace_labels(
        &self,
        card: u16,
        labels: Vec<Label>,
    ) -> Result<Labels, HistoryError> {
        self.blocking(move |s| s.replace_labels(card, &labels))
            .await
    }

    /// Removals, then settings, in one transaction (`simpool label CARD K=V… --remove K`).
    pub async fn change_labels(
        &self,
        card: u16,
        set: Vec<Label>,
        remove: Vec<String>,
    ) -> Result<Labels, HistoryError> {
        self.blocking(move |s| s.change_labels(card, false, &set, &remove))
            .await
    }

    /// Cards carrying every one of `wanted`, in card order.
    pub async fn cards_matching(&self, wanted: Vec<Label>) -> Result<Vec<u16>, HistoryError> {
        self.blocking(move |s| s.cards_matching(&wanted)).await
    }
}

/// A flush or close on its way to the writer.
enum Waiter {
    Sent(Wait),
    /// The queue was full: it is sent waiting for room (never on the exchange path).
    Full(SyncSender<Msg>, Msg, Wait),
    Gone,
}

enum Wait {
    Async(tokio::sync::oneshot::Receiver<()>),
    Blocking(std::sync::mpsc::Receiver<()>),
}

impl Wait {
    async fn wait(self) {
        match self {
            Wait::Async(rx) => {
                let _ = rx.await;
            }
            Wait::Blocking(rx) => {
                let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
            }
        }
    }

    fn wait_blocking(self) {
        match self {
            Wait::Async(rx) => {
                let _ = rx.blocking_recv();
            }
            Wait::Blocking(rx) => {
                let _ = rx.recv();
            }
        }
    }
}

impl Waiter {
    async fn wait(self) {
        match self {
            Waiter::Sent(w) => w.wait().await,
            Waiter::Full(tx, m, w) => {
                if let Ok(Ok(())) = tokio::task::spawn_blocking(move || tx.send(m)).await {
                    w.wait().await;
                }
            }
            Waiter::Gone => {}
        }
    }

    fn wait_blocking(self) {
        match self {
            Waiter::Sent(w) => w.wait_blocking(),
            Waiter::Full(tx, m, w) => {
                if tx.send(m).is_ok() {
                    w.wait_blocking();
                }
            }
            Waiter::Gone => {}
        }
    }
}
