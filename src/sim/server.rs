//! The simulated pool on TCP: the manual's framing, 256 slots, ID/version/states, start/stop,
//! error indication, and a transparent byte pipe to simulated SIMs. Fault knobs (latency, split
//! replies, garbage, mute or abnormal slots, pool restarts) can be changed while it runs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::card::SimCard;
use super::profile::{self, CardsFile};
use crate::pool::frame::{Reply, Request, RequestDecoder, Slot, SlotState};

/// The manual's pool ID ("160406-137").
pub const POOL_ID: [u8; 12] = [
    0xFF, 0x75, 0x06, 0x71, 0x82, 0x55, 0x54, 0x33, 0x39, 0x20, 0x67, 0x00,
];
pub const POOL_VERSION: &[u8; 4] = b"V053";

/// Faults and timing, adjustable at run time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Delay before each reply, chosen per reply in `latency_min..=latency_max`.
    pub latency_min: Duration,
    pub latency_max: Duration,
    /// Card answers are cut into frames of at most this many bytes (0 = whole).
    pub split: usize,
    /// Every n-th reply frame is preceded by a few junk bytes (0 = never). The junk never holds
    /// `AA`, the first byte of a header, so it cannot forge a frame.
    pub garbage_every: u64,
    /// Cards that never answer (start, data).
    pub mute: BTreeSet<u16>,
    /// Cards whose slot reports abnormal (`FF`) and that never answer.
    pub abnormal: BTreeSet<u16>,
    /// The whole pool hangs: the connection stays up, nothing is answered.
    pub silent: bool,
    /// Cards that answer a command header with a procedure byte that makes no sense (`42`).
    pub bad_procedure: BTreeSet<u16>,
    /// Cards that answer a command with NULL bytes (`60`), one frame every 10 ms, for 10 s.
    pub endless_nulls: BTreeSet<u16>,
    /// Every n-th card reply frame is sent a second time, `duplicate_delay` later (0 = never):
    /// a pool that duplicates replies.
    pub duplicate_every: u64,
    pub duplicate_delay: Duration,
    /// Wire time of one byte between pool and card (0 = none; 1040 µs ≈ 9600 baud): each card
    /// answer comes that much later per byte the card received and sent.
    pub byte_time: Duration,
}

/// Counters.
#[derive(Debug, Default)]
pub struct SimStats {
    pub requests: AtomicU64,
    pub card_frames_in: AtomicU64,
    pub replies: AtomicU64,
    pub bad_requests: AtomicU64,
    pub connections: AtomicU64,
    /// Cards started (answered an ATR), e.g. to check one GSMTAP ATR datagram per start.
    pub card_starts: AtomicU64,
    /// Slot-state queries (`03`): how often a client looked at the slots, e.g. a reader
    /// waiting for a card marked bad to be re-inserted.
    pub state_queries: AtomicU64,
}

struct SlotSim {
    card: Option<SimCard>,
    state: SlotState,
    /// Error indications (`04`) received for this slot.
    indications: u32,
    /// The card pulled out of the slot ([`SimPool::pull`]), to be put back.
    pulled: Option<SimCard>,
}

struct Pool {
    slots: Vec<SlotSim>,
}

struct Shared {
    pool: Mutex<Pool>,
    faults: Mutex<Faults>,
    stats: SimStats,
    /// Bumped by `restart`: every connection of an older epoch is dropped.
    epoch: watch::Sender<u64>,
    /// Closed for new connections until this instant (pool "rebooting").
    down_until: Mutex<Option<tokio::time::Instant>>,
    reply_counter: AtomicU64,
    /// Bumped when a card is stopped or started: frames queued before are dropped, as a
    /// real card's answer ends when its power does.
    generation: Vec<AtomicU64>,
}

