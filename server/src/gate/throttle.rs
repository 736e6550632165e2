//! How many refusals are written to the audit log per second: a flood of
//! bad handshakes costs bounded log volume, and nothing is silently lost
//! (the suppressed count rides on the next logged one). The clock is the
//! caller's: [`LogWindow::slot`] takes the current second.
//! What it leaves to others: the log line itself (`session.rs`).

/// At most this many rejection events are logged per second; the rest are
/// counted and the count is reported with the next logged one.
pub const MAX_REJECTION_LOGS_PER_SEC: u32 = 50;

/// The current second's budget.
#[derive(Debug)]
pub(crate) struct LogWindow {
    second: u64,
    logged: u32,
    suppressed: u64,
}

impl LogWindow {
    /// An empty window.
    pub const fn new() -> LogWindow {
        LogWindow {
            second: 0,
            logged: 0,
            suppressed: 0,
        }
    }

    /// At second `now`: `Some(suppressed before)` when this refusal may be
    /// logged, `None` when it is only counted.
    pub fn slot(&mut self, now: u64) -> Option<u64> {
        if self.second != now {
            self.second = now;
            self.logged = 0;
        }
        if self.logged < MAX_REJECTION_LOGS_PER_SEC {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_51st_in_a_second_is_counted_not_logged_and_reported_later() {
        let mut w = LogWindow::new();
        for _ in 0..MAX_REJECTION_LOGS_PER_SEC {
            assert_eq!(w.slot(7), Some(0));
        }
        assert_eq!(w.slot(7), None);
        assert_eq!(w.slot(7), None);
        // the next second: logged again, with the two it swallowed
        assert_eq!(w.slot(8), Some(2));
        assert_eq!(w.slot(8), Some(0));
    }

    #[test]
    fn a_clock_that_goes_back_opens_a_new_window_not_a_free_one() {
        let mut w = LogWindow::new();
        for _ in 0..=MAX_REJECTION_LOGS_PER_SEC {
            w.slot(9);
        }
        assert_eq!(w.slot(9), None);
        // another second (even an earlier one) is a fresh budget of 50
        assert_eq!(w.slot(3), Some(2));
        for _ in 1..MAX_REJECTION_LOGS_PER_SEC {
            assert!(w.slot(3).is_some());
        }
        assert_eq!(w.slot(3), None);
    }
}
