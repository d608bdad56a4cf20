//! The replies to `status` and `top`, as the daemon builds them and the
//! clients read them. A field an older daemon may not send is an `Option`
//! marked `#[schemars(required)]`: this daemon always sends it, a reader
//! shows its absence as `-`.

use std::{collections::BTreeMap, path::PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::service::Rate;

/// The running daemon: interfaces, services, sessions, lists and verdict
/// counters (docs/status.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "limiter status --json",
    description = "The running daemon's interfaces, services, sessions, lists and verdict counters \
                   (docs/status.md). Fields are only ever added: every object allows properties not listed here."
)]
pub struct StatusReply {
    /// The daemon's version.
    pub version: String,
    /// Where the programs, links and maps are pinned (on bpffs).
    #[schemars(required)]
    pub pin_dir: Option<PathBuf>,
    pub interfaces: Vec<Interface>,
    #[schemars(range(min = 1, max = 32))]
    pub ipv4_prefix: u8,
    #[schemars(range(min = 1, max = 128))]
    pub ipv6_prefix: u8,
    pub services: Vec<ServiceStatus>,
    /// Entries in force (config file and run time) of each list.
    #[schemars(required)]
    pub lists: Option<ListCounts>,
    /// The counters summed over services, plus the frames that matched no service.
    pub totals: Totals,
    /// Where /metrics is served (ADDR:PORT), or null.
    pub metrics_listen: Option<String>,
    /// Refusal log lines since the daemon started.
    #[schemars(required)]
    pub refusal_lines: Option<RefusalLines>,
    /// What the `respond` action did: steered SYNs and their answers.
    /// Absent from a daemon older than the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(required)]
    pub responder: Option<ResponderStatus>,
    /// The source-wide budget (`max_conn_per_source` at the top of the
    /// config); absent when none is set (or from an older daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_services: Option<AllServicesStatus>,
}

/// The source-wide budget: connections per source over all services together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AllServicesStatus {
    #[schemars(range(min = 1))]
    pub max_conn_per_source: u32,
    /// Sources holding connections (on any service).
    pub sources: u64,
    /// Sources at the limit now (allow entries with a limit of their own
    /// are counted against theirs).
    pub at_limit: u64,
}

/// The `respond` action's counts: the kernel's since the programs were
/// loaded, the responder's since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResponderStatus {
    /// Over-limit SYNs XDP steered to the responder.
    pub steered: u64,
    /// Steered SYNs the socket lookup handed to the responder.
    pub redirected: u64,
    /// Refusal lines the responder wrote.
    pub responded: u64,
    /// Steered connections the responder reset (over its budget, or nothing to say).
    pub reset: u64,
    /// Clients that did not finish TLS or take the line in time.
    pub failed: u64,
    /// Fallbacks to reset in XDP: no steering token left.
    pub fallback_no_token: u64,
    /// Fallbacks to reset at the socket lookup: no responder socket (daemon gone).
    pub fallback_no_responder: u64,
    /// Fallbacks to reset at the socket lookup: the source was over its
    /// share of the steering. Absent from a daemon older than it.
    #[serde(default)]
    pub fallback_over_share: u64,
}

/// An interface the XDP program is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Interface {
    pub name: String,
    #[schemars(range(min = 1))]
    pub ifindex: u32,
    /// native (driver) or skb (generic); unknown if a restart could not tell.
    // A string, not an enum: a newer daemon may name another mode.
    pub xdp_mode: String,
}

/// One service's policy, what it uses now, and its verdict counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceStatus {
    pub name: String,
    #[schemars(inner(range(min = 1)))]
    pub ports: Vec<u16>,
    /// N/s, N/m, or null for no rate limit.
    pub rate: Option<Rate>,
    /// Attempts allowed at once (meaningful only with a rate).
    #[schemars(range(min = 1))]
    pub burst: u64,
    /// drop or reset.
    // A string, not an enum: a newer daemon may add actions.
    pub action: String,
    /// null: no per-source limit.
    #[schemars(range(min = 1))]
    pub max_conn_per_source: Option<u32>,
    /// null: no cap on the service's sessions.
    #[schemars(range(min = 1))]
    pub max_sessions: Option<u32>,
    /// Of `max_sessions`, how many only the service's reserve list may use.
    #[serde(default)]
    pub reserved_sessions: u32,
    /// `dead_peer_timeout` as the config writes it (e.g. "2m"): new
    /// connections get keepalive, and a client that vanished is given up
    /// within about this. Absent: off (or a daemon older than it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9]+(ms|s|m|h|d)$"))]
    pub dead_peer_timeout: Option<String>,
    /// Sessions in use: connections of non-exempt sources, established or seeded.
    #[schemars(required)]
    pub sessions: Option<u64>,
    /// Established connections of the service, all sources.
    pub connections: u64,
    pub counters: Counters,
    /// Refusals the kernel reported since the daemon started, by what
    /// answered them: reset, dropped, responded, fallback (reset instead of
    /// responded), `no_handshake` (steered, the client never completed it),
    /// steered (not known further). Only non-zero counts; absent from a
    /// daemon older than it. In floods some refusals go unreported
    /// (`refusal_lines.unreported`): `counters` has them all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub answers: BTreeMap<String, u64>,
    /// Observe mode (`action = "log"`): SYNs that would have been refused,
    /// by verdict (`refused_concurrency`, ...), and were let through. Only
    /// non-zero counts, kept apart from `counters` (which count what was done).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub would_refuse: BTreeMap<String, u64>,
}

