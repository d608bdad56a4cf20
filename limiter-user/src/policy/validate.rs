//! The rules a [`Policy`] must pass beyond each value's own form, every
//! problem reported at the place in the file of the value it is about
//! ([`Given`] says which values the file gave). The verdict is `build.rs`'s.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use limiter_common::{keepalive, maps::MAX_SERVICES};

use crate::policy::{
    file::ResponderFile,
    lists::{Cidr, Lists, check_comment, check_service_name, shown},
    model::{MapSizes, Overrides, Policy, ResponderLimits},
    parse::show_duration,
    report::{List, Origin, Report},
    respond::check_text,
    service::{Action, MAX_BURST, Service},
};

/// Every problem of the policy, at the place in the file of the value
/// it is about.
pub(super) fn judge(p: &Policy, given: &Given, origin: &Origin, r: &mut Report) {
    judge_interfaces(&p.interfaces, given, r);
    for (name, len, max) in [("ipv4_prefix", p.ipv4_prefix, 32), ("ipv6_prefix", p.ipv6_prefix, 128)] {
        if !(1..=max).contains(&len) {
            r.push(given.top(name), format!("{name} = {len}: expected 1..={max}"));
        }
    }
    if p.max_conn_all_services == Some(0) {
        r.push(
            given.top("max_conn_per_source"),
            "max_conn_per_source = 0 (over all services) would refuse every source: expected >= 1, or omit it for \
             no source-wide limit"
                .to_owned(),
        );
    }
    judge_maps(p.maps, r);
    judge_responder(p.responder, given.responder, r);
    judge_services(&p.services, given, origin, r);
    judge_lists(&p.lists, &p.services, p.maps.list_entries, origin, r);
}

fn judge_interfaces(interfaces: &[String], given: &Given, r: &mut Report) {
    let place = |i: usize| {
        let at = given.top("interfaces");
        if at.is_empty() { at } else { format!("{at}[{i}]") }
    };
    if interfaces.is_empty() {
        r.push("interfaces", "no interface to protect: give --iface IF or interfaces = [\"IF\"] in the config");
    }
    let mut seen = BTreeSet::new();
    for (i, name) in interfaces.iter().enumerate() {
        // What the kernel accepts as a device name (dev_valid_name).
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name == "."
            || name == ".."
            || name.contains(['/', ':'])
            || name.contains(char::is_whitespace)
        {
            r.push(
                place(i),
                format!("interface name '{name}': expected 1 to 15 characters without '/', ':' or spaces"),
            );
        } else if !seen.insert(name) {
            r.push(place(i), format!("interface '{name}' listed twice"));
        }
    }
}

fn judge_services(services: &[Service], given: &Given, origin: &Origin, r: &mut Report) {
    if services.len() > MAX_SERVICES as usize {
        r.push(
            given.service(MAX_SERVICES as usize),
            format!("{} services: at most {MAX_SERVICES} are supported", services.len()),
        );
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    // Port -> (service, index in its ports).
    let mut owners: BTreeMap<u16, (usize, usize)> = BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        judge_name(s, i, &mut names, given, origin, r);
        judge_ports(services, i, &mut owners, given, origin, r);
        judge_limits(s, i, given, r);
        judge_respond(s, i, given, r);
    }
}

/// `service 'NAME': `, the start of a service's problems.
fn who(s: &Service) -> String {
    format!("service {}: ", shown(&s.name))
}

/// The name of service `i`: well formed, and not an earlier service's
/// (`names`: the names so far, with their service).
fn judge_name<'a>(
    s: &'a Service,
    i: usize,
    names: &mut BTreeMap<&'a str, usize>,
    given: &Given,
    origin: &Origin,
    r: &mut Report,
) {
    if let Err(e) = check_service_name(&s.name) {
        r.push(given.field(i, "name"), e);
    } else if let Some(&first) = names.get(s.name.as_str()) {
        r.push(
            given.field(i, "name"),
            format!(
                "service '{}' defined twice{}: expected a name of its own",
                s.name,
                first_at(origin, &given.field(first, "name"))
            ),
        );
    } else {
        names.insert(&s.name, i);
    }
}

