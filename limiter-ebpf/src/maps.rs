//! The maps of the kernel programs. `limiter_common::maps::MAPS` lists them
//! with the daemon module that writes each; by side:
//! - the daemon alone: `GLOBALS`, `PORTS`, `POLICY`, `LISTS`, `LIST_HOSTS`
//!   and `LIST_FILTER` (the policy; the last four in two banks), `SERVICES`, `SEEDED` and `SEED_STATE`;
//! - XDP alone: `COUNTERS`, `OBSERVED`, `EVENTS` and `REFUSAL_BASIS`;
//! - XDP and `sock_ops`: `PENDING` (XDP reserves handshakes, marks sources
//!   at their limit and spends tokens; `sock_ops` releases handshakes, keeps
//!   the slot's connection sum and clears the marks) and `HANDSHAKES` (XDP
//!   remembers reserved handshakes, `sock_ops` forgets completed ones);
//! - `sock_ops` alone: `SOCKS`, `UNCOUNTED`, and `CONNS` (established connections per
//!   source, created only by completed handshakes, so a SYN flood cannot
//!   create, inflate or evict them) but for the daemon deleting entries that
//!   stayed at zero;
//! - shared three ways or in turns: `SESSIONS` (XDP reserves, `sock_ops`
//!   counts established connections, the daemon writes the seeded ones),
//!   `SEED_SKIP` (`sock_ops` adds while seeding, the daemon clears it) and
//!   `EVENT_BUDGET` (XDP spends tokens and counts what it did not report,
//!   the daemon refills the tokens);
//! - the `respond` action: `STEER` (XDP notes steered flows, the responder
//!   forgets them), `STEER_BUDGET` (XDP spends tokens, XDP and sk_lookup
//!   count, the daemon refills), `RESPONDER` (the daemon's socket, read by
//!   sk_lookup) and XDP's scratch `STEER_SCRATCH`.

use core::intrinsics::{AtomicOrdering, atomic_and, atomic_cxchg, atomic_xadd};

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, SockMap, lpm_trie::Key},
};
use limiter_common::{
    Globals, ServicePolicy, SourceKey,
    events::{self, Refusal},
    filter,
    handshake::{self, Handshake},
    lists::{KEY_BYTES, LIST_ENTRIES, ListEntry, key_data, key_len},
    maps::{
        COUNTER_ENTRIES, DEFAULT_CONN_ENTRIES, MAX_SERVICES, POLICY_ENTRIES, PORT_ENTRIES, SEED_SKIP_ENTRIES,
        SOCK_ENTRIES, ServiceRecord, SockRecord, bank, family, flags, layout, policy_index, seed_state,
    },
    pending::{self, Slot, holders},
    pool,
    steer::{self, Steer, SteerKey, SteerValue},
};

#[map(name = "GLOBALS")]
pub(crate) static GLOBALS: Array<Globals> = Array::with_max_entries(1, 0);

/// Service id (1-based) of each local TCP port, indexed in host order; 0 = none.
#[map(name = "PORTS")]
pub(crate) static PORTS: Array<u32> = Array::with_max_entries(PORT_ENTRIES, 0);

/// Service policies, in two banks like the lists (`flags::BANK_B`). One map
/// for both, so the verifier sees one pointer type whichever is in force.
#[map(name = "POLICY")]
pub(crate) static POLICY: Array<ServicePolicy> = Array::with_max_entries(POLICY_ENTRIES, 0);

/// Established connections per source and service (`sock_ops` writes them).
/// Sized from config by the loader; entries at zero stay until user space
/// reclaims them (deleting in BPF races with a concurrent increment).
#[map(name = "CONNS")]
pub(crate) static CONNS: HashMap<SourceKey, u64> = HashMap::with_max_entries(DEFAULT_CONN_ENTRIES, 0);

/// Connections that existed before the programs were attached, per source
/// and service. Only the daemon writes it: it seeds it from the socket table
/// and takes one away when such a socket is gone (no close callback comes
/// for them). Read by XDP while `flags::SEEDED` is set.
#[map(name = "SEEDED")]
pub(crate) static SEEDED: HashMap<SourceKey, u64> = HashMap::with_max_entries(DEFAULT_CONN_ENTRIES, 0);

