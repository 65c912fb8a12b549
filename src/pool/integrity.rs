//! The pool link's reply-integrity rules as one state machine, with time passed in (no I/O):
//! the link's reader and the card handles ask it what a frame means and do what it says.
//!
//! Faults are judged by harm (README "Pool link health"):
//! - a frame for a card with no exchange in flight and no session, a frame of an unknown kind,
//!   a pool frame nobody asked for: skipped and counted, nothing else;
//! - bytes for a running card outside any exchange, or a frame that breaks a live exchange:
//!   that card's exchange fails or its next one does (*taint*): the application sees a reset,
//!   never another command's answer;
//! - replies that come twice: the pool has no sequence numbers, so once copies were seen the
//!   link is *guarded*: how late copies come is learnt, and every answer is held a little
//!   longer than that before it is passed on. Copies of the exchange's own pieces (or of an
//!   earlier exchange's, as late as copies come) arriving in the hold are dropped; anything
//!   else rejects the answer. While the exchange waits for the card, a piece identical to one
//!   that came just before is never taken: dropped if it cannot be an answer part (a
//!   procedure byte, an earlier exchange's piece), else it rejects the answer;
//! - only what a new connection can cure drops it: a stream the decoder cannot find frames in
//!   (junk in most frames of a window). When the next connection is as bad, it is kept and
//!   the next drop waits longer (a back-off), instead of a reconnect loop that takes every card
//!   down. Silence and trickling frames are the link's own timers' business.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::frame::Slot;
use super::link::HealthOptions;
use crate::backoff::Backoff;

/// Copies later than this are not recognised as copies (nor learnt).
const MAX_LATENESS: Duration = Duration::from_secs(1);
/// Pieces remembered per card for recognising copies.
const RECENT: usize = 8;
/// The longest hold: past it, a pool is too slow to guard against.
const MAX_SETTLE: Duration = Duration::from_millis(500);

/// What a frame for a card that nobody waits for means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stray {
    /// No session on the card: nothing it can harm. Skipped.
    Idle,
    /// The reply to an exchange that was given up (timed out or cancelled): expected.
    Late,
    /// The card runs and was not asked: its next exchange fails, and answers are held from
    /// now on (`guard_began`: the hold begins now).
    Tainted { guard_began: bool },
}

/// Which piece a piece that came for a card repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// The same bytes came already in this exchange.
    OfThisExchange,
    /// The same bytes were an earlier exchange's.
    OfEarlier,
}

/// Where an exchange stands when a piece comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the card's bytes.
    Waiting,
    /// The answer is complete: no card bytes can come now, it is held to see whether any do.
    Holding,
}

/// What to do with a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Take,
    /// A copy of a piece this exchange had: dropped.
    Drop,
    /// The answer cannot be trusted to be this command's.
    Reject(&'static str),
}

#[derive(Debug, Default)]
struct Card {
    session: bool,
    tainted: bool,
    /// An exchange was given up with its reply outstanding.
    abandoned: bool,
    exchange: u64,
    /// Recent pieces: when they came, in which exchange, the bytes.
    recent: VecDeque<(Instant, u64, Vec<u8>)>,
}

/// Junk counted per window of one connection.
#[derive(Debug)]
struct Window {
    start: Instant,
    frames: u32,
    bad: u32,
}

#[derive(Debug)]
pub struct Integrity {
    opts: HealthOptions,
    cards: Vec<Card>,
    window: Window,
    /// The latest a copy came after its original; `None`: no copies seen.
    lateness: Option<Duration>,
    guarded_until: Option<Instant>,
    /// Until when a connection that looks bad is kept anyway (the last one was as bad).
    keep_until: Option<Instant>,
    hold: Backoff,
    /// The last health drop: the next connection is judged against it.
    dropped_last: bool,
}

impl Integrity {
    pub fn new(opts: HealthOptions, now: Instant) -> Integrity {
        let hold = Backoff::new(opts.window * 2, Duration::from_secs(300));
        Integrity {
            opts,
            cards: (0..256).map(|_| Card::default()).collect(),
            window: Window {
                start: now,
                frames: 0,
                bad: 0,
            },
            lateness: None,
            guarded_until: None,
            keep_until: None,
            hold,
            dropped_last: false,
        }
    }

