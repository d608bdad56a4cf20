//! What the daemon reports: `status`, `top` and the metrics snapshot, read
//! from the kernel's counters (`kernel::counters`) into the protocol's types.

use limiter_common::{
    SourceKey, Verdict,
    lists::{ListEntry, entry},
    maps::{ALL_SERVICES, SockRecord, family, names},
    pool,
    prefix::Prefix,
};

use crate::{
    daemon::{
        metrics::{ServiceSnapshot, Snapshot},
        refusals,
        state::Daemon,
    },
    kernel::{counters, maps},
    policy::{model::Policy, parse::show_duration},
    protocol::{
        AllServicesStatus, Counters, Interface, ListCounts, RecentRefusals, RefusalLines, ResponderStatus,
        ServiceStatus, StatusReply, TopReply, TopRow, Totals,
    },
};

/// A service's row of `COUNTERS` (or the sum of them), without
/// `passed_other`, which only row 0 counts.
pub(crate) fn counters(row: &[u64]) -> Counters {
    let at = |v: Verdict| Some(row[v as usize]);
    Counters {
        accepted: at(Verdict::Accepted),
        refused_deny: at(Verdict::RefusedDeny),
        refused_sessions: at(Verdict::RefusedSessions),
        refused_reserve: at(Verdict::RefusedReserve),
        refused_concurrency: at(Verdict::RefusedConcurrency),
        refused_rate: at(Verdict::RefusedRate),
        passed_non_syn: at(Verdict::PassedNonSyn),
    }
}

/// The `top` response: sources with connections, most first (docs/status.md).
pub(crate) fn top(d: &Daemon, service: Option<&str>, limit: usize) -> Result<TopReply, String> {
    let policy = &d.policy;
    let wanted = match service {
        Some(name) => Some(
            policy
                .services
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.id)
                .ok_or_else(|| format!("unknown service {}", crate::policy::lists::shown(name)))?,
        ),
        None => None,
    };
    let now = std::time::Instant::now();
    let held = counters::Held::read(&d.loaded.ebpf).map_err(|e| e.to_string())?;
    let mut rows = held.sources();
    rows.retain(|(key, count)| *count > 0 && wanted.is_none_or(|id| u32::from(key.service) == id));
    let total_connections: u64 = rows.iter().map(|(_, n)| n).sum();
    let total_sources = rows.len();
    let most_first = |a: &(SourceKey, u64), b: &(SourceKey, u64)| b.1.cmp(&a.1).then_with(|| a.0.addr.cmp(&b.0.addr));
    // Only the first `limit` are shown: they are picked out, and only they
    // sorted (a million sources would otherwise be sorted for 20 rows).
    if limit < rows.len() {
        rows.select_nth_unstable_by(limit, most_first);
        rows.truncate(limit);
    }
    rows.sort_by(most_first);
    let merged = &d.force.merged;
    // The source-wide counts of the shown rows only.
    let all = held.counts_of(rows.iter().map(|(key, _)| SourceKey { service: ALL_SERVICES, ..*key }));
    let sources = rows
        .iter()
        .filter_map(|(key, count)| {
            let s = policy.services.iter().find(|s| s.id == u32::from(key.service))?;
            let all_key = SourceKey { service: ALL_SERVICES, ..*key };
            Some(TopRow {
                all_services: all.get(&all_key).copied(),
                all_services_limit: all_services_limit(merged, key, policy),
                source: counters::source_string(key, policy),
                service: s.name.clone(),
                connections: *count,
                limit: source_limit(merged, key, policy, s),
                refused: d
                    .recent
                    .of(key, now, refusals::window())
                    .map(|(count, a)| RecentRefusals { count, last_answer: a.name().to_owned() }),
            })
        })
        .collect();
    Ok(TopReply { sources, total_sources: Some(total_sources), total_connections: Some(total_connections) })
}

/// The per-source connection limit that applies to `key`: a covering allow
/// entry's own (none for an exempt source), else the service's.
pub(crate) fn source_limit(
    merged: &std::collections::BTreeMap<Prefix, ListEntry>,
    key: &SourceKey,
    policy: &Policy,
    service: &crate::policy::service::Service,
) -> Option<u32> {
    let len = if key.family == family::V4 { policy.ipv4_prefix } else { policy.ipv6_prefix };
    let source = Prefix { family: key.family, addr: key.addr, len };
    match crate::policy::lists::longest_match(merged, &source) {
        Some(e) if e.flags & entry::EXEMPT != 0 => None,
        Some(e) if e.flags & entry::ALLOW != 0 => (e.max_conn_per_source != 0).then_some(e.max_conn_per_source),
        _ => service.max_conn_per_source,
    }
}

