//! The user-side writer of `CONNS`: it only deletes idle entries
//! (`sock_ops` creates and counts them).

use std::{
    collections::HashSet,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use limiter_common::{SourceKey, maps::names};

use crate::kernel::{
    batch,
    error::LoadError,
    maps::{map_size, own},
};

/// Reclaims `CONNS` entries that have stayed at zero for a whole pass
/// interval, so a busy host's table does not fill with sources that once
/// held a connection (a full table means new sources go uncounted).
/// `sock_ops` never deletes (that would race with its own increments); it
/// re-checks its entry after each increment, so a deletion that lands
/// between its lookup and its add is seen and the add redone.
pub struct Reclaimer {
    conns: HashMap<MapData, SourceKey, u64>,
    /// The same map, for reading it in batches: a pass reads every entry,
    /// and with a million sources a walk key by key took seconds of the
    /// daemon's thread every pass.
    fd: OwnedFd,
    capacity: u32,
    /// Entries at zero in the previous pass.
    idle: HashSet<SourceKey>,
}

/// What one reclaim pass did and saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimPass {
    pub deleted: usize,
    /// Entries left, and the table's size.
    pub entries: usize,
    pub capacity: u32,
}

impl Reclaimer {
    /// Takes the reclaimer's handle on `CONNS`.
    pub fn new(ebpf: &Ebpf) -> Result<Self, LoadError> {
        let Some(aya::maps::Map::HashMap(data)) = ebpf.map(names::CONNS) else {
            return Err(LoadError::MissingMap(names::CONNS));
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| LoadError::Handle { name: names::CONNS, source })?;
        Ok(Self { conns: own(ebpf, names::CONNS)?, fd, capacity: map_size(ebpf, names::CONNS)?, idle: HashSet::new() })
    }

    /// Deletes the entries that were at zero in this pass and the last.
    pub fn pass(&mut self) -> Result<ReclaimPass, LoadError> {
        let (conns, capacity) = (&mut self.conns, self.capacity);
        let all: Vec<(SourceKey, u64)> = match batch::map_entries(self.fd.as_fd()) {
            Ok(Some(all)) => all,
            // A kernel without batch look-ups, or a failed read: the walk.
            Ok(None) | Err(_) => conns.iter().filter_map(Result::ok).collect(),
        };
        let mut idle = HashSet::new();
        let mut deleted = 0;
        for (key, n) in &all {
            if *n != 0 {
                continue;
            }
            // Zero now and a pass ago; read once more right before deleting.
            if self.idle.contains(key) && conns.get(key, 0).is_ok_and(|n| n == 0) && conns.remove(key).is_ok() {
                deleted += 1;
            } else {
                idle.insert(*key);
            }
        }
        self.idle = idle;
        Ok(ReclaimPass { deleted, entries: all.len() - deleted, capacity })
    }
}
