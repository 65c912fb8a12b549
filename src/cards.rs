//! The daemon's cards: who holds which card (leases), what is known of each (ATR, ICCID, IMSI),
//! and the one exchange path every front end uses.
//!
//! A card has at most one holder at a time: a vpcd reader, an API request, a scan, a remote
//! bank client. Nothing starts, stops or exchanges with a card without holding its [`Lease`];
//! an ICCID/IMSI search only ever reads free cards. Dropping a lease (its holder went away, an
//! HTTP client disconnected mid-request) stops the card if the lease started it and then frees
//! it, in that order, so the next holder never has its fresh session stopped under it.
//!
//! [`Lease::transmit`] is the single place where an exchange happens, so counters, the latency
//! histogram and observers (GSMTAP) are hooked in once. It adds no lock, no allocation and no
//! syscall to what [`crate::pool::Card::transmit`] does: counters are atomics, observers a
//! fixed slice.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::inventory::{self, CardReport, Identity};
use crate::pool::{Card, ExchangeError, Link, PoolError, Slot, SlotState};

/// Who holds a card.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// vpcd reader *i* of this daemon.
    Reader(u16),
    /// A control API request (`apdu`) from this peer.
    Api(String),
    /// A scan, or an ICCID/IMSI search on behalf of a reader.
    Scan,
    /// A remote osmo-remsim client through the bank: bank id, bank slot, client id and slot.
    Bank {
        bank: u16,
        slot: u16,
        client: Option<(u16, u16)>,
    },
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Reader(i) => write!(f, "reader {i}"),
            Holder::Api(peer) => write!(f, "API request from {peer}"),
            Holder::Scan => write!(f, "scan"),
            Holder::Bank {
                bank,
                slot,
                client: Some((c, s)),
            } => write!(f, "bank {bank}:{slot} → client {c}:{s}"),
            Holder::Bank {
                bank,
                slot,
                client: None,
            } => write!(f, "bank {bank}:{slot}"),
        }
    }
}

impl Serialize for Holder {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which front end an exchange came from (for counters and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Front {
    Vpcd,
    Api,
    Scan,
    Bank,
}

impl Front {
    pub const ALL: [Front; 4] = [Front::Vpcd, Front::Api, Front::Scan, Front::Bank];

    pub fn name(self) -> &'static str {
        match self {
            Front::Vpcd => "vpcd",
            Front::Api => "api",
            Front::Scan => "scan",
            Front::Bank => "bank",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("card {0} does not exist: cards are 1-256")]
    NoSuchCard(u16),
    #[error("card {card} is held by {holder}")]
    Held { card: u16, holder: Holder },
}

/// Watches the exchange path. Called inline: implementations must not block and should not
/// allocate (queue the bytes, count, return).
pub trait Observer: Send + Sync {
    /// A card really started: the pool's start command answered this ATR.
    fn atr(&self, _card: u16, _atr: &[u8]) {}
    /// One exchange the card really answered (never called for answers simpool made up, such
    /// as `6F 00` on a timeout or a refusal). `cmd` is the TPDU as the front end sent it,
    /// `resp` is `data ‖ SW1 SW2`.
    fn exchange(&self, _card: u16, _front: Front, _cmd: &[u8], _resp: &[u8]) {}
}

/// What is known of a card, read when it was started or bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Known {
    pub atr: Option<String>,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
}

/// Upper bounds (seconds) of the exchange latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5,
];

/// Exchange latency of one front end: fixed buckets of atomics (no lock on the exchange path).
#[derive(Debug, Default)]
pub struct Latency {
    /// Non-cumulative counts per bucket; the last one is +Inf.
    pub buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    pub sum_micros: AtomicU64,
    pub count: AtomicU64,
}

