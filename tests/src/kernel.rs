//! Writing kernel state the way the programs would, for tests and the bench
//! that need a source to hold connections without real sockets.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapError},
};
use limiter_common::{Globals, SourceKey, maps::names, pending};

/// The index of `key`'s `PENDING` slot under the loaded object's real mask.
///
/// # Errors
/// When a map is missing or unreadable.
pub fn slot_index(ebpf: &Ebpf, key: &SourceKey) -> Result<(u32, Globals), MapError> {
    let globals: Array<_, Globals> =
        Array::try_from(ebpf.map(names::GLOBALS).ok_or(MapError::InvalidName { name: names::GLOBALS.into() })?)?;
    let g = globals.get(&0, 0)?;
    #[expect(clippy::cast_possible_truncation, reason = "masked to the slot count")]
    let index = (pending::hash(key.words()) & u64::from(g.pending_mask)) as u32;
    Ok((index, g))
}

/// `key`'s `PENDING` slot.
///
/// # Errors
/// When a map is missing or unreadable.
pub fn slot(ebpf: &Ebpf, key: &SourceKey) -> Result<pending::Slot, MapError> {
    let (index, _) = slot_index(ebpf, key)?;
    let slots: Array<_, pending::Slot> =
        Array::try_from(ebpf.map(names::PENDING).ok_or(MapError::InvalidName { name: names::PENDING.into() })?)?;
    slots.get(&index, 0)
}

/// Makes `key` hold `n` established connections as `sock_ops` would have
/// counted them: `CONNS[key] = n` and the slot's connection sum moved by
/// the difference (XDP skips `CONNS` for a slot whose sum is zero).
///
/// # Errors
/// When a map is missing or unwritable.
pub fn set_established(ebpf: &mut Ebpf, key: SourceKey, n: u64) -> Result<(), MapError> {
    let (index, _) = slot_index(ebpf, &key)?;
    let mut conns: HashMap<_, SourceKey, u64> =
        HashMap::try_from(ebpf.map_mut(names::CONNS).ok_or(MapError::InvalidName { name: names::CONNS.into() })?)?;
    let old = conns.get(&key, 0).unwrap_or(0);
    conns.insert(key, n, 0)?;
    let mut slots: Array<_, pending::Slot> =
        Array::try_from(ebpf.map_mut(names::PENDING).ok_or(MapError::InvalidName { name: names::PENDING.into() })?)?;
    let mut s = slots.get(&index, 0)?;
    // As `sock_ops` counts and closes, one connection at a time.
    let fingerprint = pending::fingerprint(pending::hash(key.words()));
    for _ in old..n {
        s.conns = pending::holders::add(s.conns, fingerprint, 1);
    }
    for _ in n..old {
        s.conns = pending::holders::closed(s.conns).unwrap_or(s.conns);
    }
    slots.set(index, s, 0)
}

/// Sets service `id`'s established sessions (`SESSIONS`), as `sock_ops`
/// would hold them with `n` connections open.
pub fn set_sessions(ebpf: &mut Ebpf, id: u32, n: u64) -> Result<(), MapError> {
    let mut sessions: Array<_, u64> =
        Array::try_from(ebpf.map_mut(names::SESSIONS).ok_or(MapError::InvalidName { name: names::SESSIONS.into() })?)?;
    sessions.set(limiter_common::pool::index(id, limiter_common::pool::ESTABLISHED), n, 0)
}

/// The address of the `i`th of the sources the benches put into `CONNS` as held: the first 65,536 IPv4 hosts
/// from 198.18.16.0 (to 198.19.15.255), then IPv6 /64s counting up from `2001:db8:4000::/64`. Map keys only,
/// never sent, and inside the test ranges anyway. Returns the address bytes and the family.
#[must_use]
pub fn held_source(i: u32) -> ([u8; 16], u8) {
    use limiter_common::maps::family;
    let mut addr = [0u8; 16];
    if i < 65_536 {
        addr[..4].copy_from_slice(&(u32::from(std::net::Ipv4Addr::new(198, 18, 16, 0)) + i).to_be_bytes());
        (addr, family::V4)
    } else {
        addr[..8].copy_from_slice(&(0x2001_0db8_4000_0000_u64 + u64::from(i - 65_536)).to_be_bytes());
        (addr, family::V6)
    }
}
