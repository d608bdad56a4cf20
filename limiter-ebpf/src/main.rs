//! limiter's kernel programs, the object the daemon embeds. The XDP packet
//! path is `xdp.rs`: parse -> classify -> decide -> act, sibling modules over
//! `frame.rs` (bounds-checked frame access and the types the stages share);
//! `sock_ops` is `sockops.rs`, the `respond` action's socket lookup
//! `sklookup.rs`; the maps are `maps.rs`. The bench's programs
//! are a second object, `bench.rs`.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core::intrinsics atomics: see maps::fetch_add")]

mod act;
mod classify;
mod decide;
mod frame;
mod maps;
mod object;
mod parse;
mod sklookup;
mod sockops;
mod xdp;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// The packet path (`xdp::run`). Declared here rather than in `xdp.rs`,
/// which the bench object includes without wanting this program.
#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] macro hands the context over by value")]
fn limiter_xdp(ctx: XdpContext) -> u32 {
    xdp::run(&ctx)
}

/// Passes every frame. `limiter doctor --probe-xdp` attaches it in native
/// mode to find out whether an interface's driver has XDP, without the real
/// program touching its traffic.
#[xdp]
fn limiter_probe(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
