//! One TCP connection to the pool carries all 256 cards. Replies are routed by slot to whoever
//! waits on that card; a reply nobody waits for is never handed to another card. When the
//! connection breaks every waiter fails at once; the link can reconnect by itself (capped
//! exponential back-off with jitter, [`crate::backoff`]) and notices a dead pool by an idle
//! keep-alive.
//!
//! What a frame means — skipped, a card's exchange failed, a card tainted, the connection
//! dropped — is decided in one place, [`super::integrity`]; this module only moves bytes and
//! runs the timers: a frame that has started must complete within the frame timeout while its
//! bytes keep coming (a trickling pool is dead), and a frame whose header came but whose data
//! stopped short is given up after a short stall (its length was wrong) and the pool asked for
//! its version: a silent pool is dead too.
//!
//! The pool protocol has no sequence numbers, so every routed frame carries the connection's
//! frame count, and an exchange only accepts frames that arrived after its request was
//! written.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};

use super::frame::{FrameError, Header, Reply, ReplyDecoder, Request, Slot};
use super::integrity::{Integrity, Phase, Stray, Verdict};
use crate::backoff::{clock_frac, Backoff};
use crate::log_once::LogEach;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("pool {addr} unreachable: {cause}")]
    Unreachable { addr: String, cause: String },
    #[error("no connection to the pool")]
    Down,
    #[error("connection to the pool lost")]
    LinkLost,
    #[error("no answer from the pool within {0} ms")]
    Timeout(u64),
    #[error("writing to the pool failed: {0}")]
    Write(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame of this exchange's reply was broken (its length was wrong): the exchange fails,
    /// the link goes on.
    #[error("the pool sent a broken frame ({0})")]
    BrokenFrame(&'static str),
    #[error("pool answered {what} with {got} bytes, expected {expected}")]
    BadAnswer {
        what: &'static str,
        got: usize,
        expected: usize,
    },
}

/// When the link is judged unhealthy by what the pool sends.
#[derive(Debug, Clone)]
pub struct HealthOptions {
    /// A frame that has begun must be complete within this time (a pool writes each frame at
    /// once; one that trickles or stops halfway is treated as dead).
    pub frame_timeout: Duration,
    /// A frame whose header came and whose bytes then stopped for this long claims more than
    /// the pool sent: it is given up (its card's exchange fails) and the pool asked whether it
    /// is still there.
    pub stall: Duration,
    /// Junk (undecodable runs, impossible headers, broken frames) is counted per window of
    /// this length.
    pub window: Duration,
    /// At least this many bad frames in a window …
    pub min_bad: u32,
    /// … making up at least this share of the window's frames: the stream cannot be read, and
    /// the connection is dropped (once; see [`super::integrity`]).
    pub max_bad_ratio: f64,
    /// After duplicated replies were seen, answers are held this long to see whether another
    /// reply follows (0 disables the guard).
    pub settle: Duration,
    /// How long the link stays guarded after the last sign of duplicated replies.
    pub guard: Duration,
}

impl Default for HealthOptions {
    fn default() -> Self {
        HealthOptions {
            frame_timeout: Duration::from_millis(500),
            stall: Duration::from_millis(100),
            window: Duration::from_secs(5),
            min_bad: 5,
            max_bad_ratio: 0.5,
            settle: Duration::from_millis(20),
            guard: Duration::from_secs(600),
        }
    }
}

/// How the link behaves.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Longest wait for any answer from the pool (the manual: 1000 ms).
    pub reply_timeout: Duration,
    /// Longest wait to establish the TCP connection.
    pub connect_timeout: Duration,
    /// Reconnect after the connection breaks (the daemon does; one-shot commands don't).
    pub reconnect: bool,
    /// Back-off bounds between reconnect attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Query the pool's version after this much silence; `None` disables the keep-alive.
    pub keepalive: Option<Duration>,
    /// A command whose card keeps sending NULL bytes (each within the reply timeout) may go on
    /// past its deadline, up to this long in all.
    pub null_wait_cap: Duration,
    pub health: HealthOptions,
}

/// The default of [`LinkOptions::null_wait_cap`]: an eUICC enabling a profile or signing
/// takes seconds.
pub const NULL_WAIT_CAP: Duration = Duration::from_secs(30);

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            reply_timeout: Duration::from_millis(1000),
            connect_timeout: Duration::from_secs(3),
            reconnect: false,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keepalive: None,
            null_wait_cap: NULL_WAIT_CAP,
            health: HealthOptions::default(),
        }
    }
}

/// Whether the link is connected; `generation` counts connections made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Up { generation: u64 },
    Down { generation: u64 },
    Closed,
}

