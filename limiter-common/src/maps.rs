//! Map names, sizes, keys and values shared by the XDP program and the
//! daemon. Layouts are `#[repr(C)]` with explicit padding and checked sizes,
//! so both sides agree byte for byte.

/// Highest service id; ids are 1-based, 0 means "not a service port".
pub const MAX_SERVICES: u32 = 16;

/// Entries of the `PORTS` array: one per TCP port, indexed in host order.
pub const PORT_ENTRIES: u32 = 65_536;

/// Default size of `CONNS`: sources with established connections.
pub const DEFAULT_CONN_ENTRIES: u32 = 65_536;

/// Size of `SEED_SKIP`: sockets `sock_ops` counted while the daemon was
/// seeding (a window of milliseconds at the first start).
pub const SEED_SKIP_ENTRIES: u32 = 8_192;

/// Map names as they appear in the object file and under the pin dir.
pub mod names {
    pub const GLOBALS: &str = "GLOBALS";
    pub const PORTS: &str = "PORTS";
    /// Service policies, both banks (`policy_index`).
    pub const POLICY: &str = "POLICY";
    pub const COUNTERS: &str = "COUNTERS";
    /// What services in observe mode (`action = "log"`) would have refused:
    /// laid out like `COUNTERS`, apart from real refusals.
    pub const OBSERVED: &str = "OBSERVED";
    pub const CONNS: &str = "CONNS";
    pub const PENDING: &str = "PENDING";
    /// Handshakes let through on a reservation, so a retransmitted SYN is
    /// not a second attempt (`handshake`).
    pub const HANDSHAKES: &str = "HANDSHAKES";
    pub const SEEDED: &str = "SEEDED";
    pub const SEED_SKIP: &str = "SEED_SKIP";
    /// The merged allow/deny/reserve trie, both banks (`lists::key_data`).
    pub const LISTS: &str = "LISTS";
    /// The filter in front of `LISTS`, both banks (`filter`).
    pub const LIST_FILTER: &str = "LIST_FILTER";
    /// The merged lists' host entries (IPv4 /32, IPv6 /128), both banks,
    /// by `lists::key_data`: looked up before `LISTS`, which then holds none.
    pub const LIST_HOSTS: &str = "LIST_HOSTS";
    /// Session counts per service (`pool::index`).
    pub const SESSIONS: &str = "SESSIONS";
    /// What `sock_ops` counted for each open connection, by socket cookie.
    pub const SOCKS: &str = "SOCKS";
    /// Service name of each id ([`super::ServiceRecord`]); the daemon's
    /// alone, pinned so ids follow names across restarts and upgrades.
    pub const SERVICES: &str = "SERVICES";
    /// The daemon's seeding record ([`super::seed_state`]); pinned with the counts.
    pub const SEED_STATE: &str = "SEED_STATE";
    /// Refusal events for the daemon's log lines (ring buffer, not pinned).
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU event tokens and the count of unreported refusals (not pinned).
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
    /// Per-CPU scratch: what the refusal being decided rests on (not pinned).
    pub const REFUSAL_BASIS: &str = "REFUSAL_BASIS";
    /// Per-CPU count of established connections `sock_ops` could not count
    /// because `CONNS` was full (not pinned: the daemon warns on its growth).
    pub const UNCOUNTED: &str = "UNCOUNTED";
    /// The `respond` action: the responder's listening sockets (SOCKMAP, one
    /// per address family, not pinned: the kernel removes an entry when its
    /// socket closes).
    pub const RESPONDER: &str = "RESPONDER";
    /// Flows XDP steered to the responder, with why (`steer::SteerValue`).
    pub const STEER: &str = "STEER";
    /// Per-CPU steering tokens and what the steering did (`steer::budget`).
    pub const STEER_BUDGET: &str = "STEER_BUDGET";
    /// Per-CPU scratch: the `STEER` entry being written (not pinned).
    pub const STEER_SCRATCH: &str = "STEER_SCRATCH";
    /// Each source's share of the steering (`steer::admit`; LRU, not pinned).
    pub const STEER_SOURCES: &str = "STEER_SOURCES";
    /// Steered flows the socket lookup reset, and why (`steer::fate`; LRU, not pinned).
    pub const STEER_FATES: &str = "STEER_FATES";
    /// Hands steered SYNs to the responder socket (`sk_lookup`).
    pub const SK_LOOKUP_PROGRAM: &str = "limiter_sk_lookup";
    pub const SOCK_OPS_PROGRAM: &str = "limiter_sock_ops";
    pub const XDP_PROGRAM: &str = "limiter_xdp";
    /// An XDP program that passes every frame: `limiter doctor --probe-xdp`
    /// attaches it to find out whether an interface has native XDP.
    pub const PROBE_PROGRAM: &str = "limiter_probe";
    /// The bench object's programs (`limiter-ebpf/src/bench.rs`), never in
    /// the one the daemon embeds. Empty programs used as benchmark floors:
    pub const FLOOR_PASS: &str = "floor_pass";
    pub const FLOOR_DROP: &str = "floor_drop";
    /// Bench only: a new source on every packet, then the real program / a drop.
    pub const BENCH_FLOOD: &str = "bench_flood";
    pub const FLOOR_FLOOD_DROP: &str = "floor_flood_drop";
    /// Bench only: the spoofed-source counter of the flood pair (per-CPU, one entry).
    pub const BENCH_SEQ: &str = "BENCH_SEQ";
    /// Bench only: on the bench client's veth, drops what the server sends to the injected SYNs' ports.
    pub const BENCH_SINK: &str = "bench_sink";
}

