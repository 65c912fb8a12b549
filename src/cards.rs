//! The daemon's cards: who holds which card (leases), what is known of each (ATR, ICCID, IMSI),
//! the rules every use of a card obeys, and the one exchange path every front end uses.
//!
//! A card has at most one holder at a time: a vpcd reader, an API request, a scan, a remote
//! bank client. Nothing starts, stops or exchanges with a card without holding its [`Lease`];
//! an ICCID/IMSI search only ever reads free cards. Dropping a lease (its holder went away, an
//! HTTP client disconnected mid-request) stops the card if the lease started it and then frees
//! it, in that order, so the next holder never has its fresh session stopped under it.
//!
//! Policy lives here, once, so that every front end obeys it without code of its own:
//! - a card marked bad on the pool ([`policy`]: failed starts and lost T=0 states, as the
//!   sessions of readers and bank clients see them) is refused at once to every front end,
//!   naming why, until it is re-inserted or bound again; an empty slot is refused at once
//!   ([`Lease::admit`]);
//! - a session on a card ends when the pool connection it was started on is gone, or when
//!   the card is taken from its holder ([`Lease::ended`]: `stop --force` today; an expired
//!   reservation is the same revocation);
//! - the operations the API and the command line offer ([`ops`]) are the same code whether
//!   they run in the daemon or over a command's own pool connection;
//! - what each lease did and what happened to each card go to the history, and the cards'
//!   labels come from it ([`record`]).
//!
//! [`Lease::transmit`] is the single place where an exchange happens, so counters, the latency
//! histogram and observers (GSMTAP) are hooked in once. It adds no lock, no allocation and no
//! syscall to what [`crate::pool::Card::transmit`] does: counters are atomics, observers a
//! fixed slice.

pub mod auth;
pub mod auto;
pub mod changes;
pub mod facts;
pub mod guard;
pub mod ops;
pub mod policy;
pub mod record;
mod reserve;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::identity;
use crate::pool::{Card, ExchangeError, Link, LinkState, PoolError, SlotState};
use crate::values::{Atr, CardNo};

use crate::history::Timestamp;
use crate::reservations::{Book, BookError, Reservation, ReservationId, Reserved};
use crate::users::Who;

use policy::CardHealth;
pub use record::{LabelsError, Owner, ReservationRef};

use crate::history::EndReason;

/// Who holds a card. (A holder that names a person and a lease with an expiry fit here: the
/// card layer revokes a lease whose time is up as it does a forced stop, see [`Cards::revoke`].)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// vpcd reader *i* of this daemon.
    Reader(u16),
    /// A control API request (`apdu`) from this peer.
    Api(String),
    /// A request of the sim-rest API (issue 20 §1) from this peer (its address: the API has
    /// no users).
    SimRest(String),
    /// A command of simpool's own command line, over a pool connection of its own.
    Command(&'static str),
    /// A scan, or an ICCID/IMSI search on behalf of a reader.
    Scan,
    /// The end of a reservation, stopping its card.
    Reservation(ReservationId),
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
            Holder::SimRest(peer) => write!(f, "sim-rest request from {peer}"),
            Holder::Command(c) => write!(f, "simpool {c}"),
            Holder::Scan => write!(f, "scan"),
            Holder::Reservation(id) => write!(f, "the end of reservation {id}"),
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
    #[error("card {card} is held by {holder}")]
    Held { card: CardNo, holder: Holder },
    /// Reserved by another user ([`crate::reservations`]): names the user and the expiry.
    #[error(transparent)]
    Reserved(#[from] Reserved),
}

impl LeaseError {
    pub fn card(&self) -> CardNo {
        match self {
            LeaseError::Held { card, .. } => *card,
            LeaseError::Reserved(r) => r.card,
        }
    }

    /// Who has the card, as people read it.
    pub fn holder_text(&self) -> String {
        match self {
            LeaseError::Held { holder, .. } => holder.to_string(),
            LeaseError::Reserved(r) => {
                format!("{} (reservation {}) until {}", r.user, r.id, r.expires)
            }
        }
    }
}

/// Why a card was not reserved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error(transparent)]
    Book(#[from] BookError),
    #[error("card {card} is held by {holder}")]
    Held { card: CardNo, holder: String },
}

/// Why a card was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error(
        "card {card} is marked bad on the pool: {why} (re-insert it or bind it again to retry)"
    )]
    Bad { card: CardNo, why: String },
    #[error("card {0}: the slot is empty")]
    Empty(CardNo),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// Why a card's identity was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("start failed: {0}")]
    Start(#[from] StartError),
    #[error(transparent)]
    Read(#[from] identity::ReadError<ExchangeError>),
}

/// Why a session on a card must end ([`Lease::ended`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The pool connection the card was started on is gone (the pool may have powered the
    /// card off): the holder starts it afresh.
    LinkChanged(LinkState),
    /// The card was taken from its holder (a forced stop), for this reason.
    Revoked(String),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::LinkChanged(s) => write!(f, "pool connection changed ({s:?})"),
            Ended::Revoked(why) => f.write_str(why),
        }
    }
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
    pub atr: Option<Atr>,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    /// Type, SPN, MSISDN, PIN1/PUK1, EID ([`facts`]).
    #[serde(flatten)]
    pub facts: facts::Facts,
    /// SPN, MSISDN and EID were read (or known) for this ICCID: [`Cards::read_details`].
    #[serde(skip)]
    pub details: bool,
}

