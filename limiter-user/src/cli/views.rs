//! The human views of `limiter status` and `limiter top`: aligned tables
//! built from the daemon's replies. The reply types ignore fields they do
//! not know, so a daemon that adds fields (it only ever adds) still
//! renders; a value an older daemon does not send shows as `-`.

use std::fmt::{Display, Write as _};

use crate::{
    policy::lists::printable,
    protocol::{ExplainEntry, ExplainReply, ExplainService, ListName, Origin, StatusReply, TopReply},
};

/// How a column aligns its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// A plain text table: a header row, optional group labels above it, and
/// cells padded to the widest of each column (two spaces between columns).
struct Table {
    headers: Vec<(&'static str, Align)>,
    /// `(label, first column)`: printed above the headers from that column on.
    groups: Vec<(&'static str, usize)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[(&'static str, Align)]) -> Self {
        Self { headers: headers.to_vec(), groups: Vec::new(), rows: Vec::new() }
    }

    fn widths(&self) -> Vec<usize> {
        self.headers
            .iter()
            .enumerate()
            .map(|(i, (h, _))| {
                self.rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).chain([h.len()]).max().unwrap_or(0)
            })
            .collect()
    }

    fn render(&self, out: &mut String) {
        let widths = self.widths();
        if !self.groups.is_empty() {
            // Column start offsets, to put each label over its first column.
            let starts: Vec<usize> = widths.iter().scan(0, |at, w| Some(std::mem::replace(at, *at + w + 2))).collect();
            let mut line = String::new();
            for (label, col) in &self.groups {
                let at = starts.get(*col).copied().unwrap_or(0);
                while line.chars().count() < at {
                    line.push(' ');
                }
                if !line.is_empty() && !line.ends_with(' ') {
                    line.push(' ');
                }
                line.push_str(label);
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let header: Vec<String> = self.headers.iter().map(|(h, _)| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, ((_, align), w)) in self.headers.iter().zip(&widths).enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                if i > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Left => {
                        let _ = write!(line, "{cell:<w$}");
                    }
                    Align::Right => {
                        let _ = write!(line, "{cell:>w$}");
                    }
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
}

/// A value as text; `-` for none (null, or not sent).
fn cell<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `N/MAX`, with `-` for an absent maximum.
fn of<N: Display, M: Display>(n: Option<N>, max: Option<M>) -> String {
    format!("{}/{}", cell(n), cell(max))
}

/// `limiter status` as an admin reads it: a header line, the interfaces,
/// one row per service (policy, what is in use now, verdict counters), then
/// the lists and the frames that matched no service.
#[must_use]
pub fn status(v: &StatusReply) -> String {
    let mut out = String::new();
    let mut head = format!("limiter {}", v.version);
    if let Some(dir) = &v.pin_dir {
        let _ = write!(head, "   pins {}", dir.display());
    }
    let _ = write!(head, "   sources IPv4 /{}, IPv6 /{}", v.ipv4_prefix, v.ipv6_prefix);
    let _ = writeln!(out, "{head}");
    let ifaces: Vec<String> =
        v.interfaces.iter().map(|i| format!("{} (xdp {}, ifindex {})", i.name, i.xdp_mode, i.ifindex)).collect();
    let _ = writeln!(out, "interfaces: {}", if ifaces.is_empty() { "-".to_owned() } else { ifaces.join(", ") });
    let _ = writeln!(out);
    services_table(v).render(&mut out);
    let _ = writeln!(out);
    if let Some(l) = &v.lists {
        let _ = writeln!(out, "lists: {} allow, {} deny, {} reserve entries", l.allow, l.deny, l.reserve);
    }
    let _ = writeln!(out, "other packets passed: {}", v.totals.passed_other);
    let answered: Vec<String> = v
        .services
        .iter()
        .filter_map(|s| {
            // Observe mode's would-be refusals are not refusals: they have a line of their own.
            let parts: Vec<String> = s
                .answers
                .iter()
                .filter(|(a, _)| a.as_str() != "observed")
                .map(|(a, n)| format!("{n} {}", answer_words(a)))
                .collect();
            (!parts.is_empty()).then(|| format!("{} {}", s.name, parts.join(", ")))
        })
        .collect();
    if !answered.is_empty() {
        let _ = writeln!(out, "refusals answered (reported since start): {}", answered.join("; "));
    }
    let would: Vec<String> = v
        .services
        .iter()
        .filter(|s| !s.would_refuse.is_empty())
        .map(|s| {
            let parts: Vec<String> = s.would_refuse.iter().map(|(v, n)| format!("{n} {}", verdict_words(v))).collect();
            format!("{} {}", s.name, parts.join(", "))
        })
        .collect();
    if !would.is_empty() {
        let _ = writeln!(out, "would have refused (action log, let through): {}", would.join("; "));
    }
    if let Some(r) = v.responder.filter(|_| v.services.iter().any(|s| s.action == "respond")) {
        let _ = writeln!(
            out,
            "respond: {} answered, {} reset, {} failed; fell back to reset: {} out of tokens, {} over their share, {} \
             no responder",
            r.responded, r.reset, r.failed, r.fallback_no_token, r.fallback_over_share, r.fallback_no_responder
        );
    }
    out
}

/// An answer's name in `status --json` as the refusal lines word it.
fn answer_words(name: &str) -> &str {
    match name {
        "fallback" => "fallback reset",
        "no_handshake" => "no handshake",
        other => other,
    }
}

/// A refusal counter's name as the rule that refused.
fn verdict_words(name: &str) -> &str {
    match name {
        "refused_deny" => "by the deny list",
        "refused_sessions" => "by sessions",
        "refused_reserve" => "by the reserve",
        "refused_concurrency" => "by connections",
        "refused_rate" => "by rate",
        other => other,
    }
}

/// One row per service: its policy, what is in use now, verdict counters.
fn services_table(v: &StatusReply) -> Table {
    use Align::{Left, Right};
    let mut t = Table::new(&[
        ("SERVICE", Left),
        ("PORTS", Left),
        ("ACTION", Left),
        ("CONN", Right),
        ("RATE", Right),
        ("BURST", Right),
        ("USED", Right),
        ("RSV", Right),
        ("CONNS", Right),
        ("ACCEPTED", Right),
        ("DENY", Right),
        ("SESS", Right),
        ("RSRV", Right),
        ("CONN", Right),
        ("RATE", Right),
        ("NON_SYN", Right),
    ]);
    // Per-source limits, the service's sessions (in use/max, reserved),
    // then SYN verdicts: refused by the rule that refused them.
    t.groups = vec![("limits", 3), ("sessions", 6), ("refused by", 10)];
    for s in &v.services {
        let ports: Vec<String> = s.ports.iter().map(ToString::to_string).collect();
        let c = &s.counters;
        // Reserved sessions only mean something under a session cap.
        let reserved = s.max_sessions.map(|_| s.reserved_sessions);
        t.rows.push(vec![
            s.name.clone(),
            if ports.is_empty() { "-".to_owned() } else { ports.join(",") },
            s.action.clone(),
            cell(s.max_conn_per_source),
            cell(s.rate),
            cell(s.rate.map(|_| s.burst)),
            of(s.sessions, s.max_sessions),
            cell(reserved),
            s.connections.to_string(),
            cell(c.accepted),
            cell(c.refused_deny),
            cell(c.refused_sessions),
            cell(c.refused_reserve),
            cell(c.refused_concurrency),
            cell(c.refused_rate),
            cell(c.passed_non_syn),
        ]);
    }
    t
}

/// `limiter top` as an admin reads it: a header with the time and how many
/// sources are shown of how many hold connections, then the sources (most
/// connections first, as the daemon sorts them), `FULL` marking those at
/// their limit. `now` is the local time to show (`HH:MM:SS`).
#[must_use]
pub fn top(v: &TopReply, now: &str) -> String {
    use Align::{Left, Right};
    let rows = &v.sources;
    let mut out = String::new();
    let shown = rows.len();
    let total = v.total_sources.unwrap_or(shown);
    let mut head = format!("{now}   {shown} of {total} sources holding connections");
    if let Some(c) = v.total_connections {
        let _ = write!(head, ", {c} connection{}", if c == 1 { "" } else { "s" });
    }
    let at_limit = rows.iter().filter(|r| r.is_full()).count();
    if at_limit > 0 {
        let _ = write!(head, ", {at_limit} at their limit (FULL)");
    }
    let _ = writeln!(out, "{head}");
    if rows.is_empty() {
        let _ = writeln!(out, "no source holds a connection");
        return out;
    }
    // REFUSED: the source's refusals in the last 10 s, and what answered the last.
    let refused = rows.iter().any(|r| r.refused.is_some());
    let mut columns = vec![("SOURCE", Left), ("SERVICE", Left), ("CONN/LIMIT", Right), ("", Left)];
    if refused {
        columns.push(("REFUSED (10s)", Left));
    }
    let mut t = Table::new(&columns);
    for r in rows {
        let mut row = vec![
            r.source.clone(),
            r.service.clone(),
            of(Some(r.connections), r.limit),
            if r.is_full() { "FULL".to_owned() } else { String::new() },
        ];
        if refused {
            row.push(r.refused.as_ref().map_or_else(String::new, |x| match x.last_answer.as_str() {
                // Observe mode: nothing was refused.
                "observed" => format!("{} would be refused, let through (log)", x.count),
                a => format!("{}, last {}", x.count, answer_words(a)),
            }));
        }
        t.rows.push(row);
    }
    t.render(&mut out);
    out
}

/// `limiter explain` as an admin reads it at 3 a.m.: the source the
/// address counts as, the list entries covering it (the one each decision
/// rests on, the shadowed ones marked), then a line per service: what it
/// holds of its limits and what its next SYN would get.
#[must_use]
pub fn explain(v: &ExplainReply) -> String {
    let mut out = String::new();
    let setting = if v.address.contains(':') { "ipv6_prefix" } else { "ipv4_prefix" };
    if v.source == v.address {
        let _ = writeln!(out, "{} is a source of its own ({setting} {})", v.address, v.source_prefix);
    } else {
        let _ = writeln!(out, "{} falls in {} ({setting} {})", v.address, v.source, v.source_prefix);
    }
    for list in [ListName::Deny, ListName::Allow] {
        let of: Vec<&ExplainEntry> = v.entries.iter().filter(|e| e.list == list).collect();
        if of.is_empty() {
            let _ = writeln!(out, "  {}: none", list.as_str());
        }
        for e in of {
            let _ = writeln!(out, "  {}", entry_line(e));
        }
    }
    for e in v.entries.iter().filter(|e| e.list == ListName::Reserve) {
        let _ = writeln!(out, "  {}", entry_line(e));
    }
    let all = &v.all_services;
    if let Some(max) = all.max_conn_per_source {
        let _ = writeln!(
            out,
            "  all services: {}/{max} connections, {} in flight (the source-wide limit)",
            all.connections, all.in_flight
        );
    }
    let width = v.services.iter().map(|s| service_name(s).chars().count()).max().unwrap_or(0);
    for s in &v.services {
        let _ = writeln!(out, "  {:<width$}  {}", service_name(s), service_line(s));
    }
    out
}

/// `smtp:25,465,587`.
fn service_name(s: &ExplainService) -> String {
    let ports: Vec<String> = s.ports.iter().map(ToString::to_string).collect();
    format!("{}:{}", s.name, ports.join(","))
}

/// `allow 198.18.0.0/16 max_conn 20 (config line 14, "partner")`.
fn entry_line(e: &ExplainEntry) -> String {
    let mut line = format!("{} {}", e.list.as_str(), e.entry.prefix);
    match e.list {
        ListName::Allow => {
            let x = &e.entry;
            if x.max_conn_per_source.is_none() && x.rate.is_none() {
                line.push_str(" exempt");
            }
            if let Some(m) = x.max_conn_per_source {
                let _ = write!(line, " max_conn {m}");
            }
            if let Some(r) = x.rate {
                let _ = write!(line, " rate {r}");
            }
            if let Some(b) = x.burst {
                let _ = write!(line, " burst {b}");
            }
        }
        ListName::Reserve => {
            let _ = write!(line, " for {}", printable(e.entry.service.as_deref().unwrap_or("-")));
        }
        ListName::Deny => {}
    }
    let mut origin = match (e.origin, e.line) {
        (Origin::Config, Some(n)) => format!("config line {n}"),
        (Origin::Config, None) => "config".to_owned(),
        (Origin::Runtime, _) => "run time".to_owned(),
    };
    if let Some(c) = &e.entry.comment {
        let _ = write!(origin, ", \"{}\"", printable(c));
    }
    let _ = write!(line, " ({origin})");
    if !e.used {
        line.push_str(", shadowed by a longer prefix");
    }
    line
}

/// `4/20 connections, 0 in flight, tokens 9/10, sessions 12/50 -> next SYN: accepted`,
/// or `... -> next SYN: refused (reset): at its connection limit`.
fn service_line(s: &ExplainService) -> String {
    let mut parts = Vec::new();
    match s.limits_from.as_str() {
        "deny" => parts.push("denied".to_owned()),
        "exempt" => parts.push(format!("exempt, {} connections", s.connections)),
        _ => {
            let limit = s.max_conn_per_source.map_or_else(|| " (no limit)".to_owned(), |m| format!("/{m}"));
            let mut held = format!("{}{limit} connections", s.connections);
            if s.seeded > 0 {
                let _ = write!(held, " ({} from before the start)", s.seeded);
            }
            parts.push(held);
            parts.push(format!("{} in flight", s.in_flight));
            match (s.tokens, s.burst) {
                (Some(t), Some(b)) => parts.push(format!("tokens {t}/{b}")),
                _ => parts.push("no rate limit".to_owned()),
            }
            if let Some(max) = s.max_sessions {
                let mut sessions = format!("sessions {}/{max}", s.sessions);
                if s.reserved_sessions > 0 {
                    let who = if s.on_reserve_list { "on the reserve list" } else { "not on the reserve list" };
                    let _ = write!(sessions, " ({} reserved, {who})", s.reserved_sessions);
                }
                parts.push(sessions);
            }
        }
    }
    let verdict = match s.verdict.as_str() {
        "accepted" if s.limits_from == "exempt" => "accepted (exempt)".to_owned(),
        "accepted" => "accepted".to_owned(),
        other => {
            let why = match other {
                "refused_deny" => "on the deny list",
                "refused_sessions" => "the service's sessions are full",
                "refused_reserve" => "only reserved sessions are left",
                "refused_concurrency" if v_all_full(s) => "at its connection limit over all services",
                "refused_concurrency" => "at its connection limit",
                "refused_rate" => "no token left",
                other => other,
            };
            if s.action == "log" {
                format!("would be refused (action log: let through): {why}")
            } else {
                format!("refused ({}): {why}", s.action)
            }
        }
    };
    format!("{} -> next SYN: {verdict}", parts.join(", "))
}

/// A connection refusal not explained by the service's own limit: the
/// source-wide budget's.
fn v_all_full(s: &ExplainService) -> bool {
    s.max_conn_per_source.is_none_or(|m| s.connections + s.in_flight < u64::from(m))
}

/// The local time of day as `HH:MM:SS`.
#[must_use]
pub fn local_time() -> String {
    // SAFETY: time and localtime_r write into values we own.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&raw const t, &raw mut tm).is_null() {
            return "--:--:--".to_owned();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// A reply as the client reads it from the daemon's JSON.
    fn read<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("a reply")
    }

    fn status_json() -> Value {
        json!({
            "version": "0.1.0",
            "pin_dir": "/sys/fs/bpf/limiter",
            "interfaces": [ { "name": "eth0", "ifindex": 2, "xdp_mode": "native" } ],
            "ipv4_prefix": 32,
            "ipv6_prefix": 64,
            "metrics_listen": "127.0.0.1:9100",
            "services": [
                {
                    "name": "smtp", "ports": [25, 465, 587], "rate": "30/m", "burst": 10, "action": "reset",
                    "max_conn_per_source": 8, "max_sessions": 50, "reserved_sessions": 30, "sessions": 12,
                    "connections": 14,
                    "counters": { "accepted": 1234, "refused_deny": 3, "refused_sessions": 0, "refused_reserve": 2,
                                  "refused_concurrency": 41, "refused_rate": 7, "passed_non_syn": 99_999,
                                  "refused_new_reason": 1 },
                    "answers": { "reset": 50, "fallback": 1 }
                },
                {
                    "name": "imap", "ports": [143, 993], "rate": null, "burst": 10, "action": "drop",
                    "max_conn_per_source": null, "max_sessions": null, "reserved_sessions": 0, "sessions": 0,
                    "connections": 0,
                    "counters": { "accepted": 0, "refused_deny": 0, "refused_sessions": 0, "refused_reserve": 0,
                                  "refused_concurrency": 0, "refused_rate": 0, "passed_non_syn": 0 }
                }
            ],
            "lists": { "allow": 2, "deny": 1, "reserve": 0 },
            "totals": { "accepted": 1234, "passed_other": 5120 },
            "refusal_events": { "sent": 3 }
        })
    }

    #[test]
    fn status_table() {
        let text = status(&read(status_json()));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "limiter 0.1.0   pins /sys/fs/bpf/limiter   sources IPv4 /32, IPv6 /64");
        assert_eq!(lines[1], "interfaces: eth0 (xdp native, ifindex 2)");
        assert_eq!(lines[2], "");
        assert!(lines[3].contains("limits") && lines[3].contains("refused by"), "{text}");
        assert!(
            lines[4].starts_with("SERVICE  PORTS       ACTION  CONN  RATE  BURST   USED  RSV  CONNS  ACCEPTED"),
            "{text}"
        );
        let smtp: Vec<&str> = lines[5].split_whitespace().collect();
        assert_eq!(
            smtp,
            [
                "smtp",
                "25,465,587",
                "reset",
                "8",
                "30/m",
                "10",
                "12/50",
                "30",
                "14",
                "1234",
                "3",
                "0",
                "2",
                "41",
                "7",
                "99999"
            ]
        );
        let imap: Vec<&str> = lines[6].split_whitespace().collect();
        assert_eq!(
            imap,
            ["imap", "143,993", "drop", "-", "-", "-", "0/-", "-", "0", "0", "0", "0", "0", "0", "0", "0"]
        );
        assert_eq!(lines[8], "lists: 2 allow, 1 deny, 0 reserve entries");
        assert_eq!(lines[9], "other packets passed: 5120");
        assert_eq!(lines[10], "refusals answered (reported since start): smtp 1 fallback reset, 50 reset");
        for l in &lines {
            assert!(l.len() <= 120, "{} columns: {l}\n{text}", l.len());
        }
        // Every group label sits over its first column.
        let header = lines[4];
        for (label, column) in [("limits", "CONN"), ("sessions", "USED"), ("refused by", "DENY")] {
            let at = lines[3].find(label).expect("label");
            let col = header.find(column).expect("column");
            // Right-aligned columns: the label starts where the padded column does.
            assert!(at <= col && col < at + 8, "{label} at {at}, {column} at {col}\n{text}");
        }
    }

    #[test]
    fn status_of_an_older_daemon_without_the_newer_fields() {
        let v = json!({
            "version": "0.0.9", "interfaces": [], "ipv4_prefix": 32, "ipv6_prefix": 64,
            "services": [ { "name": "default", "ports": [2525], "rate": "5/s", "burst": 5, "action": "reset",
                            "max_conn_per_source": 8, "connections": 5,
                            "counters": { "accepted": 12, "refused_rate": 7, "passed_non_syn": 143 } } ],
            "totals": { "passed_other": 1 }
        });
        let text = status(&read(v));
        assert!(text.starts_with("limiter 0.0.9   sources IPv4 /32, IPv6 /64\ninterfaces: -\n"), "{text}");
        let row: Vec<&str> = text.lines().nth(5).expect("row").split_whitespace().collect();
        assert_eq!(
            row,
            ["default", "2525", "reset", "8", "5/s", "5", "-/-", "-", "5", "12", "-", "-", "-", "-", "7", "143"]
        );
        assert!(!text.contains("lists:"), "{text}");
    }

    #[test]
    fn top_table() {
        let v = json!({
            "sources": [
                { "source": "198.51.100.7", "service": "smtp", "connections": 8, "limit": 8 },
                { "source": "2001:db8:1:2::/64", "service": "imap", "connections": 3, "limit": 10 },
                { "source": "198.18.0.9", "service": "ftp", "connections": 2, "limit": null, "new_field": true }
            ],
            "total_sources": 5,
            "total_connections": 17
        });
        let text = top(&read(v), "12:34:56");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "12:34:56   3 of 5 sources holding connections, 17 connections, 1 at their limit (FULL)");
        assert_eq!(lines[1], "SOURCE             SERVICE  CONN/LIMIT");
        assert_eq!(lines[2], "198.51.100.7       smtp            8/8  FULL");
        assert_eq!(lines[3], "2001:db8:1:2::/64  imap           3/10");
        assert_eq!(lines[4], "198.18.0.9         ftp             2/-");
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn top_says_what_answered_the_sources_refusals() {
        let v = json!({
            "sources": [
                { "source": "198.51.100.7", "service": "smtp", "connections": 2, "limit": 2,
                  "refused": { "count": 5, "last_answer": "responded" } },
                { "source": "198.51.100.8", "service": "smtp", "connections": 2, "limit": 2,
                  "refused": { "count": 1, "last_answer": "fallback" } },
                { "source": "198.18.0.9", "service": "smtp", "connections": 1, "limit": 2 }
            ]
        });
        let text = top(&read(v), "12:34:56");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "SOURCE        SERVICE  CONN/LIMIT        REFUSED (10s)");
        assert_eq!(lines[2], "198.51.100.7  smtp            2/2  FULL  5, last responded");
        assert_eq!(lines[3], "198.51.100.8  smtp            2/2  FULL  1, last fallback reset");
        assert_eq!(lines[4].trim_end(), "198.18.0.9    smtp            1/2");
    }

    #[test]
    fn observe_mode_is_told_apart_from_refusals() {
        let v = json!({
            "version": "0.1.0", "interfaces": [], "ipv4_prefix": 32, "ipv6_prefix": 64,
            "services": [ { "name": "smtp", "ports": [25], "rate": null, "burst": 0, "action": "log",
                            "max_conn_per_source": 3, "connections": 3,
                            "counters": { "accepted": 12, "passed_non_syn": 1 },
                            "would_refuse": { "refused_concurrency": 4, "refused_rate": 2 },
                            "answers": { "observed": 6 } } ],
            "totals": { "passed_other": 1 }
        });
        let text = status(&read(v));
        assert!(
            text.contains("\nwould have refused (action log, let through): smtp 4 by connections, 2 by rate\n"),
            "{text}"
        );
        assert!(!text.contains("refusals answered"), "observe mode answered no refusal:\n{text}");
        let v = json!({ "sources": [ { "source": "198.51.100.7", "service": "smtp", "connections": 3, "limit": 3,
                                       "refused": { "count": 6, "last_answer": "observed" } } ] });
        let text = top(&read(v), "t");
        assert!(text.lines().nth(2).expect("row").ends_with("FULL  6 would be refused, let through (log)"), "{text}");
    }

    #[test]
    fn top_empty_and_without_totals() {
        let text = top(&read(json!({ "sources": [] })), "00:00:01");
        assert_eq!(text, "00:00:01   0 of 0 sources holding connections\nno source holds a connection\n");
        let v = json!({ "sources": [ { "source": "a", "service": "s", "connections": 1, "limit": 1 } ] });
        let text = top(&read(v), "t");
        assert!(text.starts_with("t   1 of 1 sources holding connections, 1 at their limit (FULL)\n"), "{text}");
        let v = json!({ "sources": [ { "source": "a", "service": "s", "connections": 1, "limit": null } ],
                        "total_sources": 1, "total_connections": 1 });
        assert!(
            top(&read(v.clone()), "t").starts_with("t   1 of 1 sources holding connections, 1 connection\n"),
            "{v}"
        );
    }

    #[test]
    fn explain_lines() {
        let v = json!({
            "address": "198.18.0.7", "source": "198.18.0.0/24", "source_prefix": 24,
            "kernel_entry": { "prefix": "198.18.0.0/24", "deny": false, "allow": "limits", "reserve": ["smtp"] },
            "entries": [
                { "list": "reserve", "prefix": "198.18.0.0/24", "service": "smtp", "origin": "runtime", "used": true },
                { "list": "allow", "prefix": "198.18.0.0/16", "max_conn_per_source": 20, "comment": "partner",
                  "origin": "config", "line": 14, "used": true },
                { "list": "allow", "prefix": "198.0.0.0/8", "origin": "runtime", "comment": "all\u{1b}[2J",
                  "used": false }
            ],
            "services": [
                { "name": "smtp", "ports": [25], "action": "reset", "limits_from": "allow",
                  "max_conn_per_source": 20, "burst": 10, "tokens": 9, "token_every_ms": 2000, "connections": 4,
                  "seeded": 0, "in_flight": 0, "sessions": 12, "max_sessions": 50, "reserved_sessions": 0,
                  "on_reserve_list": true, "verdict": "accepted" },
                { "name": "imap", "ports": [143, 993], "action": "drop", "limits_from": "service",
                  "max_conn_per_source": 4, "burst": null, "tokens": null, "token_every_ms": null,
                  "connections": 4, "seeded": 1, "in_flight": 0, "sessions": 30, "max_sessions": 40,
                  "reserved_sessions": 10, "on_reserve_list": false, "verdict": "refused_reserve",
                  "new_field": 1 }
            ],
            "new_field": true
        });
        let text = explain(&read(v));
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "198.18.0.7 falls in 198.18.0.0/24 (ipv4_prefix 24)",
                "  deny: none",
                "  allow 198.18.0.0/16 max_conn 20 (config line 14, \"partner\")",
                "  allow 198.0.0.0/8 exempt (run time, \"all\\u{1b}[2J\"), shadowed by a longer prefix",
                "  reserve 198.18.0.0/24 for smtp (run time)",
                "  smtp:25       4/20 connections, 0 in flight, tokens 9/10, sessions 12/50 -> next SYN: accepted",
                "  imap:143,993  4/4 connections (1 from before the start), 0 in flight, no rate limit, sessions \
                 30/40 (10 reserved, not on the reserve list) -> next SYN: refused (drop): only reserved sessions \
                 are left",
            ]
        );
        let denied = json!({
            "address": "2001:db8::7", "source": "2001:db8::/64", "source_prefix": 64, "kernel_entry": null,
            "entries": [ { "list": "deny", "prefix": "2001:db8::/32", "origin": "config", "used": true } ],
            "services": [ { "name": "smtp", "ports": [25], "action": "reset", "limits_from": "deny",
                "max_conn_per_source": null, "burst": null, "tokens": null, "token_every_ms": null,
                "connections": 0, "seeded": 0, "in_flight": 0, "sessions": 0, "max_sessions": null,
                "reserved_sessions": 0, "on_reserve_list": false, "verdict": "refused_deny" } ]
        });
        let text = explain(&read(denied));
        assert_eq!(
            text,
            "2001:db8::7 falls in 2001:db8::/64 (ipv6_prefix 64)\n  deny 2001:db8::/32 (config)\n  allow: none\n  \
             smtp:25  denied -> next SYN: refused (reset): on the deny list\n"
        );
    }

    #[test]
    fn local_time_is_a_time_of_day() {
        let t = local_time();
        assert_eq!(t.len(), 8, "{t}");
        assert_eq!(t.as_bytes()[2], b':');
    }
}
