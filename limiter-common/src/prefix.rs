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
