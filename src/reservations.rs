//! Reservations: a card that belongs to a user until a time, with a note. A sans-IO book with
//! time passed in; the card layer keeps one ([`crate::cards::Cards`]) and asks it, on every
//! lease, whether the caller may have the card ([`Book::may_use`]). The daemon only runs a
//! timer that calls [`Book::expire`] and ends what comes back (reader unbound, card stopped
//! and freed).
//!
//! Rules:
//! - a card has at most one reservation; reserving a reserved card is refused, naming whose it
//!   is and until when;
//! - only its user works on a reserved card (through any front end); other users, and holders
//!   with no user at all (a scan, a remote bank client), are refused. An admin may use it too
//!   and may renew or end it;
//! - callers waiting for a card are served first come, first served ([`Book::first_claim`]).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::history::Timestamp;
use crate::selection::Selection;
use crate::users::Who;
use crate::values::CardNo;

/// Longest reservation (and renewal): a week. A job that needs longer renews.
pub const MAX_FOR: Duration = Duration::from_secs(7 * 86_400);
/// When `--for` is not given.
pub const DEFAULT_FOR: Duration = Duration::from_secs(3600);
/// Longest note.
pub const MAX_NOTE: usize = 256;

/// A reservation's number; never reused by a daemon (it goes on across restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReservationId(pub u64);

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for ReservationId {
    type Err = String;
    fn from_str(s: &str) -> Result<ReservationId, String> {
        s.trim()
            .parse::<u64>()
            .map(ReservationId)
            .map_err(|_| format!("{s:?} is no reservation id (a number)"))
    }
}

/// One reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: ReservationId,
    pub card: CardNo,
    pub user: String,
    pub note: Option<String>,
    pub since: Timestamp,
    pub expires: Timestamp,
    /// The reader bound to the card for it (`--reader`), if any.
    pub reader: Option<u16>,
}

impl Reservation {
    /// How the card's holder column shows it: `reserved by alice (reservation 17) until …`.
    pub fn shown(&self) -> String {
        format!(
            "reserved by {} (reservation {}) until {}",
            self.user, self.id, self.expires
        )
    }
}

/// A card refused because it is reserved by someone else (409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("card {card} is reserved by {user} (reservation {id}) until {expires}")]
pub struct Reserved {
    pub card: CardNo,
    pub id: ReservationId,
    pub user: String,
    pub expires: Timestamp,
}

impl From<&Reservation> for Reserved {
    fn from(r: &Reservation) -> Reserved {
        Reserved {
            card: r.card,
            id: r.id,
            user: r.user.clone(),
            expires: r.expires,
        }
    }
}

/// Why a change to a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    #[error("no reservation {0}")]
    NotFound(ReservationId),
    #[error("reservation {id} is {user}'s: only its user or an admin may change it")]
    NotYours { id: ReservationId, user: String },
    #[error(transparent)]
    Reserved(#[from] Reserved),
    #[error("a reservation lasts 1 s to 7 d (renew it to keep it longer)")]
    Duration,
    #[error("the note is over 256 characters or holds control characters")]
    Note,
}

/// A caller waiting for a card (`--wait`).
#[derive(Debug, Clone)]
struct Waiter {
    ticket: u64,
    selection: Selection,
}

/// Every reservation of the daemon, and the queue of callers waiting for a card.
#[derive(Debug, Default)]
pub struct Book {
    next: u64,
    by_id: BTreeMap<ReservationId, Reservation>,
    queue: VecDeque<Waiter>,
    next_ticket: u64,
}

/// Checks a duration as `--for` takes it.
pub fn check_for(d: Duration) -> Result<Duration, BookError> {
    if d < Duration::from_secs(1) || d > MAX_FOR {
        Err(BookError::Duration)
    } else {
        Ok(d)
    }
}

/// Checks a note.
pub fn check_note(n: Option<String>) -> Result<Option<String>, BookError> {
    match n {
        Some(n) if n.chars().count() > MAX_NOTE || n.chars().any(char::is_control) => {
            Err(BookError::Note)
        }
        Some(n) if n.trim().is_empty() => Ok(None),
        n => Ok(n),
    }
}

impl Book {
    pub fn new() -> Book {
        Book {
            next: 1,
            ..Book::default()
        }
    }

    /// The book as a state file kept it: the reservations still running at `now` (the rest
    /// come back as expired, for the caller to end), and ids going on after the highest.
    pub fn restore(saved: Vec<Reservation>, next: u64, now: Timestamp) -> (Book, Vec<Reservation>) {
        let mut b = Book::new();
        b.next = next.max(1);
        for r in saved {
            b.next = b.next.max(r.id.0 + 1);
            if b.of_card(r.card).is_some() {
                continue;
            }
            b.by_id.insert(r.id, r);
        }
        let expired = b.expire(now);
        (b, expired)
    }

    /// The next id to give (saved with the state, so ids are never reused).
    pub fn next_id(&self) -> u64 {
        self.next
    }

    pub fn list(&self) -> Vec<Reservation> {
        self.by_id.values().cloned().collect()
    }

