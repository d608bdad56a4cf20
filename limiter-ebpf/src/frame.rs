//! The frame: one bounds-checked `ptr_at` for every read and write of it,
//! and what the stages learn about it (`Parsed` from parse, `Syn` from
//! classify). The leaf the stages share, so that no stage imports another.

use aya_ebpf::programs::XdpContext;
use limiter_common::maps::family;

/// A bounds-checked pointer to a `T` at `offset` in the frame.
///
/// `data` and `data_end` are read with volatile loads so that the compiler
/// cannot drop a check it thinks an earlier one implies: the verifier tracks
/// each pointer's checked range separately and would reject the access.
#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let (start, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&raw const (*ctx.ctx).data_end) as usize,
        )
    };
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

/// The big-endian `u16` at `offset`.
#[inline(always)]
pub(crate) fn load_be16(ctx: &XdpContext, offset: usize) -> Result<u16, ()> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    Ok(u16::from_be_bytes(unsafe { *p }))
}

/// Where the parser found the TCP header of a frame.
pub(crate) struct Parsed {
    /// Offset of the IP header (after Ethernet and up to two VLAN tags).
    pub(crate) l3: usize,
    /// Offset of the TCP header.
    pub(crate) l4: usize,
    /// IP payload bytes after the TCP header's start (for the RST's ACK number).
    pub(crate) l4_len: usize,
    pub(crate) family: u8,
}

/// A new connection attempt (SYN set, ACK clear) to a service port.
pub(crate) struct Syn<'a> {
    /// The TCP header's first 20 bytes, in the frame.
    pub(crate) tcp: &'a [u8; 20],
    /// The service id of the destination port (never 0).
    pub(crate) service: u32,
    /// The destination port.
    pub(crate) port: u16,
}

/// The client address of a parsed frame (IPv4 in the first four bytes).
#[inline(always)]
///
/// Built from four 32-bit words: zeroing the twelve bytes after an IPv4
/// address as a byte array compiled to a call of `memset`, a BPF-to-BPF
/// call whose frame Linux 6.1 counts against the 512-byte stack (32 bytes
/// more under `xdp::steer`, which went over).
pub(crate) fn source_addr(ctx: &XdpContext, p: &Parsed) -> Result<[u8; 16], ()> {
    if p.family == family::V4 {
        let v4 = unsafe { *ptr_at::<[u8; 4]>(ctx, p.l3 + 12)? };
        let words = [u32::from_ne_bytes(v4), 0, 0, 0];
        return Ok(unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) });
    }
    Ok(unsafe { *ptr_at::<[u8; 16]>(ctx, p.l3 + 8)? })
}
