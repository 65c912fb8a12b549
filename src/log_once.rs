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

#[cfg(test)]
mod tests {
    use super::*;

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
