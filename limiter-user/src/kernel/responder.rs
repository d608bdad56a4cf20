//! The kernel side of the `respond` action, for the daemon's responder: it
//! owns `RESPONDER` (the responder's listening socket, marked so that
//! `sock_ops` skips its connections), the steering tokens of `STEER_BUDGET`,
//! and forgetting the `STEER` entries of the flows it has answered.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuValues, SockMap},
};
use limiter_common::{
    maps::names,
    steer::{self, SteerKey, SteerValue, budget},
};

use crate::kernel::{
    error::LoadError,
    maps::{map_err, own, read},
};

/// What steering did, summed over CPUs (`steer::budget`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SteerCounts {
    /// SYNs XDP steered to the responder.
    pub steered: u64,
    /// Fallbacks to `reset` in XDP: no token left.
    pub no_token: u64,
    /// Steered SYNs handed to the responder socket.
    pub redirected: u64,
    /// Steered SYNs refused (RST) because no responder socket was there.
    pub no_responder: u64,
    /// Steered SYNs refused (RST) at the socket lookup because their source
    /// was over its share of the steering.
    pub over_share: u64,
}

/// The responder's handles on its maps.
pub struct Responder {
    socket: SockMap<MapData>,
    budget: PerCpuArray<MapData, u64>,
    steer: HashMap<MapData, SteerKey, SteerValue>,
    cpus: usize,
}

impl Responder {
    /// Takes the responder's handles on `RESPONDER`, `STEER_BUDGET` and `STEER`.
    pub fn new(ebpf: &Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            socket: own(ebpf, names::RESPONDER)?,
            budget: own(ebpf, names::STEER_BUDGET)?,
            steer: own(ebpf, names::STEER)?,
            cpus: aya::util::nr_cpus().map_err(|(_, e)| LoadError::Cpus(e))?,
        })
    }

    /// Makes `listener` the responder socket: marks it
    /// (`steer::RESPONDER_MARK`, which its accepted connections inherit and
    /// `sock_ops` skips), then puts it in `RESPONDER`, in the slot of its
    /// address family. The socket must live
    /// in the network namespace the `sk_lookup` program is attached to; when it
    /// closes the kernel removes it, and steered SYNs are refused (RST).
    pub fn set_listener(&mut self, listener: &TcpListener) -> Result<(), LoadError> {
        let mark = steer::RESPONDER_MARK;
        // SAFETY: a valid socket and a u32 option value of the size given.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&raw const mark).cast(),
                libc::socklen_t::try_from(size_of::<u32>()).unwrap_or(4),
            )
        };
        if rc != 0 {
            return Err(LoadError::Responder(std::io::Error::last_os_error()));
        }
        let family = match listener.local_addr().map_err(LoadError::Responder)? {
            SocketAddr::V4(_) => limiter_common::maps::family::V4,
            SocketAddr::V6(_) => limiter_common::maps::family::V6,
        };
        self.socket.set(steer::responder_slot(family), listener, 0).map_err(map_err(names::RESPONDER))
    }

    /// Gives every CPU `tokens` steering tokens (what the responder's rate
    /// allows in one refill period; `steer::TOKENS_PER_REFILL` at the
    /// default rate).
    pub fn refill(&mut self, tokens: u64) -> Result<(), LoadError> {
        let values = PerCpuValues::try_from(vec![tokens; self.cpus]).map_err(LoadError::Cpus)?;
        self.budget.set(budget::TOKENS, values, 0).map_err(map_err(names::STEER_BUDGET))
    }

    /// Sets each source's share of the steering (`steer::share`): at most
    /// `per_second` steered SYNs a second, `burst` at once; the socket
    /// lookup resets the rest.
    pub fn set_share(&mut self, per_second: u32, burst: u32) -> Result<(), LoadError> {
        let (interval, tolerance) = steer::share(per_second, burst);
        for (index, value) in [(budget::SHARE_INTERVAL_NS, interval), (budget::SHARE_TOLERANCE_NS, tolerance)] {
            let values = PerCpuValues::try_from(vec![value; self.cpus]).map_err(LoadError::Cpus)?;
            self.budget.set(index, values, 0).map_err(map_err(names::STEER_BUDGET))?;
        }
        Ok(())
    }

    /// What steering did since this object was loaded.
    pub fn counts(&self) -> Result<SteerCounts, LoadError> {
        let sum = |i: u32| -> Result<u64, LoadError> {
            Ok(self.budget.get(&i, 0).map_err(map_err(names::STEER_BUDGET))?.iter().sum())
        };
        Ok(SteerCounts {
            steered: sum(budget::STEERED)?,
            no_token: sum(budget::NO_TOKEN)?,
            redirected: sum(budget::REDIRECTED)?,
            no_responder: sum(budget::NO_RESPONDER)?,
            over_share: sum(budget::OVER_SHARE)?,
        })
    }

    /// Why the accepted connection from `peer` to `local` was steered here,
    /// if XDP noted it (`None`: evicted, or not steered).
    pub fn steer_entry(&self, peer: SocketAddr, local: SocketAddr) -> Result<Option<SteerValue>, LoadError> {
        self.noted(&flow(peer, local))
    }

    /// The `STEER` entry of a flow, if XDP noted it and it is still there.
    pub fn noted(&self, key: &SteerKey) -> Result<Option<SteerValue>, LoadError> {
        match self.steer.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::STEER)(e)),
        }
    }

    /// What the socket lookup did with a steered flow (`steer::fate`): from
    /// its `STEER` entry, or for one it reset (which lost its entry) from
    /// `STEER_FATES`; `None` if neither holds the flow any more.
    pub fn fate(&self, ebpf: &Ebpf, key: &SteerKey) -> Result<Option<u8>, LoadError> {
        if let Some(v) = self.noted(key)? {
            return Ok(Some(v.fate));
        }
        let fates: HashMap<&MapData, SteerKey, u8> = read(ebpf, names::STEER_FATES)?;
        match fates.get(key, 0) {
            Ok(f) => Ok(Some(f)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::STEER_FATES)(e)),
        }
    }

    /// Forgets the entry of a flow the responder has answered (a later
    /// connection on the same ports is a new decision).
    pub fn forget(&mut self, peer: SocketAddr, local: SocketAddr) -> Result<(), LoadError> {
        match self.steer.remove(&flow(peer, local)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::STEER)(e)),
        }
    }
}