/// What writes a map: creates, updates or deletes its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// The XDP program (`limiter_xdp`).
    Xdp,
    /// The `sock_ops` program (`limiter_sock_ops`).
    SockOps,
    /// The `sk_lookup` program (`limiter_sk_lookup`).
    SkLookup,
    /// The daemon module of this path in `limiter-user` (e.g. `kernel::writer`).
    Daemon(&'static str),
}

/// A map of the production object, as [`MAPS`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    /// Pinned by name under the pin dir, so it outlives the daemon; the
    /// others are made afresh at every start.
    pub pinned: bool,
    /// Everything that writes it, in the kernel and in the daemon.
    pub writers: &'static [Writer],
}

const fn spec(name: &'static str, pinned: bool, writers: &'static [Writer]) -> MapSpec {
    MapSpec { name, pinned, writers }
}

/// The policy writer: the banks, then the flip, then the ports.
const WRITER: Writer = Writer::Daemon("kernel::writer");
/// Counts of connections that predate the programs (its flags in
/// `GLOBALS` it asks the policy writer to write).
const SEED: Writer = Writer::Daemon("kernel::seed");
/// The kernel side of the `respond` action: the responder's socket, the
/// steering tokens, the steered flows it has answered.
const RESPONDER: Writer = Writer::Daemon("kernel::responder");

