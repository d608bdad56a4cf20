//! Reading what the programs would read for one client address (`limiter
//! explain`): `GLOBALS`, the `POLICY` bank in force, the list entries
//! covering the address (`LIST_HOSTS`, `LISTS`), and per source key `CONNS`, `SEEDED`, its `PENDING`
//! slots and the service's `SESSIONS` words. Read-only: nothing is written.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, lpm_trie::LpmTrie},
};
use limiter_common::{
    Globals, ServicePolicy, SourceKey,
    bucket::slot,
    lists::{KEY_BYTES, ListEntry, key_data, key_len},
    maps::{bank, family, flags, host_len, layout, names, policy_index},
    pending::{self, Slot},
    pool,
    prefix::{Prefix, mask_v4, mask_v6},
};

use crate::kernel::{
    error::LoadError,
    maps::{map_err, read},
};

/// `GLOBALS[0]` as the programs read it.
pub fn globals(ebpf: &Ebpf) -> Result<Globals, LoadError> {
    let m: Array<&MapData, Globals> = read(ebpf, names::GLOBALS)?;
    m.get(&0, 0).map_err(map_err(names::GLOBALS))
}

/// The policy in force of service `id` (the bank `g` names).
pub fn service_policy(ebpf: &Ebpf, g: &Globals, id: u32) -> Result<ServicePolicy, LoadError> {
    let m: Array<&MapData, ServicePolicy> = read(ebpf, names::POLICY)?;
    m.get(&policy_index(bank(g.flags), id), 0).map_err(map_err(names::POLICY))
}

/// The source key of `addr` for service `id`, as XDP makes it: the address
/// masked to the prefix length of its family (`GLOBALS`' for what is in
/// force); an IPv4-mapped IPv6 address is IPv4.
#[must_use]
pub fn source_key(addr: std::net::IpAddr, id: u32, ipv4_prefix: u8, ipv6_prefix: u8) -> SourceKey {
    let mut key = SourceKey { addr: [0; 16], service: u8::try_from(id).unwrap_or(0), family: family::V4, pad: [0; 2] };
    match addr.to_canonical() {
        std::net::IpAddr::V4(a) => key.addr[..4].copy_from_slice(&mask_v4(a.octets(), ipv4_prefix)),
        std::net::IpAddr::V6(a) => {
            key.family = family::V6;
            key.addr = mask_v6(a.octets(), ipv6_prefix);
        }
    }
    key
}

/// The `LISTS` entries of the bank in force that cover `addr`, longest
/// first: the first is the one XDP's lookup finds. Empty when the flags say
/// the lists in force hold nothing for the family (XDP then skips the lookup).
/// Walks the trie's keys (one syscall each): for a command, not a hot path.
pub fn covering_entries(
    ebpf: &Ebpf,
    g: &Globals,
    addr: std::net::IpAddr,
) -> Result<Vec<(Prefix, ListEntry)>, LoadError> {
    let host = Prefix::new(addr.to_canonical(), 128);
    let flag = if host.family == family::V4 { flags::LISTS } else { flags::LISTS_V6 };
    if g.flags & flag == 0 {
        return Ok(Vec::new());
    }
    let trie: LpmTrie<&MapData, [u8; KEY_BYTES], ListEntry> = read(ebpf, names::LISTS)?;
    let in_force = bank(g.flags);
    let mut out = Vec::new();
    if let Some(e) = host_entry(ebpf, g, &host)? {
        out.push((Prefix { len: host_len(host.family), ..host }, e));
    }
    for key in trie.keys() {
        let key = key.map_err(map_err(names::LISTS))?;
        let data = key.data();
        let Some(bits) = key.prefix_len().checked_sub(16).and_then(|b| u8::try_from(b).ok()) else { continue };
        if data[0] != in_force || data[1] != host.family {
            continue;
        }
        let mut a = [0u8; 16];
        a.copy_from_slice(&data[2..]);
        let p = Prefix { family: host.family, addr: a, len: bits };
        if !p.covers(&host) {
            continue;
        }
        match trie.get(&key, 0) {
            Ok(e) => out.push((p, e)),
            // Removed by a policy write since the walk saw it.
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(names::LISTS)(e)),
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0.len));
    Ok(out)
}

