//! Counting the connections that predate the programs. `sock_ops` sees a
//! connection only when its handshake completes, and the kernel never gives
//! a close callback for a socket that was already established when the
//! program was attached. So the daemon counts each such service connection
//! in `SEEDED` (and its service's seeded sessions), and takes one away when
//! that socket has left the socket table (`sock_diag`).
//!
//! Nothing about them is kept outside the kernel: the seeded set is always
//! rebuilt from the socket table, at every start while the pinned
//! `GLOBALS` says a seeding began (`flags::SEEDING`) or seeded sockets
//! remain (`flags::SEEDED`). A seeded socket is a service socket in the table
//! that `sock_ops` did not count: no `SOCKS` record, not in `SEED_SKIP`, on
//! a port that was a service port at the first seeding (`SEED_STATE`: a
//! connection on a port that became one later was established while
//! `sock_ops` ran, which chose not to count it, so neither does a rebuild).
//! Known limit: with `SOCKS` full (`SOCK_ENTRIES` connections), a counted
//! connection without a record would be seeded again at a restart.
//! A crash at any step is repaired by the next start, which writes only the
//! differences (no window with counts missing). Earlier versions kept the
//! set in `STATE_DIR/seeded`, which could be lost or go stale (a crash before
//! it was written, a full disk): the file is no longer read and is deleted.
//!
//! Double counting is ruled out by ordering: `flags::SEEDING` is set before
//! `sock_ops` is attached, and while it is set `sock_ops` notes the cookie
//! of every connection it counts in `SEED_SKIP`; the table is read first,
//! then the records and the skip set, so a handshake completing in between
//! is seen in them.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::IpAddr,
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use limiter_common::{
    SourceKey,
    maps::{MAX_SERVICES, SockRecord, family, flags, names, seed_state},
    pool,
    prefix::{mask_v4, mask_v6},
};

use crate::{
    failpoint,
    kernel::{
        error::LoadError,
        maps::{map_err, own, read},
        sockdiag::{self, TcpSocket},
        writer::{PolicyWriter, port_table},
    },
    policy::model::Policy,
};

/// The file earlier versions kept the seeded sockets in.
const OLD_FILE: &str = "seeded";

/// The pre-existing connections still counted in `SEEDED`, by socket
/// cookie, and the seeding's maps: the one user-side writer of `SEEDED`,
/// `SEED_SKIP`, `SEED_STATE` and the seeded entries of `SESSIONS`.
pub struct Seeded {
    sockets: StdHashMap<u64, SourceKey>,
    counts: HashMap<MapData, SourceKey, u64>,
    skip: HashMap<MapData, u64, u8>,
    state: Array<MapData, u64>,
    sessions: Array<MapData, u64>,
}

fn table_err(source: std::io::Error) -> LoadError {
    LoadError::SeedTable(source)
}

/// The same source over all services.
fn all_services(key: &SourceKey) -> SourceKey {
    SourceKey { service: limiter_common::maps::ALL_SERVICES, ..*key }
}

