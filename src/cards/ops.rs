//! The operations the control API offers and the command line runs — scan, apdu, stop —
//! written once, over [`Cards`]. The daemon runs them on its registry (its leases, what it
//! knows of each card); a command given `--pool` runs them on a registry around a pool
//! connection of its own, where nobody else's leases exist. The rows are the same either way.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use serde::{Deserialize, Serialize};

use super::{Cards, Front, Holder, Lease, LeaseError, ReadError, StartError};
use crate::pool::{LinkState, PoolError, SlotState};
use crate::t0::{Refusal, Tpdu};
use crate::users::Who;
use crate::values::{Atr, CardNo, Hex};

/// Most commands in one `apdu` run.
pub const MAX_COMMANDS: usize = 256;

// The rows these operations answer (also the API's and `--json`'s, see `crate::rows`).

/// One card of a scan (`POST /api/v1/scan`, `simpool scan --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRow {
    pub card: CardNo,
    pub state: SlotState,
    pub atr: Option<Atr>,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    /// Type, SPN, MSISDN, PIN1/PUK1, EID and what PIN1 hides ([`super::facts`]).
    #[serde(flatten)]
    pub facts: super::facts::Facts,
    /// Who holds the card (then it was reported from what is known, not read).
    pub holder: Option<String>,
    pub error: Option<String>,
    /// The card's labels (`{}` without any, or without a history).
    #[serde(default)]
    pub labels: crate::history::Labels,
}

/// One card a stop dealt with (`POST /api/v1/cards/{n}/stop`, `/api/v1/stop-all`,
/// `simpool stop --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRow {
    pub card: CardNo,
    pub state: Option<SlotState>,
    pub stopped: bool,
    pub holder: Option<String>,
    pub error: Option<String>,
}

/// What an `apdu` run answered (`simpool apdu --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApduReply {
    pub card: CardNo,
    pub atr: Atr,
    /// One per command run: `data ‖ SW1 SW2`, or the status word simpool answered instead.
    pub responses: Vec<Hex>,
    /// One per response: why it is simpool's and not the card's, or `null`.
    pub errors: Vec<Option<String>>,
}

// ------------------------------------------------------------------------------------ scan

/// A scan under way: rows come as cards finish ([`Scan::next`]).
pub struct Scan {
    total: usize,
    rows: mpsc::UnboundedReceiver<ScanRow>,
    cancel: watch::Sender<bool>,
    tasks: JoinSet<Outcome>,
}

/// What one card's task did, for an interrupted scan's account.
#[derive(Debug, Default)]
struct Outcome {
    /// Cut short before its row.
    cut: bool,
    /// It stopped the card it had started (or tried: the error).
    stopped: Option<Result<(), String>>,
}

/// What an interrupted scan did.
#[derive(Debug, Default)]
pub struct Cancelled {
    /// Rows finished but not yet taken.
    pub rows: Vec<ScanRow>,
    /// Cards cut short whose start this scan undid.
    pub stopped: usize,
    /// Cards that could not be stopped, with why.
    pub failed: Vec<String>,
}

/// Starts reading ATR, ICCID and IMSI of every inserted card, concurrently, each under a lease.
/// A card someone holds is reported from what is known (with its holder) and not touched; a
/// card this scan started that was idle before is stopped again.
pub async fn scan(cards: &Cards, deadline: Duration) -> Result<Scan, PoolError> {
    scan_scoped(cards, ScanScope::default(), deadline).await
}

/// Which cards a scan reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanScope {
    /// Only these (default: every inserted card).
    pub cards: Option<Vec<CardNo>>,
    /// Only idle cards: those someone holds (listed from what is known otherwise) and those
    /// already running (someone may be using them) are left out.
    pub free: bool,
    /// Read the details (SPN, MSISDN, EID) of a card read for the first time in its scan
    /// lease too, before its row: for a scan over a pool connection of its own, which is
    /// over once it ends (`scan --pool`). The daemon's scans leave them out and read them
    /// afterwards ([`Cards::read_details`]): the scan is not slowed by them.
    pub details: bool,
}

