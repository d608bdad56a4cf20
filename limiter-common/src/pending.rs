//! Handshakes in flight per source: reservations the XDP program takes when
//! it lets a SYN through, given back when the handshake completes (`sock_ops`)
//! or when they expire. They live in a direct-mapped array of packed `u64`
//! slots, so the cost per SYN is one array access and one compare-and-swap
//! whatever the flood; a slot taken over by another source only forgets
//! reservations, like an LRU eviction, and never touches established counts.
//!
//! A slot is a [`Slot`]: the reservation word and the source's [`hint`].
//! Reservation word: `tag:16 | count:16 | epoch:32`. `tag` comes from the
//! source hash bits not used for the index; `epoch` is the time of the newest
//! reservation in [`TICK_NS`] units (wrapping).

/// The clock unit of epochs: 2^20 ns (1.05 ms), a shift of the kernel's
/// nanosecond clock instead of a division on every SYN.
pub const TICK_NS: u64 = 1 << 20;

/// Reservations older than this many ticks (3.1 s) are dropped: the
/// handshake did not complete.
pub const HANDSHAKE_TIMEOUT: u32 = 3_000;

/// Default number of slots (a power of two); 32 bytes each.
pub const DEFAULT_SLOTS: u32 = 1 << 16;

/// The epoch of a nanosecond clock reading, in ticks (wrapping).
#[inline(always)]
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "a wrapping clock")]
pub const fn ticks(now_ns: u64) -> u32 {
    (now_ns / TICK_NS) as u32
}

/// One `PENDING` slot: everything XDP needs about a source, in half a cache
/// line, so a new source in a flood costs one cache miss, not four.
#[repr(C, align(32))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    /// Handshakes in flight (`tag|count|epoch`).
    pub reserved: u64,
    /// "At its limit" ([`hint`]).
    pub hint: u64,
    /// Established connections of all the sources on this slot, and which
    /// sources hold them ([`holders`]): `sock_ops` adds one after `CONNS`,
    /// takes one away after `CONNS`. The count is never below any one
    /// source's, and a source holding one is always among the holders: XDP
    /// skips the `CONNS` lookup for a source the word says holds nothing.
    pub conns: u64,
    /// A token bucket (`crate::bucket::slot`); the two slots of an aligned
    /// pair form one two-way set.
    pub rate: u64,
}
const _: () = assert!(core::mem::size_of::<Slot>() == 32);

/// "This source is at its connection limit": a cache that lets XDP refuse
/// without looking the source up in `CONNS`, exact because of how it is
/// set and cleared.
///
/// Word layout: `fingerprint:32 | generation:16 | version:15 | full:1`.
///
/// - XDP reads the word before it reads `CONNS`; when `CONNS` alone puts the
///   source at its limit it sets `full` with a compare-and-swap against the
///   word it read first.
/// - Every close (`sock_ops`) bumps `version` with a compare-and-swap and
///   clears `full` if the fingerprint is the closing source's. A close that
///   lands between XDP's read and its swap therefore makes the swap fail, and
///   one that lands after it clears the bit: a set bit always means "no
///   connection of this source has closed since `CONNS` said full".
/// - `generation` is the policy generation: a new policy (a limit may have
///   been raised) invalidates every hint at once.
pub mod hint {
    const FULL: u64 = 1;
    const VERSION: u64 = 0x7fff << 1;

    /// True if `word` says the source (`fingerprint`) is at its limit under
    /// policy `generation`.
    #[inline(always)]
    #[must_use]
    pub const fn is_full(word: u64, fingerprint: u32, generation: u16) -> bool {
        #[expect(clippy::cast_possible_truncation, reason = "fields of the word")]
        let ok = word & FULL != 0 && (word >> 32) as u32 == fingerprint && (word >> 16) as u16 == generation;
        ok
    }

    /// The word to swap in to mark the source full (version kept).
    #[inline(always)]
    #[must_use]
    pub const fn mark_full(word: u64, fingerprint: u32, generation: u16) -> u64 {
        (fingerprint as u64) << 32 | (generation as u64) << 16 | (word & VERSION) | FULL
    }

    /// The word after a connection of `fingerprint` closed: version + 1, and
    /// `full` cleared if the word is that source's. Never equal to `word`.
    #[inline(always)]
    #[must_use]
    pub const fn closed(word: u64, fingerprint: u32) -> u64 {
        let version = (word + 2) & VERSION;
        let full = if (word >> 32) as u32 == fingerprint { 0 } else { word & FULL };
        (word & !(VERSION | FULL)) | version | full
    }
}