/// A running simulator.
#[derive(Clone)]
pub struct SimPool {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl SimPool {
    /// Binds `listen` and serves in the background.
    pub async fn start(listen: &str, cards: CardsFile, faults: Faults) -> std::io::Result<SimPool> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let mut slots: Vec<SlotSim> = (0..256)
            .map(|_| SlotSim {
                card: None,
                state: SlotState::Empty,
                indications: 0,
                pulled: None,
            })
            .collect();
        let mut faults = faults;
        for entry in cards.card {
            let mut p = entry.profile;
            if cards.pool.nulls > 0 {
                p.t0.nulls = cards.pool.nulls;
            }
            let i = usize::from(entry.slot - 1);
            match entry.state {
                profile::SlotBehaviour::Normal => {}
                profile::SlotBehaviour::Mute => {
                    faults.mute.insert(entry.slot);
                }
                profile::SlotBehaviour::Abnormal => {
                    faults.abnormal.insert(entry.slot);
                }
            }
            slots[i] = SlotSim {
                card: Some(SimCard::new(p)),
                state: SlotState::Inserted,
                indications: 0,
                pulled: None,
            };
        }
        if cards.pool.latency_ms > 0 && faults.latency_max.is_zero() {
            faults.latency_min = Duration::from_millis(cards.pool.latency_ms);
            faults.latency_max = faults.latency_min;
        }
        if cards.pool.split > 0 && faults.split == 0 {
            faults.split = cards.pool.split;
        }
        if cards.pool.byte_time_us > 0 && faults.byte_time.is_zero() {
            faults.byte_time = Duration::from_micros(cards.pool.byte_time_us);
        }
        let (epoch, _) = watch::channel(0);
        let sim = SimPool {
            shared: Arc::new(Shared {
                pool: Mutex::new(Pool { slots }),
                faults: Mutex::new(faults),
                stats: SimStats::default(),
                epoch,
                down_until: Mutex::new(None),
                reply_counter: AtomicU64::new(0),
                generation: (0..257).map(|_| AtomicU64::new(0)).collect(),
            }),
            addr,
        };
        let s = sim.clone();
        tokio::spawn(async move { s.accept_loop(listener).await });
        Ok(sim)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &SimStats {
        &self.shared.stats
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults.lock().unwrap().clone()
    }

