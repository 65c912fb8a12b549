//! A virtual reader: one vpcd connection bound to one card of the pool.
//!
//! The reader connects to vpcd only while its card can be used, so pcscd shows "card present"
//! exactly then; closing the connection is how pcscd learns the card is gone (vpcd has no other
//! way, and an empty ATR would confuse pcscd). Every command gets an answer within
//! `command_timeout`: the card's, or `6F 00` with the cause in the log.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::inventory::read_identity;
use crate::pool::{Card, ExchangeError, Link, LinkState, Slot};
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
    pub binding: Binding,
    /// Longest time any command from PC/SC waits for its answer.
    pub command_timeout: Duration,
    pub reset: ResetPolicy,
    pub quickack: bool,
    /// Pause between attempts to find/start the card or reach vpcd.
    pub retry: Duration,
}

/// Counters of one reader (for logs, tests, the soak run).
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub commands: AtomicU64,
    pub errors: AtomicU64,
    pub resets: AtomicU64,
    pub sessions: AtomicU64,
    pub refused: AtomicU64,
}

/// ICCID and IMSI read from a card.
type Ids = (Option<String>, Option<String>);

/// Cards claimed by readers and identities already read, shared by the readers of one daemon
/// so that looking for a card by ICCID/IMSI never restarts a card another reader is using.
#[derive(Default)]
pub struct Directory {
    claimed: Mutex<HashSet<Slot>>,
    known: Mutex<HashMap<Slot, Ids>>,
    search: tokio::sync::Mutex<()>,
}

/// Longer than pcscd's presence poll of vpcd readers (400 ms).
const REMOVAL_GRACE: Duration = Duration::from_millis(600);

/// Why a session with vpcd ended.
#[derive(Debug)]
enum End {
    VpcdClosed(String),
    CardGone(String),
    /// The card was reset after a failed exchange; reconnect so pcscd reports it.
    CardReset,
    LinkDown,
}

pub struct Reader {
    pub name: String,
    link: Link,
    cfg: ReaderConfig,
    dir: Arc<Directory>,
    stats: Arc<ReaderStats>,
}