/// The source-wide limit that applies to `key`'s source: a covering allow
/// entry's own (none for an exempt source or one whose entry sets none),
/// else the config's.
pub(crate) fn all_services_limit(
    merged: &std::collections::BTreeMap<Prefix, ListEntry>,
    key: &SourceKey,
    policy: &Policy,
) -> Option<u32> {
    let len = if key.family == family::V4 { policy.ipv4_prefix } else { policy.ipv6_prefix };
    let source = Prefix { family: key.family, addr: key.addr, len };
    match crate::policy::lists::longest_match(merged, &source) {
        Some(e) if e.flags & entry::EXEMPT != 0 => None,
        Some(e) if e.flags & entry::ALLOW != 0 => (e.max_conn_all != 0).then_some(e.max_conn_all),
        _ => policy.max_conn_all_services,
    }
}

/// Sessions of service `id` in use (established and seeded; handshakes in
/// flight are not shown), from `SESSIONS` as `read_sessions` returns it.
pub(crate) fn sessions_in_use(sessions: &[u64], id: u32) -> u64 {
    let at = |kind| sessions.get(pool::index(id, kind) as usize).copied().unwrap_or(0);
    at(pool::ESTABLISHED) + at(pool::SEEDED)
}

/// What a metrics scrape reports, read from the kernel now.
pub(crate) fn snapshot(d: &Daemon) -> Result<Snapshot, String> {
    let ebpf = &d.loaded.ebpf;
    let rows = counters::read_counters(ebpf).map_err(|e| e.to_string())?;
    let observed = counters::read_observed(ebpf).map_err(|e| e.to_string())?;
    let sessions = counters::read_sessions(ebpf).map_err(|e| e.to_string())?;
    let held = counters::Held::read(ebpf).map_err(|e| e.to_string())?;
    let sources = held.sources();
    let all_services = all_services_status(d, &held);
    let conns = held.by_service();
    let services = d
        .policy
        .services
        .iter()
        .map(|s| ServiceSnapshot {
            name: s.name.clone(),
            counters: rows[s.id as usize],
            observed: observed[s.id as usize],
            connections: conns[s.id as usize],
            sessions: sessions_in_use(&sessions, s.id),
            max_sessions: s.max_sessions,
            max_conn_per_source: s.max_conn_per_source,
            answers: d.answer_counts.of(&s.name).into_iter().map(|(a, n)| (a.name(), n)).collect(),
        })
        .collect();
    let mut maps = Vec::new();
    let socks = counters::entries::<u64, SockRecord>(ebpf, names::SOCKS).map_err(|e| e.to_string())?.len() as u64;
    let (in_conns, in_seeded) = held.entries();
    for (name, used) in [(names::CONNS, in_conns), (names::SEEDED, in_seeded), (names::SOCKS, socks)] {
        let max = maps::map_size(ebpf, name).map_err(|e| e.to_string())?;
        maps.push((name, used, u64::from(max)));
    }
    let lists = d.force.merged.len();
    let room = maps::map_size(ebpf, names::LISTS).map_err(|e| e.to_string())? / 2;
    maps.push((names::LISTS, lists as u64, u64::from(room)));
    Ok(Snapshot {
        version: env!("CARGO_PKG_VERSION"),
        services,
        passed_other: rows[0][Verdict::PassedOther as usize],
        sources_tracked: held.tracked(),
        sources_connected: sources.iter().filter(|(_, n)| *n > 0).count() as u64,
        maps,
        attachments: d.loaded.attachments.iter().map(|a| (a.name.clone(), a.xdp_mode)).collect(),
        events_unreported: d.budget.unreported().map_err(|e| e.to_string())?,
        connections_uncounted: counters::read_uncounted(ebpf).map_err(|e| e.to_string())?,
        responder: responder_status(d)?,
        log_suppressed: d.bursts.suppressed_total,
        log_lines: d.bursts.logged_total,
        all_services,
    })
}

/// The source-wide budget's figures, if one is set.
fn all_services_status(d: &Daemon, held: &counters::Held) -> Option<AllServicesStatus> {
    let max = d.policy.max_conn_all_services?;
    let all = held.sources_all();
    let merged = &d.force.merged;
    let holding = all.iter().filter(|(_, n)| **n > 0);
    let at_limit = holding
        .clone()
        .filter(|(k, n)| all_services_limit(merged, k, &d.policy).is_some_and(|l| **n >= u64::from(l)))
        .count();
    Some(AllServicesStatus { max_conn_per_source: max, sources: holding.count() as u64, at_limit: at_limit as u64 })
}

