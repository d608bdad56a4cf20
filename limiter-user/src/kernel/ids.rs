//! Stable service ids. The kernel keys every count by a service's id
//! (`CONNS`, `SESSIONS`, `SOCKS`, `SEEDED`, `PORTS`, `POLICY`), so an id must
//! follow its service's name across reorders, reloads, restarts and
//! upgrades. The name -> id table lives in the pinned `SERVICES` map, next to
//! the counts it names: a restart finds both, `limiter unload` removes both.
//!
//! A removed service's id is *retired*: no other service gets it while any
//! connection counted under it remains; the daemon's reclaim pass frees it
//! after. Pins from a version without the table start from an empty one,
//! which gives ids by position, as that version did.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use limiter_common::{
    SourceKey,
    maps::{MAX_SERVICES, SERVICE_NAME_BYTES, ServiceRecord, SockRecord, names, service_state},
    pool,
};

pub use crate::kernel::error::IdError;
use crate::{
    kernel::{
        counters::read_sessions,
        error::LoadError,
        maps::{map_err, own, read},
    },
    policy::model::Policy,
};

/// One id's owner as the daemon works with it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// One of [`service_state`].
    pub state: u8,
    pub name: String,
}

/// `SERVICES` as read: index = id (entry 0 unused).
pub type Table = Vec<Entry>;

/// An empty table: every id free.
#[must_use]
pub fn empty() -> Table {
    vec![Entry::default(); MAX_SERVICES as usize + 1]
}

/// Refuses a name the table cannot hold (before anything is loaded).
pub fn check_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), IdError> {
    for name in names {
        if name.len() > SERVICE_NAME_BYTES {
            return Err(IdError::NameTooLong { name: name.to_owned(), len: name.len() });
        }
    }
    Ok(())
}

/// The ids for `services` (in order) and the table that records them.
///
/// A service keeps the id its name has (an active or a retired one: a
/// service removed and added back finds its counts again); a new service
/// takes the lowest free id; a service no longer listed is retired. A
/// retired id is freed first if `in_use(id)` says nothing is counted under it.
/// `in_use` is only called for retired ids.
pub fn assign(table: &Table, services: &[&str], in_use: impl Fn(u32) -> bool) -> Result<(Vec<u32>, Table), IdError> {
    check_names(services.iter().copied())?;
    let mut new = table.clone();
    new.resize(MAX_SERVICES as usize + 1, Entry::default());
    new[0] = Entry::default();
    for (id, e) in (0u32..).zip(new.iter_mut()).skip(1) {
        if e.state == service_state::RETIRED && !services.contains(&e.name.as_str()) && !in_use(id) {
            *e = Entry::default();
        }
    }
    let mut ids = vec![0u32; services.len()];
    for (i, name) in services.iter().enumerate() {
        if let Some(id) = (1..new.len()).find(|&id| new[id].state != service_state::FREE && new[id].name == *name) {
            new[id].state = service_state::ACTIVE;
            ids[i] = u32::try_from(id).unwrap_or(0);
        }
    }
    for e in new.iter_mut().skip(1) {
        if e.state == service_state::ACTIVE && !services.contains(&e.name.as_str()) {
            // Even with nothing counted now, a handshake admitted under the
            // old policy may still complete: the reclaim pass frees it later.
            e.state = service_state::RETIRED;
        }
    }
    for (i, name) in services.iter().enumerate() {
        if ids[i] != 0 {
            continue;
        }
        let Some(id) = (1..new.len()).find(|&id| new[id].state == service_state::FREE) else {
            let retired = new.iter().filter(|e| e.state == service_state::RETIRED).count();
            return Err(IdError::NoFreeId { name: (*name).to_owned(), retired });
        };
        new[id] = Entry { state: service_state::ACTIVE, name: (*name).to_owned() };
        ids[i] = u32::try_from(id).unwrap_or(0);
    }
    Ok((ids, new))
}

/// Frees the retired ids nothing is counted under; returns their names.
pub fn free_unused(table: &mut Table, in_use: impl Fn(u32) -> bool) -> Vec<(u32, String)> {
    let mut freed = Vec::new();
    for (id, e) in (0u32..).zip(table.iter_mut()).skip(1) {
        if e.state == service_state::RETIRED && !in_use(id) {
            freed.push((id, std::mem::take(e).name));
        }
    }
    freed
}

fn record(e: &Entry) -> ServiceRecord {
    let mut r = ServiceRecord { state: e.state, ..ServiceRecord::default() };
    let n = e.name.len().min(SERVICE_NAME_BYTES);
    r.name[..n].copy_from_slice(&e.name.as_bytes()[..n]);
    r.len = u8::try_from(n).unwrap_or(0);
    r
}

