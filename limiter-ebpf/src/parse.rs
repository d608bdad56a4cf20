//! parse: Ethernet, up to two VLAN tags, IPv4 or IPv6, and the TCP header's
//! place. `Err` for anything else, which the caller passes (fail open).

use aya_ebpf::programs::XdpContext;
use limiter_common::maps::family;
use network_types::eth::EthHdr;

use crate::frame::{Parsed, load_be16, ptr_at};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
/// Headers looked at after the fixed IPv6 header: up to five extension
/// headers are skipped, and the sixth must be TCP (else the frame passes).
const MAX_IPV6_EXT: usize = 6;

/// Ethernet, up to two VLAN tags, IPv4 (any IHL, not a fragment) or IPv6
/// (a bounded number of extension headers), and a TCP protocol number.
/// `Err` for anything else: the caller passes it.
#[inline(always)]
pub(crate) fn parse(ctx: &XdpContext) -> Result<Parsed, ()> {
    let mut l3 = EthHdr::LEN;
    let mut ether_type = load_be16(ctx, 12)?;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = load_be16(ctx, l3 + 2)?;
        l3 += 4;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            ether_type = load_be16(ctx, l3 + 2)?;
            l3 += 4;
        }
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3),
        ETH_P_IPV6 => parse_ipv6(ctx, l3),
        _ => Err(()),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<Parsed, ()> {
    let h = ptr_at::<[u8; 20]>(ctx, l3)?;
    let h = unsafe { &*h };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 || h[9] != IPPROTO_TCP {
        return Err(());
    }
    // More-fragments set or a non-zero offset: a fragment, which passes.
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        return Err(());
    }
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let l4_len = total.checked_sub(ihl).ok_or(())?;
    Ok(Parsed { l3, l4: l3 + ihl, l4_len, family: family::V4 })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Result<Parsed, ()> {
    let h = ptr_at::<[u8; 40]>(ctx, l3)?;
    let h = unsafe { &*h };
    if h[0] >> 4 != 6 {
        return Err(());
    }
    let mut next = h[6];
    let mut payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let mut off = l3 + 40;
    for _ in 0..MAX_IPV6_EXT {
        let len = match next {
            IPPROTO_TCP => {
                return Ok(Parsed { l3, l4: off, l4_len: payload, family: family::V6 });
            }
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let e = ptr_at::<[u8; 2]>(ctx, off)?;
                let e = unsafe { &*e };
                next = e[0];
                (usize::from(e[1]) + 1) * 8
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let e = ptr_at::<[u8; 2]>(ctx, off)?;
                let e = unsafe { &*e };
                next = e[0];
                (usize::from(e[1]) + 2) * 4
            }
            // Fragment (44), ESP, no-next-header and unknown headers pass.
            _ => return Err(()),
        };
        off += len;
        payload = payload.checked_sub(len).ok_or(())?;
    }
    Err(())
}
