//! `explain`: how the policy in force decides for one client address now.
//! Everything the decision uses is read from the kernel's maps
//! (`kernel::inspect`) and fed to `limiter_common::predict`, the decision's
//! rules without the taking; only the entries' origins (config line, run
//! time, comment) come from the daemon's lists, which the maps do not hold.

use std::net::IpAddr;

use limiter_common::{
    Verdict,
    lists::{Admission, ListEntry, entry},
    maps::{action, family},
    predict::{Reading, predict},
    prefix::Prefix,
};

use crate::{
    daemon::state::Daemon,
    kernel::inspect,
    policy::lists::Lists,
    protocol::{AllServices, Entry, ExplainEntry, ExplainReply, ExplainService, KernelEntry, ListName, Origin},
};

/// The `explain` response for `address` (docs/status.md), for every service
/// or only `service`.
pub(crate) fn explain(d: &Daemon, address: IpAddr, service: Option<&str>) -> Result<ExplainReply, String> {
    let policy = &d.policy;
    let services: Vec<_> = match service {
        Some(name) => {
            let s = policy.services.iter().find(|s| s.name == name).ok_or_else(|| {
                let names: Vec<&str> = policy.services.iter().map(|s| s.name.as_str()).collect();
                format!("unknown service {} (services: {})", crate::policy::lists::shown(name), names.join(", "))
            })?;
            vec![s]
        }
        None => policy.services.iter().collect(),
    };
    let address = address.to_canonical();
    let ebpf = &d.loaded.ebpf;
    let err = |e: crate::kernel::error::LoadError| e.to_string();
    let g = inspect::globals(ebpf).map_err(err)?;
    let covering = inspect::covering_entries(ebpf, &g, address).map_err(err)?;
    let found = inspect::list_lookup(ebpf, &g, address).map_err(err)?;
    let host = Prefix::new(address, 128);
    let source_prefix = if host.family == family::V4 { g.ipv4_prefix } else { g.ipv6_prefix };
    let source = host.truncate(source_prefix);
    let kernel_entry = found.map(|e| KernelEntry {
        // The longest stored prefix covering the address is the one found.
        prefix: crate::policy::lists::Cidr(covering.first().map_or(host, |(p, _)| *p)),
        deny: e.flags & entry::DENY != 0,
        allow: allow_kind(&e).to_owned(),
        reserve: policy
            .services
            .iter()
            .filter(|s| s.id < 32 && e.reserve & (1 << s.id) != 0)
            .map(|s| s.name.clone())
            .collect(),
    });
    let now = inspect::now_ns();
    let (all_limit, all_state, all_in_flight) = all_services(ebpf, &g, address, now).map_err(err)?;
    let mut all_applies = None;
    let mut rows = Vec::new();
    for s in services {
        let kernel_policy = inspect::service_policy(ebpf, &g, s.id).map_err(err)?;
        let key = inspect::source_key(address, s.id, g.ipv4_prefix, g.ipv6_prefix);
        let state = inspect::source_state(ebpf, &g, &key).map_err(err)?;
        let (session_word, sessions_established, sessions_seeded) = inspect::sessions(ebpf, s.id).map_err(err)?;
        let p = predict(&Reading {
            service: s.id,
            policy: kernel_policy,
            entry: found,
            established: state.established(&g),
            reserved: state.reserved,
            tag: state.tag,
            rate: state.rate,
            session_word,
            sessions_established,
            sessions_seeded,
            now_ns: now,
            all: all_limit,
            all_established: all_state.established(&g),
            all_reserved: all_state.reserved,
            all_tag: all_state.tag,
        });
        let (limits_from, max_conn, bucket, on_reserve) = match p.admission {
            Admission::Decided(Verdict::RefusedDeny) => ("deny", 0, None, false),
            Admission::Decided(_) => ("exempt", 0, None, false),
            Admission::Limits { max_conn, max_conn_all, bucket, reserved } => {
                all_applies = Some(max_conn_all);
                let from = if found.is_some_and(|e| e.flags & entry::ALLOW != 0) { "allow" } else { "service" };
                (from, max_conn, (!bucket.is_unlimited()).then_some(bucket), reserved)
            }
        };
        let max_sessions = kernel_policy.max_sessions;
        rows.push(ExplainService {
            name: s.name.clone(),
            ports: s.ports.clone(),
            action: action_name(kernel_policy.action).unwrap_or_else(|| s.action.as_str()).to_owned(),
            limits_from: limits_from.to_owned(),
            max_conn_per_source: (max_conn != 0).then_some(max_conn),
            burst: bucket.map(|b| b.tolerance_ns / b.interval_ns + 1),
            tokens: bucket.map(|_| p.tokens),
            token_every_ms: bucket.map(|b| b.interval_ns / 1_000_000),
            connections: state.conns + state.seeded,
            seeded: state.seeded,
            in_flight: u64::from(p.in_flight),
            sessions: p.sessions,
            max_sessions: (max_sessions != 0).then_some(max_sessions),
            reserved_sessions: max_sessions.saturating_sub(kernel_policy.open_sessions),
            on_reserve_list: on_reserve,
            verdict: p.verdict.name().to_owned(),
        });
    }
    Ok(ExplainReply {
        address: address.to_string(),
        source: if source.len >= host.len { address.to_string() } else { source.to_string() },
        source_prefix,
        kernel_entry,
        entries: entries(policy, &d.runtime.lists, &host),
        all_services: AllServices {
            max_conn_per_source: all_applies.filter(|&n| n != 0),
            connections: all_state.conns + all_state.seeded,
            in_flight: u64::from(all_in_flight),
        },
        services: rows,
    })
}