/// The ports of service `i`: at least one, each valid, listed once, and
/// not an earlier service's (`owners`: the ports so far, with their place).
fn judge_ports(
    services: &[Service],
    i: usize,
    owners: &mut BTreeMap<u16, (usize, usize)>,
    given: &Given,
    origin: &Origin,
    r: &mut Report,
) {
    let s = &services[i];
    let who = who(s);
    if s.ports.is_empty() {
        r.push(given.field(i, "ports"), format!("{who}no ports: expected ports = [P, ...], e.g. [25, 587]"));
    }
    let mut own = BTreeSet::new();
    for (j, &port) in s.ports.iter().enumerate() {
        let place = given.port(i, j);
        if port == 0 {
            r.push(place, format!("{who}port 0: expected 1..=65535"));
        } else if !own.insert(port) {
            r.push(place, format!("{who}port {port} listed twice"));
        } else if let Some(&(k, m)) = owners.get(&port) {
            r.push(
                place,
                format!(
                    "port {port} belongs to both '{}'{} and '{}': expected each port in one service only",
                    services[k].name,
                    line_of(origin, &given.port(k, m)),
                    s.name
                ),
            );
        } else {
            owners.insert(port, (i, j));
        }
    }
}

/// The limits of service `i`: none that refuses everything, and no more
/// reserved sessions than sessions.
fn judge_limits(s: &Service, i: usize, given: &Given, r: &mut Report) {
    let at = |field: &str| given.field(i, field);
    let who = who(s);
    if s.burst == 0 || s.burst > MAX_BURST {
        r.push(at("burst"), format!("{who}burst = {}: expected 1..={MAX_BURST}", s.burst));
    }
    if s.max_conn_per_source == Some(0) {
        r.push(
            at("max_conn_per_source"),
            format!("{who}max_conn_per_source = 0 would refuse every source: expected >= 1, or omit it for no limit"),
        );
    }
    if s.max_sessions == Some(0) {
        r.push(
            at("max_sessions"),
            format!("{who}max_sessions = 0 would refuse every connection: expected >= 1, or omit it for no cap"),
        );
    }
    let reserved = s.reserved_sessions;
    let problem = match s.max_sessions {
        None if reserved > 0 => Some(format!("{reserved} without max_sessions: expected max_sessions too, and")),
        Some(max) if reserved > max => Some(format!("{reserved} is above max_sessions = {max}: expected")),
        _ => None,
    };
    if let Some(problem) = problem {
        r.push(at("reserved_sessions"), format!("{who}reserved_sessions = {problem} reserve <= max"));
    }
    if let Some(d) = s.dead_peer_timeout {
        let (lo, hi) =
            (Duration::from_secs(keepalive::MIN_SECS.into()), Duration::from_secs(keepalive::MAX_SECS.into()));
        let why = if d < lo {
            Some("is below 1s (keepalive counts whole seconds)")
        } else if d > hi {
            Some("is above 1d")
        } else if d.subsec_nanos() != 0 {
            Some("is not a whole number of seconds (keepalive counts whole seconds)")
        } else {
            None
        };
        if let Some(why) = why {
            r.push(
                at("dead_peer_timeout"),
                format!(
                    "{who}dead_peer_timeout = \"{}\" {why}: expected 1s..=1d, e.g. \"2m\", or omit it for off",
                    show_duration(d)
                ),
            );
        }
    }
}

/// What service `i` says when it responds: a protocol to say it in, texts
/// that are that protocol's refusal lines, and implicit-TLS ports that are
/// its own.
fn judge_respond(s: &Service, i: usize, given: &Given, r: &mut Report) {
    let who = who(s);
    let mut seen = BTreeSet::new();
    for (j, &port) in s.respond.implicit_tls_ports.iter().enumerate() {
        let at = given.field(i, &format!("implicit_tls_ports[{j}]"));
        if !s.ports.contains(&port) {
            let ports = s.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
            r.push(
                at,
                format!(
                    "{who}implicit_tls_ports: port {port} is not one of its ports ({ports}): expected some of them"
                ),
            );
        } else if !seen.insert(port) {
            r.push(at, format!("{who}implicit_tls_ports: port {port} listed twice"));
        }
    }
    let Some(protocol) = s.respond.protocol else {
        let why = "none follows from its name or ports: expected protocol = \"smtp\", \"imap\", \"pop3\" or \"ftp\"";
        if s.action == Action::Respond {
            r.push(given.field(i, "action"), format!("{who}action = respond needs a protocol, and {why}"));
        }
        if !s.respond.texts.is_empty() {
            r.push(given.field(i, "respond"), format!("{who}respond texts need a protocol, and {why}"));
        }
        return;
    };
    for (reason, text) in s.respond.texts.iter() {
        let key = reason.as_str();
        if let Err(e) = check_text(protocol, text) {
            r.push(given.field(i, &format!("respond.{key}")), format!("{who}respond.{key} {e}"));
        }
    }
}