/// Socket cookies `sock_ops` counted while `flags::SEEDING` was set, so the
/// daemon's seeding skips them. The daemon clears it when seeding ends.
#[map(name = "SEED_SKIP")]
pub(crate) static SEED_SKIP: HashMap<u64, u8> =
    HashMap::with_max_entries(SEED_SKIP_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Per-source state XDP reads on every SYN, direct-mapped by the source
/// hash: handshakes in flight, "at its limit" hint, connection sum, token
/// bucket (see `limiter_common::pending::Slot`).
#[map(name = "PENDING")]
pub(crate) static PENDING: Array<Slot> = Array::with_max_entries(pending::DEFAULT_SLOTS, 0);

/// Handshakes let through on a reservation, by identity (client address,
/// ports, ISN), direct-mapped: a retransmitted SYN of one of them rides on
/// its reservation (`limiter_common::handshake`).
#[map(name = "HANDSHAKES")]
pub(crate) static HANDSHAKES: Array<Handshake> = Array::with_max_entries(handshake::ENTRIES, 0);

/// The `HANDSHAKES` entry an identity hashes to.
#[inline(always)]
pub(crate) fn handshake_entry(id: &Handshake) -> Option<*mut Handshake> {
    HANDSHAKES.get_ptr_mut(id.index())
}

/// The merged allow/deny/reserve trie, both banks (the bank is the key's
/// first byte): `flags::BANK_B` selects the one in force, the daemon
/// rewrites the other and flips, so no SYN ever sees a half-written list.
#[map(name = "LISTS")]
pub(crate) static LISTS: LpmTrie<[u8; KEY_BYTES], ListEntry> = LpmTrie::with_max_entries(2 * LIST_ENTRIES, 0);

/// The lists' host entries (IPv4 /32, IPv6 /128), both banks, keyed like
/// `LISTS` without the length: with `layout::HOSTS` set, a source is looked
/// up here first and `LISTS` holds none of them (`maps::host_len`).
/// Allocated per entry, like the trie.
#[map(name = "LIST_HOSTS")]
pub(crate) static LIST_HOSTS: HashMap<[u8; KEY_BYTES], ListEntry> =
    HashMap::with_max_entries(2 * LIST_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// The filter in front of `LISTS`, both banks (`limiter_common::filter`):
/// most sources no entry covers skip the trie's walk.
#[map(name = "LIST_FILTER")]
pub(crate) static LIST_FILTER: Array<u64> = Array::with_max_entries(filter::ENTRIES, 0);

/// Sessions in use per service (`pool::index`): established (`sock_ops`),
/// handshakes in flight (XDP reserves, `sock_ops` releases), seeded (daemon).
#[map(name = "SESSIONS")]
pub(crate) static SESSIONS: Array<u64> = Array::with_max_entries(pool::ENTRIES, 0);

/// What `sock_ops` counted for each open service connection, by socket
/// cookie: its close takes away exactly that.
#[map(name = "SOCKS")]
pub(crate) static SOCKS: HashMap<u64, SockRecord> =
    HashMap::with_max_entries(SOCK_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Service name of each id (`ServiceRecord`). Written by the daemon only and
/// never read here: it is defined in the object so that it is created and
/// pinned with the counts it names (a restart or upgrade finds both or neither).
#[map(name = "SERVICES")]
pub(crate) static SERVICES: Array<ServiceRecord> = Array::with_max_entries(MAX_SERVICES + 1, 0);

/// The daemon's seeding record (`limiter_common::maps::seed_state`); not
/// read here, pinned with `SEEDED` for the same reason as `SERVICES`.
#[map(name = "SEED_STATE")]
pub(crate) static SEED_STATE: Array<u64> = Array::with_max_entries(seed_state::ENTRIES, 0);

#[map(name = "COUNTERS")]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

/// What observe mode (`action::LOG`) would have refused, laid out like
/// `COUNTERS`: a map of its own, so a real refusal and a would-be one are
/// never added up, and an older version's pinned `COUNTERS` stays as it is.
#[map(name = "OBSERVED")]
pub(crate) static OBSERVED: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

/// Refusal events for the daemon's log lines (`limiter_common::events`).
#[map(name = "EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(events::RING_BYTES, 0);

/// Per CPU: event tokens left (the daemon refills them) and refusals not
/// reported.
#[map(name = "EVENT_BUDGET")]
pub(crate) static EVENT_BUDGET: PerCpuArray<u64> = PerCpuArray::with_max_entries(events::BUDGET_ENTRIES, 0);

/// What a connection-limit refusal was based on (`events::basis`, the
/// counts read), as the event reports it.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Grounds {
    pub(crate) basis: u8,
    pub(crate) pad: u8,
    pub(crate) pending: u16,
    pub(crate) established: u32,
    /// The source's connection limit in force (for the responder's text).
    pub(crate) limit: u32,
    pub(crate) pad2: u32,
}

/// Per CPU, one entry: the [`Grounds`] of the refusal being decided, noted by
/// the function that refuses and read back by the packet path to report it.
/// Kept here rather than on the stack, whose 512 bytes the packet path and
/// its calls use up; a program runs to its end on one CPU, so the entry is
/// this packet's when it is read (each refusal by connection count notes it).
#[map(name = "REFUSAL_BASIS")]
pub(crate) static REFUSAL_BASIS: PerCpuArray<Grounds> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, one entry: established connections `sock_ops` could not count,
/// for their service or over all services (`CONNS` full). The daemon reads the sum every second and warns when it
/// grows, rather than waiting for its next reclaim pass to see a full table.
#[map(name = "UNCOUNTED")]
pub(crate) static UNCOUNTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Notes what the refusal being decided rests on.
#[inline(always)]
pub(crate) fn note_basis(basis: u8, established: u32, pending: u16, limit: u32) {
    if let Some(b) = REFUSAL_BASIS.get_ptr_mut(0) {
        unsafe { *b = Grounds { basis, pad: 0, pending, established, limit, pad2: 0 } };
    }
}

/// What [`note_basis`] noted for this packet.
#[inline(always)]
pub(crate) fn basis_noted() -> Grounds {
    REFUSAL_BASIS.get(0).copied().unwrap_or_default()
}

/// Reports a refusal to the daemon if this CPU has a token left and the
/// ring has room (true), else counts it as unreported (false). Per-CPU cells: no other CPU
/// writes them (the daemon's refill may race with a decrement and lose it,
/// which only grants one event more). The event is only built with a token
/// in hand: a flood past its budget pays for none of it.
#[inline(always)]
pub(crate) fn report(event: impl FnOnce() -> Refusal) -> bool {
    let Some(tokens) = EVENT_BUDGET.get_ptr_mut(events::TOKENS) else {
        return false;
    };
    if unsafe { *tokens } > 0 && EVENTS.output::<Refusal>(&event(), 0).is_ok() {
        unsafe { *tokens -= 1 };
        return true;
    }
    if let Some(n) = EVENT_BUDGET.get_ptr_mut(events::UNREPORTED) {
        unsafe { *n += 1 };
    }
    false
}

/// Whether this CPU has an event token left: a refusal now would be reported.
#[inline(always)]
pub(crate) fn event_token_left() -> bool {
    EVENT_BUDGET.get_ptr(events::TOKENS).is_some_and(|t| unsafe { *t } > 0)
}

/// Counts a refusal not reported (no token), as [`report`] does.
#[inline(always)]
pub(crate) fn note_unreported() {
    if let Some(n) = EVENT_BUDGET.get_ptr_mut(events::UNREPORTED) {
        unsafe { *n += 1 };
    }
}

/// Counts a verdict observe mode did not carry out.
#[inline(always)]
pub(crate) fn count_observed(index: u32) {
    if let Some(c) = OBSERVED.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *c += 1 };
    }
}

