//! The packet path: parse -> classify -> decide -> act. Only a TCP SYN
//! (SYN set, ACK clear) to a service port is ever refused; every other frame,
//! and every frame the parser does not understand, passes (fail open).

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use limiter_common::{
    Bucket, Globals, ServicePolicy, SourceKey, Verdict,
    bucket::slot,
    events::{Refusal, basis},
    handshake::{self, Handshake},
    lists::{Admission, admission},
    maps::{action, family, flags},
    pending::{self, Slot, hint},
    pool,
    prefix::{mask_v4, mask_v6},
};
use network_types::eth::EthHdr;

use crate::{
    maps::{
        GLOBALS, Grounds, PORTS, Place, basis_noted, compare_swap, count, established, handshake_entry,
        hint as hint_word, list_entry, load, note_basis, now_ns, policy, release_pending, report, reserved,
        seeded_sessions, sessions, slot_conns,
    },
    reply,
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// IPv6 extension headers skipped before giving up (and passing).
const MAX_IPV6_EXT: usize = 6;
/// Compare-and-swap attempts on a contended bucket before failing open.
const CAS_TRIES: usize = 4;

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] macro hands the context over by value")]
pub(crate) fn limiter_xdp(ctx: XdpContext) -> u32 {
    limiter_xdp_inner(&ctx)
}

#[inline(always)]
pub(crate) fn limiter_xdp_inner(ctx: &XdpContext) -> u32 {
    if let Ok(verdict) = try_limiter(ctx) {
        verdict
    } else {
        count(Verdict::PassedOther.index(0));
        xdp_action::XDP_PASS
    }
}

/// A bounds-checked pointer to a `T` at `offset` in the frame.
///
/// `data` and `data_end` are read with volatile loads so that the compiler
/// cannot drop a check it thinks an earlier one implies: the verifier tracks
/// each pointer's checked range separately and would reject the access.
#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let (start, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&raw const (*ctx.ctx).data_end) as usize,
        )
    };
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

#[inline(always)]
fn load_be16(ctx: &XdpContext, offset: usize) -> Result<u16, ()> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    Ok(u16::from_be_bytes(unsafe { *p }))
}

/// Where the parser found the TCP header of a frame.
pub(crate) struct Parsed {
    /// Offset of the IP header (after Ethernet and up to two VLAN tags).
    pub(crate) l3: usize,
    /// Offset of the TCP header.
    pub(crate) l4: usize,
    /// IP payload bytes after the TCP header's start (for the RST's ACK number).
    pub(crate) l4_len: usize,
    pub(crate) family: u8,
}

/// Ethernet, up to two VLAN tags, IPv4 (any IHL, not a fragment) or IPv6
/// (a bounded number of extension headers), and a TCP protocol number.
/// `Err` for anything else: the caller passes it.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Parsed, ()> {
    let mut l3 = EthHdr::LEN;
    let mut ether_type = load_be16(ctx, 12)?;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = load_be16(ctx, l3 + 2)?;
        l3 += 4;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            ether_type = load_be16(ctx, l3 + 2)?;
            l3 += 4;
        }
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3),
        ETH_P_IPV6 => parse_ipv6(ctx, l3),
        _ => Err(()),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<Parsed, ()> {
    let h = ptr_at::<[u8; 20]>(ctx, l3)?;
    let h = unsafe { &*h };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 || h[9] != IPPROTO_TCP {
        return Err(());
    }
    // More-fragments set or a non-zero offset: a fragment, which passes.
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        return Err(());
    }
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let l4_len = total.checked_sub(ihl).ok_or(())?;
    Ok(Parsed { l3, l4: l3 + ihl, l4_len, family: family::V4 })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Result<Parsed, ()> {
    let h = ptr_at::<[u8; 40]>(ctx, l3)?;
    let h = unsafe { &*h };
    if h[0] >> 4 != 6 {
        return Err(());
    }
    let mut next = h[6];
    let mut payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let mut off = l3 + 40;
    for _ in 0..MAX_IPV6_EXT {
        let len = match next {
            IPPROTO_TCP => {
                return Ok(Parsed { l3, l4: off, l4_len: payload, family: family::V6 });
            }
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let e = ptr_at::<[u8; 2]>(ctx, off)?;
                let e = unsafe { &*e };
                next = e[0];
                (usize::from(e[1]) + 1) * 8
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let e = ptr_at::<[u8; 2]>(ctx, off)?;
                let e = unsafe { &*e };
                next = e[0];
                (usize::from(e[1]) + 2) * 4
            }
            // Fragment (44), ESP, no-next-header and unknown headers pass.
            _ => return Err(()),
        };
        off += len;
        payload = payload.checked_sub(len).ok_or(())?;
    }
    Err(())
}