/// Problems of the `[maps]` sizes.
fn judge_maps(maps: MapSizes, r: &mut Report) {
    for (name, v) in
        [("connections", maps.connections), ("pending_slots", maps.pending_slots), ("list_entries", maps.list_entries)]
    {
        if !(MapSizes::MIN..=MapSizes::MAX).contains(&v) {
            r.push(
                format!("maps.{name}"),
                format!("maps.{name} = {v} is out of range: expected {}..={}", MapSizes::MIN, MapSizes::MAX),
            );
        }
    }
    if !maps.pending_slots.is_power_of_two() {
        r.push(
            "maps.pending_slots",
            format!(
                "maps.pending_slots = {} is not a power of two: expected one, e.g. {}",
                maps.pending_slots,
                maps.pending_slots.checked_next_power_of_two().unwrap_or(MapSizes::MAX).min(MapSizes::MAX)
            ),
        );
    }
}

/// Problems of the `[responder]` budgets (`file`: which ones were written):
/// none zero or absurd, a source's share no more than the total, a deadline
/// a client can meet that does not hold a connection for long.
fn judge_responder(l: ResponderLimits, file: &ResponderFile, r: &mut Report) {
    let max = ResponderLimits::MAX_RATE;
    for (name, v, given, top) in [
        ("rate", l.rate, file.rate.is_some(), max),
        ("burst", l.burst, file.burst.is_some(), max),
        ("per_source_rate", l.per_source_rate, file.per_source_rate.is_some(), max),
        ("per_source_burst", l.per_source_burst, file.per_source_burst.is_some(), max),
        ("max_connections", l.max_connections, file.max_connections.is_some(), ResponderLimits::MAX_CONNECTIONS),
    ] {
        if given && !(1..=top).contains(&v) {
            let why = if v == 0 { " would answer nothing" } else { " is out of range" };
            r.push(format!("responder.{name}"), format!("responder.{name} = {v}{why}: expected 1..={top}"));
        }
    }
    // A source's share above the total: the place of the value written (the
    // share's if both were).
    for (share, share_given, total, total_given, v, t) in [
        ("per_source_rate", file.per_source_rate.is_some(), "rate", file.rate.is_some(), l.per_source_rate, l.rate),
        (
            "per_source_burst",
            file.per_source_burst.is_some(),
            "burst",
            file.burst.is_some(),
            l.per_source_burst,
            l.burst,
        ),
    ] {
        if v > t && t > 0 {
            let default = |given: bool| if given { "" } else { " (the default)" };
            let at = if share_given || !total_given { share } else { total };
            r.push(
                format!("responder.{at}"),
                format!(
                    "responder.{share} = {v}{} is above responder.{total} = {t}{}: expected one source's share at \
                     most the total",
                    default(share_given),
                    default(total_given)
                ),
            );
        }
    }
    let (lo, hi) = (ResponderLimits::MIN_DEADLINE, ResponderLimits::MAX_DEADLINE);
    if !(lo..=hi).contains(&l.deadline) {
        r.push(
            "responder.deadline",
            format!("responder.deadline = {:?} is out of range: expected {lo:?}..={hi:?}", l.deadline),
        );
    }
}

/// Which values of a policy the config file gave, and so have a place in
/// it; the others come from flags or defaults.
pub(super) struct Given<'a> {
    pub(super) o: &'a Overrides,
    /// The services are the file's (not `--port`'s nor the built-in ones).
    pub(super) services: bool,
    /// The `[responder]` values the file gave.
    pub(super) responder: &'a ResponderFile,
}

