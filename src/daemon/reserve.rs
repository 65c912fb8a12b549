//! The daemon's side of reservations: taking one (waiting in the queue, binding a reader),
//! ending one (unbinding its reader, stopping the card), and the timer that ends those whose
//! time is up. The rules are the card layer's ([`crate::reservations::Book`] inside
//! [`crate::cards::Cards`]); this only moves readers and runs the clock.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::bridge::{BindError, Binding};
use crate::cards::{Holder, ReserveError, Wanted};
use crate::history::Timestamp;
use crate::reservations::{
    check_for, check_note, BookError, Reservation, ReservationId, DEFAULT_FOR,
};
use crate::rows::{ReservationRow, ReserveRequest};
use crate::selection::{Candidate, Resolved, Selection};
use crate::users::Who;
use crate::values::CardNo;

use super::Daemon;

/// Longest `wait_s`.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// How long `--reader` waits for the reader to show the card.
pub const READER_SETTLE: Duration = Duration::from_secs(5);
/// The expiry timer looks at least this often (an expired reservation ends within it).
pub const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// Why no reservation was made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReserveFailure {
    #[error("{0}")]
    Bad(String),
    #[error("no connection to the pool")]
    LinkDown,
    /// Nothing selected is inserted.
    #[error("no card to reserve: {0}")]
    NoCard(String),
    /// What was selected is held or reserved (409: names who has it).
    #[error("no free card to reserve: {why}")]
    Blocked {
        why: String,
        card: Option<CardNo>,
        holder: Option<String>,
    },
    /// The wait ended unserved (408).
    #[error("waited {secs} s, no card was free: {why}")]
    Timeout { secs: u64, why: String },
    /// With `reader`: none of the readers it may take is free (409).
    #[error("no free reader to bind card {card} to: {why}")]
    NoReader { card: CardNo, why: String },
    #[error("binding a reader: {0}")]
    Bind(BindError),
}

impl Daemon {
    /// Binds reader `i` for `who` (its lease works for that user) and saves the state.
    pub async fn bind_as(
        &self,
        i: usize,
        binding: Option<Binding>,
        who: Option<Who>,
    ) -> Result<(), BindError> {
        let r = self.readers.get(i).ok_or(BindError::Stopped(i as u16))?;
        r.bind_as(binding, who).await?;
        self.save_state().await;
        Ok(())
    }

    /// A reservation as the API shows it.
    pub fn reservation_row(&self, r: &Reservation) -> ReservationRow {
        let k = self.cards.known(r.card);
        ReservationRow {
            id: r.id,
            card: r.card,
            iccid: k.iccid,
            imsi: k.imsi,
            reader: r.reader,
            reader_name: r.reader.map(crate::vpcd::reader_name),
            user: r.user.clone(),
            note: r.note.clone(),
            since: r.since,
            expires: r.expires,
        }
    }

    /// The cards as a selection sees them (labels come from the history's store when there
    /// is one; none yet).
    fn candidates(&self, states: &[crate::pool::SlotState]) -> Vec<CardRowLite> {
        CardNo::all()
            .map(|n| {
                let k = self.cards.known(n);
                CardRowLite {
                    card: n,
                    inserted: states[n.index()].has_card(),
                    holder: self.cards.holder_text(n),
                    iccid: k.iccid,
                    imsi: k.imsi,
                    eid: k.facts.eid,
                    labels: self.cards.labels_of(n),
                }
            })
            .collect()
    }

