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

/// A bucket in a `PENDING` slot's rate word; an aligned pair of slots is one
/// two-way set, indexed by the source hash:
/// `tag:16 | tat:48`, the TAT in [`UNIT_NS`] units. A source uses the slot of
/// its set that holds its tag; a new source starts with a full bucket and
/// takes the slot whose TAT is lower (an idle bucket, TAT in the past, holds
/// nothing worth keeping). So a flood of one-SYN spoofed sources keeps
/// replacing its own short-lived buckets and not the far-ahead TAT of a
/// source that has spent its burst; and every SYN costs one array access,
/// never an insert or an eviction.
pub mod slot {
    use super::Bucket;

    /// The TAT's unit: 1024 ns. 48 bits of it cover 9 years of uptime.
    pub const UNIT_NS: u64 = 1 << 10;
    const TAT: u64 = (1 << 48) - 1;

    #[inline(always)]
    #[must_use]
    pub const fn pack(tag: u16, tat_ns: u64) -> u64 {
        (tag as u64) << 48 | ((tat_ns / UNIT_NS) & TAT)
    }

    /// The TAT `slot` holds for `tag` (0, a full bucket, if another source's).
    #[inline(always)]
    #[must_use]
    pub const fn tat(slot: u64, tag: u16) -> u64 {
        if (slot >> 48) as u16 == tag { (slot & TAT) * UNIT_NS } else { 0 }
    }

    /// Which of a set's two slots (`a`, `b`) the source with `tag` uses:
    /// the one with its tag, else the one whose bucket is worth less.
    #[inline(always)]
    #[must_use]
    pub const fn choose(a: u64, b: u64, tag: u16) -> usize {
        let b_is_ours = (b >> 48) as u16 == tag;
        let a_is_ours = (a >> 48) as u16 == tag;
        if !a_is_ours && (b_is_ours || (b & TAT) < (a & TAT)) { 1 } else { 0 }
    }

    /// Decides one attempt of `tag`'s source at `now_ns`: the slot value to
    /// swap in if admitted, `None` if refused.
    #[inline(always)]
    #[must_use]
    pub const fn take(bucket: &Bucket, slot: u64, tag: u16, now_ns: u64) -> Option<u64> {
        match bucket.admit(tat(slot, tag), now_ns) {
            Some(tat) => Some(pack(tag, tat)),
            None => None,
        }
    }