impl Reader {
    pub fn new(name: String, link: Link, cfg: ReaderConfig, dir: Arc<Directory>) -> Reader {
        Reader {
            name,
            link,
            cfg,
            dir,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<ReaderStats> {
        self.stats.clone()
    }

    /// Serves forever: find and start the card, show it through vpcd, repeat after any loss.
    pub async fn run(self) {
        // Give the pool link its first connection before reporting it missing.
        self.link.wait_up(self.cfg.retry * 4).await;
        let mut last_problem = String::new();
        loop {
            let (card, atr, started_on) = match self.acquire().await {
                Ok(x) => x,
                Err(problem) => {
                    if problem != last_problem {
                        log::warn!("{}: {} unavailable: {problem}", self.name, self.cfg.binding);
                        last_problem = problem;
                    }
                    self.pause_or_link_change().await;
                    continue;
                }
            };
            last_problem.clear();
            let conn = match self.connect_vpcd().await {
                Some(c) => c,
                None => {
                    self.release(&card).await;
                    continue;
                }
            };
            self.stats.sessions.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "{}: {} ({}) present, ATR {}",
                self.name,
                self.cfg.binding,
                card.slot(),
                hex::encode_upper(&atr)
            );
            let (end, conn) = self.session(conn, &card, atr, started_on).await;
            if let Some(conn) = conn {
                conn.close_draining(Duration::from_millis(30), &t0::sw::TECHNICAL_PROBLEM)
                    .await;
            }
            match &end {
                End::VpcdClosed(why) => {
                    log::info!("{}: vpcd closed the connection ({why})", self.name)
                }
                End::CardGone(why) => log::warn!("{}: card gone: {why}", self.name),
                End::CardReset => log::info!("{}: card reset after a failed exchange", self.name),
                End::LinkDown => log::warn!("{}: pool link down: card shown as removed", self.name),
            }
            self.release(&card).await;
            // VpcdClosed: pcscd going away (socket activation, restart): don't spin. Otherwise
            // we closed: stay away until pcscd has polled the reader (every ~400 ms) and seen the
            // card removed, or a quick comeback could look to it like the same card, and its
            // applications would go on with a card that was reset under them.
            let pause = match end {
                End::VpcdClosed(_) => self.cfg.retry,
                _ => REMOVAL_GRACE,
            };
            tokio::time::sleep(pause).await;
        }
    }

    async fn release(&self, card: &Card) {
        self.dir.claimed.lock().unwrap().remove(&card.slot());
    }

    /// Waits `retry`, or less if the link changes state.
    async fn pause_or_link_change(&self) {
        let mut w = self.link.watch();
        w.borrow_and_update();
        let _ = tokio::time::timeout(self.cfg.retry, w.changed()).await;
    }

    /// Finds the bound card and starts it; answers its ATR.
    async fn acquire(&self) -> Result<(Card, Vec<u8>, LinkState), String> {
        let started_on = self.link.state();
        if !matches!(started_on, LinkState::Up { .. }) {
            return Err("no connection to the pool".into());
        }
        let card = match &self.cfg.binding {
            Binding::Card(n) => {
                let slot = Slot::from_card(*n).ok_or("no such card")?;
                if !self.dir.claimed.lock().unwrap().insert(slot) {
                    return Err(format!("{slot} is used by another reader"));
                }
                self.link.card(slot)
            }
            other => self.search(other).await?,
        };
        match card.start().await {
            Ok(atr) => Ok((card, atr, started_on)),
            Err(e) => {
                self.dir.claimed.lock().unwrap().remove(&card.slot());
                self.dir.known.lock().unwrap().remove(&card.slot());
                Err(format!("{} did not start: {e}", card.slot()))
            }
        }
    }

    /// Looks for the card with this ICCID/IMSI among the unclaimed cards; claims it.
    async fn search(&self, binding: &Binding) -> Result<Card, String> {
        let _one_at_a_time = self.dir.search.lock().await;
        let matches = |id: &Ids| match binding {
            Binding::Iccid(want) => id.0.as_deref() == Some(want.as_str()),
            Binding::Imsi(want) => id.1.as_deref() == Some(want.as_str()),
            Binding::Card(_) => false,
        };
        let states = self.link.states().await.map_err(|e| e.to_string())?;
        let timeout = self.cfg.command_timeout;
        for (i, st) in states.iter().enumerate() {
            let slot = Slot(i as u8);
            if !st.has_card() || self.dir.claimed.lock().unwrap().contains(&slot) {
                continue;
            }
            let cached = self.dir.known.lock().unwrap().get(&slot).cloned();
            if cached.as_ref().is_some_and(|id| !matches(id)) {
                continue;
            }
            // Unknown, or known to match (cards move: read it again to be sure).
            let card = self.link.card(slot);
            let id = match read_identity(&card, timeout).await {
                Ok(id) => (id.iccid, id.imsi),
                Err(e) => {
                    log::debug!("{}: {slot}: {e}", self.name);
                    continue;
                }
            };
            self.dir.known.lock().unwrap().insert(slot, id.clone());
            if matches(&id) && self.dir.claimed.lock().unwrap().insert(slot) {
                return Ok(card);
            }
            let _ = card.stop().await;
        }
        Err("no inserted card has it".into())
    }

    /// Connects to vpcd, retrying with back-off; gives up (None) if the pool link drops.
    async fn connect_vpcd(&self) -> Option<Connection> {
        let mut backoff = Duration::from_millis(50);
        let mut logged = false;
        loop {
            if !matches!(self.link.state(), LinkState::Up { .. }) {
                return None;
            }
            match Connection::connect(&self.cfg.vpcd, self.cfg.quickack, Duration::from_secs(2))
                .await
            {
                Ok(c) => return Some(c),
                Err(e) => {
                    if !logged {
                        log::info!("{}: waiting for vpcd at {} ({e})", self.name, self.cfg.vpcd);
                        logged = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.cfg.retry.max(Duration::from_millis(50)));
                }
            }
        }
    }

    /// Stops (if running) and starts the card; answers the new ATR.
    async fn restart(&self, card: &Card, running: bool) -> Result<Vec<u8>, crate::pool::PoolError> {
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        if running {
            card.stop().await?;
        }
        card.start().await
    }

    /// Serves vpcd until the session ends; hands the connection back when it is still open
    /// (the card went away), to be closed without losing a command.
    async fn session(
        &self,
        mut conn: Connection,
        card: &Card,
        atr: Vec<u8>,
        started_on: LinkState,
    ) -> (End, Option<Connection>) {
        let end = self.serve_events(&mut conn, card, atr, started_on).await;
        match end {
            End::VpcdClosed(_) => (end, None),
            _ => (end, Some(conn)),
        }
    }

    async fn serve_events(
        &self,
        conn: &mut Connection,
        card: &Card,
        mut atr: Vec<u8>,
        started_on: LinkState,
    ) -> End {
        let mut link = self.link.watch();
        // `started_on` is the pool connection the card was started on: after a reconnect the
        // pool may have powered the card off, so the session ends.
        if *link.borrow_and_update() != started_on {
            return End::LinkDown;
        }
        let mut powered = true;
        loop {
            let ev = tokio::select! {
                ev = conn.next_event() => ev,
                changed = link.changed() => {
                    if changed.is_err() || *link.borrow_and_update() != started_on {
                        return End::LinkDown;
                    }
                    continue;
                }
            };
            let ev = match ev {
                Ok(Some(ev)) => ev,
                Ok(None) => return End::VpcdClosed("end of stream".into()),
                Err(e) => return End::VpcdClosed(e.to_string()),
            };
            match ev {
                Event::GetAtr => {
                    if let Err(e) = conn.reply(&atr).await {
                        return End::VpcdClosed(e.to_string());
                    }
                }
                Event::PowerOn | Event::Reset => {
                    log::info!("{}: {ev:?}", self.name);
                    if !powered || self.cfg.reset == ResetPolicy::Restart {
                        match self.restart(card, powered).await {
                            Ok(a) => atr = a,
                            Err(e) => return End::CardGone(format!("restart failed: {e}")),
                        }
                        powered = true;
                    }
                }
                Event::PowerOff => {
                    log::info!("{}: PowerOff", self.name);
                    if let Err(e) = card.stop().await {
                        return End::CardGone(format!("stop failed: {e}"));
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
                        return End::VpcdClosed(e.to_string());
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
                        match self.restart(card, false).await {
                            Ok(a) => atr = a,
                            Err(e) => return End::CardGone(format!("start failed: {e}")),
                        }
                        powered = true;
                    }
                    log::debug!("{}: > {}", self.name, hex::encode_upper(&cmd));
                    let bound = self.cfg.command_timeout;
                    let result = match tokio::time::timeout(bound, card.transmit(&cmd, bound)).await
                    {
                        Ok(r) => r,
                        Err(_) => Err(ExchangeError::Deadline {
                            ms: bound.as_millis() as u64,
                            seen: Vec::new(),
                        }),
                    };
                    let (answer, touched) = match result {
                        Ok(resp) => {
                            log::debug!("{}: < {}", self.name, hex::encode_upper(&resp));
                            (resp, false)
                        }
                        Err(e) => {
                            self.stats.errors.fetch_add(1, Ordering::Relaxed);
                            if matches!(e, ExchangeError::Refused(_)) {
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
                        return End::VpcdClosed(e.to_string());
                    }
                    if touched {
                        // The card's T=0 state is unknown: restart it and make pcscd see the
                        // card removed, so no application goes on with lost selections or PIN.
                        let _ = card.stop().await;
                        return End::CardReset;
                    }
                }
            }
        }
    }
}
