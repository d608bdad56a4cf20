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
    /// Fallback in `limiter_sk_lookup`: the source is over its share of
    /// the steering ([`admit`](super::admit)); the lookup fails (RST) and
    /// the token XDP spent goes back.
    pub const OVER_SHARE: u32 = 5;
    /// A source's share, set by the daemon ([`share`](super::share)): ns
    /// between steered SYNs of one source ...
    pub const SHARE_INTERVAL_NS: u32 = 6;
    /// ... and how far ahead of that pace a source may run (its burst).
    pub const SHARE_TOLERANCE_NS: u32 = 7;
    /// Entries of `STEER_BUDGET`.
    pub const ENTRIES: u32 = 8;
}

/// What `limiter_sk_lookup` did with a steered SYN ([`SteerValue::fate`]).
pub mod fate {
    /// Not looked up yet (or the entry is not fresh any more).
    pub const NONE: u8 = 0;
    /// Handed to the responder socket: the responder's listener answers the
    /// SYN, and accepts the connection if the client completes it.
    pub const REDIRECTED: u8 = 1;
    /// No responder socket: reset (noted in `STEER_FATES`).
    pub const NO_RESPONDER: u8 = 2;
    /// The source is over its share of the steering: reset (noted in `STEER_FATES`).
    pub const OVER_SHARE: u8 = 3;
}

/// Entries of the `STEER_SOURCES` LRU hash: sources with a share in use
/// (a source idle for longer than its burst takes to refill is the same as
/// a new one, so the LRU may forget it).
pub const SOURCES: u32 = 16_384;

/// Entries of the `STEER_FATES` LRU hash: the reported flows the socket
/// lookup reset, for the daemon's lines. The event budget bounds its
/// inserts (640 a second per CPU): this holds the second the daemon waits
/// with up to 25 CPUs flooded at once.
pub const FATES: u32 = 16_384;

/// A source's share of the steering as the kernel holds it: one steered
/// SYN per `interval` ns, running at most `tolerance` ns ahead (a burst of
/// `tolerance / interval + 1`). Both zero: no share limit.
#[must_use]
pub const fn share(per_second: u32, burst: u32) -> (u64, u64) {
    if per_second == 0 {
        return (0, 0);
    }
    let interval = 1_000_000_000 / per_second as u64;
    let burst = if burst == 0 { 1 } else { burst as u64 };
    (interval, (burst - 1) * interval)
}

/// The per-source share (GCRA, one word per source): `tat` is when the
/// source's pace lets its next SYN be steered with no burst left (0 for a
/// new source). `Some(new tat)` if a SYN at `now` may be steered.
#[must_use]
pub const fn admit(tat: u64, now: u64, interval: u64, tolerance: u64) -> Option<u64> {
    let base = if tat > now { tat } else { now };
    if base - now > tolerance { None } else { Some(base + interval) }
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
    /// [`fate`]: what `limiter_sk_lookup` did with the SYN (0 until it ran).
    pub fate: u8,
    /// Handshakes in flight the decision counted (connection limit only).
    pub pending: u16,
    /// 1 if XDP reported the refusal to the daemon (`EVENTS`): only then is
    /// a reset's fate noted in `STEER_FATES`, whose inserts the event budget
    /// bounds, so a flood cannot evict the fates the daemon will look for.
    pub reported: u8,
    pub pad2: u8,
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
    extern crate std;
    use core::mem::offset_of;
    use std::vec::Vec;

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
        let all = [
            budget::TOKENS,
            budget::STEERED,
            budget::NO_TOKEN,
            budget::REDIRECTED,
            budget::NO_RESPONDER,
            budget::OVER_SHARE,
            budget::SHARE_INTERVAL_NS,
            budget::SHARE_TOLERANCE_NS,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(*a < budget::ENTRIES);
            assert!(all[..i].iter().all(|b| b != a));
        }
    }

    /// Steered SYNs of one source admitted by [`admit`] at the times given.
    fn steered(times: &[u64], per_second: u32, burst: u32) -> usize {
        let (interval, tolerance) = share(per_second, burst);
        let mut tat = 0;
        times.iter().filter(|&&t| admit(tat, t, interval, tolerance).map(|n| tat = n).is_some()).count()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_pace() {
        const S: u64 = 1_000_000_000;
        let t0 = 5 * S;
        assert_eq!(steered(&[t0; 10], 2, 4), 4, "the burst at once");
        // 10 s of a SYN every millisecond: the burst, then 2 a second.
        let times: Vec<u64> = (0..10_000).map(|i| t0 + i * 1_000_000).collect();
        let got = steered(&times, 2, 4);
        assert!((4 + 19..=4 + 20).contains(&got), "{got}");
        assert_eq!(steered(&[t0; 10], 0, 0), 10, "no share set: no limit");
        assert_eq!(steered(&[t0; 10], 5, 0), 1, "a burst of 0 is read as 1");
    }

    proptest::proptest! {
        /// Over any window, a source never gets more than its burst plus
        /// its pace, whatever the times of its SYNs.
        #[test]
        fn the_share_is_never_exceeded(
            mut gaps in proptest::collection::vec(0u64..50_000_000, 1..400),
            per_second in 1u32..100,
            burst in 1u32..20,
        ) {
            let mut t = 1_000_000_000u64;
            let times: Vec<u64> = gaps.drain(..).map(|g| { t += g; t }).collect();
            let span = times[times.len() - 1] - times[0];
            let got = steered(&times, per_second, burst) as u64;
            let (interval, _) = share(per_second, burst);
            proptest::prop_assert!(got <= u64::from(burst) + span / interval, "{} steered", got);
        }
    }
}
