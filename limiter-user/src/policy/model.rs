//! The whole [`Policy`] and the settings it holds besides services and
//! lists (XDP mode, map sizes), with the `run` flags that override the
//! config file ([`Overrides`]).

use std::net::SocketAddr;

use limiter_common::{maps::DEFAULT_CONN_ENTRIES, pending};
use serde::{Deserialize, Serialize};

use crate::policy::{
    lists::Lists,
    respond::Protocol,
    service::{Action, Rate, Service},
};

/// The whole validated policy, made by [`Policy::build`] (in `build.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The configured `{host}` of refusal lines; `None`: the daemon fills
    /// in the host's own name (policy looks nothing up).
    pub hostname: Option<String>,
    pub services: Vec<Service>,
    pub maps: MapSizes,
    /// The config file's lists (run-time entries are layered on by the daemon).
    pub lists: Lists,
}

impl Policy {
    /// `N services, N allow, N deny, N reserve entries`, for one-line reports.
    #[must_use]
    pub fn summary(&self) -> String {
        let l = &self.lists;
        format!(
            "{} services, {} allow, {} deny, {} reserve entries",
            self.services.len(),
            l.allow.len(),
            l.deny.len(),
            l.reserve.len()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (skb) mode with a warning.
    #[default]
    Auto,
    Native,
    Skb,
}

/// Sizes of the kernel maps (`[maps]` in the config). They are fixed when
/// the maps are created, at the first start; changing them takes effect
/// after `limiter unload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapSizes {
    /// Sources that may hold connections at once (`CONNS`, `SEEDED`);
    /// when full, a new source's connections go uncounted (fail open).
    pub connections: u32,
    /// Source slots (`PENDING`: handshakes in flight, hints and rate
    /// buckets of recent sources), a power of two; direct-mapped, so a new
    /// source may take over an idle slot.
    pub pending_slots: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self { connections: DEFAULT_CONN_ENTRIES, pending_slots: pending::DEFAULT_SLOTS }
    }
}

impl MapSizes {
    /// Most entries a map may be given (16 Mi).
    pub const MAX: u32 = 1 << 24;
    /// Fewest.
    pub const MIN: u32 = 1024;

    /// Approximate kernel memory, in bytes, of the maps these sizes govern
    /// (hash entries: key, value and about 50 bytes of element overhead;
    /// 32 bytes per source slot).
    #[must_use]
    pub fn memory_bytes(self) -> u64 {
        let hash = |n: u32| u64::from(n) * (20 + 8 + 50);
        2 * hash(self.connections) + u64::from(self.pending_slots) * 32
    }
}

/// `run` flags that override or replace parts of the config file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub interfaces: Vec<String>,
    pub ports: Vec<u16>,
    pub rate: Option<Rate>,
    pub burst: Option<u64>,
    pub action: Option<Action>,
    pub protocol: Option<Protocol>,
    pub max_conn_per_source: Option<u32>,
    pub ipv4_prefix: Option<u8>,
    pub ipv6_prefix: Option<u8>,
    pub xdp_mode: Option<XdpMode>,
    pub metrics_listen: Option<SocketAddr>,
}