    pub fn set_faults(&self, f: Faults) {
        *self.shared.faults.lock().unwrap() = f;
    }

    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.shared.faults.lock().unwrap());
    }

    /// Simulates a pool reboot: drops every connection, refuses new ones for `down`, and powers
    /// every card off.
    pub fn restart(&self, down: Duration) {
        *self.shared.down_until.lock().unwrap() = Some(tokio::time::Instant::now() + down);
        {
            let mut pool = self.shared.pool.lock().unwrap();
            for s in pool.slots.iter_mut().filter(|s| s.card.is_some()) {
                s.state = SlotState::Inserted;
            }
        }
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// Simulates a pool switched off or unplugged: drops every connection and refuses new ones
    /// until [`SimPool::come_back`].
    pub fn go_down(&self) {
        self.restart(Duration::from_secs(365 * 24 * 3600));
    }

    /// Accepts connections again after [`SimPool::go_down`] or during a `restart`.
    pub fn come_back(&self) {
        *self.shared.down_until.lock().unwrap() = None;
    }

    /// Simulates pulling card `card` (1–256) and putting it back: the slot reads inserted
    /// again, the card is powered off.
    pub fn reinsert(&self, card: u16) {
        let mut pool = self.shared.pool.lock().unwrap();
        if let Some(s) = pool.slots.get_mut(usize::from(card.saturating_sub(1))) {
            if let Some(c) = s.card.as_mut() {
                c.power_off();
                s.state = SlotState::Inserted;
            }
        }
    }

    /// Simulates pulling card `card` (1–256) out: the slot reads empty until [`SimPool::push`]
    /// puts it back. False if there was no card.
    pub fn pull(&self, card: u16) -> bool {
        let mut pool = self.shared.pool.lock().unwrap();
        let Some(s) = pool.slots.get_mut(usize::from(card.saturating_sub(1))) else {
            return false;
        };
        let Some(mut c) = s.card.take() else {
            return false;
        };
        c.power_off();
        s.pulled = Some(c);
        s.state = SlotState::Empty;
        true
    }

    /// Puts a card [`SimPool::pull`] took back into its slot (inserted, powered off).
    pub fn push(&self, card: u16) -> bool {
        let mut pool = self.shared.pool.lock().unwrap();
        let Some(s) = pool.slots.get_mut(usize::from(card.saturating_sub(1))) else {
            return false;
        };
        let Some(c) = s.pulled.take() else {
            return false;
        };
        s.card = Some(c);
        s.state = SlotState::Inserted;
        true
    }

    /// The state byte the pool reports for `card` (1–256).
    pub fn slot_state(&self, card: u16) -> Option<SlotState> {
        let pool = self.shared.pool.lock().unwrap();
        pool.slots
            .get(usize::from(card.checked_sub(1)?))
            .map(|s| s.state)
    }

    /// Error indications (`04`) the pool received for `card` (1–256).
    pub fn error_indications(&self, card: u16) -> u32 {
        let pool = self.shared.pool.lock().unwrap();
        pool.slots
            .get(usize::from(card.saturating_sub(1)))
            .map_or(0, |s| s.indications)
    }

    /// A copy of the simulated card in `card` (1–256), e.g. to compute expected answers.
    pub fn with_card<R>(&self, card: u16, f: impl FnOnce(&mut SimCard) -> R) -> Option<R> {
        let mut pool = self.shared.pool.lock().unwrap();
        let slot = pool.slots.get_mut(usize::from(card.checked_sub(1)?))?;
        slot.card.as_mut().map(f)
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("sim: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let until = *self.shared.down_until.lock().unwrap();
            if until.is_some_and(|t| tokio::time::Instant::now() < t) {
                log::info!("sim: refusing {peer} while restarting");
                drop(stream);
                continue;
            }
            self.shared
                .stats
                .connections
                .fetch_add(1, Ordering::Relaxed);
            log::info!("sim: connection from {peer}");
            let s = self.clone();
            tokio::spawn(async move { s.serve_conn(stream).await });
        }
    }

    async fn serve_conn(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let (mut rd, wr) = stream.into_split();
        let wr = Arc::new(tokio::sync::Mutex::new(wr));
        let mut epoch = self.shared.epoch.subscribe();
        epoch.borrow_and_update();
        // Per-slot queues keep one card's replies in order while different cards' latencies
        // overlap; with no latency and nothing queued, replies are written at once.
        let mut slot_queues: Vec<Option<SlotQueue>> = (0..257).map(|_| None).collect();
        let mut dec = RequestDecoder::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tokio::select! {
                r = rd.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
                _ = epoch.changed() => { log::info!("sim: dropping connection (restart)"); break; }
            };
            dec.push(&buf[..n]);
            while let Some(r) = dec.next_request() {
                let req = match r {
                    Ok(req) => req,
                    Err(e) => {
                        self.shared
                            .stats
                            .bad_requests
                            .fetch_add(1, Ordering::Relaxed);
                        log::warn!("sim: bad request: {e}");
                        continue;
                    }
                };
                self.shared.stats.requests.fetch_add(1, Ordering::Relaxed);
                // One look at the knobs per request, for handling and for how to reply.
                let faults = self.shared.faults.lock().unwrap().clone();
                let (queue, frames, pace, extra) = self.handle(req, &faults);
                if frames.is_empty() {
                    continue;
                }
                let q =
                    slot_queues[queue].get_or_insert_with(|| self.spawn_queue(queue, wr.clone()));
                let immediate = pace.is_none()
                    && extra.iter().all(Duration::is_zero)
                    && faults.latency_max.is_zero()
                    && faults.garbage_every == 0
                    && faults.duplicate_every == 0;
                if immediate && q.pending.load(Ordering::SeqCst) == 0 {
                    let bytes: Vec<u8> = frames.concat();
                    self.shared
                        .stats
                        .replies
                        .fetch_add(frames.len() as u64, Ordering::Relaxed);
                    if wr.lock().await.write_all(&bytes).await.is_err() {
                        break;
                    }
                    continue;
                }
                let generation = self.shared.generation[queue].load(Ordering::SeqCst);
                q.pending.fetch_add(1, Ordering::SeqCst);
                let _ = q.tx.send(Batch {
                    frames,
                    generation,
                    pace,
                    extra,
                });
            }
        }
    }

    /// A task that delays and writes one slot's replies in order.
    fn spawn_queue(&self, queue: usize, wr: Arc<tokio::sync::Mutex<OwnedWriteHalf>>) -> SlotQueue {
        let (tx, mut rx) = mpsc::unbounded_channel::<Batch>();
        let pending = Arc::new(AtomicUsize::new(0));
        let shared = self.shared.clone();
        let left = pending.clone();
        tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                let f = shared.faults.lock().unwrap().clone();
                for (i, frame) in batch.frames.into_iter().enumerate() {
                    if shared.generation[queue].load(Ordering::SeqCst) != batch.generation {
                        break;
                    }
                    let delay = batch
                        .pace
                        .unwrap_or_else(|| pick(f.latency_min, f.latency_max))
                        + batch.extra.get(i).copied().unwrap_or_default();
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let k = shared.reply_counter.fetch_add(1, Ordering::Relaxed) + 1;
                    let mut bytes = Vec::new();
                    if f.garbage_every > 0 && k.is_multiple_of(f.garbage_every) {
                        bytes.extend(junk(k));
                    }
                    bytes.extend_from_slice(&frame);
                    shared.stats.replies.fetch_add(1, Ordering::Relaxed);
                    if wr.lock().await.write_all(&bytes).await.is_err() {
                        return;
                    }
                    if queue < 256 && f.duplicate_every > 0 && k.is_multiple_of(f.duplicate_every) {
                        let (wr, delay) = (wr.clone(), f.duplicate_delay);
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = wr.lock().await.write_all(&frame).await;
                        });
                    }
                }
                left.fetch_sub(1, Ordering::SeqCst);
            }
        });
        SlotQueue { tx, pending }
    }

    /// Runs one request; returns the reply queue (slot index, 256 = pool), wire frames, a
    /// fixed pace between them (instead of the latency knob) and delays on top of it per frame.
    fn handle(&self, req: Request, faults: &Faults) -> Handled {
        if faults.silent {
            return (0, Vec::new(), None, Vec::new());
        }
        let mut pool = self.shared.pool.lock().unwrap();
        let pool_reply = |data: Vec<u8>| {
            (
                256,
                vec![Reply::Pool { slot: 0, data }.to_bytes()],
                None,
                Vec::new(),
            )
        };
        match req {
            Request::ReadId => pool_reply(POOL_ID.to_vec()),
            Request::ReadVersion => pool_reply(POOL_VERSION.to_vec()),
            Request::ReadStates => {
                self.shared
                    .stats
                    .state_queries
                    .fetch_add(1, Ordering::Relaxed);
                let states = pool
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        if s.card.is_some() && faults.abnormal.contains(&(i as u16 + 1)) {
                            SlotState::Abnormal.to_byte()
                        } else {
                            s.state.to_byte()
                        }
                    })
                    .collect();
                pool_reply(states)
            }
            Request::Start(slot) => {
                let s = &mut pool.slots[usize::from(slot.0)];
                let number = slot.card();
                let Some(card) = s.card.as_mut() else {
                    log::debug!("sim: start {slot}: no card");
                    return (0, Vec::new(), None, Vec::new());
                };
                if faults.abnormal.contains(&number) || faults.mute.contains(&number) {
                    return (0, Vec::new(), None, Vec::new());
                }
                let atr = card.reset();
                self.shared
                    .stats
                    .card_starts
                    .fetch_add(1, Ordering::Relaxed);
                s.state = SlotState::Working;
                self.shared.generation[usize::from(slot.0)].fetch_add(1, Ordering::SeqCst);
                (
                    usize::from(slot.0),
                    split_answer(slot, &atr, faults.split),
                    None,
                    Vec::new(),
                )
            }
            Request::Stop(slot) => {
                self.shared.generation[usize::from(slot.0)].fetch_add(1, Ordering::SeqCst);
                let s = &mut pool.slots[usize::from(slot.0)];
                if s.card.is_some() {
                    s.state = SlotState::Inserted;
                }
                (0, Vec::new(), None, Vec::new())
            }
            Request::ErrorIndication(slot) => {
                let s = &mut pool.slots[usize::from(slot.0)];
                s.indications += 1;
                if s.card.is_some() {
                    s.state = SlotState::Abnormal;
                }
                (0, Vec::new(), None, Vec::new())
            }
            Request::Data(slot, data) => {
                self.shared
                    .stats
                    .card_frames_in
                    .fetch_add(1, Ordering::Relaxed);
                let number = slot.card();
                let s = &mut pool.slots[usize::from(slot.0)];
                let Some(card) = s.card.as_mut() else {
                    return (0, Vec::new(), None, Vec::new());
                };
                if s.state != SlotState::Working
                    || faults.mute.contains(&number)
                    || faults.abnormal.contains(&number)
                {
                    return (0, Vec::new(), None, Vec::new());
                }
                let mut bursts = card.receive_paced(&data);
                if faults.endless_nulls.contains(&number) {
                    let pace = Some(Duration::from_millis(10));
                    return (usize::from(slot.0), endless_nulls(slot), pace, Vec::new());
                }
                if let Some(b) = bursts.first_mut().filter(|b| !b.bytes.is_empty()) {
                    if faults.bad_procedure.contains(&number) {
                        b.bytes[0] = 0x42;
                    }
                }
                // The card hears the terminal's bytes before it answers.
                let mut wire = faults.byte_time * data.len() as u32;
                let mut frames = Vec::new();
                let mut extra = Vec::new();
                for b in bursts {
                    let mut after = b.after;
                    for piece in split_pieces(&b.bytes, faults.split) {
                        wire += faults.byte_time * piece.len() as u32;
                        extra.push(after + std::mem::take(&mut wire));
                        after = Duration::ZERO;
                        frames.push(
                            Reply::Card {
                                slot,
                                data: piece.to_vec(),
                            }
                            .to_bytes(),
                        );
                    }
                }
                (usize::from(slot.0), frames, None, extra)
            }
        }
    }
}