impl ScanScope {
    fn takes(&self, cards: &Cards, n: CardNo, state: SlotState) -> bool {
        state.has_card()
            && self.cards.as_ref().is_none_or(|l| l.contains(&n))
            && !(self.free && (state == SlotState::Working || cards.holder(n).is_some()))
    }
}

/// As [`scan`], of the cards of `scope`.
pub async fn scan_scoped(
    cards: &Cards,
    scope: ScanScope,
    deadline: Duration,
) -> Result<Scan, PoolError> {
    let states = cards.link().states().await?;
    let (tx, rows) = mpsc::unbounded_channel();
    let (cancel, cancelled) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for n in CardNo::all() {
        let state = states[n.index()];
        if !scope.takes(cards, n, state) {
            continue;
        }
        let (cards, tx, cancelled) = (cards.clone(), tx.clone(), cancelled.clone());
        let details = scope.details;
        tasks.spawn(
            async move { scan_one(&cards, n, state, details, deadline, &tx, cancelled).await },
        );
    }
    Ok(Scan {
        total: tasks.len(),
        rows,
        cancel,
        tasks,
    })
}

async fn scan_one(
    cards: &Cards,
    n: CardNo,
    state: SlotState,
    details: bool,
    deadline: Duration,
    tx: &mpsc::UnboundedSender<ScanRow>,
    mut cancelled: watch::Receiver<bool>,
) -> Outcome {
    let mut lease = match cards.lease(n, Holder::Scan) {
        Ok(l) => l,
        Err(e) => {
            let holder = cards.holder_text(n).unwrap_or_else(|| e.holder_text());
            let k = cards.known(n);
            let _ = tx.send(ScanRow {
                card: n,
                state,
                atr: k.atr,
                iccid: k.iccid,
                imsi: k.imsi,
                facts: k.facts,
                holder: Some(holder),
                error: None,
                labels: cards.labels_of(n),
            });
            return Outcome::default();
        }
    };
    if state == SlotState::Working {
        // Running before the scan (outside this registry): leave it running.
        lease.keep_running();
    }
    let read = async {
        lease.admit_in(state)?;
        let id = lease.read_identity(deadline).await?;
        if details && cards.details_wanted(n) {
            lease.read_details(deadline).await?;
            return Ok(super::Identity {
                facts: cards.known(n).facts,
                ..id
            });
        }
        Ok(id)
    };
    let read = tokio::select! {
        r = read => Some(r),
        _ = cancelled.wait_for(|c| *c) => None,
    };
    let mut outcome = Outcome {
        cut: read.is_none(),
        stopped: None,
    };
    if lease.is_started() && state != SlotState::Working {
        outcome.stopped = Some(lease.stop().await.map_err(|e| format!("card {n}: {e}")));
    }
    lease.release().await;
    if let Some(r) = read {
        let mut row = scan_row(n, state, r);
        row.labels = cards.labels_of(n);
        let _ = tx.send(row);
    }
    outcome
}

fn scan_row(n: CardNo, state: SlotState, r: Result<super::Identity, ReadError>) -> ScanRow {
    let mut row = ScanRow {
        card: n,
        state,
        atr: None,
        iccid: None,
        imsi: None,
        facts: Default::default(),
        holder: None,
        error: None,
        labels: Default::default(),
    };
    match r {
        Ok(id) => {
            row.atr = Some(id.atr);
            row.iccid = id.iccid;
            row.imsi = id.imsi;
            row.facts = id.facts;
        }
        Err(e) => row.error = Some(e.to_string()),
    }
    row
}

impl Scan {
    /// Inserted cards, that is rows to come.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The next card finished; `None` when every card is.
    pub async fn next(&mut self) -> Option<ScanRow> {
        self.rows.recv().await
    }

    /// Every row, sorted by card.
    pub async fn collect(mut self) -> Vec<ScanRow> {
        let mut out = Vec::with_capacity(self.total);
        while let Some(r) = self.next().await {
            out.push(r);
        }
        while self.tasks.join_next().await.is_some() {}
        out.sort_by_key(|r| r.card);
        out
    }

