//! "Say why, once per distinct cause": a problem that persists (a pool away, vpcd not
//! listening, a card that cannot be had) is logged when it appears and again only when its
//! cause changes, not on every retry.

/// The last cause logged for one thing that can go wrong.
#[derive(Debug, Default, Clone)]
pub struct LogOnce {
    last: Option<String>,
}

impl LogOnce {
    /// True when `cause` is not the one logged last (it is remembered as logged).
    pub fn is_new(&mut self, cause: &str) -> bool {
        if self.last.as_deref() == Some(cause) {
            return false;
        }
        self.last = Some(cause.to_string());
        true
    }

    /// Logs `context: cause` at warning level if the cause is new.
    pub fn warn(&mut self, context: &str, cause: &str) {
        if self.is_new(cause) {
            log::warn!("{context}: {cause}");
        }
    }

    /// The problem is over. True if one had been logged (so the caller can say it is over).
    pub fn clear(&mut self) -> bool {
        self.last.take().is_some()
    }
}

/// "Once per cause" for many causes at a time (kinds of frames skipped, unknown state bytes):
/// each distinct cause is logged the first time it is seen. Bounded: past `MAX_CAUSES`
/// distinct causes, nothing more is logged (the counters still count).
#[derive(Debug, Default)]
pub struct LogEach {
    seen: std::collections::HashSet<String>,
}

const MAX_CAUSES: usize = 64;

impl LogEach {
    /// True the first time `cause` is seen.
    pub fn is_new(&mut self, cause: &str) -> bool {
        if self.seen.contains(cause) || self.seen.len() >= MAX_CAUSES {
            return false;
        }
        self.seen.insert(cause.to_string())
    }

    /// Logs `context: cause` at warning level the first time.
    pub fn warn(&mut self, context: &str, cause: &str) {
        if self.is_new(cause) {
            log::warn!("{context}: {cause}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_of_many_causes_once() {
        let mut l = LogEach::default();
        assert!(l.is_new("AA 77"));
        assert!(l.is_new("AA 45"));
        assert!(!l.is_new("AA 77"));
        for i in 0..100 {
            l.is_new(&i.to_string());
        }
        assert!(!l.is_new("one more"), "bounded");
    }

    #[test]
    fn each_cause_once_and_again_after_a_change_or_a_clear() {
        let mut l = LogOnce::default();
        assert!(l.is_new("refused"));
        assert!(!l.is_new("refused"));
        assert!(l.is_new("timed out"));
        assert!(l.is_new("refused"));
        assert!(l.clear());
        assert!(!l.clear());
        assert!(l.is_new("refused"));
    }
}