/// Load of a u64 shared across CPUs. An aligned 8-byte load is single-copy
/// atomic on BPF; the backend cannot select an atomic-load node before CPU v4,
/// so a volatile read stands in (the compare-and-swap validates it anyway).
#[inline(always)]
pub(crate) unsafe fn load(ptr: *const u64) -> u64 {
    unsafe { core::ptr::read_volatile(ptr) }
}

/// Compare-and-swap; true if `ptr` held `old` and now holds `new`.
/// `SeqCst`: weaker orderings may compile to instructions that do not return
/// the old value on this target (docs/kernel-notes.md, "Atomics").
#[inline(always)]
pub(crate) unsafe fn compare_swap(ptr: *mut u64, old: u64, new: u64) -> bool {
    let (_, ok) = unsafe { atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(ptr, old, new) };
    ok
}

/// Atomic fetch-add returning the old value (`SeqCst`: see `compare_swap`).
#[inline(always)]
pub(crate) unsafe fn fetch_add(ptr: *mut u64, v: u64) -> u64 {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(ptr, v) }
}

/// Atomic fetch-and (`SeqCst`: see `compare_swap`).
#[inline(always)]
pub(crate) unsafe fn fetch_and(ptr: *mut u64, v: u64) -> u64 {
    unsafe { atomic_and::<u64, u64, { AtomicOrdering::SeqCst }>(ptr, v) }
}

