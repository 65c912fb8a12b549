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

use super::ipa::{self, Ccm, Frame};
use super::maps::{card_of, KeepAlive, KeepAliveAction, SlotMaps};
use super::rspro::{BankSlot, ClientSlot, ComponentIdentity, Msg, Pdu, ResultCode};
use super::session::{Action, ClientSession, End, KEEPALIVE_GRACE, KEEPALIVE_IDLE};
use crate::cards::{Cards, Front, Holder, Lease, LeaseError, StartError};
use crate::log_once::LogOnce;
use crate::pool::LinkState;
use crate::values::CardNo;

/// The server's RSPRO port (hard-coded in osmo-remsim-server).
pub const SERVER_PORT: u16 = 9998;
/// The port the server tells clients to find a bank on (hard-coded there too).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9999";
/// One bank slot per card of the pool.
pub const SLOTS: u16 = 256;

/// A peer that does not take our bytes within this is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
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
    pub exchanges: AtomicU64,
    pub resets: AtomicU64,
    pub bad_peers: AtomicU64,
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
    stats: Arc<BankStats>,
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
            stats: Arc::default(),
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
            Err(_) => Err(End::WriteTimeout(WRITE_TIMEOUT.as_secs())),
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

// ---------------------------------------------------------------------------------------------
// Control link