/// Who holds the established connections a slot counts: the `conns` word.
///
/// Word layout: `absent:32 | count:32`. `count` is the slot's connections;
/// `absent` is a Bloom filter of the sources holding them, stored
/// complemented: a bit *clear* is a bit of some holder's. Each source has two
/// bits, from its fingerprint. So:
///
/// - a source with a connection counted here always has both bits clear
///   (bits are set again only when `count` drops to zero, in the same
///   compare-and-swap), and XDP may skip `CONNS` for a source with either
///   bit set: it holds nothing;
/// - a word written by an earlier version (a plain sum: `absent` zero) says
///   every source may hold: XDP looks each up, as that version did, until the
///   count drops to zero and the word starts afresh.
///
/// With a million sources on a million slots, a spoofed flood's new source
/// finds a slot with a count about 63% of the time; with two bits per
/// holder, its own bits are both clear (a look-up for nothing) about 1% of
/// the time instead.
pub mod holders {
    /// The `absent` half with no holder, count zero.
    pub const EMPTY: u64 = 0xffff_ffff << 32;
    const COUNT: u64 = 0xffff_ffff;

    /// `fingerprint`'s two bits in the `absent` half.
    #[inline(always)]
    #[must_use]
    pub const fn bits(fingerprint: u32) -> u64 {
        (1u64 << (32 + (fingerprint & 31))) | (1u64 << (32 + ((fingerprint >> 5) & 31)))
    }

    /// Connections the slot counts.
    #[inline(always)]
    #[must_use]
    pub const fn count(word: u64) -> u64 {
        word & COUNT
    }

    /// False only if the source of `fingerprint` surely holds no connection
    /// counted on this slot.
    #[inline(always)]
    #[must_use]
    pub const fn may_hold(word: u64, fingerprint: u32) -> bool {
        count(word) != 0 && word & bits(fingerprint) == 0
    }

    /// The word after `n` connections of `fingerprint` were counted (what
    /// the kernel's `fetch_add` and `fetch_and` do together; for a count of
    /// zero, the fresh word its compare-and-swap writes).
    #[inline(always)]
    #[must_use]
    pub const fn add(word: u64, fingerprint: u32, n: u64) -> u64 {
        let base = if count(word) == 0 { EMPTY } else { word };
        (base + n) & !bits(fingerprint)
    }

    /// The word after one counted connection closed: one less, and no
    /// holder left at zero. `None` at zero already (nothing to take).
    #[inline(always)]
    #[must_use]
    pub const fn closed(word: u64) -> Option<u64> {
        match count(word) {
            0 => None,
            1 => Some(EMPTY),
            _ => Some(word - 1),
        }
    }
}

#[inline(always)]
#[must_use]
pub const fn pack(tag: u16, count: u16, epoch_ms: u32) -> u64 {
    ((tag as u64) << 48) | ((count as u64) << 32) | epoch_ms as u64
}

#[inline(always)]
#[must_use]
pub const fn unpack(slot: u64) -> (u16, u16, u32) {
    #[expect(clippy::cast_possible_truncation, reason = "fields of a packed u64")]
    ((slot >> 48) as u16, (slot >> 32) as u16, slot as u32)
}

/// Reservations of `tag` currently held in `slot` at `now_ms`.
#[inline(always)]
#[must_use]
pub const fn live(slot: u64, tag: u16, now_ms: u32) -> u16 {
    let (t, count, epoch) = unpack(slot);
    if t != tag || now_ms.wrapping_sub(epoch) > HANDSHAKE_TIMEOUT { 0 } else { count }
}

/// Takes one reservation if `established + live reservations < limit`.
/// Returns the new slot value, or `None` when the source is at its limit.
#[inline(always)]
#[must_use]
pub const fn reserve(slot: u64, tag: u16, now_ms: u32, established: u64, limit: u64) -> Option<u64> {
    let count = live(slot, tag, now_ms);
    if established + count as u64 >= limit || count == u16::MAX {
        return None;
    }
    Some(pack(tag, count + 1, now_ms))
}

/// Gives one reservation back (handshake completed, or a later rule refused
/// the SYN). `None` when the slot holds nothing of `tag`'s to give back.
#[inline(always)]
#[must_use]
pub const fn release(slot: u64, tag: u16, now_ms: u32) -> Option<u64> {
    let count = live(slot, tag, now_ms);
    if count == 0 {
        return None;
    }
    let (_, _, epoch) = unpack(slot);
    Some(pack(tag, count - 1, epoch))
}

