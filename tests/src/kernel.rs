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
    s.conns = (s.conns + n).saturating_sub(old);
    slots.set(index, s, 0)
}