    fn card(&mut self, s: Slot) -> &mut Card {
        &mut self.cards[usize::from(s.0)]
    }

    // --- connections and the stream ---------------------------------------------------------

    /// A new connection: a fresh window. After a health drop it is kept for a while even if
    /// it looks as bad (answers that hold, for the log).
    pub fn connected(&mut self, now: Instant) -> Option<Duration> {
        self.window = Window {
            start: now,
            frames: 0,
            bad: 0,
        };
        if self.dropped_last {
            let keep = self.hold.next(0.5);
            self.keep_until = Some(now + keep);
            return Some(keep);
        }
        None
    }

    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.window.start) >= self.opts.window {
            let w = &self.window;
            let bad = w.bad >= self.opts.min_bad
                && f64::from(w.bad) >= self.opts.max_bad_ratio * f64::from(w.frames);
            if !bad && w.frames > 0 && self.keep_until.is_none_or(|k| now >= k) {
                // A whole window went well: the pool is sane again.
                self.dropped_last = false;
                self.hold.reset();
            }
            self.window = Window {
                start: now,
                frames: 0,
                bad: 0,
            };
        }
    }

    /// A frame was decoded.
    pub fn frame(&mut self, now: Instant) {
        self.roll(now);
        self.window.frames += 1;
    }

    /// Junk in the stream (`what` for the log). `Err(why)`: drop the connection; `Ok(Some(..))`:
    /// the window is past the threshold but the connection is kept (log that once).
    pub fn junk(&mut self, what: &str, now: Instant) -> Result<Option<String>, String> {
        self.roll(now);
        self.window.frames += 1;
        self.window.bad += 1;
        let w = &self.window;
        let h = &self.opts;
        if w.bad < h.min_bad || f64::from(w.bad) < h.max_bad_ratio * f64::from(w.frames) {
            return Ok(None);
        }
        let counts = format!(
            "{} of the last {} frames within {} s were bad (last: {what})",
            w.bad,
            w.frames,
            h.window.as_secs_f64()
        );
        self.window.bad = 0;
        self.window.frames = 0;
        match self.keep_until {
            Some(k) if now < k => Ok(Some(format!(
                "{counts}, as on the connection before: serving on, a new connection is tried \
                 again in {} s",
                k.duration_since(now).as_secs()
            ))),
            _ => {
                self.dropped_last = true;
                self.keep_until = None;
                Err(format!("{counts}: dropping the connection"))
            }
        }
    }

    // --- cards ------------------------------------------------------------------------------

    /// The card was started (its ATR came): a new session, nothing old counts.
    pub fn started(&mut self, s: Slot) {
        let c = self.card(s);
        c.session = true;
        c.tainted = false;
        c.abandoned = false;
        c.recent.clear();
    }

    /// A start is under way: what came before is no longer this session's.
    pub fn starting(&mut self, s: Slot) {
        let c = self.card(s);
        c.tainted = false;
        c.abandoned = false;
    }

    /// The card was stopped.
    pub fn stopped(&mut self, s: Slot) {
        let c = self.card(s);
        c.session = false;
        c.tainted = false;
    }

    /// An exchange (or start) ended without its reply: that reply may still come.
    pub fn abandoned(&mut self, s: Slot) {
        self.card(s).abandoned = true;
    }

    /// An exchange begins. `false`: the card got bytes outside any exchange since it was last
    /// asked, so its T=0 state is unknown and this exchange must fail (the taint is taken).
    pub fn exchange_begins(&mut self, s: Slot) -> bool {
        let c = self.card(s);
        c.exchange += 1;
        c.abandoned = false;
        !std::mem::take(&mut c.tainted)
    }

    /// A frame came for a card nobody waits for.
    pub fn stray(&mut self, s: Slot, data: &[u8], now: Instant) -> Stray {
        let c = self.card(s);
        if c.abandoned {
            // The card's T=0 state is unknown if it still runs.
            c.tainted = c.session;
            return Stray::Late;
        }
        if !c.session {
            return Stray::Idle;
        }
        c.tainted = true;
        // Bytes nobody asked for, for a running card: late or duplicated replies, so answers
        // are held from now on (and if they repeat a recent piece, how late they came is
        // learnt).
        if let Some((_, age)) = self.copy(s, data, now) {
            self.learn(age);
        }
        Stray::Tainted {
            guard_began: self.guard(now),
        }
    }

    /// A broken frame (a wrong length) for a card with no exchange to fail: a running card's
    /// next exchange fails.
    pub fn broken(&mut self, s: Slot) {
        let c = self.card(s);
        if c.session {
            c.tainted = true;
        }
    }

    /// A piece an exchange of the card took.
    pub fn received(&mut self, s: Slot, piece: &[u8], now: Instant) {
        let c = self.card(s);
        let ex = c.exchange;
        if c.recent.len() == RECENT {
            c.recent.pop_front();
        }
        c.recent.push_back((now, ex, piece.to_vec()));
    }

    /// Whether `piece` repeats a recent one of the card's, and how long after it came.
    pub fn copy(&mut self, s: Slot, piece: &[u8], now: Instant) -> Option<(Copy, Duration)> {
        let c = &mut self.cards[usize::from(s.0)];
        while c
            .recent
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > MAX_LATENESS)
        {
            c.recent.pop_front();
        }
        let (t, ex, _) = c.recent.iter().rev().find(|(_, _, p)| p == piece)?;
        let kind = if *ex == c.exchange {
            Copy::OfThisExchange
        } else {
            Copy::OfEarlier
        };
        Some((kind, now.duration_since(*t)))
    }

    /// A copy came `age` after its original (seen where no card bytes can be legitimate).
    pub fn learn(&mut self, age: Duration) {
        self.lateness = Some(self.lateness.map_or(age, |l| l.max(age)));
    }

    /// Whether a piece an exchange waits for, identical to one `age` old, may be a copy (as
    /// late as copies were seen to come). Older ones are taken: cards do answer alike.
    pub fn may_be_copy(&self, age: Duration) -> bool {
        let bound = self
            .lateness
            .map_or(self.opts.settle, |l| l * 5 / 4 + Duration::from_millis(5));
        age <= bound.max(self.opts.settle)
    }

    /// Judges a piece that came for an exchange of the card; taken pieces are remembered.
    /// The second value: the guard began now.
    pub fn piece(&mut self, s: Slot, piece: &[u8], phase: Phase, now: Instant) -> (Verdict, bool) {
        let guarded = self.settle(now).is_some();
        let copy = self.copy(s, piece, now);
        let (verdict, guard) = match (phase, copy) {
            // A copy of what this exchange had, while the card waits for the host: dropped.
            (Phase::Holding, Some((Copy::OfThisExchange, age))) => {
                self.learn(age);
                (Verdict::Drop, true)
            }
            // A copy of an earlier exchange's piece, as late as copies come: dropped; later
            // than that, the pieces this exchange took were checked against too short a time.
            (Phase::Holding, Some((Copy::OfEarlier, age))) => {
                let fits = guarded && self.may_be_copy(age);
                self.learn(age);
                if fits {
                    (Verdict::Drop, true)
                } else {
                    (
                        Verdict::Reject("a copy of an earlier reply followed the answer late"),
                        true,
                    )
                }
            }
            (Phase::Holding, None) => (
                Verdict::Reject("another reply followed the answer within the settle time"),
                true,
            ),
            (Phase::Waiting, Some((kind, age))) if guarded && self.may_be_copy(age) => {
                if kind == Copy::OfEarlier || piece.len() == 1 {
                    // An earlier exchange's piece again, or a procedure byte of this one (a
                    // NULL is "wait" either way; an ACK after the data is no answer): a copy or,
                    // if it was the card's, the exchange times out. Never taken.
                    (Verdict::Drop, false)
                } else {
                    (
                        Verdict::Reject(
                            "a piece of this answer came again before the answer was complete: \
                             which bytes are the card's cannot be told",
                        ),
                        false,
                    )
                }
            }
            (Phase::Waiting, _) => (Verdict::Take, false),
        };
        if verdict == Verdict::Take {
            self.received(s, piece, now);
        }
        let began = guard && self.guard(now);
        (verdict, began)
    }

    /// Copies were seen: hold answers from now on, for a while.
    pub fn guard(&mut self, now: Instant) -> bool {
        if self.opts.settle.is_zero() {
            return false;
        }
        let was = self.settle(now).is_some();
        self.guarded_until = Some(now + self.opts.guard);
        !was
    }

    /// How long to hold a step that waits for the host, while guarded: longer than copies
    /// were seen to come late.
    pub fn settle(&self, now: Instant) -> Option<Duration> {
        let until = self.guarded_until?;
        if now >= until {
            return None;
        }
        let learnt = self
            .lateness
            .map_or(Duration::ZERO, |l| l * 3 / 2 + Duration::from_millis(10));
        Some(self.opts.settle.max(learnt).min(MAX_SETTLE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn opts() -> HealthOptions {
        HealthOptions {
            window: Duration::from_secs(2),
            ..HealthOptions::default()
        }
    }

    #[test]
    fn a_frame_for_a_card_without_session_harms_nothing() {
        let t = Instant::now();
        let mut i = Integrity::new(opts(), t);
        let s = Slot(100);
        assert_eq!(i.stray(s, &[0x90, 0x00], t), Stray::Idle);
        assert!(i.exchange_begins(s), "not tainted");
        assert_eq!(i.settle(t), None, "no guard");
    }

    #[test]
    fn bytes_for_a_running_card_taint_it_and_guard_the_link() {
        let t = Instant::now();
        let mut i = Integrity::new(opts(), t);
        let s = Slot(3);
        i.started(s);
        assert_eq!(
            i.stray(s, &[0x90, 0x00], t),
            Stray::Tainted { guard_began: true }
        );
        assert_eq!(i.settle(t), Some(HealthOptions::default().settle));
        assert!(!i.exchange_begins(s), "its next exchange fails");
        assert!(i.exchange_begins(s), "once");
        // A restart clears it.
        i.stray(s, &[0x90, 0x00], t);
        i.started(s);
        assert!(i.exchange_begins(s));
    }

    #[test]
    fn a_late_reply_to_a_given_up_exchange_is_expected() {
        let t = Instant::now();
        let mut i = Integrity::new(opts(), t);
        let s = Slot(7);
        i.started(s);
        assert!(i.exchange_begins(s));
        i.abandoned(s);
        assert_eq!(i.stray(s, &[0x90, 0x00], t), Stray::Late);
        assert_eq!(i.settle(t), None, "not a sign of duplicates");
        assert!(!i.exchange_begins(s), "but the card's state is unknown");
        // Also after the card was stopped (a Ctrl-C stops what it started).
        i.abandoned(s);
        i.stopped(s);
        assert_eq!(i.stray(s, &[0x3B, 0x00], t), Stray::Late);
        i.started(s);
        assert!(i.exchange_begins(s));
    }

    #[test]
    fn the_hold_is_learnt_from_how_late_copies_come() {
        let t = Instant::now();
        let mut i = Integrity::new(opts(), t);
        let s = Slot(1);
        i.started(s);
        assert!(i.exchange_begins(s));
        i.received(s, &[0x9F, 0x0F], t);
        assert!(i.may_be_copy(20 * MS) && !i.may_be_copy(21 * MS));
        // A copy 40 ms later, in the same exchange's hold.
        let (kind, age) = i.copy(s, &[0x9F, 0x0F], t + 40 * MS).unwrap();
        assert_eq!((kind, age), (Copy::OfThisExchange, 40 * MS));
        i.learn(age);
        assert!(i.guard(t + 40 * MS));
        assert!(!i.guard(t + 41 * MS), "guarded already");
        assert_eq!(i.settle(t + 40 * MS), Some(70 * MS));
        assert!(i.may_be_copy(55 * MS) && !i.may_be_copy(56 * MS));
        // In the next exchange the same bytes are an earlier exchange's.
        assert!(i.exchange_begins(s));
        let (kind, _) = i.copy(s, &[0x9F, 0x0F], t + 100 * MS).unwrap();
        assert_eq!(kind, Copy::OfEarlier);
        assert_eq!(i.copy(s, &[0x90, 0x00], t + 100 * MS), None);
        // Too old to be a copy.
        assert_eq!(i.copy(s, &[0x9F, 0x0F], t + 2000 * MS), None);
        // The guard ends.
        assert_eq!(i.settle(t + 700 * Duration::from_secs(1)), None);
    }

    #[test]
    fn pieces_in_a_hold_are_copies_or_reject_the_answer() {
        let t = Instant::now();
        let mut i = Integrity::new(opts(), t);
        let s = Slot(9);
        i.started(s);
        i.exchange_begins(s);
        let take = |i: &mut Integrity, p: &[u8], ph, ms| i.piece(s, p, ph, t + ms * MS).0;
        assert_eq!(take(&mut i, &[0xA4], Phase::Waiting, 0), Verdict::Take);
        // Unguarded: an identical piece is taken (cards do repeat themselves).
        assert_eq!(take(&mut i, &[0xA4], Phase::Waiting, 1), Verdict::Take);
        // The copy of the ACK in the hold: dropped, learnt, and the link is guarded.
        assert_eq!(take(&mut i, &[0xA4], Phase::Holding, 40), Verdict::Drop);
        // 39 ms after the latest ACK: held 1.5 x 39 + 10 ms.
        assert_eq!(i.settle(t + 40 * MS), Some(Duration::from_micros(68_500)));
        assert_eq!(
            take(&mut i, &[0x9F, 0x0F], Phase::Waiting, 41),
            Verdict::Take
        );
        assert!(matches!(
            take(&mut i, &[0x6A, 0x82], Phase::Holding, 42),
            Verdict::Reject(_)
        ));
        // Next exchange, guarded: the earlier SW again, soon after: may be a copy, never
        // taken.
        i.exchange_begins(s);
        assert_eq!(
            take(&mut i, &[0x9F, 0x0F], Phase::Waiting, 60),
            Verdict::Drop
        );
        assert_eq!(take(&mut i, &[0xA4], Phase::Holding, 50), Verdict::Drop);
        // An earlier piece in a hold, later than copies were seen to come: the answer is
        // not trusted.
        assert!(matches!(
            take(&mut i, &[0xA4], Phase::Holding, 150),
            Verdict::Reject(_)
        ));
        // Much later the same bytes are an answer.
        assert_eq!(
            take(&mut i, &[0x9F, 0x0F], Phase::Waiting, 400),
            Verdict::Take
        );
        assert_eq!(take(&mut i, &[0x60], Phase::Waiting, 401), Verdict::Take);
        assert_eq!(take(&mut i, &[0x60], Phase::Waiting, 402), Verdict::Drop);
    }

    #[test]
    fn a_bad_stream_is_dropped_once_then_kept_with_a_growing_hold() {
        let t = Instant::now();
        let mut i = Integrity::new(opts(), t);
        assert_eq!(i.connected(t), None);
        for _ in 0..4 {
            assert_eq!(i.junk("undecodable", t), Ok(None));
        }
        let why = i.junk("undecodable", t).unwrap_err();
        assert!(why.contains("5 of the last 5 frames"), "{why}");
        // The next connection is as bad: kept.
        let t1 = t + 100 * MS;
        assert_eq!(i.connected(t1), Some(Duration::from_secs(4)));
        for _ in 0..4 {
            i.junk("undecodable", t1).unwrap();
        }
        let kept = i.junk("undecodable", t1).unwrap().unwrap();
        assert!(kept.contains("serving on"), "{kept}");
        // After the hold another drop is allowed; the hold after it is longer.
        let t2 = t1 + Duration::from_secs(5);
        for _ in 0..4 {
            i.junk("undecodable", t2).unwrap();
        }
        assert!(i.junk("undecodable", t2).is_err());
        assert_eq!(i.connected(t2), Some(Duration::from_secs(8)));
    }

    #[test]
    fn a_few_bad_frames_among_many_good_ones_keep_the_connection() {
        let t = Instant::now();
        let mut i = Integrity::new(opts(), t);
        i.connected(t);
        for k in 0..700 {
            if k % 7 == 0 {
                assert_eq!(i.junk("wrong length", t), Ok(None));
            } else {
                i.frame(t);
            }
        }
        // A sane window after a drop resets the hold.
        for _ in 0..5 {
            let _ = i.junk("x", t);
        }
        let t1 = t + Duration::from_secs(3);
        i.connected(t1);
        i.frame(t1 + Duration::from_secs(5));
        i.frame(t1 + Duration::from_secs(10));
        assert_eq!(i.connected(t1 + Duration::from_secs(10)), None);
    }
}
