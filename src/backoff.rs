//! Capped exponential back-off with jitter, as a plain value (no clock, no sleeping): the
//! caller says when a try went well and sleeps what [`Backoff::next`] answers. Used by the
//! pool link's reconnects, its "as bad as the last connection" hold, and the remsim bank.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The wait before the next try, jittered by `frac` (0..1, see [`jitter`]); the one after
    /// it doubles, up to the cap.
    pub fn next(&mut self, frac: f64) -> Duration {
        let wait = jitter(self.next, frac);
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// The un-jittered wait [`Backoff::next`] would start from.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// A try went well: start from the shortest wait again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// `d` scaled by 0.75 to 1.25 (`frac` 0..1), so that many hosts restarting together do not
/// retry in lock-step.
pub fn jitter(d: Duration, frac: f64) -> Duration {
    d.mul_f64(0.75 + 0.5 * frac.clamp(0.0, 1.0))
}

/// A fraction 0..1 that differs between hosts and calls (the clock's nanoseconds): enough to
/// spread retries, no cryptographic use.
pub fn clock_frac() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(100 * MS, 450 * MS);
        let waits: Vec<_> = (0..5).map(|_| b.next(0.5)).collect();
        assert_eq!(waits, [100 * MS, 200 * MS, 400 * MS, 450 * MS, 450 * MS]);
        b.reset();
        assert_eq!(b.next(0.5), 100 * MS);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        assert_eq!(jitter(100 * MS, 0.0), 75 * MS);
        assert_eq!(jitter(100 * MS, 1.0), 125 * MS);
        assert_eq!(jitter(100 * MS, 7.0), 125 * MS);
        let f = clock_frac();
        assert!((0.0..1.0).contains(&f));
    }
}
