//! decide, for a SYN to a service port, in the order of the spec: deny and
//! allow lists (the deny and exempt rules), the service's sessions, the
//! source's connections, its token bucket (the rate rule). Only reads and
//! updates the maps; what becomes of the frame is for act.

use aya_ebpf::programs::XdpContext;
use limiter_common::{
    Bucket, Globals, ServicePolicy, SourceKey, Verdict,
    bucket::slot,
    events::basis,
    handshake::{self, Handshake},
    lists::{Admission, admission},
    maps::{ALL_SERVICES, family, flags},
    pending::{self, Slot, hint, holders},
    pool,
    prefix::{mask_v4, mask_v6},
};

use crate::{
    frame::{Parsed, Syn, source_addr},
    maps::{
        Place, compare_swap, established, handshake_entry, hint as hint_word, list_entry, load, note_basis, now_ns,
        policy as policy_of, release_pending, release_session, reserved, seeded_sessions, sessions, slot_conns,
    },
};

/// Compare-and-swap attempts on a contended bucket before failing open.
const CAS_TRIES: usize = 4;

/// The source key of a client address: masked to the configured prefix,
/// and the service.
#[inline(always)]
fn source_key(addr: &[u8; 16], fam: u8, service: u32, g: &Globals) -> SourceKey {
    #[expect(clippy::cast_possible_truncation, reason = "service ids are < MAX_SERVICES")]
    let mut key = SourceKey { addr: [0; 16], service: service as u8, family: fam, pad: [0; 2] };
    if fam == family::V4 {
        key.addr[..4].copy_from_slice(&mask_v4([addr[0], addr[1], addr[2], addr[3]], g.ipv4_prefix));
    } else {
        key.addr = mask_v6(*addr, g.ipv6_prefix);
    }
    key
}

/// What [`first_look`] saw.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Look {
    /// Nothing that decides: on to [`per_source`].
    Reserve,
    /// As `Reserve`, for a source that holds nothing (no connection, no
    /// handshake in flight) and will have room left: its handshake is not
    /// remembered. A spoofed flood is all first contacts, and remembering
    /// each would cost it a cache miss per SYN (`HANDSHAKES` is 2 MiB,
    /// written at random: 161 -> 260 ns a SYN in `bench --quick` here); a
    /// real first contact whose SYN-ACK is lost has room for its
    /// retransmission's own reservation (which expires), at the price of a
    /// second token or session.
    FirstContact,
    /// The source is at its connection limit (its hint says so).
    Full,
    /// The SYN retransmits a handshake that holds a reservation.
    Retransmission,
}

/// What [`per_source`] decided, and for an accepted SYN what it was let
/// through on. A field-less enum: the verifier sees one constant per exit.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Outcome {
    /// Accepted with no reservation of the source's (it has no connection limit).
    Accepted,
    /// Accepted on a new pending reservation, taken for this SYN.
    Reserved,
    RefusedConcurrency,
    RefusedRate,
}

impl Outcome {
    #[inline(always)]
    const fn verdict(self) -> Verdict {
        match self {
            Self::Accepted | Self::Reserved => Verdict::Accepted,
            Self::RefusedConcurrency => Verdict::RefusedConcurrency,
            Self::RefusedRate => Verdict::RefusedRate,
        }
    }
}