impl Latency {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of one card.
#[derive(Debug, Default)]
pub struct CardStats {
    pub exchanges: AtomicU64,
    pub errors: AtomicU64,
    /// The same, split by front end (indexed like [`Front::ALL`]), for the metrics.
    pub exchanges_by_front: [AtomicU64; 4],
    pub errors_by_front: [AtomicU64; 4],
    pub starts: AtomicU64,
    pub stops: AtomicU64,
    pub start_failures: AtomicU64,
}

/// Counters of one front end.
#[derive(Debug, Default)]
pub struct FrontStats {
    pub exchanges: AtomicU64,
    pub errors: AtomicU64,
    pub latency: Latency,
}

struct Entry {
    holder: Mutex<Option<Holder>>,
    known: Mutex<Known>,
    stats: CardStats,
    /// Why the card was marked bad on the pool (error indication sent), if it was.
    bad: Mutex<Option<String>>,
}

struct Inner {
    link: Link,
    entries: Vec<Entry>,
    fronts: [FrontStats; 4],
    observers: Vec<Arc<dyn Observer>>,
    /// One ICCID/IMSI search at a time: two searches must not read (restart) the same card.
    search: tokio::sync::Mutex<()>,
    /// Bumped on every lease change; readers waiting for a card and pages watch it.
    changes: tokio::sync::watch::Sender<u64>,
}

/// The registry of the pool's 256 cards. Cheap to clone.
#[derive(Clone)]
pub struct Cards {
    inner: Arc<Inner>,
}

/// One card's entry as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CardView {
    pub card: u16,
    pub holder: Option<Holder>,
    #[serde(flatten)]
    pub known: Known,
    pub exchanges: u64,
    pub errors: u64,
    /// Why simpool marked the card bad on the pool, if it did.
    pub bad: Option<String>,
}

impl Cards {
    pub fn new(link: Link, observers: Vec<Arc<dyn Observer>>) -> Cards {
        let (changes, _) = tokio::sync::watch::channel(0);
        Cards {
            inner: Arc::new(Inner {
                link,
                entries: (0..256)
                    .map(|_| Entry {
                        holder: Mutex::new(None),
                        known: Mutex::new(Known::default()),
                        stats: CardStats::default(),
                        bad: Mutex::new(None),
                    })
                    .collect(),
                fronts: Default::default(),
                observers,
                search: tokio::sync::Mutex::new(()),
                changes,
            }),
        }
    }

    pub fn link(&self) -> &Link {
        &self.inner.link
    }

    fn entry(&self, n: u16) -> Result<&Entry, LeaseError> {
        Slot::from_card(n)
            .map(|s| &self.inner.entries[usize::from(s.0)])
            .ok_or(LeaseError::NoSuchCard(n))
    }

    /// Takes card `n` (1–256) for `holder`, or says who has it.
    pub fn lease(&self, n: u16, holder: Holder) -> Result<Lease, LeaseError> {
        let entry = self.entry(n)?;
        {
            let mut h = entry.holder.lock().unwrap();
            if let Some(other) = h.as_ref() {
                return Err(LeaseError::Held {
                    card: n,
                    holder: other.clone(),
                });
            }
            *h = Some(holder.clone());
        }
        self.changed();
        let slot = Slot::from_card(n).expect("checked above");
        log::debug!("card {n}: leased to {holder}");
        Ok(Lease {
            cards: self.clone(),
            card: self.inner.link.card(slot),
            holder,
            started: false,
            released: false,
        })
    }

    /// Who holds card `n`, if anyone.
    pub fn holder(&self, n: u16) -> Option<Holder> {
        self.entry(n).ok()?.holder.lock().unwrap().clone()
    }

