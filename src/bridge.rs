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
//!
//! What a session does with vpcd's events is [`session::Session`], a sans-IO state machine;
//! this task connects, moves bytes, waits, and carries out the card operations it asks for.
//! The card layer's rules apply as everywhere: a card marked bad or an empty slot is refused
//! (the reader waits, saying why), a session ends when its pool connection changes.

pub mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cards::{Cards, FindError, Front, Holder, Lease, LeaseError, StartError, Wanted};
use crate::history::EndReason;
use crate::log_once::LogOnce;
use crate::pool::{LinkState, PoolError};
use crate::t0;
use crate::users::Who;
use crate::values::{Atr, CardNo};
use crate::vpcd::{Closed, Connection};

use session::{Action, End, Session};

/// Which card a reader shows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Binding {
    /// Front-panel number 1–256.
    Card(CardNo),
    Iccid(String),
    Imsi(String),
    /// An eUICC by its EID, whatever profile it has enabled.
    Eid(String),
}

impl Binding {
    /// What an identity search for this binding looks for (`None` for a card number).
    pub fn wanted(&self) -> Option<Wanted<'_>> {
        match self {
            Binding::Card(_) => None,
            Binding::Iccid(s) => Some(Wanted::Iccid(s)),
            Binding::Imsi(s) => Some(Wanted::Imsi(s)),
            Binding::Eid(s) => Some(Wanted::Eid(s)),
        }
    }

    /// Checks an ICCID or IMSI binding (digits of a plausible length); the error names it.
    pub fn checked(self) -> Result<Binding, String> {
        match self {
            Binding::Iccid(s) => crate::values::check_iccid(&s).map(Binding::Iccid),
            Binding::Imsi(s) => crate::values::check_imsi(&s).map(Binding::Imsi),
            Binding::Eid(s) => crate::values::check_eid(&s).map(Binding::Eid),
            b => Ok(b),
        }
    }
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Binding::Card(n) => write!(f, "card {n}"),
            Binding::Iccid(s) => write!(f, "ICCID {s}"),
            Binding::Imsi(s) => write!(f, "IMSI {s}"),
            Binding::Eid(s) => write!(f, "EID {s}"),
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
    pub fn snapshot(&self) -> ReaderCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReaderCounts {
            commands: l(&self.commands),
            errors: l(&self.errors),
            resets: l(&self.resets),
            sessions: l(&self.sessions),
            refused: l(&self.refused),
            vpcd_connects: l(&self.vpcd_connects),
        }
    }
}

/// A reader's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderCounts {
    pub commands: u64,
    pub errors: u64,
    pub resets: u64,
    pub sessions: u64,
    pub refused: u64,
    pub vpcd_connects: u64,
}

/// A reader as `GET /api/v1/readers` shows it (also `bind`/`unbind --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderRow {
    pub reader: u16,
    /// The PC/SC reader name.
    pub name: String,
    pub vpcd: String,
    pub binding: Option<Binding>,
    pub card: Option<CardNo>,
    pub state: Presence,
    /// Why the reader is waiting (for people; not a stable interface).
    pub detail: Option<String>,
    pub atr: Option<Atr>,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    pub stats: ReaderCounts,
    /// The user the binding was made for, and the reservation the card is under, if any.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub reservation: Option<crate::reservations::ReservationId>,
}

/// What pcscd sees in a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub card: Option<CardNo>,
    pub state: Presence,
    /// Why the reader is waiting (for people; not a stable interface).
    pub detail: Option<String>,
    /// Counts binding changes, so a caller can wait for the one it asked for.
    pub generation: u64,
    /// The user the binding was made for (its lease works for that user), if any.
    pub user: Option<String>,
    /// The reader has done what it can for its binding for now: the card shows, there is
    /// none to show, or it waits for something outside it (an empty slot, a card held
    /// elsewhere or marked bad, no card with that identity, the pool or vpcd away).
    #[serde(skip)]
    pub settled: bool,
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
    /// Refused by the card layer: a card marked bad, an empty slot.
    #[error(transparent)]
    Refused(StartError),
    #[error("card {card} did not start: {error}")]
    Start { card: CardNo, error: PoolError },
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
    /// Whom the binding is for.
    who: Option<Who>,
    /// The new card's lease, taken by the caller so a refusal is immediate.
    lease: Option<Lease>,
    done: oneshot::Sender<()>,
}

