//! The bank: simpool's cards for osmo-remsim clients, without pcscd.
//!
//! Two sides, as osmo-remsim-bankd has them (docs/rspro.md §5): a control link to
//! osmo-remsim-server (we dial; connectBankReq, then the server installs slot maps), and a data
//! listener where remote clients connect, one TCP connection per client slot. Bank slot k is
//! the pool's card k+1. The tasks here only move bytes; the decisions are in [`super::maps`].
//!
//! Conventions (picked where osmo-remsim leaves a choice):
//! - an exchange the card could not complete (timeout, T=0 trouble, pool link) closes that
//!   client's link and stops the card, as osmo-remsim-bankd does after a PC/SC error: the
//!   client reconnects and gets a freshly started card. A command refused before reaching the
//!   card (bad length, INS 6x/9x) is answered with simpool's status word and the link kept;
//! - every socket has TCP_NODELAY, and TCP_QUICKACK is re-armed after each read, so neither
//!   our small answers nor the client's Nagle-held second write wait for a delayed ACK;
//! - the slot maps survive a lost control link (the data path does not need the server);
//!   the server's removeMapping/resetState are what end sessions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, sleep_until, timeout, Instant};

use super::ipa::{self, Ccm, Frame, IpaError};
use super::maps::{card_of, check_tpdu, wants_reset, KeepAlive, KeepAliveAction, SlotMaps};
use super::rspro::{
    BankSlot, ClientSlot, ComponentIdentity, Msg, Pdu, ResultCode, RsproError, SlotPhysStatus,
    TpduFlags,
};
use crate::cards::{Cards, Front, Holder, Lease, LeaseError};
use crate::pool::{ExchangeError, LinkState};
use crate::t0;

/// The server's RSPRO port (hard-coded in osmo-remsim-server).
pub const SERVER_PORT: u16 = 9998;
/// The port the server tells clients to find a bank on (hard-coded there too).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9999";
/// One bank slot per card of the pool.
pub const SLOTS: u16 = 256;

/// osmo-remsim's keep-alive: PING after 30 s idle, drop after 10 s without answer.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_GRACE: Duration = Duration::from_secs(10);
/// A peer that does not take our bytes within this is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Look again for a map or a free card this often (osmo-remsim-bankd: 10 s), besides on every
/// map change.
const RETRY_ATTACH: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A connection must say which client slot it is within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Client connections served at once (256 slots, plus room for reconnects); more are closed
/// at once, so a flood of connections cannot exhaust the daemon.
const MAX_CLIENTS: usize = 1024;
/// How long a new connection of a client slot waits for the old connection's card.
const SUPERSEDE_WAIT: Duration = Duration::from_secs(2);
/// A control connection that lasted this long was a real one: back-off starts over.
const STABLE_CONNECTION: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct BankConfig {
    /// osmo-remsim-server, HOST:PORT.
    pub server: String,
    pub bank_id: u16,
    /// Where remote clients connect (the server announces port 9999).
    pub listen: String,
    /// Longest time one remote exchange may take (like PC/SC's `--command-timeout-ms`).
    pub command_timeout: Duration,
    /// Our component name towards server and clients.
    pub name: String,
}

