//! Sessions of a service (the sessions rule): `max_sessions` caps all its connections,
//! and once `max_sessions - reserved_sessions` are in use only sources on
//! the service's reserve list get in.
//!
//! Sessions in use = established connections (counted by `sock_ops`, plus
//! those seeded from before the programs ran) + handshakes in flight. The
//! handshakes are reservations XDP takes with a compare-and-swap before it
//! lets a SYN through, so M simultaneous SYNs on any CPUs admit exactly as
//! many as the pool has room for; `sock_ops` gives one back when a
//! handshake completes, and a reservation whose handshake never completes
//! expires.
//!
//! Reservation word: `epoch:32 | current:16 | previous:16`. `epoch` is the
//! current bucket of [`BUCKET_TICKS`] ticks; `current` counts reservations
//! made in it, `previous` those of the bucket before. A reservation lives
//! one to two buckets (2.2 to 4.4 s); a release takes from `previous`
//! first, which can only make the remaining ones live longer (the pool
//! never undercounts a live handshake).

use crate::{ServicePolicy, Verdict};

/// Ticks (2^20 ns) per bucket: 2^11 ticks, about 2.2 s.
pub const BUCKET_SHIFT: u32 = 11;
pub const BUCKET_TICKS: u32 = 1 << BUCKET_SHIFT;

/// `SESSIONS` holds [`STRIDE`] `u64`s per service id, each its own array
/// entry so the daemon's writes never touch the programs' words.
pub const STRIDE: u32 = 4;
/// Established connections of non-exempt sources (`sock_ops`, atomics).
pub const ESTABLISHED: u32 = 0;
/// Handshakes in flight: the reservation word (XDP and `sock_ops`, atomics).
pub const PENDING: u32 = 1;
/// Connections that predate the programs, still open (the daemon).
pub const SEEDED: u32 = 2;
/// Entries of `SESSIONS`.
pub const ENTRIES: u32 = (crate::maps::MAX_SERVICES + 1) * STRIDE;

/// The `SESSIONS` index of `field` of service `id`.
#[inline(always)]
#[must_use]
pub const fn index(id: u32, field: u32) -> u32 {
    id * STRIDE + field
}

#[inline(always)]
#[must_use]
const fn unpack(word: u64) -> (u32, u16, u16) {
    #[expect(clippy::cast_possible_truncation, reason = "fields of a packed u64")]
    ((word >> 32) as u32, (word >> 16) as u16, word as u16)
}

#[inline(always)]
#[must_use]
const fn pack(epoch: u32, current: u16, previous: u16) -> u64 {
    (epoch as u64) << 32 | (current as u64) << 16 | previous as u64
}

/// The word's counts as seen at bucket `now`: (current, previous), with
/// buckets that have expired emptied.
#[inline(always)]
#[must_use]
const fn live_counts(word: u64, now: u32) -> (u16, u16) {
    let (epoch, current, previous) = unpack(word);
    match now.wrapping_sub(epoch) {
        0 => (current, previous),
        1 => (0, current),
        _ => (0, 0),
    }
}

/// The bucket of a tick count.
#[inline(always)]
#[must_use]
pub const fn bucket(ticks: u32) -> u32 {
    ticks >> BUCKET_SHIFT
}

/// Handshakes in flight at bucket `now`.
#[inline(always)]
#[must_use]
pub const fn pending(word: u64, now: u32) -> u64 {
    let (c, p) = live_counts(word, now);
    c as u64 + p as u64
}

/// The sessions rule for `in_use` sessions: `None` if there is room for this source,
/// else the refusal.
///
/// Branch-free in `reserved` on purpose: in the kernel it is often a known
/// constant (no list entry), and a branch the verifier can decide from a
/// constant makes it keep that path apart from the others, doubling what it
/// walks after this point.
#[inline(always)]
#[must_use]
pub const fn check(in_use: u64, policy: &ServicePolicy, reserved: bool) -> Option<Verdict> {
    let (max, open) = (policy.max_sessions as u64, policy.open_sessions as u64);
    // `max` for reserve-list sources, the open part for the others.
    let cap = open + (max.saturating_sub(open) & (reserved as u64).wrapping_neg());
    if in_use >= max {
        Some(Verdict::RefusedSessions)
    } else if in_use >= cap {
        Some(Verdict::RefusedReserve)
    } else {
        None
    }
}

/// Takes one reservation at bucket `now` if `established` + handshakes in
/// flight leave room under the sessions rule. `Ok(new word)` or `Err(refusal)`.
#[inline(always)]
pub const fn reserve(
    word: u64,
    now: u32,
    established: u64,
    policy: &ServicePolicy,
    reserved: bool,
) -> Result<u64, Verdict> {
    let (c, p) = live_counts(word, now);
    if let Some(v) = check(established + c as u64 + p as u64, policy, reserved) {
        return Err(v);
    }
    if c == u16::MAX {
        return Err(Verdict::RefusedSessions);
    }
    Ok(pack(now, c + 1, p))
}

