//! A per-core budget of log lines for events a client can cause at any rate (rejected
//! tokens): a storm of bad logins must not become a storm of log lines.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Lines allowed per window; the rest are counted and reported in one line.
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    start: Cell<Option<Instant>>,
    logged: Cell<u32>,
    suppressed: Cell<u64>,
}

/// What the caller should do with one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log it; `suppressed` events of the previous window were not logged.
    Log { suppressed: u64 },
    /// Count it only.
    Suppress,
}

impl LogLimiter {
    /// At most `per_window` lines per `window`.
    pub fn new(per_window: u32, window: Duration) -> Self {
        LogLimiter {
            per_window,
            window,
            start: Cell::new(None),
            logged: Cell::new(0),
            suppressed: Cell::new(0),
        }
    }

    /// Whether an event at `now` is logged.
    pub fn admit(&self, now: Instant) -> Admit {
        let fresh = self
            .start
            .get()
            .is_none_or(|s| now.duration_since(s) >= self.window);
        if fresh {
            self.start.set(Some(now));
            self.logged.set(0);
        }
        if self.logged.get() < self.per_window {
            self.logged.set(self.logged.get() + 1);
            return Admit::Log {
                suppressed: self.suppressed.replace(0),
            };
        }
        self.suppressed.set(self.suppressed.get() + 1);
        Admit::Suppress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_to_the_budget_and_the_rest_reported_in_the_next_window() {
        let l = LogLimiter::new(3, Duration::from_secs(1));
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.admit(t), Admit::Log { suppressed: 0 });
        }
        for _ in 0..100 {
            assert_eq!(l.admit(t), Admit::Suppress);
        }
        let later = t + Duration::from_secs(1);
        assert_eq!(l.admit(later), Admit::Log { suppressed: 100 });
        assert_eq!(l.admit(later), Admit::Log { suppressed: 0 });
    }
}