fn entry(r: &ServiceRecord) -> Entry {
    let n = usize::from(r.len).min(SERVICE_NAME_BYTES);
    let state = if r.state > service_state::RETIRED { service_state::RETIRED } else { r.state };
    Entry { state, name: String::from_utf8_lossy(&r.name[..n]).into_owned() }
}

/// Which ids something is counted under: a source's connections (`CONNS`,
/// `SEEDED`), the service's sessions, or an open connection's record (`SOCKS`).
pub fn usage(ebpf: &Ebpf) -> Result<Vec<bool>, LoadError> {
    let mut used = vec![false; MAX_SERVICES as usize + 1];
    let mut mark = |service: u32| {
        if let Some(u) = used.get_mut(service as usize) {
            *u = true;
        }
    };
    for name in [names::CONNS, names::SEEDED] {
        let m: HashMap<&MapData, SourceKey, u64> = read(ebpf, name)?;
        for (key, n) in m.iter().filter_map(Result::ok) {
            if n > 0 {
                mark(u32::from(key.service));
            }
        }
    }
    let sessions = read_sessions(ebpf)?;
    for id in 1..=MAX_SERVICES {
        let at = |kind| sessions.get(pool::index(id, kind) as usize).copied().unwrap_or(0);
        if at(pool::ESTABLISHED) > 0 || at(pool::SEEDED) > 0 {
            mark(id);
        }
    }
    let socks: HashMap<&MapData, u64, SockRecord> = read(ebpf, names::SOCKS)?;
    for (_, rec) in socks.iter().filter_map(Result::ok) {
        mark(u32::from(rec.key.service));
    }
    Ok(used)
}

/// The writer of `SERVICES`, the pinned name -> id table.
pub struct ServiceTable {
    map: Array<MapData, ServiceRecord>,
}

impl ServiceTable {
    /// Takes the table's handle on `SERVICES`.
    pub fn new(ebpf: &Ebpf) -> Result<Self, LoadError> {
        Ok(Self { map: own(ebpf, names::SERVICES)? })
    }

    /// The table as `SERVICES` holds it.
    pub fn read(&self) -> Result<Table, LoadError> {
        (0..=MAX_SERVICES).map(|id| self.map.get(&id, 0).map(|r| entry(&r)).map_err(map_err(names::SERVICES))).collect()
    }

    /// Writes the records of `table` that differ from `SERVICES`.
    pub fn write(&mut self, table: &Table) -> Result<(), LoadError> {
        for (id, e) in (0u32..).zip(table) {
            let want = record(e);
            if self.map.get(&id, 0).map_err(map_err(names::SERVICES))? != want {
                self.map.set(id, want, 0).map_err(map_err(names::SERVICES))?;
            }
        }
        Ok(())
    }

    /// Gives `policy`'s services their ids from the pinned table (recording
    /// new and removed ones there first, before any policy uses them; `ebpf`
    /// is read for what is counted under retired ids). Returns the table as
    /// it was, for [`Self::write`] to put back if the policy is not applied.
    pub fn apply(&mut self, ebpf: &Ebpf, policy: &mut Policy) -> Result<Table, LoadError> {
        let old = self.read()?;
        let used = if old.iter().any(|e| e.state == service_state::RETIRED) { usage(ebpf)? } else { Vec::new() };
        let names: Vec<&str> = policy.services.iter().map(|s| s.name.as_str()).collect();
        let (ids, table) = assign(&old, &names, |id| used.get(id as usize).copied().unwrap_or(true))?;
        for (id, e) in (0u32..).zip(&table) {
            let was = old.get(id as usize);
            if e.state == service_state::RETIRED && was.is_some_and(|w| w.state == service_state::ACTIVE) {
                log::info!(
                    "service '{}' removed: its id {id} is kept for it until the connections counted under it close",
                    e.name
                );
            }
        }
        self.write(&table)?;
        for (s, id) in policy.services.iter_mut().zip(ids) {
            s.id = id;
        }
        Ok(old)
    }

