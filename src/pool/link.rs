//! One TCP connection to the pool carries all 256 cards. Replies are routed by slot to whoever
//! waits on that card; a reply nobody waits for is logged and dropped, never handed to another
//! card. When the connection breaks every waiter fails at once; the link can reconnect by itself
//! (capped exponential back-off with jitter) and notices a dead pool by an idle keep-alive.

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
}

const ROUTE_DEPTH: usize = 64;

/// A connection that lasted this long was a real one: the next reconnect starts from the
/// shortest back-off.
const STABLE_CONNECTION: Duration = Duration::from_secs(2);

/// Where replies of one connection go.
struct Conn {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    cards: Vec<Mutex<Option<mpsc::Sender<Vec<u8>>>>>,
    pool: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    closed: AtomicBool,
    kill: Notify,
    last_rx: Mutex<Instant>,
}

impl Conn {
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
    rx: mpsc::Receiver<Vec<u8>>,
    target: Target,
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
    /// The next piece of bytes for this target, waiting at most `timeout`.
    pub(crate) async fn recv(&mut self, timeout: Duration) -> Result<Vec<u8>, PoolError> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(PoolError::LinkLost),
            Err(_) => Err(PoolError::Timeout(timeout.as_millis() as u64)),
        }
    }

    /// Sends a request on the connection this waiter listens on.
    pub(crate) async fn send(&self, req: &Request, link: &Link) -> Result<(), PoolError> {
        link.write(&self.conn, req).await
    }
}

impl Link {
    /// Connects once (failing with `Unreachable`), then keeps the link per `opts`.
    pub async fn connect(addr: &str, opts: LinkOptions) -> Result<Link, PoolError> {
        let link = Link::new(addr, opts);
        let stream = link.dial().await?;
        link.install(stream);
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
        let stream =
            tokio::time::timeout(self.shared.opts.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| unreachable("connection timed out".into()))?
                .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Makes `stream` the current connection and starts its reader (and keep-alive).
    fn install(&self, stream: TcpStream) {
        let (rd, wr) = stream.into_split();
        let conn = Arc::new(Conn {
            writer: tokio::sync::Mutex::new(wr),
            cards: (0..256).map(|_| Mutex::new(None)).collect(),
            pool: Mutex::new(None),
            closed: AtomicBool::new(false),
            kill: Notify::new(),
            last_rx: Mutex::new(Instant::now()),
        });
        *self.shared.current.lock().unwrap() = Some(conn.clone());
        let generation = self.shared.stats.connects.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.state.send_replace(LinkState::Up { generation });
        log::info!("pool {}: connected", self.shared.addr);
        if let Some(every) = self.shared.opts.keepalive {
            let l = self.clone();
            let c = conn.clone();
            tokio::spawn(async move { l.keepalive(c, every).await });
        }
        let l = self.clone();
        tokio::spawn(async move {
            let cause = l.read_loop(&conn, rd).await;
            conn.close();
            {
                let mut cur = l.shared.current.lock().unwrap();
                if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                    *cur = None;
                }
            }
            if !l.shared.closed.load(Ordering::SeqCst) {
                log::warn!("pool {}: connection lost: {cause}", l.shared.addr);
                l.shared.state.send_replace(LinkState::Down { generation });
            }
        });
    }

    async fn read_loop(&self, conn: &Conn, mut rd: tokio::net::tcp::OwnedReadHalf) -> String {
        let mut dec = ReplyDecoder::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) => return "closed by the pool".into(),
                    Ok(n) => n,
                    Err(e) => return e.to_string(),
                },
                _ = conn.kill.notified() => return "dropped (keep-alive failed or closed)".into(),
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
                        log::warn!("pool {}: {e}", self.shared.addr);
                    }
                }
            }
        }
    }

    fn route(&self, conn: &Conn, reply: Reply) {
        self.shared.stats.frames_in.fetch_add(1, Ordering::Relaxed);
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
            Some(tx) => tx.try_send(data).err().map(|e| match e {
                mpsc::error::TrySendError::Full(d) => (d, "its queue is full"),
                mpsc::error::TrySendError::Closed(d) => (d, "no one waits for it"),
            }),
            None => Some((data, "no one waits for it")),
        };
        if let Some((data, why)) = undelivered {
            self.shared
                .stats
                .unsolicited
                .fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "pool: dropped reply for {who} ({why}): {}",
                hex::encode_upper(&data)
            );
        }
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
                log::warn!(
                    "pool {}: keep-alive failed ({e}); reconnecting",
                    self.shared.addr
                );
                conn.close();
                return;
            }
        }
    }

    /// Reconnects whenever the connection is gone, until closed.
    async fn supervise(&self, mut dial_now: bool) {
        let opts = &self.shared.opts;
        let mut backoff = opts.backoff_min;
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
            match self.dial().await {
                Ok(stream) => {
                    self.install(stream);
                    dial_now = false;
                }
                Err(e) => {
                    log::debug!("{e}");
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                    dial_now = true;
                }
            }
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
        Ok(Waiter { conn, rx, target })
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

/// Up to ±25 % of `d`, so many hosts restarting together do not reconnect in lock-step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let frac = f64::from(nanos % 1000) / 1000.0; // 0..1
    d.mul_f64(0.75 + 0.5 * frac)
}