    pub fn known(&self, n: u16) -> Known {
        self.entry(n)
            .map(|e| e.known.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Forgets what was read from card `n` (it was pulled, or its identity no longer matches).
    pub fn forget(&self, n: u16) {
        if let Ok(e) = self.entry(n) {
            *e.known.lock().unwrap() = Known::default();
        }
    }

    /// Why card `n` was marked bad on the pool, if it was.
    pub fn bad(&self, n: u16) -> Option<String> {
        self.entry(n).ok()?.bad.lock().unwrap().clone()
    }

    /// The card is to be tried again (re-inserted, or its binding renewed).
    pub fn clear_bad(&self, n: u16) {
        if let Ok(e) = self.entry(n) {
            if e.bad.lock().unwrap().take().is_some() {
                log::info!("card {n}: no longer marked bad; trying it again");
            }
        }
    }

    pub fn card_stats(&self, n: u16) -> Option<&CardStats> {
        self.entry(n).ok().map(|e| &e.stats)
    }

    pub fn front_stats(&self, f: Front) -> &FrontStats {
        &self.inner.fronts[f.index()]
    }

    /// Number of cards held.
    pub fn leases_held(&self) -> usize {
        self.inner
            .entries
            .iter()
            .filter(|e| e.holder.lock().unwrap().is_some())
            .count()
    }

    /// All 256 cards: holder, what is known, counters.
    pub fn views(&self) -> Vec<CardView> {
        (1..=256u16)
            .map(|n| {
                let e = self.entry(n).expect("1..=256");
                CardView {
                    card: n,
                    holder: e.holder.lock().unwrap().clone(),
                    known: e.known.lock().unwrap().clone(),
                    exchanges: e.stats.exchanges.load(Ordering::Relaxed),
                    errors: e.stats.errors.load(Ordering::Relaxed),
                    bad: e.bad.lock().unwrap().clone(),
                }
            })
            .collect()
    }

    /// A receiver that changes whenever a lease is taken or freed.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn free(&self, n: u16) {
        if let Ok(e) = self.entry(n) {
            e.holder.lock().unwrap().take();
        }
        self.changed();
        log::debug!("card {n}: free");
    }

    fn record(&self, n: u16, id: &Identity) {
        if let Ok(e) = self.entry(n) {
            let mut k = e.known.lock().unwrap();
            k.atr = Some(hex::encode_upper(&id.atr));
            k.iccid.clone_from(&id.iccid);
            k.imsi.clone_from(&id.imsi);
        }
    }

    /// Finds a free card with this ICCID or IMSI and leases it to `holder`. Only free cards are
    /// read; cards whose known identity differs are skipped without being touched. The card is
    /// left stopped.
    pub async fn find(
        &self,
        want: &Wanted<'_>,
        holder: Holder,
        deadline: Duration,
    ) -> Result<Lease, FindError> {
        let _one_at_a_time = self.inner.search.lock().await;
        let states = self.link().states().await.map_err(FindError::Pool)?;
        let mut held_by: Option<(u16, Holder)> = None;
        for (i, st) in states.iter().enumerate() {
            let n = i as u16 + 1;
            if !st.has_card() {
                continue;
            }
            let known = self.known(n);
            if let Some(h) = self.holder(n) {
                if want.matches(&known) {
                    held_by = Some((n, h));
                }
                continue;
            }
            if known.iccid.is_some() && !want.matches(&known) {
                continue;
            }
            // Unknown, or known to match (cards move: read it again to be sure).
            let Ok(mut lease) = self.lease(n, Holder::Scan) else {
                continue;
            };
            match lease.read_identity(deadline).await {
                Ok(_) => {}
                Err(e) => {
                    log::debug!("search: card {n}: {e}");
                    lease.release().await;
                    continue;
                }
            }
            let ok = want.matches(&self.known(n));
            let stopped = lease.stop().await;
            if ok && stopped.is_ok() {
                lease.handover(holder);
                return Ok(lease);
            }
            lease.release().await;
        }
        Err(match held_by {
            Some((card, holder)) => FindError::Held { card, holder },
            None => FindError::NotFound,
        })
    }

    /// ATR, ICCID and IMSI of every inserted card, read concurrently through leases. Cards
    /// held by someone are reported from what is known and not touched; cards this scan started
    /// that were idle before are stopped again.
    pub async fn scan(&self, deadline: Duration) -> Result<Vec<ScanRow>, PoolError> {
        let states = self.link().states().await?;
        let mut tasks = Vec::new();
        for (i, state) in states.iter().copied().enumerate() {
            if !state.has_card() {
                continue;
            }
            let n = i as u16 + 1;
            let cards = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut lease = match cards.lease(n, Holder::Scan) {
                    Ok(l) => l,
                    Err(LeaseError::Held { holder, .. }) => {
                        return ScanRow::from_known(n, state, cards.known(n), Some(holder))
                    }
                    Err(e) => return ScanRow::failed(n, state, e.to_string()),
                };
                let row = match lease.read_identity(deadline).await {
                    Ok(id) => ScanRow::read(n, state, &id),
                    Err(e) => ScanRow::failed(n, state, e.to_string()),
                };
                if state == SlotState::Working {
                    // Running before the scan (outside this daemon): leave it running.
                    lease.keep_running();
                }
                lease.release().await;
                row
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            match t.await {
                Ok(r) => out.push(r),
                Err(e) => log::error!("scan task failed: {e}"),
            }
        }
        Ok(out)
    }
}

/// One row of a scan: the card's report plus who holds it (reported from what is known).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ScanRow {
    #[serde(flatten)]
    pub report: CardReport,
    pub holder: Option<String>,
}