/// Every map of the production object, once: the kernel crate's
/// `#[map(name = ...)]` definitions must be exactly these (a test loads the
/// object and compares), and the daemon pins the ones marked `pinned`.
pub const MAPS: &[MapSpec] = &[
    spec(names::GLOBALS, true, &[WRITER]),
    spec(names::PORTS, true, &[WRITER]),
    spec(names::POLICY, true, &[WRITER]),
    spec(names::LISTS, true, &[WRITER]),
    // Pinned with `LISTS`, so that the programs before and after an upgrade
    // read one filter, the one matching the trie.
    spec(names::LIST_FILTER, true, &[WRITER]),
    // Pinned with `LISTS`: the two hold one bank's entries between them.
    spec(names::LIST_HOSTS, true, &[WRITER]),
    // XDP reserves handshakes, `sock_ops` counts established connections,
    // the daemon writes the seeded ones.
    spec(names::SESSIONS, true, &[Writer::Xdp, Writer::SockOps, SEED]),
    spec(names::SOCKS, true, &[Writer::SockOps]),
    spec(names::COUNTERS, true, &[Writer::Xdp]),
    spec(names::OBSERVED, true, &[Writer::Xdp]),
    // The daemon only deletes entries that stayed at zero.
    spec(names::CONNS, true, &[Writer::SockOps, Writer::Daemon("kernel::reclaim")]),
    spec(names::PENDING, true, &[Writer::Xdp, Writer::SockOps]),
    spec(names::HANDSHAKES, true, &[Writer::Xdp, Writer::SockOps]),
    spec(names::SEEDED, true, &[SEED]),
    // `sock_ops` adds while the daemon seeds, which clears it after.
    spec(names::SEED_SKIP, true, &[Writer::SockOps, SEED]),
    spec(names::SERVICES, true, &[Writer::Daemon("kernel::ids")]),
    spec(names::SEED_STATE, true, &[SEED]),
    // XDP produces; the daemon consumes (advancing the consumer position).
    spec(names::EVENTS, false, &[Writer::Xdp, Writer::Daemon("kernel::events")]),
    // XDP spends tokens and counts what it did not report; the daemon refills.
    spec(names::EVENT_BUDGET, false, &[Writer::Xdp, Writer::Daemon("kernel::events")]),
    spec(names::REFUSAL_BASIS, false, &[Writer::Xdp]),
    // `sock_ops` counts; the daemon only reads it.
    spec(names::UNCOUNTED, false, &[Writer::SockOps]),
    // The responder's socket; the kernel deletes the entry when it closes.
    spec(names::RESPONDER, false, &[RESPONDER]),
    // Pinned: during an upgrade the XDP and sk_lookup links move to the new
    // programs one after the other, and a SYN the old XDP steered must find
    // its entry in the new sk_lookup. XDP writes, the responder forgets.
    spec(names::STEER, true, &[Writer::Xdp, Writer::SkLookup, RESPONDER]),
    // XDP spends tokens and counts, sk_lookup counts, the daemon refills.
    spec(names::STEER_BUDGET, false, &[Writer::Xdp, Writer::SkLookup, RESPONDER]),
    spec(names::STEER_SCRATCH, false, &[Writer::Xdp]),
    // The socket lookup keeps each source's pace; the daemon sets the pace
    // in `STEER_BUDGET`.
    spec(names::STEER_SOURCES, false, &[Writer::SkLookup]),
    spec(names::STEER_FATES, false, &[Writer::SkLookup]),
];

/// The maps of the bench's object (`limiter-ebpf/src/bench.rs`) that are
/// not in [`MAPS`]: the bench loads that object on the production object's
/// maps, so these are the only ones it creates.
pub const BENCH_MAPS: &[&str] = &[names::BENCH_SEQ];

/// Over-limit actions (`ServicePolicy::action`).
pub mod action {
    /// `XDP_DROP`: the client retransmits and times out.
    pub const DROP: u8 = 0;
    /// TCP RST+ACK sent back with `XDP_TX`: the client fails at once.
    pub const RESET: u8 = 1;
    /// Steered to the daemon's responder (`sk_lookup`), which answers with
    /// the protocol's refusal text; `RESET` when it cannot be.
    pub const RESPOND: u8 = 2;
    /// Observe mode: the decision runs and is counted (`OBSERVED`) and
    /// reported as what would have been refused, and the SYN passes.
    pub const LOG: u8 = 3;
}

/// Bits of [`Globals::flags`].
pub mod flags {
    /// The daemon is seeding counts from the socket table: `sock_ops` notes
    /// the cookie of every socket it counts in `SEED_SKIP`, so the seeding
    /// does not count it a second time.
    pub const SEEDING: u8 = 1;
    /// `SEEDED` holds counts of sockets that predate the programs: XDP adds
    /// them to `CONNS`. Cleared when the last one has closed, so the lookup
    /// costs nothing afterwards.
    pub const SEEDED: u8 = 2;
    /// The lists in force hold IPv4 entries: XDP and `sock_ops` look IPv4
    /// sources up.
    pub const LISTS: u8 = 4;
    /// The lists in force hold IPv6 entries.
    pub const LISTS_V6: u8 = 16;
    /// The policy and lists in force are bank 1, else bank 0. The daemon
    /// writes the other bank whole, then flips this bit: a SYN sees the old
    /// policy or the new one, never a mix.
    pub const BANK_B: u8 = 8;
}

