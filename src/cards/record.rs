//! What the card layer tells the history (issue 19 §4) and the cards' labels (§5).
//!
//! - A history row per lease: its start is when [`Cards::lease`] hands the card out; it is
//!   written (open) once the card starts, so leases that did nothing (a start refused at once,
//!   an empty slot) add no rows, and rewritten whole when the lease is released or dropped
//!   (and, for a holder that keeps its lease across sessions, a vpcd reader, when a session
//!   ends because the card was removed, the link was lost or the card was taken away:
//!   [`Lease::close_row`]). The row's counters are the lease's own
//!   ([`Tally`]: a few relaxed atomics on the exchange path, nothing written there); the rows
//!   are written by the history's own thread, in batches.
//! - Events: a card marked bad, its mark cleared, the error indication sent (from the card
//!   layer's policy), inserted and removed ([`Cards::watch_slots`], from the pool's slot
//!   states).
//! - Labels live in the history's database; the card layer keeps a copy in memory, so
//!   [`Cards::labels_of`] (scan, status, the page, selections) never waits for the disk.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::history::{
    Counters, EndReason, Event, EventKind, History, HistoryError, HolderKind, Label, LabelError,
    Labels, LeaseBegan, LeaseEnded, LeaseId, OpenLease,
};
use crate::pool::{ExchangeError, LinkState};
use crate::values::CardNo;

use super::{Cards, Holder, Lease};

/// Whom a lease's holder acts for (issue 19 §2, §3). Both `None` until users and reservations
/// exist; recorded in the lease's history row when present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Owner {
    pub user: Option<String>,
    pub reservation: Option<ReservationRef>,
}

/// The reservation a lease is part of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReservationRef {
    pub id: u64,
    pub note: Option<String>,
}

/// A lease's counters, for its history row. Relaxed atomics: the exchange path only adds.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    exchanges: AtomicU64,
    errors: AtomicU64,
    authentications: AtomicU64,
    pin_failures: AtomicU64,
}

/// RUN GSM ALGORITHM (`A0 88`) and AUTHENTICATE (`00 88`, `80 88`) share the instruction byte.
const INS_AUTHENTICATE: u8 = 0x88;
const INS_VERIFY: u8 = 0x20;

/// A VERIFY the card refused for a wrong or blocked PIN: `63 Cx` (UICC), `98 04` (GSM: wrong
/// PIN), `98 40` (GSM: blocked), `69 83` (blocked). A VERIFY without data only asks for the
/// tries left (`63 Cx` too): not a failure.
fn pin_failed(cmd: &[u8], resp: &[u8]) -> bool {
    if cmd.len() <= 5 || cmd[1] != INS_VERIFY || resp.len() < 2 {
        return false;
    }
    let sw = (resp[resp.len() - 2], resp[resp.len() - 1]);
    matches!(
        sw,
        (0x63, 0xC0..=0xCF) | (0x98, 0x04) | (0x98, 0x40) | (0x69, 0x83)
    )
}