impl Given<'_> {
    /// The place of a top-level value, unless a flag replaced it.
    fn top(&self, key: &str) -> String {
        let flag = match key {
            "interfaces" => !self.o.interfaces.is_empty(),
            "ipv4_prefix" => self.o.ipv4_prefix.is_some(),
            "ipv6_prefix" => self.o.ipv6_prefix.is_some(),
            _ => false,
        };
        if flag { String::new() } else { key.to_owned() }
    }

    /// The place of service `i`.
    fn service(&self, i: usize) -> String {
        if self.services { format!("service[{i}]") } else { String::new() }
    }

    /// The place of a field of service `i`, unless a flag replaced it.
    fn field(&self, i: usize, field: &str) -> String {
        let flag = match field {
            "rate" => self.o.rate.is_some(),
            "burst" => self.o.burst.is_some(),
            "action" => self.o.action.is_some(),
            "protocol" => self.o.protocol.is_some(),
            "max_conn_per_source" => self.o.max_conn_per_source.is_some(),
            _ => false,
        };
        if self.services && !flag { format!("service[{i}].{field}") } else { String::new() }
    }

    /// The place of port `j` of service `i`.
    fn port(&self, i: usize, j: usize) -> String {
        if self.services { format!("service[{i}].ports[{j}]") } else { String::new() }
    }
}

/// Problems of the allow, deny and reserve lists. The same prefix in allow
/// and deny is not one: deny wins (the deny rule comes first).
fn judge_lists(lists: &Lists, services: &[Service], capacity: u32, origin: &Origin, r: &mut Report) {
    let total = lists.allow.len() + lists.deny.len() + lists.reserve.len();
    if total > capacity as usize {
        r.push(
            "",
            format!(
                "{total} list entries ({} allow, {} deny, {} reserve): expected at most {capacity} in all (raise \
                 [maps] list_entries)",
                lists.allow.len(),
                lists.deny.len(),
                lists.reserve.len()
            ),
        );
    }
    let place = |list: List, i: usize, field: &str| format!("{}.{field}", origin.entry(list, i));
    // Normalized prefix (and service, for reserve) -> first entry.
    let mut allow: BTreeMap<Cidr, usize> = BTreeMap::new();
    for (i, e) in lists.allow.iter().enumerate() {
        let at = |field: &str| place(List::Allow, i, field);
        if let Some(&first) = allow.get(&e.prefix) {
            let first = first_at(origin, &place(List::Allow, first, "prefix"));
            r.push(at("prefix"), format!("allow {} listed twice{first}: expected one entry per prefix", e.prefix));
        } else {
            allow.insert(e.prefix, i);
        }
        for (field, message) in e.problems() {
            r.push(at(field), message);
        }
    }
    let mut deny: BTreeMap<Cidr, usize> = BTreeMap::new();
    for (i, e) in lists.deny.iter().enumerate() {
        if let Some(Err(m)) = e.comment.as_deref().map(check_comment) {
            r.push(place(List::Deny, i, "comment"), format!("deny {}: {m}", e.prefix));
        }
        if let Some(&first) = deny.get(&e.prefix) {
            let first = first_at(origin, &place(List::Deny, first, "prefix"));
            r.push(
                place(List::Deny, i, "prefix"),
                format!("deny {} listed twice{first}: expected one entry per prefix", e.prefix),
            );
        } else {
            deny.insert(e.prefix, i);
        }
    }
    let names = services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
    let mut reserve: BTreeMap<(&str, Cidr), usize> = BTreeMap::new();
    for (i, e) in lists.reserve.iter().enumerate() {
        if let Some(Err(m)) = e.comment.as_deref().map(check_comment) {
            r.push(place(List::Reserve, i, "comment"), format!("reserve {}: {m}", e.prefix));
        }
        if !services.iter().any(|s| s.name == e.service) {
            r.push(
                place(List::Reserve, i, "service"),
                format!(
                    "reserve {}: service {} is not configured: expected one of {names}",
                    e.prefix,
                    shown(&e.service)
                ),
            );
        }
        if let Some(&first) = reserve.get(&(e.service.as_str(), e.prefix)) {
            let first = first_at(origin, &place(List::Reserve, first, "prefix"));
            r.push(
                place(List::Reserve, i, "prefix"),
                format!(
                    "reserve {} for '{}' listed twice{first}: expected one entry per prefix and service",
                    e.prefix, e.service
                ),
            );
        } else {
            reserve.insert((e.service.as_str(), e.prefix), i);
        }
    }
}

/// ` (line N)` of a place, or nothing.
fn line_of(origin: &Origin, place: &str) -> String {
    origin.line(place).map_or_else(String::new, |l| format!(" (line {l})"))
}

/// ` (first at line N)` of a place, or nothing.
fn first_at(origin: &Origin, place: &str) -> String {
    origin.line(place).map_or_else(String::new, |l| format!(" (first at line {l})"))
}