/// The verdict on a SYN to a service port, the rules in the order of the
/// spec. Each rule that reserves something
/// gives it back when a later rule refuses. A retransmission of a handshake
/// let through on a reservation passes on that reservation (and on the
/// session it took): the client's first SYN or the server's SYN-ACK was lost,
/// and it is still one attempt.
#[inline(always)]
pub(crate) fn decide(
    ctx: &XdpContext,
    p: &Parsed,
    syn: &Syn<'_>,
    g: &Globals,
    policy: &ServicePolicy,
) -> Result<Verdict, ()> {
    let (tcp, service, fam) = (syn.tcp, syn.service, p.family);
    let addr = source_addr(ctx, p)?;
    // The source-wide budget is the policy entry of no service (id 0). The
    // entry always exists: `?` rather than a default, whose constant 0 on
    // the other path would have the verifier walk all that follows twice.
    let all = policy_of(g, 0).ok_or(())?.max_conn_per_source;
    let (limit, all, bucket, on_reserve) = match admission(list_entry(g, fam, &addr), service, policy, all) {
        Admission::Decided(v) => return Ok(v),
        Admission::Limits { max_conn, max_conn_all, bucket, reserved } => (max_conn, max_conn_all, bucket, reserved),
    };

    // The sessions rule is decided after the connections and rate rules (the verifier walks the
    // per-source paths once, not once per way the sessions check can go),
    // with the verdicts the spec's order gives: a SYN both would refuse is
    // counted as refused by sessions.
    let args = SourceArgs {
        service,
        g,
        limit,
        all,
        bucket,
        // The handshake's identity: client address, ports, ISN.
        id: Handshake::new(
            &addr,
            fam,
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
            u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            0,
        ),
    };
    let look = first_look(&args);
    let outcome = match look {
        Look::Retransmission => return Ok(Verdict::Accepted),
        Look::Full => Outcome::RefusedConcurrency,
        Look::Reserve | Look::FirstContact => per_source(&args),
    };
    // Only a handshake worth remembering (see `Look::FirstContact`).
    let outcome = if look == Look::FirstContact && outcome == Outcome::Reserved { Outcome::Accepted } else { outcome };
    let mut verdict = outcome.verdict();
    if policy.max_sessions != 0 {
        let now = now_ns();
        let bucket_now = pool::bucket(pending::ticks(now));
        if verdict != Verdict::Accepted {
            return Ok(sessions_full(service, policy, on_reserve, bucket_now).unwrap_or(verdict));
        }
        verdict = reserve_session(service, policy, on_reserve, bucket_now);
        if verdict != Verdict::Accepted {
            // No session left: give the source's reservation back (its
            // token, if it took one, stays spent).
            if limit != 0 {
                release(&source_key(&addr, fam, service, g), g, now);
            }
            return Ok(verdict);
        }
    }
    if verdict != Verdict::Accepted {
        return Ok(verdict);
    }
    // The source-wide budget, last: a SYN every other rule lets through
    // takes its reservation, or gives back what it took. Last, so that the
    // verifier walks it once per way of getting here that differs in what
    // is still live (a handful), not once per path of the rules above.
    if !all_services(&args) {
        undo(&args, policy.max_sessions != 0);
        return Ok(Verdict::RefusedConcurrency);
    }
    if outcome == Outcome::Reserved {
        remember(&args.id);
    }
    Ok(Verdict::Accepted)
}

/// Gives one of `key`'s reservations back.
#[inline(always)]
fn release(key: &SourceKey, g: &Globals, now: u64) {
    let place = Place::of(key);
    if let Some(slot) = place.pending(g) {
        release_pending(reserved(slot), place.tag, pending::ticks(now));
    }
}

/// Remembers the handshake of a SYN let through on a new reservation, so
/// that its retransmission is recognised. Overwrites whatever hashed to the
/// same entry (that handshake's retransmission then reserves again, as
/// without this map).
#[inline(always)]
fn remember(id: &Handshake) {
    if let Some(entry) = handshake_entry(id) {
        unsafe {
            *entry = *id;
            (*entry).epoch = pending::ticks(now_ns());
        }
    }
}

/// The sessions rule without reserving: the refusal if the service's sessions leave
/// no room for this source now.
#[inline(always)]
fn sessions_full(service: u32, policy: &ServicePolicy, on_reserve: bool, now: u32) -> Option<Verdict> {
    let (word, established) = sessions(service)?;
    let in_use = unsafe { load(word) };
    let in_use = pool::pending(in_use, now) + unsafe { load(established) } + seeded_sessions(service);
    pool::check(in_use, policy, on_reserve)
}

/// What the connections and rate rules need, passed by reference: a BPF call takes at most
/// five arguments.
struct SourceArgs<'a> {
    service: u32,
    /// Beside `service`: the two share 8 bytes of the caller's stack frame,
    /// which has none to spare.
    limit: u32,
    /// The source-wide connection limit (over all services); 0 = none.
    all: u32,
    g: &'a Globals,
    bucket: Bucket,
    /// The SYN's handshake: client address and family, ports, ISN (no epoch).
    id: Handshake,
}