/// Bits of [`Globals::layout`]: how the bank in force is laid out over the maps.
pub mod layout {
    /// The bank's host entries (IPv4 /32, IPv6 /128) are in `LIST_HOSTS`,
    /// not in `LISTS`: a source is looked up there first. Without it (a bank
    /// a version before `LIST_HOSTS` wrote) the trie holds every entry.
    pub const HOSTS: u8 = 1;
}

/// Entries of `POLICY`: a bank of `MAX_SERVICES + 1` per bank.
pub const POLICY_ENTRIES: u32 = 2 * (MAX_SERVICES + 1);

/// The `POLICY` index of service `id` in `bank` (0 or 1).
#[inline(always)]
#[must_use]
pub const fn policy_index(bank: u8, id: u32) -> u32 {
    bank as u32 * (MAX_SERVICES + 1) + id
}

/// The bank in force under `flags`.
#[inline(always)]
#[must_use]
pub const fn bank(flags: u8) -> u8 {
    if flags & flags::BANK_B == 0 { 0 } else { 1 }
}

/// Entries of `SOCKS`: connections whose accounting `sock_ops` remembers
/// (more are counted, and released by recomputing their source).
pub const SOCK_ENTRIES: u32 = 1 << 18;

/// What `sock_ops` counted when a connection was established
/// (`SOCKS[cookie]`), so its close takes away exactly that, whatever the
/// policy or lists say by then.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SockRecord {
    pub key: SourceKey,
    /// 1 if counted in `CONNS`.
    pub counted: u8,
    /// 1 if counted in the service's `SESSIONS` (not exempt).
    pub pooled: u8,
    /// 1 if counted in `CONNS` under the source-wide key too
    /// ([`ALL_SERVICES`]); 0 in records of older versions, which did not.
    pub counted_all: u8,
    pub pad: u8,
}
const _: () = assert!(core::mem::size_of::<SockRecord>() == 24);

/// Bytes of a service name in [`ServiceRecord`] (and the most a config may
/// use: a longer name could not be kept with its id).
pub const SERVICE_NAME_BYTES: usize = 32;

/// `SERVICES[id]`: which service name owns kernel id `id`. Entry 0 is
/// unused (id 0 means "no service"). The programs never read it; it lives
/// in the pin dir with the counts it names.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServiceRecord {
    /// The name, NUL-padded.
    pub name: [u8; SERVICE_NAME_BYTES],
    /// Bytes of `name` in use.
    pub len: u8,
    /// One of [`service_state`].
    pub state: u8,
    pub pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<ServiceRecord>() == 40);

/// [`ServiceRecord::state`].
pub mod service_state {
    /// No service has the id: a new service may take it.
    pub const FREE: u8 = 0;
    /// A configured service has it.
    pub const ACTIVE: u8 = 1;
    /// Its service was removed while connections were counted under the
    /// id: no other service gets it until they are gone.
    pub const RETIRED: u8 = 2;
}

/// Entries of `SEED_STATE` (u64 each).
pub mod seed_state {
    /// Words 0..`PORT_WORDS`: a bit per TCP port (`port / 64`, bit
    /// `port % 64`), set for the ports that were service ports when the first
    /// seeding read the socket table. Only sockets on those ports are ever
    /// seeded: a connection on a port that became a service port later was
    /// established while `sock_ops` ran and chose not to count it, so a later
    /// rebuild must not count it either. (Socket cookies cannot tell old from
    /// new sockets: the kernel hands them out in per-CPU batches.)
    pub const PORT_WORDS: u32 = 1024;
    /// Non-zero once the port bits are written.
    pub const PORTS_SET: u32 = PORT_WORDS;
    pub const ENTRIES: u32 = PORT_WORDS + 1;
}