/// The kernel's clock, coarse (updated every tick): enough for 3 s handshake
/// timeouts and per-minute rates, and far cheaper than a clocksource read.
/// XDP and `sock_ops` must read the same clock (epochs are compared).
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Where a source's state lives: its hash, split into slot indices, tag and fingerprint.
#[derive(Clone, Copy)]
pub(crate) struct Place {
    pub(crate) hash: u64,
    pub(crate) tag: u16,
    pub(crate) fingerprint: u32,
}

impl Place {
    #[inline(always)]
    pub(crate) fn of(key: &SourceKey) -> Self {
        let hash = pending::hash(key.words());
        let (_, tag) = pending::slot_of(hash, 1);
        Self { hash, tag, fingerprint: pending::fingerprint(hash) }
    }

    /// The source's `PENDING` slot.
    #[inline(always)]
    pub(crate) fn pending(&self, g: &Globals) -> Option<*mut Slot> {
        #[expect(clippy::cast_possible_truncation, reason = "masked to the slot count")]
        let index = (self.hash & u64::from(g.pending_mask)) as u32;
        PENDING.get_ptr_mut(index)
    }

    /// The source's rate set: the rate words of its slot's aligned pair
    /// (one cache line).
    #[inline(always)]
    pub(crate) fn rate_set(&self, g: &Globals) -> Option<(*mut u64, *mut u64)> {
        #[expect(clippy::cast_possible_truncation, reason = "masked to the slot count")]
        let index = (self.hash & u64::from(g.pending_mask)) as u32 & !1;
        let (a, b) = (PENDING.get_ptr_mut(index)?, PENDING.get_ptr_mut(index | 1)?);
        Some((unsafe { &raw mut (*a).rate }, unsafe { &raw mut (*b).rate }))
    }
}

/// The reservation word of a slot.
#[inline(always)]
pub(crate) fn reserved(slot: *mut Slot) -> *mut u64 {
    unsafe { &raw mut (*slot).reserved }
}

/// The hint word of a slot.
#[inline(always)]
pub(crate) fn hint(slot: *mut Slot) -> *mut u64 {
    unsafe { &raw mut (*slot).hint }
}

/// The connection sum of a slot.
#[inline(always)]
pub(crate) fn slot_conns(slot: *mut Slot) -> *mut u64 {
    unsafe { &raw mut (*slot).conns }
}

/// Gives one reservation back; a slot another source took over is left alone.
#[inline(always)]
pub(crate) fn release_pending(slot: *mut u64, tag: u16, now_ms: u32) {
    for _ in 0..4 {
        let old = unsafe { load(slot) };
        let Some(new) = pending::release(old, tag, now_ms) else {
            return;
        };
        if unsafe { compare_swap(slot, old, new) } {
            return;
        }
    }
}