/// The connections rule on what needs no count: a source known to be at its connection
/// limit is refused on its hint alone (one array read, no clock, no `CONNS`
/// lookup: the hot path of a client hammering at its limit); then a SYN that
/// retransmits a handshake holding a reservation is let through on it (the
/// `HANDSHAKES` lookup comes after the hint, so that refusal stays one read).
///
/// Not inlined, like [`per_source`] and for the same reason; and the two are
/// apart so that each one's frame fits the 512-byte stack beside the caller's.
/// The hint is exact (see `limiter_common::pending::hint`), and never trusted
/// while seeded counts are in play (the daemon releases those without
/// touching hints).
#[inline(never)]
fn first_look(a: &SourceArgs<'_>) -> Look {
    let (g, limit) = (a.g, a.limit);
    if limit == 0 {
        return Look::Reserve;
    }
    #[expect(clippy::cast_possible_truncation, reason = "a family number")]
    let key = source_key(&a.id.addr_bytes(), a.id.family as u8, a.service, g);
    let place = Place::of(&key);
    let Some(slot) = place.pending(g) else {
        return Look::Reserve;
    };
    let seen = unsafe { load(hint_word(slot)) };
    if g.flags & flags::SEEDED == 0 && hint::is_full(seen, place.fingerprint, g.generation) {
        note_basis(basis::ESTABLISHED, limit, 0, limit);
        return Look::Full;
    }
    // Only a source with a live reservation can be retransmitting: a new
    // one (every SYN of a spoofed flood) skips `HANDSHAKES`, a cache miss,
    // on the word read with the hint's cache line.
    let now = pending::ticks(now_ns());
    if pending::live(unsafe { load(reserved(slot)) }, place.tag, now) == 0 {
        // The slot's holders (`pending::holders`) include every source
        // with a connection: not among them, it holds none.
        let holds = holders::may_hold(unsafe { load(slot_conns(slot)) }, place.fingerprint);
        return if holds || limit == 1 { Look::Reserve } else { Look::FirstContact };
    }
    if retransmission(&a.id, &place, slot, now) {
        if a.all != 0 {
            // Its source-wide reservation, taken with it, lasts as long.
            let mut all = key;
            all.service = ALL_SERVICES;
            let place = Place::of(&all);
            if let Some(slot) = place.pending(g) {
                refresh(reserved(slot), place.tag, now);
            }
        }
        return Look::Retransmission;
    }
    Look::Reserve
}

/// Keeps `tag`'s reservations in `cell` live from `now` (best effort: a
/// contended or expired word is left alone).
#[inline(always)]
fn refresh(cell: *mut u64, tag: u16, now: u32) {
    for _ in 0..CAS_TRIES {
        let old = unsafe { load(cell) };
        let Some(new) = pending::refresh(old, tag, now) else {
            return;
        };
        if unsafe { compare_swap(cell, old, new) } {
            return;
        }
    }
}

/// The connections and rate rules with the limits the deny and exempt rules chose.
///
/// Not inlined, on purpose: a BPF-to-BPF call. The verifier walks this
/// function's many paths once per way of reaching it, and its exit states
/// collapse to the returned verdict when its frame is dropped; inlined, the
/// session reservation that follows would be walked once per exit path of
/// this function (over a million instructions).
#[inline(never)]
fn per_source(a: &SourceArgs<'_>) -> Outcome {
    let (g, limit, bucket) = (a.g, u64::from(a.limit), &a.bucket);
    if limit == 0 && bucket.is_unlimited() {
        return Outcome::Accepted;
    }
    #[expect(clippy::cast_possible_truncation, reason = "a family number")]
    let key = source_key(&a.id.addr_bytes(), a.id.family as u8, a.service, g);
    let place = Place::of(&key);

    // A source with no connection limit reserves nothing: only its bucket.
    // (A path of its own, not a null slot tested again after the bucket:
    // the compiler turns that test into one of the spilled `limit`, and
    // Linux 6.1's verifier, not tracking it, then sees a scalar dereferenced.)
    if limit == 0 {
        return if take_token(bucket, &place, g, now_ns()) == Verdict::RefusedRate {
            Outcome::RefusedRate
        } else {
            Outcome::Accepted
        };
    }
    let Some(slot) = place.pending(g) else {
        return Outcome::Accepted;
    };
    // The hint was checked by `first_look` (a source that became full since
    // is refused on `CONNS` below); it is read again here for the mark,
    // before `CONNS`: a close after this read makes a later mark fail.
    let seen = unsafe { load(hint_word(slot)) };
    let now = now_ns();
    let ticks = pending::ticks(now);

    // Reserve a slot for this handshake before anything else can see it:
    // the reservation itself is the atomic step, never check-then-increment.
    match reserve(&key, g, &place, slot, ticks, limit) {
        Reserve::Taken => {}
        Reserve::Busy => return Outcome::RefusedConcurrency,
        Reserve::Full => {
            // `CONNS` alone is at the limit: remember it, unless a close
            // landed since `seen` was read (then the swap fails).
            if g.flags & flags::SEEDED == 0 {
                let new = hint::mark_full(seen, place.fingerprint, g.generation);
                let _ = unsafe { compare_swap(hint_word(slot), seen, new) };
            }
            return Outcome::RefusedConcurrency;
        }
    }
    if !bucket.is_unlimited() && take_token(bucket, &place, g, now) == Verdict::RefusedRate {
        release_pending(reserved(slot), place.tag, ticks);
        return Outcome::RefusedRate;
    }
    Outcome::Reserved
}

