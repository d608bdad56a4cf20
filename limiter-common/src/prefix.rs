//! Source aggregation: a client address masked to the configured prefix
//! (IPv4 /32 and IPv6 /64 by default), so that one IPv6 host, which controls
//! a whole /64, gets one budget and not 2^64.

/// A mask of `len` leading one bits in a `u32` (`len` clamped to 32).
#[inline(always)]
#[must_use]
pub const fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else if len >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - len as u32)
    }
}

/// A mask of `len` leading one bits in a `u64` (`len` clamped to 64).
#[inline(always)]
#[must_use]
pub const fn mask64(len: u8) -> u64 {
    if len == 0 {
        0
    } else if len >= 64 {
        u64::MAX
    } else {
        u64::MAX << (64 - len as u32)
    }
}

/// The IPv4 address (network order bytes) masked to `len` bits.
#[inline(always)]
#[must_use]
pub const fn mask_v4(addr: [u8; 4], len: u8) -> [u8; 4] {
    (u32::from_be_bytes(addr) & mask32(len)).to_be_bytes()
}

/// The IPv6 address (network order bytes) masked to `len` bits.
#[inline(always)]
#[must_use]
pub fn mask_v6(addr: [u8; 16], len: u8) -> [u8; 16] {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&addr[..8]);
    lo.copy_from_slice(&addr[8..]);
    let hi = u64::from_be_bytes(hi) & mask64(len);
    let lo = u64::from_be_bytes(lo) & mask64(len.saturating_sub(64));
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&lo.to_be_bytes());
    out
}

/// An address prefix of an allow, deny or reserve list, normalized: host
/// bits are zero, IPv4 (and IPv4-mapped IPv6) addresses are IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// [`crate::maps::family::V4`] or [`crate::maps::family::V6`].
    pub family: u8,
    /// Network order; IPv4 in the first four bytes, the rest zero.
    pub addr: [u8; 16],
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub len: u8,
}

/// Why a prefix did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixError {
    /// Not an address, a CIDR or a wildcard form.
    Malformed,
    /// The length after `/` is above the family's bits.
    LengthOutOfRange,
    /// A wildcard in the middle (`10.*.1.0`) or in an IPv6 address.
    BadWildcard,
}

impl core::fmt::Display for PrefixError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Malformed => {
                "expected an address, a CIDR (198.51.100.0/24, 2001:db8::/48) or a wildcard (192.168.1.*)"
            }
            Self::LengthOutOfRange => "prefix length out of range (0..=32 for IPv4, 0..=128 for IPv6)",
            Self::BadWildcard => "a wildcard may only replace whole trailing IPv4 octets (192.168.1.*, 10.*)",
        })
    }
}

impl Prefix {
    /// The prefix of `addr`/`len`, host bits cleared.
    #[must_use]
    pub fn new(ip: core::net::IpAddr, len: u8) -> Self {
        match ip {
            core::net::IpAddr::V4(a) => Self::v4(a.octets(), len),
            core::net::IpAddr::V6(a) => {
                // ::ffff:a.b.c.d/L with L >= 96 covers IPv4 addresses only:
                // L - 96 bits of them. A shorter prefix also covers IPv6
                // addresses and stays IPv6.
                if let Some(v4) = a.to_ipv4_mapped().filter(|_| len >= 96) {
                    return Self::v4(v4.octets(), len - 96);
                }
                Self { family: crate::maps::family::V6, addr: mask_v6(a.octets(), len.min(128)), len: len.min(128) }
            }
        }
    }