/// The `STEER` key of a connection: the client's address as the kernel
/// keys it (an IPv4 client of a dual-stack socket, `::ffff:a.b.c.d`, as
/// IPv4, since `sk_lookup` sees the IPv4 packet) and both ports.
#[must_use]
pub fn flow(peer: SocketAddr, local: SocketAddr) -> SteerKey {
    steer_key(peer.ip(), peer.port(), local.port())
}

/// The `STEER` key of the connection from `client`:`client_port` to the
/// local port (IPv4-mapped clients as IPv4).
#[must_use]
pub fn steer_key(client: IpAddr, client_port: u16, local_port: u16) -> SteerKey {
    match client.to_canonical() {
        IpAddr::V4(a) => SteerKey::v4(a.octets(), client_port, local_port),
        IpAddr::V6(a) => SteerKey::v6(a.octets(), client_port, local_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_ipv4_client_is_keyed_as_ipv4() {
        let local: SocketAddr = "[::]:25".parse().expect("addr");
        let mapped: SocketAddr = "[::ffff:198.18.0.7]:40000".parse().expect("addr");
        assert_eq!(flow(mapped, local), SteerKey::v4([198, 18, 0, 7], 40_000, 25));
        let v6: SocketAddr = "[2001:db8::7]:40000".parse().expect("addr");
        let k = flow(v6, local);
        assert_eq!((k.family, k.client_port, k.local_port), (limiter_common::maps::family::V6, 40_000, 25));
    }
}
