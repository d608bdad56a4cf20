//! Internet checksums (RFC 1071) for the RST reply the XDP program builds.
//! The reply has fixed-size headers and no payload, so everything is summed
//! from fixed-size arrays and unrolls without loops the verifier must follow.

/// Ones-complement sum of big-endian 16-bit words, not yet folded.
#[inline(always)]
#[must_use]
pub fn sum_be16<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if N % 2 == 1 {
        sum += u32::from(bytes[N - 1]) << 8;
    }
    sum
}

/// Folds a 32-bit sum to 16 bits and complements it.
#[inline(always)]
#[must_use]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let folded = sum as u16;
    !folded
}

/// Checksum of an IPv4 header whose checksum field holds zero.
#[inline(always)]
#[must_use]
pub fn ipv4_header(header: &[u8; 20]) -> u16 {
    fold(sum_be16(header))
}

/// TCP checksum over the IPv4 pseudo-header and a 20-byte TCP header with
/// no payload (checksum field zero).
#[inline(always)]
#[must_use]
pub fn tcp_v4(src: &[u8; 4], dst: &[u8; 4], tcp: &[u8; 20]) -> u16 {
    fold(sum_be16(src) + sum_be16(dst) + 6 + 20 + sum_be16(tcp))
}

/// TCP checksum over the IPv6 pseudo-header and a 20-byte TCP header with
/// no payload (checksum field zero).
#[inline(always)]
#[must_use]
pub fn tcp_v6(src: &[u8; 16], dst: &[u8; 16], tcp: &[u8; 20]) -> u16 {
    fold(sum_be16(src) + sum_be16(dst) + 6 + 20 + sum_be16(tcp))
}

/// RFC 1624 incremental update of a ones-complement checksum when a 32-bit
/// word it covers changes from `old` to `new`: HC' = ~(~HC + ~m + m').
#[inline(always)]
#[must_use]
pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let old = !old;
    fold(!check as u32 + (old >> 16) + (old & 0xffff) + (new >> 16) + (new & 0xffff))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Updating a checksum for one changed word gives what summing the
        /// changed header from scratch gives.
        #[test]
        fn replace32_matches_a_full_sum(header: [u8; 20], word in 0usize..5, new: u32) {
            let mut h = header;
            h[10] = 0;
            h[11] = 0;
            let before = ipv4_header(&h);
            let at = if word == 2 { 12 } else { word * 4 }; // never the checksum field itself
            let old = u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
            h[at..at + 4].copy_from_slice(&new.to_be_bytes());
            let after = ipv4_header(&h);
            // 0x0000 and 0xffff are the same ones-complement value.
            let got = replace32(before, old, new);
            prop_assert!(got == after || (got == 0xffff && after == 0) || (got == 0 && after == 0xffff));
        }
    }

    /// Straight RFC 1071 over an arbitrary byte string.
    fn rfc1071(data: &[u8]) -> u16 {
        let mut sum = 0u64;
        for chunk in data.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u64::from(word);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !u16::try_from(sum).expect("folded")
    }

    #[test]
    fn known_ipv4_header() {
        // The worked example from Wikipedia's "IPv4 header checksum" article.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(fold(sum_be16(&h)), 0, "a header with its checksum sums to zero");
    }

    proptest! {
        #[test]
        fn ipv4_header_matches_rfc1071(h: [u8; 20]) {
            prop_assert_eq!(ipv4_header(&h), rfc1071(&h));
        }

        #[test]
        fn tcp_v4_matches_rfc1071(src: [u8; 4], dst: [u8; 4], tcp: [u8; 20]) {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&src);
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&[0, 6, 0, 20]);
            pseudo.extend_from_slice(&tcp);
            prop_assert_eq!(tcp_v4(&src, &dst, &tcp), rfc1071(&pseudo));
        }

        #[test]
        fn tcp_v6_matches_rfc1071(src: [u8; 16], dst: [u8; 16], tcp: [u8; 20]) {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&src);
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
            pseudo.extend_from_slice(&tcp);
            prop_assert_eq!(tcp_v6(&src, &dst, &tcp), rfc1071(&pseudo));
        }
    }
}
