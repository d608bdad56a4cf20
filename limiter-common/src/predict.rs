//! What the next SYN of a source would get, from the words the XDP program
//! would read (`limiter explain`): the same rules, in the same order (deny,
//! exempt, sessions, connections, rate), through the same functions
//! ([`admission`], [`pending::reserve`], [`Bucket::admit`], [`pool::check`]),
//! without taking anything. A prediction, not a promise: a SYN, a close or a
//! clock tick between the read and the next SYN changes the words.

use crate::{
    Bucket, ServicePolicy, Verdict,
    bucket::slot,
    lists::{Admission, ListEntry, admission},
    pending, pool,
};

/// The words XDP reads for one source and service, as read from the maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The service id (`PORTS`).
    pub service: u32,
    /// `POLICY[policy_index(bank in force, service)]`.
    pub policy: ServicePolicy,
    /// The longest match of the client address in the bank in force of
    /// `LISTS`; `None` when the lists hold nothing for it (or nothing at all).
    pub entry: Option<ListEntry>,
    /// Established connections as XDP counts them: `CONNS[key]`, plus
    /// `SEEDED[key]` while `GLOBALS.flags.SEEDED` is set.
    pub established: u64,
    /// The source's `PENDING` slot's reservation word and its tag.
    pub reserved: u64,
    pub tag: u16,
    /// The rate word of the source's set that XDP would use (`slot::choose`).
    pub rate: u64,
    /// The service's `SESSIONS` words: handshakes in flight, established, seeded.
    pub session_word: u64,
    pub sessions_established: u64,
    pub sessions_seeded: u64,
    /// The kernel's coarse clock (`bpf_ktime_get_coarse_ns`, user space's
    /// `CLOCK_MONOTONIC_COARSE`).
    pub now_ns: u64,
    /// The source-wide budget: `POLICY[policy_index(bank, 0)]`'s limit
    /// (0 = none), and the source's words under its key over all services
    /// (`maps::ALL_SERVICES`): established, reservation word and tag.
    pub all: u32,
    pub all_established: u64,
    pub all_reserved: u64,
    pub all_tag: u16,
}

/// What [`predict`] found: the limits that apply, what the source and the
/// service hold of them now, and the verdict the next SYN would get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prediction {
    /// The deny and exempt rules' answer: decided, or the limits that apply.
    pub admission: Admission,
    /// The source's handshakes in flight (live reservations of its tag).
    pub in_flight: u16,
    /// Tokens left in the source's bucket (`u64::MAX`: no rate limit).
    pub tokens: u64,
    /// The service's sessions in use: established, seeded and in flight.
    pub sessions: u64,
    pub verdict: Verdict,
}

/// The verdict XDP would give the source's next SYN (not a retransmission
/// of a handshake it let through), the rules in the spec's order.
#[must_use]
pub fn predict(r: &Reading) -> Prediction {
    let ticks = pending::ticks(r.now_ns);
    let in_flight = pending::live(r.reserved, r.tag, ticks);
    let sessions = r.sessions_established + r.sessions_seeded + pool::pending(r.session_word, pool::bucket(ticks));
    let admission = admission(r.entry.as_ref(), r.service, &r.policy, r.all);
    let (max_conn, all, bucket, reserved) = match admission {
        Admission::Decided(verdict) => {
            return Prediction { admission, in_flight, tokens: u64::MAX, sessions, verdict };
        }
        Admission::Limits { max_conn, max_conn_all, bucket, reserved } => (max_conn, max_conn_all, bucket, reserved),
    };
    let tat = slot::tat(r.rate, r.tag);
    let tokens = bucket.tokens(tat, r.now_ns);
    let per_source = per_source(max_conn, &bucket, r, ticks, tat);
    // The sessions rule comes first in the spec's order: a SYN both would
    // refuse is the pool's (as `decide` counts it).
    let verdict = if r.policy.max_sessions == 0 {
        per_source
    } else {
        pool::check(sessions, &r.policy, reserved).unwrap_or(per_source)
    };
    // The source-wide budget, last, as `decide` takes it.
    let verdict = if verdict == Verdict::Accepted
        && all != 0
        && pending::reserve(r.all_reserved, r.all_tag, ticks, r.all_established, u64::from(all)).is_none()
    {
        Verdict::RefusedConcurrency
    } else {
        verdict
    };
    Prediction { admission, in_flight, tokens, sessions, verdict }
}

