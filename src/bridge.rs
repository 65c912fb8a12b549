//! A virtual reader: one vpcd port that shows the card it is bound to, if any.
//!
//! The reader connects to vpcd only while its card can be used, so pcscd shows "card present"
//! exactly then; closing the connection is how pcscd learns the card is gone (vpcd has no other
//! way, and an empty ATR would confuse pcscd). Every command gets an answer within
//! `command_timeout`: the card's, or `6F 00` with the cause in the log.
//!
//! The binding can change at runtime ([`ReaderHandle::bind`]): the reader ends its session
//! (pcscd sees the card removed, so open handles get "card removed", never silently another
//! card), releases its card's lease, and shows the new card after pcscd's next poll. The card
//! is held through a [`Lease`] the whole time it is bound, so nothing else restarts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cards::{Cards, FindError, Front, Holder, Lease, LeaseError, Wanted};
use crate::pool::{LinkState, PoolError};
use crate::t0;
use crate::vpcd::{Connection, Event};

/// Which card a reader shows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Binding {
    /// Front-panel number 1–256.
    Card(u16),
    Iccid(String),
    Imsi(String),
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Binding::Card(n) => write!(f, "card {n}"),
            Binding::Iccid(s) => write!(f, "ICCID {s}"),
            Binding::Imsi(s) => write!(f, "IMSI {s}"),
        }
    }
}

/// What power-on and reset from PC/SC do to the pool's card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetPolicy {
    /// Stop and start the card (a real cold reset; the ATR is read again). The default: an
    /// application that resets expects a card in its initial state.
    #[default]
    Restart,
    /// Keep the card running and answer the cached ATR: fast, but selections and PIN state
    /// survive the "reset" (pySim-shell resets up to 13 times at start-up).
    Cached,
}

#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub vpcd: String,
    /// Longest time any command from PC/SC waits for its answer.
    pub command_timeout: Duration,
    pub reset: ResetPolicy,
    pub quickack: bool,
    /// Pause between attempts to find/start the card or reach vpcd.
    pub retry: Duration,
}

/// Counters of one reader (for logs, the API, tests, the soak run).
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub commands: AtomicU64,
    pub errors: AtomicU64,
    pub resets: AtomicU64,
    pub sessions: AtomicU64,
    pub refused: AtomicU64,
    pub vpcd_connects: AtomicU64,
}

impl ReaderStats {
    pub fn snapshot(&self) -> serde_json::Value {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "commands": l(&self.commands),
            "errors": l(&self.errors),
            "resets": l(&self.resets),
            "sessions": l(&self.sessions),
            "refused": l(&self.refused),
            "vpcd_connects": l(&self.vpcd_connects),
        })
    }
}

/// What pcscd sees in a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// The card is shown (vpcd connected).
    Present,
    /// No binding: pcscd sees a reader without a card.
    Absent,
    /// Bound, but the card is not shown yet (searching, held elsewhere, pool or vpcd away).
    Waiting,
}

/// A reader's state as the API shows it; changes only at session boundaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReaderStatus {
    pub binding: Option<Binding>,
    pub card: Option<u16>,
    pub state: Presence,
    /// Why the reader is waiting (for people; not a stable interface).
    pub detail: Option<String>,
    /// Counts binding changes, so a caller can wait for the one it asked for.
    pub generation: u64,
}

/// Why a bound card cannot be shown right now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    #[error("no connection to the pool")]
    LinkDown,
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// (The binding is named where this is logged.)
    #[error("{error}")]
    Find { want: String, error: FindError },
    #[error("card {card} did not start: {error}")]
    Start { card: u16, error: PoolError },
    #[error("card {0} is marked bad on the pool: {1} (re-insert it or bind again to retry)")]
    MarkedBad(u16, String),
}

/// Why a binding request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    Held(#[from] LeaseError),
    #[error("{0} is held by {1}")]
    IdentityHeld(Binding, Holder),
    #[error("reader {0} has stopped")]
    Stopped(u16),
}

/// A change of binding sent to a reader task.
#[derive(Debug)]
struct Rebind {
    binding: Option<Binding>,
    /// The new card's lease, taken by the caller so a refusal is immediate.
    lease: Option<Lease>,
    done: oneshot::Sender<()>,
}