/// How long a reader stays away from vpcd after a session whose end pcscd has not seen
/// ([`Closed::Unseen`]): longer than pcscd's presence poll of vpcd readers (400 ms), so that a
/// poll finds nothing waiting to be taken and reports the card removed before the next card
/// connects. After a session closed at a poll ([`Closed::AtPoll`]) it connects at once.
const REMOVAL_GRACE: Duration = Duration::from_millis(600);

/// Closing a session (see `Connection::close_now`): commands that still come before pcscd's
/// poll are answered `6F 00` this far apart; the whole close takes at most the limit (pcscd
/// polls every ~400 ms).
const CLOSE_PACE: Duration = Duration::from_millis(75);
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// How often a card marked bad is checked for re-insertion.
const REINSERT_POLL: Duration = Duration::from_secs(1);

/// How a session ended: as the session says, or by a change of binding.
enum Finish {
    Session(End),
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
        self.bind_as(binding, None).await
    }

    /// [`ReaderHandle::bind`] for `who`: the reader's lease works for that user, so it may
    /// show a card reserved by `who` (and no other user's).
    pub async fn bind_as(
        &self,
        binding: Option<Binding>,
        who: Option<Who>,
    ) -> Result<(), BindError> {
        let _one = self.binding_lock.lock().await;
        self.bind_locked(binding, who).await
    }

    /// [`ReaderHandle::bind_as`] only if the reader is bound to nothing: checked under the
    /// reader's binding lock, so of two callers only one gets it. `Ok(false)` when it is bound.
    pub async fn claim_as(&self, binding: Binding, who: Option<Who>) -> Result<bool, BindError> {
        let _one = self.binding_lock.lock().await;
        if self.status().binding.is_some() {
            return Ok(false);
        }
        self.bind_locked(Some(binding), who).await.map(|()| true)
    }

    /// The change itself; the caller holds `binding_lock`.
    async fn bind_locked(
        &self,
        binding: Option<Binding>,
        who: Option<Who>,
    ) -> Result<(), BindError> {
        let me = Holder::Reader(self.index);
        let st = self.status();
        let user = who.as_ref().map(|w| w.user.clone());
        if st.binding == binding && (binding.is_none() || st.user == user) {
            return Ok(());
        }
        let lease = match &binding {
            Some(Binding::Card(n)) => match self.cards.lease_as(*n, me.clone(), who.as_ref()) {
                Ok(l) => Some(l),
                Err(LeaseError::Held { holder, .. }) if holder == me => None,
                Err(e) => return Err(e.into()),
            },
            Some(b) => {
                // A card known to have it and held by someone else: refuse now rather than
                // searching in vain.
                let want = b.wanted().expect("an identity binding");
                for v in self.cards.views() {
                    if let (true, Some(h)) = (want.matches(&v.known), v.holder) {
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
                who,
                lease,
                done,
            })
            .await
            .map_err(|_| BindError::Stopped(self.index))?;
        taken.await.map_err(|_| BindError::Stopped(self.index))
    }

    /// Waits until the reader has settled after its last binding change — it shows its card,
    /// has none to show, or waits for something outside it (see [`ReaderStatus::settled`]) —
    /// at most `within`.
    pub async fn wait_settled(&self, within: Duration) -> ReaderStatus {
        let mut rx = self.status.clone();
        let _ = tokio::time::timeout(within, async {
            loop {
                let settled = rx.borrow_and_update().settled;
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
    /// Whom the binding is for (see [`ReaderHandle::bind_as`]).
    who: Option<Who>,
    lease: Option<Lease>,
    control: mpsc::Receiver<Rebind>,
    control_open: bool,
    status: watch::Sender<ReaderStatus>,
    stats: Arc<ReaderStats>,
    /// Why the bound card cannot be shown, as last logged.
    problem: LogOnce,
    /// Why vpcd cannot be reached, as last logged.
    vpcd_problem: LogOnce,
    /// Not before this does the reader connect to vpcd again (see [`REMOVAL_GRACE`]).
    vpcd_after: tokio::time::Instant,
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
            user: None,
            settled: false,
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
            who: None,
            lease: None,
            control: ctl_rx,
            control_open: true,
            status: st_tx,
            stats,
            problem: LogOnce::default(),
            vpcd_problem: LogOnce::default(),
            vpcd_after: tokio::time::Instant::now(),
        };
        (reader, handle)
    }

    /// The start-up binding is for `who` (restored from the state file).
    pub fn for_user(&mut self, who: Option<Who>) {
        self.status
            .send_modify(|s| s.user = who.as_ref().map(|w| w.user.clone()));
        self.who = who;
    }

    fn link(&self) -> &crate::pool::Link {
        self.cards.link()
    }

    /// Shows a new state; `settled`: the reader waits for something outside it (or is done).
    fn set_state(&self, state: Presence, detail: Option<String>, settled: bool) {
        let card = self.lease.as_ref().map(Lease::number);
        self.status.send_if_modified(|s| {
            let new = (state, card, detail, settled);
            if (s.state, s.card, s.detail.clone(), s.settled) == new {
                return false;
            }
            (s.state, s.card, s.detail, s.settled) = new;
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
        self.problem.clear();
        self.binding = r.binding;
        self.who = r.who;
        self.lease = r.lease;
        self.status.send_modify(|s| {
            s.binding.clone_from(&self.binding);
            s.user = self.who.as_ref().map(|w| w.user.clone());
            s.card = self.lease.as_ref().map(Lease::number);
            (s.state, s.settled) = if self.binding.is_some() {
                (Presence::Waiting, false)
            } else {
                (Presence::Absent, true)
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

    /// Waits `d`, or less if the link changes state or the binding changes.
    async fn pause_or_link_change(&mut self, d: Duration) -> Woken {
        let mut w = self.link().watch();
        w.borrow_and_update();
        tokio::select! {
            _ = tokio::time::timeout(d, w.changed()) => Woken::Elapsed,
            r = self.control.recv() => match r {
                Some(r) => Woken::Rebind(r),
                None => { tokio::time::sleep(d).await; Woken::Elapsed }
            },
        }
    }

    /// Serves forever: find and start the bound card, show it through vpcd, repeat after any
    /// loss or binding change.
    pub async fn run(mut self) {
        // Give the pool link its first connection before reporting it missing.
        self.link().wait_up(self.cfg.retry * 4).await;
        loop {
            let Some(binding) = self.binding.clone() else {
                self.set_state(Presence::Absent, None, true);
                match self.control.recv().await {
                    Some(r) => self.apply(r).await,
                    None => return,
                }
                continue;
            };
            let Some(atr) = self.acquire_or_wait(&binding).await else {
                continue;
            };
            // Stay away until pcscd has seen the last card removed, or a quick comeback could
            // look to it like the same card, and its applications would go on with a card that
            // was reset under them (or another one). A binding change meanwhile does not start
            // the wait again: it is about pcscd, not the binding.
            let away = self
                .vpcd_after
                .saturating_duration_since(tokio::time::Instant::now());
            if !away.is_zero() {
                if let Woken::Rebind(r) = self.pause(away).await {
                    self.apply(r).await;
                    continue;
                }
            }
            let conn = match self.connect_vpcd().await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(r) => {
                    self.apply(r).await;
                    continue;
                }
            };
            let (finish, closed) = self.serve(conn, atr).await;
            let away = self.after(finish, &binding, closed).await;
            self.vpcd_after = tokio::time::Instant::now() + away;
        }
    }

    /// The bound card, started (its ATR); or, when it cannot be had now, says why (once per
    /// distinct cause), waits, and answers `None` (the loop tries again).
    async fn acquire_or_wait(&mut self, binding: &Binding) -> Option<Vec<u8>> {
        let problem = match self.acquire(binding).await {
            Ok(atr) => {
                self.problem.clear();
                return Some(atr);
            }
            Err(p) => p,
        };
        let text = problem.to_string();
        self.problem
            .warn(&format!("{}: {binding} unavailable", self.name), &text);
        self.set_state(Presence::Waiting, Some(text), true);
        let woken = match problem {
            Unavailable::Refused(StartError::Bad { .. }) => self.pause(REINSERT_POLL).await,
            _ => self.pause_or_link_change(self.cfg.retry).await,
        };
        if let Woken::Rebind(r) = woken {
            self.apply(r).await;
        }
        None
    }

    /// Connects to vpcd and serves the session; closes the connection without losing a
    /// command when the card went away, and says whether pcscd saw it go.
    async fn serve(&mut self, conn: Connection, atr: Vec<u8>) -> (Finish, Closed) {
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        // "Present" only once vpcd talks to us: a connection vpcd has not accepted yet
        // (it accepts at its presence poll) shows pcscd nothing.
        self.set_state(
            Presence::Waiting,
            Some("connected; waiting for pcscd to poll the reader".into()),
            false,
        );
        let mut conn = conn;
        let finish = self.session(&mut conn, atr).await;
        let closed = if matches!(finish, Finish::Session(End::VpcdClosed(_))) {
            Closed::Unseen
        } else {
            conn.close_now(CLOSE_PACE, &t0::sw::TECHNICAL_PROBLEM, CLOSE_LIMIT)
                .await
        };
        self.set_state(Presence::Waiting, Some("card removed".into()), false);
        (finish, closed)
    }

    /// After a session: logs why it ended, lets go of a card that moved, and answers how long
    /// to stay away from vpcd.
    async fn after(&mut self, finish: Finish, binding: &Binding, closed: Closed) -> Duration {
        let grace = match closed {
            Closed::AtPoll => Duration::ZERO,
            Closed::Unseen => REMOVAL_GRACE,
        };
        match finish {
            Finish::Session(End::VpcdClosed(why)) => {
                log::info!("{}: vpcd closed the connection ({why})", self.name);
                // pcscd going away (socket activation, restart): don't spin.
                self.cfg.retry
            }
            Finish::Session(End::CardGone(why)) => {
                log::warn!("{}: card gone: {why}", self.name);
                if !matches!(binding, Binding::Card(_)) {
                    // Cards move: look for it again.
                    if let Some(l) = self.lease.take() {
                        self.cards.forget(l.number());
                        l.release_for(EndReason::CardRemoved).await;
                    }
                } else if let Some(l) = self.lease.as_mut() {
                    l.close_row(EndReason::CardRemoved);
                }
                grace
            }
            Finish::Session(End::CardReset) => {
                log::info!("{}: card reset after a failed exchange", self.name);
                grace
            }
            Finish::Session(End::LinkDown) => {
                log::warn!("{}: pool link down: card shown as removed", self.name);
                if let Some(l) = self.lease.as_mut() {
                    l.close_row(EndReason::LinkLost);
                }
                grace
            }
            Finish::Rebound(r) => {
                self.apply(r).await;
                grace
            }
        }
    }

    /// Makes sure this reader holds its card and starts it; answers its ATR.
    async fn acquire(&mut self, binding: &Binding) -> Result<Vec<u8>, Unavailable> {
        if !matches!(self.link().state(), LinkState::Up { .. }) {
            return Err(Unavailable::LinkDown);
        }
        if self.lease.is_none() {
            let me = Holder::Reader(self.index);
            let lease = match binding.wanted() {
                None => {
                    let Binding::Card(n) = binding else {
                        unreachable!("a card binding")
                    };
                    self.cards.lease_as(*n, me, self.who.as_ref())?
                }
                Some(want) => self.find(want, me).await?,
            };
            self.lease = Some(lease);
            self.set_state(Presence::Waiting, Some("starting the card".into()), false);
        }
        let timeout = self.cfg.command_timeout;
        let lease = self.lease.as_mut().expect("set above");
        // Also a lease `bind` took: what this reader sees of the card counts towards marking
        // it bad.
        lease.in_session();
        let n = lease.number();
        let started = match lease.admit().await {
            Ok(()) => {
                // Read ICCID/IMSI once, so scans and the API can report the card without
                // touching it.
                if self.cards.known(n).iccid.is_none() {
                    if let Err(e) = lease.read_identity(timeout).await {
                        log::debug!("{}: card {n}: identity not read: {e}", self.name);
                    }
                }
                lease.restart().await
            }
            Err(e) => Err(e),
        };
        let error = match started {
            Ok(atr) => return Ok(atr),
            Err(e) => e,
        };
        if !matches!(error, StartError::Bad { .. }) {
            // Pulled, or no longer answering: what was read from it may be stale.
            self.cards.forget(n);
        }
        let why = match &error {
            StartError::Empty(_) => EndReason::CardRemoved,
            _ => EndReason::Released,
        };
        if binding.wanted().is_some() {
            // Cards move: look for it again next time.
            if let Some(l) = self.lease.take() {
                l.release_for(why).await;
            }
        } else if let Some(l) = self.lease.as_mut() {
            l.close_row(why);
        }
        Err(match error {
            StartError::Pool(error) => Unavailable::Start { card: n, error },
            e => Unavailable::Refused(e),
        })
    }

    async fn find(&self, want: Wanted<'_>, me: Holder) -> Result<Lease, Unavailable> {
        self.cards
            .find_as(&want, me, self.who.as_ref(), self.cfg.command_timeout)
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
        let mut shown = false;
        loop {
            if !matches!(self.link().state(), LinkState::Up { .. }) {
                return Ok(None);
            }
            match Connection::connect(&self.cfg.vpcd, self.cfg.quickack, Duration::from_secs(2))
                .await
            {
                Ok(c) => {
                    self.stats.vpcd_connects.fetch_add(1, Ordering::Relaxed);
                    if self.vpcd_problem.clear() {
                        log::warn!("{}: vpcd at {} reachable again", self.name, self.cfg.vpcd);
                    }
                    return Ok(Some(c));
                }
                Err(e) => {
                    let problem = vpcd_problem(&self.cfg.vpcd, &e);
                    self.vpcd_problem.warn(&self.name, &problem);
                    if !shown {
                        self.set_state(Presence::Waiting, Some(problem), true);
                        shown = true;
                    }
                    if let Woken::Rebind(r) = self.pause(backoff).await {
                        return Err(r);
                    }
                    backoff = (backoff * 2).min(self.cfg.retry.max(Duration::from_millis(50)));
                }
            }
        }
    }

    /// Serves vpcd until the session ends: feeds vpcd's events, the card's results and the
    /// lease's end to the session, and carries out what it asks for.
    async fn session(&mut self, conn: &mut Connection, atr: Vec<u8>) -> Finish {
        let Some(mut lease) = self.lease.take() else {
            return Finish::Session(End::CardGone("no lease".into()));
        };
        let mut s = Session::new(
            self.name.clone(),
            atr,
            self.cfg.reset,
            self.stats.clone(),
            std::time::Instant::now(),
        );
        let finish = loop {
            if let Some(end) = self.act(&mut s, conn, &mut lease).await {
                break Finish::Session(end);
            }
            let tick = s.deadline().map(tokio::time::Instant::from_std);
            tokio::select! {
                ev = conn.next_event() => s.event(ev),
                _ = async { tokio::time::sleep_until(tick.expect("checked")).await }, if tick.is_some() => {
                    s.tick(std::time::Instant::now())
                }
                e = lease.ended() => s.lease_ended(e),
                r = self.control.recv(), if self.control_open => match r {
                    Some(r) => break Finish::Rebound(r),
                    // No handle left: the binding can no longer change.
                    None => self.control_open = false,
                },
            }
        };
        self.lease = Some(lease);
        finish
    }

    /// Carries out the session's actions until it has none; answers the end if it ended.
    async fn act(
        &mut self,
        s: &mut Session,
        conn: &mut Connection,
        lease: &mut Lease,
    ) -> Option<End> {
        while let Some(a) = s.poll() {
            match a {
                Action::Present => {
                    log::info!(
                        "{}: card {} present, ATR {}",
                        self.name,
                        lease.number(),
                        hex::encode_upper(s.atr())
                    );
                    let card = Some(lease.number());
                    self.status.send_modify(|st| {
                        st.state = Presence::Present;
                        st.card = card;
                        st.detail = None;
                        st.settled = true;
                    });
                }
                Action::Reply(bytes) => {
                    if let Err(e) = conn.reply(&bytes).await {
                        s.reply_failed(e);
                    }
                }
                Action::Restart => s.restarted(lease.restart().await),
                Action::Stop => s.stopped(lease.stop().await),
                Action::Transmit(cmd) => {
                    let r = lease
                        .transmit(&cmd, self.cfg.command_timeout, Front::Vpcd)
                        .await;
                    s.answered(&cmd, r);
                }
                Action::NotTaken => log::warn!(
                    "{}: vpcd at {} has not taken the connection after {} s: is another \
                     client (a second simpool?) connected to that port, or is pcscd stuck?",
                    self.name,
                    self.cfg.vpcd,
                    session::NOT_TAKEN_WARNING.as_secs()
                ),
                Action::End(e) => return Some(e),
            }
        }
        None
    }
}
