//! Empty XDP programs: the floors `cargo xtask bench` measures the real
//! program against, built and loaded exactly like it. Never attached.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub(crate) fn floor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub(crate) fn floor_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}
