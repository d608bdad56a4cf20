//! A filter in front of the lists' trie: one array read that says, for most
//! sources no list entry covers, "no entry", so their SYN skips the longest
//! prefix match, whose walk grows with the lists (about 30% of a refusal with
//! 100,000 prefixes).
//!
//! Each bank of the policy has its own filter: a header word, then
//! [`WORDS`] words of bits. The header holds a level per family: the shortest
//! prefix length of the family's entries, capped at [`MAX_LEVEL_V4`] or
//! [`MAX_LEVEL_V6`]. Every entry is at least that long, so every entry that
//! covers an address also covers the address masked to the level, and equals
//! it there: the daemon sets two bits (in one word) for each entry, chosen by
//! a hash of the entry masked to the level, and a source whose own two bits
//! are not both set is covered by no entry. A set bit proves nothing (another
//! entry's, or a collision): the trie answers then.
//!
//! Bits only say "maybe", so a filter with more bits than its bank's entries
//! need is still correct, only slower; one with a bit missing is not. The
//! daemon writes a bank's words, then its header, before the bank is put in
//! force; a header without [`VALID`] (a filter not yet written) sends every
//! source to the trie.

use crate::maps::family;

/// Words of bits per bank (2^21 bits, 256 KiB).
pub const WORDS: u32 = 1 << 15;
/// Entries of the filter map: a header and the words, for each of the two banks.
pub const ENTRIES: u32 = 2 * (WORDS + 1);

/// Header bit: the bank's filter is written and may be used. Bit 1, not
/// bit 0: versions before this one hashed differently and used bit 0, so
/// neither reads the other's filter (an upgrade or a downgrade over the pins
/// sends every source to the trie until the writer has written its own).
pub const VALID: u64 = 2;
/// Levels at most this long: an IPv4 /32 entry marks its /24, so that a
/// /8 entry (marking 65,536 /24s) is not needed to make one /24 skip.
pub const MAX_LEVEL_V4: u8 = 24;
pub const MAX_LEVEL_V6: u8 = 64;

/// The index of `bank`'s header in the filter map; its words follow it.
#[inline(always)]
#[must_use]
pub const fn header_index(bank: u8) -> u32 {
    bank as u32 * (WORDS + 1)
}

/// A header for levels `v4` and `v6`.
#[must_use]
pub const fn header(v4: u8, v6: u8) -> u64 {
    VALID | (v4 as u64) << 8 | (v6 as u64) << 16
}

/// The level of family `fam` in `header`.
#[inline(always)]
#[must_use]
pub const fn level(header: u64, fam: u8) -> u8 {
    let shift = if fam == family::V4 { 8 } else { 16 };
    #[expect(clippy::cast_possible_truncation, reason = "a byte of the header")]
    let l = (header >> shift) as u8;
    l
}

/// The level for entries whose shortest prefix is `shortest` bits long.
#[must_use]
pub const fn level_for(fam: u8, shortest: u8) -> u8 {
    let cap = if fam == family::V4 { MAX_LEVEL_V4 } else { MAX_LEVEL_V6 };
    if shortest < cap { shortest } else { cap }
}

/// The high `bits` bits of a 32-bit word (0..=32).
#[inline(always)]
const fn high(bits: u32) -> u32 {
    if bits >= 32 {
        u32::MAX
    } else if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    }
}

/// The high `bits` bits of a 64-bit word (0..=64).
#[inline(always)]
const fn high64(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else if bits == 0 {
        0
    } else {
        u64::MAX << (64 - bits)
    }
}

/// The hash of `addr` (network order; IPv4 in the first four bytes) masked
/// to `level` bits (at most [`MAX_LEVEL_V4`] or [`MAX_LEVEL_V6`]), of family `fam`.
///
/// One multiplication for either family (levels are at most 32 and 64 bits,
/// one word): it is on the path of every SYN of a family with list entries.
/// The word's high half is folded into its low half first, which keeps every
/// bit (the fold is invertible) and lets a short level's bits, all in the high
/// half, reach the product's low bits, where [`place`] takes the bit positions.
#[inline(always)]
#[must_use]
pub const fn hash(fam: u8, addr: &[u8; 16], level: u8) -> u64 {
    let w = if fam == family::V4 {
        (u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]) & high(level as u32)) as u64
    } else {
        let w = u64::from_be_bytes([addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7]]);
        w & high64(level as u32)
    };
    let h = ((fam as u64) << 8 | level as u64) ^ w ^ (w >> 32);
    let h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

