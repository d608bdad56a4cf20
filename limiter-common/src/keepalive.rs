//! Dead peers (`dead_peer_timeout`): the TCP keepalive and user timeout that
//! `sock_ops` gives a service's accepted connections, so that a client that
//! vanished without a FIN or an RST (a phone in IMAP IDLE that lost its
//! network, a NAT that forgot the flow) is found out within about the
//! timeout, and the kernel's close releases its slot.
//!
//! The split of a timeout of `T` seconds ([`Keepalive::of`]): the first probe
//! after `T/2` idle, then [`PROBES`] probes `(T - T/2) / 3` apart (rounded
//! up), and `TCP_USER_TIMEOUT` = `T`. With a user timeout set, Linux gives up
//! at the first keepalive probe that finds nothing received for `T`
//! (`tcp_keepalive_timer`), which with this split is the third probe, at
//! `T` to `T + 2` s; and a write the peer never acknowledges fails after `T`
//! too (a server's "still here" line into a dead IDLE connection). A peer
//! that answers the probes is never given up, however long it idles.

/// Shortest and longest `dead_peer_timeout`, in seconds: a second is the
/// unit of the kernel's keepalive times, and a day is far past any use
/// (Linux's own keepalive default starts probing after two hours).
pub const MIN_SECS: u32 = 1;
pub const MAX_SECS: u32 = 86_400;

/// Keepalive probes after the idle time (`TCP_KEEPCNT`).
pub const PROBES: u32 = 3;

/// Largest `TCP_KEEPIDLE` and `TCP_KEEPINTVL` the kernel takes
/// (`MAX_TCP_KEEPIDLE`, `MAX_TCP_KEEPINTVL`).
pub const MAX_KEEP_SECS: u32 = 32_767;

/// Socket option levels and names (Linux uapi; not all are in the kernel
/// crate's bindings).
pub mod opt {
    pub const SOL_SOCKET: i32 = 1;
    pub const SO_KEEPALIVE: i32 = 9;
    pub const SOL_TCP: i32 = 6;
    pub const TCP_KEEPIDLE: i32 = 4;
    pub const TCP_KEEPINTVL: i32 = 5;
    pub const TCP_KEEPCNT: i32 = 6;
    pub const TCP_USER_TIMEOUT: i32 = 18;
}

/// What `sock_ops` sets on a connection for a `dead_peer_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// `TCP_KEEPIDLE`, seconds.
    pub idle_s: u32,
    /// `TCP_KEEPINTVL`, seconds.
    pub interval_s: u32,
    /// `TCP_KEEPCNT`.
    pub probes: u32,
    /// `TCP_USER_TIMEOUT`, milliseconds.
    pub user_timeout_ms: u32,
}

impl Keepalive {
    /// The settings for a timeout of `timeout_s` seconds; `None` for 0 (off).
    /// Every value is at least 1 s and within the kernel's bounds; a timeout
    /// past [`MAX_SECS`] is taken as [`MAX_SECS`].
    #[inline(always)]
    #[must_use]
    pub const fn of(timeout_s: u32) -> Option<Self> {
        if timeout_s == 0 {
            return None;
        }
        let t = if timeout_s > MAX_SECS { MAX_SECS } else { timeout_s };
        let idle = at_least_one(min(t / 2, MAX_KEEP_SECS));
        let rest = t.saturating_sub(idle);
        let interval = at_least_one(min(rest.div_ceil(PROBES), MAX_KEEP_SECS));
        Some(Self { idle_s: idle, interval_s: interval, probes: PROBES, user_timeout_ms: t * 1000 })
    }

    /// When Linux gives up on a peer that went silent at 0, in seconds: at
    /// the first probe (`idle + k * interval`, `k >= 1`) that finds nothing
    /// received for the user timeout. The kernel's rule, for the tests and
    /// the docs; the kernel does not call it.
    #[must_use]
    pub const fn gives_up_after_s(&self) -> u32 {
        let timeout = self.user_timeout_ms.div_ceil(1000);
        let mut at = self.idle_s + self.interval_s;
        while at < timeout {
            at += self.interval_s;
        }
        at
    }
}

#[inline(always)]
const fn min(a: u32, b: u32) -> u32 {
    if a < b { a } else { b }
}

#[inline(always)]
const fn at_least_one(a: u32) -> u32 {
    if a == 0 { 1 } else { a }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn off_and_examples() {
        assert_eq!(Keepalive::of(0), None);
        let k = |t| Keepalive::of(t).expect("on");
        assert_eq!(k(5), Keepalive { idle_s: 2, interval_s: 1, probes: 3, user_timeout_ms: 5_000 });
        assert_eq!(k(120), Keepalive { idle_s: 60, interval_s: 20, probes: 3, user_timeout_ms: 120_000 });
        assert_eq!(k(1), Keepalive { idle_s: 1, interval_s: 1, probes: 3, user_timeout_ms: 1_000 });
        assert_eq!(k(MAX_SECS).idle_s, MAX_KEEP_SECS, "the kernel refuses a longer idle");
        assert_eq!(k(MAX_SECS + 1), k(MAX_SECS));
        assert_eq!((k(5).gives_up_after_s(), k(120).gives_up_after_s(), k(1).gives_up_after_s()), (5, 120, 2));
    }

    proptest! {
        /// Every value is one the kernel takes, and a silent peer is given
        /// up within the timeout and 2 s more (2 s for a timeout of 1 s).
        #[test]
        fn values_are_valid_and_give_up_near_the_timeout(t in MIN_SECS..=MAX_SECS) {
            let k = Keepalive::of(t).expect("on");
            prop_assert!((1..=MAX_KEEP_SECS).contains(&k.idle_s), "{k:?}");
            prop_assert!((1..=MAX_KEEP_SECS).contains(&k.interval_s), "{k:?}");
            prop_assert!((1..=127).contains(&k.probes), "{k:?}");
            prop_assert_eq!(k.user_timeout_ms, t * 1000);
            let at = k.gives_up_after_s();
            prop_assert!(at >= t && at <= (t + 2).max(2), "t {} gives up at {} ({:?})", t, at, k);
            // At or before the last probe: the probe count never decides.
            prop_assert!(at <= k.idle_s + k.probes * k.interval_s, "{k:?}");
        }
    }
}
