//! When a card counts as bad (sans-IO: time is passed in). The card layer feeds it what every
//! front end's use of the card shows — starts, failed starts, exchanges that lost the card's
//! T=0 state — and marks the card bad on the pool when this says so, so the rule holds the
//! same for a vpcd reader, an API request, a scan and a remote bank client.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Consecutive failed starts of an inserted card that mark it bad.
pub const BAD_START_FAILURES: u32 = 2;
/// Exchanges that lost the card's T=0 state within [`BAD_RESET_WINDOW`] that mark it bad.
pub const BAD_RESETS: usize = 3;
pub const BAD_RESET_WINDOW: Duration = Duration::from_secs(60);

/// One card's record.
#[derive(Debug, Default)]
pub struct CardHealth {
    start_failures: u32,
    lost_t0: VecDeque<Instant>,
    /// Why the card was marked bad, once it was.
    bad: Option<String>,
}

impl CardHealth {
    /// Why the card is marked bad, if it is.
    pub fn bad(&self) -> Option<&str> {
        self.bad.as_deref()
    }

    pub fn started(&mut self) {
        self.start_failures = 0;
    }

    /// A start failed with `error`. Answers why the card should be marked bad if this makes
    /// it so — provided the slot holds a card: a start failure of an empty slot is no sign of
    /// a bad card, which the caller checks.
    pub fn start_failed(&mut self, error: &str) -> Option<String> {
        self.start_failures += 1;
        (self.bad.is_none() && self.start_failures >= BAD_START_FAILURES).then(|| {
            format!(
                "did not start {} times in a row ({error})",
                self.start_failures
            )
        })
    }

    /// An exchange left the card's T=0 state unknown at `now`. Answers why the card should be
    /// marked bad if this makes it so.
    pub fn lost_t0(&mut self, now: Instant) -> Option<String> {
        self.lost_t0.push_back(now);
        while self
            .lost_t0
            .front()
            .is_some_and(|t| now.duration_since(*t) > BAD_RESET_WINDOW)
        {
            self.lost_t0.pop_front();
        }
        (self.bad.is_none() && self.lost_t0.len() >= BAD_RESETS).then(|| {
            format!(
                "lost its T=0 state {} times within {} s",
                self.lost_t0.len(),
                BAD_RESET_WINDOW.as_secs()
            )
        })
    }

    /// Records the marking; false if the card was marked already (the pool is told once).
    pub fn mark(&mut self, why: String) -> bool {
        if self.bad.is_some() {
            return false;
        }
        self.bad = Some(why);
        true
    }

    /// The card is to be tried afresh (re-inserted, or bound again): forgets everything.
    /// True if it was marked bad.
    pub fn clear(&mut self) -> bool {
        let was = self.bad.is_some();
        *self = CardHealth::default();
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_failed_starts_in_a_row_make_a_card_bad() {
        let mut h = CardHealth::default();
        assert_eq!(h.start_failed("timeout"), None);
        h.started();
        assert_eq!(h.start_failed("timeout"), None, "not in a row");
        let why = h.start_failed("timeout").expect("second in a row");
        assert_eq!(why, "did not start 2 times in a row (timeout)");
        assert!(h.mark(why));
        assert!(!h.mark("again".into()), "marked once");
        assert_eq!(h.bad(), Some("did not start 2 times in a row (timeout)"));
        assert_eq!(h.start_failed("timeout"), None, "already bad");
        assert!(h.clear());
        assert_eq!(h.bad(), None);
        assert_eq!(h.start_failed("timeout"), None, "counting starts over");
    }

    #[test]
    fn three_lost_t0_states_within_a_minute_make_a_card_bad() {
        let mut h = CardHealth::default();
        let t = Instant::now();
        assert_eq!(h.lost_t0(t), None);
        assert_eq!(h.lost_t0(t + Duration::from_secs(30)), None);
        // The first one has left the window by now.
        assert_eq!(h.lost_t0(t + Duration::from_secs(61)), None);
        let why = h
            .lost_t0(t + Duration::from_secs(62))
            .expect("3 within 60 s");
        assert_eq!(why, "lost its T=0 state 3 times within 60 s");
    }
}
