//! Per-source token bucket as a GCRA (generic cell rate algorithm): the
//! whole state is one `u64`, the theoretical arrival time (TAT), so the
//! kernel can update it with a single compare-and-swap. It admits exactly
//! the same sequences as a token bucket with `burst` tokens refilled at one
//! token every `interval_ns`.

/// Rate and burst of a bucket, in the form the kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Nanoseconds per token (the emission interval). 0 disables the bucket.
    pub interval_ns: u64,
    /// How far the TAT may run ahead of now: `interval_ns * (burst - 1)`.
    pub tolerance_ns: u64,
}

impl Bucket {
    /// A bucket admitting `burst` back-to-back attempts and then one attempt
    /// per `period_ns / per_period`. `per_period` and `burst` must be >= 1.
    #[must_use]
    pub const fn new(per_period: u64, period_ns: u64, burst: u64) -> Self {
        let interval_ns = match period_ns.checked_div(per_period) {
            Some(i) => i,
            None => 0,
        };
        let interval_ns = if interval_ns == 0 && per_period != 0 { 1 } else { interval_ns };
        let burst = if burst == 0 { 1 } else { burst };
        Self { interval_ns, tolerance_ns: interval_ns.saturating_mul(burst - 1) }
    }

    /// The bucket that never refuses.
    pub const UNLIMITED: Self = Self { interval_ns: 0, tolerance_ns: 0 };

    #[must_use]
    pub const fn is_unlimited(&self) -> bool {
        self.interval_ns == 0
    }

    /// Decides one attempt at `now_ns` against the stored TAT. Returns the
    /// TAT to store if the attempt is admitted, `None` if it is refused (and
    /// the stored TAT must stay as it is).
    #[inline(always)]
    #[must_use]
    pub const fn admit(&self, tat: u64, now_ns: u64) -> Option<u64> {
        if self.interval_ns == 0 {
            return Some(tat);
        }
        // An idle bucket is full: its TAT lies in the past.
        let tat = if tat > now_ns { tat } else { now_ns };
        if tat - now_ns > self.tolerance_ns { None } else { Some(tat.saturating_add(self.interval_ns)) }
    }

    /// Tokens left at `now_ns` for the stored TAT (for reporting only).
    #[must_use]
    pub const fn tokens(&self, tat: u64, now_ns: u64) -> u64 {
        if self.interval_ns == 0 {
            return u64::MAX;
        }
        let ahead = tat.saturating_sub(now_ns);
        let used = ahead.div_ceil(self.interval_ns);
        let burst = self.tolerance_ns / self.interval_ns + 1;
        burst.saturating_sub(used)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_refuse() {
        let b = Bucket::new(5, SEC, 5);
        let mut tat = 0;
        let now = 100 * SEC;
        for i in 0..5 {
            tat = b.admit(tat, now).unwrap_or_else(|| panic!("attempt {i} refused"));
        }
        assert_eq!(b.admit(tat, now), None, "6th attempt in the same instant must be refused");
        assert_eq!(b.tokens(tat, now), 0);
    }

    #[test]
    fn refills_one_token_per_interval() {
        let b = Bucket::new(5, SEC, 5);
        let mut tat = 0;
        let now = 100 * SEC;
        for _ in 0..5 {
            tat = b.admit(tat, now).expect("within burst");
        }
        assert_eq!(b.admit(tat, now + SEC / 5 - 1), None, "no token before one interval");
        let tat2 = b.admit(tat, now + SEC / 5).expect("one token after one interval");
        assert_eq!(b.admit(tat2, now + SEC / 5), None);
        assert_eq!(b.tokens(tat, now + 10 * SEC), 5, "an idle bucket refills to the burst, not beyond");
    }

    #[test]
    fn per_minute_rates() {
        let b = Bucket::new(30, 60 * SEC, 10);
        assert_eq!(b.interval_ns, 2 * SEC);
        assert_eq!(b.tolerance_ns, 18 * SEC);
    }

    #[test]
    fn unlimited_always_admits() {
        assert_eq!(Bucket::UNLIMITED.admit(7, 3), Some(7));
    }

    proptest! {
        /// Whatever the arrival pattern, admitted attempts never exceed
        /// burst + elapsed / interval (the token-bucket bound), and a burst
        /// at one instant on a full bucket admits exactly `burst`.
        #[test]
        fn never_exceeds_token_bound(
            per in 1u64..1000,
            burst in 1u64..50,
            gaps in proptest::collection::vec(0u64..50_000_000, 1..400),
        ) {
            let b = Bucket::new(per, SEC, burst);
            let start = 1_000 * SEC;
            let mut now = start;
            let mut tat = 0;
            let mut admitted = 0u64;
            for g in gaps {
                now += g;
                if let Some(t) = b.admit(tat, now) {
                    tat = t;
                    admitted += 1;
                }
                let bound = burst + (now - start) / b.interval_ns;
                prop_assert!(admitted <= bound, "admitted {} > bound {}", admitted, bound);
            }
        }

        #[test]
        fn full_bucket_admits_exactly_burst(per in 1u64..10_000, burst in 1u64..200) {
            let b = Bucket::new(per, SEC, burst);
            let now = 5_000 * SEC;
            let mut tat = 0;
            let mut admitted = 0;
            for _ in 0..burst + 20 {
                if let Some(t) = b.admit(tat, now) { tat = t; admitted += 1; }
            }
            prop_assert_eq!(admitted, burst);
        }

        /// A source sending at exactly the refill rate is never refused.
        #[test]
        fn steady_rate_is_never_refused(per in 1u64..1000, burst in 1u64..10, n in 1usize..300) {
            let b = Bucket::new(per, SEC, burst);
            let mut now = 77 * SEC;
            let mut tat = 0;
            for _ in 0..n {
                tat = b.admit(tat, now).expect("steady rate refused");
                now += b.interval_ns;
            }
        }
    }
}