/// Longer than pcscd's presence poll of vpcd readers (400 ms).
const REMOVAL_GRACE: Duration = Duration::from_millis(600);

/// After this long without a word from vpcd on a new connection, say so.
const NOT_TAKEN_WARNING: Duration = Duration::from_secs(5);

/// Closing a session (see `Connection::close_now`): vpcd is idle after this much silence;
/// commands that still come are answered `6F 00` this far apart; the whole close takes at most
/// the limit (pcscd polls every ~400 ms).
const CLOSE_QUIET: Duration = Duration::from_millis(30);
const CLOSE_PACE: Duration = Duration::from_millis(75);
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// Consecutive start failures of an inserted card that mark it bad on the pool.
const BAD_START_FAILURES: u32 = 2;
/// Sessions ended by a lost T=0 state within [`BAD_RESET_WINDOW`] that mark the card bad.
const BAD_RESETS: usize = 3;
const BAD_RESET_WINDOW: Duration = Duration::from_secs(60);
/// How often a card marked bad is checked for re-insertion.
const REINSERT_POLL: Duration = Duration::from_secs(1);

/// Why a session with vpcd ended.
#[derive(Debug)]
enum End {
    VpcdClosed(String),
    CardGone(String),
    /// The card was reset after a failed exchange; reconnect so pcscd reports it.
    CardReset,
    LinkDown,
    /// The binding changed.
    Rebound(Rebind),
}

/// What to tell the operator when vpcd cannot be reached (also `serve --check`'s verdict).
pub(crate) fn vpcd_problem(addr: &str, e: &std::io::Error) -> String {
    let port = addr.rsplit_once(':').map_or(addr, |(_, p)| p);
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => format!(
            "vpcd at {addr} is not listening ({e}): is pcscd running with a vpcd reader on \
             port {port}?"
        ),
        std::io::ErrorKind::TimedOut => format!(
            "vpcd at {addr} does not answer ({e}): wrong address, or a firewall? vpcd runs \
             inside pcscd, usually on 127.0.0.1"
        ),
        _ => format!("vpcd at {addr}: {e}"),
    }
}

/// The control side of a running reader: status, counters, rebinding.
#[derive(Clone)]
pub struct ReaderHandle {
    pub index: u16,
    pub vpcd: String,
    cards: Cards,
    control: mpsc::Sender<Rebind>,
    status: watch::Receiver<ReaderStatus>,
    stats: Arc<ReaderStats>,
    /// Serialises binding requests to this reader.
    binding_lock: Arc<tokio::sync::Mutex<()>>,
}

impl ReaderHandle {
    pub fn status(&self) -> ReaderStatus {
        self.status.borrow().clone()
    }

    pub fn stats(&self) -> Arc<ReaderStats> {
        self.stats.clone()
    }

    /// Watches state changes.
    pub fn watch(&self) -> watch::Receiver<ReaderStatus> {
        self.status.clone()
    }

    /// Binds the reader to `binding` (or unbinds it with `None`). A card held by another holder
    /// is refused at once, naming it. Answers once the reader has taken the change; then
    /// [`ReaderHandle::wait_settled`] waits for the card to show.
    pub async fn bind(&self, binding: Option<Binding>) -> Result<(), BindError> {
        let _one = self.binding_lock.lock().await;
        let me = Holder::Reader(self.index);
        if self.status().binding == binding {
            return Ok(());
        }
        let lease = match &binding {
            Some(Binding::Card(n)) => match self.cards.lease(*n, me.clone()) {
                Ok(l) => Some(l),
                Err(LeaseError::Held { holder, .. }) if holder == me => None,
                Err(e) => return Err(e.into()),
            },
            Some(b @ (Binding::Iccid(_) | Binding::Imsi(_))) => {
                // A card known to have it and held by someone else: refuse now rather than
                // searching in vain.
                for v in self.cards.views() {
                    let hit = match b {
                        Binding::Iccid(w) => v.known.iccid.as_deref() == Some(w.as_str()),
                        Binding::Imsi(w) => v.known.imsi.as_deref() == Some(w.as_str()),
                        Binding::Card(_) => false,
                    };
                    if let (true, Some(h)) = (hit, v.holder) {
                        if h != me {
                            return Err(BindError::IdentityHeld(b.clone(), h));
                        }
                    }
                }
                None
            }
            None => None,
        };
        let (done, taken) = oneshot::channel();
        self.control
            .send(Rebind {
                binding,
                lease,
                done,
            })
            .await
            .map_err(|_| BindError::Stopped(self.index))?;
        taken.await.map_err(|_| BindError::Stopped(self.index))
    }