/// The `status` response (documented in docs/status.md).
pub(crate) fn status(d: &Daemon) -> Result<StatusReply, String> {
    let (loaded, policy) = (&d.loaded, &d.policy);
    let rows = counters::read_counters(&loaded.ebpf).map_err(|e| e.to_string())?;
    let observed = counters::read_observed(&loaded.ebpf).map_err(|e| e.to_string())?;
    let held = counters::Held::read(&loaded.ebpf).map_err(|e| e.to_string())?;
    let conns = held.by_service();
    let sessions = counters::read_sessions(&loaded.ebpf).map_err(|e| e.to_string())?;
    let mut totals = [0u64; Verdict::COUNT as usize];
    let services = policy
        .services
        .iter()
        .map(|s| {
            let id = s.id as usize;
            let row = &rows[id];
            for (t, c) in totals.iter_mut().zip(row) {
                *t += c;
            }
            ServiceStatus {
                name: s.name.clone(),
                ports: s.ports.clone(),
                rate: s.rate,
                burst: s.burst,
                action: s.action.as_str().to_owned(),
                max_conn_per_source: s.max_conn_per_source,
                max_sessions: s.max_sessions,
                reserved_sessions: s.reserved_sessions,
                dead_peer_timeout: s.dead_peer_timeout.map(show_duration),
                sessions: Some(sessions_in_use(&sessions, s.id)),
                connections: conns[id],
                counters: counters(row),
                answers: d.answer_counts.of(&s.name).into_iter().map(|(a, n)| (a.name().to_owned(), n)).collect(),
                would_refuse: Verdict::ALL
                    .iter()
                    .filter(|v| observed[id][**v as usize] > 0)
                    .map(|v| (v.name().to_owned(), observed[id][*v as usize]))
                    .collect(),
            }
        })
        .collect();
    let totals = Totals { counters: counters(&totals), passed_other: rows[0][Verdict::PassedOther as usize] };
    let lists = &d.force.policy.lists;
    let interfaces = loaded
        .attachments
        .iter()
        .map(|a| Interface { name: a.name.clone(), ifindex: a.ifindex, xdp_mode: a.xdp_mode.to_owned() })
        .collect();
    Ok(StatusReply {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pin_dir: Some(d.pin_dir.clone()),
        interfaces,
        ipv4_prefix: policy.ipv4_prefix,
        ipv6_prefix: policy.ipv6_prefix,
        services,
        lists: Some(ListCounts { allow: lists.allow.len(), deny: lists.deny.len(), reserve: lists.reserve.len() }),
        totals,
        metrics_listen: policy.metrics_listen.map(|a| a.to_string()),
        refusal_lines: Some(RefusalLines {
            logged: d.bursts.logged_total,
            suppressed: d.bursts.suppressed_total,
            unreported: d.budget.unreported().map_err(|e| e.to_string())?,
        }),
        responder: Some(responder_status(d)?),
        all_services: all_services_status(d, &held),
    })
}

/// The `respond` action's counts, the kernel's and the responder's.
pub(crate) fn responder_status(d: &Daemon) -> Result<ResponderStatus, String> {
    let k = d.loaded.responder.counts().map_err(|e| e.to_string())?;
    let r = *d.responder.borrow();
    Ok(ResponderStatus {
        steered: k.steered,
        redirected: k.redirected,
        responded: r.responded,
        reset: r.reset,
        failed: r.failed,
        fallback_no_token: k.no_token,
        fallback_no_responder: k.no_responder,
        fallback_over_share: k.over_share,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_is_read_from_its_verdicts_row_index() {
        // Row index i holds i + 100: each field must show its verdict's.
        let row: Vec<u64> = (0..u64::from(Verdict::COUNT)).map(|i| i + 100).collect();
        let shown = serde_json::to_value(counters(&row)).expect("json");
        let Some(fields) = shown.as_object() else { panic!("{shown}") };
        for v in Verdict::ALL.into_iter().filter(|v| *v != Verdict::PassedOther) {
            assert_eq!(fields.get(v.name()), Some(&serde_json::Value::from(v as u64 + 100)), "{}", v.name());
        }
        assert_eq!(fields.len(), Verdict::ALL.len() - 1, "{shown}");
    }
}