    /// Cuts the scan short: reads still going on are abandoned, the cards they started are
    /// stopped again (waited for), and the rows finished meanwhile are handed back.
    pub async fn cancel(mut self) -> Cancelled {
        let _ = self.cancel.send(true);
        let mut c = Cancelled::default();
        while let Some(done) = self.tasks.join_next().await {
            let Ok(o) = done else { continue };
            match o.stopped {
                Some(Ok(())) if o.cut => c.stopped += 1,
                Some(Err(e)) if o.cut => c.failed.push(e),
                _ => {}
            }
        }
        while let Ok(r) = self.rows.try_recv() {
            c.rows.push(r);
        }
        c
    }
}

impl Cards {
    /// ATR, ICCID and IMSI of every inserted card, sorted by card (see [`scan`]).
    pub async fn scan(&self, deadline: Duration) -> Result<Vec<ScanRow>, PoolError> {
        Ok(scan(self, deadline).await?.collect().await)
    }

    /// As [`Cards::scan`], of the cards of `scope`.
    pub async fn scan_in(
        &self,
        scope: ScanScope,
        deadline: Duration,
    ) -> Result<Vec<ScanRow>, PoolError> {
        Ok(scan_scoped(self, scope, deadline).await?.collect().await)
    }
}

// ------------------------------------------------------------------------------------ apdu

/// A command of an `apdu` run that cannot be sent, named: known before any card is touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCommand {
    #[error("bad hex {0:?}: want the command's bytes in hex")]
    NotHex(String),
    #[error("{text}: {refusal}")]
    Refused { text: String, refusal: Refusal },
    #[error("want 1-{MAX_COMMANDS} commands, got {0}")]
    Count(usize),
}

/// Reads the commands of an `apdu` run: hex, spaces and colons allowed inside one. (A command
/// the T=0 terminal refuses is answered with its status word in the run, as an application
/// would get it; [`refuse_unsendable`] refuses such commands before the card is started.)
pub fn parse_commands<S: AsRef<str>>(texts: &[S]) -> Result<Vec<Vec<u8>>, BadCommand> {
    if texts.is_empty() || texts.len() > MAX_COMMANDS {
        return Err(BadCommand::Count(texts.len()));
    }
    texts
        .iter()
        .map(|t| {
            let t = t.as_ref();
            let clean: String = t
                .chars()
                .filter(|c| !c.is_whitespace() && *c != ':')
                .collect();
            match hex::decode(&clean) {
                Ok(b) if !b.is_empty() => Ok(b),
                _ => Err(BadCommand::NotHex(t.to_string())),
            }
        })
        .collect()
}

/// Refuses, before any card is touched, a command the T=0 terminal would refuse (too short,
/// INS 6X/9X, …): for the command line, where such a command is a mistake in the command.
pub fn refuse_unsendable(commands: &[Vec<u8>]) -> Result<(), BadCommand> {
    for c in commands {
        Tpdu::parse(c).map_err(|refusal| BadCommand::Refused {
            text: hex::encode_upper(c),
            refusal,
        })?;
    }
    Ok(())
}

/// Why an `apdu` run did not run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApduError {
    #[error(transparent)]
    Held(#[from] LeaseError),
    #[error("no connection to the pool")]
    LinkDown,
    /// Refused by the card layer's rules (a card marked bad, an empty slot).
    #[error(transparent)]
    Refused(StartError),
    #[error("card {card} did not start (mute?): {error}")]
    Start { card: CardNo, error: PoolError },
    #[error(transparent)]
    Pool(PoolError),
}