/// The entry XDP's lookup finds for `addr` (the trie's longest match), read
/// with the lookup XDP makes.
pub fn list_lookup(ebpf: &Ebpf, g: &Globals, addr: std::net::IpAddr) -> Result<Option<ListEntry>, LoadError> {
    let host = Prefix::new(addr.to_canonical(), 128);
    let flag = if host.family == family::V4 { flags::LISTS } else { flags::LISTS_V6 };
    if g.flags & flag == 0 {
        return Ok(None);
    }
    if let Some(e) = host_entry(ebpf, g, &host)? {
        return Ok(Some(e));
    }
    let trie: LpmTrie<&MapData, [u8; KEY_BYTES], ListEntry> = read(ebpf, names::LISTS)?;
    let bits = if host.family == family::V4 { 32 } else { 128 };
    let key = aya::maps::lpm_trie::Key::new(key_len(bits), key_data(bank(g.flags), host.family, &host.addr));
    match trie.get(&key, 0) {
        Ok(e) => Ok(Some(e)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(map_err(names::LISTS)(e)),
    }
}

/// What the maps hold for one source key: its connections, its `PENDING`
/// slot (handshakes in flight) and the rate word XDP would spend from.
/// One function per key, so a key of another kind (a source-wide one) reads
/// the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceState {
    /// `CONNS[key]`: established connections `sock_ops` counted.
    pub conns: u64,
    /// `SEEDED[key]`: connections open before the first start, still open.
    pub seeded: u64,
    /// The slot's reservation word and the key's tag in it.
    pub reserved: u64,
    pub tag: u16,
    /// The rate word of the key's set that XDP would use (`slot::choose`).
    pub rate: u64,
}

impl SourceState {
    /// Established connections as XDP counts them (seeded ones only while
    /// `flags.SEEDED` is set, as XDP adds them).
    #[must_use]
    pub const fn established(&self, g: &Globals) -> u64 {
        if g.flags & flags::SEEDED == 0 { self.conns } else { self.conns + self.seeded }
    }
}

/// Reads one source key's state.
pub fn source_state(ebpf: &Ebpf, g: &Globals, key: &SourceKey) -> Result<SourceState, LoadError> {
    let count = |name: &'static str| -> Result<u64, LoadError> {
        let m: HashMap<&MapData, SourceKey, u64> = read(ebpf, name)?;
        match m.get(key, 0) {
            Ok(n) => Ok(n),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(e) => Err(map_err(name)(e)),
        }
    };
    let (conns, seeded) = (count(names::CONNS)?, count(names::SEEDED)?);
    let hash = pending::hash(key.words());
    let (_, tag) = pending::slot_of(hash, 1);
    #[expect(clippy::cast_possible_truncation, reason = "masked to the slot count")]
    let index = (hash & u64::from(g.pending_mask)) as u32;
    let m: Array<&MapData, Slot> = read(ebpf, names::PENDING)?;
    let at = |i: u32| m.get(&i, 0).map_err(map_err(names::PENDING));
    let own = at(index)?;
    let (a, b) = (at(index & !1)?.rate, at(index | 1)?.rate);
    let rate = if slot::choose(a, b, tag) == 0 { a } else { b };
    Ok(SourceState { conns, seeded, reserved: own.reserved, tag, rate })
}

/// Service `id`'s `SESSIONS` words: (handshakes in flight, established, seeded).
pub fn sessions(ebpf: &Ebpf, id: u32) -> Result<(u64, u64, u64), LoadError> {
    let m: Array<&MapData, u64> = read(ebpf, names::SESSIONS)?;
    let at = |field| m.get(&pool::index(id, field), 0).map_err(map_err(names::SESSIONS));
    Ok((at(pool::PENDING)?, at(pool::ESTABLISHED)?, at(pool::SEEDED)?))
}

/// The kernel's coarse monotonic clock, the one the programs read
/// (`bpf_ktime_get_coarse_ns`), in nanoseconds.
#[must_use]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The host entry of `host` in the bank in force, when the bank keeps its
/// host entries in `LIST_HOSTS` (`layout::HOSTS`; else the trie has them).
fn host_entry(ebpf: &Ebpf, g: &Globals, host: &Prefix) -> Result<Option<ListEntry>, LoadError> {
    if g.layout & layout::HOSTS == 0 {
        return Ok(None);
    }
    let hosts: HashMap<&MapData, [u8; KEY_BYTES], ListEntry> = read(ebpf, names::LIST_HOSTS)?;
    match hosts.get(&key_data(bank(g.flags), host.family, &host.addr), 0) {
        Ok(e) => Ok(Some(e)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(map_err(names::LIST_HOSTS)(e)),
    }
}
