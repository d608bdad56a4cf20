//! Programs for `cargo xtask bench` only, built and loaded exactly like the
//! real one and never attached: the empty floors the real program is
//! measured against, and the spoofed-flood pair, which give every packet a
//! new source.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use crate::xdp::{limiter_xdp_inner, ptr_at};

#[xdp]
pub(crate) fn floor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub(crate) fn floor_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Byte offset, in an untagged IPv6 frame, of source address bytes 4..8
/// (`2001:db8:XXXX:XXXX::/64`: a new /64 each time they change).
const V6_SRC_NET: usize = 14 + 8 + 4;

/// `BPF_PROG_TEST_RUN` with `repeat` hands the same buffer to every run
/// without restoring it, so adding one to the source's /64 makes each
/// packet come from a source never seen before.
#[inline(always)]
fn next_source(ctx: &XdpContext) -> Result<(), ()> {
    let w = ptr_at::<[u8; 4]>(ctx, V6_SRC_NET)?;
    unsafe { *w = u32::from_be_bytes(*w).wrapping_add(1).to_be_bytes() };
    Ok(())
}

/// A new source, then the real program.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] macro hands the context over by value")]
pub(crate) fn bench_flood(ctx: XdpContext) -> u32 {
    if next_source(&ctx).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    limiter_xdp_inner(&ctx)
}

/// A new source, then drop: the floor of `bench_flood`.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] macro hands the context over by value")]
pub(crate) fn floor_flood_drop(ctx: XdpContext) -> u32 {
    if next_source(&ctx).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_DROP
}
