//! The whole [`Policy`] and the settings it holds besides services and
//! lists (XDP mode, map sizes, the responder's budgets), with the `run`
//! flags that override the config file ([`Overrides`]).

use std::{net::SocketAddr, time::Duration};

use limiter_common::{events::REFILL_MS, maps::DEFAULT_CONN_ENTRIES, pending};
use serde::{Deserialize, Serialize};

use crate::policy::{
    lists::{ListLines, Lists},
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
    /// Connections a source may hold over all services together (the
    /// config's top-level `max_conn_per_source`); `None`: no such limit.
    pub max_conn_all_services: Option<u32>,
    pub maps: MapSizes,
    /// The responder's budgets (`[responder]`), for `respond` services.
    pub responder: ResponderLimits,
    /// The config file's lists (run-time entries are layered on by the daemon).
    pub lists: Lists,
    /// The line of the config file each entry of `lists` was written on
    /// (`limiter explain` names it); empty for a policy made in code.
    #[serde(skip)]
    pub list_lines: ListLines,
}

impl Policy {
    /// This policy with `lists` instead of its own, without copying its own
    /// (100,000 entries are worth not cloning twice per change).
    #[must_use]
    pub fn with_lists(&self, lists: Lists) -> Self {
        Self {
            interfaces: self.interfaces.clone(),
            xdp_mode: self.xdp_mode,
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
            metrics_listen: self.metrics_listen,
            hostname: self.hostname.clone(),
            services: self.services.clone(),
            max_conn_all_services: self.max_conn_all_services,
            maps: self.maps,
            responder: self.responder,
            lists,
            list_lines: self.list_lines.clone(),
        }
    }

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
    /// Distinct prefixes the merged allow, deny and reserve lists may hold
    /// (`LISTS` holds two banks of this many); allocated per entry.
    pub list_entries: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            connections: DEFAULT_CONN_ENTRIES,
            pending_slots: pending::DEFAULT_SLOTS,
            list_entries: limiter_common::lists::LIST_ENTRIES,
        }
    }
}

// `lists.json` is read up to the largest room the lists may be given.
const _: () = assert!(crate::policy::lists::MAX_ENTRIES == MapSizes::MAX as usize);

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

/// The responder's budgets (`[responder]` in the config): how many
/// over-limit attempts of `respond` services it answers, in all and per
/// source address, how many at once, and how long one may take. Past any of
/// them an attempt is reset. They may change on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResponderLimits {
    /// Answers per second in all (`rate`), and how many at once (`burst`).
    pub rate: u32,
    pub burst: u32,
    /// Answers per second to one source address, and its burst.
    pub per_source_rate: u32,
    pub per_source_burst: u32,
    /// Connections being answered at once (`max_connections`).
    pub max_connections: u32,
    /// How long the TLS handshake and the write of the line may take.
    pub deadline: Duration,
}

impl Default for ResponderLimits {
    fn default() -> Self {
        Self {
            rate: 1_000,
            burst: 2_000,
            per_source_rate: 2,
            per_source_burst: 4,
            max_connections: 256,
            deadline: Duration::from_secs(2),
        }
    }
}

impl ResponderLimits {
    /// Most answers a second (and burst) `rate`, `burst` and the per-source
    /// pair may give: far above what one core answers.
    pub const MAX_RATE: u32 = 1_000_000;
    /// Most connections answered at once (each holds a descriptor).
    pub const MAX_CONNECTIONS: u32 = 65_536;
    /// Bounds of `deadline`: shorter fails clients on a slow path, longer
    /// lets a client that never reads hold a connection.
    pub const MIN_DEADLINE: Duration = Duration::from_millis(100);
    pub const MAX_DEADLINE: Duration = Duration::from_secs(30);

    /// The kernel's steering tokens per CPU per refill (every
    /// `events::REFILL_MS`): `rate` per second, rounded up. Each CPU may
    /// steer up to the total; the responder's total budget caps the sum.
    #[must_use]
    pub fn steer_tokens(self) -> u64 {
        (u64::from(self.rate) * REFILL_MS).div_ceil(1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_default_tokens_are_the_default_rates() {
        assert_eq!(ResponderLimits::default().steer_tokens(), limiter_common::steer::TOKENS_PER_REFILL);
        let at = |rate| ResponderLimits { rate, ..ResponderLimits::default() }.steer_tokens();
        assert_eq!((at(1), at(10), at(11), at(640), at(1_000_000)), (1, 1, 2, 64, 100_000));
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
