//! The refusal events: the `EVENTS` ring buffer the XDP program reports
//! refused SYNs through, decoded into [`Event`]s, and the one user-side
//! writer of `EVENT_BUDGET`, which refills the per-CPU tokens that bound
//! how many events reach the ring. The lines they become are the daemon's
//! (`daemon::refusals`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuValues, RingBuf},
};
use limiter_common::{
    SourceKey, Verdict,
    events::{self, Refusal},
    maps::{family, names},
};

use crate::{
    kernel::{
        error::LoadError,
        maps::{map_err, own},
    },
    policy::model::Policy,
};

/// The refusal ring buffer, with a handle of the reader's own.
pub fn ring(ebpf: &Ebpf) -> Result<RingBuf<MapData>, LoadError> {
    own(ebpf, names::EVENTS)
}

/// One refused SYN as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub addr: IpAddr,
    pub service: u32,
    pub port: u16,
    pub verdict: Verdict,
    /// What a connection-limit refusal was based on (`events::basis`).
    pub basis: u8,
    /// Handshakes in flight the kernel counted for the source.
    pub pending: u16,
    /// Established connections the kernel counted for the source.
    pub established: u32,
    /// What answered it (`events::answer`).
    pub answer: u8,
    /// The client's port.
    pub client_port: u16,
}

impl Event {
    /// Decodes a ring buffer record; `None` if it is not one of ours.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Refusal>() {
            return None;
        }
        // SAFETY: the length is checked and `Refusal` is plain old data.
        let r: Refusal = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let addr = match r.family {
            family::V4 => IpAddr::V4(Ipv4Addr::new(r.addr[0], r.addr[1], r.addr[2], r.addr[3])),
            family::V6 => IpAddr::V6(Ipv6Addr::from(r.addr)),
            _ => return None,
        };
        let verdict = *Verdict::ALL.get(usize::from(r.verdict))?;
        Some(Self {
            addr,
            service: u32::from(r.service),
            port: r.port,
            verdict,
            basis: r.basis,
            pending: r.pending,
            established: r.established,
            answer: r.answer,
            client_port: r.client_port,
        })
    }

    /// The source key the kernel counts this client under.
    #[must_use]
    pub fn key(&self, policy: &Policy) -> SourceKey {
        crate::kernel::inspect::source_key(self.addr, self.service, policy.ipv4_prefix, policy.ipv6_prefix)
    }
}

/// The event budget map: refilled per CPU, read for unreported refusals.
pub struct Budget {
    map: PerCpuArray<MapData, u64>,
    cpus: usize,
}

impl Budget {
    /// Takes the budget's handle on `EVENT_BUDGET`.
    pub fn new(ebpf: &Ebpf) -> Result<Self, LoadError> {
        let map = own(ebpf, names::EVENT_BUDGET)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| LoadError::Cpus(e))?;
        Ok(Self { map, cpus })
    }

    /// Gives every CPU its tokens back.
    pub fn refill(&mut self) -> Result<(), LoadError> {
        let values = PerCpuValues::try_from(vec![events::TOKENS_PER_REFILL; self.cpus]).map_err(LoadError::Cpus)?;
        self.map.set(events::TOKENS, values, 0).map_err(map_err(names::EVENT_BUDGET))
    }

    /// Refusals the kernel did not report (no token or no ring space), ever.
    pub fn unreported(&self) -> Result<u64, LoadError> {
        Ok(self.map.get(&events::UNREPORTED, 0).map_err(map_err(names::EVENT_BUDGET))?.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reads_what_the_kernel_writes() {
        let r = Refusal {
            addr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            family: family::V6,
            verdict: Verdict::RefusedRate as u8,
            service: 3,
            basis: limiter_common::events::basis::NONE,
            port: 587,
            pending: 0,
            established: 0,
            answer: limiter_common::events::answer::FALLBACK,
            pad: 0,
            client_port: 40_000,
        };
        // SAFETY: `Refusal` is plain old data.
        let bytes: [u8; size_of::<Refusal>()] = unsafe { std::mem::transmute(r) };
        let e = Event::decode(&bytes).expect("decodes");
        assert_eq!(e.addr, "2001:db8::9".parse::<IpAddr>().expect("addr"));
        assert_eq!((e.service, e.port, e.verdict), (3, 587, Verdict::RefusedRate));
        assert_eq!((e.answer, e.client_port), (limiter_common::events::answer::FALLBACK, 40_000));
        assert_eq!(Event::decode(&bytes[..10]), None);
        let mut bad = bytes;
        bad[16] = 5;
        assert_eq!(Event::decode(&bad), None, "unknown family");
    }
}
