//! Handshakes already reserved: the identity of each SYN XDP let through on
//! a new reservation (client address, ports, initial sequence number), so the
//! client's retransmission of that SYN rides on the same reservation instead
//! of counting as a second attempt. `sock_ops` forgets it when the handshake
//! completes.
//!
//! A direct-mapped array of [`Handshake`] entries indexed by a hash of the
//! identity: one array access per SYN whatever the flood. A spoofed flood only
//! overwrites entries (their retransmissions then take a reservation, as if
//! nothing were remembered) and never costs an insert or an eviction. An
//! entry holds the whole identity, not a fingerprint of it: with a public hash
//! a client could craft SYNs whose fingerprint matches its own handshake in
//! flight and get each of them in without a reservation.

use crate::pending::HANDSHAKE_TIMEOUT;

/// Entries of `HANDSHAKES` (a power of two); 32 bytes each.
pub const ENTRIES: u32 = 1 << 16;

/// One remembered handshake (`HANDSHAKES[index]`), or the identity of a SYN
/// to look up. Aligned like its words only: 32-byte entries of an array
/// fill half cache lines anyway, and a stronger alignment costs stack in the
/// kernel program, which has 512 bytes in all.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Handshake {
    /// The client address as four native-endian words of its network-order
    /// bytes (IPv4 in the first word, the rest zero), not masked.
    pub addr: [u32; 4],
    /// Client port `<< 16 |` server port, host order.
    pub ports: u32,
    /// The client's initial sequence number (the SYN's sequence number).
    pub isn: u32,
    /// When the SYN was let through, or last recognised, in `pending::ticks`.
    pub epoch: u32,
    /// `maps::family` of the address; 0 marks an empty or forgotten entry.
    pub family: u32,
}
const _: () = assert!(core::mem::size_of::<Handshake>() == 32);

impl Handshake {
    /// The identity of a SYN from `addr` (network-order bytes, IPv4 in the
    /// first four) seen at `epoch`.
    #[inline(always)]
    #[must_use]
    pub const fn new(addr: &[u8; 16], family: u8, sport: u16, dport: u16, isn: u32, epoch: u32) -> Self {
        Self {
            addr: [
                u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
                u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
                u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
                u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
            ],
            ports: (sport as u32) << 16 | dport as u32,
            isn,
            epoch,
            family: family as u32,
        }
    }

    /// The address as network-order bytes again.
    #[inline(always)]
    #[must_use]
    pub const fn addr_bytes(&self) -> [u8; 16] {
        let [a, b, c, d] = [
            self.addr[0].to_ne_bytes(),
            self.addr[1].to_ne_bytes(),
            self.addr[2].to_ne_bytes(),
            self.addr[3].to_ne_bytes(),
        ];
        [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
    }

    /// Same handshake: address, ports and ISN equal, and not empty (the
    /// epoch is not part of the identity).
    #[inline(always)]
    #[must_use]
    pub const fn same(&self, other: &Self) -> bool {
        self.family != 0
            && self.family == other.family
            && self.isn == other.isn
            && self.ports == other.ports
            && self.addr[0] == other.addr[0]
            && self.addr[1] == other.addr[1]
            && self.addr[2] == other.addr[2]
            && self.addr[3] == other.addr[3]
    }

    /// The entry index of this identity in a table of `ENTRIES` entries.
    #[inline(always)]
    #[must_use]
    #[expect(clippy::cast_possible_truncation, reason = "masked to the table size")]
    pub const fn index(&self) -> u32 {
        let a = &self.addr;
        // The ISN is mixed into a word the IPv4 address leaves zero.
        let h = crate::pending::hash([a[0], a[1] ^ self.isn, a[2], a[3], self.ports]);
        (h & (ENTRIES as u64 - 1)) as u32
    }
}

/// True if `syn` retransmits the handshake remembered in `entry` and that
/// was let through (or last retransmitted) no longer than
/// `pending::HANDSHAKE_TIMEOUT` ago, which is as long as its reservation can
/// live.
#[inline(always)]
#[must_use]
pub const fn recognised(entry: &Handshake, syn: &Handshake, now: u32) -> bool {
    entry.same(syn) && now.wrapping_sub(entry.epoch) <= HANDSHAKE_TIMEOUT
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const A: [u8; 16] = [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn a_retransmission_is_recognised_while_fresh() {
        let entry = Handshake::new(&A, 4, 40_000, 25, 0x1234_5678, 1000);
        let syn = Handshake::new(&A, 4, 40_000, 25, 0x1234_5678, 2000);
        assert!(recognised(&entry, &syn, 1000));
        assert!(recognised(&entry, &syn, 1000 + HANDSHAKE_TIMEOUT), "fresh up to the timeout");
        assert!(!recognised(&entry, &syn, 1001 + HANDSHAKE_TIMEOUT), "stale after it");
        let late = Handshake { epoch: u32::MAX - 5, ..entry };
        assert!(recognised(&late, &syn, 10), "across the clock wrap");
    }

    #[test]
    fn another_handshake_is_not() {
        let entry = Handshake::new(&A, 4, 40_000, 25, 7, 10);
        for other in [
            Handshake::new(&A, 4, 40_001, 25, 7, 10),
            Handshake::new(&A, 4, 40_000, 587, 7, 10),
            Handshake::new(&A, 4, 40_000, 25, 8, 10),
            Handshake::new(&A, 6, 40_000, 25, 7, 10),
            Handshake::new(&[198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 4, 40_000, 25, 7, 10),
        ] {
            assert!(!recognised(&entry, &other, 10), "{other:?}");
        }
    }

    #[test]
    fn an_empty_or_forgotten_entry_matches_nothing() {
        let syn = Handshake::new(&[0; 16], 0, 0, 0, 0, 0);
        assert!(!recognised(&Handshake::default(), &syn, 0), "a zeroed entry is empty");
        let mut entry = Handshake::new(&A, 4, 1, 2, 3, 4);
        entry.family = 0;
        assert!(!recognised(&entry, &Handshake::new(&A, 4, 1, 2, 3, 4), 4));
    }

    proptest! {
        /// The identity decides, never the epoch; the index is in range and
        /// depends on the identity alone.
        #[test]
        fn identity_and_index(addr: [u8; 16], fam in prop::sample::select([4u8, 6].to_vec()), sport: u16, dport: u16,
                              isn: u32, e1: u32, e2: u32) {
            let a = Handshake::new(&addr, fam, sport, dport, isn, e1);
            let b = Handshake::new(&addr, fam, sport, dport, isn, e2);
            prop_assert!(a.same(&b));
            prop_assert_eq!(a.index(), b.index());
            prop_assert!(a.index() < ENTRIES);
            prop_assert_eq!(a.addr_bytes(), addr);
            prop_assert!(recognised(&a, &b, e1));
            prop_assert!(!a.same(&Handshake::new(&addr, fam, sport, dport, isn.wrapping_add(1), e1)));
        }
    }
}