    /// Frees the ids of removed services whose last connection has closed
    /// (the daemon's reclaim pass); returns how many.
    pub fn reclaim(&mut self, ebpf: &Ebpf) -> Result<usize, LoadError> {
        let mut table = self.read()?;
        if !table.iter().any(|e| e.state == service_state::RETIRED) {
            return Ok(0);
        }
        let used = usage(ebpf)?;
        let freed = free_unused(&mut table, |id| used.get(id as usize).copied().unwrap_or(true));
        if freed.is_empty() {
            return Ok(0);
        }
        self.write(&table)?;
        for (id, name) in &freed {
            log::info!("service id {id} (removed service '{name}') is free again: nothing is counted under it");
        }
        Ok(freed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(table: &Table, names: &[&str], used: &[u32]) -> (Vec<u32>, Table) {
        assign(table, names, |id| used.contains(&id)).expect("assign")
    }

    fn state(t: &Table, id: usize) -> (u8, &str) {
        (t[id].state, t[id].name.as_str())
    }

    #[test]
    fn empty_table_assigns_by_position() {
        let (got, t) = ids(&empty(), &["smtp", "imap", "pop3"], &[]);
        assert_eq!(got, [1, 2, 3], "as the version without the table did");
        assert_eq!(state(&t, 2), (service_state::ACTIVE, "imap"));
        assert_eq!(state(&t, 0), (service_state::FREE, ""), "id 0 is never used");
    }

    #[test]
    fn a_reorder_keeps_every_id() {
        let (_, t) = ids(&empty(), &["smtp", "imap"], &[]);
        let (got, t2) = ids(&t, &["imap", "smtp"], &[]);
        assert_eq!(got, [2, 1]);
        assert_eq!(t2, t, "nothing to write");
    }

    #[test]
    fn a_removed_service_is_retired_and_a_new_one_skips_its_id() {
        let (_, t) = ids(&empty(), &["smtp", "imap", "pop3"], &[]);
        // imap removed, ftp added: ftp must not get imap's id 2, even with
        // nothing counted under it yet (a handshake may still complete).
        let (got, t) = ids(&t, &["smtp", "pop3", "ftp"], &[]);
        assert_eq!(got, [1, 3, 4]);
        assert_eq!(state(&t, 2), (service_state::RETIRED, "imap"));
        // While connections remain under id 2 it stays retired.
        let (got, t) = ids(&t, &["smtp", "pop3", "ftp", "x"], &[2]);
        assert_eq!(got, [1, 3, 4, 5]);
        assert_eq!(state(&t, 2), (service_state::RETIRED, "imap"));
        // Once they are gone, the id is free for the next new service.
        let (got, t) = ids(&t, &["smtp", "pop3", "ftp", "x", "y"], &[]);
        assert_eq!(got, [1, 3, 4, 5, 2]);
        assert_eq!(state(&t, 2), (service_state::ACTIVE, "y"));
    }

    #[test]
    fn a_service_added_back_finds_its_retired_id() {
        let (_, t) = ids(&empty(), &["smtp", "imap"], &[]);
        let (_, t) = ids(&t, &["smtp"], &[2]);
        let (got, t) = ids(&t, &["imap", "smtp", "pop3"], &[2]);
        assert_eq!(got, [2, 1, 3]);
        assert_eq!(state(&t, 2), (service_state::ACTIVE, "imap"));
    }

    #[test]
    fn free_unused_frees_only_retired_ids_without_connections() {
        let (_, t) = ids(&empty(), &["a", "b", "c"], &[]);
        let (_, mut t) = ids(&t, &["b"], &[]);
        let freed = free_unused(&mut t, |id| id == 3);
        assert_eq!(freed, [(1, "a".to_owned())]);
        assert_eq!(state(&t, 1), (service_state::FREE, ""));
        assert_eq!(state(&t, 2), (service_state::ACTIVE, "b"));
        assert_eq!(state(&t, 3), (service_state::RETIRED, "c"));
    }

    #[test]
    fn running_out_of_ids_and_long_names_are_errors() {
        let names: Vec<String> = (0..MAX_SERVICES).map(|i| format!("s{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (_, t) = ids(&empty(), &refs, &[]);
        // One removed with connections open: a new one has no id to take.
        let mut fewer = refs[1..].to_vec();
        fewer.push("new");
        let e = assign(&t, &fewer, |_| true).expect_err("no free id");
        assert_eq!(e, IdError::NoFreeId { name: "new".into(), retired: 1 });
        let long = "x".repeat(SERVICE_NAME_BYTES + 1);
        let e = assign(&empty(), &[long.as_str()], |_| false).expect_err("too long");
        assert!(e.to_string().contains("at most 32"), "{e}");
        let (got, _) = ids(&empty(), &["x".repeat(SERVICE_NAME_BYTES).as_str()], &[]);
        assert_eq!(got, [1]);
    }

    #[test]
    fn records_round_trip() {
        let e = Entry { state: service_state::RETIRED, name: "submission".into() };
        assert_eq!(entry(&record(&e)), e);
        assert_eq!(entry(&ServiceRecord::default()), Entry::default());
    }
}
