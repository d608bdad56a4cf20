//! The refusal-event path under timing: a token for every packet, and the
//! ring drained between chunks, outside the timed region (outside the bench
//! the budget allows 640 events per second and CPU; the rest of a flood
//! takes the exhausted-budget path `limiter_refuse` times).

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuValues, RingBuf},
};
use limiter_common::{events, maps::names};

use crate::Result;

/// Refusals timed between two drains: well under the ring's 8,192 records,
/// so every one is reported and none meets a full ring.
pub(crate) const CHUNK: u32 = 4_096;

/// Reads every record in the ring; returns how many there were.
pub(crate) fn drain(ring: &mut RingBuf<MapData>) -> u64 {
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += u64::from(item.len() >= size_of::<events::Refusal>());
    }
    n
}

/// Sets every CPU's event tokens to `tokens`.
pub(crate) fn set_tokens(ebpf: &mut Ebpf, tokens: u64) -> Result<()> {
    let mut m: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map_mut(names::EVENT_BUDGET).ok_or("no EVENT_BUDGET map")?)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    m.set(events::TOKENS, PerCpuValues::try_from(vec![tokens; cpus])?, 0)?;
    Ok(())
}

/// Refusals the program could not report (no token, or the ring full), all CPUs.
pub(crate) fn unreported(ebpf: &Ebpf) -> Result<u64> {
    let m: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map(names::EVENT_BUDGET).ok_or("no EVENT_BUDGET map")?)?;
    Ok(m.get(&events::UNREPORTED, 0)?.iter().sum())
}
