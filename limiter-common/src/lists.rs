//! Allow, deny and reserve lists as the kernel sees them: one
//! longest-prefix-match trie over both address families whose entries carry
//! the verdict of every list at once, so a SYN costs one lookup whatever the
//! lists hold.
//!
//! The daemon merges the admin's lists into that one trie ([`Merged`] in the
//! daemon): for every prefix of any list, the entry holds the deny flag, the
//! longest covering allow entry and the services of every covering reserve
//! entry. For any address the longest stored prefix that covers it then
//! answers every list as that list's own longest match would (each list's
//! covering prefixes are all prefixes of the address, so each covers the
//! longest stored one).
//!
//! Host entries (IPv4 /32, IPv6 /128) are kept apart, in an exact-match
//! hash looked up first (`maps::host_len`).
//!
//! Key: `prefix_len = 16 + bits`, data = the bank byte, the family byte,
//! then the address (IPv4 in the first four address bytes): the families
//! never match each other's entries, and both banks of the policy (see
//! `maps::flags::BANK_B`) live in the one trie, so the program sees one map
//! whichever bank is in force.

use crate::{Bucket, ServicePolicy, Verdict};

/// Bytes of key data: the bank, the family and 16 address bytes.
pub const KEY_BYTES: usize = 18;

/// Entries one bank of the merged trie holds by default (`LISTS` holds two
/// banks; `[maps] list_entries` sets it). The trie allocates per entry, so
/// room costs no memory until it is used.
pub const LIST_ENTRIES: u32 = 262_144;

/// Bits of [`ListEntry::flags`].
pub mod entry {
    /// A deny entry covers the source: refuse (the deny rule).
    pub const DENY: u8 = 1;
    /// An allow entry covers the source: its limits replace the service's
    /// per-source limits (the exempt rule).
    pub const ALLOW: u8 = 2;
    /// The covering allow entry has no limits: accept, not counted against
    /// `max_sessions`.
    pub const EXEMPT: u8 = 4;
}

/// The value of a trie entry: what every list says about the prefix.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListEntry {
    /// The allow entry's token bucket (0 = no rate limit), as in [`ServicePolicy`].
    pub rate_interval_ns: u64,
    pub rate_tolerance_ns: u64,
    /// The allow entry's connection limit per source; 0 = no limit.
    pub max_conn_per_source: u32,
    /// Bit `1 << service id` for every service whose reserve list covers the prefix.
    pub reserve: u32,
    /// [`entry`] bits.
    pub flags: u8,
    pub pad: [u8; 3],
    /// The allow entry's connection limit per source over all services
    /// together (the source-wide budget); 0 = none. Zero in the pad of
    /// entries written by older versions, which had no such limit.
    pub max_conn_all: u32,
}
const _: () = assert!(core::mem::size_of::<ListEntry>() == 32);

/// The trie key data of an address in `bank` (0 or 1).
#[inline(always)]
#[must_use]
pub const fn key_data(bank: u8, family: u8, addr: &[u8; 16]) -> [u8; KEY_BYTES] {
    let mut d = [0u8; KEY_BYTES];
    d[0] = bank;
    d[1] = family;
    let mut i = 0;
    while i < 16 {
        d[i + 2] = addr[i];
        i += 1;
    }
    d
}

/// The trie prefix length of `bits` address bits.
#[inline(always)]
#[must_use]
pub const fn key_len(bits: u8) -> u32 {
    16 + bits as u32
}

/// The per-source limits that apply to a SYN, after the deny and exempt rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The deny or the exempt rule decided: refused by the deny list, or accepted as exempt.
    Decided(Verdict),
    /// The sessions, connections and rate rules apply with these limits.
    Limits {
        /// Connections per source; 0 = no limit.
        max_conn: u32,
        /// Connections per source over all services together; 0 = no limit.
        max_conn_all: u32,
        bucket: Bucket,
        /// The source is on the service's reserve list.
        reserved: bool,
    },
}