/// Starts card `n` under a lease of `holder`, runs `commands`, stops the card again unless
/// `keep`. One response per command run; a command refused without reaching the card gets
/// its status word and the run goes on, an error that leaves the card's T=0 state unknown
/// ends the run (the rest would be meaningless). The lease ends with the run: dropping this future frees the card (and stops
/// it unless `keep`).
pub async fn apdu(
    cards: &Cards,
    n: CardNo,
    holder: Holder,
    commands: &[Vec<u8>],
    keep: bool,
    timeout: Duration,
) -> Result<ApduReply, ApduError> {
    apdu_as(
        cards,
        n,
        holder,
        None,
        commands,
        ApduMode {
            keep,
            ..Default::default()
        },
        timeout,
    )
    .await
}

/// How an `apdu` run goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApduMode {
    /// Leave the card running after the run.
    pub keep: bool,
    /// Send GET RESPONSE on `61xx`/`9Fxx` and repeat on `6Cxx` as an application would
    /// ([`super::auto`]): one response per command, the final one.
    pub auto: bool,
    /// The lease may use a secret's last try (the last-try guard lets its commands through,
    /// see [`super::guard`]).
    pub allow_last_try: bool,
}

/// As [`apdu`], in a given mode.
pub async fn apdu_with(
    cards: &Cards,
    n: CardNo,
    holder: Holder,
    commands: &[Vec<u8>],
    mode: ApduMode,
    timeout: Duration,
) -> Result<ApduReply, ApduError> {
    apdu_as(cards, n, holder, None, commands, mode, timeout).await
}

/// [`apdu_with`] for a holder working for `who` (a card reserved by another user is refused).
pub async fn apdu_as(
    cards: &Cards,
    n: CardNo,
    holder: Holder,
    who: Option<&Who>,
    commands: &[Vec<u8>],
    mode: ApduMode,
    timeout: Duration,
) -> Result<ApduReply, ApduError> {
    let mut lease = cards.lease_as(n, holder, who)?;
    if mode.keep {
        lease.keep_running();
    }
    if mode.allow_last_try {
        lease.allow_last_try();
    }
    let reply = run_commands(&mut lease, commands, mode.auto, timeout).await;
    lease.release().await;
    reply
}

async fn run_commands(
    lease: &mut Lease,
    commands: &[Vec<u8>],
    auto: bool,
    timeout: Duration,
) -> Result<ApduReply, ApduError> {
    let n = lease.number();
    if !matches!(lease.cards.link().state(), LinkState::Up { .. }) {
        return Err(ApduError::LinkDown);
    }
    lease.admit().await.map_err(start_error(n))?;
    let atr = lease.start().await.map_err(start_error(n))?;
    let mut reply = ApduReply {
        card: n,
        atr: Atr::from(atr),
        responses: Vec::with_capacity(commands.len()),
        errors: Vec::with_capacity(commands.len()),
    };
    for cmd in commands {
        let mut follow = auto.then(|| super::auto::Auto::new(cmd));
        let mut sending = cmd.clone();
        let answer = loop {
            let r = lease.transmit(&sending, timeout, Front::Api).await;
            match (r, follow.as_mut()) {
                (Ok(r), Some(f)) => match f.next(&r) {
                    super::auto::Next::Send(next) => sending = next,
                    super::auto::Next::Done(answer) => break Ok(answer),
                },
                (r, _) => break r,
            }
        };
        match answer {
            Ok(r) => {
                reply.responses.push(Hex::from(r));
                reply.errors.push(None);
            }
            Err(e) => {
                // Reported in the reply; logged where it leaves (the API, the command line).
                log::debug!(
                    "{}: card {n}: {} failed: {e}",
                    lease.holder(),
                    hex::encode_upper(&sending)
                );
                reply.responses.push(Hex::from(e.status().to_vec()));
                reply.errors.push(Some(e.to_string()));
                if e.card_touched() {
                    break;
                }
            }
        }
    }
    Ok(reply)
}

/// A start's refusal or failure as an [`ApduError`] (a pool gone is the pool's, not the card's).
pub fn start_error(n: CardNo) -> impl Fn(StartError) -> ApduError {
    move |e| match e {
        StartError::Pool(error @ PoolError::Down | error @ PoolError::LinkLost) => {
            ApduError::Pool(error)
        }
        StartError::Pool(error) => ApduError::Start { card: n, error },
        e => ApduError::Refused(e),
    }
}