/// The connections rule, then the rate rule, with the limits admission chose.
fn per_source(max_conn: u32, bucket: &Bucket, r: &Reading, ticks: u32, tat: u64) -> Verdict {
    if max_conn != 0 && pending::reserve(r.reserved, r.tag, ticks, r.established, u64::from(max_conn)).is_none() {
        return Verdict::RefusedConcurrency;
    }
    if bucket.admit(tat, r.now_ns).is_none() {
        return Verdict::RefusedRate;
    }
    Verdict::Accepted
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::lists::entry;

    const SEC: u64 = 1_000_000_000;
    const NOW: u64 = 3_600 * SEC;

    fn policy(max_conn: u32, max_sessions: u32, open: u32) -> ServicePolicy {
        let b = Bucket::new(10, 60 * SEC, 10);
        ServicePolicy {
            rate_interval_ns: b.interval_ns,
            rate_tolerance_ns: b.tolerance_ns,
            max_conn_per_source: max_conn,
            action: 1,
            dead_peer: [0; 3],
            max_sessions,
            open_sessions: open,
        }
    }

    fn reading() -> Reading {
        Reading {
            service: 1,
            policy: policy(4, 0, 0),
            entry: None,
            established: 0,
            reserved: 0,
            tag: 7,
            rate: 0,
            session_word: 0,
            sessions_established: 0,
            sessions_seeded: 0,
            now_ns: NOW,
            all: 0,
            all_established: 0,
            all_reserved: 0,
            all_tag: 9,
        }
    }

    #[test]
    fn the_source_wide_budget_refuses_what_the_service_would_let_in() {
        let r = Reading { established: 1, all: 5, all_established: 4, ..reading() };
        assert_eq!(verdict(&r), Verdict::Accepted, "4 of 5 over all services");
        let r = Reading { all_established: 5, ..r };
        assert_eq!(verdict(&r), Verdict::RefusedConcurrency, "5 of 5 over all services, 1 of 4 of the service");
        let r = Reading { all_established: 4, all_reserved: pending::pack(9, 1, pending::ticks(NOW)), ..r };
        assert_eq!(verdict(&r), Verdict::RefusedConcurrency, "4 + 1 in flight of 5");
        // An allow entry with limits and no source-wide limit of its own has none.
        let e = ListEntry { max_conn_per_source: 20, flags: entry::ALLOW, ..ListEntry::default() };
        assert_eq!(verdict(&Reading { entry: Some(e), ..r }), Verdict::Accepted);
    }

    fn verdict(r: &Reading) -> Verdict {
        predict(r).verdict
    }

    #[test]
    fn a_quiet_source_is_accepted_with_its_full_bucket() {
        let p = predict(&reading());
        assert_eq!(p.verdict, Verdict::Accepted);
        assert_eq!((p.in_flight, p.tokens, p.sessions), (0, 10, 0));
    }

    #[test]
    fn connections_count_established_and_in_flight() {
        let r = Reading { established: 3, ..reading() };
        assert_eq!(verdict(&r), Verdict::Accepted, "3 of 4");
        let r = Reading { established: 4, ..reading() };
        assert_eq!(verdict(&r), Verdict::RefusedConcurrency, "4 of 4");
        let reserved = pending::pack(7, 1, pending::ticks(NOW));
        let r = Reading { established: 3, reserved, ..reading() };
        assert_eq!(predict(&r).in_flight, 1);
        assert_eq!(verdict(&r), Verdict::RefusedConcurrency, "3 + 1 in flight of 4");
        // Another source's reservation on the slot, or an expired one, is not this one's.
        let r = Reading { established: 3, reserved: pending::pack(8, 1, pending::ticks(NOW)), ..reading() };
        assert_eq!(verdict(&r), Verdict::Accepted);
        let old = pending::ticks(NOW) - pending::HANDSHAKE_TIMEOUT - 1;
        let r = Reading { established: 3, reserved: pending::pack(7, 1, old), ..reading() };
        assert_eq!(verdict(&r), Verdict::Accepted);
    }

    #[test]
    fn an_empty_bucket_refuses_by_rate() {
        // Ten tokens spent just now.
        let mut tat = 0;
        let b = Bucket::new(10, 60 * SEC, 10);
        for _ in 0..10 {
            tat = b.admit(tat, NOW).expect("burst");
        }
        let r = Reading { rate: slot::pack(7, tat), ..reading() };
        assert_eq!(predict(&r).tokens, 0);
        assert_eq!(verdict(&r), Verdict::RefusedRate);
        // Another tag's spent bucket is a full one for this source.
        let r = Reading { rate: slot::pack(9, tat), ..reading() };
        assert_eq!((predict(&r).tokens, verdict(&r)), (10, Verdict::Accepted));
        // At the limit as well: the connections rule comes first.
        let r = Reading { rate: slot::pack(7, tat), established: 4, ..reading() };
        assert_eq!(verdict(&r), Verdict::RefusedConcurrency);
    }

    #[test]
    fn deny_beats_everything_and_exempt_skips_every_limit() {
        let deny = ListEntry { flags: entry::DENY | entry::ALLOW | entry::EXEMPT, ..ListEntry::default() };
        let full = Reading { established: 99, session_word: 0, sessions_established: 99, ..reading() };
        let full = Reading { policy: policy(4, 10, 5), ..full };
        assert_eq!(verdict(&Reading { entry: Some(deny), ..full }), Verdict::RefusedDeny);
        let exempt = ListEntry { flags: entry::ALLOW | entry::EXEMPT, ..ListEntry::default() };
        let p = predict(&Reading { entry: Some(exempt), ..full });
        assert_eq!(p.verdict, Verdict::Accepted);
        assert_eq!(p.admission, Admission::Decided(Verdict::Accepted));
        assert_eq!(p.tokens, u64::MAX);
    }

    #[test]
    fn an_allow_entry_with_limits_replaces_the_services() {
        let e = ListEntry { max_conn_per_source: 20, flags: entry::ALLOW, ..ListEntry::default() };
        let r = Reading { entry: Some(e), established: 19, ..reading() };
        assert_eq!(verdict(&r), Verdict::Accepted, "19 of 20, not of the service's 4");
        assert_eq!(predict(&r).tokens, u64::MAX, "its rate (none) replaces the service's too");
        assert_eq!(verdict(&Reading { established: 20, ..r }), Verdict::RefusedConcurrency);
    }

    #[test]
    fn sessions_come_before_connections_and_the_reserve_list_gets_the_rest() {
        let r = Reading { policy: policy(4, 10, 6), sessions_established: 6, ..reading() };
        assert_eq!(verdict(&r), Verdict::RefusedReserve, "6 in use, 4 reserved");
        let on_reserve = ListEntry { reserve: 1 << 1, ..ListEntry::default() };
        assert_eq!(verdict(&Reading { entry: Some(on_reserve), ..r }), Verdict::Accepted);
        let r = Reading { sessions_established: 8, sessions_seeded: 2, established: 4, ..r };
        assert_eq!(predict(&r).sessions, 10);
        assert_eq!(verdict(&r), Verdict::RefusedSessions, "full, and at its own limit too: the pool's");
        // Handshakes in flight are sessions in use.
        let word = pool::reserve(0, pool::bucket(pending::ticks(NOW)), 0, &policy(4, 10, 6), false).expect("room");
        let r = Reading { policy: policy(4, 10, 6), session_word: word, sessions_established: 5, ..reading() };
        assert_eq!(predict(&r).sessions, 6);
        assert_eq!(verdict(&r), Verdict::RefusedReserve);
    }

    proptest! {
        /// The prediction is the verdict `decide` reaches on the same words:
        /// the rules applied one by one, in the spec's order.
        #[test]
        fn follows_the_rules_in_order(
            established in 0u64..8, in_flight in 0u16..4, spent in 0u64..12, in_use in 0u64..12,
            max_conn in 0u32..6, max_sessions in 0u32..10, reserved_sessions in 0u32..10,
            flags in 0u8..8, reserve_bit: bool,
        ) {
            let ticks = pending::ticks(NOW);
            let b = Bucket::new(10, 60 * SEC, 10);
            let mut tat = 0;
            for _ in 0..spent { tat = b.admit(tat, NOW).unwrap_or(tat); }
            let open = max_sessions.saturating_sub(reserved_sessions);
            let e = ListEntry { flags, reserve: u32::from(reserve_bit) << 1, ..ListEntry::default() };
            let r = Reading {
                policy: policy(max_conn, max_sessions, open),
                entry: Some(e),
                established,
                reserved: pending::pack(7, in_flight, ticks),
                rate: slot::pack(7, tat),
                sessions_established: in_use,
                ..reading()
            };
            let want = if flags & entry::DENY != 0 {
                Verdict::RefusedDeny
            } else if flags & entry::ALLOW != 0 && flags & entry::EXEMPT != 0 {
                Verdict::Accepted
            } else if max_sessions != 0 && in_use >= u64::from(max_sessions) {
                Verdict::RefusedSessions
            } else if max_sessions != 0 && !reserve_bit && in_use >= u64::from(open) {
                Verdict::RefusedReserve
            } else if flags & entry::ALLOW != 0 {
                // An allow entry with no limit of its own: no connection limit, no rate.
                Verdict::Accepted
            } else if max_conn != 0 && established + u64::from(in_flight) >= u64::from(max_conn) {
                Verdict::RefusedConcurrency
            } else if spent >= 10 {
                Verdict::RefusedRate
            } else {
                Verdict::Accepted
            };
            prop_assert_eq!(predict(&r).verdict, want);
        }
    }
}