    fn v4(octets: [u8; 4], len: u8) -> Self {
        let len = len.min(32);
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&mask_v4(octets, len));
        Self { family: crate::maps::family::V4, addr, len }
    }

    /// Parses `198.51.100.7` (a /32), `2001:db8::1` (a /128), CIDR forms
    /// (`198.51.100.0/24`; host bits are cleared) and the wildcard forms
    /// mail admins use (`192.168.1.*` = /24, `10.*` = /8, `*` = all IPv4).
    ///
    /// # Errors
    /// When the text is none of those.
    pub fn parse(s: &str) -> Result<Self, PrefixError> {
        let s = s.trim();
        if s.contains('*') {
            return Self::parse_wildcard(s);
        }
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => {
                if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
                    return Err(PrefixError::Malformed);
                }
                let len: u8 = len.parse().map_err(|_| PrefixError::LengthOutOfRange)?;
                (ip, Some(len))
            }
            None => (s, None),
        };
        let ip: core::net::IpAddr = ip.parse().map_err(|_| PrefixError::Malformed)?;
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(bits);
        if len > bits {
            return Err(PrefixError::LengthOutOfRange);
        }
        Ok(Self::new(ip, len))
    }

    fn parse_wildcard(s: &str) -> Result<Self, PrefixError> {
        if s.contains(':') || s.contains('/') {
            return Err(PrefixError::BadWildcard);
        }
        let mut octets = [0u8; 4];
        let mut fixed = 0u8;
        let mut wild = false;
        for (i, part) in s.split('.').enumerate() {
            if i == 4 {
                return Err(PrefixError::Malformed);
            }
            if part == "*" {
                wild = true;
            } else if wild {
                return Err(PrefixError::BadWildcard);
            } else {
                // No leading zeros, as for addresses (`010` could mean octal).
                if part.is_empty()
                    || part.len() > 3
                    || !part.bytes().all(|b| b.is_ascii_digit())
                    || (part.len() > 1 && part.starts_with('0'))
                {
                    return Err(PrefixError::Malformed);
                }
                octets[i] = part.parse().map_err(|_| PrefixError::Malformed)?;
                fixed += 1;
            }
        }
        // `192.168.1.*` and `192.168.*.*` and `192.168.*` all mean the fixed octets.
        Ok(Self::v4(octets, fixed * 8))
    }

    /// Whether this prefix covers `other` (equal or longer, same family).
    #[must_use]
    pub fn covers(&self, other: &Self) -> bool {
        self.family == other.family
            && self.len <= other.len
            && Self::mask(other.addr, self.family, self.len) == self.addr
    }

    /// The prefix of length `len` (at most this one's) that covers this one.
    #[must_use]
    pub fn truncate(&self, len: u8) -> Self {
        let len = len.min(self.len);
        Self { family: self.family, addr: Self::mask(self.addr, self.family, len), len }
    }

    fn mask(addr: [u8; 16], family: u8, len: u8) -> [u8; 16] {
        if family == crate::maps::family::V4 {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&mask_v4([addr[0], addr[1], addr[2], addr[3]], len));
            out
        } else {
            mask_v6(addr, len)
        }
    }
}