#[inline(always)]
fn try_limiter(ctx: &XdpContext) -> Result<u32, ()> {
    let p = parse(ctx)?;
    let tcp = ptr_at::<[u8; 20]>(ctx, p.l4)?;
    let tcp = unsafe { &*tcp };

    // classify: which service, if any, and is it a new connection attempt?
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let service = PORTS.get(u32::from(dport)).copied().unwrap_or(0);
    if service == 0 {
        count(Verdict::PassedOther.index(0));
        return Ok(xdp_action::XDP_PASS);
    }
    if tcp[13] & (TCP_SYN | TCP_ACK) != TCP_SYN {
        count(Verdict::PassedNonSyn.index(service));
        return Ok(xdp_action::XDP_PASS);
    }

    let g = GLOBALS.get(0).ok_or(())?;
    let policy = policy(g, service).ok_or(())?;
    let verdict = decide(ctx, &p, tcp, service, g, policy)?;
    count(verdict.index(service));
    if verdict == Verdict::Accepted {
        return Ok(xdp_action::XDP_PASS);
    }
    // report, before the reply rewrites the frame; what the source's counts
    // were only for a refusal by them (the sessions rule may have decided
    // after `per_source` had read them)
    if let Ok(addr) = source_addr(ctx, &p) {
        #[expect(clippy::cast_possible_truncation, reason = "verdicts and service ids are < 256")]
        report(|| {
            let f = if verdict == Verdict::RefusedConcurrency { basis_noted() } else { Grounds::default() };
            Refusal {
                addr,
                family: p.family,
                verdict: verdict as u8,
                service: service as u8,
                basis: f.basis,
                port: dport,
                pending: f.pending,
                established: f.established,
                pad: 0,
            }
        });
    }

    // act
    if policy.action == action::RESET && reply::rst(ctx, &p).is_ok() {
        return Ok(xdp_action::XDP_TX);
    }
    Ok(xdp_action::XDP_DROP)
}

/// The client address of a parsed frame (IPv4 in the first four bytes).
#[inline(always)]
fn source_addr(ctx: &XdpContext, p: &Parsed) -> Result<[u8; 16], ()> {
    let mut addr = [0u8; 16];
    if p.family == family::V4 {
        addr[..4].copy_from_slice(&unsafe { *ptr_at::<[u8; 4]>(ctx, p.l3 + 12)? });
    } else {
        addr = unsafe { *ptr_at::<[u8; 16]>(ctx, p.l3 + 8)? };
    }
    Ok(addr)
}

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