/// How long after a scan the daemon reads the details its first reads left out.
pub const DETAILS_AFTER: Duration = Duration::from_secs(2);

/// Upper bounds (seconds) of the exchange latency histogram's buckets.
/// Each exchange of reading a card's identity again at its start, after a change
/// ([`Lease::start`]): what a slow card's SELECT or READ BINARY takes at most.
const REFRESH_DEADLINE: Duration = Duration::from_secs(2);

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
    pub latency: Latency,
}

struct Entry {
    holder: Mutex<Option<Holder>>,
    /// The user the holder works for (locked after `holder`), if it has one.
    user: Mutex<Option<String>>,
    known: Mutex<Known>,
    stats: CardStats,
    health: Mutex<CardHealth>,
    /// Someone other than a scan exchanged with the card since its facts were read: what
    /// only a write changes (SPN, MSISDN, an eUICC's profile) must be read again.
    touched: AtomicBool,
    /// Counts revocations of the card's lease; the last one's reason beside it.
    revoked: watch::Sender<u64>,
    revoked_why: Mutex<(String, EndReason)>,
    /// The card accepted a command that can change its ICCID or IMSI ([`changes`]): read
    /// them again at its next start.
    identity_stale: AtomicBool,
    /// The retry counters seen ([`guard`]); locked only for PIN commands.
    guard: Mutex<guard::Tracker>,
    /// The last command the card layer's rules refused, said short.
    refused: Mutex<Option<String>>,
}

struct Inner {
    link: Link,
    entries: Vec<Entry>,
    fronts: [FrontStats; 4],
    observers: Vec<Arc<dyn Observer>>,
    /// One ICCID/IMSI search at a time: two searches must not read (restart) the same card.
    search: tokio::sync::Mutex<()>,
    /// A details pass is due ([`Cards::read_details_soon`]): one at a time.
    details_due: AtomicBool,
    /// Bumped on every lease change; readers waiting for a card and pages watch it.
    changes: watch::Sender<u64>,
    /// The history and the labels (see [`record`]).
    records: record::Records,
    /// The reservations: whose each reserved card is, until when (locked before any entry).
    book: Mutex<Book>,
    /// Authentications run through [`auth::authenticate`].
    auth: auth::AuthCounts,
    /// Per-card settings (guard, protection); read only for the commands they concern.
    settings: RwLock<Arc<dyn guard::SettingsSource>>,
}

/// The registry of the pool's 256 cards. Cheap to clone.
#[derive(Clone)]
pub struct Cards {
    inner: Arc<Inner>,
}

/// One card's entry as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CardView {
    pub card: CardNo,
    pub holder: Option<Holder>,
    #[serde(flatten)]
    pub known: Known,
    pub exchanges: u64,
    pub errors: u64,
    /// Why simpool marked the card bad on the pool, if it did.
    pub bad: Option<String>,
    /// The last command the card layer's rules refused ("refused: would use PIN1's last try").
    pub refused: Option<String>,
}

impl Cards {
    pub fn new(link: Link, observers: Vec<Arc<dyn Observer>>) -> Cards {
        Cards {
            inner: Arc::new(Inner {
                link,
                entries: CardNo::all()
                    .map(|_| Entry {
                        holder: Mutex::new(None),
                        user: Mutex::new(None),
                        known: Mutex::new(Known::default()),
                        stats: CardStats::default(),
                        health: Mutex::new(CardHealth::default()),
                        touched: AtomicBool::new(true),
                        revoked: watch::channel(0).0,
                        revoked_why: Mutex::new((String::new(), EndReason::StoppedByAdmin)),
                        identity_stale: AtomicBool::new(false),
                        guard: Mutex::new(guard::Tracker::default()),
                        refused: Mutex::new(None),
                    })
                    .collect(),
                fronts: Default::default(),
                observers,
                search: tokio::sync::Mutex::new(()),
                details_due: AtomicBool::new(false),
                changes: watch::channel(0).0,
                records: record::Records::new(),
                book: Mutex::new(Book::new()),
                auth: auth::AuthCounts::default(),
                settings: RwLock::new(Arc::new(guard::ConfigSettings::default())),
            }),
        }
    }

    pub fn link(&self) -> &Link {
        &self.inner.link
    }

    /// Where per-card settings (guard, write protection) come from from now on.
    pub fn set_settings(&self, source: Arc<dyn guard::SettingsSource>) {
        *self.inner.settings.write().unwrap() = source;
    }

    /// Card `n`'s settings: the configuration's, then its labels' (`protect=write`,
    /// `protect=off`, `guard=off`, `guard=on`), which win.
    pub fn settings(&self, n: CardNo) -> guard::CardSettings {
        let mut s = self.inner.settings.read().unwrap().settings(n);
        let labels = self.labels_of(n);
        match labels.get("protect").map(String::as_str) {
            Some("write") => s.protect_write = true,
            Some("off") => s.protect_write = false,
            _ => {}
        }
        match labels.get("guard").map(String::as_str) {
            Some("off") => s.guard = false,
            Some("on") => s.guard = true,
            _ => {}
        }
        s
    }

    /// The last command the card layer's rules refused on card `n`, said short ("refused:
    /// would use ADM1's last try").
    pub fn refused(&self, n: CardNo) -> Option<String> {
        self.entry(n).refused.lock().unwrap().clone()
    }