    /// Waits until the reader shows its card (or has none to show), at most `within`.
    pub async fn wait_settled(&self, within: Duration) -> ReaderStatus {
        let mut rx = self.status.clone();
        let _ = tokio::time::timeout(within, async {
            loop {
                let st = rx.borrow_and_update().clone();
                let settled = match st.binding {
                    None => st.state == Presence::Absent,
                    Some(_) => st.state == Presence::Present,
                };
                if settled || rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.status()
    }
}

pub struct Reader {
    pub index: u16,
    pub name: String,
    cards: Cards,
    cfg: ReaderConfig,
    binding: Option<Binding>,
    lease: Option<Lease>,
    control: mpsc::Receiver<Rebind>,
    control_open: bool,
    status: watch::Sender<ReaderStatus>,
    stats: Arc<ReaderStats>,
    /// Consecutive failed starts of the bound card.
    start_failures: u32,
    /// When sessions recently ended with the card's T=0 state lost.
    lost_t0: std::collections::VecDeque<std::time::Instant>,
    /// Last vpcd problem logged (each distinct cause once).
    vpcd_problem: String,
}

/// What interrupted a wait.
enum Woken {
    Elapsed,
    Rebind(Rebind),
}

impl Reader {
    /// A reader and its control handle; `run` the reader in a task of its own.
    pub fn new(
        index: u16,
        cards: Cards,
        cfg: ReaderConfig,
        binding: Option<Binding>,
    ) -> (Reader, ReaderHandle) {
        let (ctl_tx, ctl_rx) = mpsc::channel(4);
        let (st_tx, st_rx) = watch::channel(ReaderStatus {
            binding: binding.clone(),
            card: None,
            state: if binding.is_some() {
                Presence::Waiting
            } else {
                Presence::Absent
            },
            detail: None,
            generation: 0,
        });
        let stats = Arc::new(ReaderStats::default());
        let handle = ReaderHandle {
            index,
            vpcd: cfg.vpcd.clone(),
            cards: cards.clone(),
            control: ctl_tx,
            status: st_rx,
            stats: stats.clone(),
            binding_lock: Arc::default(),
        };
        let reader = Reader {
            index,
            name: format!("reader {index} ({})", cfg.vpcd),
            cards,
            cfg,
            binding,
            lease: None,
            control: ctl_rx,
            control_open: true,
            status: st_tx,
            stats,
            start_failures: 0,
            lost_t0: Default::default(),
            vpcd_problem: String::new(),
        };
        (reader, handle)
    }

    fn link(&self) -> &crate::pool::Link {
        self.cards.link()
    }

    fn set_state(&self, state: Presence, detail: Option<String>) {
        let card = self.lease.as_ref().map(Lease::number);
        self.status.send_if_modified(|s| {
            let new = (state, card, detail);
            if (s.state, s.card, s.detail.clone()) == new {
                return false;
            }
            (s.state, s.card, s.detail) = new;
            true
        });
    }

    /// Takes a binding change: drops the old card, keeps the new lease, tells the caller.
    async fn apply(&mut self, r: Rebind) {
        if let Some(old) = self.lease.take() {
            let n = old.number();
            old.release().await;
            log::info!("{}: released card {n}", self.name);
        }
        // A renewed binding tries a card marked bad again.
        self.start_failures = 0;
        self.lost_t0.clear();
        if let Some(l) = &r.lease {
            self.cards.clear_bad(l.number());
        }
        if let Some(Binding::Card(n)) = &r.binding {
            self.cards.clear_bad(*n);
        }
        match &r.binding {
            Some(b) => log::info!("{}: bound to {b}", self.name),
            None => log::info!("{}: unbound", self.name),
        }
        self.binding = r.binding;
        self.lease = r.lease;
        self.status.send_modify(|s| {
            s.binding.clone_from(&self.binding);
            s.card = self.lease.as_ref().map(Lease::number);
            s.state = if self.binding.is_some() {
                Presence::Waiting
            } else {
                Presence::Absent
            };
            s.detail = None;
            s.generation += 1;
        });
        let _ = r.done.send(());
    }

    /// Waits `d`, or less if the binding changes.
    async fn pause(&mut self, d: Duration) -> Woken {
        tokio::select! {
            _ = tokio::time::sleep(d) => Woken::Elapsed,
            r = self.control.recv() => match r {
                Some(r) => Woken::Rebind(r),
                // The daemon dropped the handle: nothing will change any more.
                None => { tokio::time::sleep(d).await; Woken::Elapsed }
            },
        }
    }

    /// Waits `retry`, or less if the link changes state or the binding changes.
    async fn pause_or_link_change(&mut self) -> Woken {
        let mut w = self.link().watch();
        w.borrow_and_update();
        let retry = self.cfg.retry;
        tokio::select! {
            _ = tokio::time::timeout(retry, w.changed()) => Woken::Elapsed,
            r = self.control.recv() => match r {
                Some(r) => Woken::Rebind(r),
                None => { tokio::time::sleep(retry).await; Woken::Elapsed }
            },
        }
    }

    /// Serves forever: find and start the bound card, show it through vpcd, repeat after any
    /// loss or binding change.
    pub async fn run(mut self) {
        // Give the pool link its first connection before reporting it missing.
        self.link().wait_up(self.cfg.retry * 4).await;
        let mut last_problem = String::new();
        loop {
            let Some(binding) = self.binding.clone() else {
                self.set_state(Presence::Absent, None);
                match self.control.recv().await {
                    Some(r) => self.apply(r).await,
                    None => return,
                }
                continue;
            };
            let (atr, started_on) = match self.acquire(&binding).await {
                Ok(x) => x,
                Err(problem) => {
                    let text = problem.to_string();
                    if text != last_problem {
                        log::warn!("{}: {binding} unavailable: {text}", self.name);
                        last_problem = text.clone();
                    }
                    self.set_state(Presence::Waiting, Some(text));
                    let woken = match problem {
                        Unavailable::MarkedBad(n, _) => self.wait_reinserted(n).await,
                        _ => self.pause_or_link_change().await,
                    };
                    if let Woken::Rebind(r) = woken {
                        self.apply(r).await;
                        last_problem.clear();
                    }
                    continue;
                }
            };
            last_problem.clear();
            let conn = match self.connect_vpcd().await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(r) => {
                    self.apply(r).await;
                    continue;
                }
            };
            self.stats.sessions.fetch_add(1, Ordering::Relaxed);
            // "Present" only once vpcd talks to us: a connection vpcd has not accepted yet
            // (it accepts at its presence poll) shows pcscd nothing.
            self.set_state(
                Presence::Waiting,
                Some("connected; waiting for pcscd to poll the reader".into()),
            );
            let (end, conn) = self.session(conn, atr, started_on).await;
            if let Some(conn) = conn {
                conn.close_now(
                    CLOSE_QUIET,
                    CLOSE_PACE,
                    &t0::sw::TECHNICAL_PROBLEM,
                    CLOSE_LIMIT,
                )
                .await;
            }
            self.set_state(Presence::Waiting, Some("card removed".into()));
            let pause = match end {
                End::VpcdClosed(why) => {
                    log::info!("{}: vpcd closed the connection ({why})", self.name);
                    // pcscd going away (socket activation, restart): don't spin.
                    self.cfg.retry
                }
                End::CardGone(why) => {
                    log::warn!("{}: card gone: {why}", self.name);
                    if !matches!(binding, Binding::Card(_)) {
                        // Cards move: look for it again.
                        if let Some(l) = self.lease.take() {
                            self.cards.forget(l.number());
                            l.release().await;
                        }
                    }
                    REMOVAL_GRACE
                }
                End::CardReset => {
                    log::info!("{}: card reset after a failed exchange", self.name);
                    let now = std::time::Instant::now();
                    self.lost_t0.push_back(now);
                    while self
                        .lost_t0
                        .front()
                        .is_some_and(|t| now.duration_since(*t) > BAD_RESET_WINDOW)
                    {
                        self.lost_t0.pop_front();
                    }
                    if self.lost_t0.len() >= BAD_RESETS {
                        let why = format!(
                            "lost its T=0 state {} times within {} s",
                            self.lost_t0.len(),
                            BAD_RESET_WINDOW.as_secs()
                        );
                        self.mark_bad(&why).await;
                    }
                    REMOVAL_GRACE
                }
                End::LinkDown => {
                    log::warn!("{}: pool link down: card shown as removed", self.name);
                    REMOVAL_GRACE
                }
                End::Rebound(r) => {
                    self.apply(r).await;
                    REMOVAL_GRACE
                }
            };
            // Stay away until pcscd has polled the reader (every ~400 ms) and seen the card
            // removed, or a quick comeback could look to it like the same card, and its
            // applications would go on with a card that was reset under them (or another one).
            if let Woken::Rebind(r) = self.pause(pause).await {
                self.apply(r).await;
                // Still wait out pcscd's poll before showing the next card.
                tokio::time::sleep(REMOVAL_GRACE).await;
            }
        }
    }

    /// Makes sure this reader holds its card and starts it; answers its ATR.
    async fn acquire(&mut self, binding: &Binding) -> Result<(Vec<u8>, LinkState), Unavailable> {
        let started_on = self.link().state();
        if !matches!(started_on, LinkState::Up { .. }) {
            return Err(Unavailable::LinkDown);
        }
        let me = Holder::Reader(self.index);
        if self.lease.is_none() {
            let lease = match binding {
                Binding::Card(n) => self.cards.lease(*n, me)?,
                Binding::Iccid(s) => self.find(Wanted::Iccid(s), me).await?,
                Binding::Imsi(s) => self.find(Wanted::Imsi(s), me).await?,
            };
            self.lease = Some(lease);
            self.set_state(Presence::Waiting, Some("starting the card".into()));
        }
        let timeout = self.cfg.command_timeout;
        let n = self.lease.as_ref().expect("set above").number();
        if let Some(why) = self.cards.bad(n) {
            return Err(Unavailable::MarkedBad(n, why));
        }
        let lease = self.lease.as_mut().expect("set above");
        // Read ICCID/IMSI once, so scans and the API can report the card without touching it.
        if self.cards.known(n).iccid.is_none() {
            if let Err(e) = lease.read_identity(timeout).await {
                log::debug!("{}: card {n}: identity not read: {e}", self.name);
            }
        }
        match lease.restart().await {
            Ok(atr) => {
                self.start_failures = 0;
                Ok((atr, started_on))
            }
            Err(error) => {
                self.cards.forget(n);
                self.start_failures += 1;
                if self.start_failures >= BAD_START_FAILURES && self.card_inserted(n).await {
                    let why = format!(
                        "did not start {} times in a row ({error})",
                        self.start_failures
                    );
                    self.mark_bad(&why).await;
                }
                if !matches!(binding, Binding::Card(_)) {
                    if let Some(l) = self.lease.take() {
                        l.release().await;
                    }
                }
                Err(Unavailable::Start { card: n, error })
            }
        }
    }

    /// Whether the pool reports a card in slot `n` (a start failure of an empty slot is no
    /// sign of a bad card).
    async fn card_inserted(&self, n: u16) -> bool {
        match self.link().states().await {
            Ok(st) => st[usize::from(n - 1)].has_card(),
            Err(_) => false,
        }
    }

    /// Tells the pool the bound card is bad (once), so a person sees which one to pull.
    async fn mark_bad(&mut self, why: &str) {
        if let Some(lease) = self.lease.as_mut() {
            if let Err(e) = lease.mark_bad(why).await {
                log::warn!("{}: error indication not sent: {e}", self.name);
            }
        }
    }

    /// While the card is marked bad: waits until the pool reports it inserted again (pulled and
    /// put back) or the binding changes.
    async fn wait_reinserted(&mut self, n: u16) -> Woken {
        loop {
            if let Woken::Rebind(r) = self.pause(REINSERT_POLL).await {
                return Woken::Rebind(r);
            }
            if let Ok(st) = self.link().states().await {
                if st[usize::from(n - 1)] == crate::pool::SlotState::Inserted {
                    log::info!("{}: card {n} was re-inserted", self.name);
                    self.cards.clear_bad(n);
                    self.start_failures = 0;
                    self.lost_t0.clear();
                    return Woken::Elapsed;
                }
            }
        }
    }

    async fn find(&self, want: Wanted<'_>, me: Holder) -> Result<Lease, Unavailable> {
        self.cards
            .find(&want, me, self.cfg.command_timeout)
            .await
            .map_err(|error| Unavailable::Find {
                want: want.to_string(),
                error,
            })
    }

    /// Connects to vpcd, retrying with back-off; `Ok(None)` if the pool link drops, `Err` if
    /// the binding changes meanwhile.
    async fn connect_vpcd(&mut self) -> Result<Option<Connection>, Rebind> {
        let mut backoff = Duration::from_millis(50);
        let mut logged = false;
        loop {
            if !matches!(self.link().state(), LinkState::Up { .. }) {
                return Ok(None);
            }
            match Connection::connect(&self.cfg.vpcd, self.cfg.quickack, Duration::from_secs(2))
                .await
            {
                Ok(c) => {
                    self.stats.vpcd_connects.fetch_add(1, Ordering::Relaxed);
                    if !self.vpcd_problem.is_empty() {
                        log::warn!("{}: vpcd at {} reachable again", self.name, self.cfg.vpcd);
                        self.vpcd_problem.clear();
                    }
                    return Ok(Some(c));
                }
                Err(e) => {
                    let problem = vpcd_problem(&self.cfg.vpcd, &e);
                    if problem != self.vpcd_problem {
                        log::warn!("{}: {problem}", self.name);
                        self.vpcd_problem = problem.clone();
                    }
                    if !logged {
                        self.set_state(Presence::Waiting, Some(problem));
                        logged = true;
                    }
                    if let Woken::Rebind(r) = self.pause(backoff).await {
                        return Err(r);
                    }
                    backoff = (backoff * 2).min(self.cfg.retry.max(Duration::from_millis(50)));
                }
            }
        }
    }

    /// Serves vpcd until the session ends; hands the connection back when it is still open
    /// (the card went away), to be closed without losing a command.
    async fn session(
        &mut self,
        mut conn: Connection,
        atr: Vec<u8>,
        started_on: LinkState,
    ) -> (End, Option<Connection>) {
        let end = self.serve_events(&mut conn, atr, started_on).await;
        match end {
            End::VpcdClosed(_) => (end, None),
            _ => (end, Some(conn)),
        }
    }

    async fn serve_events(
        &mut self,
        conn: &mut Connection,
        mut atr: Vec<u8>,
        started_on: LinkState,
    ) -> End {
        let mut link = self.link().watch();
        // `started_on` is the pool connection the card was started on: after a reconnect the
        // pool may have powered the card off, so the session ends.
        if *link.borrow_and_update() != started_on {
            return End::LinkDown;
        }
        let Some(mut lease) = self.lease.take() else {
            return End::CardGone("no lease".into());
        };
        let mut powered = true;
        let mut accepted = false;
        // vpcd takes one connection per port and accepts the next only when pcscd polls after
        // the previous one is gone; a connection still unaccepted after this long means another
        // client holds the port (a second simpool?), or pcscd is not polling.
        let not_taken = tokio::time::sleep(NOT_TAKEN_WARNING);
        tokio::pin!(not_taken);
        let end = loop {
            let ev = tokio::select! {
                ev = conn.next_event() => ev,
                _ = &mut not_taken, if !accepted => {
                    log::warn!(
                        "{}: vpcd at {} has not taken the connection after {} s: is another \
                         client (a second simpool?) connected to that port, or is pcscd stuck?",
                        self.name,
                        self.cfg.vpcd,
                        NOT_TAKEN_WARNING.as_secs()
                    );
                    accepted = true; // warn once
                    continue;
                }
                changed = link.changed() => {
                    if changed.is_err() || *link.borrow_and_update() != started_on {
                        break End::LinkDown;
                    }
                    continue;
                }
                r = self.control.recv(), if self.control_open => match r {
                    Some(r) => break End::Rebound(r),
                    // No handle left: the binding can no longer change.
                    None => { self.control_open = false; continue }
                },
            };
            let ev = match ev {
                Ok(Some(ev)) => ev,
                Ok(None) => break End::VpcdClosed("end of stream".into()),
                Err(e) => break End::VpcdClosed(e.to_string()),
            };
            if self.status.borrow().state != Presence::Present {
                accepted = true;
                log::info!(
                    "{}: card {} present, ATR {}",
                    self.name,
                    lease.number(),
                    hex::encode_upper(&atr)
                );
                let card = Some(lease.number());
                self.status.send_modify(|s| {
                    s.state = Presence::Present;
                    s.card = card;
                    s.detail = None;
                });
            }
            match ev {
                Event::GetAtr => {
                    if let Err(e) = conn.reply(&atr).await {
                        break End::VpcdClosed(e.to_string());
                    }
                }
                Event::PowerOn | Event::Reset => {
                    log::info!("{}: {ev:?}", self.name);
                    if !powered || self.cfg.reset == ResetPolicy::Restart {
                        self.stats.resets.fetch_add(1, Ordering::Relaxed);
                        match lease.restart().await {
                            Ok(a) => atr = a,
                            Err(e) => break End::CardGone(format!("restart failed: {e}")),
                        }
                        powered = true;
                    }
                }
                Event::PowerOff => {
                    log::info!("{}: PowerOff", self.name);
                    if let Err(e) = lease.stop().await {
                        break End::CardGone(format!("stop failed: {e}"));
                    }
                    powered = false;
                }
                Event::UnknownControl(b) => {
                    log::warn!("{}: unknown vpcd control byte {b:02X} ignored", self.name);
                }
                Event::Invalid { len } => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "{}: vpcd frame of {len} bytes cannot be a command: 6700",
                        self.name
                    );
                    if let Err(e) = conn.reply(&t0::sw::WRONG_LENGTH).await {
                        break End::VpcdClosed(e.to_string());
                    }
                }
                Event::Command(cmd) => {
                    self.stats.commands.fetch_add(1, Ordering::Relaxed);
                    if !powered {
                        // pcscd powers a card on before using it; be lenient if it did not.
                        log::warn!(
                            "{}: command while powered off: starting the card",
                            self.name
                        );
                        self.stats.resets.fetch_add(1, Ordering::Relaxed);
                        match lease.restart().await {
                            Ok(a) => atr = a,
                            Err(e) => break End::CardGone(format!("start failed: {e}")),
                        }
                        powered = true;
                    }
                    log::debug!("{}: > {}", self.name, hex::encode_upper(&cmd));
                    let bound = self.cfg.command_timeout;
                    let (answer, touched) = match lease.transmit(&cmd, bound, Front::Vpcd).await {
                        Ok(resp) => {
                            log::debug!("{}: < {}", self.name, hex::encode_upper(&resp));
                            (resp, false)
                        }
                        Err(e) => {
                            self.stats.errors.fetch_add(1, Ordering::Relaxed);
                            if matches!(e, crate::pool::ExchangeError::Refused(_)) {
                                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                            }
                            let sw = e.status();
                            log::warn!(
                                "{}: {} failed, answered {}: {e}",
                                self.name,
                                hex::encode_upper(&cmd),
                                hex::encode_upper(sw)
                            );
                            (sw.to_vec(), e.card_touched())
                        }
                    };
                    if let Err(e) = conn.reply(&answer).await {
                        break End::VpcdClosed(e.to_string());
                    }
                    if touched {
                        // The card's T=0 state is unknown: restart it and make pcscd see the
                        // card removed, so no application goes on with lost selections or PIN.
                        let _ = lease.stop().await;
                        break End::CardReset;
                    }
                }
            }
        };
        self.lease = Some(lease);
        end
    }
}