/// Takes a reservation of the source-wide budget (the source's key over
/// all services): true if taken or no budget applies. Every SYN that counts
/// against the budget reserves it with a compare-and-swap of the one word
/// of that key, whatever its service, so parallel SYNs to different
/// services cannot overshoot it. Taken after every other rule let the SYN
/// through, which then gives back what it took ([`undo`]) if this refuses:
/// a SYN that passes holds both counts. No "at its limit" hint is set for
/// it: a service's hint is cleared only by closes of that service.
///
/// Not inlined: a BPF-to-BPF call whose exits collapse to its result.
#[inline(never)]
fn all_services(a: &SourceArgs<'_>) -> bool {
    let g = a.g;
    if a.all == 0 {
        return true;
    }
    #[expect(clippy::cast_possible_truncation, reason = "a family number")]
    let key = source_key(&a.id.addr_bytes(), a.id.family as u8, u32::from(ALL_SERVICES), g);
    let place = Place::of(&key);
    let Some(slot) = place.pending(g) else {
        return true;
    };
    let (cell, limit, now) = (reserved(slot), u64::from(a.all), pending::ticks(now_ns()));
    for _ in 0..CAS_TRIES {
        // The word first, then the count, as in `reserve`; `CONNS` only
        // when the slot's connection sum says the key may hold some (not
        // for a new source: a spoofed flood's SYN skips the hash lookup).
        let old = unsafe { load(cell) };
        let established = established(&key, g, &place, slot);
        let Some(new) = pending::reserve(old, place.tag, now, established, limit) else {
            let (basis, live) = if established >= limit {
                (basis::ALL_ESTABLISHED, 0)
            } else {
                (basis::ALL_IN_FLIGHT, pending::live(old, place.tag, now))
            };
            note_basis(basis, saturate(established), live, a.all);
            return false;
        };
        if unsafe { compare_swap(cell, old, new) } {
            return true;
        }
    }
    // Persistently contended: refuse, as `reserve` does.
    false
}

/// Gives back what a SYN the source-wide budget refused took under the
/// service's rules: its reservation of the source's count (with a
/// connection limit) and its session (with `max_sessions`). Its token, if
/// it took one, stays spent: the budget is checked last.
#[inline(never)]
fn undo(a: &SourceArgs<'_>, session: bool) {
    let now = now_ns();
    if a.limit != 0 {
        #[expect(clippy::cast_possible_truncation, reason = "a family number")]
        let key = source_key(&a.id.addr_bytes(), a.id.family as u8, a.service, a.g);
        release(&key, a.g, now);
    }
    if session && let Some((word, _)) = sessions(a.service) {
        release_session(word, pool::bucket(pending::ticks(now)));
    }
}

#[inline(always)]
fn saturate(n: u64) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "clamped first")]
    let n = n.min(u64::from(u32::MAX)) as u32;
    n
}

/// A retransmission of a handshake let through on a reservation: its
/// identity is remembered and fresh, and the source's reservations are still
/// live (an expired one is gone, and the SYN needs a new one). Those are kept
/// live from now on, as a new reservation would be: Linux retransmits at 1 s,
/// 3 s, 7 s, and the handshake may complete after any of them.
#[inline(always)]
fn retransmission(id: &Handshake, place: &Place, slot: *mut Slot, now: u32) -> bool {
    let Some(entry) = handshake_entry(id) else {
        return false;
    };
    if !handshake::recognised(unsafe { &*entry }, id, now) {
        return false;
    }
    let cell = reserved(slot);
    for _ in 0..CAS_TRIES {
        let old = unsafe { load(cell) };
        let Some(new) = pending::refresh(old, place.tag, now) else {
            return false;
        };
        if unsafe { compare_swap(cell, old, new) } {
            unsafe { (*entry).epoch = now };
            return true;
        }
    }
    // Contended: take a reservation of its own instead (never more than that).
    false
}

