//! Reading what the programs counted into typed values: verdict counters,
//! sessions, established connections per source and service. Read-only:
//! these functions never write a map.

use std::collections::HashMap as StdHashMap;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
};
use limiter_common::{
    SourceKey, Verdict,
    maps::{ALL_SERVICES, MAX_SERVICES, family, names},
};

use crate::{
    kernel::{
        error::LoadError,
        maps::{map_err, read},
    },
    policy::model::Policy,
};

/// Per-service verdict counters summed over CPUs; row 0 is "no service".
pub fn read_counters(ebpf: &Ebpf) -> Result<Vec<[u64; Verdict::COUNT as usize]>, LoadError> {
    read_rows(ebpf, names::COUNTERS)
}

/// What observe mode (`action = "log"`) would have refused, laid out like
/// [`read_counters`].
pub fn read_observed(ebpf: &Ebpf) -> Result<Vec<[u64; Verdict::COUNT as usize]>, LoadError> {
    read_rows(ebpf, names::OBSERVED)
}

fn read_rows(ebpf: &Ebpf, name: &'static str) -> Result<Vec<[u64; Verdict::COUNT as usize]>, LoadError> {
    let counters: PerCpuArray<&MapData, u64> = read(ebpf, name)?;
    let mut rows = vec![[0u64; Verdict::COUNT as usize]; MAX_SERVICES as usize + 1];
    for (service, row) in rows.iter_mut().enumerate() {
        for v in Verdict::ALL {
            let idx = v.index(u32::try_from(service).unwrap_or(0));
            let per_cpu = counters.get(&idx, 0).map_err(map_err(name))?;
            row[v as usize] = per_cpu.iter().sum();
        }
    }
    Ok(rows)
}

/// Every entry of `SESSIONS` (index with `pool::index`).
pub fn read_sessions(ebpf: &Ebpf) -> Result<Vec<u64>, LoadError> {
    let m: Array<&MapData, u64> = read(ebpf, names::SESSIONS)?;
    m.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(names::SESSIONS))
}

/// Established connections per service id, summed over sources.
pub fn connections_by_service(ebpf: &Ebpf) -> Result<Vec<u64>, LoadError> {
    let mut per_service = vec![0u64; MAX_SERVICES as usize + 1];
    for (key, count) in sources(ebpf)? {
        if let Some(slot) = per_service.get_mut(usize::from(key.service)) {
            *slot += count;
        }
    }
    Ok(per_service)
}

/// Every source of a service with established connections (counted by
/// `sock_ops` in `CONNS`, or seeded in `SEEDED`), with their number; the
/// sources over all services (`ALL_SERVICES`) are [`sources_all`]'s.
pub fn sources(ebpf: &Ebpf) -> Result<Vec<(SourceKey, u64)>, LoadError> {
    let mut all = every_source(ebpf)?;
    all.retain(|(k, _)| k.service != ALL_SERVICES);
    Ok(all)
}

/// Every source's connections over all services together (the keys with
/// service `ALL_SERVICES`, the source-wide budget's counts).
pub fn sources_all(ebpf: &Ebpf) -> Result<StdHashMap<SourceKey, u64>, LoadError> {
    let mut all = every_source(ebpf)?;
    all.retain(|(k, _)| k.service == ALL_SERVICES);
    Ok(all.into_iter().collect())
}

fn every_source(ebpf: &Ebpf) -> Result<Vec<(SourceKey, u64)>, LoadError> {
    let mut all: StdHashMap<SourceKey, u64> = StdHashMap::new();
    for name in [names::CONNS, names::SEEDED] {
        let m: HashMap<&MapData, SourceKey, u64> = read(ebpf, name)?;
        for e in &m {
            let (key, n) = e.map_err(map_err(name))?;
            *all.entry(key).or_default() += n;
        }
    }
    Ok(all.into_iter().collect())
}

/// Sources of a service with an entry in `CONNS` (at zero or not): the
/// map's entries but those counting a source over all services.
pub fn sources_tracked(ebpf: &Ebpf) -> Result<u64, LoadError> {
    let m: HashMap<&MapData, SourceKey, u64> = read(ebpf, names::CONNS)?;
    Ok(m.keys().flatten().filter(|k| k.service != ALL_SERVICES).count() as u64)
}

/// A source as an admin reads it: `198.51.100.7`, `2001:db8:1:2::/64`.
pub fn source_string(key: &SourceKey, policy: &Policy) -> String {
    if key.family == family::V4 {
        let a = std::net::Ipv4Addr::new(key.addr[0], key.addr[1], key.addr[2], key.addr[3]);
        if policy.ipv4_prefix >= 32 { a.to_string() } else { format!("{a}/{}", policy.ipv4_prefix) }
    } else {
        let a = std::net::Ipv6Addr::from(key.addr);
        if policy.ipv6_prefix >= 128 { a.to_string() } else { format!("{a}/{}", policy.ipv6_prefix) }
    }
}

/// Established connections of one source (`CONNS` + `SEEDED`); `None` when
/// neither map has an entry for it (no handshake completed recently).
#[must_use]
pub fn connections_of(ebpf: &Ebpf, key: &SourceKey) -> Option<u64> {
    [names::CONNS, names::SEEDED]
        .into_iter()
        .filter_map(|name| read::<HashMap<&MapData, SourceKey, u64>>(ebpf, name).ok()?.get(key, 0).ok())
        .reduce(|a, b| a + b)
}