    /// Takes a reservation for `who`: the first free card the selection matches, at once or,
    /// with `wait_s`, the first that frees up (first come, first served).
    pub async fn reserve(
        &self,
        req: ReserveRequest,
        who: &Who,
    ) -> Result<ReservationRow, ReserveFailure> {
        let sel = req
            .selection
            .clone()
            .check()
            .map_err(|e| ReserveFailure::Bad(e.to_string()))?;
        let dur = check_for(Duration::from_secs(
            req.for_s.unwrap_or(DEFAULT_FOR.as_secs()),
        ))
        .map_err(|e| ReserveFailure::Bad(e.to_string()))?;
        let note = check_note(req.note.clone()).map_err(|e| ReserveFailure::Bad(e.to_string()))?;
        let wait = Duration::from_secs(req.wait_s.unwrap_or(0));
        if wait > MAX_WAIT {
            return Err(ReserveFailure::Bad(
                "wait_s is at most 86400 (a day)".into(),
            ));
        }
        let allowed = self.reader_choice(req.readers.as_deref())?;
        if req.reader && wait.is_zero() && !allowed.iter().any(|&i| self.is_free(i)) {
            return Err(self.no_free_reader(
                sel.cards
                    .as_ref()
                    .and_then(|l| l.cards().first().copied())
                    .unwrap_or(CardNo::FIRST),
                &allowed,
            ));
        }
        // Leaves the queue however this ends: also when the caller goes away mid-wait (its
        // HTTP request dropped), or it would hold up everyone queued after it.
        let queued = Queued {
            cards: &self.cards,
            ticket: self.cards.with_book(|b| b.wait(sel.clone())),
        };
        let ticket = queued.ticket;
        let r = self
            .reserve_queued(&sel, who, dur, note, wait, ticket)
            .await;
        drop(queued);
        let r = r?;
        let r = if req.reader {
            match self.bind_reader(&r, who, &allowed).await {
                Ok(r) => r,
                Err(e) => {
                    self.end_reservation(r, "its reader could not be bound")
                        .await;
                    return Err(e);
                }
            }
        } else {
            r
        };
        self.save_state().await;
        Ok(self.reservation_row(&r))
    }