/// Established connections of a source (0 when it has none), including
/// those seeded from before the programs ran. The `CONNS` lookup is skipped
/// when the slot says the source holds no connection (`pending::holders`:
/// nearly every SYN of a spoofed flood, however many sources hold some).
#[inline(always)]
pub(crate) fn established(key: &SourceKey, g: &Globals, place: &Place, slot: *mut Slot) -> u64 {
    // The fingerprint read where it is used (volatile): hoisted out of the
    // callers' unrolled retry loops, its bits took a register across them
    // and up to 56 bytes more of their frames.
    let fingerprint = unsafe { core::ptr::read_volatile(&raw const place.fingerprint) };
    let counted = if holders::may_hold(unsafe { load(slot_conns(slot)) }, fingerprint) {
        CONNS.get_ptr(key).map_or(0, |p| unsafe { load(p) })
    } else {
        0
    };
    if g.flags & flags::SEEDED == 0 {
        return counted;
    }
    counted + SEEDED.get_ptr(key).map_or(0, |p| unsafe { load(p) })
}

/// The entry of the lists in force that covers `addr`, if the lists hold any.
#[inline(always)]
pub(crate) fn list_entry(g: &Globals, fam: u8, addr: &[u8; 16]) -> Option<&'static ListEntry> {
    if g.flags & (if fam == family::V4 { flags::LISTS } else { flags::LISTS_V6 }) == 0 {
        return None;
    }
    // The bank and its layout in one load: both change with one flip. As a
    // u16 (the pair is 2-aligned), not [u8; 2], which compiles to two loads.
    let [fl, lay] = unsafe { core::ptr::read_volatile((&raw const g.flags).cast::<u16>()) }.to_le_bytes();
    let bank = bank(fl);
    if !may_be_listed(bank, fam, addr) {
        return None;
    }
    let key = Key::new(key_len(if fam == family::V4 { 32 } else { 128 }), key_data(bank, fam, addr));
    // A host entry is the longest match of its address: one exact lookup,
    // where the trie's walk grows with the lists.
    if lay & layout::HOSTS != 0
        && let Some(e) = unsafe { LIST_HOSTS.get(&key.data) }
    {
        return Some(e);
    }
    LISTS.get(&key)
}

/// False when `bank`'s filter shows that no list entry covers `addr`; true
/// when one may (or the filter is not written).
#[inline(always)]
fn may_be_listed(bank: u8, fam: u8, addr: &[u8; 16]) -> bool {
    let at = filter::header_index(bank);
    let header = LIST_FILTER.get(at).map_or(0, |h| unsafe { core::ptr::read_volatile(h) });
    if header & filter::VALID == 0 {
        return true;
    }
    let (word, bits) = filter::place(filter::hash(fam, addr, filter::level(header, fam)));
    LIST_FILTER.get(at + 1 + word).is_none_or(|w| unsafe { core::ptr::read_volatile(w) } & bits == bits)
}

/// The policy in force of a service.
#[inline(always)]
pub(crate) fn policy(g: &Globals, service: u32) -> Option<&'static ServicePolicy> {
    POLICY.get(policy_index(bank(g.flags), service))
}

/// A service's handshakes-in-flight word and established count.
#[inline(always)]
pub(crate) fn sessions(service: u32) -> Option<(*mut u64, *mut u64)> {
    Some((
        SESSIONS.get_ptr_mut(pool::index(service, pool::PENDING))?,
        SESSIONS.get_ptr_mut(pool::index(service, pool::ESTABLISHED))?,
    ))
}

/// A service's connections that predate the programs.
#[inline(always)]
pub(crate) fn seeded_sessions(service: u32) -> u64 {
    SESSIONS.get(pool::index(service, pool::SEEDED)).copied().unwrap_or(0)
}

/// Gives one session reservation back.
#[inline(always)]
pub(crate) fn release_session(word: *mut u64, now_bucket: u32) {
    for _ in 0..4 {
        let old = unsafe { load(word) };
        let Some(new) = pool::release(old, now_bucket) else {
            return;
        };
        if unsafe { compare_swap(word, old, new) } {
            return;
        }
    }
}

