//! One TCP connection to the pool carries all 256 cards. Replies are routed by slot to whoever
//! waits on that card; a reply nobody waits for is logged and dropped, never handed to another
//! card. When the connection breaks every waiter fails at once; the link can reconnect by itself
//! (capped exponential back-off with jitter) and notices a dead pool by an idle keep-alive.
//!
//! Health is judged by content, not only by silence (see [`HealthOptions`]): a frame that has
//! started must complete within the reply timeout (a trickling or half-framing pool is a dead
//! pool), and when too many of the frames in a window are unsolicited, undecodable or break the
//! T=0 rules of the exchange they land in, the connection is dropped and made again.
//!
//! The pool protocol has no sequence numbers, so a reply the pool sends twice can land in a
//! card's next exchange. Three things make that harmless or much less likely: every routed frame
//! carries the connection's frame count, and an exchange only accepts frames that arrived after
//! its request was written; card bytes that arrive while nobody waits for that card *taint* it,
//! so its next exchange fails as "T=0 state unknown" (the application sees a reset, not
//! another command's answer); and once such duplicates have been seen, the link is *guarded* for a
//! while: each completed answer is held for a short settle time, and more bytes arriving for the
//! card in that time reject the answer instead of passing it on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};

use super::frame::{FrameError, Reply, ReplyDecoder, Request, Slot};

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
    /// Bad frames are counted per window of this length.
    pub window: Duration,
    /// At least this many bad frames in a window …
    pub min_bad: u32,
    /// … making up at least this share of the window's frames drop the connection.
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
            window: Duration::from_secs(5),
            min_bad: 5,
            max_bad_ratio: 0.1,
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
    pub health: HealthOptions,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            reply_timeout: Duration::from_millis(1000),
            connect_timeout: Duration::from_secs(3),
            reconnect: false,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keepalive: None,
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
    pub unsolicited: AtomicU64,
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

/// A connection that lasted this long was a real one: the next reconnect starts from the
/// shortest back-off.
const STABLE_CONNECTION: Duration = Duration::from_secs(2);