/// Takes one of the service's sessions for this handshake, if the sessions rule leaves
/// room: `Accepted`, or the refusal.
#[inline(always)]
fn reserve_session(service: u32, pool: &ServicePolicy, on_reserve: bool, now: u32) -> Verdict {
    let Some((word, established)) = sessions(service) else {
        // No session counts (cannot happen with our maps): fail open.
        return Verdict::Accepted;
    };
    let seeded = seeded_sessions(service);
    for _ in 0..CAS_TRIES {
        // The word first, then the established count: a handshake completing
        // in between (established + 1, then word - 1) makes the swap fail,
        // so the sum is never read low.
        let old = unsafe { load(word) };
        let in_use = unsafe { load(established) } + seeded;
        match pool::reserve(old, now, in_use, pool, on_reserve) {
            Ok(new) => {
                if unsafe { compare_swap(word, old, new) } {
                    return Verdict::Accepted;
                }
            }
            Err(v) => return v,
        }
    }
    // Persistently contended: refuse (a session we cannot take is not ours).
    Verdict::RefusedSessions
}

/// What [`reserve`] did.
enum Reserve {
    Taken,
    /// Refused with established + pending at the limit, or contended.
    Busy,
    /// Refused with established alone at the limit.
    Full,
}

/// Takes one pending reservation if established + pending < limit.
#[inline(always)]
fn reserve(key: &SourceKey, g: &Globals, place: &Place, slot: *mut Slot, now: u32, limit: u64) -> Reserve {
    let cell = reserved(slot);
    let (mut seen_established, mut seen_pending) = (0, 0);
    for _ in 0..CAS_TRIES {
        // Re-read both on every try, the word first: a handshake completing
        // in between moves one from pending to established (established
        // first), which makes the swap fail, so the sum is never read low.
        let old = unsafe { load(cell) };
        let established = established(key, g, place, slot);
        let Some(new) = pending::reserve(old, place.tag, now, established, limit) else {
            return if established >= limit {
                note_basis(basis::ESTABLISHED, saturate(established), 0, saturate(limit));
                Reserve::Full
            } else {
                note_basis(
                    basis::IN_FLIGHT,
                    saturate(established),
                    pending::live(old, place.tag, now),
                    saturate(limit),
                );
                Reserve::Busy
            };
        };
        if unsafe { compare_swap(cell, old, new) } {
            return Reserve::Taken;
        }
        (seen_established, seen_pending) = (established, pending::live(old, place.tag, now));
    }
    // Persistently contended: refuse (a reservation we cannot take is not
    // ours to assume), on the counts of the last try.
    note_basis(basis::IN_FLIGHT, saturate(seen_established), seen_pending, saturate(limit));
    Reserve::Busy
}

/// Takes one token from the source's bucket (its slot pair's rate words).
#[inline(always)]
fn take_token(bucket: &Bucket, place: &Place, g: &Globals, now: u64) -> Verdict {
    let Some((a, b)) = place.rate_set(g) else {
        return Verdict::Accepted;
    };
    let cell = if slot::choose(unsafe { load(a) }, unsafe { load(b) }, place.tag) == 0 { a } else { b };
    spend(bucket, cell, place.tag, now)
}

/// Spends one token of a bucket shared by all CPUs with compare-and-swap,
/// so two CPUs cannot both spend the last token; persistently contended, it
/// refuses (`limiter_common::bucket::slot::spend` says why).
#[inline(always)]
fn spend(bucket: &Bucket, cell: *mut u64, tag: u16, now: u64) -> Verdict {
    let spent = slot::spend(
        bucket,
        tag,
        now,
        CAS_TRIES,
        || unsafe { load(cell) },
        |old, new| unsafe { compare_swap(cell, old, new) },
    );
    if spent { Verdict::Accepted } else { Verdict::RefusedRate }
}
