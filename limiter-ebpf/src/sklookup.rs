//! The `respond` action's socket lookup: a TCP SYN that XDP let through to
//! be steered (a fresh `STEER` entry for its flow) goes to the responder's
//! listening socket instead of the service's. With no responder socket (the
//! daemon is stopped, crashed or restarting), or when the source is past
//! its share of the steering (`steer::admit`), the lookup fails, and TCP
//! answers the SYN with a RST: an over-limit client never reaches the
//! service because the responder is gone (docs/kernel-notes.md, "sk_lookup").
//! What became of the SYN is noted in its entry, or for a reset one, which
//! loses its entry, in `STEER_FATES` (`steer::fate`).

use aya_ebpf::{bindings::bpf_sk_lookup, macros::sk_lookup, programs::SkLookupContext};
use limiter_common::steer::{self, SteerKey, budget};

use crate::maps::{RESPONDER, STEER, STEER_FATES, count_steer, now_ns, return_steer_token, within_share};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;

/// Volatile read of a context field (docs/kernel-notes.md, "Verifier and
/// code generation": adjacent fields must not merge into one load).
macro_rules! field {
    ($ctx:expr, $($f:tt)+) => {
        unsafe { core::ptr::read_volatile(&raw const (*$ctx.lookup).$($f)+) }
    };
}

#[sk_lookup]
#[expect(clippy::needless_pass_by_value, reason = "the #[sk_lookup] macro hands the context over by value")]
pub(crate) fn limiter_sk_lookup(ctx: SkLookupContext) -> u32 {
    if field!(ctx, protocol) != IPPROTO_TCP {
        return SK_PASS;
    }
    let Some(key) = flow(&ctx) else {
        return SK_PASS;
    };
    // Only an entry XDP wrote for this SYN; an old one is some earlier
    // attempt's that the responder has not forgotten yet.
    let Some(v) = STEER.get_ptr_mut(&key) else {
        return SK_PASS;
    };
    let now = now_ns();
    if now.wrapping_sub(unsafe { core::ptr::read_volatile(&raw const (*v).at_ns) }) > steer::FRESH_NS {
        return SK_PASS;
    }
    // A source past its share of the steering is reset, and the token XDP
    // spent on it goes back: one source cannot spend every CPU's tokens
    // and leave the others to the fallback.
    let source = SteerKey { client_port: 0, local_port: 0, ..key };
    let fate = if !within_share(&source, now) {
        return_steer_token();
        count_steer(budget::OVER_SHARE);
        steer::fate::OVER_SHARE
    } else if RESPONDER.redirect_sk_lookup(&ctx, steer::responder_slot(key.family), 0).is_ok() {
        count_steer(budget::REDIRECTED);
        // Noted for the daemon: if the responder never accepts it, the
        // client did not complete the handshake.
        unsafe { core::ptr::write_volatile(&raw mut (*v).fate, steer::fate::REDIRECTED) };
        return SK_PASS;
    } else {
        count_steer(budget::NO_RESPONDER);
        steer::fate::NO_RESPONDER
    };
    // Reset: the entry goes at once (a flood of these must not evict the
    // entries of SYNs on their way to the responder); what became of a
    // reported SYN is noted for the daemon's line.
    let reported = unsafe { core::ptr::read_volatile(&raw const (*v).reported) } != 0;
    let _ = STEER.remove(&key);
    if reported {
        let _ = STEER_FATES.insert(&key, &fate, 0);
    }
    SK_DROP
}

/// The `STEER` key of the looked-up flow: the remote end is the client.
#[inline(always)]
fn flow(ctx: &SkLookupContext) -> Option<SteerKey> {
    let lookup: *const bpf_sk_lookup = ctx.lookup;
    let client_port = u16::from_be(field!(ctx, remote_port));
    #[expect(clippy::cast_possible_truncation, reason = "a 16-bit port in a 32-bit field")]
    let local_port = field!(ctx, local_port) as u16;
    match field!(ctx, family) {
        AF_INET => Some(SteerKey::v4(field!(ctx, remote_ip4).to_ne_bytes(), client_port, local_port)),
        AF_INET6 => {
            let w = unsafe {
                [
                    core::ptr::read_volatile(&raw const (*lookup).remote_ip6[0]),
                    core::ptr::read_volatile(&raw const (*lookup).remote_ip6[1]),
                    core::ptr::read_volatile(&raw const (*lookup).remote_ip6[2]),
                    core::ptr::read_volatile(&raw const (*lookup).remote_ip6[3]),
                ]
            };
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&w[0].to_ne_bytes());
            addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
            addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
            addr[12..].copy_from_slice(&w[3].to_ne_bytes());
            Some(SteerKey::v6(addr, client_port, local_port))
        }
        _ => None,
    }
}