/// SYN verdicts and other segments to a service's ports, since the programs were first loaded.
// Each counter is `None` only from a daemon without it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Counters {
    /// SYNs within every limit (exempt sources included).
    #[schemars(required)]
    pub accepted: Option<u64>,
    /// SYNs refused: the source is on the deny list (the deny rule).
    #[schemars(required)]
    pub refused_deny: Option<u64>,
    /// SYNs refused: the service's `max_sessions` were in use (the sessions rule).
    #[schemars(required)]
    pub refused_sessions: Option<u64>,
    /// SYNs refused: only reserved sessions were left (the sessions rule).
    #[schemars(required)]
    pub refused_reserve: Option<u64>,
    /// SYNs refused: the source held its `max_conn_per_source` connections (the connections rule).
    #[schemars(required)]
    pub refused_concurrency: Option<u64>,
    /// SYNs refused: the source's token bucket was empty (the rate rule).
    #[schemars(required)]
    pub refused_rate: Option<u64>,
    /// TCP segments to the service's ports other than a SYN.
    #[schemars(required)]
    pub passed_non_syn: Option<u64>,
}

/// The counters of every service summed, and the frames for no service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Totals {
    #[serde(flatten)]
    pub counters: Counters,
    /// Frames for no service: other ports and protocols, fragments, frames the parser does not understand.
    pub passed_other: u64,
}

/// Entries in force of each list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ListCounts {
    pub allow: usize,
    pub deny: usize,
    pub reserve: usize,
}

/// Refusal log lines since the daemon started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RefusalLines {
    /// First lines of bursts logged.
    pub logged: u64,
    /// Refusals reported by the kernel but folded into a burst's count.
    pub suppressed: u64,
    /// Refusals the kernel did not report (event budget spent or ring full), since the programs were loaded.
    pub unreported: u64,
}

/// Sources holding connections now, most first (docs/status.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "limiter top --json",
    description = "Sources holding connections now, most first (docs/status.md). Fields are only ever added: \
                   every object allows properties not listed here."
)]
pub struct TopReply {
    /// At most -n rows, sorted by connections, most first.
    pub sources: Vec<TopRow>,
    /// Sources holding connections (of --service, if given), before -n.
    #[schemars(required)]
    pub total_sources: Option<usize>,
    /// Their connections.
    #[schemars(required)]
    pub total_connections: Option<u64>,
}

/// A source holding connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TopRow {
    /// The counted prefix: a bare address for IPv4 /32 and IPv6 /128, else address/length.
    pub source: String,
    pub service: String,
    #[schemars(range(min = 1))]
    pub connections: u64,
    /// The per-source limit that applies to this source; null for none (or an exempt source).
    #[schemars(range(min = 1))]
    pub limit: Option<u32>,
    /// The source's refusals in the last refusal-log window (10 s) and what
    /// answered the last one; absent when it had none (or from an older daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<RecentRefusals>,
    /// The source's connections over all services together, which the
    /// source-wide budget (`max_conn_per_source` at the top of the config)
    /// counts; absent from an older daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_services: Option<u64>,
    /// The source-wide limit that applies to this source; absent for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub all_services_limit: Option<u32>,
}

/// A source's recent refusals, as `limiter top` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecentRefusals {
    #[schemars(range(min = 1))]
    pub count: u64,
    /// reset, dropped, responded, fallback, `no_handshake` or steered; or
    /// observed: observe mode (`action = "log"`) let them through.
    // A string, not an enum: a newer daemon may add answers.
    pub last_answer: String,
}

impl TopRow {
    /// At its per-source limit.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.limit.is_some_and(|l| self.connections >= u64::from(l))
    }
}