/// The normalized CIDR form: `192.168.1.0/24`, `2001:db8::/48`,
/// `198.51.100.7/32`.
impl core::fmt::Display for Prefix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.family == crate::maps::family::V4 {
            let a = core::net::Ipv4Addr::new(self.addr[0], self.addr[1], self.addr[2], self.addr[3]);
            write!(f, "{a}/{}", self.len)
        } else {
            write!(f, "{}/{}", core::net::Ipv6Addr::from(self.addr), self.len)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn examples() {
        assert_eq!(mask_v4([198, 18, 7, 200], 24), [198, 18, 7, 0]);
        assert_eq!(mask_v4([198, 18, 7, 200], 32), [198, 18, 7, 200]);
        assert_eq!(mask_v4([198, 18, 7, 200], 0), [0; 4]);
        assert_eq!(mask_v4([198, 19, 255, 255], 15), [198, 18, 0, 0]);
        let a = [0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        assert_eq!(mask_v6(a, 64), [0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mask_v6(a, 48), [0x20, 0x01, 0x0d, 0xb8, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mask_v6(a, 128), a);
        assert_eq!(mask_v6(a, 68), [0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mask_v6(a, 72), [0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mask_v6(a, 0), [0; 16]);
    }

    /// Reference: clear every bit at index >= len, one bit at a time.
    fn reference(addr: &[u8], len: u8) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, b) in addr.iter().enumerate() {
            for bit in 0..8 {
                let index = i * 8 + bit;
                if index < usize::from(len) {
                    out[i] |= b & (0x80 >> bit);
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn v4_matches_reference(addr: [u8; 4], len in 0u8..=40) {
            let expected = reference(&addr, len.min(32));
            prop_assert_eq!(&mask_v4(addr, len)[..], &expected[..4]);
        }

        #[test]
        fn v6_matches_reference(addr: [u8; 16], len in 0u8..=140) {
            prop_assert_eq!(mask_v6(addr, len), reference(&addr, len.min(128)));
        }

        /// Two addresses share a key exactly when they agree on the first
        /// `len` bits: masking is idempotent and prefix-preserving.
        #[test]
        fn masking_is_idempotent(addr: [u8; 16], len in 0u8..=128) {
            let once = mask_v6(addr, len);
            prop_assert_eq!(mask_v6(once, len), once);
        }
    }

    mod parse {
        extern crate std;

        use std::{format, string::String, vec::Vec};

        use proptest::prelude::*;

        use super::super::*;
        use crate::maps::family::{V4, V6};

        fn normalized(s: &str) -> Result<String, PrefixError> {
            Prefix::parse(s).map(|p| format!("{p}"))
        }

        #[test]
        fn accepted_forms_are_normalized() {
            let cases = [
                ("192.168.1.*", "192.168.1.0/24"),
                ("192.168.*.*", "192.168.0.0/16"),
                ("192.168.*", "192.168.0.0/16"),
                ("10.*", "10.0.0.0/8"),
                ("10.*.*.*", "10.0.0.0/8"),
                ("*", "0.0.0.0/0"),
                ("198.51.100.7", "198.51.100.7/32"),
                ("198.51.100.7/32", "198.51.100.7/32"),
                ("192.168.1.5/24", "192.168.1.0/24"),
                ("0.0.0.0/0", "0.0.0.0/0"),
                ("255.255.255.255/1", "128.0.0.0/1"),
                (" 203.0.113.0/24 ", "203.0.113.0/24"),
                ("2001:db8::1", "2001:db8::1/128"),
                ("2001:db8:1::/48", "2001:db8:1::/48"),
                ("2001:db8:1:2:3:4:5:6/64", "2001:db8:1:2::/64"),
                ("::/0", "::/0"),
                ("::ffff:198.51.100.7", "198.51.100.7/32"),
                ("::ffff:198.51.100.7/120", "198.51.100.0/24"),
                ("::ffff:0:0/96", "0.0.0.0/0"),
                // Shorter than /96 the prefix also covers IPv6 addresses.
                ("::ffff:198.51.100.7/95", "::fffe:0:0/95"),
                ("::ffff:198.51.100.7/64", "::/64"),
            ];
            for (text, want) in cases {
                assert_eq!(normalized(text).as_deref(), Ok(want), "{text:?}");
            }
            let p = Prefix::parse("2001:db8::1").expect("valid");
            assert_eq!((p.family, p.len), (V6, 128));
            let p = Prefix::parse("::ffff:198.51.100.7").expect("valid");
            assert_eq!((p.family, p.len, &p.addr[..4], &p.addr[4..]), (V4, 32, &[198, 51, 100, 7][..], &[0u8; 12][..]));
        }

        #[test]
        fn malformed_forms_are_refused() {
            use PrefixError::{BadWildcard, LengthOutOfRange, Malformed};
            let cases = [
                ("300.1.1.1", Malformed),
                ("10.*.1.1", BadWildcard),
                ("1.2.3.4/33", LengthOutOfRange),
                ("2001:db8::/129", LengthOutOfRange),
                ("1.2.3.4/256", LengthOutOfRange),
                ("1.2.3.4/1000", Malformed),
                ("abc", Malformed),
                ("", Malformed),
                ("   ", Malformed),
                ("1.2.3.4/", Malformed),
                ("/24", Malformed),
                ("1.2.3.4/-1", Malformed),
                ("1.2.3.4/+8", Malformed),
                ("1.2.3.4/8/8", Malformed),
                ("1.2.3.4 /8", Malformed),
                ("2001:db8::*", BadWildcard),
                ("1.2.3.4.5", Malformed),
                ("1.2.3.*/8", BadWildcard),
                ("1.2.3.4.*", Malformed),
                ("*.*.*.*.*", Malformed),
                ("1.2.3.4*", Malformed),
                ("10..*", Malformed),
                (".*", Malformed),
                ("256.*", Malformed),
                ("010.*", Malformed),
                ("010.1.1.1", Malformed),
                ("10.*.", BadWildcard),
                ("fe80::1%eth0", Malformed),
            ];
            for (text, want) in cases {
                assert_eq!(Prefix::parse(text), Err(want), "{text:?}");
            }
        }

        #[test]
        fn errors_say_what_is_expected() {
            for e in [PrefixError::Malformed, PrefixError::LengthOutOfRange, PrefixError::BadWildcard] {
                let text = format!("{e}");
                assert!(!text.contains('\n') && text.len() > 20, "{text:?}");
            }
        }

        /// Any prefix, built from an address and a length like a parsed one.
        fn any_prefix() -> impl Strategy<Value = Prefix> {
            prop_oneof![
                (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| Prefix::new(core::net::Ipv4Addr::from(a).into(), l)),
                (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, l)| Prefix::new(core::net::Ipv6Addr::from(a).into(), l)),
                // IPv4-mapped addresses, which become IPv4 from /96 on.
                (any::<[u8; 4]>(), 80u8..=128)
                    .prop_map(|(a, l)| { Prefix::new(core::net::Ipv4Addr::from(a).to_ipv6_mapped().into(), l) }),
            ]
        }

        /// Text that looks like a prefix often enough to reach every branch.
        fn prefix_like() -> impl Strategy<Value = String> {
            prop_oneof![
                "[0-9]{1,3}(\\.([0-9]{1,3}|\\*)){0,4}(/[0-9]{0,3})?",
                "[0-9a-f:]{0,24}(\\.[0-9]{1,3}){0,3}(/[0-9]{0,3})?",
                "[0-9a-f:.*/ %-]{0,24}",
                any::<String>(),
            ]
        }

        /// The address bits of a prefix's family.
        fn bits(p: &Prefix) -> Vec<bool> {
            let bytes = if p.family == V4 { &p.addr[..4] } else { &p.addr[..] };
            bytes.iter().flat_map(|b| (0..8).map(move |i| b & (0x80 >> i) != 0)).collect()
        }

        proptest! {
            #[test]
            fn display_then_parse_is_the_identity(p in any_prefix()) {
                prop_assert_eq!(Prefix::parse(&format!("{p}")), Ok(p));
            }

            #[test]
            fn parse_is_idempotent_on_its_output(s in prefix_like()) {
                if let Ok(p) = Prefix::parse(&s) {
                    prop_assert_eq!(Prefix::parse(&format!("{p}")), Ok(p), "{:?} -> {}", s, p);
                }
            }

            #[test]
            fn wildcard_is_the_cidr_of_its_fixed_octets(a: [u8; 4], k in 0usize..4, stars in 1usize..=4) {
                let mut parts: Vec<String> = a[..k].iter().map(|o| format!("{o}")).collect();
                // `10.*` and `10.*.*.*` are the same /8.
                parts.extend(core::iter::repeat_n(String::from("*"), stars.min(4 - k)));
                let wild = parts.join(".");
                let cidr = format!("{}.{}.{}.{}/{}", a[0], a[1], a[2], a[3], k * 8);
                prop_assert_eq!(Prefix::parse(&wild), Prefix::parse(&cidr), "{} vs {}", wild, cidr);
                prop_assert!(Prefix::parse(&wild).is_ok(), "{} refused", wild);
            }

            #[test]
            fn covers_agrees_with_bits(a in any_prefix(), b in any_prefix(), share in any::<bool>()) {
                // Often make b a longer or shorter prefix of a's address.
                let b = if share && a.family == b.family {
                    let ip: core::net::IpAddr = if a.family == V4 {
                        core::net::Ipv4Addr::new(a.addr[0], a.addr[1], a.addr[2], a.addr[3]).into()
                    } else {
                        core::net::Ipv6Addr::from(a.addr).into()
                    };
                    Prefix::new(ip, b.len)
                } else {
                    b
                };
                let (x, y) = (bits(&a), bits(&b));
                let want = a.family == b.family
                    && a.len <= b.len
                    && x[..usize::from(a.len)] == y[..usize::from(a.len)];
                prop_assert_eq!(a.covers(&b), want, "{} covers {}", a, b);
                prop_assert!(a.covers(&a));
            }

            #[test]
            fn host_bits_are_zero(s in prefix_like(), p in any_prefix()) {
                for p in Prefix::parse(&s).into_iter().chain([p]) {
                    let width = if p.family == V4 { 32 } else { 128 };
                    prop_assert!(p.family == V4 || p.family == V6);
                    prop_assert!(p.len <= width, "{}", p);
                    prop_assert!(bits(&p)[usize::from(p.len)..].iter().all(|b| !b), "{} has host bits", p);
                    if p.family == V4 {
                        prop_assert_eq!(&p.addr[4..], &[0u8; 12][..]);
                    }
                }
            }
        }
    }
}
