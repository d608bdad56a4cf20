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
                if let Some(v4) = a.to_ipv4_mapped() {
                    // ::ffff:a.b.c.d/L covers IPv4 addresses: L - 96 bits of them.
                    return Self::v4(v4.octets(), len.saturating_sub(96));
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
        for (parts, part) in s.split('.').enumerate() {
            if parts == 4 {
                return Err(PrefixError::Malformed);
            }
            if part == "*" {
                wild = true;
            } else if wild {
                return Err(PrefixError::BadWildcard);
            } else {
                if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(PrefixError::Malformed);
                }
                octets[parts] = part.parse().map_err(|_| PrefixError::Malformed)?;
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
}
