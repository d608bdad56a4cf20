//! The `respond` action's hand-over from the kernel to the daemon's
//! responder: XDP notes each over-limit SYN it lets through to be steered
//! (`STEER`, keyed by the flow), `limiter_sk_lookup` hands such a SYN to the
//! responder's listening socket (`RESPONDER`), and the responder reads the
//! entry to write its refusal. `STEER_BUDGET` bounds the steering per CPU and
//! counts what it did.

/// Entries of the `STEER` LRU hash: flows steered and not yet forgotten by
/// the responder (an entry lives from the SYN to the responder's accept).
pub const ENTRIES: u32 = 16_384;

/// `SO_MARK` of the responder's listening socket; its accepted connections
/// inherit it, and `sock_ops` skips every socket that carries it, so a
/// responder connection never counts toward a source or a service.
pub const RESPONDER_MARK: u32 = 0x4c4d_5452; // "LMTR"

/// Entries of `RESPONDER`: one listening socket per address family, since
/// a socket bound to `::1` is IPv6-only and the kernel hands an IPv4 SYN
/// only to an IPv4 (or dual-stack) socket.
pub const RESPONDER_SLOTS: u32 = 2;

/// The `RESPONDER` slot of a family ([`crate::maps::family`]).
#[must_use]
pub const fn responder_slot(family: u8) -> u32 {
    if family == crate::maps::family::V6 { 1 } else { 0 }
}

/// A `STEER` entry is trusted by `limiter_sk_lookup` for this long after XDP
/// wrote it. XDP writes it microseconds before the lookup runs; an older one
/// was not written for this SYN (a refused SYN always rewrites it), so the
/// lookup passes it on as usual.
pub const FRESH_NS: u64 = 1_000_000_000;

/// Indices of the per-CPU `STEER_BUDGET` array (u64 each).
pub mod budget {
    /// Steering tokens left on this CPU; the daemon refills them, XDP spends one per steered SYN.
    pub const TOKENS: u32 = 0;
    /// SYNs XDP steered (a token spent, the entry written, `XDP_PASS`).
    pub const STEERED: u32 = 1;
    /// Fallback to `reset` in XDP: no token left (or no room in `STEER`).
    pub const NO_TOKEN: u32 = 2;
    /// SYNs `limiter_sk_lookup` handed to the responder socket.
    pub const REDIRECTED: u32 = 3;
    /// Fallback in `limiter_sk_lookup`: a steered SYN found no responder
    /// socket (the daemon is stopped, crashed or restarting); the lookup
    /// fails (`SK_DROP`) and the client gets a RST.
    pub const NO_RESPONDER: u32 = 4;
    /// Entries of `STEER_BUDGET`.
    pub const ENTRIES: u32 = 5;
}

/// Tokens per CPU after each refill by the daemon at the default `[responder]`
/// rate (1,000 answers a second: 100 per 100 ms). The daemon refills with what
/// the configured rate gives (`ResponderLimits::steer_tokens` in the user crate).
pub const TOKENS_PER_REFILL: u64 = 100;

/// The flow of a steered SYN, as XDP sees it in the frame and
/// `limiter_sk_lookup` in its context.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SteerKey {
    /// The client address, network order, IPv4 in the first four bytes, not masked.
    pub addr: [u8; 16],
    /// [`crate::maps::family`].
    pub family: u8,
    pub pad: u8,
    /// The client's port, host order.
    pub client_port: u16,
    /// The local (service) port, host order.
    pub local_port: u16,
    pub pad2: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<SteerKey>() == 24);

impl SteerKey {
    /// The key of an IPv4 flow.
    #[must_use]
    pub const fn v4(addr: [u8; 4], client_port: u16, local_port: u16) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self { addr: a, family: crate::maps::family::V4, pad: 0, client_port, local_port, pad2: [0; 2] }
    }

    /// The key of an IPv6 flow.
    #[must_use]
    pub const fn v6(addr: [u8; 16], client_port: u16, local_port: u16) -> Self {
        Self { addr, family: crate::maps::family::V6, pad: 0, client_port, local_port, pad2: [0; 2] }
    }
}

/// What the responder needs to write its refusal: why, for which service,
/// and the numbers the decision read.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SteerValue {
    /// When XDP steered the SYN (the kernel's coarse monotonic clock, ns).
    pub at_ns: u64,
    /// The [`crate::Verdict`] that refused it.
    pub verdict: u8,
    /// The service id.
    pub service: u8,
    /// [`crate::events::basis`] of a connection-limit refusal.
    pub basis: u8,
    pub pad: u8,
    /// Handshakes in flight the decision counted (connection limit only).
    pub pending: u16,
    pub pad2: [u8; 2],
    /// The source's connection limit in force (the service's, or an allow
    /// entry's); 0 when the refusal was not by the connection limit: the
    /// responder then takes its numbers from the policy.
    pub limit: u32,
    /// Established connections the decision counted (connection limit only;
    /// on the "at its limit" hint, which reads no count, the limit).
    pub count: u32,
}
const _: () = assert!(core::mem::size_of::<SteerValue>() == 24);

/// XDP's per-CPU scratch entry (`STEER_SCRATCH`): the key and value are
/// built here rather than on the stack, which the packet path uses up.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Steer {
    pub key: SteerKey,
    pub value: SteerValue,
}
const _: () = assert!(core::mem::size_of::<Steer>() == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid, padding explicit.
    unsafe impl aya::Pod for super::SteerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SteerValue {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;
    use crate::maps::family;

    #[test]
    fn keys_are_laid_out_for_both_programs() {
        assert_eq!(offset_of!(SteerKey, family), 16);
        assert_eq!(offset_of!(SteerKey, client_port), 18);
        assert_eq!(offset_of!(SteerKey, local_port), 20);
        let k = SteerKey::v4([198, 18, 0, 1], 40_000, 25);
        assert_eq!(k.addr[..4], [198, 18, 0, 1]);
        assert!(k.addr[4..].iter().all(|b| *b == 0), "IPv4 in the first four bytes, the rest zero");
        assert_eq!((k.family, k.client_port, k.local_port), (family::V4, 40_000, 25));
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let k6 = SteerKey::v6(a, 1, 2);
        assert_eq!(k6.family, family::V6);
        assert_ne!(k, SteerKey::v4([198, 18, 0, 1], 40_001, 25), "the client port is part of the flow");
    }

    #[test]
    fn values_are_laid_out_without_holes() {
        assert_eq!(offset_of!(SteerValue, verdict), 8);
        assert_eq!(offset_of!(SteerValue, pending), 12);
        assert_eq!(offset_of!(SteerValue, limit), 16);
        assert_eq!(offset_of!(SteerValue, count), 20);
        assert_eq!(offset_of!(Steer, value), 24);
    }

    #[test]
    fn budget_indices_are_distinct() {
        let all = [budget::TOKENS, budget::STEERED, budget::NO_TOKEN, budget::REDIRECTED, budget::NO_RESPONDER];
        for (i, a) in all.iter().enumerate() {
            assert!(*a < budget::ENTRIES);
            assert!(all[..i].iter().all(|b| b != a));
        }
    }
}