    /// Spends one token of `tag`'s bucket in a word shared by all CPUs, in
    /// at most `tries` compare-and-swaps: `load` reads the word, `swap(old,
    /// new)` stores `new` if the word still holds `old`. True if a token was
    /// spent.
    ///
    /// A word that changed under every try refuses. Failing open instead let
    /// one more SYN through than the burst whenever four CPUs raced on one
    /// source (501 of 500 on Linux 6.1 under qemu), and a flooding source is
    /// what RSS spreads over every CPU. A refused client retransmits; a
    /// token taken that was not there is a broken limit.
    #[inline(always)]
    pub fn spend(
        bucket: &Bucket,
        tag: u16,
        now_ns: u64,
        tries: usize,
        mut load: impl FnMut() -> u64,
        mut swap: impl FnMut(u64, u64) -> bool,
    ) -> bool {
        for _ in 0..tries {
            let old = load();
            let Some(new) = take(bucket, old, tag, now_ns) else {
                return false;
            };
            if swap(old, new) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_new_source_replaces_the_bucket_worth_less() {
        let b = Bucket::new(1, 60 * SEC, 1);
        let now = 3_600 * SEC;
        // Source 1 spent its burst: TAT a minute ahead. Source 2 is idle.
        let spent = slot::take(&b, 0, 1, now).expect("first");
        let idle = slot::pack(2, now - SEC);
        assert_eq!(slot::choose(spent, idle, 3), 1, "the idle bucket goes");
        assert_eq!(slot::choose(idle, spent, 3), 0);
        assert_eq!(slot::choose(spent, idle, 1), 0, "own tag first");
        assert_eq!(slot::choose(idle, spent, 1), 1);
    }

    #[test]
    fn slot_keeps_a_bucket_per_tag() {
        let b = Bucket::new(1, 60 * SEC, 2);
        let now = 3_600 * SEC;
        let s = slot::take(&b, 0, 7, now).expect("first");
        let s = slot::take(&b, s, 7, now).expect("second (burst 2)");
        assert_eq!(slot::take(&b, s, 7, now), None, "third refused");
        let other = slot::take(&b, s, 8, now).expect("another tag starts full");
        assert!(slot::take(&b, other, 7, now).is_some(), "the first source's bucket was forgotten");
        assert!(slot::take(&b, s, 7, now + 60 * SEC).is_some(), "one token after one interval");
    }

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

    #[test]
    fn a_word_that_keeps_changing_refuses() {
        let b = Bucket::new(10, SEC, 10);
        let word = core::cell::Cell::new(0u64);
        let mut swaps = 0;
        let spent = slot::spend(
            &b,
            1,
            100 * SEC,
            4,
            || word.get(),
            |_, _| {
                swaps += 1;
                false
            },
        );
        assert!(!spent, "four lost races must not admit");
        assert_eq!(swaps, 4, "every try was a real compare-and-swap");
        assert_eq!(word.get(), 0, "nothing was written");
    }

    /// What one contended attempt did.
    struct Contended {
        spent: bool,
        /// Compare-and-swaps it made.
        swaps: usize,
        /// Tokens the other CPUs spent while it ran.
        rivals_spent: u64,
    }

    /// One attempt by this CPU on a shared word, with other CPUs' spends
    /// forced in between its load and its swap: `rivals[i]` of them before
    /// its i-th swap (each an uncontended spend of the same source).
    fn contended(b: &Bucket, word: &core::cell::Cell<u64>, now: u64, rivals: &[u8]) -> Contended {
        let cas = |old: u64, new: u64| {
            let ok = word.get() == old;
            if ok {
                word.set(new);
            }
            ok
        };
        let (mut swaps, mut rivals_spent) = (0, 0);
        let spent = slot::spend(
            b,
            5,
            now,
            4,
            || word.get(),
            |old, new| {
                for _ in 0..rivals.get(swaps).copied().unwrap_or(0) {
                    if slot::spend(b, 5, now, 4, || word.get(), cas) {
                        rivals_spent += 1;
                    }
                }
                swaps += 1;
                cas(old, new)
            },
        );
        Contended { spent, swaps, rivals_spent }
    }

    #[test]
    fn the_last_token_is_spent_once_under_contention() {
        // One token left; a rival takes it between this CPU's load and its
        // swap: the old fail-open admitted a second SYN after four such races.
        let b = Bucket::new(1, 60 * SEC, 1);
        let word = core::cell::Cell::new(0u64);
        let c = contended(&b, &word, 100 * SEC, &[1, 1, 1, 1]);
        assert!(!c.spent, "the rival had the only token");
        assert_eq!((c.swaps, c.rivals_spent), (1, 1), "one lost race, then the reload finds the bucket empty");
        // Every try lost with tokens still there: refused, nothing spent.
        let b = Bucket::new(10, 60 * SEC, 10);
        let word = core::cell::Cell::new(0u64);
        let c = contended(&b, &word, 100 * SEC, &[1, 1, 1, 1]);
        assert!(!c.spent);
        assert_eq!((c.swaps, c.rivals_spent), (4, 4));
        assert_eq!(b.tokens(slot::tat(word.get(), 5), 100 * SEC), 6, "only the rivals' four tokens are gone");
    }

    proptest! {
        /// However other CPUs' spends interleave with the tries, no token is
        /// made or lost: what was admitted plus what is left is the burst,
        /// after every attempt. An attempt is refused only on an empty
        /// bucket or after losing every one of its races.
        #[test]
        fn a_contended_burst_admits_exactly_the_burst(
            burst in 1u64..40,
            attempts in proptest::collection::vec(proptest::collection::vec(0u8..3, 0..6), 1..80),
        ) {
            let b = Bucket::new(burst, 60 * SEC, burst);
            let word = core::cell::Cell::new(0u64);
            let now = 1_000 * SEC;
            let mut admitted = 0;
            for rivals in &attempts {
                let c = contended(&b, &word, now, rivals);
                admitted += c.rivals_spent + u64::from(c.spent);
                let left = b.tokens(slot::tat(word.get(), 5), now);
                prop_assert_eq!(admitted + left, burst, "admitted {} with {} left", admitted, left);
                if !c.spent {
                    let lost_all = c.swaps == 4 && rivals.iter().take(4).all(|&r| r > 0);
                    prop_assert!(left == 0 || lost_all, "refused with {} left after {} swaps", left, c.swaps);
                }
            }
        }
    }

    proptest! {
        /// The packed slot admits what the plain TAT admits, give or take its
        /// 1024 ns rounding: at most one attempt apart over a whole sequence.
        #[test]
        fn slot_matches_plain_tat(per in 1u64..100, burst in 1u64..20, gaps in proptest::collection::vec(0u64..2 * SEC, 1..200)) {
            let b = Bucket::new(per, 60 * SEC, burst);
            let (mut plain, mut packed, mut now) = (0u64, 0u64, 1_000 * SEC);
            let (mut a, mut c) = (0u64, 0u64);
            for gap in gaps {
                now += gap;
                if let Some(t) = b.admit(plain, now) { plain = t; a += 1; }
                if let Some(s) = slot::take(&b, packed, 3, now) { packed = s; c += 1; }
            }
            prop_assert!(c.abs_diff(a) <= 1, "plain {a}, packed {c}");
        }

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