/// Address families in keys.
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// The length of a host entry of family `family`: 32 (IPv4) or 128 (IPv6).
/// A bank's host entries live in `LIST_HOSTS`, keyed by `lists::key_data`
/// alone (see [`layout::HOSTS`]): a host entry is the longest match of its
/// address whatever else the lists hold, so one exact lookup answers for it,
/// where the trie's walk grows with the lists. The trie holds the rest.
#[inline(always)]
#[must_use]
pub const fn host_len(family: u8) -> u8 {
    if family == family::V4 { 32 } else { 128 }
}

/// Global settings (`GLOBALS[0]`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Globals {
    /// Network namespace whose sockets are counted (`SO_NETNS_COOKIE`).
    pub netns_cookie: u64,
    /// `PENDING` slots - 1 (the slot count is a power of two).
    pub pending_mask: u32,
    /// IPv4 sources are aggregated to this many leading bits (1..=32).
    pub ipv4_prefix: u8,
    /// IPv6 sources are aggregated to this many leading bits (1..=128).
    pub ipv6_prefix: u8,
    /// [`flags`] bits.
    pub flags: u8,
    /// [`layout`] bits of the bank in force, written with the flip to it.
    /// Was `pad`, which versions before it wrote as zero: a bank such a
    /// version put in force is read the way that version wrote it.
    pub layout: u8,
    /// Bumped by every policy write: invalidates the "at its limit" hints
    /// (`pending::hint`), which a raised limit would make stale.
    pub generation: u16,
    pub pad2: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Globals>() == 24);
// XDP reads `flags` and `layout` in one aligned two-byte load.
const _: () = assert!(core::mem::offset_of!(Globals, flags) % 2 == 0);
const _: () = assert!(core::mem::offset_of!(Globals, layout) == core::mem::offset_of!(Globals, flags) + 1);

/// Policy of one service (`POLICY[policy_index(bank, id)]`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServicePolicy {
    /// Token bucket: nanoseconds per token, 0 = no rate limit.
    pub rate_interval_ns: u64,
    /// Token bucket: `rate_interval_ns * (burst - 1)`.
    pub rate_tolerance_ns: u64,
    /// Connections a source may hold at once; 0 = no limit.
    pub max_conn_per_source: u32,
    /// One of [`action`].
    pub action: u8,
    /// `dead_peer_timeout` in seconds, 0 = off: a 24-bit little-endian
    /// number ([`ServicePolicy::dead_peer_timeout_s`]) in what was padding,
    /// so that the layout, and the pinned `POLICY` of an older version,
    /// stay as they were (an older version wrote zeros here: off).
    pub dead_peer: [u8; 3],
    /// Connections the service may hold at once; 0 = no cap.
    pub max_sessions: u32,
    /// `max_sessions - reserved_sessions`: sessions in use from which only
    /// reserve-list sources get in.
    pub open_sessions: u32,
}
const _: () = assert!(core::mem::size_of::<ServicePolicy>() == 32);
const _: () = assert!(core::mem::offset_of!(ServicePolicy, dead_peer) == 21);
const _: () = assert!(crate::keepalive::MAX_SECS < 1 << 24, "dead_peer holds every timeout");

impl ServicePolicy {
    /// `dead_peer_timeout` in seconds (`keepalive::Keepalive::of`); 0 = off.
    #[inline(always)]
    #[must_use]
    pub const fn dead_peer_timeout_s(&self) -> u32 {
        let d = self.dead_peer;
        u32::from_le_bytes([d[0], d[1], d[2], 0])
    }

    /// [`Self::dead_peer`] for a timeout of `secs` (0 = off), capped at
    /// `keepalive::MAX_SECS`.
    #[must_use]
    pub const fn dead_peer_bytes(secs: u32) -> [u8; 3] {
        let s = if secs > crate::keepalive::MAX_SECS { crate::keepalive::MAX_SECS } else { secs };
        let b = s.to_le_bytes();
        [b[0], b[1], b[2]]
    }
}

/// The service byte of a [`SourceKey`] that counts a source over all
/// services together (the source-wide budget): no service has id 0.
pub const ALL_SERVICES: u8 = 0;

