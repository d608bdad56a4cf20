//! act: counts the verdict; a refused SYN is reported to the daemon
//! (`EVENTS`, with what answered it) and dropped, or, under the `reset` action, turned into a TCP
//! RST+ACK in place and sent back out of the interface it came from
//! (`XDP_TX`). The reply keeps the Ethernet/VLAN header (MACs swapped), gets
//! a fresh option-free IP header and a bare 20-byte TCP header, and is
//! trimmed to that length. Per RFC 9293 a RST answering a segment without ACK
//! has SEQ 0 and ACK = SEG.SEQ + SEG.LEN (the SYN counts one). Under the
//! `respond` action, with a steering token, the SYN passes instead with a
//! `STEER` entry that `limiter_sk_lookup` hands to the responder.

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use limiter_common::{
    Verdict, checksum,
    events::Refusal,
    maps::family,
    steer::{self, SteerKey, SteerValue, budget},
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::{
    frame::{Parsed, Syn, ptr_at, source_addr},
    maps::{
        Grounds, STEER, STEER_SCRATCH, basis_noted, count, count_observed, count_steer, event_token_left,
        note_unreported, now_ns, report, take_steer_token,
    },
};

const TTL: u8 = 64;
const TCP_RST_ACK: u8 = 0x14;

/// Counts the verdict; true for a refusal. In observe mode (`observe`) a
/// refusal is counted apart, in `OBSERVED`, and the SYN counted as accepted
/// (it is).
#[inline(always)]
pub(crate) fn refused(verdict: Verdict, service: u32, observe: bool) -> bool {
    if observe && verdict != Verdict::Accepted {
        count_observed(verdict.index(service));
        count(Verdict::Accepted.index(service));
        return true;
    }
    count(verdict.index(service));
    verdict != Verdict::Accepted
}

/// Reports a refusal to the daemon (true if it was), with what answered it
/// (`events::answer`), before the reply rewrites the frame. What the
/// source's counts were is sent only for a refusal by them (the sessions
/// rule may have decided after `per_source` had read them).
#[inline(always)]
pub(crate) fn report_refusal(
    ctx: &XdpContext,
    p: &Parsed,
    verdict: Verdict,
    service: u32,
    ports: [u8; 4],
    answer: u8,
) -> bool {
    let Ok(addr) = source_addr(ctx, p) else { return false };
    #[expect(clippy::cast_possible_truncation, reason = "verdicts and service ids are < 256")]
    report(|| {
        let f = if verdict == Verdict::RefusedConcurrency { basis_noted() } else { Grounds::default() };
        Refusal {
            addr,
            family: p.family,
            verdict: verdict as u8,
            service: service as u8,
            basis: f.basis,
            port: u16::from_be_bytes([ports[2], ports[3]]),
            pending: f.pending,
            established: f.established,
            answer,
            pad: 0,
            client_port: u16::from_be_bytes([ports[0], ports[1]]),
        }
    })
}

/// A refusal that needs nothing of the frame again: a drop, or observe
/// mode's pass, with no event token left on this CPU (every refusal of a
/// flood once the second's tokens are spent). Counted as unreported, as
/// `report` would; the caller skips the second parse.
#[inline(always)]
pub(crate) fn quiet(action: u8) -> bool {
    if (action == limiter_common::maps::action::DROP || action == limiter_common::maps::action::LOG)
        && !event_token_left()
    {
        note_unreported();
        return true;
    }
    false
}

/// Takes one of this CPU's steering tokens; false with none left (the
/// fallback counted: the caller resets).
#[inline(always)]
pub(crate) fn steer_token() -> bool {
    if take_steer_token() {
        return true;
    }
    count_steer(budget::NO_TOKEN);
    false
}

/// Notes in the scratch whether the refusal about to be steered was
/// reported: handed over this way, not as an argument of the steering call,
/// whose frame would grow past what the caller's leaves of the 512 bytes.
#[inline(always)]
pub(crate) fn note_reported(reported: bool) {
    if let Some(s) = STEER_SCRATCH.get_ptr_mut(0) {
        unsafe { (*s).value.reported = u8::from(reported) };
    }
}

/// Notes the refused SYN's flow and why in `STEER`, for the socket lookup
/// and the responder. The entry is built in the per-CPU scratch
/// (`STEER_SCRATCH`), not on the stack. `Err` only if the frame cannot be
/// read or the map refuses the entry (counted with the fallbacks).
#[inline(always)]
pub(crate) fn steer(ctx: &XdpContext, p: &Parsed, verdict: Verdict, service: u32) -> Result<(), ()> {
    let r = note_steer(ctx, p, verdict, service);
    count_steer(if r.is_ok() { budget::STEERED } else { budget::NO_TOKEN });
    r
}

#[inline(always)]
fn note_steer(ctx: &XdpContext, p: &Parsed, verdict: Verdict, service: u32) -> Result<(), ()> {
    let s = STEER_SCRATCH.get_ptr_mut(0).ok_or(())?;
    let ports = unsafe { *ptr_at::<[u8; 4]>(ctx, p.l4)? };
    let f = if verdict == Verdict::RefusedConcurrency { basis_noted() } else { Grounds::default() };
    #[expect(clippy::cast_possible_truncation, reason = "verdicts and service ids are < 256")]
    unsafe {
        (*s).key = SteerKey {
            addr: source_addr(ctx, p)?,
            family: p.family,
            pad: 0,
            client_port: u16::from_be_bytes([ports[0], ports[1]]),
            local_port: u16::from_be_bytes([ports[2], ports[3]]),
            pad2: [0; 2],
        };
        (*s).value = SteerValue {
            at_ns: now_ns(),
            verdict: verdict as u8,
            service: service as u8,
            basis: f.basis,
            fate: steer::fate::NONE,
            pending: f.pending,
            // Set by the caller before the steering call ([`note_reported`]).
            reported: (*s).value.reported,
            pad2: 0,
            limit: f.limit,
            count: f.established,
        };
    }
    STEER.insert(unsafe { &(*s).key }, unsafe { &(*s).value }, 0).map_err(|_| ())
}

/// Rewrites the refused SYN into the RST+ACK in place; `Err` leaves a frame
/// only fit to be dropped.
#[inline(always)]
pub(crate) fn rst(ctx: &XdpContext, p: &Parsed) -> Result<(), ()> {
    // Everything the reply needs is read before any byte is overwritten:
    // with IPv4 options or IPv6 extension headers the new TCP header lands
    // where the old IP header's tail was.
    let tcp = unsafe { *ptr_at::<[u8; 20]>(ctx, p.l4)? };
    let doff = usize::from(tcp[12] >> 4) * 4;
    let payload = p.l4_len.checked_sub(doff).ok_or(())?;
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    #[expect(clippy::cast_possible_truncation, reason = "TCP sequence arithmetic is modulo 2^32")]
    let ack = seq.wrapping_add(1).wrapping_add(payload as u32);

    let mut reply = [0u8; 20];
    reply[0..2].copy_from_slice(&tcp[2..4]); // our port
    reply[2..4].copy_from_slice(&tcp[0..2]); // their port
    reply[8..12].copy_from_slice(&ack.to_be_bytes());
    reply[12] = 5 << 4;
    reply[13] = TCP_RST_ACK;

    let eth = ptr_at::<[u8; 12]>(ctx, 0)?;
    let old = unsafe { *eth };
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&old[6..12]);
    macs[6..].copy_from_slice(&old[..6]);
    unsafe { *eth = macs };

    let new_len = if p.family == family::V4 {
        let src = unsafe { *ptr_at::<[u8; 4]>(ctx, p.l3 + 12)? };
        let dst = unsafe { *ptr_at::<[u8; 4]>(ctx, p.l3 + 16)? };
        let sum = checksum::tcp_v4(&dst, &src, &reply);
        reply[16..18].copy_from_slice(&sum.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = TTL;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&dst);
        ip[16..20].copy_from_slice(&src);
        let sum = checksum::ipv4_header(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        unsafe {
            *ptr_at::<[u8; 20]>(ctx, p.l3)? = ip;
            *ptr_at::<[u8; 20]>(ctx, p.l3 + 20)? = reply;
        }
        p.l3 + Ipv4Hdr::LEN + TcpHdr::LEN
    } else {
        let src = unsafe { *ptr_at::<[u8; 16]>(ctx, p.l3 + 8)? };
        let dst = unsafe { *ptr_at::<[u8; 16]>(ctx, p.l3 + 24)? };
        let sum = checksum::tcp_v6(&dst, &src, &reply);
        reply[16..18].copy_from_slice(&sum.to_be_bytes());
        let mut ip = [0u8; 8];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&20u16.to_be_bytes());
        ip[6] = 6;
        ip[7] = TTL;
        unsafe {
            *ptr_at::<[u8; 8]>(ctx, p.l3)? = ip;
            *ptr_at::<[u8; 16]>(ctx, p.l3 + 8)? = dst;
            *ptr_at::<[u8; 16]>(ctx, p.l3 + 24)? = src;
            *ptr_at::<[u8; 20]>(ctx, p.l3 + 40)? = reply;
        }
        p.l3 + Ipv6Hdr::LEN + TcpHdr::LEN
    };

    let old_len = ctx.data_end() - ctx.data();
    #[expect(clippy::cast_possible_wrap, clippy::cast_possible_truncation, reason = "frame lengths are < 64 KiB")]
    let delta = new_len as i32 - old_len as i32;
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(());
    }
    Ok(())
}