impl ScanRow {
    fn base(n: u16, state: SlotState) -> CardReport {
        CardReport {
            card: n,
            state,
            atr: None,
            iccid: None,
            imsi: None,
            error: None,
        }
    }

    fn read(n: u16, state: SlotState, id: &Identity) -> ScanRow {
        let mut r = Self::base(n, state);
        r.atr = Some(hex::encode_upper(&id.atr));
        r.iccid.clone_from(&id.iccid);
        r.imsi.clone_from(&id.imsi);
        ScanRow {
            report: r,
            holder: None,
        }
    }

    fn failed(n: u16, state: SlotState, error: String) -> ScanRow {
        let mut r = Self::base(n, state);
        r.error = Some(error);
        ScanRow {
            report: r,
            holder: None,
        }
    }

    fn from_known(n: u16, state: SlotState, k: Known, holder: Option<Holder>) -> ScanRow {
        let mut r = Self::base(n, state);
        r.atr = k.atr;
        r.iccid = k.iccid;
        r.imsi = k.imsi;
        ScanRow {
            report: r,
            holder: holder.map(|h| h.to_string()),
        }
    }
}

/// What an identity search looks for.
#[derive(Debug, Clone, Copy)]
pub enum Wanted<'a> {
    Iccid(&'a str),
    Imsi(&'a str),
}

impl Wanted<'_> {
    fn matches(&self, k: &Known) -> bool {
        match self {
            Wanted::Iccid(w) => k.iccid.as_deref() == Some(*w),
            Wanted::Imsi(w) => k.imsi.as_deref() == Some(*w),
        }
    }
}

impl fmt::Display for Wanted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wanted::Iccid(s) => write!(f, "ICCID {s}"),
            Wanted::Imsi(s) => write!(f, "IMSI {s}"),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FindError {
    #[error("no free inserted card has it")]
    NotFound,
    #[error("it is card {card}, held by {holder}")]
    Held { card: u16, holder: Holder },
    #[error(transparent)]
    Pool(PoolError),
}

/// The right to use one card. Dropping it stops the card (if this lease started it) and then
/// frees it; [`Lease::release`] does the same and waits for it.
pub struct Lease {
    cards: Cards,
    card: Card,
    holder: Holder,
    /// This lease powered the card up and has not stopped it.
    started: bool,
    released: bool,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lease(card {} for {})", self.number(), self.holder)
    }
}

impl Lease {
    /// Front-panel number 1–256.
    pub fn number(&self) -> u16 {
        self.card.slot().card()
    }

