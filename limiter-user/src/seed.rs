//! Counting the connections that predate the programs. `sock_ops` sees a
//! connection only when its handshake completes, and the kernel never gives
//! a close callback for a socket that was already established when the
//! program was attached. So at the first start the daemon reads the socket
//! table (`sock_diag`), counts each service connection in `SEEDED`, and from
//! then on takes one away when that socket has left the table. The seeded
//! sockets are kept in `STATE_DIR/seeded` so a restarted daemon goes on
//! releasing them.
//!
//! Double counting is ruled out by ordering: `flags::SEEDING` is set before
//! `sock_ops` is attached, and while it is set `sock_ops` notes the cookie
//! of every connection it counts in `SEED_SKIP`; the seeding skips those.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fmt::Write as _,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap},
};
use limiter_common::{
    Globals, SourceKey,
    maps::{MAX_SERVICES, family, flags, names},
    pool,
    prefix::{mask_v4, mask_v6},
};

use crate::{
    config::Policy,
    loader::{self, LoadError, map_err},
    sockdiag::{self, TcpSocket},
};

const FILE: &str = "seeded";

/// The pre-existing connections still counted in `SEEDED`, by socket cookie.
#[derive(Debug, Default)]
pub struct Seeded {
    sockets: StdHashMap<u64, SourceKey>,
    path: PathBuf,
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Seed { what: what.to_owned(), source }
}