/// The counted source of a socket, if it is a service connection.
#[must_use]
fn key_of(s: &TcpSocket, ports: &[u32], policy: &Policy) -> Option<SourceKey> {
    let service = u8::try_from(*ports.get(usize::from(s.local_port))?).ok().filter(|&id| id != 0)?;
    let mut key = SourceKey { addr: [0; 16], service, family: family::V4, pad: [0; 2] };
    let v4 = match s.remote {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    if let Some(a) = v4 {
        key.addr[..4].copy_from_slice(&mask_v4(a.octets(), policy.ipv4_prefix));
    } else if let IpAddr::V6(a) = s.remote {
        key.addr = mask_v6(a.octets(), policy.ipv6_prefix);
        key.family = family::V6;
    }
    Some(key)
}

/// The sockets of `table` to seed, by cookie: on a port of `bits` that is a
/// service port of `ports`, and not `counted` by `sock_ops`.
fn select(
    table: &[TcpSocket],
    ports: &[u32],
    bits: &[u64],
    policy: &Policy,
    mut counted: impl FnMut(u64) -> Result<bool, LoadError>,
) -> Result<StdHashMap<u64, SourceKey>, LoadError> {
    let mut out = StdHashMap::new();
    for s in table {
        if !has_port(bits, s.local_port) || out.contains_key(&s.cookie) {
            continue;
        }
        let Some(key) = key_of(s, ports, policy) else { continue };
        if !counted(s.cookie)? {
            out.insert(s.cookie, key);
        }
    }
    Ok(out)
}

/// The ports of `ports` (a `PORTS` table) that are service ports, as bits.
fn port_bits(ports: &[u32]) -> Vec<u64> {
    let mut bits = vec![0u64; seed_state::PORT_WORDS as usize];
    for (port, &id) in ports.iter().enumerate() {
        if id != 0 {
            bits[port / 64] |= 1 << (port % 64);
        }
    }
    bits
}

fn has_port(bits: &[u64], port: u16) -> bool {
    bits.get(usize::from(port) / 64).is_some_and(|w| w & (1 << (port % 64)) != 0)
}

/// The ports the first seeding saw as service ports, if it has recorded them.
fn seed_ports(m: &Array<MapData, u64>) -> Result<Option<Vec<u64>>, LoadError> {
    if m.get(&seed_state::PORTS_SET, 0).map_err(map_err(names::SEED_STATE))? == 0 {
        return Ok(None);
    }
    (0..seed_state::PORT_WORDS)
        .map(|i| m.get(&i, 0).map_err(map_err(names::SEED_STATE)))
        .collect::<Result<_, _>>()
        .map(Some)
}

fn write_seed_ports(m: &mut Array<MapData, u64>, bits: &[u64]) -> Result<(), LoadError> {
    for (i, &w) in (0u32..).zip(bits) {
        if w != 0 {
            m.set(i, w, 0).map_err(map_err(names::SEED_STATE))?;
        }
    }
    // Last: the bits are complete once this says so.
    m.set(seed_state::PORTS_SET, 1, 0).map_err(map_err(names::SEED_STATE))
}

/// Whether `cookie` is a key of the hash map `m` (called `name`).
fn has<V: aya::Pod>(
    m: &HashMap<impl std::borrow::Borrow<MapData>, u64, V>,
    name: &'static str,
    cookie: u64,
) -> Result<bool, LoadError> {
    match m.get(&cookie, 0) {
        Ok(_) => Ok(true),
        Err(aya::maps::MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(map_err(name)(e)),
    }
}

impl Seeded {
    /// Takes the seeding's handles on its maps; nothing seeded yet.
    pub fn new(ebpf: &Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            sockets: StdHashMap::new(),
            counts: own(ebpf, names::SEEDED)?,
            skip: own(ebpf, names::SEED_SKIP)?,
            state: own(ebpf, names::SEED_STATE)?,
            sessions: own(ebpf, names::SESSIONS)?,
        })
    }

    /// Makes `SEEDED` and the seeded sessions match the socket table, if a
    /// seeding began or seeded sockets remain (see the module header);
    /// `sock_ops` must be counting already. Ends the seeding window, whose
    /// flags `writer` (the owner of `GLOBALS`) writes.
    pub fn rebuild(
        &mut self,
        ebpf: &Ebpf,
        writer: &mut PolicyWriter,
        policy: &Policy,
        state_dir: &Path,
    ) -> Result<(), LoadError> {
        remove_old_file(state_dir);
        if writer.globals()?.flags & (flags::SEEDING | flags::SEEDED) == 0 {
            self.clear_skip();
            return Ok(());
        }
        let table = sockdiag::tcp_sockets(sockdiag::state::COUNTED).map_err(table_err)?;
        failpoint::hit("seed-table-read");
        let ports = port_table(policy);
        // The first seeding (or pins of a version that kept no port bits)
        // seeds the service ports of now.
        let stored = seed_ports(&self.state)?;
        let first = stored.is_none();
        let bits = stored.unwrap_or_else(|| port_bits(&ports));
        // Looked up after the table was read: a handshake that completed
        // since is in them.
        let socks: HashMap<&MapData, u64, SockRecord> = read(ebpf, names::SOCKS)?;
        let skip = &self.skip;
        self.sockets = select(&table, &ports, &bits, policy, |cookie| {
            Ok(has(&socks, names::SOCKS, cookie)? || has(skip, names::SEED_SKIP, cookie)?)
        })?;
        let sources = self.write_seeded()?;
        // Half written: `SEEDED` new, the seeded sessions not yet.
        failpoint::hit("seed-partial");
        self.write_sessions()?;
        failpoint::hit("seed-written");
        if first {
            write_seed_ports(&mut self.state, &bits)?;
        }
        // SEEDED stays on while seeded sockets remain.
        if self.sockets.is_empty() {
            writer.set_flags(0, flags::SEEDING | flags::SEEDED)?;
        } else {
            writer.set_flags(flags::SEEDED, flags::SEEDING)?;
        }
        failpoint::hit("seed-done");
        self.clear_skip();
        if !self.sockets.is_empty() {
            log::info!(
                "counted {} connections that were open before the limiter started ({sources} sources)",
                self.sockets.len()
            );
        }
        Ok(())
    }

    /// Makes `SEEDED` hold the per-source counts of the seeded sockets,
    /// writing only what differs; returns the number of sources.
    fn write_seeded(&mut self) -> Result<usize, LoadError> {
        let mut counts: StdHashMap<SourceKey, u64> = StdHashMap::new();
        for key in self.sockets.values() {
            // Under the service's key and the source's over all services
            // (the source-wide budget), as `sock_ops` counts.
            for k in [*key, all_services(key)] {
                *counts.entry(k).or_default() += 1;
            }
        }
        let m = &mut self.counts;
        let have: StdHashMap<SourceKey, u64> = m.iter().filter_map(Result::ok).collect();
        for (key, n) in &counts {
            if have.get(key) != Some(n) {
                m.insert(key, n, 0).map_err(map_err(names::SEEDED))?;
            }
        }
        for key in have.keys().filter(|k| !counts.contains_key(k)) {
            m.remove(key).map_err(map_err(names::SEEDED))?;
        }
        Ok(counts.len())
    }

    /// How many pre-existing connections are still counted.
    #[must_use]
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Takes away the seeded sockets that have closed; returns how many.
    /// `SEEDED` has no other writer, so read-modify-write is safe here; a
    /// crash part way is repaired by the next start's rebuild.
    pub fn reconcile(&mut self, writer: &mut PolicyWriter) -> Result<usize, LoadError> {
        if self.sockets.is_empty() {
            return Ok(0);
        }
        let live: HashSet<u64> = sockdiag::tcp_sockets(sockdiag::state::COUNTED)
            .map_err(|source| LoadError::Seed {
                what: "read the socket table to release the connections open before start (retried every 250 ms)"
                    .into(),
                source,
            })?
            .into_iter()
            .map(|s| s.cookie)
            .collect();
        let gone: Vec<u64> = self.sockets.keys().filter(|c| !live.contains(c)).copied().collect();
        if gone.is_empty() {
            return Ok(0);
        }
        {
            let m = &mut self.counts;
            for c in &gone {
                let Some(key) = self.sockets.remove(c) else { continue };
                for key in [key, all_services(&key)] {
                    match m.get(&key, 0) {
                        Ok(n) if n > 1 => m.insert(key, n - 1, 0).map_err(map_err(names::SEEDED))?,
                        Ok(_) => m.remove(&key).map_err(map_err(names::SEEDED))?,
                        Err(_) => {}
                    }
                }
            }
        }
        failpoint::hit("reconcile");
        self.write_sessions()?;
        if self.sockets.is_empty() {
            writer.set_flags(0, flags::SEEDED)?;
            log::info!("every connection open before the limiter started has closed");
        }
        Ok(gone.len())
    }

    /// Writes each service's number of seeded sockets where the sessions rule reads
    /// it (`SESSIONS`, the daemon's own entries). Seeded connections count
    /// as sessions whatever the lists say.
    fn write_sessions(&mut self) -> Result<(), LoadError> {
        let mut per_service = [0u64; MAX_SERVICES as usize + 1];
        for key in self.sockets.values() {
            if let Some(n) = per_service.get_mut(usize::from(key.service)) {
                *n += 1;
            }
        }
        let m = &mut self.sessions;
        for (id, n) in (0u32..).zip(per_service) {
            let index = pool::index(id, pool::SEEDED);
            if m.get(&index, 0).map_err(map_err(names::SESSIONS))? != n {
                m.set(index, n, 0).map_err(map_err(names::SESSIONS))?;
            }
        }
        Ok(())
    }

    /// Empties `SEED_SKIP` (call with `flags::SEEDING` clear: nothing adds to it then).
    fn clear_skip(&mut self) {
        let stale: Vec<u64> = self.skip.keys().filter_map(Result::ok).collect();
        for c in stale {
            let _ = self.skip.remove(&c);
        }
    }
}