/// A routed frame's payload and its number on the connection.
type Piece = (u64, Vec<u8>);

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
    /// Frames routed so far: each frame's number.
    frames: AtomicU64,
    /// The health window: start (ms since `born`), frames and bad frames in it.
    born: Instant,
    win_start_ms: AtomicU64,
    win_frames: AtomicU64,
    win_bad: AtomicU64,
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
    /// Cards that got bytes while nobody waited for them: their next exchange must fail.
    tainted: Vec<AtomicBool>,
    /// Until when (ms since `born`) answers are held for the settle time.
    guarded_until_ms: AtomicU64,
    born: Instant,
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
            Target::Card(s) => self.conn.cards[usize::from(s.0)].lock().unwrap().take(),
            Target::Pool => self.conn.pool.lock().unwrap().take(),
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
                Ok(Some((n, d))) if n <= self.after => {
                    self.stats
                        .stats
                        .stale_discarded
                        .fetch_add(1, Ordering::Relaxed);
                    // Bytes for a card that were not asked for: late or duplicated replies.
                    if let Target::Card(_) = self.target {
                        guard(&self.stats);
                    }
                    log::warn!(
                        "pool: discarded {} byte(s) for {} that arrived before the request: {}",
                        d.len(),
                        self.target,
                        hex::encode_upper(&d)
                    );
                }
                Ok(Some((_, d))) => return Ok(d),
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
        link.write(&self.conn, req).await?;
        self.after = before;
        Ok(())
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
        let (state, _) = watch::channel(LinkState::Connecting);
        Link {
            shared: Arc::new(Shared {
                addr: addr.to_string(),
                opts,
                problem: Mutex::new(None),
                tainted: (0..256).map(|_| AtomicBool::new(false)).collect(),
                guarded_until_ms: AtomicU64::new(0),
                born: Instant::now(),
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
            frames: AtomicU64::new(0),
            born: now,
            win_start_ms: AtomicU64::new(0),
            win_frames: AtomicU64::new(0),
            win_bad: AtomicU64::new(0),
        });
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
        // When the frame now in the decoder began: it must complete within the reply timeout.
        let mut partial_since: Option<tokio::time::Instant> = None;
        let bound = self
            .shared
            .opts
            .health
            .frame_timeout
            .min(self.shared.opts.reply_timeout);
        loop {
            let deadline = partial_since.map(|t| t + bound);
            let n = tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) => return "closed by the pool".into(),
                    Ok(n) => n,
                    Err(e) => return e.to_string(),
                },
                _ = conn.kill.notified() => return "dropped (keep-alive failed or closed)".into(),
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    self.shared.stats.health_drops.fetch_add(1, Ordering::Relaxed);
                    return format!(
                        "a frame began {} ms ago and never completed ({} byte(s) held): \
                         a trickling or half-framing pool is treated as dead",
                        bound.as_millis(),
                        dec.buffered()
                    );
                }
            };
            *conn.last_rx.lock().unwrap() = Instant::now();
            dec.push(&buf[..n]);
            while let Some(r) = dec.next_reply() {
                match r {
                    Ok(reply) => self.route(conn, reply),
                    Err(e) => {
                        if let FrameError::Garbage(k) = e {
                            self.shared
                                .stats
                                .garbage_bytes
                                .fetch_add(k as u64, Ordering::Relaxed);
                        }
                        self.shared
                            .stats
                            .undecodable
                            .fetch_add(1, Ordering::Relaxed);
                        log::warn!("pool {}: {e}", self.shared.addr);
                        // A few junk bytes between frames are noise the decoder handles; a
                        // longer run of junk, or a header that cannot be right, is bad content.
                        // (Wrong lengths also show up as exchanges that break T=0 or never
                        // complete: counted there.)
                        if !matches!(e, FrameError::Garbage(k) if k <= NOISE) {
                            if let Some(why) = self.bad(conn, "undecodable") {
                                return why;
                            }
                        }
                    }
                }
            }
            if conn.closed.load(Ordering::SeqCst) {
                return "dropped".into();
            }
            partial_since = if dec.buffered() == 0 {
                None
            } else {
                Some(partial_since.unwrap_or_else(tokio::time::Instant::now))
            };
        }
    }

    /// Counts a frame in the health window.
    fn good(&self, conn: &Conn) {
        self.roll_window(conn);
        conn.win_frames.fetch_add(1, Ordering::Relaxed);
    }

    fn roll_window(&self, conn: &Conn) {
        let now = conn.born.elapsed().as_millis() as u64;
        let start = conn.win_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= self.shared.opts.health.window.as_millis() as u64
            && conn
                .win_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            conn.win_frames.store(0, Ordering::Relaxed);
            conn.win_bad.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a bad frame; answers why the connection must go when the window is past the
    /// threshold (and kills it).
    fn bad(&self, conn: &Conn, kind: &str) -> Option<String> {
        self.roll_window(conn);
        let frames = conn.win_frames.fetch_add(1, Ordering::Relaxed) + 1;
        let bad = conn.win_bad.fetch_add(1, Ordering::Relaxed) + 1;
        let h = &self.shared.opts.health;
        if bad >= u64::from(h.min_bad) && bad as f64 >= h.max_bad_ratio * frames as f64 {
            self.shared
                .stats
                .health_drops
                .fetch_add(1, Ordering::Relaxed);
            let why = format!(
                "{bad} of the last {frames} frames within {} s were bad (last: {kind}): \
                 dropping the connection",
                h.window.as_secs_f64()
            );
            conn.win_bad.store(0, Ordering::Relaxed);
            conn.win_frames.store(0, Ordering::Relaxed);
            conn.kill(why.clone());
            return Some(why);
        }
        None
    }

    /// An exchange on this connection broke the T=0 rules (reported by the card handle).
    pub(crate) fn report_t0_violation(&self) {
        self.shared
            .stats
            .t0_violations
            .fetch_add(1, Ordering::Relaxed);
        if let Ok(conn) = self.current() {
            let _ = self.bad(&conn, "T=0 violation");
        }
    }

    fn route(&self, conn: &Conn, reply: Reply) {
        self.shared.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        let seq = conn.frames.fetch_add(1, Ordering::SeqCst) + 1;
        let (who, slot, data) = match reply {
            Reply::Card { slot, data } => (format!("{slot}"), Some(slot), data),
            Reply::Pool { slot, data } => (format!("pool (slot byte {slot:02X})"), None, data),
        };
        let entry = match slot {
            Some(s) => &conn.cards[usize::from(s.0)],
            None => &conn.pool,
        };
        let tx = entry.lock().unwrap().clone();
        let undelivered = match tx {
            Some(tx) => tx.try_send((seq, data)).err().map(|e| match e {
                mpsc::error::TrySendError::Full((_, d)) => (d, "its queue is full"),
                mpsc::error::TrySendError::Closed((_, d)) => (d, "no one waits for it"),
            }),
            None => Some((data, "no one waits for it")),
        };
        match undelivered {
            None => self.good(conn),
            Some((data, why)) => {
                self.shared
                    .stats
                    .unsolicited
                    .fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "pool: dropped reply for {who} ({why}): {}",
                    hex::encode_upper(&data)
                );
                if let Some(s) = slot {
                    // The card got bytes outside any exchange: a late or duplicated reply. Its
                    // last answer may have been another command's; its next exchange fails.
                    self.shared.tainted[usize::from(s.0)].store(true, Ordering::SeqCst);
                    guard(&self.shared);
                }
                let _ = self.bad(conn, "unsolicited");
            }
        }
    }

    /// The settle time to hold a completed answer for, if the link is guarded.
    pub(crate) fn settle(&self) -> Option<Duration> {
        let until = self.shared.guarded_until_ms.load(Ordering::Relaxed);
        if until == 0 || self.shared.born.elapsed().as_millis() as u64 >= until {
            return None;
        }
        Some(self.shared.opts.health.settle)
    }

    /// Marks the link guarded (a card answered more than it was asked).
    pub(crate) fn duplicates_seen(&self) {
        guard(&self.shared);
    }

    /// Takes the card's taint: true if it got bytes outside any exchange since last asked.
    pub(crate) fn take_taint(&self, slot: Slot) -> bool {
        self.shared.tainted[usize::from(slot.0)].swap(false, Ordering::SeqCst)
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
            if let Err(e) = self.version().await {
                self.shared
                    .stats
                    .keepalive_failures
                    .fetch_add(1, Ordering::Relaxed);
                conn.kill(format!("keep-alive failed ({e})"));
                return;
            }
        }
    }

    /// Reconnects whenever the connection is gone, until closed. Says why it cannot connect at
    /// warn level, once per distinct cause.
    async fn supervise(&self, mut dial_now: bool) {
        let opts = &self.shared.opts;
        let mut backoff = opts.backoff_min;
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
                    backoff = opts.backoff_min;
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
    async fn pause(&self, backoff: &mut Duration) -> bool {
        let wait = jitter(*backoff);
        *backoff = (*backoff * 2).min(self.shared.opts.backoff_max);
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

    /// A pool-wide query: one at a time, answered by an `AA 44` frame.
    async fn query(&self, req: Request) -> Result<Vec<u8>, PoolError> {
        let _g = self.shared.pool_lock.lock().await;
        let mut w = self.register(Target::Pool)?;
        w.send(&req, self).await?;
        w.recv(self.shared.opts.reply_timeout).await
    }

    /// The pool's 12-byte ID.
    pub async fn id(&self) -> Result<Vec<u8>, PoolError> {
        let d = self.query(Request::ReadId).await?;
        expect_len("ID", d, 12)
    }

    /// The firmware version, e.g. `V053`.
    pub async fn version(&self) -> Result<String, PoolError> {
        let d = self.query(Request::ReadVersion).await?;
        let d = expect_len("version", d, 4)?;
        Ok(String::from_utf8_lossy(&d).into_owned())
    }

    /// The 256 slot state bytes, card 1 first.
    pub async fn states(&self) -> Result<Vec<super::SlotState>, PoolError> {
        let d = self.query(Request::ReadStates).await?;
        let d = expect_len("slot states", d, 256)?;
        Ok(d.into_iter().map(super::SlotState::from_byte).collect())
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

fn expect_len(what: &'static str, d: Vec<u8>, expected: usize) -> Result<Vec<u8>, PoolError> {
    if d.len() == expected {
        Ok(d)
    } else {
        Err(PoolError::BadAnswer {
            what,
            got: d.len(),
            expected,
        })
    }
}

/// Holds answers for the settle time from now on, for a while (see the module comment).
fn guard(shared: &Shared) {
    let h = &shared.opts.health;
    if h.settle.is_zero() {
        return;
    }
    let now = shared.born.elapsed();
    let until = (now + h.guard).as_millis() as u64;
    let before = shared.guarded_until_ms.fetch_max(until, Ordering::Relaxed);
    if before < now.as_millis() as u64 {
        log::warn!(
            "pool {}: replies arrive outside any exchange (duplicated or late): answers are \
             held {} ms to check none follows, for the next {} s",
            shared.addr,
            h.settle.as_millis(),
            h.guard.as_secs()
        );
    }
}

/// Up to ±25 % of `d`, so many hosts restarting together do not reconnect in lock-step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let frac = f64::from(nanos % 1000) / 1000.0; // 0..1
    d.mul_f64(0.75 + 0.5 * frac)
}