/// Gives one reservation back (handshake completed, or a later rule refused
/// the SYN), oldest bucket first. `None` if nothing is in flight.
#[inline(always)]
#[must_use]
pub const fn release(word: u64, now: u32) -> Option<u64> {
    let (c, p) = live_counts(word, now);
    if p > 0 {
        Some(pack(now, c, p - 1))
    } else if c > 0 {
        Some(pack(now, c - 1, p))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const fn pool(max_sessions: u32, open_sessions: u32) -> ServicePolicy {
        ServicePolicy {
            rate_interval_ns: 0,
            rate_tolerance_ns: 0,
            max_conn_per_source: 0,
            action: 0,
            dead_peer: [0; 3],
            max_sessions,
            open_sessions,
        }
    }
    const POOL: ServicePolicy = pool(10, 4);

    #[test]
    fn ordinary_sources_stop_at_the_open_part_reserved_ones_at_max() {
        let mut w = 0;
        for _ in 0..4 {
            w = reserve(w, 5, 0, &POOL, false).expect("room");
        }
        assert_eq!(reserve(w, 5, 0, &POOL, false), Err(Verdict::RefusedReserve));
        for _ in 0..6 {
            w = reserve(w, 5, 0, &POOL, true).expect("reserved room");
        }
        assert_eq!(reserve(w, 5, 0, &POOL, true), Err(Verdict::RefusedSessions));
        assert_eq!(reserve(w, 5, 0, &POOL, false), Err(Verdict::RefusedSessions));
        assert_eq!(pending(w, 5), 10);
    }

    #[test]
    fn established_count_with_the_pending() {
        assert_eq!(reserve(0, 1, 9, &POOL, true).map(|w| pending(w, 1)), Ok(1));
        assert_eq!(reserve(0, 1, 10, &POOL, true), Err(Verdict::RefusedSessions));
        assert_eq!(reserve(0, 1, 3, &POOL, false).map(|w| pending(w, 1)), Ok(1));
        assert_eq!(reserve(0, 1, 4, &POOL, false), Err(Verdict::RefusedReserve));
    }

    #[test]
    fn reservations_live_one_to_two_buckets() {
        let w = reserve(0, 7, 0, &POOL, false).expect("room");
        assert_eq!(pending(w, 7), 1);
        assert_eq!(pending(w, 8), 1, "the next bucket still holds it");
        assert_eq!(pending(w, 9), 0, "gone after that");
        // Wrapping epochs.
        let w = reserve(0, u32::MAX, 0, &POOL, false).expect("room");
        assert_eq!(pending(w, 0), 1);
    }

    #[test]
    fn release_takes_the_oldest_first() {
        let w = reserve(0, 7, 0, &POOL, false).expect("room");
        let w = reserve(w, 8, 0, &POOL, false).expect("room");
        let w = release(w, 8).expect("one to give back");
        // The one left is counted as the newer: it lives to bucket 9.
        assert_eq!((pending(w, 8), pending(w, 9)), (1, 1));
        let w = release(w, 9).expect("one to give back");
        assert_eq!(release(w, 9), None);
    }

    #[test]
    fn zero_max_refuses() {
        let p = pool(0, 0);
        assert_eq!(reserve(0, 1, 0, &p, true), Err(Verdict::RefusedSessions));
    }

    proptest! {
        /// Any interleaving of reservations (ordinary or reserve-list),
        /// completions and closes within one bucket keeps established +
        /// in flight within max, and ordinary admissions within the open part.
        #[test]
        fn never_above_max(ops in proptest::collection::vec(0u8..4, 1..300), max in 1u32..30, reserved in 0u32..30) {
            let policy = pool(max, max - reserved.min(max));
            let (mut w, mut established, mut in_flight) = (0u64, 0u64, 0u64);
            for op in ops {
                match op {
                    0 | 1 => {
                        let before = established + in_flight;
                        if let Ok(n) = reserve(w, 3, established, &policy, op == 1) {
                            w = n;
                            in_flight += 1;
                            if op == 0 {
                                prop_assert!(before < u64::from(policy.open_sessions));
                            }
                        }
                    }
                    2 => if let Some(n) = release(w, 3) { w = n; in_flight -= 1; established += 1; },
                    _ => established = established.saturating_sub(1),
                }
                prop_assert!(established + in_flight <= u64::from(max));
                prop_assert_eq!(pending(w, 3), in_flight);
            }
        }

        /// Releases across a bucket change never leave fewer counted than
        /// are really in flight (until they expire).
        #[test]
        fn releases_never_undercount(first in 0u16..20, second in 0u16..20, releases in 0u16..40) {
            let big = pool(1000, 1000);
            let mut w = 0;
            for _ in 0..first { w = reserve(w, 100, 0, &big, false).expect("room"); }
            for _ in 0..second { w = reserve(w, 101, 0, &big, false).expect("room"); }
            let mut left = u64::from(first + second);
            for _ in 0..releases {
                if let Some(n) = release(w, 101) { w = n; left -= 1; }
            }
            prop_assert_eq!(pending(w, 101), left);
        }
    }
}