/// Deletes the file an earlier version kept the seeded sockets in: it is
/// never trusted (the kernel's tables say the same, and are never stale).
fn remove_old_file(state_dir: &Path) {
    for name in [OLD_FILE, "seeded.tmp"] {
        let path = state_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => log::info!("removed {} left by an earlier version (no longer used)", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove {} (no longer used, safe to delete): {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(cookie: u64, port: u16, remote: &str) -> TcpSocket {
        TcpSocket { cookie, state: sockdiag::state::ESTABLISHED, local_port: port, remote: remote.parse().expect("ip") }
    }

    #[test]
    fn only_uncounted_sockets_on_first_seeding_ports_are_seeded() {
        let text = "interfaces = [\"eth0\"]\n[[service]]\nname = \"smtp\"\nports = [25, 587]\n\
                    [[service]]\nname = \"imap\"\nports = [143]\n";
        let file = crate::policy::file::ConfigFile::parse(text, "test").expect("config");
        let policy = Policy::build(file, &crate::policy::model::Overrides::default()).expect("policy");
        let ports = port_table(&policy);
        // 587 became a service port after the first seeding.
        let mut first = ports.clone();
        first[587] = 0;
        let bits = port_bits(&first);
        let table = [
            sock(1, 25, "::ffff:198.51.100.7"),
            sock(2, 25, "198.51.100.7"),
            sock(3, 587, "198.51.100.7"),
            sock(4, 143, "2001:db8:1:2::9"),
            sock(5, 8080, "198.51.100.7"),
            sock(6, 25, "198.51.100.8"),
            sock(2, 25, "198.51.100.7"),
        ];
        let got = select(&table, &ports, &bits, &policy, |c| Ok(c == 6)).expect("select");
        let mut cookies: Vec<u64> = got.keys().copied().collect();
        cookies.sort_unstable();
        assert_eq!(cookies, [1, 2, 4], "587 came later, 8080 is no service, 6 is counted, 2 once");
        assert_eq!(got[&1], got[&2], "an IPv4 client of a dual-stack listener counts as IPv4");
        assert_eq!((got[&1].service, got[&1].family), (1, family::V4));
        assert_eq!((got[&4].service, got[&4].family, &got[&4].addr[8..]), (2, family::V6, &[0u8; 8][..]));
    }

    #[test]
    fn port_bits_hold_exactly_the_service_ports() {
        let mut ports = vec![0u32; 65_536];
        for (p, id) in [(25usize, 1u32), (63, 1), (64, 2), (65_535, 3)] {
            ports[p] = id;
        }
        let bits = port_bits(&ports);
        assert_eq!(bits.len(), seed_state::PORT_WORDS as usize);
        for p in 0..=u16::MAX {
            assert_eq!(has_port(&bits, p), matches!(p, 25 | 63 | 64 | 65_535), "port {p}");
        }
    }
}