async fn control(shared: Arc<Shared>) {
    let mut backoff = crate::backoff::Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut problem = LogOnce::default();
    loop {
        let began = Instant::now();
        let end = control_once(&shared).await;
        shared.control_up.send_replace(false);
        // A server that stays away is logged once, not every attempt.
        problem.warn(
            &format!("remsim server {}", shared.cfg.server),
            &end.to_string(),
        );
        if began.elapsed() >= STABLE_CONNECTION {
            backoff.reset();
            problem.clear();
        }
        sleep(backoff.next(crate::backoff::clock_frac())).await;
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
                card_of(*bank).map_or("?".into(), |n| n.to_string())
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

/// One client connection: the session ([`ClientSession`]) decides, this task moves bytes,
/// takes and uses the card, and waits.
async fn client_session(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    log::info!("remsim: client connection from {peer}");
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let superseded = Arc::new(Notify::new());
    let mut s = ClientSession::new(
        ComponentIdentity::bank(&shared.cfg.name),
        peer.to_string(),
        shared.stats.clone(),
        std::time::Instant::now(),
    );
    let mut conn = Conn::new(stream);
    let mut card: Option<Lease> = None;
    let end = drive(&shared, &mut s, &mut conn, &mut card, (id, &superseded)).await;
    let who = s.who();
    match &end {
        End::Closed | End::Unmapped | End::Shutdown | End::Superseded => {
            log::info!("remsim: {who}: {end}")
        }
        e if e.bad_peer() => {
            shared.stats.bad_peers.fetch_add(1, Ordering::Relaxed);
            log::warn!("remsim: {who}: closing: {end}")
        }
        _ => log::warn!("remsim: {who}: closing: {end}"),
    }
    if let Some(c) = s.client() {
        let mut owners = shared.owners.lock().unwrap();
        if owners.get(&c).is_some_and(|(owner, _)| *owner == id) {
            owners.remove(&c);
        }
    }
    if let Some(lease) = card.take() {
        lease.release().await;
    }
    // Closing the socket (dropping `conn`) is how the client learns the session ended.
}

/// Runs the session until it closes; answers why.
async fn drive(
    shared: &Shared,
    s: &mut ClientSession,
    conn: &mut Conn,
    card: &mut Option<Lease>,
    (id, superseded): (u64, &Arc<Notify>),
) -> End {
    let mut maps = shared.changed.subscribe();
    let mut leases = shared.cards.watch();
    let mut pool = shared.cards.link().watch();
    loop {
        if let Some(end) = act(shared, s, conn, card, (id, superseded), &mut leases).await {
            return end;
        }
        let lease_ended = async {
            match card.as_ref() {
                Some(l) => l.ended().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            f = conn.next_frame() => s.frame(f, std::time::Instant::now()),
            r = maps.changed() => match r {
                Ok(()) => {
                    let mapped = s
                        .attached_to()
                        .is_some_and(|(c, b)| shared.maps.lock().unwrap().is_mapped(b, c));
                    s.maps_changed(mapped);
                }
                Err(_) => s.close(End::Shutdown),
            },
            // Waiting for a card someone else holds: look again when leases change.
            r = leases.changed(), if s.waiting() => match r {
                Ok(()) => s.leases_changed(),
                Err(_) => s.close(End::Shutdown),
            },
            _ = superseded.notified() => s.close(End::Superseded),
            r = pool.changed() => match r {
                Ok(()) if matches!(*pool.borrow_and_update(), LinkState::Up { .. }) => s.pool_up(),
                Ok(()) => {}
                Err(_) => s.close(End::Shutdown),
            },
            e = lease_ended => s.lease_ended(e),
            _ = sleep_until(s.deadline().into()) => s.tick(std::time::Instant::now()),
        }
    }
}

/// Carries out the session's actions until it has none; answers the end if it closed.
/// `leases` is marked seen after an attach: the attempt's own lease changes must not count as
/// "a card may have become free" (that would retry at once, forever).
async fn act(
    shared: &Shared,
    s: &mut ClientSession,
    conn: &mut Conn,
    card: &mut Option<Lease>,
    (id, superseded): (u64, &Arc<Notify>),
    leases: &mut watch::Receiver<u64>,
) -> Option<End> {
    let bound = shared.cfg.command_timeout;
    while let Some(a) = s.poll() {
        match a {
            Action::Send(msgs) => {
                if let Err(e) = conn.send(&msgs).await {
                    s.close(e);
                }
            }
            Action::Ccm(c) => {
                if let Err(e) = conn.write(&ipa::encode_ccm(c)).await {
                    s.close(e);
                }
            }
            Action::Claim(cs) => {
                let old = shared
                    .owners
                    .lock()
                    .unwrap()
                    .insert(cs, (id, superseded.clone()));
                if let Some((_, kick)) = old {
                    kick.notify_one();
                }
            }
            Action::Attach(client) => {
                let r = attach(shared, client, &s.who()).await;
                leases.borrow_and_update();
                match r {
                    Ok((bank, lease, atr)) => {
                        *card = Some(lease);
                        s.attached(bank, atr);
                    }
                    Err(why) => s.not_attached(why, std::time::Instant::now()),
                }
            }
            Action::Transmit { from, to, data } => {
                let Some(lease) = card.as_ref() else {
                    s.close(End::Card("no card".into()));
                    continue;
                };
                // Bounded by the card layer (longer only while the card sends NULL bytes).
                let r = lease.transmit(&data, bound, Front::Bank).await;
                s.answered(from, to, &data, r);
            }
            Action::Restart => {
                let Some(lease) = card.as_mut() else {
                    s.close(End::Card("no card".into()));
                    continue;
                };
                let r = match timeout(bound, lease.restart()).await {
                    Ok(Ok(atr)) => Ok(atr),
                    Ok(Err(e)) => Err(format!("failed: {e}")),
                    Err(_) => Err("timed out".into()),
                };
                s.restarted(r);
            }
            Action::Close(end) => return Some(end),
        }
    }
    None
}

/// Takes the card mapped to `client` and starts it: the bank slot, the lease and the ATR, or
/// why not (no map, held elsewhere, refused by the card layer, no pool).
async fn attach(
    shared: &Shared,
    client: ClientSlot,
    who: &str,
) -> Result<(BankSlot, Lease, Vec<u8>), String> {
    let bank = shared
        .maps
        .lock()
        .unwrap()
        .bank_slot_of(client)
        .ok_or_else(|| format!("no slot map for client {client}"))?;
    let card = card_of(bank).ok_or_else(|| format!("bank slot {bank} has no card"))?;
    let holder = Holder::Bank {
        bank: bank.bank_id,
        slot: bank.slot_nr,
        client: Some((client.client_id, client.slot_nr)),
    };
    let mut lease = match shared.cards.lease(card, holder.clone()) {
        Ok(l) => l,
        // Held for this very client slot: its previous connection, superseded by this one,
        // is letting go. Wait for that (bounded) rather than refusing the client.
        Err(LeaseError::Held { holder: h, .. }) if h == holder => {
            wait_until_free(&shared.cards, card).await;
            shared
                .cards
                .lease(card, holder)
                .map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    if !matches!(shared.cards.link().state(), LinkState::Up { .. }) {
        lease.release().await;
        return Err("no connection to the pool".into());
    }
    lease.in_session();
    let bound = shared.cfg.command_timeout;
    let started = async {
        lease.admit().await?;
        lease.start().await
    };
    let why = match timeout(bound, started).await {
        Ok(Ok(atr)) => {
            log::info!(
                "remsim: {who} on bank {bank}: card {card} started, ATR {}",
                hex::encode_upper(&atr)
            );
            return Ok((bank, lease, atr));
        }
        Ok(Err(e @ (StartError::Bad { .. } | StartError::Empty(_)))) => e.to_string(),
        Ok(Err(e)) => format!("card {card} did not start: {e}"),
        Err(_) => format!("card {card} did not start within {} ms", bound.as_millis()),
    };
    // Let go here (stopping what a failed start may have left running), so that the
    // session's next look is the retry's, not this lease's own release.
    lease.release().await;
    Err(why)
}

/// Waits (at most [`SUPERSEDE_WAIT`]) until card `card` has no holder.
async fn wait_until_free(cards: &Cards, card: CardNo) {
    let mut w = cards.watch();
    let _ = timeout(SUPERSEDE_WAIT, async {
        while cards.holder(card).is_some() {
            if w.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
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