    async fn reserve_queued(
        &self,
        sel: &Selection,
        who: &Who,
        dur: Duration,
        note: Option<String>,
        wait: Duration,
        ticket: u64,
    ) -> Result<Reservation, ReserveFailure> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.cards.watch();
        let mut identities_read = false;
        loop {
            changes.borrow_and_update();
            let states = match self.link.states().await {
                Ok(s) => s,
                Err(_) if wait.is_zero() => return Err(ReserveFailure::LinkDown),
                Err(_) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => return Err(ReserveFailure::LinkDown),
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            let rows = self.candidates(&states);
            let resolved = resolve(sel, &rows);
            // Read only: a change would wake this loop (and every other waiter) at once.
            let pick = self.cards.read_book(|b| {
                b.first_claim(ticket, &resolved.free, |s, n| {
                    let r = &rows[n.index()];
                    s.matches(
                        n,
                        r.iccid.as_deref(),
                        r.imsi.as_deref(),
                        None,
                        &BTreeMap::new(),
                    )
                })
            });
            if let Some(n) = pick {
                match self
                    .cards
                    .reserve(n, who, dur, note.clone(), Timestamp::now())
                {
                    Ok(r) => return Ok(r),
                    // Taken meanwhile: look again.
                    Err(ReserveError::Held { .. } | ReserveError::Book(BookError::Reserved(_))) => {
                        continue
                    }
                    Err(e) => return Err(ReserveFailure::Bad(e.to_string())),
                }
            }
            // ICCIDs and IMSIs of cards never read: read the free ones once.
            if !identities_read && sel.needs_identity() && resolved.free.is_empty() {
                identities_read = true;
                self.read_identities(sel, who).await;
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(if wait.is_zero() {
                    blocked(&resolved)
                } else {
                    ReserveFailure::Timeout {
                        secs: wait.as_secs(),
                        why: if resolved.free.is_empty() {
                            resolved.blocked_by()
                        } else {
                            // Free, but promised to callers that queued first.
                            format!(
                                "card {} is free but wanted by callers queued before this one",
                                crate::selection::CardList::new(resolved.free.clone())
                            )
                        },
                    }
                });
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = changes.changed() => {}
                // Slot states change without a lease changing (a card inserted).
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Reads the identity of free cards that may have a wanted ICCID, IMSI or EID.
    async fn read_identities(&self, sel: &Selection, who: &Who) {
        let wanted = sel
            .iccids
            .iter()
            .map(|s| Wanted::Iccid(s))
            .chain(sel.imsis.iter().map(|s| Wanted::Imsi(s)))
            .chain(sel.eid.iter().map(|s| Wanted::Eid(s)));
        for w in wanted {
            if let Ok(lease) = self
                .cards
                .find_as(&w, Holder::Scan, Some(who), self.command_timeout)
                .await
            {
                lease.release().await;
            }
        }
    }

    /// The readers a reservation may take: those asked for (`readers`), or every one.
    fn reader_choice(&self, asked: Option<&[u16]>) -> Result<Vec<usize>, ReserveFailure> {
        let Some(asked) = asked else {
            return Ok((0..self.readers.len()).collect());
        };
        asked
            .iter()
            .map(|&i| {
                let i = usize::from(i);
                if i < self.readers.len() {
                    Ok(i)
                } else {
                    Err(ReserveFailure::Bad(format!(
                        "no reader {i}: the daemon has {} (simpool readers)",
                        self.readers.len()
                    )))
                }
            })
            .collect()
    }

    /// Whether reader `i` is bound to nothing now.
    fn is_free(&self, i: usize) -> bool {
        self.readers[i].status().binding.is_none()
    }

    /// Why none of the readers `allowed` can be had: what each is bound to, and for whom.
    fn no_free_reader(&self, card: CardNo, allowed: &[usize]) -> ReserveFailure {
        let why = if allowed.len() == self.readers.len() && allowed.len() > 1 {
            "every reader is bound".to_string()
        } else {
            allowed
                .iter()
                .map(|&i| {
                    let st = self.readers[i].status();
                    let to = st.binding.map_or("something".into(), |b| b.to_string());
                    match st.user {
                        Some(u) => format!("reader {i} is bound to {to} for {u}"),
                        None => format!("reader {i} is bound to {to}"),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        ReserveFailure::NoReader { card, why }
    }

    /// Binds one of the readers `allowed` that is free to the reservation's card, for its
    /// user, and waits for the card to show. "Free" is checked again by the reader as it
    /// binds, under its lock: of two callers that saw the same free reader, one gets it and
    /// the other tries the next (or is refused), never replacing the first's binding.
    async fn bind_reader(
        &self,
        r: &Reservation,
        who: &Who,
        allowed: &[usize],
    ) -> Result<Reservation, ReserveFailure> {
        let mut bound = None;
        for &i in allowed {
            let got = self.readers[i]
                .claim_as(Binding::Card(r.card), Some(who.clone()))
                .await
                .map_err(ReserveFailure::Bind)?;
            if got {
                bound = Some(i);
                break;
            }
        }
        let Some(i) = bound else {
            return Err(self.no_free_reader(r.card, allowed));
        };
        self.save_state().await;
        let id = r.id;
        self.cards.with_book(|b| b.set_reader(id, Some(i as u16)));
        self.readers[i].wait_settled(READER_SETTLE).await;
        log::info!("reservation {id}: card {} on reader {i}", r.card);
        Ok(self.cards.reservation(id).unwrap_or_else(|| r.clone()))
    }

    /// Renews reservation `id` for `who`: it ends `dur` from now.
    pub async fn renew(
        &self,
        id: ReservationId,
        who: &Who,
        dur: Duration,
    ) -> Result<ReservationRow, BookError> {
        let r = self
            .cards
            .with_book(|b| b.renew(id, who, dur, Timestamp::now()))?;
        log::info!(
            "reservation {id} of {} renewed by {who} until {}",
            r.user,
            r.expires
        );
        self.save_state().await;
        Ok(self.reservation_row(&r))
    }

    /// Ends reservation `id` for `who` (its user or an admin).
    pub async fn release(&self, id: ReservationId, who: &Who) -> Result<ReservationRow, BookError> {
        let r = self.cards.read_book(|b| b.may_end(id, who))?;
        let row = self.reservation_row(&r);
        let why = if r.user == who.user {
            "released".to_string()
        } else {
            format!("ended by {who}")
        };
        self.end_reservation(r, &why).await;
        Ok(row)
    }

    /// Ends a reservation: out of the book, its readers unbound (the application sees the
    /// card removed), the card stopped and freed; logged.
    pub async fn end_reservation(&self, r: Reservation, why: &str) {
        let n = r.card;
        self.cards.with_book(|b| b.remove(r.id));
        // The history says why the user's lease on the card ended.
        if why.starts_with("expired") {
            self.cards
                .ending_for(n, &r.user, crate::history::EndReason::Expired);
        } else if why.starts_with("ended by") {
            self.cards
                .ending_for(n, &r.user, crate::history::EndReason::StoppedByAdmin);
        }
        for (i, reader) in self.readers.iter().enumerate() {
            let st = reader.status();
            let on_card = st.binding == Some(Binding::Card(n)) || st.card == Some(n);
            if on_card && st.user.as_deref() == Some(r.user.as_str()) {
                if let Err(e) = reader.bind_as(None, None).await {
                    log::warn!("reservation {}: reader {i} not unbound: {e}", r.id);
                }
            }
        }
        // What is left on the card for its user (an API request in flight, a card left
        // running) is stopped; another user's fresh lease is left alone.
        match self.cards.holder_user(n) {
            Some(u) if u == r.user => {
                let (_, res) = self
                    .cards
                    .force_stop_as(n, &Holder::Reservation(r.id), None)
                    .await;
                if let Err(e) = res {
                    log::debug!("card {n}: stop at the end of reservation {}: {e}", r.id);
                }
            }
            Some(_) => {}
            None if self.cards.holder(n).is_none() => {
                let running = self
                    .link
                    .states()
                    .await
                    .is_ok_and(|s| s[n.index()] == crate::pool::SlotState::Working);
                if running {
                    if let Ok(mut lease) = self.cards.lease(n, Holder::Reservation(r.id)) {
                        let _ = lease.stop().await;
                        lease.release().await;
                    }
                }
            }
            None => {}
        }
        if self.cards.holder_user(n).as_deref() != Some(r.user.as_str()) {
            self.cards.ending_cleared(n);
        }
        log::info!(
            "reservation {} of {} on card {n} ended: {why}",
            r.id,
            r.user
        );
        self.save_state().await;
    }

    /// Ends reservations whose time is up, within [`EXPIRY_TICK`]. Runs for the daemon's
    /// life.
    pub async fn run_expiry(self: std::sync::Arc<Self>) {
        loop {
            let next = self.cards.next_expiry();
            let now = Timestamp::now();
            let until = next.map_or(EXPIRY_TICK, |t| {
                Duration::from_millis(u64::try_from(t.millis() - now.millis()).unwrap_or(0))
            });
            tokio::time::sleep(until.min(EXPIRY_TICK)).await;
            for r in self.cards.reservations_due(Timestamp::now()) {
                let why = format!("expired at {}", r.expires);
                self.end_reservation(r, &why).await;
            }
        }
    }
}

/// A place in the queue of waiting reservations, left when dropped.
struct Queued<'a> {
    cards: &'a crate::cards::Cards,
    ticket: u64,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let t = self.ticket;
        self.cards.with_book(|b| b.leave(t));
    }
}

/// The few facts of a card a selection looks at.
struct CardRowLite {
    card: CardNo,
    inserted: bool,
    holder: Option<String>,
    iccid: Option<String>,
    imsi: Option<String>,
    eid: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
}

fn resolve(sel: &Selection, rows: &[CardRowLite]) -> Resolved {
    sel.resolve(rows.iter().map(|r| Candidate {
        card: r.card,
        inserted: r.inserted,
        holder: r.holder.as_deref(),
        iccid: r.iccid.as_deref(),
        imsi: r.imsi.as_deref(),
        eid: r.eid.as_deref(),
        labels: Some(&r.labels),
    }))
}

fn blocked(r: &Resolved) -> ReserveFailure {
    if r.held.is_empty() {
        return ReserveFailure::NoCard(r.blocked_by());
    }
    let (card, holder) = r.held[0].clone();
    ReserveFailure::Blocked {
        why: r.blocked_by(),
        card: Some(card),
        holder: Some(holder),
    }
}