/// The source over all services (the source-wide budget, service id 0):
/// the budget in force, the source's words under that key and its
/// handshakes in flight at `now`.
fn all_services(
    ebpf: &aya::Ebpf,
    g: &limiter_common::Globals,
    address: IpAddr,
    now: u64,
) -> Result<(u32, inspect::SourceState, u16), crate::kernel::error::LoadError> {
    let limit = inspect::service_policy(ebpf, g, 0)?.max_conn_per_source;
    let key = inspect::source_key(address, u32::from(limiter_common::maps::ALL_SERVICES), g.ipv4_prefix, g.ipv6_prefix);
    let state = inspect::source_state(ebpf, g, &key)?;
    let in_flight = limiter_common::pending::live(state.reserved, state.tag, limiter_common::pending::ticks(now));
    Ok((limit, state, in_flight))
}

/// The name of the action `POLICY` holds (`None` for one this build does not know).
const fn action_name(a: u8) -> Option<&'static str> {
    match a {
        action::DROP => Some("drop"),
        action::RESET => Some("reset"),
        action::RESPOND => Some("respond"),
        action::LOG => Some("log"),
        _ => None,
    }
}

/// What a merged entry says of the allow list.
const fn allow_kind(e: &ListEntry) -> &'static str {
    if e.flags & entry::ALLOW == 0 {
        "none"
    } else if e.flags & entry::EXEMPT != 0 {
        "exempt"
    } else {
        "limits"
    }
}

/// The entries in force covering `host`, layered as the daemon layers them
/// (`policy::force::layered`): a run-time allow entry replaces the config's for its
/// prefix, a run-time deny or reserve entry the config has already adds
/// nothing, run-time reserve entries of services the config lacks are left
/// out. Longest prefix first; `used` marks what the decision rests on.
fn entries(policy: &crate::policy::model::Policy, runtime: &Lists, host: &Prefix) -> Vec<ExplainEntry> {
    let config = &policy.lists;
    let lines = &policy.list_lines;
    let line = |of: &[Option<usize>], i: usize| of.get(i).copied().flatten();
    let mut out: Vec<ExplainEntry> = Vec::new();
    let mut push = |list: ListName, entry: Entry, origin: Origin, line: Option<usize>| {
        if entry.prefix.0.covers(host) {
            out.push(ExplainEntry { list, entry, origin, line, used: false });
        }
    };
    let replaced = |p| runtime.allow.iter().any(|a| a.prefix == p);
    for (i, a) in config.allow.iter().enumerate().filter(|(_, a)| !replaced(a.prefix)) {
        push(ListName::Allow, Entry::from(a), Origin::Config, line(&lines.allow, i));
    }
    for a in &runtime.allow {
        push(ListName::Allow, Entry::from(a), Origin::Runtime, None);
    }
    for (i, e) in config.deny.iter().enumerate() {
        push(ListName::Deny, Entry::from(e), Origin::Config, line(&lines.deny, i));
    }
    for e in runtime.deny.iter().filter(|e| !config.deny.iter().any(|c| c.prefix == e.prefix)) {
        push(ListName::Deny, Entry::from(e), Origin::Runtime, None);
    }
    for (i, e) in config.reserve.iter().enumerate() {
        push(ListName::Reserve, Entry::from(e), Origin::Config, line(&lines.reserve, i));
    }
    let known = |name: &str| policy.services.iter().any(|s| s.name == name);
    for e in runtime
        .reserve
        .iter()
        .filter(|e| known(&e.service) && !config.reserve.iter().any(|c| c.prefix == e.prefix && c.service == e.service))
    {
        push(ListName::Reserve, Entry::from(e), Origin::Runtime, None);
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.entry.prefix.0.len));
    // The longest deny and allow entries decide; every reserve entry counts.
    for list in [ListName::Deny, ListName::Allow] {
        if let Some(e) = out.iter_mut().find(|e| e.list == list) {
            e.used = true;
        }
    }
    for e in out.iter_mut().filter(|e| e.list == ListName::Reserve) {
        e.used = true;
    }
    out
}