/// Sets or clears bits of `Globals::flags`.
pub fn set_flags(ebpf: &mut Ebpf, set: u8, clear: u8) -> Result<(), LoadError> {
    let mut globals: Array<_, Globals> =
        Array::try_from(ebpf.map_mut(names::GLOBALS).ok_or(LoadError::NoObject)?).map_err(map_err(names::GLOBALS))?;
    let mut g = globals.get(&0, 0).map_err(map_err(names::GLOBALS))?;
    g.flags = (g.flags | set) & !clear;
    globals.set(0, g, 0).map_err(map_err(names::GLOBALS))
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

impl Seeded {
    /// First start: `sock_ops` has just been attached with `flags::SEEDING`
    /// set. Counts every service connection it cannot have seen, then ends
    /// the seeding window.
    pub fn seed(ebpf: &mut Ebpf, policy: &Policy, state_dir: &Path) -> Result<Self, LoadError> {
        let table = sockdiag::tcp_sockets(sockdiag::state::COUNTED).map_err(io_err("read the socket table"))?;
        let ports = loader::port_table(policy);
        let skip: HashSet<u64> = {
            let m: HashMap<_, u64, u8> = HashMap::try_from(ebpf.map(names::SEED_SKIP).ok_or(LoadError::NoObject)?)
                .map_err(map_err(names::SEED_SKIP))?;
            m.keys().filter_map(Result::ok).collect()
        };
        let mut seeded = Self { sockets: StdHashMap::new(), path: state_dir.join(FILE) };
        let mut counts: StdHashMap<SourceKey, u64> = StdHashMap::new();
        for s in &table {
            if skip.contains(&s.cookie) {
                continue;
            }
            if let Some(key) = key_of(s, &ports, policy)
                && seeded.sockets.insert(s.cookie, key).is_none()
            {
                *counts.entry(key).or_default() += 1;
            }
        }
        // File first: a crash between the two leaves sockets listed but not
        // counted (their release finds nothing to take), never the reverse.
        seeded.save()?;
        {
            let mut m: HashMap<_, SourceKey, u64> =
                HashMap::try_from(ebpf.map_mut(names::SEEDED).ok_or(LoadError::NoObject)?)
                    .map_err(map_err(names::SEEDED))?;
            for (key, n) in &counts {
                m.insert(key, n, 0).map_err(map_err(names::SEEDED))?;
            }
        }
        seeded.write_sessions(ebpf)?;
        // SEEDED stays on while seeded sockets remain.
        let clear = if seeded.sockets.is_empty() { flags::SEEDING | flags::SEEDED } else { flags::SEEDING };
        set_flags(ebpf, 0, clear)?;
        let mut skip_map: HashMap<_, u64, u8> =
            HashMap::try_from(ebpf.map_mut(names::SEED_SKIP).ok_or(LoadError::NoObject)?)
                .map_err(map_err(names::SEED_SKIP))?;
        for c in skip {
            let _ = skip_map.remove(&c);
        }
        if !seeded.sockets.is_empty() {
            log::info!(
                "counted {} connections that were open before the limiter started ({} sources)",
                seeded.sockets.len(),
                counts.len()
            );
        }
        Ok(seeded)
    }

    /// A restart: the seeded sockets the previous run left. A run killed
    /// while seeding leaves `SEEDING` set; it is cleared here.
    pub fn resume(ebpf: &mut Ebpf, state_dir: &Path) -> Result<Self, LoadError> {
        let seeded = Self::load(state_dir)?;
        seeded.write_sessions(ebpf)?;
        let clear = if seeded.is_empty() { flags::SEEDING | flags::SEEDED } else { flags::SEEDING };
        set_flags(ebpf, 0, clear)?;
        let mut skip: HashMap<_, u64, u8> =
            HashMap::try_from(ebpf.map_mut(names::SEED_SKIP).ok_or(LoadError::NoObject)?)
                .map_err(map_err(names::SEED_SKIP))?;
        let stale: Vec<u64> = skip.keys().filter_map(Result::ok).collect();
        for c in stale {
            let _ = skip.remove(&c);
        }
        Ok(seeded)
    }

    fn load(state_dir: &Path) -> Result<Self, LoadError> {
        let path = state_dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err("read the seeded-connections file")(e)),
        };
        let sockets = text.lines().filter_map(parse_line).collect();
        Ok(Self { sockets, path })
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
    /// `SEEDED` has no other writer, so read-modify-write is safe here.
    pub fn reconcile(&mut self, ebpf: &mut Ebpf) -> Result<usize, LoadError> {
        if self.sockets.is_empty() {
            return Ok(0);
        }
        let live: HashSet<u64> = sockdiag::tcp_sockets(sockdiag::state::COUNTED)
            .map_err(io_err("read the socket table"))?
            .into_iter()
            .map(|s| s.cookie)
            .collect();
        let gone: Vec<u64> = self.sockets.keys().filter(|c| !live.contains(c)).copied().collect();
        if gone.is_empty() {
            return Ok(0);
        }
        {
            let mut m: HashMap<_, SourceKey, u64> =
                HashMap::try_from(ebpf.map_mut(names::SEEDED).ok_or(LoadError::NoObject)?)
                    .map_err(map_err(names::SEEDED))?;
            for c in &gone {
                let Some(key) = self.sockets.remove(c) else { continue };
                match m.get(&key, 0) {
                    Ok(n) if n > 1 => m.insert(key, n - 1, 0).map_err(map_err(names::SEEDED))?,
                    Ok(_) => m.remove(&key).map_err(map_err(names::SEEDED))?,
                    Err(_) => {}
                }
            }
        }
        self.save()?;
        self.write_sessions(ebpf)?;
        if self.sockets.is_empty() {
            set_flags(ebpf, 0, flags::SEEDED)?;
            log::info!("every connection open before the limiter started has closed");
        }
        Ok(gone.len())
    }

    /// Writes each service's number of seeded sockets where rule 3 reads
    /// it (`SESSIONS`, the daemon's own entries). Seeded connections count
    /// as sessions whatever the lists say.
    fn write_sessions(&self, ebpf: &mut Ebpf) -> Result<(), LoadError> {
        let mut per_service = [0u64; MAX_SERVICES as usize + 1];
        for key in self.sockets.values() {
            if let Some(n) = per_service.get_mut(usize::from(key.service)) {
                *n += 1;
            }
        }
        let mut m: Array<_, u64> = Array::try_from(ebpf.map_mut(names::SESSIONS).ok_or(LoadError::NoObject)?)
            .map_err(map_err(names::SESSIONS))?;
        for (id, n) in (0u32..).zip(per_service) {
            let index = pool::index(id, pool::SEEDED);
            if m.get(&index, 0).map_err(map_err(names::SESSIONS))? != n {
                m.set(index, n, 0).map_err(map_err(names::SESSIONS))?;
            }
        }
        Ok(())
    }

    /// Writes the file atomically (write, fsync, rename).
    fn save(&self) -> Result<(), LoadError> {
        let mut text = String::new();
        for (cookie, k) in &self.sockets {
            let _ = write!(text, "{cookie} {} {} ", k.service, k.family);
            for b in k.addr {
                let _ = write!(text, "{b:02x}");
            }
            text.push('\n');
        }
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(io_err("write the seeded-connections file"))
    }
}

/// `COOKIE SERVICE FAMILY ADDRHEX`
fn parse_line(line: &str) -> Option<(u64, SourceKey)> {
    let mut f = line.split_whitespace();
    let cookie = f.next()?.parse().ok()?;
    let service = f.next()?.parse().ok()?;
    let family = f.next()?.parse().ok()?;
    let hex = f.next()?;
    let mut addr = [0u8; 16];
    if hex.len() != 32 {
        return None;
    }
    for (i, b) in addr.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((cookie, SourceKey { addr, service, family, pad: [0; 2] }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lines_round_trip() {
        let key = SourceKey {
            addr: [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0],
            service: 3,
            family: 6,
            pad: [0; 2],
        };
        let dir = std::env::temp_dir().join(format!("limiter-seed-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let s =
            Seeded { sockets: [(42u64, key), (7, SourceKey::default())].into_iter().collect(), path: dir.join(FILE) };
        s.save().expect("save");
        let back = Seeded::load(&dir).expect("load");
        assert_eq!(back.sockets, s.sockets);
        assert_eq!(parse_line("1 2 4 00"), None, "short address");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