/// Counters for logs, tests and the soak run.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub garbage_bytes: AtomicU64,
    /// Frames nobody waited for (for cards without a session, pool frames nobody asked for,
    /// late replies): skipped.
    pub unsolicited: AtomicU64,
    /// Late replies to exchanges given up (timed out or cancelled): expected, skipped.
    pub late: AtomicU64,
    /// Well-formed frames of unknown kinds: skipped.
    pub unknown_frames: AtomicU64,
    /// Slot-state bytes of unknown meaning in `03` answers.
    pub unknown_slot_states: AtomicU64,
    /// Frames with a wrong length (junk right after them, impossible, or stopping short).
    pub broken_frames: AtomicU64,
    /// Copies of a piece an exchange had already, dropped in a hold.
    pub copies_dropped: AtomicU64,
    pub connects: AtomicU64,
    pub keepalive_failures: AtomicU64,
    /// Frames that arrived for a card before its request was written: discarded.
    pub stale_discarded: AtomicU64,
    /// Frames the decoder could not take (junk before a header, impossible lengths).
    pub undecodable: AtomicU64,
    /// Exchanges that ended on a T=0 violation.
    pub t0_violations: AtomicU64,
    /// Connections dropped for bad content or a frame that never completed.
    pub health_drops: AtomicU64,
    /// Answers rejected because another reply followed within the settle time.
    pub ambiguous: AtomicU64,
}

const ROUTE_DEPTH: usize = 64;

/// Junk bytes in one run that count as line noise, not as a bad frame.
const NOISE: usize = 16;

/// A frame that stopped short is probed for after this much silence: the pool's answer
/// completes it (and so shows its length was wrong) much sooner than the stall.
const PROBE_AFTER: Duration = Duration::from_millis(2);

/// The timers of the frame the decoder holds.
struct Partial {
    /// When the frame now held began (bytes stayed buffered since).
    since: Option<tokio::time::Instant>,
    /// When bytes last came.
    last_read: tokio::time::Instant,
    /// The pool was probed for this frame.
    probed: bool,
}

impl Default for Partial {
    fn default() -> Self {
        Partial {
            since: None,
            last_read: tokio::time::Instant::now(),
            probed: false,
        }
    }
}

impl Partial {
    /// Bytes came (or a held frame was given up); `progress`: frames were decoded, so what is
    /// held now is a new frame.
    fn read(&mut self, now: tokio::time::Instant, progress: bool, held: bool) {
        self.last_read = now;
        if !held {
            self.since = None;
            self.probed = false;
        } else if progress || self.since.is_none() {
            self.since = Some(now);
            self.probed = false;
        }
    }

    /// When a timer is due: the probe and the stall while a header is held, the frame timeout
    /// while anything is.
    fn wake(
        &self,
        header_held: bool,
        stall: Duration,
        bound: Duration,
    ) -> Option<tokio::time::Instant> {
        let dead = self.since.map(|t| t + bound);
        if !header_held {
            return dead;
        }
        let next = if self.probed {
            self.last_read + stall
        } else {
            self.last_read + PROBE_AFTER.min(stall)
        };
        Some(dead.map_or(next, |d| d.min(next)))
    }
}

/// What is routed to a waiter.
enum Piece {
    /// A frame's payload and its number on the connection.
    Bytes(u64, Vec<u8>),
    /// The frame numbered so was broken: the exchange that took it fails.
    Broken(u64, &'static str),
}

/// A connection that lasted this long was a real one: the next reconnect starts from the
/// shortest back-off.
const STABLE_CONNECTION: Duration = Duration::from_secs(2);

/// Where replies of one connection go.
struct Conn {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    cards: Vec<Mutex<Option<mpsc::Sender<Piece>>>>,
    pool: Mutex<Option<mpsc::Sender<Piece>>>,
    closed: AtomicBool,
    kill: Notify,
    /// Why the connection was killed (for the log).
    kill_cause: Mutex<Option<String>>,
    last_rx: Mutex<Instant>,
    /// Reads that returned bytes: whether anything came since.
    reads: AtomicU64,
    /// Frames routed so far: each frame's number.
    frames: AtomicU64,
    /// The last bytes of the last frame: when junk follows it, they may be the next frame's
    /// header that a wrong length took in.
    tail: Mutex<Vec<u8>>,
}

impl Conn {
    /// Drops the connection, saying why.
    fn kill(&self, cause: String) {
        self.kill_cause.lock().unwrap().get_or_insert(cause);
        self.close();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Dropping the senders wakes every waiter with "link lost".
        for c in &self.cards {
            c.lock().unwrap().take();
        }
        self.pool.lock().unwrap().take();
        self.kill.notify_one();
    }
}

struct Shared {
    addr: String,
    opts: LinkOptions,
    /// Why the link is not up, as logged (refused, no answer to ID, connection lost …); `None`
    /// while it is up or before the first attempt.
    problem: Mutex<Option<String>>,
    /// The reply-integrity rules and what they remember.
    integrity: Mutex<Integrity>,
    /// Skipped frames, logged once per cause.
    skipped: Mutex<LogEach>,
    current: Mutex<Option<Arc<Conn>>>,
    card_locks: Vec<tokio::sync::Mutex<()>>,
    pool_lock: tokio::sync::Mutex<()>,
    state: watch::Sender<LinkState>,
    stats: LinkStats,
    shutdown: Notify,
    closed: AtomicBool,
}

/// A cheap, cloneable handle to the one pool connection.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

/// A registration for replies of one slot (or the pool) on one connection.
pub(crate) struct Waiter {
    conn: Arc<Conn>,
    rx: mpsc::Receiver<Piece>,
    target: Target,
    /// Only frames numbered above this are taken: they arrived after the last request written.
    after: u64,
    /// A request was sent and its reply is not all in: dropping the waiter gives it up.
    pending: bool,
    stats: Arc<Shared>,
}

#[derive(Clone, Copy)]
enum Target {
    Card(Slot),
    Pool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        match self.target {
            Target::Card(s) => {
                self.conn.cards[usize::from(s.0)].lock().unwrap().take();
                if self.pending {
                    // Its reply may still come: expected then, not a stray.
                    self.stats.integrity.lock().unwrap().abandoned(s);
                }
            }
            Target::Pool => {
                self.conn.pool.lock().unwrap().take();
            }
        };
    }
}