    pub fn slot(&self) -> Slot {
        self.card.slot()
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    fn entry(&self) -> &Entry {
        &self.cards.inner.entries[usize::from(self.card.slot().0)]
    }

    /// Passes the lease to another holder without freeing the card in between.
    pub fn handover(&mut self, holder: Holder) {
        *self.entry().holder.lock().unwrap() = Some(holder.clone());
        self.holder = holder;
        self.cards.changed();
    }

    /// Powers up and resets the card; answers its ATR.
    pub async fn start(&mut self) -> Result<Vec<u8>, PoolError> {
        let stats = &self.cards.inner.entries[usize::from(self.card.slot().0)].stats;
        // Marked before the request goes out: if this future is dropped mid-way the card may
        // be running, and dropping the lease must stop it.
        self.started = true;
        match self.card.start().await {
            Ok(atr) => {
                stats.starts.fetch_add(1, Ordering::Relaxed);
                self.entry().known.lock().unwrap().atr = Some(hex::encode_upper(&atr));
                for o in &self.cards.inner.observers {
                    o.atr(self.number(), &atr);
                }
                Ok(atr)
            }
            Err(e) => {
                stats.start_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Powers the card down.
    pub async fn stop(&mut self) -> Result<(), PoolError> {
        self.entry().stats.stops.fetch_add(1, Ordering::Relaxed);
        let r = self.card.stop().await;
        if r.is_ok() {
            self.started = false;
        }
        r
    }

    /// Stops the card if it runs and starts it again; answers the new ATR.
    pub async fn restart(&mut self) -> Result<Vec<u8>, PoolError> {
        if self.started {
            self.stop().await?;
        }
        self.start().await
    }

    /// Tells the pool this card misbehaves (error indication `04`: its slot turns abnormal and
    /// its LED blinks slowly, so a person sees which card to pull). Sent once per marking.
    pub async fn mark_bad(&mut self, reason: &str) -> Result<(), PoolError> {
        let n = self.number();
        {
            let mut bad = self.entry().bad.lock().unwrap();
            if bad.is_some() {
                return Ok(());
            }
            *bad = Some(reason.to_string());
        }
        log::warn!("card {n}: marked bad on the pool (its LED blinks slowly): {reason}");
        let r = self.card.error_indication().await;
        self.started = false;
        r
    }

    /// The card was running before this lease (outside the daemon): don't stop it on release.
    pub fn keep_running(&mut self) {
        self.started = false;
    }

    /// The one exchange path: `cmd` as the application sent it; answers `data ‖ SW1 SW2`.
    /// Bounded by `deadline` as a whole.
    pub async fn transmit(
        &self,
        cmd: &[u8],
        deadline: Duration,
        front: Front,
    ) -> Result<Vec<u8>, ExchangeError> {
        let t0 = Instant::now();
        let result = match tokio::time::timeout(deadline, self.card.transmit(cmd, deadline)).await {
            Ok(r) => r,
            Err(_) => Err(ExchangeError::Deadline {
                ms: deadline.as_millis() as u64,
                seen: Vec::new(),
            }),
        };
        let stats = &self.entry().stats;
        let fs = &self.cards.inner.fronts[front.index()];
        stats.exchanges.fetch_add(1, Ordering::Relaxed);
        stats.exchanges_by_front[front.index()].fetch_add(1, Ordering::Relaxed);
        fs.exchanges.fetch_add(1, Ordering::Relaxed);
        fs.latency.observe(t0.elapsed());
        match &result {
            Ok(resp) => {
                for o in &self.cards.inner.observers {
                    o.exchange(self.number(), front, cmd, resp);
                }
            }
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                stats.errors_by_front[front.index()].fetch_add(1, Ordering::Relaxed);
                fs.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Starts the card and reads ATR, ICCID and IMSI (the manual's sequences); records them.
    /// The card is left running, with files selected: restart it before handing it on.
    pub async fn read_identity(
        &mut self,
        deadline: Duration,
    ) -> Result<Identity, inventory::ReadError> {
        let atr = self.start().await.map_err(inventory::ReadError::Start)?;
        let this = &*self;
        let id = inventory::read_files(atr, |cmd| async move {
            this.transmit(&cmd, deadline, Front::Scan).await
        })
        .await?;
        self.cards.record(self.number(), &id);
        Ok(id)
    }

    /// Stops the card if this lease started it, then frees it.
    pub async fn release(mut self) {
        if self.started {
            if let Err(e) = self.stop().await {
                log::debug!("card {}: stop on release: {e}", self.number());
            }
        }
        self.released = true;
        self.cards.free(self.number());
    }
}

/// The whole daemon's lease drops go through here so a dropped lease (a task aborted, an HTTP
/// client gone) still stops its card before the card is free again.
impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let n = self.number();
        if !self.started {
            self.cards.free(n);
            return;
        }
        let cards = self.cards.clone();
        let card = self.card.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    cards.stop_dropped(&card).await;
                    cards.free(n);
                });
            }
            Err(_) => cards.free(n),
        }
    }
}

impl Cards {
    async fn stop_dropped(&self, card: &Card) {
        let n = card.slot().card();
        if let Ok(e) = self.entry(n) {
            e.stats.stops.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = card.stop().await {
            log::debug!("card {n}: stop after its holder went away: {e}");
        }
    }
}