    pub fn get(&self, id: ReservationId) -> Option<&Reservation> {
        self.by_id.get(&id)
    }

    pub fn of_card(&self, n: CardNo) -> Option<&Reservation> {
        self.by_id.values().find(|r| r.card == n)
    }

    /// The rule: card `n` is for its reservation's user (and admins). `who` is `None` for a
    /// holder that has no user (a scan, a remote bank client): a reserved card is refused to
    /// it.
    pub fn may_use(&self, n: CardNo, who: Option<&Who>) -> Result<(), Reserved> {
        match (self.of_card(n), who) {
            (None, _) => Ok(()),
            (Some(r), Some(w)) if w.user == r.user || w.is_admin() => Ok(()),
            (Some(r), _) => Err(r.into()),
        }
    }

    /// Reserves card `n` for `who` for `dur` from `now`.
    pub fn reserve(
        &mut self,
        n: CardNo,
        who: &Who,
        dur: Duration,
        note: Option<String>,
        now: Timestamp,
    ) -> Result<Reservation, BookError> {
        let dur = check_for(dur)?;
        let note = check_note(note)?;
        if let Some(r) = self.of_card(n) {
            return Err(Reserved::from(r).into());
        }
        let r = Reservation {
            id: ReservationId(self.next),
            card: n,
            user: who.user.clone(),
            note,
            since: now,
            expires: now.after(dur),
            reader: None,
        };
        self.next += 1;
        self.by_id.insert(r.id, r.clone());
        Ok(r)
    }

    fn mine(&self, id: ReservationId, who: &Who) -> Result<&Reservation, BookError> {
        let r = self.by_id.get(&id).ok_or(BookError::NotFound(id))?;
        if r.user != who.user && !who.is_admin() {
            return Err(BookError::NotYours {
                id,
                user: r.user.clone(),
            });
        }
        Ok(r)
    }

    /// Its user (or an admin) checks it may end reservation `id`; answers it, still kept (the
    /// caller ends what runs on the card, then [`Book::remove`]s it).
    pub fn may_end(&self, id: ReservationId, who: &Who) -> Result<Reservation, BookError> {
        self.mine(id, who).cloned()
    }

    /// Renews reservation `id`: it now ends `dur` after `now`.
    pub fn renew(
        &mut self,
        id: ReservationId,
        who: &Who,
        dur: Duration,
        now: Timestamp,
    ) -> Result<Reservation, BookError> {
        let dur = check_for(dur)?;
        self.mine(id, who)?;
        let r = self.by_id.get_mut(&id).expect("checked above");
        r.expires = now.after(dur);
        Ok(r.clone())
    }

    /// Notes the reader bound to the card for reservation `id`.
    pub fn set_reader(&mut self, id: ReservationId, reader: Option<u16>) {
        if let Some(r) = self.by_id.get_mut(&id) {
            r.reader = reader;
        }
    }

    /// Puts a reservation back as it was (one a restart found expired, until it is ended).
    pub fn insert(&mut self, r: Reservation) {
        self.next = self.next.max(r.id.0 + 1);
        self.by_id.insert(r.id, r);
    }

    pub fn remove(&mut self, id: ReservationId) -> Option<Reservation> {
        self.by_id.remove(&id)
    }

    /// The reservations whose time is up at `now`, taken out of the book.
    pub fn expire(&mut self, now: Timestamp) -> Vec<Reservation> {
        let due: Vec<ReservationId> = self
            .by_id
            .values()
            .filter(|r| r.expires <= now)
            .map(|r| r.id)
            .collect();
        due.iter().filter_map(|id| self.by_id.remove(id)).collect()
    }

    /// The reservations whose time is up at `now`, left in the book (ending one takes it out).
    pub fn due(&self, now: Timestamp) -> Vec<Reservation> {
        self.by_id
            .values()
            .filter(|r| r.expires <= now)
            .cloned()
            .collect()
    }