/// The responder's listening socket, at index 0; the daemon puts it there,
/// the kernel removes it when the socket closes (`limiter_sk_lookup` then
/// refuses steered SYNs).
#[map(name = "RESPONDER")]
pub(crate) static RESPONDER: SockMap = SockMap::with_max_entries(limiter_common::steer::RESPONDER_SLOTS, 0);

/// Flows XDP steered to the responder, and why (`limiter_common::steer`).
/// LRU: the responder forgets an entry once it has read it; what it never
/// reads (a client that gave up) is evicted by newer ones.
#[map(name = "STEER")]
pub(crate) static STEER: LruHashMap<SteerKey, SteerValue> = LruHashMap::with_max_entries(steer::ENTRIES, 0);

/// Per CPU: steering tokens (the daemon refills them) and what steering did
/// (`steer::budget`).
#[map(name = "STEER_BUDGET")]
pub(crate) static STEER_BUDGET: PerCpuArray<u64> = PerCpuArray::with_max_entries(steer::budget::ENTRIES, 0);

/// Per CPU, one entry: the `STEER` key and value being written, off the
/// stack (the packet path's frame has no room for 48 bytes more).
#[map(name = "STEER_SCRATCH")]
pub(crate) static STEER_SCRATCH: PerCpuArray<Steer> = PerCpuArray::with_max_entries(1, 0);

/// Each source's pace of steered SYNs (`steer::admit`), keyed like `STEER`
/// with both ports 0. LRU: a source idle long enough to have its burst back
/// is the same as a new one.
#[map(name = "STEER_SOURCES")]
pub(crate) static STEER_SOURCES: LruHashMap<SteerKey, u64> = LruHashMap::with_max_entries(steer::SOURCES, 0);

/// What became of steered SYNs the socket lookup reset (`steer::fate`),
/// by flow: their `STEER` entries are deleted at once, so a flood of them
/// cannot evict the entries of SYNs on their way to the responder; the
/// daemon reads this to say what answered them.
#[map(name = "STEER_FATES")]
pub(crate) static STEER_FATES: LruHashMap<SteerKey, u8> = LruHashMap::with_max_entries(steer::FATES, 0);

/// Whether the source `key` (ports 0) is within its share of the steering
/// at `now`; records the SYN if so. Not atomic: SYNs of one source on two
/// CPUs at once may both pass (the responder's own per-source budget is the
/// exact bound); this share only keeps one source from spending every
/// CPU's tokens.
#[inline(always)]
pub(crate) fn within_share(key: &SteerKey, now: u64) -> bool {
    let read = |i: u32| STEER_BUDGET.get(i).copied().unwrap_or(0);
    let (interval, tolerance) = (read(steer::budget::SHARE_INTERVAL_NS), read(steer::budget::SHARE_TOLERANCE_NS));
    if interval == 0 {
        return true;
    }
    let tat = STEER_SOURCES.get_ptr(key).map_or(0, |p| unsafe { *p });
    match steer::admit(tat, now, interval, tolerance) {
        // With no room to note it the source is not held to its share.
        Some(next) => {
            let _ = STEER_SOURCES.insert(key, &next, 0);
            true
        }
        None => false,
    }
}

/// Gives back a steering token taken by [`take_steer_token`].
#[inline(always)]
pub(crate) fn return_steer_token() {
    if let Some(tokens) = STEER_BUDGET.get_ptr_mut(steer::budget::TOKENS) {
        unsafe { *tokens += 1 };
    }
}

/// Adds one to `STEER_BUDGET[index]` of this CPU.
#[inline(always)]
pub(crate) fn count_steer(index: u32) {
    if let Some(c) = STEER_BUDGET.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *c += 1 };
    }
}

/// Spends one of this CPU's steering tokens; false with none left. The
/// daemon's refill may race with the decrement and lose it, which only
/// grants one steering more.
#[inline(always)]
pub(crate) fn take_steer_token() -> bool {
    let Some(tokens) = STEER_BUDGET.get_ptr_mut(steer::budget::TOKENS) else {
        return false;
    };
    if unsafe { *tokens } == 0 {
        return false;
    }
    unsafe { *tokens -= 1 };
    true
}
