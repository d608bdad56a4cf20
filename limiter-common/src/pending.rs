//! Handshakes in flight per source: reservations the XDP program takes when
//! it lets a SYN through, given back when the handshake completes (`sock_ops`)
//! or when they expire. They live in a direct-mapped array of packed `u64`
//! slots, so the cost per SYN is one array access and one compare-and-swap
//! whatever the flood; a slot taken over by another source only forgets
//! reservations, like an LRU eviction, and never touches established counts.
//!
//! Slot layout: `tag:16 | count:16 | epoch_ms:32`. `tag` comes from the
//! source hash bits not used for the index; `epoch_ms` is the time of the
//! newest reservation, in milliseconds (wrapping).

/// Reservations older than this are dropped: the handshake did not complete.
pub const HANDSHAKE_TIMEOUT_MS: u32 = 3_000;

/// Default number of slots (a power of two); 8 bytes each.
pub const DEFAULT_SLOTS: u32 = 1 << 18;

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
    if t != tag || now_ms.wrapping_sub(epoch) > HANDSHAKE_TIMEOUT_MS { 0 } else { count }
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

/// Hash of a source key's bytes (the five little-endian words of a
/// `SourceKey`): a multiply-xorshift mix, cheap in BPF, good enough to spread
/// sources over slots. Index = low bits, tag = top 16 bits.
#[inline(always)]
#[must_use]
pub const fn hash(words: [u32; 5]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0;
    while i < 5 {
        h ^= words[i] as u64;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
        i += 1;
    }
    h ^ (h >> 32)
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
        assert_eq!(reserve(slot, 1, 10 + HANDSHAKE_TIMEOUT_MS, 0, 1), None, "still live at the timeout");
        assert!(reserve(slot, 1, 11 + HANDSHAKE_TIMEOUT_MS, 0, 1).is_some(), "expired after it");
        assert_eq!(release(slot, 1, 11 + HANDSHAKE_TIMEOUT_MS), None);
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

    #[test]
    fn zero_limit_refuses() {
        assert_eq!(reserve(0, 1, 1, 0, 0), None);
    }

    proptest! {
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

        #[test]
        fn pack_roundtrip(tag: u16, count: u16, epoch: u32) {
            prop_assert_eq!(unpack(pack(tag, count, epoch)), (tag, count, epoch));
        }

        #[test]
        fn index_in_range(words: [u32; 5], shift in 4u32..24) {
            let slots = 1u32 << shift;
            prop_assert!(slot_of(hash(words), slots).0 < slots);
        }
    }
}