    /// When the next reservation expires.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.by_id.values().map(|r| r.expires).min()
    }

    /// Queues a caller waiting for a card of `selection`; answers its ticket.
    pub fn wait(&mut self, selection: Selection) -> u64 {
        self.next_ticket += 1;
        self.queue.push_back(Waiter {
            ticket: self.next_ticket,
            selection,
        });
        self.next_ticket
    }

    /// The caller with `ticket` stops waiting (served, or its wait is over).
    pub fn leave(&mut self, ticket: u64) {
        self.queue.retain(|w| w.ticket != ticket);
    }

    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// First come, first served: of the cards `candidates` (free ones the caller's selection
    /// matches, in the order it prefers), the first that no caller queued before `ticket`
    /// also wants. `wants(selection, card)` says whether a selection matches a card.
    pub fn first_claim(
        &self,
        ticket: u64,
        candidates: &[CardNo],
        wants: impl Fn(&Selection, CardNo) -> bool,
    ) -> Option<CardNo> {
        let earlier: Vec<&Waiter> = self
            .queue
            .iter()
            .take_while(|w| w.ticket != ticket)
            .collect();
        candidates
            .iter()
            .copied()
            .find(|&c| !earlier.iter().any(|w| wants(&w.selection, c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::Role;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + s * 1000)
    }
    fn c(n: u16) -> CardNo {
        CardNo::of(n)
    }

    #[test]
    fn a_reserved_card_is_its_users_and_admins() {
        let alice = Who::new("alice", Role::Use);
        let bob = Who::new("bob", Role::Use);
        let root = Who::new("root", Role::Admin);
        let mut b = Book::new();
        let r = b
            .reserve(
                c(5),
                &alice,
                Duration::from_secs(60),
                Some("ci".into()),
                t(0),
            )
            .unwrap();
        assert_eq!(r.id, ReservationId(1));
        assert_eq!(r.expires, t(60));
        assert!(b.may_use(c(5), Some(&alice)).is_ok());
        assert!(b.may_use(c(5), Some(&root)).is_ok());
        assert!(b.may_use(c(6), Some(&bob)).is_ok());
        let e = b.may_use(c(5), Some(&bob)).unwrap_err();
        assert_eq!(e.user, "alice");
        let text = e.to_string();
        assert!(
            text.contains("reserved by alice") && text.contains("until"),
            "{text}"
        );
        // No user at all (a bank client, a scan): refused.
        assert!(b.may_use(c(5), None).is_err());
        // Reserving it again: refused, for anyone.
        assert!(matches!(
            b.reserve(c(5), &root, Duration::from_secs(60), None, t(1)),
            Err(BookError::Reserved(_))
        ));
        // Only its user or an admin renews or ends it.
        assert!(matches!(
            b.renew(r.id, &bob, Duration::from_secs(60), t(1)),
            Err(BookError::NotYours { .. })
        ));
        assert!(b.may_end(r.id, &bob).is_err());
        assert!(b.may_end(r.id, &root).is_ok());
        let renewed = b
            .renew(r.id, &alice, Duration::from_secs(120), t(30))
            .unwrap();
        assert_eq!(renewed.expires, t(150));
        assert!(matches!(
            b.renew(ReservationId(9), &alice, Duration::from_secs(1), t(1)),
            Err(BookError::NotFound(_))
        ));
        assert!(matches!(
            b.reserve(c(7), &alice, Duration::ZERO, None, t(0)),
            Err(BookError::Duration)
        ));
        assert!(matches!(
            b.reserve(c(7), &alice, MAX_FOR * 2, None, t(0)),
            Err(BookError::Duration)
        ));
        assert!(matches!(
            b.reserve(c(7), &alice, DEFAULT_FOR, Some("a\nb".into()), t(0)),
            Err(BookError::Note)
        ));
    }

    #[test]
    fn expiry_takes_what_is_due_and_restore_keeps_ids_going() {
        let alice = Who::new("alice", Role::Use);
        let mut b = Book::new();
        let r1 = b
            .reserve(c(1), &alice, Duration::from_secs(10), None, t(0))
            .unwrap();
        let r2 = b
            .reserve(c(2), &alice, Duration::from_secs(20), None, t(0))
            .unwrap();
        assert_eq!(b.next_expiry(), Some(t(10)));
        assert!(b.expire(t(9)).is_empty());
        assert_eq!(b.expire(t(10)), vec![r1.clone()]);
        assert!(b.may_use(c(1), None).is_ok());
        assert_eq!(b.next_expiry(), Some(t(20)));
        // A restart after r2's time: it comes back expired; the next id is not reused.
        let (mut b2, expired) = Book::restore(b.list(), b.next_id(), t(25));
        assert_eq!(expired, vec![r2]);
        assert!(b2.list().is_empty());
        let r3 = b2
            .reserve(c(3), &alice, Duration::from_secs(5), None, t(25))
            .unwrap();
        assert_eq!(r3.id, ReservationId(3));
        let (b3, expired) = Book::restore(b2.list(), b2.next_id(), t(26));
        assert!(expired.is_empty());
        assert_eq!(b3.of_card(c(3)).unwrap().id, r3.id);
    }

    #[test]
    fn waiters_are_served_first_come_first_served() {
        let mut b = Book::new();
        let any = Selection {
            cards: Some("1-4".parse().unwrap()),
            ..Selection::default()
        };
        let only3 = Selection::card(c(3));
        let first = b.wait(only3);
        let second = b.wait(any);
        let wants = |s: &Selection, n: CardNo| s.cards.as_ref().unwrap().contains(n);
        // Card 3 frees: the first waiter's. The second may not take it before.
        assert_eq!(b.first_claim(second, &[c(3)], wants), None);
        assert_eq!(b.first_claim(first, &[c(3)], wants), Some(c(3)));
        // Card 4 the first does not want: the second may have it.
        assert_eq!(b.first_claim(second, &[c(3), c(4)], wants), Some(c(4)));
        b.leave(first);
        assert_eq!(b.first_claim(second, &[c(3)], wants), Some(c(3)));
        assert_eq!(b.waiting(), 1);
    }
}