/// decide, for a SYN to a service port, in the order of the spec: deny and
/// allow lists (the deny and exempt rules), the service's sessions, the
/// source's connections, its token bucket (the rate rule). Each rule that reserves something
/// gives it back when a later rule refuses. A retransmission of a handshake
/// let through on a reservation passes on that reservation (and on the
/// session it took): the client's first SYN or the server's SYN-ACK was lost,
/// and it is still one attempt.
#[inline(always)]
fn decide(
    ctx: &XdpContext,
    p: &Parsed,
    tcp: &[u8; 20],
    service: u32,
    g: &Globals,
    policy: &ServicePolicy,
) -> Result<Verdict, ()> {
    let addr = source_addr(ctx, p)?;
    let (limit, bucket, on_reserve) = match admission(list_entry(g, p.family, &addr), service, policy) {
        Admission::Decided(v) => return Ok(v),
        Admission::Limits { max_conn, bucket, reserved } => (max_conn, bucket, reserved),
    };

    // The sessions rule is decided after the connections and rate rules (the verifier walks the
    // per-source paths once, not once per way the sessions check can go),
    // with the verdicts the spec's order gives: a SYN both would refuse is
    // counted as refused by sessions.
    let args = SourceArgs {
        service,
        g,
        limit,
        bucket,
        // The handshake's identity: client address, ports, ISN.
        id: Handshake::new(
            &addr,
            p.family,
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
    let verdict = outcome.verdict();
    if policy.max_sessions == 0 {
        if outcome == Outcome::Reserved {
            remember(&args.id);
        }
        return Ok(verdict);
    }
    let now = now_ns();
    let bucket_now = pool::bucket(pending::ticks(now));
    if verdict != Verdict::Accepted {
        return Ok(sessions_full(service, policy, on_reserve, bucket_now).unwrap_or(verdict));
    }
    let verdict = reserve_session(service, policy, on_reserve, bucket_now);
    if verdict != Verdict::Accepted && limit != 0 {
        // No session left: give the source's reservation back (its token,
        // if it took one, stays spent).
        let place = Place::of(&source_key(&addr, p.family, service, g));
        if let Some(slot) = place.pending(g) {
            release_pending(reserved(slot), place.tag, pending::ticks(now));
        }
    } else if outcome == Outcome::Reserved {
        remember(&args.id);
    }
    Ok(verdict)
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
        note_basis(basis::ESTABLISHED, limit, 0);
        return Look::Full;
    }
    // Only a source with a live reservation can be retransmitting: a new
    // one (every SYN of a spoofed flood) skips `HANDSHAKES`, a cache miss,
    // on the word read with the hint's cache line.
    let now = pending::ticks(now_ns());
    if pending::live(unsafe { load(reserved(slot)) }, place.tag, now) == 0 {
        // The slot's connection sum is at or above this source's count:
        // zero means it holds no connection either.
        let holds = unsafe { load(slot_conns(slot)) } != 0;
        return if holds || limit == 1 { Look::Reserve } else { Look::FirstContact };
    }
    if retransmission(&a.id, &place, slot, now) {
        return Look::Retransmission;
    }
    Look::Reserve
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

    // The hint was checked by `first_look` (a source that became full since
    // is refused on `CONNS` below); it is read again here for the mark.
    // `reserved_in` is the slot a reservation is taken in, null for none: an
    // `Option` leaves its payload undefined on the `None` path, which the
    // compiler may spill, and the verifier refuses a read of an unset register.
    let hints = g.flags & flags::SEEDED == 0;
    let mut reserved_in: *mut Slot = core::ptr::null_mut();
    let mut seen = 0;
    if limit != 0 {
        let Some(slot) = place.pending(g) else {
            return Outcome::Accepted;
        };
        // Read before `CONNS`: a close after this read makes a later mark fail.
        seen = unsafe { load(hint_word(slot)) };
        reserved_in = slot;
    }
    let now = now_ns();
    let ticks = pending::ticks(now);

    // Reserve a slot for this handshake before anything else can see it:
    // the reservation itself is the atomic step, never check-then-increment.
    if !reserved_in.is_null() {
        let slot = reserved_in;
        match reserve(&key, g, &place, slot, ticks, limit) {
            Reserve::Taken => {}
            Reserve::Busy => return Outcome::RefusedConcurrency,
            Reserve::Full => {
                // `CONNS` alone is at the limit: remember it, unless a close
                // landed since `seen` was read (then the swap fails).
                if hints {
                    let new = hint::mark_full(seen, place.fingerprint, g.generation);
                    let _ = unsafe { compare_swap(hint_word(slot), seen, new) };
                }
                return Outcome::RefusedConcurrency;
            }
        }
    }
    if !bucket.is_unlimited() && take_token(bucket, &place, g, now) == Verdict::RefusedRate {
        if !reserved_in.is_null() {
            release_pending(reserved(reserved_in), place.tag, ticks);
        }
        return Outcome::RefusedRate;
    }
    if reserved_in.is_null() {
        return Outcome::Accepted;
    }
    Outcome::Reserved
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
        let established = established(key, g, slot);
        let Some(new) = pending::reserve(old, place.tag, now, established, limit) else {
            return if established >= limit {
                note_basis(basis::ESTABLISHED, saturate(established), 0);
                Reserve::Full
            } else {
                note_basis(basis::IN_FLIGHT, saturate(established), pending::live(old, place.tag, now));
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
    note_basis(basis::IN_FLIGHT, saturate(seen_established), seen_pending);
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
/// so two CPUs cannot both spend the last token.
#[inline(always)]
fn spend(bucket: &Bucket, cell: *mut u64, tag: u16, now: u64) -> Verdict {
    for _ in 0..CAS_TRIES {
        let old = unsafe { load(cell) };
        let Some(new) = slot::take(bucket, old, tag, now) else {
            return Verdict::RefusedRate;
        };
        if unsafe { compare_swap(cell, old, new) } {
            return Verdict::Accepted;
        }
    }
    // Persistently contended: fail open rather than refuse on a race. (No
    // log line here: its code, walked on every path that reaches it, cost
    // the verifier more than the rest of the program.)
    Verdict::Accepted
}