impl Waiter {
    /// The next piece of bytes for this target, waiting at most `timeout`. Pieces that arrived
    /// before the last request was written are discarded (counted): they answer something else.
    pub(crate) async fn recv(&mut self, timeout: Duration) -> Result<Vec<u8>, PoolError> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(end, self.rx.recv()).await {
                Ok(Some(Piece::Bytes(n, d))) if n <= self.after => {
                    self.stats
                        .stats
                        .stale_discarded
                        .fetch_add(1, Ordering::Relaxed);
                    // Bytes for a card that were not asked for: late or duplicated replies.
                    if let Target::Card(_) = self.target {
                        self.stats.guard(std::time::Instant::now());
                    }
                    log::debug!(
                        "pool: discarded {} byte(s) for {} that arrived before the request: {}",
                        d.len(),
                        self.target,
                        hex::encode_upper(&d)
                    );
                }
                Ok(Some(Piece::Bytes(_, d))) => return Ok(d),
                // A broken frame from before this request: its own exchange is over.
                Ok(Some(Piece::Broken(n, _))) if n <= self.after => {}
                Ok(Some(Piece::Broken(_, why))) => return Err(PoolError::BrokenFrame(why)),
                Ok(None) => return Err(PoolError::LinkLost),
                Err(_) => return Err(PoolError::Timeout(timeout.as_millis() as u64)),
            }
        }
    }

    /// Another piece for this waiter is already queued (no wait, no syscall).
    pub(crate) fn more_queued(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Sends a request on the connection this waiter listens on; from now on only frames that
    /// arrive after it are taken.
    pub(crate) async fn send(&mut self, req: &Request, link: &Link) -> Result<(), PoolError> {
        // Counted before the write: the answer can be routed (on another thread) before the
        // write call returns, and must not be taken for a stale frame.
        let before = self.conn.frames.load(Ordering::SeqCst);
        self.pending = req.expects_reply();
        link.write(&self.conn, req).await?;
        self.after = before;
        Ok(())
    }

    /// The reply is all in: dropping the waiter now gives nothing up.
    pub(crate) fn finish(&mut self) {
        self.pending = false;
    }
}

impl Shared {
    /// Holds answers from now on, for a while; says so when it begins.
    fn guard(&self, now: Instant) {
        let began = self.integrity.lock().unwrap().guard(now);
        if began {
            self.guard_began();
        }
    }

    fn guard_began(&self) {
        {
            let h = &self.opts.health;
            log::warn!(
                "pool {}: replies arrive outside any exchange (duplicated or late): answers are \
                 held at least {} ms (longer when copies come later) to check none follows, \
                 for the next {} s",
                self.addr,
                h.settle.as_millis(),
                h.guard.as_secs()
            );
        }
    }

    /// Counts a skipped frame and logs its cause once (`cause` says it is skipped).
    fn skip(&self, counter: &AtomicU64, cause: &str, detail: impl FnOnce() -> String) {
        counter.fetch_add(1, Ordering::Relaxed);
        if self.skipped.lock().unwrap().is_new(cause) {
            log::warn!("pool {}: {cause}", self.addr);
        }
        if log::log_enabled!(log::Level::Debug) {
            log::debug!("pool {}: skipped {}", self.addr, detail());
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Card(s) => write!(f, "{s}"),
            Target::Pool => write!(f, "the pool"),
        }
    }
}

impl Link {
    /// Connects once (failing with `Unreachable`), then keeps the link per `opts`.
    pub async fn connect(addr: &str, opts: LinkOptions) -> Result<Link, PoolError> {
        let link = Link::new(addr, opts);
        let stream = link.dial().await?;
        link.install(stream, true);
        if link.shared.opts.reconnect {
            let l = link.clone();
            tokio::spawn(async move { l.supervise(false).await });
        }
        Ok(link)
    }

    /// Starts connecting in the background and keeps reconnecting (for the daemon).
    pub fn spawn(addr: &str, mut opts: LinkOptions) -> Link {
        opts.reconnect = true;
        let link = Link::new(addr, opts);
        let l = link.clone();
        tokio::spawn(async move { l.supervise(true).await });
        link
    }