/// The deny and exempt rules of the decision order: the deny list, then the allow list
/// (exempt, or its own per-source limits instead of the service's and the
/// source-wide one). `entry` is the longest match of the source address, if
/// any; `all` is the source-wide limit of the policy in force (0 = none).
#[inline(always)]
#[must_use]
pub const fn admission(entry: Option<&ListEntry>, service: u32, policy: &ServicePolicy, all: u32) -> Admission {
    let service_limits = Admission::Limits {
        max_conn: policy.max_conn_per_source,
        max_conn_all: all,
        bucket: Bucket { interval_ns: policy.rate_interval_ns, tolerance_ns: policy.rate_tolerance_ns },
        reserved: false,
    };
    let Some(e) = entry else {
        return service_limits;
    };
    if e.flags & entry::DENY != 0 {
        return Admission::Decided(Verdict::RefusedDeny);
    }
    let reserved = service < 32 && e.reserve & (1 << service) != 0;
    if e.flags & entry::ALLOW == 0 {
        let Admission::Limits { max_conn, max_conn_all, bucket, .. } = service_limits else {
            return service_limits;
        };
        return Admission::Limits { max_conn, max_conn_all, bucket, reserved };
    }
    if e.flags & entry::EXEMPT != 0 {
        return Admission::Decided(Verdict::Accepted);
    }
    Admission::Limits {
        max_conn: e.max_conn_per_source,
        max_conn_all: e.max_conn_all,
        bucket: Bucket { interval_ns: e.rate_interval_ns, tolerance_ns: e.rate_tolerance_ns },
        reserved,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn service() -> ServicePolicy {
        ServicePolicy {
            rate_interval_ns: 100,
            rate_tolerance_ns: 900,
            max_conn_per_source: 2,
            action: 0,
            dead_peer: [0; 3],
            max_sessions: 0,
            open_sessions: 0,
        }
    }

    #[test]
    fn no_entry_gets_the_service_limits() {
        assert_eq!(
            admission(None, 1, &service(), 7),
            Admission::Limits {
                max_conn: 2,
                max_conn_all: 7,
                bucket: Bucket { interval_ns: 100, tolerance_ns: 900 },
                reserved: false
            }
        );
    }

    #[test]
    fn allow_with_limits_replaces_both_per_source_limits() {
        let e = ListEntry {
            max_conn_per_source: 20,
            max_conn_all: 30,
            flags: entry::ALLOW,
            reserve: 1 << 3,
            ..ListEntry::default()
        };
        assert_eq!(
            admission(Some(&e), 3, &service(), 7),
            Admission::Limits { max_conn: 20, max_conn_all: 30, bucket: Bucket::UNLIMITED, reserved: true }
        );
        // The reserve bit is per service.
        assert!(matches!(admission(Some(&e), 2, &service(), 7), Admission::Limits { reserved: false, .. }));
        // Without a source-wide limit of its own, an allow entry with limits
        // has none: its limits replace the policy's as a set.
        let e = ListEntry { max_conn_all: 0, ..e };
        assert!(matches!(admission(Some(&e), 3, &service(), 7), Admission::Limits { max_conn_all: 0, .. }));
    }

    #[test]
    fn key_layout() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[198, 18, 0, 1]);
        let d = key_data(1, 4, &a);
        assert_eq!(&d[..6], &[1, 4, 198, 18, 0, 1]);
        assert_eq!(key_len(24), 40);
        assert_eq!(key_len(128), 144);
    }

    proptest! {
        /// Rule order: deny beats everything; exempt accepts whatever the
        /// service says; an entry with neither keeps the service's limits.
        #[test]
        fn deny_first_then_allow(
            flags in 0u8..8, max in 0u32..50, all in 0u32..50, global in 0u32..50, reserve: u32, svc in 1u32..17,
        ) {
            let e = ListEntry { max_conn_per_source: max, max_conn_all: all, reserve, flags, ..ListEntry::default() };
            let got = admission(Some(&e), svc, &service(), global);
            let reserved = reserve & (1 << svc) != 0;
            if flags & entry::DENY != 0 {
                prop_assert_eq!(got, Admission::Decided(Verdict::RefusedDeny));
            } else if flags & entry::ALLOW != 0 && flags & entry::EXEMPT != 0 {
                prop_assert_eq!(got, Admission::Decided(Verdict::Accepted));
            } else if flags & entry::ALLOW != 0 {
                prop_assert_eq!(got, Admission::Limits {
                    max_conn: max, max_conn_all: all, bucket: Bucket::UNLIMITED, reserved });
            } else {
                prop_assert_eq!(got, Admission::Limits {
                    max_conn: 2, max_conn_all: global, bucket: Bucket { interval_ns: 100, tolerance_ns: 900 }, reserved });
            }
        }
    }
}
