//! classify: is the frame a new connection attempt to a service port? A
//! segment to a port of no service, or one that is not a SYN (SYN set, ACK
//! clear), is counted here and passes.

use aya_ebpf::programs::XdpContext;
use limiter_common::Verdict;

use crate::{
    frame::{Parsed, Syn, ptr_at},
    maps::{PORTS, count},
};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The SYN to a service port, or `None` for a frame that passes (counted).
/// `Err` if the TCP header is cut short (the caller passes the frame).
#[inline(always)]
pub(crate) fn classify<'a>(ctx: &'a XdpContext, p: &Parsed) -> Result<Option<Syn<'a>>, ()> {
    let tcp = ptr_at::<[u8; 20]>(ctx, p.l4)?;
    let tcp = unsafe { &*tcp };

    let port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let service = PORTS.get(u32::from(port)).copied().unwrap_or(0);
    if service == 0 {
        count(Verdict::PassedOther.index(0));
        return Ok(None);
    }
    if tcp[13] & (TCP_SYN | TCP_ACK) != TCP_SYN {
        count(Verdict::PassedNonSyn.index(service));
        return Ok(None);
    }
    Ok(Some(Syn { tcp, service, port }))
}
