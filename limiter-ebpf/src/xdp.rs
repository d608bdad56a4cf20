//! The packet path of `limiter_xdp` (and of the bench's `bench_flood`):
//! parse -> classify -> decide -> act, each a sibling module over `frame.rs`. Only a TCP SYN (SYN set, ACK clear) to a
//! service port is ever refused; every other frame, and every frame the
//! parser does not understand, passes (fail open).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use limiter_common::{Verdict, maps::action};

use crate::{
    act,
    classify::classify,
    decide::decide,
    maps::{GLOBALS, count, policy},
    parse::parse,
};

/// The packet path, inlined into each program that runs it.
#[inline(always)]
pub(crate) fn run(ctx: &XdpContext) -> u32 {
    if let Ok(action) = try_run(ctx) {
        action
    } else {
        count(Verdict::PassedOther.index(0));
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn try_run(ctx: &XdpContext) -> Result<u32, ()> {
    let p = parse(ctx)?;
    let Some(syn) = classify(ctx, &p)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    let g = GLOBALS.get(0).ok_or(())?;
    let policy = policy(g, syn.service).ok_or(())?;
    let verdict = decide(ctx, &p, &syn, g, policy)?;
    // act: the verdict counted (a refusal reported), then the frame's fate.
    // The reset-or-drop choice is made here, not inside `act`: with `rst`
    // inlined into a second inlined function the compiler keeps one more
    // value on the stack, and this frame plus `per_source`'s already fill the
    // 512 bytes (docs/kernel-notes.md, "Verifier and code generation").
    if !act::refused(ctx, &p, &syn, verdict) {
        return Ok(xdp_action::XDP_PASS);
    }
    if policy.action == action::RESET && act::rst(ctx, &p).is_ok() {
        return Ok(xdp_action::XDP_TX);
    }
    Ok(xdp_action::XDP_DROP)
}