/// Where `hash` puts its two bits: the word (0..[`WORDS`]) and the bits.
#[inline(always)]
#[must_use]
pub const fn place(hash: u64) -> (u32, u64) {
    let word = (hash >> 40) as u32 & (WORDS - 1);
    (word, 1 << (hash & 63) | 1 << ((hash >> 6) & 63))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;
    use crate::prefix::{mask_v4, mask_v6};

    /// A filter built as the daemon builds it, and the check as XDP makes it.
    fn build(entries: &[(u8, [u8; 16], u8)]) -> (u64, Vec<u64>) {
        let shortest = |fam| entries.iter().filter(|e| e.0 == fam).map(|e| e.2).min().unwrap_or(0);
        let h = header(level_for(family::V4, shortest(family::V4)), level_for(family::V6, shortest(family::V6)));
        let mut words = std::vec![0u64; WORDS as usize];
        for (fam, addr, _) in entries {
            let (w, bits) = place(hash(*fam, addr, level(h, *fam)));
            words[w as usize] |= bits;
        }
        (h, words)
    }

    fn may_be_listed(f: &(u64, Vec<u64>), fam: u8, addr: &[u8; 16]) -> bool {
        let (w, bits) = place(hash(fam, addr, level(f.0, fam)));
        f.1[w as usize] & bits == bits
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    #[test]
    fn levels_and_header() {
        assert_eq!(level_for(family::V4, 32), 24);
        assert_eq!(level_for(family::V4, 8), 8);
        assert_eq!(level_for(family::V6, 128), 64);
        assert_eq!(level_for(family::V6, 48), 48);
        let h = header(20, 48);
        assert_eq!((h & VALID, level(h, family::V4), level(h, family::V6)), (VALID, 20, 48));
        assert_eq!(header_index(1), WORDS + 1);
    }

    #[test]
    fn the_hash_sees_only_the_bits_under_the_level() {
        let a = v4([198, 18, 7, 1]);
        assert_eq!(hash(family::V4, &a, 24), hash(family::V4, &v4([198, 18, 7, 200]), 24));
        assert_ne!(hash(family::V4, &a, 24), hash(family::V4, &v4([198, 18, 8, 1]), 24));
        let b = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9];
        let mut c = b;
        c[15] = 7;
        assert_eq!(hash(family::V6, &b, 64), hash(family::V6, &c, 64));
        assert_ne!(
            hash(family::V6, &b, 64),
            hash(family::V6, &[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 9], 64)
        );
        assert_ne!(hash(family::V4, &v4([0, 0, 0, 0]), 0), hash(family::V6, &[0; 16], 0), "families apart");
    }

    #[test]
    fn most_sources_no_entry_covers_skip_the_trie() {
        // 100,000 host entries in 198.18.0.0/15 and 2001:db8::/32: a
        // source outside them is let past at least nine times in ten.
        let mut entries = Vec::new();
        for i in 0..60_000u32 {
            entries.push((family::V4, v4((0xc612_0000 | ((i * 2) % 0x2_0000)).to_be_bytes()), 32));
        }
        for i in 0..40_000u64 {
            let mut a = [0u8; 16];
            a[..8].copy_from_slice(&(0x2001_0db8_0000_0000 | i << 8).to_be_bytes());
            entries.push((family::V6, a, 64));
        }
        let f = build(&entries);
        let skipped = (0..10_000u32)
            .filter(|i| !may_be_listed(&f, family::V4, &v4((0x0a00_0000 | i << 8).to_be_bytes())))
            .count();
        assert!(skipped > 9_000, "{skipped} of 10,000 skipped");
        let v6 = |i: u64| {
            let mut a = [0u8; 16];
            a[..8].copy_from_slice(&(0x2001_0db8_8000_0000 | i << 16).to_be_bytes());
            a
        };
        let skipped = (0..10_000u64).filter(|i| !may_be_listed(&f, family::V6, &v6(*i))).count();
        assert!(skipped > 9_000, "IPv6: {skipped} of 10,000 skipped");
    }

    #[test]
    fn a_short_level_still_tells_sources_apart() {
        // 200 IPv6 /16s and an IPv4 /20 put the levels at 16 and 20: every
        // bit an IPv6 source is hashed by is in the high half of its word.
        let mut entries: Vec<_> = (0..200u16)
            .map(|i| {
                let mut a = [0u8; 16];
                a[..2].copy_from_slice(&(0x2000 + i).to_be_bytes());
                (family::V6, a, 16)
            })
            .collect();
        entries.push((family::V4, v4([198, 18, 0, 0]), 20));
        let f = build(&entries);
        let v6_skipped = (0..1_000u16)
            .filter(|i| {
                let mut s = [0u8; 16];
                s[..2].copy_from_slice(&(0x3000 + i).to_be_bytes());
                !may_be_listed(&f, family::V6, &s)
            })
            .count();
        assert!(v6_skipped > 900, "IPv6 at /16: {v6_skipped} of 1,000 skipped");
        let v4_skipped = (0..1_000u32)
            .filter(|i| !may_be_listed(&f, family::V4, &v4((0x0a00_0000 | i << 12).to_be_bytes())))
            .count();
        assert!(v4_skipped > 900, "IPv4 at /20: {v4_skipped} of 1,000 skipped");
    }

    fn entry() -> impl Strategy<Value = (u8, [u8; 16], u8)> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, len)| (family::V4, v4(mask_v4(a, len)), len)),
            (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, len)| (family::V6, mask_v6(a, len), len)),
        ]
    }

    proptest! {
        /// No false "no entry": every address an entry covers passes.
        #[test]
        fn an_address_an_entry_covers_is_never_filtered_out(
            entries in proptest::collection::vec(entry(), 1..40),
            pick in any::<usize>(),
            host: [u8; 16],
        ) {
            let f = build(&entries);
            let (fam, net, len) = entries[pick % entries.len()];
            // An address under the entry: its bits, then any host bits.
            let mut addr = [0u8; 16];
            let bits = if fam == family::V4 { 32 } else { 128 };
            for i in 0..bits {
                let (byte, bit) = (i / 8, 7 - i % 8);
                let from = if i < usize::from(len) { net[byte] } else { host[byte] };
                addr[byte] |= from & (1 << bit);
            }
            prop_assert!(may_be_listed(&f, fam, &addr), "{addr:?} under {net:?}/{len}");
        }
    }
}
