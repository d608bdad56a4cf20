//! The reply to `explain`: how the policy in force decides for one client
//! address now, read from the kernel's maps (docs/status.md).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    policy::lists::Cidr,
    protocol::lists::{Entry, ListName, Origin},
};

/// How the running policy decides for one address now (docs/status.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "limiter explain --json",
    description = "How the policy in force decides for one client address now, read from the kernel's maps \
                   (docs/status.md). Fields are only ever added: every object allows properties not listed here. \
                   A property an entry does not have is absent, not null."
)]
pub struct ExplainReply {
    /// The address asked about, as the kernel sees it (an IPv4-mapped IPv6 address is IPv4).
    pub address: String,
    /// The source it is counted as: the address masked to the prefix length
    /// in force (a bare address for IPv4 /32 and IPv6 /128).
    pub source: String,
    /// The prefix length sources of its family are counted by (`ipv4_prefix` or `ipv6_prefix`).
    #[schemars(range(min = 1, max = 128))]
    pub source_prefix: u8,
    /// The entry of the kernel's merged lists that its lookup finds for the
    /// address (the longest stored prefix covering it); null when none does.
    pub kernel_entry: Option<KernelEntry>,
    /// The allow, deny and reserve entries covering the address, longest prefix first.
    pub entries: Vec<ExplainEntry>,
    /// The source over all services together: the source-wide budget.
    #[serde(default)]
    pub all_services: AllServices,
    /// Per service (or only the one asked for): the limits, what is held of them, the verdict.
    pub services: Vec<ExplainService>,
}

/// The source's connections over all services, and the source-wide limit on them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AllServices {
    /// The source-wide limit that applies to the address (the config's
    /// top-level `max_conn_per_source`, or its allow entry's
    /// `max_conn_all_services`); null: none (or the address is denied or exempt).
    #[schemars(range(min = 1))]
    pub max_conn_per_source: Option<u32>,
    /// Established connections of the source on every service (`CONNS` + `SEEDED`).
    pub connections: u64,
    /// Its handshakes in flight counted against the budget.
    pub in_flight: u64,
}

/// What the kernel's merged list entry says about the address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KernelEntry {
    /// The stored prefix the lookup finds.
    pub prefix: Cidr,
    /// A deny entry covers the address.
    pub deny: bool,
    /// An allow entry covers it: `exempt` (no limits), `limits` (its own), or `none`.
    // A string, not an enum: a newer daemon may add kinds.
    pub allow: String,
    /// The services whose reserve list covers it.
    pub reserve: Vec<String>,
}

/// A list entry covering the address, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExplainEntry {
    pub list: ListName,
    #[serde(flatten)]
    pub entry: Entry,
    pub origin: Origin,
    /// The config file's line of the entry's prefix (config entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "usize", range(min = 1))]
    pub line: Option<usize>,
    /// The entry the decision rests on: the longest covering deny entry, the
    /// longest covering allow entry (a run-time one replaces the config's for
    /// the same prefix), every covering reserve entry. The others are shadowed.
    pub used: bool,
}

/// One service: the limits that apply to the address, what it and the
/// service hold now, and the verdict its next SYN would get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExplainService {
    pub name: String,
    #[schemars(inner(range(min = 1)))]
    pub ports: Vec<u16>,
    /// What a refusal does: drop, reset, respond, or log (observe mode:
    /// nothing is refused, the verdict is what would be).
    // A string, not an enum: a newer daemon may add actions.
    pub action: String,
    /// Whose limits apply: `deny` (refused before any limit), `exempt`
    /// (none), `allow` (the covering allow entry's), `service` (the service's).
    pub limits_from: String,
    /// Connections the source may hold; null: no limit.
    #[schemars(range(min = 1))]
    pub max_conn_per_source: Option<u32>,
    /// Attempts in a burst and tokens left in the source's bucket; null: no rate limit.
    #[schemars(range(min = 1))]
    pub burst: Option<u64>,
    pub tokens: Option<u64>,
    /// Milliseconds per new token; null: no rate limit.
    pub token_every_ms: Option<u64>,
    /// The source's established connections (`CONNS` + `SEEDED`).
    pub connections: u64,
    /// Of them, connections from before the first start (`SEEDED`).
    pub seeded: u64,
    /// The source's handshakes in flight (reservations in `PENDING`).
    pub in_flight: u64,
    /// The service's sessions in use: established, seeded and in flight.
    pub sessions: u64,
    /// null: no cap on the service's sessions.
    #[schemars(range(min = 1))]
    pub max_sessions: Option<u32>,
    /// Of `max_sessions`, how many only the service's reserve list may use.
    pub reserved_sessions: u32,
    /// The source is on the service's reserve list.
    pub on_reserve_list: bool,
    /// What its next SYN would get: accepted, `refused_deny`, `refused_sessions`,
    /// `refused_reserve`, `refused_concurrency` or `refused_rate`.
    // A string, not an enum: a newer daemon may add verdicts.
    pub verdict: String,
}
