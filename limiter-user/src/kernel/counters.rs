//! Reading what the programs counted into typed values: verdict counters,
//! sessions, established connections per source and service. Read-only:
//! these functions never write a map.

use std::{collections::HashMap as StdHashMap, os::fd::AsFd as _};

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
        batch,
        error::LoadError,
        maps::{batch_err, map_err, read},
    },
    policy::model::Policy,
};

/// Per-service verdict counters summed over CPUs; row 0 is "no service".
pub fn read_counters(ebpf: &Ebpf) -> Result<Vec<[u64; Verdict::COUNT as usize]>, LoadError> {
    read_rows(ebpf, names::COUNTERS)
}

/// Established connections `sock_ops` could not count because `CONNS` was
/// full, since the programs were loaded (summed over CPUs).
pub fn read_uncounted(ebpf: &Ebpf) -> Result<u64, LoadError> {
    let m: PerCpuArray<&MapData, u64> = read(ebpf, names::UNCOUNTED)?;
    Ok(m.get(&0, 0).map_err(map_err(names::UNCOUNTED))?.iter().sum())
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

/// Established connections per source, as `CONNS` and `SEEDED` hold them
/// now: read once for a report (two batch reads; see `kernel::batch`), and
/// every figure of the report taken from that one reading.
pub struct Held {
    conns: Vec<(SourceKey, u64)>,
    seeded: Vec<(SourceKey, u64)>,
}

impl Held {
    pub fn read(ebpf: &Ebpf) -> Result<Self, LoadError> {
        Ok(Self { conns: entries(ebpf, names::CONNS)?, seeded: entries(ebpf, names::SEEDED)? })
    }

    /// The count of each source `keep` keeps, `CONNS` and `SEEDED` added up.
    fn every(&self, keep: impl Fn(&SourceKey) -> bool) -> Vec<(SourceKey, u64)> {
        if self.seeded.is_empty() {
            return self.conns.iter().filter(|(k, _)| keep(k)).copied().collect();
        }
        let mut all: StdHashMap<SourceKey, u64> = StdHashMap::with_capacity(self.conns.len());
        for (key, n) in self.conns.iter().chain(&self.seeded).filter(|(k, _)| keep(k)) {
            *all.entry(*key).or_default() += n;
        }
        all.into_iter().collect()
    }

    /// Every source of a service with established connections (counted by
    /// `sock_ops` in `CONNS`, or seeded in `SEEDED`), with their number, zero
    /// included; the sources over all services are [`Self::sources_all`]'s.
    #[must_use]
    pub fn sources(&self) -> Vec<(SourceKey, u64)> {
        self.every(|k| k.service != ALL_SERVICES)
    }

    /// Every source's connections over all services together (the keys with
    /// service `ALL_SERVICES`, the source-wide budget's counts).
    #[must_use]
    pub fn sources_all(&self) -> StdHashMap<SourceKey, u64> {
        self.every(|k| k.service == ALL_SERVICES).into_iter().collect()
    }

    /// The counts of `keys` alone (those with an entry), `CONNS` and
    /// `SEEDED` added up: one pass, without a map of every source.
    #[must_use]
    pub fn counts_of(&self, keys: impl IntoIterator<Item = SourceKey>) -> StdHashMap<SourceKey, u64> {
        let wanted: std::collections::HashSet<SourceKey> = keys.into_iter().collect();
        let mut found: StdHashMap<SourceKey, u64> = StdHashMap::with_capacity(wanted.len());
        for (key, n) in self.conns.iter().chain(&self.seeded).filter(|(k, _)| wanted.contains(k)) {
            *found.entry(*key).or_default() += n;
        }
        found
    }

    /// Established connections per service id, summed over sources.
    #[must_use]
    pub fn by_service(&self) -> Vec<u64> {
        let mut per_service = vec![0u64; MAX_SERVICES as usize + 1];
        for (key, count) in self.conns.iter().chain(&self.seeded) {
            if key.service != ALL_SERVICES
                && let Some(slot) = per_service.get_mut(usize::from(key.service))
            {
                *slot += count;
            }
        }
        per_service
    }

    /// Sources of a service with an entry in `CONNS` (at zero or not): the
    /// map's entries but those counting a source over all services.
    #[must_use]
    pub fn tracked(&self) -> u64 {
        self.conns.iter().filter(|(k, _)| k.service != ALL_SERVICES).count() as u64
    }

    /// Entries in `CONNS` and in `SEEDED`.
    #[must_use]
    pub fn entries(&self) -> (u64, u64) {
        (self.conns.len() as u64, self.seeded.len() as u64)
    }
}

/// Every entry of the hash map `name`: in batches where the kernel can,
/// else key by key.
pub fn entries<K: aya::Pod + Default, V: aya::Pod + Default>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<Vec<(K, V)>, LoadError> {
    let m: HashMap<&MapData, K, V> = read(ebpf, name)?;
    let syscall = batch_err(name);
    let fd = ebpf.map(name).and_then(|map| match map {
        aya::maps::Map::HashMap(d) => Some(d.fd().as_fd()),
        _ => None,
    });
    if let Some(fd) = fd
        && let Some(all) = batch::map_entries(fd).map_err(syscall)?
    {
        return Ok(all);
    }
    m.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(name))
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