/// Keeps `tag`'s reservations live from `now_ms` on, without taking one:
/// a retransmitted SYN of a handshake already reserved (`crate::handshake`)
/// rides on its reservation, which must last while the client retransmits.
/// `None` when `tag` holds no live reservation (it expired, or another source
/// took the slot over): the SYN then needs a reservation of its own.
#[inline(always)]
#[must_use]
pub const fn refresh(slot: u64, tag: u16, now_ms: u32) -> Option<u64> {
    let count = live(slot, tag, now_ms);
    if count == 0 {
        return None;
    }
    Some(pack(tag, count, now_ms))
}

/// Hash of a source key's bytes (the five little-endian words of a
/// `SourceKey`): three multiply-xorshift rounds, cheap in BPF, good enough to
/// spread sources over slots. Index = low bits, tag = top 16 bits,
/// [`fingerprint`] = bits 24..56 (above any index: tables have at most 2^24
/// slots).
#[inline(always)]
#[must_use]
pub const fn hash(words: [u32; 5]) -> u64 {
    const M1: u64 = 0xff51_afd7_ed55_8ccd;
    const M2: u64 = 0xc4ce_b9fe_1a85_ec53;
    let a = words[0] as u64 | (words[1] as u64) << 32;
    let b = words[2] as u64 | (words[3] as u64) << 32;
    let mut h = (a ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(M1);
    h = (h ^ (h >> 32) ^ b).wrapping_mul(M2);
    h = (h ^ (h >> 29) ^ words[4] as u64).wrapping_mul(M1);
    h ^ (h >> 32)
}

/// The 32 hash bits a [`hint`] word identifies its source by; with the slot
/// index that is at least 42 bits of the key.
#[inline(always)]
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "bits 24..56")]
pub const fn fingerprint(hash: u64) -> u32 {
    (hash >> 24) as u32
}