    fn new(addr: &str, opts: LinkOptions) -> Link {
        let integrity = Integrity::new(opts.health.clone(), Instant::now());
        let (state, _) = watch::channel(LinkState::Connecting);
        Link {
            shared: Arc::new(Shared {
                addr: addr.to_string(),
                opts,
                problem: Mutex::new(None),
                integrity: Mutex::new(integrity),
                skipped: Mutex::new(LogEach::default()),
                current: Mutex::new(None),
                card_locks: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
                pool_lock: tokio::sync::Mutex::new(()),
                state,
                stats: LinkStats::default(),
                shutdown: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    pub fn options(&self) -> &LinkOptions {
        &self.shared.opts
    }

    pub fn stats(&self) -> &LinkStats {
        &self.shared.stats
    }

    pub fn state(&self) -> LinkState {
        *self.shared.state.borrow()
    }

    /// Why the link is not up (what the log said last), for `/healthz` and the page; `None`
    /// while it is up.
    pub fn problem(&self) -> Option<String> {
        self.shared.problem.lock().unwrap().clone()
    }

    fn set_problem(&self, p: Option<String>) {
        *self.shared.problem.lock().unwrap() = p;
    }

    /// Watches connection changes (the bridge uses it to show "no card" while the link is down).
    pub fn watch(&self) -> watch::Receiver<LinkState> {
        self.shared.state.subscribe()
    }

    /// Drops the connection and stops reconnecting.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.shutdown.notify_waiters();
        if let Some(c) = self.shared.current.lock().unwrap().take() {
            c.close();
        }
        self.shared.state.send_replace(LinkState::Closed);
    }

    async fn dial(&self) -> Result<TcpStream, PoolError> {
        let addr = &self.shared.addr;
        let unreachable = |cause: String| PoolError::Unreachable {
            addr: addr.clone(),
            cause,
        };
        let limit = self.shared.opts.connect_timeout;
        let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no answer to connect within {} s (pool off, wrong address, or a firewall?)",
                    limit.as_secs_f64()
                ))
            })?
            .map_err(|e| {
                unreachable(match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => {
                        format!("{e}: nothing listens there (pool off, or the wrong port?)")
                    }
                    _ => e.to_string(),
                })
            })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Makes `stream` the current connection and starts its reader (and keep-alive). With
    /// `announce`, the link is up at once; else the caller announces it after checking the pool.
    fn install(&self, stream: TcpStream, announce: bool) -> (Arc<Conn>, u64) {
        let (rd, wr) = stream.into_split();
        let now = Instant::now();
        let conn = Arc::new(Conn {
            writer: tokio::sync::Mutex::new(wr),
            cards: (0..256).map(|_| Mutex::new(None)).collect(),
            pool: Mutex::new(None),
            closed: AtomicBool::new(false),
            kill: Notify::new(),
            kill_cause: Mutex::new(None),
            last_rx: Mutex::new(now),
            reads: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            tail: Mutex::new(Vec::new()),
        });
        if let Some(keep) = self.shared.integrity.lock().unwrap().connected(now) {
            log::info!(
                "pool {}: new connection after bad content; if it is as bad, it is kept for {} s \
                 (serving what can be served) before another is tried",
                self.shared.addr,
                keep.as_secs()
            );
        }
        *self.shared.current.lock().unwrap() = Some(conn.clone());
        let generation = self.shared.stats.connects.fetch_add(1, Ordering::SeqCst) + 1;
        if announce {
            self.announce(generation);
        }
        if let Some(every) = self.shared.opts.keepalive {
            let l = self.clone();
            let c = conn.clone();
            tokio::spawn(async move { l.keepalive(c, every).await });
        }
        let l = self.clone();
        let c = conn.clone();
        tokio::spawn(async move {
            let cause = l.read_loop(&c, rd).await;
            let cause = c.kill_cause.lock().unwrap().take().unwrap_or(cause);
            c.close();
            {
                let mut cur = l.shared.current.lock().unwrap();
                if cur.as_ref().is_some_and(|x| Arc::ptr_eq(x, &c)) {
                    *cur = None;
                }
            }
            if !l.shared.closed.load(Ordering::SeqCst) {
                let was_up =
                    matches!(l.state(), LinkState::Up { generation: g } if g == generation);
                if was_up {
                    log::warn!("pool {}: connection lost: {cause}", l.shared.addr);
                    l.set_problem(Some(format!("connection lost: {cause}")));
                } else {
                    log::debug!("pool {}: connection closed: {cause}", l.shared.addr);
                }
                l.shared.state.send_replace(LinkState::Down { generation });
            }
        });
        (conn, generation)
    }

    fn announce(&self, generation: u64) {
        self.set_problem(None);
        self.shared.state.send_replace(LinkState::Up { generation });
        log::info!("pool {}: connected", self.shared.addr);
    }

    async fn read_loop(&self, conn: &Conn, mut rd: tokio::net::tcp::OwnedReadHalf) -> String {
        let mut dec = ReplyDecoder::new();
        let mut buf = vec![0u8; 4096];
        let h = &self.shared.opts.health;
        let bound = h.frame_timeout.min(self.shared.opts.reply_timeout);
        let mut p = Partial::default();
        loop {
            let wake = p.wake(dec.pending().is_some(), h.stall, bound);
            // An immediate ACK, re-armed before each read: a pool (or anything between) that
            // writes small frames with Nagle's algorithm on would otherwise hold the next frame
            // for our delayed ACK (~40 ms).
            let _ = socket2::SockRef::from(rd.as_ref()).set_tcp_quickack(true);
            let n = tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) => return "closed by the pool".into(),
                    Ok(n) => n,
                    Err(e) => return e.to_string(),
                },
                _ = conn.kill.notified() => return "dropped (keep-alive failed or closed)".into(),
                _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {
                    if let Some(why) = self.partial_due(conn, &mut dec, &mut p, h.stall, bound) {
                        return why;
                    }
                    continue;
                }
            };
            let now = tokio::time::Instant::now();
            *conn.last_rx.lock().unwrap() = Instant::now();
            conn.reads.fetch_add(1, Ordering::Relaxed);
            dec.push(&buf[..n]);
            let (mut progress, why) = self.drain(conn, &mut dec);
            if let Some(why) = why {
                return why;
            }
            if let Some(r) = dec.end_of_read() {
                progress = true;
                if let Some(why) = self.decoded(conn, r) {
                    return why;
                }
            }
            if conn.closed.load(Ordering::SeqCst) {
                return "dropped".into();
            }
            p.read(now, progress, dec.buffered() > 0);
        }
    }

    /// A timer of the frame held in the decoder is due: probe the pool (a frame that stopped
    /// short is completed by the answer, or the pool is silent), give the frame up after the
    /// stall, or declare the pool dead (a frame trickles). Answers why the connection must go.
    fn partial_due(
        &self,
        conn: &Conn,
        dec: &mut ReplyDecoder,
        p: &mut Partial,
        stall: Duration,
        bound: Duration,
    ) -> Option<String> {
        let now = tokio::time::Instant::now();
        let pending = dec.pending().is_some();
        if pending && !p.probed && now >= p.last_read + PROBE_AFTER.min(stall) {
            p.probed = true;
            self.probe(conn);
            return None;
        }
        if pending && now >= p.last_read + stall {
            if let Some(r) = dec.idle() {
                if let Some(why) = self.decoded(conn, r) {
                    return Some(why);
                }
                if let (_, Some(why)) = self.drain(conn, dec) {
                    return Some(why);
                }
            }
            p.read(now, true, dec.buffered() > 0);
            return None;
        }
        self.shared
            .stats
            .health_drops
            .fetch_add(1, Ordering::Relaxed);
        Some(format!(
            "a frame began {} ms ago and never completed ({} byte(s) held): a trickling or \
             half-framing pool is treated as dead",
            bound.as_millis(),
            dec.buffered()
        ))
    }

    /// Routes every complete frame; answers whether anything was decoded and why the
    /// connection must go, if it must.
    fn drain(&self, conn: &Conn, dec: &mut ReplyDecoder) -> (bool, Option<String>) {
        let mut progress = false;
        while let Some(r) = dec.next_reply() {
            progress = true;
            if let Some(why) = self.decoded(conn, r) {
                conn.kill(why.clone());
                return (true, Some(why));
            }
        }
        (progress, None)
    }

    /// Handles one decoder result.
    fn decoded(&self, conn: &Conn, r: Result<Reply, FrameError>) -> Option<String> {
        let now = Instant::now();
        let e = match r {
            Ok(reply) => {
                self.shared.integrity.lock().unwrap().frame(now);
                self.route(conn, reply);
                return None;
            }
            Err(e) => e,
        };
        let stats = &self.shared.stats;
        stats.undecodable.fetch_add(1, Ordering::Relaxed);
        let broke = match &e {
            FrameError::Garbage(k) | FrameError::Trailing { skipped: k, .. } => {
                stats.garbage_bytes.fetch_add(*k as u64, Ordering::Relaxed);
                match &e {
                    FrameError::Trailing { after, .. } => {
                        // A length too long took in the next frame's header: that frame is
                        // broken too.
                        let tail = conn.tail.lock().unwrap().clone();
                        if let [0xAA, k @ (0x55 | 0x44), s] = tail[..] {
                            let h = if k == 0x55 {
                                Header::Card(Slot(s))
                            } else {
                                Header::Pool
                            };
                            self.broken(conn, h, false);
                        }
                        Some(*after)
                    }
                    _ => None,
                }
            }
            FrameError::Misframed { header, skipped } => {
                stats
                    .garbage_bytes
                    .fetch_add(*skipped as u64, Ordering::Relaxed);
                Some(*header)
            }
            FrameError::Overlong { header, .. } => Some(*header),
            FrameError::Oversized { header, .. } => Some(*header),
            FrameError::Stalled(header) => Some(*header),
            _ => None,
        };
        log::debug!("pool {}: {e}", self.shared.addr);
        if let Some(header) = broke {
            self.shared.skip(
                &stats.broken_frames,
                "frames with a wrong length: each fails its card's exchange, the link goes on",
                || e.to_string(),
            );
            self.broken(conn, header, matches!(e, FrameError::Trailing { .. }));
        }
        // A few junk bytes between frames are noise the decoder handles.
        if matches!(e, FrameError::Garbage(k) if k <= NOISE) {
            return None;
        }
        let verdict = self
            .shared
            .integrity
            .lock()
            .unwrap()
            .junk(&e.to_string(), now);
        match verdict {
            Ok(None) => None,
            Ok(Some(kept)) => {
                log::warn!("pool {}: {kept}", self.shared.addr);
                None
            }
            Err(why) => {
                stats.health_drops.fetch_add(1, Ordering::Relaxed);
                Some(why)
            }
        }
    }

    /// A broken frame: its exchange fails (or its running card's next one).
    /// `routed`: the frame blamed was the last one routed (junk followed it); else it never
    /// was (an impossible header, a frame given up, a header a wrong length took in).
    fn broken(&self, conn: &Conn, header: Header, routed: bool) {
        let entry = match header {
            Header::Card(s) => &conn.cards[usize::from(s.0)],
            Header::Pool => &conn.pool,
            Header::Unknown(_) => return,
        };
        // An exchange whose request went out after the frame blamed took nothing of it.
        let seq = conn.frames.load(Ordering::SeqCst) + u64::from(!routed);
        let tx = entry.lock().unwrap().clone();
        let delivered = tx.is_some_and(|tx| {
            tx.try_send(Piece::Broken(
                seq,
                "a frame of its reply had a wrong length",
            ))
            .is_ok()
        });
        if let (false, Header::Card(s)) = (delivered, header) {
            self.shared.integrity.lock().unwrap().broken(s);
        }
    }

    /// After a frame stopped short: is the pool still there? A pool that answers is in step
    /// again; one that sends nothing at all within the reply timeout is dead.
    fn probe(&self, conn: &Conn) {
        let Ok(current) = self.current() else { return };
        if !std::ptr::eq(Arc::as_ptr(&current), conn) {
            return;
        }
        let l = self.clone();
        tokio::spawn(async move {
            let before = current.reads.load(Ordering::Relaxed);
            if let Err(PoolError::Timeout(ms)) = l.version().await {
                if current.reads.load(Ordering::Relaxed) == before {
                    l.shared.stats.health_drops.fetch_add(1, Ordering::Relaxed);
                    current.kill(format!(
                        "a frame stopped short and then nothing came, not even an answer to a \
                         version query within {ms} ms: the pool is silent"
                    ));
                }
            }
        });
    }

    fn route(&self, conn: &Conn, reply: Reply) {
        self.shared.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        {
            let data = match &reply {
                Reply::Card { data, .. }
                | Reply::Pool { data, .. }
                | Reply::Unknown { data, .. } => data,
            };
            let mut tail = conn.tail.lock().unwrap();
            tail.clear();
            tail.extend_from_slice(&data[data.len().saturating_sub(3)..]);
        }
        let seq = conn.frames.fetch_add(1, Ordering::SeqCst) + 1;
        let (slot, data) = match reply {
            Reply::Card { slot, data } => (Some(slot), data),
            Reply::Pool { data, .. } => (None, data),
            Reply::Unknown { kind, slot, data } => {
                self.shared.skip(
                    &self.shared.stats.unknown_frames,
                    &format!("frames of an unknown kind (AA {kind:02X}) are skipped"),
                    || {
                        format!(
                            "AA {kind:02X} frame (slot byte {slot:02X}): {}",
                            hex::encode_upper(&data)
                        )
                    },
                );
                return;
            }
        };
        let entry = match slot {
            Some(s) => &conn.cards[usize::from(s.0)],
            None => &conn.pool,
        };
        let tx = entry.lock().unwrap().clone();
        let data = match tx {
            Some(tx) => match tx.try_send(Piece::Bytes(seq, data)) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(Piece::Bytes(_, d)))
                | Err(mpsc::error::TrySendError::Closed(Piece::Bytes(_, d))) => d,
                Err(_) => return,
            },
            None => data,
        };
        self.unsolicited(slot, data);
    }

    /// A frame nobody waits for: skipped; for a running card it costs that card's next
    /// exchange (see [`Integrity::stray`]).
    fn unsolicited(&self, slot: Option<Slot>, data: Vec<u8>) {
        let shared = &self.shared;
        let stats = &shared.stats;
        let hexed = || hex::encode_upper(&data);
        let Some(s) = slot else {
            shared.skip(
                &stats.unsolicited,
                "pool (AA 44) frames nobody asked for are skipped",
                || format!("pool frame: {}", hexed()),
            );
            return;
        };
        let now = Instant::now();
        let verdict = shared.integrity.lock().unwrap().stray(s, &data, now);
        match verdict {
            Stray::Idle => shared.skip(
                &stats.unsolicited,
                "replies for cards that are not running are skipped",
                || format!("reply for {s}: {}", hexed()),
            ),
            Stray::Late => {
                // Expected (a timeout, a Ctrl-C): counted, not worth a warning.
                stats.late.fetch_add(1, Ordering::Relaxed);
                log::debug!(
                    "pool {}: late reply for {s} skipped: {}",
                    shared.addr,
                    hexed()
                );
            }
            Stray::Tainted { guard_began } => {
                shared.skip(
                    &stats.unsolicited,
                    "replies for running cards outside any exchange (late or duplicated) are \
                     skipped; such a card's next exchange fails",
                    || format!("reply for {s} outside any exchange: {}", hexed()),
                );
                if guard_began {
                    shared.guard_began();
                }
            }
        }
    }

    /// The reply-integrity rules, for the card handles.
    pub(crate) fn integrity(&self) -> std::sync::MutexGuard<'_, Integrity> {
        self.shared.integrity.lock().unwrap()
    }

    /// What to do with a piece that came for an exchange of `slot` ([`Integrity::piece`]),
    /// counted.
    pub(crate) fn judge(&self, slot: Slot, piece: &[u8], phase: Phase) -> Verdict {
        let (verdict, began) = self.integrity().piece(slot, piece, phase, Instant::now());
        if began {
            self.shared.guard_began();
        }
        let stats = &self.shared.stats;
        match verdict {
            Verdict::Drop => stats.copies_dropped.fetch_add(1, Ordering::Relaxed),
            Verdict::Reject(_) => stats.ambiguous.fetch_add(1, Ordering::Relaxed),
            Verdict::Take => 0,
        };
        verdict
    }

    /// An exchange ended on a T=0 violation (counted).
    pub(crate) fn t0_violation(&self) {
        self.shared
            .stats
            .t0_violations
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn keepalive(&self, conn: Arc<Conn>, every: Duration) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.shared.shutdown.notified() => return,
            }
            if conn.closed.load(Ordering::SeqCst) {
                return;
            }
            if conn.last_rx.lock().unwrap().elapsed() < every {
                continue;
            }
            let before = conn.reads.load(Ordering::Relaxed);
            match self.version().await {
                Ok(_) => {}
                // Silence is what a new connection may cure; a garbled answer is not.
                Err(e @ (PoolError::Timeout(_) | PoolError::Write(_)))
                    if conn.reads.load(Ordering::Relaxed) == before =>
                {
                    self.shared
                        .stats
                        .keepalive_failures
                        .fetch_add(1, Ordering::Relaxed);
                    conn.kill(format!("keep-alive failed ({e})"));
                    return;
                }
                Err(e) => log::debug!("pool {}: keep-alive: {e}", self.shared.addr),
            }
        }
    }

    /// Reconnects whenever the connection is gone, until closed. Says why it cannot connect at
    /// warn level, once per distinct cause.
    async fn supervise(&self, mut dial_now: bool) {
        let opts = &self.shared.opts;
        let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
        let mut last_problem = String::new();
        loop {
            if !dial_now {
                let up_since = Instant::now();
                let mut rx = self.watch();
                loop {
                    let state = *rx.borrow_and_update();
                    if matches!(state, LinkState::Down { .. } | LinkState::Closed) {
                        break;
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
                // Only a connection that stayed up resets the back-off: one that dies at once
                // (a pool rebooting, accepting and dropping) must not become a reconnect storm.
                if up_since.elapsed() >= STABLE_CONNECTION {
                    backoff.reset();
                } else if !self.pause(&mut backoff).await {
                    return;
                }
            }
            if self.shared.closed.load(Ordering::SeqCst) {
                return;
            }
            let problem = match self.dial().await {
                Ok(stream) => {
                    let (conn, generation) = self.install(stream, false);
                    // A pool answers ID at once; anything else on that port is not one.
                    match self.id().await {
                        Ok(_) => {
                            if !last_problem.is_empty() {
                                log::warn!("pool {}: reachable again", self.shared.addr);
                                last_problem.clear();
                            }
                            self.announce(generation);
                            dial_now = false;
                            continue;
                        }
                        Err(e) => {
                            conn.kill("the pool did not answer ID".into());
                            format!(
                                "pool {}: connected, but {}: is this a pool?",
                                self.shared.addr,
                                match e {
                                    PoolError::Timeout(ms) =>
                                        format!("no answer to ID within {ms} ms"),
                                    e => format!("ID failed ({e})"),
                                }
                            )
                        }
                    }
                }
                Err(e) => e.to_string(),
            };
            self.set_problem(Some(problem.clone()));
            if problem != last_problem {
                log::warn!("{problem}");
                last_problem = problem;
            }
            if !self.pause(&mut backoff).await {
                return;
            }
            dial_now = true;
        }
    }

    /// Sleeps the jittered back-off and doubles it (capped); false if the link was closed.
    async fn pause(&self, backoff: &mut Backoff) -> bool {
        let wait = backoff.next(clock_frac());
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.shared.shutdown.notified() => false,
        }
    }

    fn current(&self) -> Result<Arc<Conn>, PoolError> {
        self.shared
            .current
            .lock()
            .unwrap()
            .clone()
            .ok_or(PoolError::Down)
    }

    /// Registers as the receiver of `target`'s replies on the current connection.
    fn register(&self, target: Target) -> Result<Waiter, PoolError> {
        let conn = self.current()?;
        let (tx, rx) = mpsc::channel(ROUTE_DEPTH);
        {
            let mut entry = match target {
                Target::Card(s) => conn.cards[usize::from(s.0)].lock().unwrap(),
                Target::Pool => conn.pool.lock().unwrap(),
            };
            // Checked under the entry's lock: close() takes every entry after setting the flag.
            if conn.closed.load(Ordering::SeqCst) {
                return Err(PoolError::LinkLost);
            }
            *entry = Some(tx);
        }
        let after = conn.frames.load(Ordering::SeqCst);
        Ok(Waiter {
            conn,
            rx,
            target,
            after,
            pending: false,
            stats: self.shared.clone(),
        })
    }

    async fn write(&self, conn: &Conn, req: &Request) -> Result<(), PoolError> {
        let bytes = req.to_bytes()?;
        log::trace!("pool <- {}", hex::encode_upper(&bytes));
        let mut w = conn.writer.lock().await;
        match tokio::time::timeout(self.shared.opts.reply_timeout, w.write_all(&bytes)).await {
            Ok(Ok(())) => {
                self.shared.stats.frames_out.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => {
                conn.close();
                Err(PoolError::Write(e.to_string()))
            }
            Err(_) => {
                conn.close();
                Err(PoolError::Write("the pool does not take our bytes".into()))
            }
        }
    }

    /// Exclusive use of one card: one exchange per card at a time.
    pub(crate) async fn lock_card(&self, slot: Slot) -> tokio::sync::MutexGuard<'_, ()> {
        self.shared.card_locks[usize::from(slot.0)].lock().await
    }

    pub(crate) fn register_card(&self, slot: Slot) -> Result<Waiter, PoolError> {
        self.register(Target::Card(slot))
    }

    /// Sends a request that gets no reply (stop, error indication).
    pub(crate) async fn send_only(&self, req: &Request) -> Result<(), PoolError> {
        let conn = self.current()?;
        self.write(&conn, req).await
    }

    /// A pool-wide query: one at a time, answered by an `AA 44` frame of `len` bytes. Pool
    /// frames of other lengths that come meanwhile answer nothing we asked: skipped.
    async fn query(
        &self,
        req: Request,
        what: &'static str,
        len: usize,
    ) -> Result<Vec<u8>, PoolError> {
        let _g = self.shared.pool_lock.lock().await;
        let mut w = self.register(Target::Pool)?;
        w.send(&req, self).await?;
        let timeout = self.shared.opts.reply_timeout;
        let end = tokio::time::Instant::now() + timeout;
        let mut odd = None;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match w.recv(left).await {
                Ok(d) if d.len() == len => return Ok(d),
                Ok(d) => {
                    self.shared.skip(
                        &self.shared.stats.unsolicited,
                        "pool (AA 44) frames nobody asked for are skipped",
                        || {
                            format!(
                                "pool frame while waiting for {what}: {}",
                                hex::encode_upper(&d)
                            )
                        },
                    );
                    odd = Some(d.len());
                }
                Err(PoolError::Timeout(_)) if odd.is_some() => {
                    return Err(PoolError::BadAnswer {
                        what,
                        got: odd.unwrap_or(0),
                        expected: len,
                    })
                }
                Err(PoolError::Timeout(_)) => {
                    return Err(PoolError::Timeout(timeout.as_millis() as u64))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The pool's 12-byte ID.
    pub async fn id(&self) -> Result<Vec<u8>, PoolError> {
        self.query(Request::ReadId, "ID", 12).await
    }

    /// The firmware version, e.g. `V053`.
    pub async fn version(&self) -> Result<String, PoolError> {
        let d = self.query(Request::ReadVersion, "version", 4).await?;
        Ok(String::from_utf8_lossy(&d).into_owned())
    }

    /// The 256 slot state bytes, card 1 first. Bytes of unknown meaning are kept as
    /// [`super::SlotState::Unknown`], counted and logged once per byte.
    pub async fn states(&self) -> Result<Vec<super::SlotState>, PoolError> {
        let d = self.query(Request::ReadStates, "slot states", 256).await?;
        let states: Vec<_> = d.into_iter().map(super::SlotState::from_byte).collect();
        for (i, st) in states.iter().enumerate() {
            if let super::SlotState::Unknown(b) = st {
                self.shared.skip(
                    &self.shared.stats.unknown_slot_states,
                    &format!("slot state byte {b:02X} of unknown meaning: shown as '?'"),
                    || format!("state byte {b:02X} for card {}", i + 1),
                );
            }
        }
        Ok(states)
    }

    /// A handle for one card.
    pub fn card(&self, slot: Slot) -> super::Card {
        super::Card::new(self.clone(), slot)
    }

    /// Waits (bounded) for the link to be up.
    pub async fn wait_up(&self, timeout: Duration) -> bool {
        let mut rx = self.watch();
        tokio::time::timeout(timeout, async {
            loop {
                if matches!(*rx.borrow_and_update(), LinkState::Up { .. }) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}