/// Adds the default port to a server given without one.
pub fn server_address(s: &str) -> String {
    let has_port = match s.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        s.to_string()
    } else if s.contains(':') && !s.starts_with('[') {
        format!("[{s}]:{SERVER_PORT}")
    } else {
        format!("{s}:{SERVER_PORT}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("cannot listen for remsim clients on {addr}: {cause}")]
    Listen { addr: String, cause: std::io::Error },
    /// Another listener holds the address; `by` names it (another bank, as a rule).
    #[error("cannot listen for remsim clients on {addr}: {by}")]
    InUse { addr: String, by: String },
}

/// Counters for logs, tests and the benchmark.
#[derive(Debug, Default)]
pub struct BankStats {
    pub control_connects: AtomicU64,
    pub sessions: AtomicU64,
    pub exchanges: AtomicU64,
    pub refused: AtomicU64,
    pub resets: AtomicU64,
    pub bad_peers: AtomicU64,
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("peer closed the connection")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("peer did not take our bytes within {} s", WRITE_TIMEOUT.as_secs())]
    WriteTimeout,
    #[error("no answer to keep-alive PING")]
    KeepAlive,
    #[error("bad peer: {0}")]
    Ipa(#[from] IpaError),
    #[error("bad peer: undecodable RSPRO: {0}")]
    Rspro(#[from] RsproError),
    #[error("bad peer: {0}")]
    BadPeer(String),
    #[error("server refused the bank: {0:?}")]
    Refused(ResultCode),
    #[error("slot map removed")]
    Unmapped,
    #[error("card failed: {0}")]
    Card(String),
    #[error("superseded by a newer connection of the same client slot")]
    Superseded,
    #[error("bank shutting down")]
    Shutdown,
}

struct Shared {
    cfg: BankConfig,
    /// The client listener's address: the control link comes from its IP, so the server
    /// sends clients there (see [`super::reach`]).
    listening: SocketAddr,
    cards: Cards,
    maps: Mutex<SlotMaps>,
    /// Bumped on every change of the maps.
    changed: watch::Sender<u64>,
    control_up: watch::Sender<bool>,
    stats: BankStats,
    /// The connection serving each client slot (session id, its "you are superseded" signal).
    owners: Mutex<HashMap<ClientSlot, (u64, Arc<Notify>)>>,
    next_session: AtomicU64,
}

/// A running bank.
pub struct Bank {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Bank {
    /// Binds the data listener (failing if it cannot), then runs both sides in the background.
    pub async fn start(cfg: BankConfig, cards: Cards) -> Result<Bank, BankError> {
        let listener = match listen(&cfg.listen).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(BankError::InUse {
                    by: super::probe::in_use(&cfg.listen).await,
                    addr: cfg.listen,
                })
            }
            Err(cause) => {
                return Err(BankError::Listen {
                    addr: cfg.listen,
                    cause,
                })
            }
        };
        let addr = listener.local_addr().map_err(|cause| BankError::Listen {
            addr: cfg.listen.clone(),
            cause,
        })?;
        let shared = Arc::new(Shared {
            maps: Mutex::new(SlotMaps::new(cfg.bank_id, SLOTS)),
            cfg,
            listening: addr,
            cards,
            changed: watch::channel(0).0,
            control_up: watch::channel(false).0,
            stats: BankStats::default(),
            owners: Mutex::default(),
            next_session: AtomicU64::new(0),
        });
        log::info!(
            "remsim bank {}: clients on {addr}, server {}",
            shared.cfg.bank_id,
            shared.cfg.server
        );
        let tasks = vec![
            tokio::spawn(control(shared.clone())),
            tokio::spawn(accept(shared.clone(), listener)),
        ];
        Ok(Bank {
            shared,
            addr,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &BankStats {
        &self.shared.stats
    }

    /// The slot maps installed by the server.
    pub fn maps(&self) -> Vec<(BankSlot, ClientSlot)> {
        self.shared.maps.lock().unwrap().list()
    }

    /// Whether the server accepted us (connectBankRes ok) on the current control connection.
    pub fn control_watch(&self) -> watch::Receiver<bool> {
        self.shared.control_up.subscribe()
    }

    /// Stops both sides; every client link closes and every card is released.
    pub fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Bank {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Every modem of a lab may (re)connect at once after an outage: a listen backlog of 1024
/// rather than the usual 128, so a burst of 256 connections does not overflow the accept
/// queue (the overflowing clients would wait for a 1 s SYN retransmit).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds the client listener (also used by `serve --check`).
pub async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
}

/// One IPA connection: frames in, encoded messages out.
struct Conn {
    stream: TcpStream,
    dec: ipa::Decoder,
    buf: Vec<u8>,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            dec: ipa::Decoder::new(),
            buf: vec![0; 4096],
        }
    }

    /// The next frame. Cancel-safe: bytes read stay in the decoder.
    async fn next_frame(&mut self) -> Result<Frame, End> {
        loop {
            if let Some(f) = self.dec.next_frame() {
                return Ok(f?);
            }
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                return Err(End::Closed);
            }
            // Linux turns QUICKACK off again by itself; re-arm it so the peer's next small
            // write is not held back waiting for our delayed ACK.
            let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(true);
            self.dec.push(&self.buf[..n]);
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        match timeout(WRITE_TIMEOUT, self.stream.write_all(bytes)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(End::WriteTimeout),
        }
    }

    /// Sends messages in one write, so a pair like connectClientRes + setAtrReq leaves together.
    async fn send(&mut self, msgs: &[Msg]) -> Result<(), End> {
        let mut out = Vec::with_capacity(128 * msgs.len());
        for m in msgs {
            let pdu = Pdu::new(m.clone()).encode();
            out.extend(ipa::encode_rspro(&pdu).map_err(|e| End::BadPeer(e.to_string()))?);
        }
        self.write(&out).await
    }

    /// Answers CCM as osmo-remsim peers expect; true if the frame was CCM.
    async fn on_ccm(&mut self, f: &Frame) -> Result<bool, End> {
        match f {
            Frame::Ccm(Ccm::Ping) => self.write(&ipa::encode_ccm(Ccm::Pong)).await?,
            Frame::Ccm(Ccm::IdAck) => self.write(&ipa::encode_ccm(Ccm::IdAck)).await?,
            Frame::Ccm(_) => {}
            Frame::Other { proto, ext } => {
                log::debug!("IPA frame of protocol {proto:02X} ext {ext:?} ignored")
            }
            Frame::Rspro(_) => return Ok(false),
        }
        Ok(true)
    }

    /// Runs the keep-alive timer; Err when the peer is dead.
    async fn on_keepalive(&mut self, ka: &mut KeepAlive) -> Result<(), End> {
        match ka.poll(Instant::now().into_std()) {
            KeepAliveAction::SendPing => self.write(&ipa::encode_ccm(Ccm::Ping)).await,
            KeepAliveAction::Dead => Err(End::KeepAlive),
            KeepAliveAction::Nothing => Ok(()),
        }
    }
}

fn new_keepalive() -> KeepAlive {
    KeepAlive::new(KEEPALIVE_IDLE, KEEPALIVE_GRACE, std::time::Instant::now())
}

/// Up to ±25 % of `d`, so banks restarting together do not reconnect in lock-step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.75 + 0.5 * f64::from(nanos % 1000) / 1000.0)
}

// ---------------------------------------------------------------------------------------------
// Control link

async fn control(shared: Arc<Shared>) {
    let mut backoff = BACKOFF_MIN;
    let mut last_problem = String::new();
    loop {
        let began = Instant::now();
        let end = control_once(&shared).await;
        shared.control_up.send_replace(false);
        let problem = end.to_string();
        // A server that stays away is logged once, not every attempt.
        if problem != last_problem {
            log::warn!("remsim server {}: {problem}", shared.cfg.server);
            last_problem = problem;
        }
        if began.elapsed() >= STABLE_CONNECTION {
            backoff = BACKOFF_MIN;
            last_problem.clear();
        }
        sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn control_once(shared: &Shared) -> End {
    // From the listener's address: the server sends clients where this connection comes from.
    let source = super::reach::source_for(shared.listening);
    let stream = match super::reach::connect_from(source, &shared.cfg.server, CONNECT_TIMEOUT).await
    {
        Ok(s) => s,
        Err(e) => return End::Io(e),
    };
    shared
        .stats
        .control_connects
        .fetch_add(1, Ordering::Relaxed);
    let mut conn = Conn::new(stream);
    match control_run(shared, &mut conn).await {
        Ok(()) => End::Closed,
        Err(e) => e,
    }
}

async fn control_run(shared: &Shared, conn: &mut Conn) -> Result<(), End> {
    conn.send(&[Msg::ConnectBankReq {
        identity: ComponentIdentity::bank(&shared.cfg.name),
        bank_id: shared.cfg.bank_id,
        number_of_slots: SLOTS,
    }])
    .await?;
    let mut ka = new_keepalive();
    loop {
        tokio::select! {
            f = conn.next_frame() => {
                ka.received(std::time::Instant::now());
                let f = f?;
                if conn.on_ccm(&f).await? {
                    continue;
                }
                let Frame::Rspro(bytes) = f else { continue };
                let pdu = Pdu::decode(&bytes)?;
                on_control_msg(shared, conn, pdu.msg).await?;
            }
            _ = sleep_until(ka.next_deadline().into()) => conn.on_keepalive(&mut ka).await?,
        }
    }
}

/// Says where the server sends this bank's clients, and warns when they may not get there.
fn log_hand_out(shared: &Shared, stream: &TcpStream) {
    let Ok(seen_as) = stream.local_addr() else {
        return;
    };
    let h = super::reach::judge(shared.listening, seen_as);
    log::info!(
        "remsim bank {}: the server sends its clients to {} (this bank's server connection \
         comes from there; clients are served on {})",
        shared.cfg.bank_id,
        h.addr,
        shared.listening
    );
    for c in &h.concerns {
        log::warn!(
            "remsim bank {}: clients sent to {}: {c}",
            shared.cfg.bank_id,
            h.addr
        );
    }
}

async fn on_control_msg(shared: &Shared, conn: &mut Conn, msg: Msg) -> Result<(), End> {
    if let Msg::ConnectBankRes { identity, result } = &msg {
        if *result != ResultCode::Ok {
            return Err(End::Refused(*result));
        }
        log::info!(
            "remsim bank {}: registered with server {} ({} {})",
            shared.cfg.bank_id,
            shared.cfg.server,
            identity.software,
            identity.sw_version
        );
        log_hand_out(shared, &conn.stream);
        shared.control_up.send_replace(true);
        return Ok(());
    }
    let out = shared.maps.lock().unwrap().on_control(&msg);
    match (&msg, &out.reply) {
        (
            Msg::CreateMappingReq { client, bank } | Msg::RemoveMappingReq { client, bank },
            Some(Msg::CreateMappingRes { result } | Msg::RemoveMappingRes { result }),
        ) => {
            let verb = if matches!(msg, Msg::CreateMappingReq { .. }) {
                "map"
            } else {
                "unmap"
            };
            log::info!(
                "remsim: {verb} bank {bank} (card {}) <-> client {client}: {result:?}",
                card_of(*bank)
            )
        }
        (Msg::ResetStateReq, _) => log::info!("remsim: server reset the state: all maps dropped"),
        (m, None) => log::warn!("remsim server sent {} to the bank: ignored", m.name()),
        _ => {}
    }
    if let Some(reply) = out.reply {
        conn.send(&[reply]).await?;
    }
    if out.changed {
        shared.changed.send_modify(|g| *g += 1);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Data side: remote clients

async fn accept(shared: Arc<Shared>, listener: TcpListener) {
    // Sessions live in the set: when the bank stops, dropping it ends them all.
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    if sessions.len() >= MAX_CLIENTS {
                        shared.stats.bad_peers.fetch_add(1, Ordering::Relaxed);
                        log::warn!("remsim: {MAX_CLIENTS} client connections open: {peer} refused");
                        drop(stream);
                        continue;
                    }
                    sessions.spawn(client_session(shared.clone(), stream, peer));
                }
                Err(e) => {
                    log::warn!("remsim: accept failed: {e}");
                    sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// The card a session holds.
struct Active {
    bank: BankSlot,
    lease: Lease,
    /// The pool connection the card was started on: after a reconnect the pool may have
    /// powered it off, so the session ends (the client reconnects to a fresh card).
    started_on: LinkState,
}

struct Session {
    shared: Arc<Shared>,
    id: u64,
    /// Notified when a newer connection of the same client slot takes over.
    superseded: Arc<Notify>,
    peer: SocketAddr,
    client: Option<ClientSlot>,
    active: Option<Active>,
    last_status: SlotPhysStatus,
    /// When to look for a map or a free card again.
    retry: Option<Instant>,
    last_problem: Option<String>,
}

async fn client_session(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    shared.stats.sessions.fetch_add(1, Ordering::Relaxed);
    log::info!("remsim: client connection from {peer}");
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let mut s = Session {
        shared,
        id,
        superseded: Arc::new(Notify::new()),
        peer,
        client: None,
        active: None,
        last_status: SlotPhysStatus {
            reset_active: false,
            vcc_present: Some(true),
            clk_active: Some(true),
            card_present: Some(true),
        },
        retry: None,
        last_problem: None,
    };
    let mut conn = Conn::new(stream);
    let end = s.run(&mut conn).await;
    let who = s.who();
    match &end {
        End::Closed | End::Unmapped | End::Shutdown | End::Superseded => {
            log::info!("remsim: {who}: {end}")
        }
        End::Ipa(_) | End::Rspro(_) | End::BadPeer(_) => {
            s.shared.stats.bad_peers.fetch_add(1, Ordering::Relaxed);
            log::warn!("remsim: {who}: closing: {end}")
        }
        _ => log::warn!("remsim: {who}: closing: {end}"),
    }
    if let Some(c) = s.client {
        let mut owners = s.shared.owners.lock().unwrap();
        if owners.get(&c).is_some_and(|(id, _)| *id == s.id) {
            owners.remove(&c);
        }
    }
    if let Some(a) = s.active.take() {
        a.lease.release().await;
    }
    // Closing the socket (dropping `conn`) is how the client learns the session ended.
}

impl Session {
    fn who(&self) -> String {
        match (&self.client, &self.active) {
            (Some(c), Some(a)) => format!(
                "client {c} ({}) on bank {} (card {})",
                self.peer,
                a.bank,
                card_of(a.bank)
            ),
            (Some(c), None) => format!("client {c} ({})", self.peer),
            _ => format!("client {}", self.peer),
        }
    }

    async fn run(&mut self, conn: &mut Conn) -> End {
        match self.serve(conn).await {
            Ok(()) => End::Closed,
            Err(e) => e,
        }
    }

    async fn serve(&mut self, conn: &mut Conn) -> Result<(), End> {
        let mut changed = self.shared.changed.subscribe();
        let mut leases = self.shared.cards.watch();
        let mut pool = self.shared.cards.link().watch();
        let superseded = self.superseded.clone();
        let mut ka = new_keepalive();
        let hello_by = Instant::now() + HELLO_TIMEOUT;
        loop {
            let ka_at: Instant = ka.next_deadline().into();
            let mut wake = self.retry.map_or(ka_at, |r| r.min(ka_at));
            if self.client.is_none() {
                wake = wake.min(hello_by);
            }
            tokio::select! {
                f = conn.next_frame() => {
                    ka.received(std::time::Instant::now());
                    let f = f?;
                    if conn.on_ccm(&f).await? {
                        continue;
                    }
                    let Frame::Rspro(bytes) = f else { continue };
                    log::trace!("remsim: {} > {}", self.peer, hex::encode_upper(&bytes));
                    let pdu = Pdu::decode(&bytes)?;
                    self.on_msg(conn, pdu.msg).await?;
                }
                r = changed.changed() => {
                    if r.is_err() {
                        return Err(End::Shutdown);
                    }
                    self.on_maps_changed(conn).await?;
                }
                // Waiting for a card someone else holds: look again when leases change.
                r = leases.changed(), if self.retry.is_some() => {
                    if r.is_err() {
                        return Err(End::Shutdown);
                    }
                    self.try_attach(conn, false).await?;
                }
                _ = superseded.notified() => return Err(End::Superseded),
                r = pool.changed() => {
                    if r.is_err() {
                        return Err(End::Shutdown);
                    }
                    let now = *pool.borrow_and_update();
                    if let Some(a) = &self.active {
                        if now != a.started_on {
                            return Err(End::Card(format!("pool connection changed ({now:?})")));
                        }
                    } else if matches!(now, LinkState::Up { .. }) && self.client.is_some() {
                        // The pool is back: a client waiting for its card gets it now.
                        self.try_attach(conn, false).await?;
                    }
                }
                _ = sleep_until(wake) => {
                    if self.client.is_none() && Instant::now() >= hello_by {
                        return Err(End::BadPeer(format!(
                            "no connectClientReq within {} s",
                            HELLO_TIMEOUT.as_secs()
                        )));
                    }
                    conn.on_keepalive(&mut ka).await?;
                    if self.retry.is_some_and(|r| r <= Instant::now()) {
                        self.retry = None;
                        self.try_attach(conn, false).await?;
                    }
                }
            }
        }
    }

    async fn on_msg(&mut self, conn: &mut Conn, msg: Msg) -> Result<(), End> {
        match msg {
            Msg::ConnectClientReq {
                identity,
                client_slot,
            } => {
                if self.client.is_some() {
                    return Err(End::BadPeer("second connectClientReq".into()));
                }
                let Some(cs) = client_slot else {
                    conn.send(&[Msg::ConnectClientRes {
                        identity: self.identity(),
                        result: ResultCode::IllegalClientId,
                    }])
                    .await?;
                    return Err(End::BadPeer("connectClientReq without client slot".into()));
                };
                log::info!(
                    "remsim: {} is client {cs} ({} {} {})",
                    self.peer,
                    identity.name,
                    identity.software,
                    identity.sw_version
                );
                self.client = Some(cs);
                // A client slot has one connection: a client that reconnects (its old link
                // half-dead, or after a server restart) takes over from its old connection.
                let old = self
                    .shared
                    .owners
                    .lock()
                    .unwrap()
                    .insert(cs, (self.id, self.superseded.clone()));
                if let Some((_, kick)) = old {
                    kick.notify_one();
                }
                self.try_attach(conn, true).await
            }
            Msg::SetAtrRes { result } => {
                if result != ResultCode::Ok {
                    log::warn!("remsim: {}: setAtrRes {result:?}", self.who());
                }
                Ok(())
            }
            Msg::TpduModemToCard {
                from_client,
                to_bank,
                data,
                ..
            } => self.on_tpdu(conn, from_client, to_bank, data).await,
            Msg::ClientSlotStatusInd {
                from_client,
                to_bank,
                status,
            } => self.on_status(conn, from_client, to_bank, status).await,
            other => {
                log::warn!(
                    "remsim: {}: unexpected {} ignored",
                    self.who(),
                    other.name()
                );
                Ok(())
            }
        }
    }

    fn identity(&self) -> ComponentIdentity {
        ComponentIdentity::bank(&self.shared.cfg.name)
    }

    /// Looks for this client's map and takes its card. `answer_connect`: this is the answer to
    /// connectClientReq (connectClientRes first); later attempts only send setAtrReq, as
    /// osmo-remsim-bankd does.
    async fn try_attach(&mut self, conn: &mut Conn, answer_connect: bool) -> Result<(), End> {
        let Some(client) = self.client else {
            return Ok(());
        };
        if self.active.is_some() {
            return Ok(());
        }
        match self.attach(client).await {
            Ok(atr) => {
                let set_atr = Msg::SetAtrReq { slot: client, atr };
                if answer_connect {
                    let res = Msg::ConnectClientRes {
                        identity: self.identity(),
                        result: ResultCode::Ok,
                    };
                    conn.send(&[res, set_atr]).await
                } else {
                    conn.send(&[set_atr]).await
                }
            }
            Err(why) => {
                // Logged once per distinct reason, not on every retry.
                if self.last_problem.as_deref() != Some(why.as_str()) {
                    log::warn!("remsim: {}: no card yet: {why}", self.who());
                    self.last_problem = Some(why);
                }
                self.retry = Some(Instant::now() + RETRY_ATTACH);
                if answer_connect {
                    conn.send(&[Msg::ConnectClientRes {
                        identity: self.identity(),
                        result: ResultCode::CardNotPresent,
                    }])
                    .await?;
                }
                Ok(())
            }
        }
    }

    async fn attach(&mut self, client: ClientSlot) -> Result<Vec<u8>, String> {
        let bank = self
            .shared
            .maps
            .lock()
            .unwrap()
            .bank_slot_of(client)
            .ok_or_else(|| format!("no slot map for client {client}"))?;
        let card = card_of(bank);
        let holder = Holder::Bank {
            bank: bank.bank_id,
            slot: bank.slot_nr,
            client: Some((client.client_id, client.slot_nr)),
        };
        let mut lease = match self.shared.cards.lease(card, holder.clone()) {
            Ok(l) => l,
            // Held for this very client slot: its previous connection, superseded by this one,
            // is letting go. Wait for that (bounded) rather than refusing the client.
            Err(LeaseError::Held { holder: h, .. }) if h == holder => {
                self.wait_until_free(card).await;
                self.shared
                    .cards
                    .lease(card, holder)
                    .map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        let started_on = self.shared.cards.link().state();
        if !matches!(started_on, LinkState::Up { .. }) {
            return Err("no connection to the pool".into());
        }
        let bound = self.shared.cfg.command_timeout;
        let atr = match timeout(bound, lease.start()).await {
            Ok(Ok(atr)) => atr,
            Ok(Err(e)) => return Err(format!("card {card} did not start: {e}")),
            Err(_) => {
                return Err(format!(
                    "card {card} did not start within {} ms",
                    bound.as_millis()
                ))
            }
        };
        log::info!(
            "remsim: client {client} ({}) on bank {bank}: card {card} started, ATR {}",
            self.peer,
            hex::encode_upper(&atr)
        );
        self.active = Some(Active {
            bank,
            lease,
            started_on,
        });
        self.retry = None;
        Ok(atr)
    }

    /// Waits (at most [`SUPERSEDE_WAIT`]) until card `card` has no holder.
    async fn wait_until_free(&self, card: u16) {
        let mut w = self.shared.cards.watch();
        let _ = timeout(SUPERSEDE_WAIT, async {
            while self.shared.cards.holder(card).is_some() {
                if w.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }

    async fn on_maps_changed(&mut self, conn: &mut Conn) -> Result<(), End> {
        let Some(client) = self.client else {
            return Ok(());
        };
        match &self.active {
            Some(a) => {
                if !self.shared.maps.lock().unwrap().is_mapped(a.bank, client) {
                    return Err(End::Unmapped);
                }
                Ok(())
            }
            None => self.try_attach(conn, false).await,
        }
    }

    async fn on_tpdu(
        &mut self,
        conn: &mut Conn,
        from: ClientSlot,
        to: BankSlot,
        data: Vec<u8>,
    ) -> Result<(), End> {
        let active = self.client.zip(self.active.as_ref().map(|a| a.bank));
        if let Err(r) = check_tpdu(active, from, to, &data) {
            self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            if r.closes_link() {
                return Err(End::BadPeer(r.to_string()));
            }
            log::warn!("remsim: {}: {r}: answered 6700", self.who());
            return self
                .answer(conn, from, to, t0::sw::WRONG_LENGTH.to_vec())
                .await;
        }
        let a = self.active.as_ref().expect("checked");
        let bound = self.shared.cfg.command_timeout;
        let result = match timeout(bound, a.lease.transmit(&data, bound, Front::Bank)).await {
            Ok(r) => r,
            Err(_) => Err(ExchangeError::Deadline {
                ms: bound.as_millis() as u64,
                seen: Vec::new(),
            }),
        };
        self.shared.stats.exchanges.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(resp) => self.answer(conn, from, to, resp).await,
            Err(e) if !e.card_touched() => {
                self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                let sw = e.status();
                log::warn!(
                    "remsim: {}: {} refused, answered {}: {e}",
                    self.who(),
                    hex::encode_upper(&data),
                    hex::encode_upper(sw)
                );
                self.answer(conn, from, to, sw.to_vec()).await
            }
            Err(e) => Err(End::Card(format!("{}: {e}", hex::encode_upper(&data)))),
        }
    }

    async fn answer(
        &mut self,
        conn: &mut Conn,
        to_client: ClientSlot,
        from_bank: BankSlot,
        data: Vec<u8>,
    ) -> Result<(), End> {
        conn.send(&[Msg::TpduCardToModem {
            from_bank,
            to_client,
            flags: TpduFlags::default(),
            data,
        }])
        .await
    }

    async fn on_status(
        &mut self,
        conn: &mut Conn,
        from: ClientSlot,
        to: BankSlot,
        status: SlotPhysStatus,
    ) -> Result<(), End> {
        let (Some(client), Some(a)) = (self.client, self.active.as_mut()) else {
            log::debug!(
                "remsim: client {}: slot status before a card: ignored",
                self.peer
            );
            self.last_status = status;
            return Ok(());
        };
        if from != client || to != a.bank {
            return Err(End::BadPeer(format!(
                "clientSlotStatusInd from {from} to {to}, but this is client {client} on bank {}",
                a.bank
            )));
        }
        let reset = wants_reset(&self.last_status, &status);
        self.last_status = status;
        if !reset {
            return Ok(());
        }
        self.shared.stats.resets.fetch_add(1, Ordering::Relaxed);
        let bound = self.shared.cfg.command_timeout;
        let atr = match timeout(bound, a.lease.restart()).await {
            Ok(Ok(atr)) => atr,
            Ok(Err(e)) => return Err(End::Card(format!("restart failed: {e}"))),
            Err(_) => return Err(End::Card("restart timed out".into())),
        };
        log::info!(
            "remsim: {}: card reset (VCC {:?}, RST {}), ATR {}",
            self.who(),
            status.vcc_present,
            status.reset_active,
            hex::encode_upper(&atr)
        );
        conn.send(&[Msg::SetAtrReq { slot: client, atr }]).await
    }
}

#[cfg(test)]
mod tests {
    use super::server_address;

    #[test]
    fn server_addresses_get_the_default_port() {
        for (given, want) in [
            ("127.0.0.1", "127.0.0.1:9998"),
            ("remsim.lab", "remsim.lab:9998"),
            ("10.0.0.5:19998", "10.0.0.5:19998"),
            ("::1", "[::1]:9998"),
            ("[::1]:9998", "[::1]:9998"),
            ("[fe80::1]", "[fe80::1]:9998"),
        ] {
            assert_eq!(server_address(given), want, "{given}");
        }
    }
}