impl Tally {
    pub(crate) fn count(&self, cmd: &[u8], result: &Result<Vec<u8>, ExchangeError>) {
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        if cmd.len() >= 2 && cmd[1] == INS_AUTHENTICATE {
            self.authentications.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(resp) => {
                if pin_failed(cmd, resp) {
                    self.pin_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counts so far, and zero again (a new row starts from nothing).
    fn take(&self) -> Counters {
        let t = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        Counters {
            exchanges: t(&self.exchanges),
            errors: t(&self.errors),
            authentications: t(&self.authentications),
            pin_failures: t(&self.pin_failures),
        }
    }
}

/// A lease's side of the history, boxed (the lease stays small).
pub(crate) struct LeaseRecord {
    /// Whom the holder acts for.
    pub(crate) owner: Owner,
    /// The lease's history row, not yet written: it is once the card starts (or, at the end,
    /// if it exchanged), so that leases that did nothing add no rows.
    pub(crate) pending: Option<Box<LeaseBegan>>,
    /// The lease's open history row, once written.
    row: Option<Box<OpenLease>>,
    /// This row's counters.
    pub(crate) tally: Tally,
    /// Why the card was taken from this lease, once it was.
    end_hint: Mutex<Option<EndReason>>,
}

impl LeaseRecord {
    pub(crate) fn new(pending: Option<Box<LeaseBegan>>) -> LeaseRecord {
        LeaseRecord {
            owner: Owner::default(),
            pending,
            row: None,
            tally: Tally::default(),
            end_hint: Mutex::new(None),
        }
    }
}

/// The card layer's side of the history: the history itself (set once at start-up, if on),
/// the open row of each card, whether the daemon is stopping, the labels.
pub(crate) struct Records {
    history: OnceLock<History>,
    stopping: AtomicBool,
    /// The id of each card's open row (0: none), for the events that happen during it.
    open: [AtomicI64; 256],
    labels: Mutex<BTreeMap<u16, Labels>>,
    /// Why the current lease of a card ends when it is released next, set by whoever ends it
    /// from outside (a reservation that expired unbinds its reader): [`Cards::ending_for`].
    ending: Mutex<BTreeMap<u16, (String, EndReason)>>,
}

impl Records {
    pub(crate) fn new() -> Records {
        Records {
            history: OnceLock::new(),
            stopping: AtomicBool::new(false),
            open: std::array::from_fn(|_| AtomicI64::new(0)),
            labels: Mutex::new(BTreeMap::new()),
            ending: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Why labels cannot be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error(
        "labels are kept in the history database, and this daemon runs without one \
         (serve --history FILE, or `history` in its configuration)"
    )]
    NoHistory,
    #[error(transparent)]
    Label(#[from] LabelError),
    #[error(transparent)]
    History(HistoryError),
}

impl From<HistoryError> for LabelsError {
    fn from(e: HistoryError) -> LabelsError {
        match e {
            HistoryError::Label(l) => LabelsError::Label(l),
            e => LabelsError::History(e),
        }
    }
}

/// The owner's user, reservation and note into a row.
fn owner_into(owner: &Owner, b: &mut LeaseBegan) {
    b.user.clone_from(&owner.user);
    b.reservation = owner.reservation.as_ref().map(|r| r.id);
    b.note = owner.reservation.as_ref().and_then(|r| r.note.clone());
}

fn holder_kind(h: &Holder) -> HolderKind {
    match h {
        Holder::Reader(_) => HolderKind::Reader,
        Holder::Api(_) | Holder::Command(_) => HolderKind::Api,
        Holder::SimRest(_) => HolderKind::SimRest,
        Holder::Scan => HolderKind::Scan,
        Holder::Bank { .. } => HolderKind::Bank,
        Holder::Reservation(_) => HolderKind::Reservation,
    }
}

impl Cards {
    fn records(&self) -> &Records {
        &self.inner.records
    }

    /// Records leases and events in `history` from now on, and takes the labels it keeps.
    /// Blocking (reads the labels): call it at start-up. Only the first call counts.
    pub fn set_history(&self, history: History) {
        match history.with_store(|s| s.all_labels()) {
            Ok(all) => *self.records().labels.lock().unwrap() = all,
            Err(e) => log::warn!("{e}: the cards' labels are not known"),
        }
        let _ = self.records().history.set(history);
    }

    /// `user`'s lease now on card `n` ends for `why` when it is released, rather than
    /// "released": a reservation that expired ends its reader's lease by unbinding it.
    /// [`Cards::ending_cleared`] takes it back once no such lease is left.
    pub fn ending_for(&self, n: CardNo, user: &str, why: EndReason) {
        let mut e = self.records().ending.lock().unwrap();
        e.insert(n.get(), (user.to_string(), why));
    }

    pub fn ending_cleared(&self, n: CardNo) {
        self.records().ending.lock().unwrap().remove(&n.get());
    }

    pub fn history(&self) -> Option<&History> {
        self.records().history.get()
    }

    /// The daemon is stopping: the leases that end from now on end as `daemon-stopped`.
    pub fn set_stopping(&self) {
        self.records().stopping.store(true, Ordering::Relaxed);
    }

    /// Card `n`'s labels (empty without a history). Never waits for the disk.
    pub fn labels_of(&self, n: CardNo) -> BTreeMap<String, String> {
        self.records()
            .labels
            .lock()
            .unwrap()
            .get(&n.get())
            .cloned()
            .unwrap_or_default()
    }

    /// The cards that carry every one of `wanted`, in card order (none without a history).
    pub fn cards_labelled(&self, wanted: &[Label]) -> Vec<CardNo> {
        let all = self.records().labels.lock().unwrap();
        CardNo::all()
            .filter(|n| {
                all.get(&n.get()).is_some_and(|l| {
                    wanted
                        .iter()
                        .all(|w| l.get(w.key()).is_some_and(|v| v == w.value()))
                })
            })
            .collect()
    }

    /// Removes `remove`, then sets `set` (or, with `replace`, makes `set` the card's labels),
    /// in one transaction; answers the card's labels after it.
    pub async fn change_labels(
        &self,
        n: CardNo,
        set: Vec<Label>,
        remove: Vec<String>,
        replace: bool,
    ) -> Result<Labels, LabelsError> {
        let h = self.history().ok_or(LabelsError::NoHistory)?;
        for k in &remove {
            crate::history::check_key(k)?;
        }
        let labels = if replace {
            h.replace_labels(n.get(), set).await?
        } else {
            h.change_labels(n.get(), set, remove).await?
        };
        let mut all = self.records().labels.lock().unwrap();
        if labels.is_empty() {
            all.remove(&n.get());
        } else {
            all.insert(n.get(), labels.clone());
        }
        Ok(labels)
    }

    /// Card `n`'s labels as the history keeps them, or why they cannot be had.
    pub fn labels_checked(&self, n: CardNo) -> Result<Labels, LabelsError> {
        self.history().ok_or(LabelsError::NoHistory)?;
        Ok(self.labels_of(n))
    }

    /// Records an event of card `n` (with its identity and open lease, as known now).
    pub(crate) fn event(&self, n: CardNo, kind: EventKind, detail: Option<String>) {
        self.event_of(n, kind, None, detail);
    }

    /// A command the card layer's rules refused on card `n`, during `lease`'s row: an event
    /// `refused` whose detail says why (`would use PIN1's last try`). Queued (never blocks,
    /// as every record: the history's thread writes it with the next batch).
    pub(crate) fn refused_event(&self, n: CardNo, user: Option<String>, why: String) {
        self.event_of(n, EventKind::Refused, user, Some(why));
    }

    fn event_of(&self, n: CardNo, kind: EventKind, user: Option<String>, detail: Option<String>) {
        let Some(h) = self.history() else { return };
        let known = self.known(n);
        let lease = self.records().open[n.index()].load(Ordering::Relaxed);
        h.event(Event {
            iccid: known.iccid,
            imsi: known.imsi,
            user,
            lease: (lease > 0).then_some(LeaseId(lease)),
            detail,
            ..Event::now(n.get(), kind)
        });
    }

    /// A lease's row, to be written once the lease does something (if there is a history).
    pub(crate) fn begin_row(
        &self,
        n: CardNo,
        holder: &Holder,
        owner: &Owner,
    ) -> Option<Box<LeaseBegan>> {
        self.history()?;
        let known = self.known(n);
        let mut began = LeaseBegan {
            iccid: known.iccid,
            imsi: known.imsi,
            ..LeaseBegan::now(n.get(), holder_kind(holder), holder.to_string())
        };
        owner_into(owner, &mut began);
        Some(Box::new(began))
    }

    /// Watches the pool's slot states and records cards inserted and removed, until the link
    /// closes. Only while the link is up (a link that comes back compares with what it saw
    /// before it went).
    pub async fn watch_slots(self, every: Duration) {
        let mut seen: Option<Vec<bool>> = None;
        let mut link = self.link().watch();
        loop {
            if *link.borrow_and_update() == LinkState::Closed {
                return;
            }
            if self.history().is_some() && matches!(self.link().state(), LinkState::Up { .. }) {
                if let Ok(states) = self.link().states().await {
                    let now: Vec<bool> = states.iter().map(|s| s.has_card()).collect();
                    if let Some(before) = &seen {
                        for n in CardNo::all() {
                            match (before[n.index()], now[n.index()]) {
                                (false, true) => self.event(n, EventKind::Inserted, None),
                                (true, false) => self.event(n, EventKind::Removed, None),
                                _ => {}
                            }
                        }
                    }
                    seen = Some(now);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                r = link.changed() => if r.is_err() { return },
            }
        }
    }
}

impl Lease {
    /// The user and reservation this lease's holder acts for; recorded in its history row.
    pub fn set_owner(&mut self, owner: Owner) {
        self.rec.owner = owner;
    }

    pub fn owner(&self) -> &Owner {
        &self.rec.owner
    }

    /// Why the card was taken from this lease, if it was (see [`Cards::revoke_for`]).
    pub(crate) fn note_revoked(&self, why: EndReason) {
        *self.rec.end_hint.lock().unwrap() = Some(why);
    }

    /// A session on the card ended but the holder keeps its lease (a vpcd reader bound to a
    /// card number): the history row ends here, for this reason (or the revocation's, if the
    /// card was taken away), and a new one begins. Nothing happens if the row saw no start of
    /// the card and no revocation (a reader waiting for an empty slot adds no rows).
    pub fn close_row(&mut self, why: EndReason) {
        let hint = self.rec.end_hint.lock().unwrap().take();
        if hint.is_none() && self.rec.row.is_none() {
            return;
        }
        self.end_row(hint.unwrap_or(why));
        self.rec.pending = self
            .cards
            .begin_row(self.number, &self.holder, &self.rec.owner);
    }

    /// Lets go of the card as [`Lease::release`] does, its row ending for `why` (unless the
    /// card was taken away: then for that).
    pub async fn release_for(self, why: EndReason) {
        self.rec.end_hint.lock().unwrap().get_or_insert(why);
        self.release().await
    }

    /// Writes the lease's row (open) if it is not yet: the card started.
    pub(crate) fn open_row(&mut self) {
        if self.rec.row.is_some() {
            return;
        }
        let (Some(mut began), Some(h)) = (self.rec.pending.take(), self.cards.history()) else {
            return;
        };
        // Whom the holder acts for may have been set since the lease was taken.
        owner_into(&self.rec.owner, &mut began);
        let row = h.lease_began(*began);
        self.cards.records().open[self.number.index()].store(row.id.0, Ordering::Relaxed);
        self.rec.row = Some(Box::new(row));
    }

    /// Why the lease ends when it is released or dropped: the revocation's reason, the
    /// daemon stopping, the link gone, or a plain release.
    fn final_reason(&self) -> EndReason {
        if let Some(why) = *self.rec.end_hint.lock().unwrap() {
            return why;
        }
        {
            let mut ending = self.cards.records().ending.lock().unwrap();
            let n = self.number.get();
            if let Some((user, why)) = ending.get(&n).cloned() {
                if self.rec.owner.user.as_deref() == Some(user.as_str()) {
                    ending.remove(&n);
                    return why;
                }
            }
        }
        if self.cards.records().stopping.load(Ordering::Relaxed) {
            return EndReason::DaemonStopped;
        }
        match self.cards.link().state() {
            LinkState::Up { .. } => EndReason::Released,
            _ => EndReason::LinkLost,
        }
    }

    /// Ends the history row (the lease is over, or a row of it).
    pub(crate) fn end_row(&mut self, why: EndReason) {
        if self.rec.row.is_none() && self.rec.tally.exchanges.load(Ordering::Relaxed) > 0 {
            // Exchanged with a card it did not start (one running before, kept running).
            self.open_row();
        }
        self.rec.pending = None;
        let Some(mut row) = self.rec.row.take() else {
            return;
        };
        let Some(h) = self.cards.history() else {
            return;
        };
        let known = self.cards.known(self.number);
        let b = &mut row.began;
        if b.iccid.is_none() {
            b.iccid = known.iccid;
        }
        if b.imsi.is_none() {
            b.imsi = known.imsi;
        }
        owner_into(&self.rec.owner, b);
        let _ = self.cards.records().open[self.number.index()].compare_exchange(
            row.id.0,
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        h.lease_ended(*row, LeaseEnded::now(why, self.rec.tally.take()));
    }

    /// The lease is over: its row ends for [`Lease::final_reason`].
    pub(crate) fn finish_row(&mut self) {
        let why = self.final_reason();
        self.end_row(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_authentications_and_failed_pins_not_retry_queries() {
        let t = Tally::default();
        t.count(&[0xA0, 0x88, 0, 0, 0x10], &Ok(vec![0x9F, 0x0C]));
        t.count(&[0x00, 0x88, 0, 0x81, 0x22], &Ok(vec![0x61, 0x35]));
        // GSM wrong PIN, UICC wrong PIN, then a query of the tries left.
        t.count(
            &[0xA0, 0x20, 0, 1, 8, 0x31, 0x32, 0x33, 0x34],
            &Ok(vec![0x98, 0x04]),
        );
        t.count(
            &[0x00, 0x20, 0, 1, 8, 0x31, 0x32, 0x33, 0x34],
            &Ok(vec![0x63, 0xC2]),
        );
        t.count(&[0x00, 0x20, 0, 1, 0], &Ok(vec![0x63, 0xC2]));
        // A right PIN.
        t.count(
            &[0x00, 0x20, 0, 1, 8, 0x31, 0x32, 0x33, 0x34],
            &Ok(vec![0x90, 0x00]),
        );
        t.count(
            &[0xA0, 0xA4, 0, 0, 2, 0x3F, 0x00],
            &Err(ExchangeError::Deadline {
                ms: 5,
                seen: Vec::new(),
            }),
        );
        assert_eq!(
            t.take(),
            Counters {
                exchanges: 7,
                errors: 1,
                authentications: 2,
                pin_failures: 2,
            }
        );
        assert_eq!(t.take(), Counters::default());
    }
}