/// The delayed-reply queue of one slot on one connection.
struct SlotQueue {
    tx: mpsc::UnboundedSender<Batch>,
    /// Batches queued and not yet written.
    pending: Arc<AtomicUsize>,
}

/// Reply frames of one request for one queue.
struct Batch {
    frames: Vec<Vec<u8>>,
    /// The slot's generation when the request was handled.
    generation: u64,
    /// Fixed delay between frames instead of the latency knob.
    pace: Option<Duration>,
    /// Added to each frame's delay (the card's own timing, wire time); may be shorter.
    extra: Vec<Duration>,
}

/// What [`SimPool::handle`] answers: queue, frames, fixed pace, extra delay per frame.
type Handled = (usize, Vec<Vec<u8>>, Option<Duration>, Vec<Duration>);

/// Card bytes cut into frames: leading NULLs apart (a card "thinking"), the rest cut to `split`.
fn split_pieces(answer: &[u8], split: usize) -> Vec<&[u8]> {
    if answer.is_empty() {
        return Vec::new();
    }
    let nulls = answer
        .iter()
        .take_while(|&&b| b == 0x60)
        .count()
        .min(answer.len() - 1);
    let mut pieces: Vec<&[u8]> = Vec::new();
    let (head, rest) = answer.split_at(nulls);
    if !head.is_empty() {
        pieces.push(head);
    }
    if split == 0 {
        pieces.push(rest);
    } else {
        pieces.extend(rest.chunks(split));
    }
    pieces
}

/// [`split_pieces`] as reply frames.
fn split_answer(slot: Slot, answer: &[u8], split: usize) -> Vec<Vec<u8>> {
    split_pieces(answer, split)
        .into_iter()
        .map(|p| {
            Reply::Card {
                slot,
                data: p.to_vec(),
            }
            .to_bytes()
        })
        .collect()
}

/// 1000 frames of one NULL byte each (sent 10 ms apart: see `serve_conn`).
fn endless_nulls(slot: Slot) -> Vec<Vec<u8>> {
    let frame = Reply::Card {
        slot,
        data: vec![0x60],
    }
    .to_bytes();
    vec![frame; 1000]
}

/// A cheap pseudo-random pick in `lo..=hi`.
fn pick(lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    let span = (hi - lo).as_micros() as u64;
    let r = splitmix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    lo + Duration::from_micros(r % (span + 1))
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// 1–7 junk bytes, none of them `AA`.
fn junk(seed: u64) -> Vec<u8> {
    let r = splitmix(seed);
    let n = 1 + (r % 7) as usize;
    r.to_le_bytes()[..n.min(8)]
        .iter()
        .map(|&b| if b == 0xAA { 0x55 } else { b })
        .collect()
}