/// Slot index and tag of a hash for `slots` slots (a power of two).
#[inline(always)]
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "masked to the slot count; the top 16 bits")]
pub const fn slot_of(hash: u64, slots: u32) -> (u32, u16) {
    let index = (hash & (slots as u64 - 1)) as u32;
    let tag = (hash >> 48) as u16;
    (index, tag)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reserves_up_to_the_limit_counting_established() {
        let mut slot = 0;
        for i in 0..5 {
            slot = reserve(slot, 7, 1000, 3, 8).unwrap_or_else(|| panic!("reservation {i} refused"));
        }
        assert_eq!(reserve(slot, 7, 1000, 3, 8), None, "3 established + 5 pending = 8");
        assert_eq!(live(slot, 7, 1000), 5);
        // A completed handshake moves one from pending to established.
        let slot = release(slot, 7, 1001).expect("release");
        assert_eq!(reserve(slot, 7, 1001, 4, 8), None, "4 + 4 = 8");
        assert!(reserve(slot, 7, 1001, 3, 8).is_some(), "after a close");
    }

    #[test]
    fn reservations_expire() {
        let slot = reserve(0, 1, 10, 0, 1).expect("first");
        assert_eq!(reserve(slot, 1, 10 + HANDSHAKE_TIMEOUT, 0, 1), None, "still live at the timeout");
        assert!(reserve(slot, 1, 11 + HANDSHAKE_TIMEOUT, 0, 1).is_some(), "expired after it");
        assert_eq!(release(slot, 1, 11 + HANDSHAKE_TIMEOUT), None);
    }

    #[test]
    fn epoch_wraps() {
        let slot = reserve(0, 1, u32::MAX - 5, 0, 2).expect("first");
        assert_eq!(live(slot, 1, 10), 1, "16 ms later across the wrap");
    }

    #[test]
    fn another_tag_takes_the_slot_over() {
        let slot = reserve(0, 1, 100, 0, 1).expect("first");
        assert_eq!(live(slot, 2, 100), 0);
        let slot = reserve(slot, 2, 100, 0, 1).expect("other source");
        assert_eq!(release(slot, 1, 100), None, "the old owner has nothing left to release");
    }

    /// The set/close protocol in the order the kernel runs it: XDP reads the
    /// word, a close lands, XDP's swap of the stale word must fail.
    #[test]
    fn a_close_between_read_and_swap_defeats_the_mark() {
        let (fp, generation) = (0xdead_beef, 7);
        let word = hint::closed(0, 1);
        let seen = word; // XDP's read, before CONNS said "full"
        let word = hint::closed(word, fp); // the close
        let swap = |cur: u64, old: u64, new: u64| if cur == old { new } else { cur };
        let word = swap(word, seen, hint::mark_full(seen, fp, generation));
        assert!(!hint::is_full(word, fp, generation));
        // Without the close the mark lands.
        assert!(hint::is_full(swap(seen, seen, hint::mark_full(seen, fp, generation)), fp, generation));
    }

    #[test]
    fn fingerprint_is_above_the_index_bits() {
        // Two hashes differing only in index bits share a fingerprint, and the
        // other way round: the fingerprint adds bits the index does not have.
        let h = hash([0xc612_0001, 0, 0, 0, 0x0403]);
        assert_eq!(fingerprint(h), fingerprint(h ^ 0x00ff_ffff));
        assert_ne!(fingerprint(h), fingerprint(h ^ (1 << 24)));
    }

    #[test]
    fn a_refresh_keeps_reservations_live_without_taking_one() {
        let slot = reserve(0, 3, 100, 7, 8).expect("the 8th");
        let slot = refresh(slot, 3, 100 + HANDSHAKE_TIMEOUT).expect("live at the timeout");
        assert_eq!(live(slot, 3, 100 + 2 * HANDSHAKE_TIMEOUT), 1, "one reservation, live a timeout later");
        assert_eq!(reserve(slot, 3, 100 + 2 * HANDSHAKE_TIMEOUT, 7, 8), None, "still the 8th of 8");
        assert_eq!(refresh(slot, 4, 100), None, "another source's tag");
        assert_eq!(refresh(slot, 3, 101 + 2 * HANDSHAKE_TIMEOUT), None, "expired");
        assert_eq!(refresh(0, 0, 0), None, "nothing reserved");
    }

    #[test]
    fn zero_limit_refuses() {
        assert_eq!(reserve(0, 1, 1, 0, 0), None);
    }

    #[test]
    fn holders_say_who_may_hold() {
        let (a, b) = (0x0000_0021, 0x0000_0442);
        assert_ne!(holders::bits(a) & holders::bits(b), holders::bits(a), "distinct bits for the test");
        let w = holders::add(0, a, 1);
        assert_eq!(holders::count(w), 1);
        assert!(holders::may_hold(w, a));
        assert!(!holders::may_hold(w, b), "b holds nothing here");
        let w = holders::add(w, b, 1);
        assert!(holders::may_hold(w, a) && holders::may_hold(w, b));
        let w = holders::closed(w).expect("one less");
        assert!(holders::may_hold(w, a) && holders::may_hold(w, b), "bits stay until the count is zero");
        let w = holders::closed(w).expect("the last");
        assert_eq!(w, holders::EMPTY, "no holder at zero");
        assert!(!holders::may_hold(w, a) && !holders::may_hold(w, b));
        assert_eq!(holders::closed(w), None, "never below zero");
    }

    #[test]
    fn a_sum_written_by_an_earlier_version_means_anyone_may_hold() {
        // The word was a plain sum: 3 connections, the high half zero.
        for fp in [0, 1, 0x1234_5678, u32::MAX] {
            assert!(holders::may_hold(3, fp));
        }
        // Counting from it keeps it so; at zero it starts afresh.
        let w = holders::add(3, 7, 1);
        assert!(holders::may_hold(w, 0x0000_0442));
        let mut w = w;
        for _ in 0..4 {
            w = holders::closed(w).expect("counted");
        }
        assert_eq!(w, holders::EMPTY);
    }

    proptest! {
        /// The kernel's steps, interleaved as CPUs may interleave them: an
        /// add is a `fetch_add` then a `fetch_and` (or, at count zero, one
        /// compare-and-swap to a fresh word), a close one compare-and-swap.
        /// After each step, every source with a completed add still counted
        /// may hold, and the count is never below what they hold together.
        #[test]
        fn a_source_holding_a_connection_is_always_among_the_holders(
            fingerprints in proptest::collection::vec(any::<u32>(), 1..6),
            ops in proptest::collection::vec((0usize..6, 0u8..3), 1..400),
            start in prop_oneof![Just(0u64), Just(holders::EMPTY), 0u64..4],
        ) {
            let n = fingerprints.len();
            let mut word = start;
            // Per source: adds completed and still counted; adds half done.
            let mut held = std::vec![0u64; n];
            let mut half = std::vec![0u32; n];
            // A legacy start counts connections of no source we know.
            let mut unknown = holders::count(start);
            for (who, op) in ops {
                let s = who % n;
                let fp = fingerprints[s];
                match op {
                    // An add's first step: at zero the fresh word in one
                    // swap (then done), else the count.
                    0 => {
                        if holders::count(word) == 0 {
                            word = holders::add(word, fp, 1);
                            held[s] += 1;
                        } else {
                            word += 1;
                            half[s] += 1;
                        }
                    }
                    // Its second step: the source's bits marked.
                    1 if half[s] > 0 => {
                        word &= !holders::bits(fp);
                        half[s] -= 1;
                        held[s] += 1;
                    }
                    // A close of a counted connection (`CONNS` said so).
                    2 if held[s] > 0 => {
                        word = holders::closed(word).expect("a counted connection is in the count");
                        held[s] -= 1;
                    }
                    2 if unknown > 0 => {
                        word = holders::closed(word).expect("counted");
                        unknown -= 1;
                    }
                    _ => {}
                }
                let in_flight: u64 = half.iter().map(|h| u64::from(*h)).sum();
                prop_assert!(holders::count(word) >= held.iter().sum::<u64>() + unknown);
                prop_assert!(holders::count(word) <= held.iter().sum::<u64>() + unknown + in_flight);
                for (i, h) in held.iter().enumerate() {
                    if *h > 0 {
                        prop_assert!(holders::may_hold(word, fingerprints[i]), "source {} holds {} and is not among the holders", i, h);
                    }
                }
            }
        }

        /// Any interleaving of reserves and releases of one source keeps
        /// established + live reservations within the limit.
        #[test]
        fn never_above_limit(ops in proptest::collection::vec(0u8..3, 1..300), limit in 1u64..20) {
            let (mut slot, mut established, mut pending) = (0u64, 0u64, 0u64);
            for op in ops {
                match op {
                    0 => if let Some(s) = reserve(slot, 9, 500, established, limit) { slot = s; pending += 1; },
                    // handshake completes
                    1 => if let Some(s) = release(slot, 9, 500) { slot = s; pending -= 1; established += 1; },
                    // a connection closes
                    _ => established = established.saturating_sub(1),
                }
                prop_assert!(established + pending <= limit);
                prop_assert_eq!(u64::from(live(slot, 9, 500)), pending);
            }
        }

        /// A refresh never changes how many reservations a tag holds.
        #[test]
        fn refresh_keeps_the_count(slot: u64, tag: u16, now: u32, later in 0u32..=HANDSHAKE_TIMEOUT) {
            if let Some(s) = refresh(slot, tag, now) {
                prop_assert_eq!(live(s, tag, now.wrapping_add(later)), live(slot, tag, now));
            } else {
                prop_assert_eq!(live(slot, tag, now), 0);
            }
        }

        #[test]
        fn pack_roundtrip(tag: u16, count: u16, epoch: u32) {
            prop_assert_eq!(unpack(pack(tag, count, epoch)), (tag, count, epoch));
        }

        /// Whatever the word, a close changes it (so a set racing with it
        /// fails) and leaves the closing source not full.
        #[test]
        fn a_close_always_changes_the_word(word: u64, fp: u32, generation: u16) {
            let after = hint::closed(word, fp);
            prop_assert_ne!(after, word);
            prop_assert!(!hint::is_full(after, fp, generation));
        }

        /// A hint is only read back by its own source, under its own policy generation.
        #[test]
        fn full_only_for_the_marked_source(word: u64, fp: u32, other: u32, generation: u16) {
            let marked = hint::mark_full(word, fp, generation);
            prop_assert!(hint::is_full(marked, fp, generation));
            prop_assert_eq!(hint::is_full(marked, other, generation), other == fp);
            prop_assert!(!hint::is_full(marked, fp, generation.wrapping_add(1)));
        }

        /// Another source's close bumps the version without clearing this source's bit.
        #[test]
        fn other_closes_keep_the_bit(word: u64, fp: u32, other: u32, generation: u16) {
            prop_assume!(fp != other);
            let marked = hint::mark_full(word, fp, generation);
            prop_assert!(hint::is_full(hint::closed(marked, other), fp, generation));
        }

        #[test]
        fn index_in_range(words: [u32; 5], shift in 4u32..24) {
            let slots = 1u32 << shift;
            prop_assert!(slot_of(hash(words), slots).0 < slots);
        }
    }
}
