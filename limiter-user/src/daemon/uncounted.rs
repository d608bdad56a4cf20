//! Warns as soon as `CONNS` is full. `sock_ops` counts each established
//! connection it could not count (`UNCOUNTED`); the daemon reads the sum
//! every [`EVERY`] and warns when it grew, at most once per [`QUIET`], each
//! warning with how many went uncounted since the last one. (The reclaim
//! pass also warns when the table is nearly full, but only every 30 s.)

use std::time::{Duration, Instant};

/// How often the count is read.
pub const EVERY: Duration = Duration::from_secs(1);

/// The least time between two warnings.
pub const QUIET: Duration = Duration::from_mins(1);

/// The count the daemon has seen, and what it has warned about.
#[derive(Debug)]
pub struct Watch {
    /// `CONNS`' entries (fixed while the daemon runs: a pinned map keeps its size).
    capacity: u32,
    /// The kernel's total at the last reading.
    seen: u64,
    /// Uncounted since the last warning, not yet warned about.
    unwarned: u64,
    last_warning: Option<Instant>,
}

impl Watch {
    /// A watch of a table of `capacity` entries that has seen nothing yet.
    #[must_use]
    pub const fn new(capacity: u32) -> Self {
        Self { capacity, seen: 0, unwarned: 0, last_warning: None }
    }

    /// Takes the kernel's total now (it starts at 0 with the programs, which
    /// each start loads); returns the warning to log, if one is due.
    pub fn observe(&mut self, total: u64, now: Instant) -> Option<String> {
        // The count only grows; a smaller one is a new map: start from it.
        let grew = total.saturating_sub(self.seen);
        self.seen = total;
        self.unwarned += grew;
        if self.unwarned == 0 || self.last_warning.is_some_and(|t| now.duration_since(t) < QUIET) {
            return None;
        }
        let n = std::mem::take(&mut self.unwarned);
        self.last_warning = Some(now);
        let capacity = self.capacity;
        let what = if n == 1 { "1 connection" } else { &format!("{n} connections") };
        Some(format!(
            "{what} went uncounted: the connection table is full ({capacity} entries); their sources' limits are not \
             enforced until entries free up; raise [maps] connections"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_at_the_first_growth_then_once_per_quiet_period_with_the_sum() {
        let t0 = Instant::now();
        let mut w = Watch::new(1024);
        assert_eq!(w.observe(0, t0), None, "nothing uncounted, nothing said");
        let first = w.observe(1, t0 + EVERY).expect("the first uncounted connection warns at once");
        assert!(first.starts_with("1 connection went uncounted"), "{first}");
        assert!(first.contains("(1024 entries)") && first.contains("[maps] connections"), "{first}");
        // More within the quiet period: held back, then summed.
        assert_eq!(w.observe(4, t0 + 2 * EVERY), None);
        assert_eq!(w.observe(9, t0 + QUIET), None, "the quiet period runs from the warning");
        let second = w.observe(9, t0 + EVERY + QUIET).expect("due once the period is over");
        assert!(second.starts_with("8 connections went uncounted"), "{second}");
        // Nothing new: nothing said, however long it has been.
        assert_eq!(w.observe(9, t0 + 10 * QUIET), None);
        // Growth after a long quiet: at once.
        assert!(w.observe(10, t0 + 10 * QUIET + EVERY).is_some());
    }

    #[test]
    fn a_total_that_went_down_is_a_new_count_not_a_huge_growth() {
        let t0 = Instant::now();
        let mut w = Watch::new(8);
        let _ = w.observe(100, t0);
        assert_eq!(w.observe(3, t0 + 2 * QUIET), None, "a smaller total is taken as the new base");
        assert!(w.observe(4, t0 + 3 * QUIET).expect("then growth warns").starts_with("1 connection"));
    }
}