/// A source of one service: the client address masked to the configured
/// prefix. IPv4 addresses sit in the first four bytes, the rest zero.
/// With service [`ALL_SERVICES`], the source over every service.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SourceKey {
    pub addr: [u8; 16],
    pub service: u8,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    pub pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<SourceKey>() == 20);

impl SourceKey {
    /// The key as the five native-endian words the pending-slot hash mixes.
    #[inline(always)]
    #[must_use]
    pub const fn words(&self) -> [u32; 5] {
        let a = &self.addr;
        [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            u32::from_ne_bytes([self.service, self.family, self.pad[0], self.pad[1]]),
        ]
    }
}

/// What the XDP program did with a packet; one counter column each.
/// `COUNTERS` is a per-CPU array indexed `service * Verdict::COUNT + verdict`,
/// where row 0 counts packets that are not for any service port.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// A SYN within every limit.
    Accepted = 0,
    RefusedDeny = 1,
    RefusedSessions = 2,
    RefusedReserve = 3,
    RefusedConcurrency = 4,
    RefusedRate = 5,
    /// A TCP segment other than a SYN to a service port.
    PassedNonSyn = 6,
    /// Anything not for a service port: other ports, other protocols,
    /// fragments, frames the parser does not understand (row 0 only).
    PassedOther = 7,
}

impl Verdict {
    pub const COUNT: u32 = 8;
    pub const ALL: [Self; 8] = [
        Self::Accepted,
        Self::RefusedDeny,
        Self::RefusedSessions,
        Self::RefusedReserve,
        Self::RefusedConcurrency,
        Self::RefusedRate,
        Self::PassedNonSyn,
        Self::PassedOther,
    ];

    /// Stable name used in `status --json` and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::RefusedDeny => "refused_deny",
            Self::RefusedSessions => "refused_sessions",
            Self::RefusedReserve => "refused_reserve",
            Self::RefusedConcurrency => "refused_concurrency",
            Self::RefusedRate => "refused_rate",
            Self::PassedNonSyn => "passed_non_syn",
            Self::PassedOther => "passed_other",
        }
    }

    /// Index into `COUNTERS` for `service` (0 = no service).
    #[inline(always)]
    #[must_use]
    pub const fn index(self, service: u32) -> u32 {
        service * Self::COUNT + self as u32
    }
}

/// Entries of `COUNTERS`.
pub const COUNTER_ENTRIES: u32 = (MAX_SERVICES + 1) * Verdict::COUNT;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid, padding explicit.
    unsafe impl aya::Pod for super::Globals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServicePolicy {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SourceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::pending::Slot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::handshake::Handshake {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::lists::ListEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_indices_are_distinct_and_in_range() {
        let mut seen = [false; COUNTER_ENTRIES as usize];
        for service in 0..=MAX_SERVICES {
            for v in Verdict::ALL {
                let i = v.index(service) as usize;
                assert!(i < seen.len());
                assert!(!seen[i], "index {i} used twice");
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn dead_peer_timeouts_read_back() {
        for secs in [0, 1, 5, 120, 65_535, 65_536, crate::keepalive::MAX_SECS] {
            let p = ServicePolicy { dead_peer: ServicePolicy::dead_peer_bytes(secs), ..ServicePolicy::default() };
            assert_eq!(p.dead_peer_timeout_s(), secs);
        }
        let over = ServicePolicy::dead_peer_bytes(crate::keepalive::MAX_SECS + 1);
        assert_eq!(ServicePolicy { dead_peer: over, ..ServicePolicy::default() }.dead_peer_timeout_s(), 86_400);
    }

    #[test]
    fn each_map_is_listed_once_with_a_writer() {
        for (i, m) in MAPS.iter().enumerate() {
            assert!(!m.writers.is_empty(), "{} has no writer", m.name);
            assert!(MAPS[..i].iter().all(|o| o.name != m.name), "{} is listed twice", m.name);
            assert!(!BENCH_MAPS.contains(&m.name), "{} is listed as a bench map too", m.name);
        }
    }
}