    /// The retry counters seen on card `n`, e.g. `[(PIN1, 2)]`.
    pub fn tries_seen(&self, n: CardNo) -> Vec<(guard::Secret, u8)> {
        self.entry(n).guard.lock().unwrap().summary()
    }

    fn entry(&self, n: CardNo) -> &Entry {
        &self.inner.entries[n.index()]
    }

    /// Takes card `n` for `holder`, a holder that works for no user (a scan, a remote bank
    /// client, the daemon's start-up bindings): a reserved card is refused to it.
    pub fn lease(&self, n: CardNo, holder: Holder) -> Result<Lease, LeaseError> {
        self.lease_as(n, holder, None)
    }

    /// Takes card `n` for `holder` working for `who`, or says who has it. A card reserved by
    /// another user is refused ([`Book::may_use`]): the one place that rule lives.
    pub fn lease_as(
        &self,
        n: CardNo,
        holder: Holder,
        who: Option<&Who>,
    ) -> Result<Lease, LeaseError> {
        let entry = self.entry(n);
        let owner;
        {
            let book = self.inner.book.lock().unwrap();
            book.may_use(n, who)?;
            owner = Owner {
                user: who
                    .filter(|w| w.user != crate::users::ANONYMOUS)
                    .map(|w| w.user.clone()),
                reservation: book
                    .of_card(n)
                    .filter(|r| who.is_some_and(|w| w.user == r.user))
                    .map(|r| ReservationRef {
                        id: r.id.0,
                        note: r.note.clone(),
                    }),
            };
            let mut h = entry.holder.lock().unwrap();
            if let Some(other) = h.as_ref() {
                return Err(LeaseError::Held {
                    card: n,
                    holder: other.clone(),
                });
            }
            *h = Some(holder.clone());
            *entry.user.lock().unwrap() = who.map(|w| w.user.clone());
        }
        self.changed();
        log::debug!("card {n}: leased to {holder}");
        let pending = self.begin_row(n, &holder, &owner);
        Ok(Lease {
            cards: self.clone(),
            card: self.inner.link.card(n.slot()),
            number: n,
            holder,
            started: AtomicBool::new(false),
            keep: false,
            released: false,
            started_on: None,
            revocations_seen: AtomicU64::new(*entry.revoked.borrow()),
            judges: false,
            rec: Box::new(record::LeaseRecord::new(pending)),
            last_try: false,
        })
    }

    /// Who holds card `n`, if anyone.
    pub fn holder(&self, n: CardNo) -> Option<Holder> {
        self.entry(n).holder.lock().unwrap().clone()
    }

    pub fn known(&self, n: CardNo) -> Known {
        self.entry(n).known.lock().unwrap().clone()
    }

    /// Forgets what was read from card `n` (it was pulled, or its identity no longer matches).
    pub fn forget(&self, n: CardNo) {
        self.entry(n).touched.store(true, Ordering::Relaxed);
        *self.entry(n).known.lock().unwrap() = Known::default();
    }

    /// Why card `n` was marked bad on the pool, if it was.
    pub fn bad(&self, n: CardNo) -> Option<String> {
        self.entry(n).health.lock().unwrap().bad().map(String::from)
    }

    /// The card is to be tried again (re-inserted, or its binding renewed): forgets that it was
    /// marked bad and what counted towards it.
    pub fn clear_bad(&self, n: CardNo) {
        if self.entry(n).health.lock().unwrap().clear() {
            log::info!("card {n}: no longer marked bad; trying it again");
            self.event(n, crate::history::EventKind::BadCleared, None);
        }
    }

