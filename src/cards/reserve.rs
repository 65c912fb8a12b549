//! The card layer's side of reservations: the book ([`crate::reservations::Book`]) lives in
//! [`Cards`], so that every lease asks it ([`Cards::lease_as`]) and no front end can go around
//! it. Ending a reservation (unbinding its reader, stopping the card) is the daemon's, which
//! knows the readers ([`crate::daemon::Daemon::end_reservation`]).

use std::time::Duration;

use super::*;

impl Cards {
    /// Reserves card `n` for `who`. A card someone else holds right now is refused (its
    /// holder would lose it); one `who`'s own holder has (a reader it bound) is taken.
    pub fn reserve(
        &self,
        n: CardNo,
        who: &Who,
        dur: Duration,
        note: Option<String>,
        now: Timestamp,
    ) -> Result<Reservation, ReserveError> {
        let r = {
            let mut book = self.inner.book.lock().unwrap();
            let e = self.entry(n);
            let holder = e.holder.lock().unwrap();
            if let Some(h) = holder.as_ref() {
                let user = e.user.lock().unwrap();
                if user.as_deref() != Some(who.user.as_str()) {
                    return Err(ReserveError::Held {
                        card: n,
                        holder: shown(h, user.as_deref(), None),
                    });
                }
            }
            book.reserve(n, who, dur, note, now)?
        };
        self.changed();
        log::info!(
            "card {n}: reserved by {} (reservation {}) until {}{}",
            r.user,
            r.id,
            r.expires,
            r.note.as_ref().map_or(String::new(), |t| format!(": {t}"))
        );
        Ok(r)
    }

    /// Works on the book under its lock (renewals, the expiry timer, restoring a state file).
    pub fn with_book<R>(&self, f: impl FnOnce(&mut Book) -> R) -> R {
        let r = f(&mut self.inner.book.lock().unwrap());
        self.changed();
        r
    }

    /// When the next reservation expires.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.inner.book.lock().unwrap().next_expiry()
    }

    /// The reservations whose time is up at `now` (still in the book).
    pub fn reservations_due(&self, now: Timestamp) -> Vec<Reservation> {
        self.inner.book.lock().unwrap().due(now)
    }

    /// Reads the book (no change, so nobody watching the cards is woken).
    pub fn read_book<R>(&self, f: impl FnOnce(&Book) -> R) -> R {
        f(&self.inner.book.lock().unwrap())
    }

    pub fn reservations(&self) -> Vec<Reservation> {
        self.inner.book.lock().unwrap().list()
    }

    pub fn reservation(&self, id: ReservationId) -> Option<Reservation> {
        self.inner.book.lock().unwrap().get(id).cloned()
    }

    pub fn reservation_of(&self, n: CardNo) -> Option<Reservation> {
        self.inner.book.lock().unwrap().of_card(n).cloned()
    }

    /// The user card `n`'s holder works for, if it has one.
    pub fn holder_user(&self, n: CardNo) -> Option<String> {
        let e = self.entry(n);
        let _h = e.holder.lock().unwrap();
        let u = e.user.lock().unwrap().clone();
        u
    }

    /// Who has card `n`, as people read it: `reader 3 (alice, reservation 17)`,
    /// `API request from bob`, or, reserved and not in use,
    /// `reserved by alice (reservation 17) until …`.
    pub fn holder_text(&self, n: CardNo) -> Option<String> {
        let reservation = self.reservation_of(n);
        let e = self.entry(n);
        let holder = e.holder.lock().unwrap();
        let user = e.user.lock().unwrap();
        match holder.as_ref() {
            Some(h) => {
                let res = reservation
                    .as_ref()
                    .filter(|r| user.as_deref() == Some(r.user.as_str()))
                    .map(|r| r.id);
                Some(shown(h, user.as_deref(), res))
            }
            None => reservation.map(|r| r.shown()),
        }
    }
}

/// A holder with its user and reservation: `reader 3 (alice, reservation 17)`. An API
/// request already names its user; `anonymous` (a daemon without users) goes unsaid.
fn shown(h: &Holder, user: Option<&str>, res: Option<ReservationId>) -> String {
    let user = match h {
        Holder::Api(name) if Some(name.as_str()) == user => None,
        _ => user.filter(|u| *u != crate::users::ANONYMOUS),
    };
    match (user, res) {
        (Some(u), Some(id)) => format!("{h} ({u}, reservation {id})"),
        (Some(u), None) => format!("{h} ({u})"),
        (None, Some(id)) => format!("{h} (reservation {id})"),
        (None, None) => h.to_string(),
    }
}