// ------------------------------------------------------------------------------------ stop

/// Stops card `n` under a lease of `by`; a card someone holds is left alone, naming its holder,
/// unless `force` (then it is stopped under its holder, whose session ends). `state` is the
/// slot's state as read before, for the row.
pub async fn stop(
    cards: &Cards,
    n: CardNo,
    state: Option<SlotState>,
    force: bool,
    by: &Holder,
) -> StopRow {
    stop_as(cards, n, state, force, by, None).await
}

/// [`stop`] on behalf of `who`: a card reserved by another user is refused, unless forced
/// (the caller checks that `who` may force).
pub async fn stop_as(
    cards: &Cards,
    n: CardNo,
    state: Option<SlotState>,
    force: bool,
    by: &Holder,
    who: Option<&Who>,
) -> StopRow {
    let row = |stopped: bool, holder: Option<String>, error: Option<String>| StopRow {
        card: n,
        state,
        stopped,
        holder,
        error,
    };
    if force {
        let (holder, r) = cards.force_stop_as(n, by, who).await;
        return row(
            r.is_ok(),
            holder.map(|h| h.to_string()),
            r.err().map(|e| e.to_string()),
        );
    }
    match cards.lease_as(n, by.clone(), who) {
        Ok(mut lease) => {
            let r = lease.stop().await;
            lease.release().await;
            row(r.is_ok(), None, r.err().map(|e| e.to_string()))
        }
        Err(e) => {
            let holder = cards.holder_text(n).unwrap_or_else(|| e.holder_text());
            row(false, Some(holder), Some(e.to_string()))
        }
    }
}

/// Stops every card the pool reports working (held ones only with `force`), concurrently; one
/// row each, sorted by card.
pub async fn stop_all(cards: &Cards, force: bool, by: &Holder) -> Result<Vec<StopRow>, PoolError> {
    stop_all_as(cards, force, by, None).await
}

/// [`stop_all`] on behalf of `who` (see [`stop_as`]).
pub async fn stop_all_as(
    cards: &Cards,
    force: bool,
    by: &Holder,
    who: Option<&Who>,
) -> Result<Vec<StopRow>, PoolError> {
    let states = cards.link().states().await?;
    let mut set = JoinSet::new();
    for n in CardNo::all() {
        let state = states[n.index()];
        if state == SlotState::Working {
            let (cards, by, who) = (cards.clone(), by.clone(), who.cloned());
            set.spawn(
                async move { stop_as(&cards, n, Some(state), force, &by, who.as_ref()).await },
            );
        }
    }
    let mut rows = Vec::with_capacity(set.len());
    while let Some(r) = set.join_next().await {
        if let Ok(row) = r {
            rows.push(row);
        }
    }
    rows.sort_by_key(|r| r.card);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_checked_before_any_card_is_touched() {
        assert_eq!(
            parse_commands(&["A0A40000023F00", "a0 a4 00 00 02 7f:20"]).unwrap(),
            vec![
                hex::decode("A0A40000023F00").unwrap(),
                hex::decode("A0A40000027F20").unwrap()
            ]
        );
        let e = refuse_unsendable(&parse_commands(&["A0A4"]).unwrap()).unwrap_err();
        assert!(
            matches!(
                e,
                BadCommand::Refused {
                    refusal: Refusal::Malformed(2),
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "A0A4: command of 2 bytes is malformed (T=0 needs CLA INS P1 P2 [P3 [data]])"
        );
        assert!(matches!(
            refuse_unsendable(&parse_commands(&["A06000000000"]).unwrap()),
            Err(BadCommand::Refused {
                refusal: Refusal::InvalidIns(0x60),
                ..
            })
        ));
        assert!(matches!(
            parse_commands(&["A0XYZ"]),
            Err(BadCommand::NotHex(_))
        ));
        assert!(matches!(
            parse_commands::<&str>(&[]),
            Err(BadCommand::Count(0))
        ));
    }
}