    pub fn card_stats(&self, n: CardNo) -> &CardStats {
        &self.entry(n).stats
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

    /// Card `n`: holder, what is known, counters.
    pub fn view(&self, n: CardNo) -> CardView {
        let e = self.entry(n);
        CardView {
            card: n,
            holder: e.holder.lock().unwrap().clone(),
            known: e.known.lock().unwrap().clone(),
            exchanges: e.stats.exchanges.load(Ordering::Relaxed),
            errors: e.stats.errors.load(Ordering::Relaxed),
            bad: e.health.lock().unwrap().bad().map(String::from),
            refused: e.refused.lock().unwrap().clone(),
        }
    }

    /// All 256 cards.
    pub fn views(&self) -> Vec<CardView> {
        CardNo::all().map(|n| self.view(n)).collect()
    }

    /// A receiver that changes whenever a lease is taken or freed.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Waits until no card is held (every lease released, also those dropped mid-way whose
    /// card is being stopped), at most `within`. A command with a pool connection of its own
    /// calls it before it ends, so the stops reach the pool.
    pub async fn idle(&self, within: Duration) -> bool {
        let mut w = self.watch();
        tokio::time::timeout(within, async {
            while self.leases_held() > 0 {
                if w.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn free(&self, n: CardNo) {
        {
            let mut h = self.entry(n).holder.lock().unwrap();
            h.take();
            self.entry(n).user.lock().unwrap().take();
        }
        self.changed();
        log::debug!("card {n}: free");
    }

    fn record(&self, n: CardNo, atr: &[u8], read: &facts::Read) {
        let mut k = self.entry(n).known.lock().unwrap();
        k.atr = Some(Atr::from(atr));
        k.iccid.clone_from(&read.iccid);
        k.imsi.clone_from(&read.imsi);
        k.facts.clone_from(&read.facts);
        k.details = read.details;
        self.entry(n).touched.store(false, Ordering::Relaxed);
    }

    /// The details read of card `n` ([`facts::Reading::details`]) into what is known of it.
    fn record_details(&self, n: CardNo, read: &facts::Read) {
        let mut k = self.entry(n).known.lock().unwrap();
        let f = &mut k.facts;
        f.spn.clone_from(&read.facts.spn);
        f.msisdn.clone_from(&read.facts.msisdn);
        f.eid.clone_from(&read.facts.eid);
        if read.facts.kind == Some(facts::CardType::Euicc) {
            f.kind = read.facts.kind;
        }
        for h in &read.facts.hidden {
            if !f.hides(h) {
                f.hidden.push(h.clone());
            }
        }
        k.details = true;
    }

    /// Cards whose details (SPN, MSISDN, EID) are still to be read: read once, not stopped
    /// since, nobody else used since.
    fn details_wanted(&self, n: CardNo) -> bool {
        let k = self.known(n);
        !k.details && k.atr.is_some() && !self.entry(n).touched.load(Ordering::Relaxed)
    }

    /// [`Cards::read_details`] in the background, [`DETAILS_AFTER`] from now (one pass for
    /// the scans of that time): whoever scanned has the cards free for what it does next.
    pub fn read_details_soon(&self, deadline: Duration) {
        if self.inner.details_due.swap(true, Ordering::Relaxed) {
            return;
        }
        let cards = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(DETAILS_AFTER).await;
            cards.inner.details_due.store(false, Ordering::Relaxed);
            let n = cards.read_details(deadline).await;
            log::debug!("details of {n} card(s) read");
        });
    }

    /// Reads the details (SPN, MSISDN, EID: [`facts::Reading::details`]) of every idle
    /// inserted card whose first read left them out, concurrently, each under a scan lease
    /// that starts and stops the card; answers how many were read. A scan leaves them to
    /// this (the daemon runs it after each scan), so the scan costs no more than the
    /// identity read of before plus one exchange per card.
    pub async fn read_details(&self, deadline: Duration) -> usize {
        let Ok(states) = self.link().states().await else {
            return 0;
        };
        let mut tasks = tokio::task::JoinSet::new();
        for n in CardNo::all() {
            let state = states[n.index()];
            if !state.has_card() || state == SlotState::Working || !self.details_wanted(n) {
                continue;
            }
            let Ok(mut lease) = self.lease(n, Holder::Scan) else {
                continue;
            };
            tasks.spawn(async move {
                let r = async {
                    lease.start_once().await?;
                    lease.read_details(deadline).await
                }
                .await;
                if let Err(e) = &r {
                    log::debug!("card {n}: details: {e}");
                }
                if lease.is_started() {
                    let _ = lease.stop().await;
                }
                lease.release().await;
                r.is_ok()
            });
        }
        let mut read = 0;
        while let Some(r) = tasks.join_next().await {
            read += usize::from(r.unwrap_or(false));
        }
        read
    }

    /// What of card `n` only a write changes, if it can be trusted: read before, and nobody
    /// but a scan has exchanged with the card since.
    fn stable(&self, n: CardNo) -> Option<facts::Stable> {
        if self.entry(n).touched.load(Ordering::Relaxed) {
            return None;
        }
        let k = self.known(n);
        Some(facts::Stable {
            iccid: k.iccid?,
            kind: k.facts.kind?,
            spn: k.facts.spn,
            msisdn: k.facts.msisdn,
            eid: k.facts.eid,
        })
    }

    /// Takes card `n` from its holder, whose session ends ([`Lease::ended`] answers
    /// [`Ended::Revoked`] with `why`). The holder keeps the lease until it lets go.
    pub fn revoke(&self, n: CardNo, why: String) {
        self.revoke_for(n, why, EndReason::StoppedByAdmin);
    }

    /// [`Cards::revoke`], the holder's history row ending for `reason` (an expired reservation:
    /// [`EndReason::Expired`]).
    pub fn revoke_for(&self, n: CardNo, why: String, reason: EndReason) {
        let e = self.entry(n);
        *e.revoked_why.lock().unwrap() = (why, reason);
        e.revoked.send_modify(|c| *c += 1);
    }

    /// Stops card `n` even if someone holds it (`stop --force`): under a lease of `by` when
    /// it is free, else under its holder, whose session is revoked. Answers the holder it was
    /// taken from, if any.
    pub async fn force_stop(
        &self,
        n: CardNo,
        by: &Holder,
    ) -> (Option<Holder>, Result<(), PoolError>) {
        self.force_stop_as(n, by, Some(&Who::daemon())).await
    }

    /// [`Cards::force_stop`] on behalf of `who` (an admin: a forced stop also stops a card
    /// reserved by another user).
    pub async fn force_stop_as(
        &self,
        n: CardNo,
        by: &Holder,
        who: Option<&Who>,
    ) -> (Option<Holder>, Result<(), PoolError>) {
        match self.lease_as(n, by.clone(), who) {
            Ok(mut lease) => {
                let r = lease.stop().await;
                lease.release().await;
                (None, r)
            }
            Err(LeaseError::Held { holder, .. }) => {
                log::warn!("card {n} stopped under its holder {holder} by {by} (forced)");
                let r = self.stop_card(n).await;
                self.revoke(n, format!("stopped by {by} (forced)"));
                (Some(holder), r)
            }
            Err(LeaseError::Reserved(res)) => {
                log::warn!(
                    "card {n}, reserved by {}, stopped by {by} (forced)",
                    res.user
                );
                (None, self.stop_card(n).await)
            }
        }
    }

    /// Sends the pool's stop for card `n` and counts it; a card marked bad is left alone (it
    /// is not running, and a stop could make its slot read as re-inserted).
    async fn stop_card(&self, n: CardNo) -> Result<(), PoolError> {
        if self.bad(n).is_some() {
            return Ok(());
        }
        self.entry(n).stats.stops.fetch_add(1, Ordering::Relaxed);
        self.inner.link.card(n.slot()).stop().await
    }

    /// Marks card `n` bad on the pool (error indication `04`: its slot turns abnormal and its
    /// LED blinks slowly, so a person sees which card to pull), once. True if this marked it.
    async fn mark_bad(&self, n: CardNo, why: String) -> bool {
        if !self.entry(n).health.lock().unwrap().mark(why.clone()) {
            return false;
        }
        log::warn!("card {n}: marked bad on the pool (its LED blinks slowly): {why}");
        self.event(n, crate::history::EventKind::MarkedBad, Some(why.clone()));
        match self.inner.link.card(n.slot()).error_indication().await {
            Ok(()) => self.event(n, crate::history::EventKind::ErrorIndication, Some(why)),
            Err(e) => log::warn!("card {n}: error indication not sent: {e}"),
        }
        true
    }

    /// Whether the pool reports a card in slot `n` (a start failure of an empty slot is no
    /// sign of a bad card).
    async fn inserted(&self, n: CardNo) -> bool {
        match self.inner.link.states().await {
            Ok(st) => st[n.index()].has_card(),
            Err(_) => false,
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
        self.find_as(want, holder, None, deadline).await
    }

    /// [`Cards::find`] for a holder working for `who`: cards reserved by others are skipped.
    pub async fn find_as(
        &self,
        want: &Wanted<'_>,
        holder: Holder,
        who: Option<&Who>,
        deadline: Duration,
    ) -> Result<Lease, FindError> {
        let _one_at_a_time = self.inner.search.lock().await;
        let states = self.link().states().await.map_err(FindError::Pool)?;
        let mut held_by: Option<(CardNo, Holder)> = None;
        let mut reserved: Option<Reserved> = None;
        for n in CardNo::all() {
            let state = states[n.index()];
            if !state.has_card() {
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
            let mut lease = match self.lease_as(n, Holder::Scan, who) {
                Ok(l) => l,
                Err(LeaseError::Reserved(r)) => {
                    if want.matches(&known) {
                        reserved = Some(r);
                    }
                    continue;
                }
                Err(_) => continue,
            };
            if let Err(e) = lease.admit_in(state) {
                log::debug!("search: {e}");
                lease.release().await;
                continue;
            }
            if let Err(e) = lease.read_identity(deadline).await {
                log::debug!("search: card {n}: {e}");
                lease.release().await;
                continue;
            }
            // An EID is one of the details, which a first read leaves out.
            if matches!(want, Wanted::Eid(_)) && self.details_wanted(n) {
                if let Err(e) = lease.read_details(deadline).await {
                    log::debug!("search: card {n}: details: {e}");
                }
            }
            let ok = want.matches(&self.known(n));
            let stopped = lease.stop().await;
            if ok && stopped.is_ok() {
                lease.handover(holder);
                *self.entry(n).user.lock().unwrap() = who.map(|w| w.user.clone());
                return Ok(lease);
            }
            lease.release().await;
        }
        Err(match (held_by, reserved) {
            (Some((card, holder)), _) => FindError::Held { card, holder },
            (None, Some(r)) => FindError::Reserved(r),
            (None, None) => FindError::NotFound,
        })
    }
}

/// What an identity search looks for.
#[derive(Debug, Clone, Copy)]
pub enum Wanted<'a> {
    Iccid(&'a str),
    Imsi(&'a str),
    /// An eUICC's EID (32 digits): its ICCID changes with the profile enabled.
    Eid(&'a str),
}

impl Wanted<'_> {
    pub fn matches(&self, k: &Known) -> bool {
        match self {
            Wanted::Iccid(w) => k.iccid.as_deref() == Some(*w),
            Wanted::Imsi(w) => k.imsi.as_deref() == Some(*w),
            Wanted::Eid(w) => k
                .facts
                .eid
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(w)),
        }
    }
}

impl fmt::Display for Wanted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wanted::Iccid(s) => write!(f, "ICCID {s}"),
            Wanted::Imsi(s) => write!(f, "IMSI {s}"),
            Wanted::Eid(s) => write!(f, "EID {s}"),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FindError {
    #[error("no free inserted card has it")]
    NotFound,
    #[error("it is card {card}, held by {holder}")]
    Held { card: CardNo, holder: Holder },
    #[error("it is {0}")]
    Reserved(Reserved),
    #[error(transparent)]
    Pool(PoolError),
}

/// The right to use one card. Dropping it stops the card (if this lease started it) and then
/// frees it; [`Lease::release`] does the same and waits for it.
pub struct Lease {
    cards: Cards,
    card: Card,
    number: CardNo,
    holder: Holder,
    /// This lease powered the card up and has not stopped it.
    started: AtomicBool,
    /// Leave the card running when the lease ends.
    keep: bool,
    released: bool,
    /// The pool connection the card was last started on.
    started_on: Option<LinkState>,
    /// The card's revocation count this lease has seen (see [`Lease::ended`]).
    revocations_seen: AtomicU64,
    /// What this lease sees of the card counts towards marking it bad ([`Lease::in_session`]).
    judges: bool,
    /// Whom the holder acts for, its history row and the row's counters ([`record`]).
    rec: Box<record::LeaseRecord>,
    /// This lease may use a secret's last try ([`Lease::allow_last_try`]).
    last_try: bool,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lease(card {} for {})", self.number, self.holder)
    }
}

impl Lease {
    /// Front-panel number 1–256.
    pub fn number(&self) -> CardNo {
        self.number
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    fn entry(&self) -> &Entry {
        self.cards.entry(self.number)
    }

    /// Passes the lease to another holder without freeing the card in between.
    pub fn handover(&mut self, holder: Holder) {
        *self.entry().holder.lock().unwrap() = Some(holder.clone());
        // The old holder's row ends, the new one's begins.
        self.end_row(EndReason::Released);
        self.rec.pending = self.cards.begin_row(self.number, &holder, &self.rec.owner);
        self.holder = holder;
        self.cards.changed();
    }

    /// Whether a new session may start this card, from the pool's slot states: an empty slot
    /// and a card marked bad are refused at once, naming why. A card marked bad whose slot
    /// reads inserted again was pulled and put back: it is tried afresh.
    pub async fn admit(&self) -> Result<(), StartError> {
        let states = self.cards.link().states().await?;
        self.admit_in(states[self.number.index()])
    }

    /// [`Lease::admit`] with the slot's state already read.
    pub fn admit_in(&self, state: SlotState) -> Result<(), StartError> {
        let n = self.number;
        if !state.has_card() {
            return Err(StartError::Empty(n));
        }
        let Some(why) = self.cards.bad(n) else {
            return Ok(());
        };
        if state == SlotState::Inserted {
            log::info!("card {n} was re-inserted");
            self.cards.clear_bad(n);
            return Ok(());
        }
        Err(StartError::Bad { card: n, why })
    }

    /// Powers up and resets the card; answers its ATR. A card marked bad is refused at once.
    /// After a command that changed the card's identity (an eUICC's profile switched, a file
    /// written), the card's ICCID and IMSI are read again first and the card restarted, so
    /// that every front end shows the card as it now is and the holder gets it fresh.
    pub async fn start(&mut self) -> Result<Vec<u8>, StartError> {
        let atr = self.start_once().await?;
        if !self.entry().identity_stale.swap(false, Ordering::Relaxed) {
            return Ok(atr);
        }
        let n = self.number;
        let before = self.cards.known(n);
        match self.read_facts(&atr, None, REFRESH_DEADLINE).await {
            Ok(files) => {
                if files.iccid != before.iccid || files.imsi != before.imsi {
                    log::info!(
                        "card {n}: after a change of its profile or files: ICCID {}, IMSI {} \
                         (were {}, {})",
                        files.iccid.as_deref().unwrap_or("none"),
                        files.imsi.as_deref().unwrap_or("none"),
                        before.iccid.as_deref().unwrap_or("unknown"),
                        before.imsi.as_deref().unwrap_or("unknown"),
                    );
                }
            }
            Err(e) => {
                log::warn!("card {n}: reading its identity again after a change failed: {e}");
                self.cards.record(n, &atr, &facts::Read::default());
            }
        }
        self.stop().await?;
        self.start_once().await
    }

    async fn start_once(&mut self) -> Result<Vec<u8>, StartError> {
        let n = self.number;
        if let Some(why) = self.cards.bad(n) {
            return Err(StartError::Bad { card: n, why });
        }
        // Marked before the request goes out: if this future is dropped mid-way the card may
        // be running, and dropping the lease must stop it.
        self.started.store(true, Ordering::Relaxed);
        self.started_on = Some(self.cards.link().state());
        let stats = &self.entry().stats;
        match self.card.start().await {
            Ok(atr) => {
                stats.starts.fetch_add(1, Ordering::Relaxed);
                self.open_row();
                self.entry().health.lock().unwrap().started();
                self.entry().known.lock().unwrap().atr = Some(Atr::from(&atr[..]));
                for o in &self.cards.inner.observers {
                    o.atr(n.get(), &atr);
                }
                Ok(atr)
            }
            Err(e) => {
                stats.start_failures.fetch_add(1, Ordering::Relaxed);
                let due = if self.judges {
                    self.entry()
                        .health
                        .lock()
                        .unwrap()
                        .start_failed(&e.to_string())
                } else {
                    None
                };
                if let Some(why) = due {
                    if self.cards.inserted(n).await && self.cards.mark_bad(n, why).await {
                        self.started.store(false, Ordering::Relaxed);
                    }
                }
                Err(e.into())
            }
        }
    }

    /// [`Lease::admit`] then [`Lease::start`], without asking the pool for its slot states
    /// unless it is needed: for a card marked bad (was it re-inserted?) and after a failed
    /// start (was the slot empty?). For requests that come often, such as authentications:
    /// the pool answers one state query at a time, so one per request would make every card's
    /// requests wait for each other's.
    pub async fn start_admitted(&mut self) -> Result<Vec<u8>, StartError> {
        if self.cards.bad(self.number).is_some() {
            self.admit().await?;
        }
        match self.start().await {
            Err(e @ StartError::Pool(_)) => match self.cards.link().states().await {
                Ok(st) if !st[self.number.index()].has_card() => {
                    Err(StartError::Empty(self.number))
                }
                _ => Err(e),
            },
            r => r,
        }
    }

    /// Powers the card down (a card marked bad is left alone: it is not running).
    pub async fn stop(&mut self) -> Result<(), PoolError> {
        let r = self.cards.stop_card(self.number).await;
        if r.is_ok() {
            self.started.store(false, Ordering::Relaxed);
        }
        r
    }

    /// Stops the card if it runs and starts it again; answers the new ATR.
    pub async fn restart(&mut self) -> Result<Vec<u8>, StartError> {
        if self.is_started() {
            self.stop().await?;
        }
        self.start().await
    }

    /// This holder keeps a session on the card (a vpcd reader, a remote bank client): its
    /// failed starts and the exchanges that lose the card's T=0 state count towards marking
    /// the card bad ([`policy`]). One-shot uses (a scan, an API request) are not counted, so
    /// that a burst of them against a misbehaving pool does not mark cards that are fine.
    pub fn in_session(&mut self) {
        self.judges = true;
    }

    /// Leave the card running when this lease ends (it was running before, or the holder
    /// asked for it).
    pub fn keep_running(&mut self) {
        self.keep = true;
    }

    /// This lease may use the last try of a PIN, PUK or ADM key (`--allow-last-try`): the
    /// last-try guard lets its commands through. Write protection still holds.
    pub fn allow_last_try(&mut self) {
        self.last_try = true;
    }

    /// The card layer's rules for `cmd` ([`guard`]): `Err` refuses it without sending. May
    /// first ask the card a retry counter (VERIFY without data, which uses no try).
    async fn guarded(
        &self,
        cmd: &[u8],
        kind: guard::Kind,
        deadline: Duration,
        front: Front,
    ) -> Result<(), ExchangeError> {
        if matches!(
            kind,
            guard::Kind::Other | guard::Kind::Asks(_) | guard::Kind::GsmStatus
        ) {
            return Ok(());
        }
        let settings = self.cards.settings(self.number);
        let mut asked = false;
        loop {
            let d = self
                .entry()
                .guard
                .lock()
                .unwrap()
                .check(cmd, settings, self.last_try);
            match d {
                guard::Decision::Send => return Ok(()),
                guard::Decision::AskFirst(q) if !asked => {
                    asked = true;
                    let resp = self.card.transmit(&q, deadline).await?;
                    for o in &self.cards.inner.observers {
                        o.exchange(self.number.get(), front, &q, &resp);
                    }
                    self.entry().guard.lock().unwrap().answered(&q, &resp);
                }
                guard::Decision::AskFirst(_) => return Ok(()),
                guard::Decision::Refuse(r) => {
                    log::info!(
                        "card {} ({}): {} {r}",
                        self.number,
                        self.holder,
                        hex::encode_upper(cmd)
                    );
                    *self.entry().refused.lock().unwrap() = Some(r.short());
                    // The history says it too (issue 20 §3), as an event of this lease.
                    self.cards
                        .refused_event(self.number, self.rec.owner.user.clone(), r.reason());
                    return Err(ExchangeError::Guarded {
                        sw: r.status(),
                        why: r.to_string(),
                    });
                }
            }
        }
    }

    /// Resolves when this session must end: the pool connection the card was started on is
    /// gone, or the card was taken from this holder. Cancel-safe: select on it in a loop.
    pub async fn ended(&self) -> Ended {
        let mut link = self.cards.link().watch();
        let mut revoked = self.entry().revoked.subscribe();
        loop {
            let count = *revoked.borrow_and_update();
            if count > self.revocations_seen.load(Ordering::Relaxed) {
                self.revocations_seen.store(count, Ordering::Relaxed);
                let (why, reason) = self.entry().revoked_why.lock().unwrap().clone();
                self.note_revoked(reason);
                return Ended::Revoked(why);
            }
            let now = *link.borrow_and_update();
            if self.started_on.is_some_and(|on| on != now) {
                return Ended::LinkChanged(now);
            }
            tokio::select! {
                r = link.changed() => if r.is_err() {
                    return Ended::LinkChanged(LinkState::Closed);
                },
                _ = revoked.changed() => {}
            }
        }
    }

    /// The one exchange path: `cmd` as the application sent it; answers `data ‖ SW1 SW2`.
    /// Bounded by `deadline` as a whole, unless the card keeps sending NULL bytes ("wait"):
    /// then up to the link's NULL wait cap ([`crate::pool::LinkOptions::null_wait_cap`]). In a
    /// session ([`Lease::in_session`]), an exchange
    /// that loses the card's T=0 state counts towards marking the card bad.
    pub async fn transmit(
        &self,
        cmd: &[u8],
        deadline: Duration,
        front: Front,
    ) -> Result<Vec<u8>, ExchangeError> {
        let t0 = Instant::now();
        // The exchange bounds itself; this bounds the wait for the card's lock (and the
        // guard's counter query) as well.
        let opts = self.cards.link().options();
        let bound = deadline.max(opts.null_wait_cap) + opts.reply_timeout;
        // Once per exchange: the guard, its counters and the identity refresh all need it.
        let kind = guard::classify(cmd);
        let send = async {
            self.guarded(cmd, kind, deadline, front).await?;
            self.card.transmit(cmd, deadline).await
        };
        let result = match tokio::time::timeout(bound, send).await {
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
        self.rec.tally.count(cmd, &result);
        if front != Front::Scan {
            // It may have written the card: its facts are read afresh next time.
            self.entry().touched.store(true, Ordering::Relaxed);
        }
        fs.latency.observe(t0.elapsed());
        match &result {
            Ok(resp) => {
                if changes::changes_identity(kind, resp) {
                    self.entry().identity_stale.store(true, Ordering::Relaxed);
                }
                for o in &self.cards.inner.observers {
                    o.exchange(self.number.get(), front, cmd, resp);
                }
                if !matches!(kind, guard::Kind::Other) {
                    self.entry().guard.lock().unwrap().answered(cmd, resp);
                }
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                stats.errors_by_front[front.index()].fetch_add(1, Ordering::Relaxed);
                if self.judges && lost_t0(e) {
                    let due = self.entry().health.lock().unwrap().lost_t0(Instant::now());
                    if let Some(why) = due {
                        if self.cards.mark_bad(self.number, why).await {
                            self.started.store(false, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        result
    }

    /// Starts the card and reads ATR, ICCID, IMSI and what the card is ([`facts`]: type, SPN,
    /// MSISDN, PIN1/PUK1, EID, without using a PIN try); records them. The card is left
    /// running, with files selected: restart it before handing it on.
    pub async fn read_identity(&mut self, deadline: Duration) -> Result<Identity, ReadError> {
        // Read here anyway: no second reading at this start.
        self.entry().identity_stale.store(false, Ordering::Relaxed);
        let stable = self.cards.stable(self.number);
        let atr = self.start_once().await?;
        let read = self.read_facts(&atr, stable, deadline).await?;
        Ok(Identity {
            atr: Atr::from(atr),
            iccid: read.iccid,
            imsi: read.imsi,
            facts: read.facts,
        })
    }

    /// What the card just started (ATR `atr`) is ([`facts`]; `stable`: what need not be read
    /// again), recorded as what is known of it.
    async fn read_facts(
        &mut self,
        atr: &[u8],
        stable: Option<facts::Stable>,
        deadline: Duration,
    ) -> Result<facts::Read, ReadError> {
        let mut r = facts::Reading::new(atr, stable);
        self.run_reading(&mut r, deadline).await?;
        log::debug!(
            "card {}: facts read in {} exchanges{}",
            self.number,
            r.exchanges(),
            if r.reused() {
                " (type, SPN, MSISDN, EID as known)"
            } else {
                ""
            }
        );
        let read = r.into_read();
        self.cards.record(self.number, atr, &read);
        Ok(read)
    }

    /// Sends each command `r` asks for and gives it the answers, until it has read all.
    async fn run_reading(
        &mut self,
        r: &mut facts::Reading,
        deadline: Duration,
    ) -> Result<(), ReadError> {
        while let Some((what, cmd)) = r.command() {
            let resp = self
                .transmit(&cmd, deadline, Front::Scan)
                .await
                .map_err(|error| identity::ReadError::Exchange { what, error })?;
            r.answer(&resp).map_err(|e| identity::ReadError::Status {
                what: e.what,
                sw: e.got,
            })?;
        }
        Ok(())
    }

    /// Reads the details of the card this lease started and read ([`Cards::read_details`]).
    pub async fn read_details(&mut self, deadline: Duration) -> Result<(), ReadError> {
        let k = self.cards.known(self.number);
        let mut r = facts::Reading::details(k.facts.kind, k.facts.pin1);
        self.run_reading(&mut r, deadline).await?;
        log::debug!(
            "card {}: details read in {} exchanges",
            self.number,
            r.exchanges()
        );
        self.cards.record_details(self.number, &r.into_read());
        Ok(())
    }

    /// Stops the card if this lease started it (unless it is to keep running), then frees it.
    pub async fn release(mut self) {
        if self.is_started() && !self.keep {
            if let Err(e) = self.stop().await {
                log::debug!("card {}: stop on release: {e}", self.number);
            }
        }
        self.released = true;
        self.finish_row();
        self.cards.free(self.number);
    }
}

/// Identity read from one card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub atr: Atr,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    pub facts: facts::Facts,
}

/// Whether a failed exchange says something about the card: its T=0 state was lost. A lost
/// pool link says nothing about the card.
fn lost_t0(e: &ExchangeError) -> bool {
    e.card_touched()
        && !matches!(
            e,
            ExchangeError::Pool {
                error: PoolError::LinkLost
                    | PoolError::Down
                    | PoolError::Write(_)
                    | PoolError::BrokenFrame(_),
                ..
            }
        )
}

/// The whole daemon's lease drops go through here so a dropped lease (a task aborted, an HTTP
/// client gone) still stops its card before the card is free again.
impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.finish_row();
        let n = self.number;
        if !self.is_started() || self.keep {
            self.cards.free(n);
            return;
        }
        let cards = self.cards.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = cards.stop_card(n).await {
                        log::debug!("card {n}: stop after its holder went away: {e}");
                    }
                    cards.free(n);
                });
            }
            Err(_) => cards.free(n),
        }
    }
}
