//! The bench's object (`cargo xtask bench` only; the daemon never embeds
//! it): the empty floors the real program is measured against, the
//! spoofed-flood pair, which give every packet a new source, and the sink
//! that keeps the bench's client silent.
//!
//! `bench_flood` runs the real packet path after its rewrite, and turns what
//! it would pass into a drop, which a tail call into the production object's
//! `limiter_xdp` could not do. So this object is built from the same modules
//! (`xdp.rs` and the stages, `maps.rs`), and the bench loads it on the
//! production object's maps (pinned, then reused by name): every case,
//! production program or flood, counts in and decides on the same maps.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core::intrinsics atomics: see maps::fetch_add")]

mod act;
mod classify;
mod decide;
mod frame;
#[expect(dead_code, reason = "the helpers only sock_ops uses")]
mod maps;
mod object;
mod parse;
mod xdp;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

use crate::{frame::ptr_at, xdp::run_with};

/// Spoofed sources handed out so far (one entry, per CPU). Only ever
/// incremented, so a source is never repeated within a run, across runs, or
/// between the flood program and its floor. The bench reads it back to check
/// that every packet was rewritten.
#[map(name = "BENCH_SEQ")]
static BENCH_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
/// Offsets in an untagged IPv6 frame with TCP right after the fixed header.
const V6_NEXT_HEADER: usize = 14 + 6;
/// Source address bytes 4..8: the low 32 bits of the source's /64.
const V6_SRC_NET: usize = 14 + 8 + 4;
const V6_TCP_CHECKSUM: usize = 14 + 40 + 16;
/// Top bit of source bytes 4..8: sources stay in `2001:db8:8000::/33`,
/// clear of the `2001:db8::/48` the bench's own hosts use.
const SPOOF_NET: u32 = 0x8000_0000;

#[xdp]
fn floor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
fn floor_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Writes the next spoofed source into an untagged IPv6 TCP frame: the
/// counter goes into source bytes 4..8, so every packet comes from a /64 never
/// seen before (`2001:db8:8000::/33` holds 2^31 of them), and the TCP checksum
/// is fixed incrementally, so the frame stays valid.
///
/// In live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`) the kernel recycles a
/// few pages from a page pool without restoring their contents, and a page
/// fresh from the allocator holds the original frame again: so the new source
/// is written from the counter, never derived from what the page holds, and
/// the checksum is adjusted from the bytes actually there.
#[inline(always)]
fn next_source(ctx: &XdpContext) -> Result<(), ()> {
    let eth = ptr_at::<[u8; 2]>(ctx, 12)?;
    let next = ptr_at::<u8>(ctx, V6_NEXT_HEADER)?;
    if u16::from_be_bytes(unsafe { *eth }) != ETH_P_IPV6 || unsafe { *next } != IPPROTO_TCP {
        return Err(());
    }
    let src = ptr_at::<[u8; 4]>(ctx, V6_SRC_NET)?;
    let check = ptr_at::<[u8; 2]>(ctx, V6_TCP_CHECKSUM)?;
    let seq = BENCH_SEQ.get_ptr_mut(0).ok_or(())?;
    // Per-CPU entry: no other CPU writes it.
    let n = unsafe { *seq };
    unsafe { *seq = n + 1 };
    #[expect(clippy::cast_possible_truncation, reason = "2^31 sources, then it wraps")]
    let new = SPOOF_NET | (n as u32 & !SPOOF_NET);
    unsafe {
        let old = u32::from_be_bytes(*src);
        *src = new.to_be_bytes();
        *check = limiter_common::checksum::replace32(u16::from_be_bytes(*check), old, new).to_be_bytes();
    }
    Ok(())
}

/// A new source, then the real decision; what it would pass is dropped, so
/// the bench times the limiter's own cost per spoofed SYN and not the stack's
/// (the stack's cost of a passed SYN is the bench's `listener_syncookies`).
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] macro hands the context over by value")]
fn bench_flood(ctx: XdpContext) -> u32 {
    if next_source(&ctx).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    // Every SYN of the flood is a new source and accepted: nothing of it
    // is ever reset (`run_with` says why the reset is left out).
    match run_with::<false>(&ctx) {
        xdp_action::XDP_PASS => xdp_action::XDP_DROP,
        action => action,
    }
}

/// A new source, then drop: the floor of `bench_flood`.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] macro hands the context over by value")]
fn floor_flood_drop(ctx: XdpContext) -> u32 {
    if next_source(&ctx).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_DROP
}

/// Attached to the bench client's veth: drops IPv4 TCP segments to ports
/// below 1024, passes everything else. The bench injects its SYNs from such
/// ports (the client's real sockets use ephemeral ports), so the server's
/// answers to them (cookie SYN-ACKs, resets) end here instead of making the
/// client's kernel answer with a reset of its own, work that would land on
/// the timed CPU but is no part of the server's cost.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] macro hands the context over by value")]
fn bench_sink(ctx: XdpContext) -> u32 {
    if to_low_port(&ctx).unwrap_or(false) { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

#[inline(always)]
fn to_low_port(ctx: &XdpContext) -> Result<bool, ()> {
    let eth = ptr_at::<[u8; 2]>(ctx, 12)?;
    if u16::from_be_bytes(unsafe { *eth }) != ETH_P_IPV4 {
        return Ok(false);
    }
    let ip = unsafe { &*ptr_at::<[u8; 20]>(ctx, 14)? };
    if ip[9] != IPPROTO_TCP {
        return Ok(false);
    }
    let l4 = 14 + usize::from(ip[0] & 0x0f) * 4;
    let dport = ptr_at::<[u8; 2]>(ctx, l4 + 2)?;
    Ok(u16::from_be_bytes(unsafe { *dport }) < 1024)
}
