//! The packet path of `limiter_xdp` (and of the bench's `bench_flood`):
//! parse -> classify -> decide -> act, each a sibling module over `frame.rs`. Only a TCP SYN (SYN set, ACK clear) to a
//! service port is ever refused; every other frame, and every frame the
//! parser does not understand, passes (fail open).

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    programs::XdpContext,
};
use limiter_common::{Verdict, events::answer, maps::action};

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
    run_with::<true>(ctx)
}

/// The packet path; with `RESET` false a refusal under the `reset` action
/// (or `respond`'s fallback) is dropped instead of answered. Only the
/// bench's flood program runs it so: its SYNs are never refused, and
/// without the reset's code its frame, 8 bytes over `limiter_xdp`'s, fits
/// beside `per_source`'s within 512 bytes.
#[inline(always)]
pub(crate) fn run_with<const RESET: bool>(ctx: &XdpContext) -> u32 {
    if let Ok(action) = try_run::<RESET>(ctx) {
        action
    } else {
        count(Verdict::PassedOther.index(0));
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn try_run<const RESET: bool>(ctx: &XdpContext) -> Result<u32, ()> {
    let p = parse(ctx)?;
    let Some(syn) = classify(ctx, &p)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    let g = GLOBALS.get(0).ok_or(())?;
    let policy = policy(g, syn.service).ok_or(())?;
    // The ports are read before the decision and the frame parsed again
    // after a refusal: with nothing of the first parse live during `decide`,
    // the verifier walks the decision once per address family instead of
    // once per way of parsing a frame (VLAN tags, IP options, extension
    // headers: the bulk of the program's verified instructions).
    let ports = [syn.tcp[0], syn.tcp[1], syn.tcp[2], syn.tcp[3]];
    let service = syn.service;
    let verdict = decide(ctx, &p, &syn, g, policy)?;
    // act: the verdict counted, a refusal reported with what answered it,
    // then the frame's fate. The reset-or-drop choice is made here, not
    // inside `act`: with `rst` inlined into a second inlined function the
    // compiler keeps one more value on the stack, and this frame plus
    // `per_source`'s already fill the 512 bytes (docs/kernel-notes.md,
    // "Verifier and code generation").
    let observe = policy.action == action::LOG;
    if !act::refused(verdict, service, observe) {
        return Ok(xdp_action::XDP_PASS);
    }
    // A drop (or observe mode's pass) that will not be reported needs
    // nothing of the frame: no second parse (about 10 ns a refusal here).
    if act::quiet(policy.action) {
        return Ok(if observe { xdp_action::XDP_PASS } else { xdp_action::XDP_DROP });
    }
    let p = parse(ctx)?;
    // Observe mode: reported as what would have been refused, and passed.
    if observe {
        let _ = act::report_refusal(ctx, &p, verdict, service, ports, answer::OBSERVED);
        return Ok(xdp_action::XDP_PASS);
    }
    // `respond`: steered with a token, else reset like `reset`. After the
    // token nothing of this frame's parse is needed again (a failure to
    // steer drops), which is what keeps `steer` cheap to verify.
    if policy.action == action::RESPOND && act::steer_token() {
        act::note_reported(act::report_refusal(ctx, &p, verdict, service, ports, answer::STEERED));
        return Ok(if steer(ctx.ctx, verdict, service) { xdp_action::XDP_PASS } else { xdp_action::XDP_DROP });
    }
    let answer = match policy.action {
        action::RESET => answer::RESET,
        action::RESPOND => answer::FALLBACK,
        _ => answer::DROPPED,
    };
    let _ = act::report_refusal(ctx, &p, verdict, service, ports, answer);
    if RESET && answer != answer::DROPPED && act::rst(ctx, &p).is_ok() {
        return Ok(xdp_action::XDP_TX);
    }
    Ok(xdp_action::XDP_DROP)
}

/// Steers a refused SYN to the responder (`act::steer`): true if its
/// `STEER` entry is written and the SYN may pass on to the socket lookup.
///
/// Not inlined, and handed only the context and scalars: the frame is
/// parsed again here. The verifier walks a call once per distinct state of
/// the caller at it, and with nothing of the caller's parse live (the
/// caller reads nothing after it but the result) those are a handful; with
/// the parsed frame in hand, or inlined, it was walked once per parse path
/// and verdict path (140k instructions more, past the 600k budget).
#[inline(never)]
fn steer(ctx: *mut xdp_md, verdict: Verdict, service: u32) -> bool {
    let ctx = XdpContext::new(ctx);
    parse(&ctx).and_then(|p| act::steer(&ctx, &p, verdict, service)).is_ok()
}
