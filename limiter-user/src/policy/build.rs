//! The validated [`Policy`] the loader applies, built from the config file
//! and the `run` flags that override it. Everything is checked here, before
//! anything touches the kernel: [`Policy::build`] stops at the first
//! problem, [`check`] reports every problem of a file, each with its line.

use limiter_common::maps::MAX_SERVICES;

use crate::policy::{
    file::{self, ConfigError, ConfigFile, ServiceFile},
    lists::{ListLines, Lists},
    model::{Overrides, Policy},
    report::{List, Origin, Problem, Report},
    respond::{Protocol, Respond, TlsFiles, implicit_tls},
    service::{Action, DEFAULT_BURST, DEFAULT_MAX_CONN, DEFAULT_RATE, Service, service_id},
    validate::{Given, judge},
};

/// The built-in policy: the standard mail ports, at most 10 connections per
/// source, 30 attempts a minute with bursts of 10, refused with a reset.
#[must_use]
pub fn builtin_services() -> Vec<ServiceFile> {
    [("smtp", vec![25, 465, 587]), ("imap", vec![143, 993]), ("pop3", vec![110, 995]), ("ftp", vec![21])]
        .into_iter()
        .map(|(name, ports)| ServiceFile {
            name: name.to_owned(),
            ports,
            rate: Some(DEFAULT_RATE),
            burst: Some(DEFAULT_BURST),
            action: Some(Action::Reset),
            max_conn_per_source: Some(DEFAULT_MAX_CONN),
            max_sessions: None,
            reserved_sessions: None,
            ..ServiceFile::default()
        })
        .collect()
}

impl Policy {
    /// Combines the config file (if any) with the flags and validates the
    /// result. `--port` flags replace the file's services with one service
    /// named `default`; with neither, the built-in mail services apply.
    /// The error is the first problem by line ([`check`] gives them all).
    pub fn build(file: ConfigFile, o: &Overrides) -> Result<Self, ConfigError> {
        let mut r = Report::default();
        let (policy, origin) = Self::assemble(file, o, &mut r);
        match r.problems(&origin).into_iter().next() {
            Some(p) => Err(ConfigError::Invalid(p)),
            None => Ok(policy),
        }
    }

    /// [`Policy::build`] without the verdict: the policy and where the file
    /// was written, and its problems in `r`.
    fn assemble(file: ConfigFile, o: &Overrides, r: &mut Report) -> (Self, Origin) {
        let responder = file.responder;
        let given = Given { o, services: o.ports.is_empty() && !file.services.is_empty(), responder: &responder };
        let interfaces = if o.interfaces.is_empty() { file.interfaces } else { o.interfaces.clone() };
        let services_file = if !o.ports.is_empty() {
            vec![ServiceFile { name: "default".into(), ports: o.ports.clone(), ..ServiceFile::default() }]
        } else if file.services.is_empty() {
            builtin_services()
        } else {
            file.services
        };
        // Flags apply to every service: with --port there is only one.
        let services = services_file
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let max_conn_per_source = o.max_conn_per_source.or(s.max_conn_per_source);
                // A service with no limit at all gets the default rate.
                let rate = o.rate.or(s.rate).or(if max_conn_per_source.is_none() { Some(DEFAULT_RATE) } else { None });
                let burst =
                    o.burst.or(s.burst).unwrap_or_else(|| rate.map_or(DEFAULT_BURST, |r| r.count.min(DEFAULT_BURST)));
                let tls = match (s.tls_cert, s.tls_key) {
                    (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                    (None, None) => None,
                    (cert, _) => {
                        let (given, missing) = if cert.is_some() { ("tls_cert", "tls_key") } else { ("tls_key", "tls_cert") };
                        r.push(
                            format!("service[{i}].{given}"),
                            format!(
                                "service {}: {given} without {missing}: expected both (the PEM files the mail server uses) or neither",
                                crate::policy::lists::shown(&s.name)
                            ),
                        );
                        None
                    }
                };
                let protocol = o.protocol.or(s.protocol).or_else(|| Protocol::guess(&s.name, &s.ports));
                let implicit_tls_ports = s.implicit_tls_ports.unwrap_or_else(|| implicit_tls(&s.ports).collect());
                Service {
                    // Past MAX_SERVICES the id is meaningless; that is a problem reported below.
                    id: service_id(i.min(MAX_SERVICES as usize - 1)),
                    name: s.name,
                    ports: s.ports,
                    rate,
                    burst,
                    action: o.action.or(s.action).unwrap_or_default(),
                    max_conn_per_source,
                    max_sessions: s.max_sessions,
                    reserved_sessions: s.reserved_sessions.unwrap_or(0),
                    dead_peer_timeout: s.dead_peer_timeout,
                    respond: Respond { protocol, tls, texts: s.texts, implicit_tls_ports },
                }
            })
            .collect::<Vec<_>>();
        let mut policy = Self {
            interfaces,
            xdp_mode: o.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
            ipv4_prefix: o.ipv4_prefix.or(file.ipv4_prefix).unwrap_or(32),
            ipv6_prefix: o.ipv6_prefix.or(file.ipv6_prefix).unwrap_or(64),
            metrics_listen: o.metrics_listen.or(file.metrics_listen),
            hostname: file.hostname,
            services,
            max_conn_all_services: file.max_conn_per_source,
            maps: file.maps,
            responder: responder.limits(),
            lists: Lists { allow: file.allow, deny: file.deny, reserve: file.reserve },
            list_lines: ListLines::default(),
        };
        // The line of each entry's `prefix`, for `limiter explain`.
        let line = |list: List, n: usize| -> Vec<Option<usize>> {
            (0..n).map(|i| file.origin.line(&format!("{}.prefix", file.origin.entry(list, i)))).collect()
        };
        policy.list_lines = ListLines {
            allow: line(List::Allow, policy.lists.allow.len()),
            deny: line(List::Deny, policy.lists.deny.len()),
            reserve: line(List::Reserve, policy.lists.reserve.len()),
        };
        judge(&policy, &given, &file.origin, r);
        (policy, file.origin)
    }
}

/// A config that passed [`check`]: the policy `run` would apply, and what
/// only deserves a warning on this host.
#[derive(Debug, Clone)]
pub struct Checked {
    pub policy: Policy,
    /// Messages start with `warning: `.
    pub warnings: Vec<Problem>,
}

/// Checks a config file's text as `run` with the flags `o` would read it,
/// without touching the kernel. The error holds every problem, sorted by
/// line: syntax (which stops the check), unknown fields, values that do
/// not read, and values that do not make sense. An interface for which
/// `has_interface` (the caller's look-up on this host) is false is only a
/// warning: the file may be meant for another.
pub fn check(
    text: &str,
    path: &str,
    o: &Overrides,
    has_interface: &dyn Fn(&str) -> bool,
) -> Result<Checked, Vec<Problem>> {
    let (file, mut r) = file::text(text, path).map_err(|p| vec![p])?;
    let file_services = o.ports.is_empty() && !file.services.is_empty();
    let (policy, origin) = Policy::assemble(file, o, &mut r);
    if !r.is_empty() {
        return Err(r.problems(&origin));
    }
    let mut w = Report::default();
    for (i, name) in policy.interfaces.iter().enumerate() {
        if !has_interface(name) {
            let place = if o.interfaces.is_empty() { format!("interfaces[{i}]") } else { String::new() };
            w.push(
                place,
                format!("warning: interface '{name}' does not exist on this host (run would refuse it here)"),
            );
        }
    }
    for (i, warning) in policy.lists.footguns() {
        w.push(format!("{}.prefix", origin.entry(List::Deny, i)), format!("warning: {warning}"));
    }
    for (i, s) in policy.services.iter().enumerate() {
        if s.action != Action::Respond || s.respond.tls.is_some() {
            continue;
        }
        for &port in &s.respond.implicit_tls_ports {
            let j = s.ports.iter().position(|&p| p == port).unwrap_or_default();
            let place = if file_services { format!("service[{i}].ports[{j}]") } else { String::new() };
            w.push(
                place,
                format!(
                    "warning: service {}: port {port} is implicit TLS and tls_cert/tls_key are not set: refusals there fall back to reset",
                    crate::policy::lists::shown(&s.name)
                ),
            );
        }
    }
    Ok(Checked { policy, warnings: w.problems(&origin) })
}

#[cfg(test)]
mod tests {
    use std::{fmt::Write as _, time::Duration};

    use limiter_common::{Bucket, lists::LIST_ENTRIES};

    use super::*;
    use crate::policy::{
        model::{MapSizes, ResponderLimits, XdpMode},
        parse::{parse_burst, parse_port},
        respond::{Reason, default_text},
        service::Rate,
    };

    /// The host of these tests: `lo` and `eth0`, no other interface.
    fn has_interface(name: &str) -> bool {
        ["lo", "eth0"].contains(&name)
    }

    /// [`super::check`] on the host of these tests.
    fn check(text: &str, path: &str, o: &Overrides) -> Result<Checked, Vec<Problem>> {
        super::check(text, path, o, &has_interface)
    }

    fn ov(ifaces: &[&str]) -> Overrides {
        Overrides { interfaces: ifaces.iter().map(|s| (*s).to_owned()).collect(), ..Overrides::default() }
    }

    #[test]
    fn builtin_policy_protects_mail_ports() {
        let p = Policy::build(ConfigFile::default(), &ov(&["eth0"])).expect("valid");
        let ports: Vec<u16> = p.services.iter().flat_map(|s| s.ports.clone()).collect();
        for port in [25, 465, 587, 143, 993, 110, 995, 21] {
            assert!(ports.contains(&port), "{port} not protected");
        }
        assert_eq!((p.ipv4_prefix, p.ipv6_prefix), (32, 64));
    }

    #[test]
    fn port_flags_make_one_default_service() {
        let o = Overrides {
            ports: vec![2525],
            rate: Some(Rate { count: 5, per_secs: 1 }),
            burst: Some(5),
            action: Some(Action::Drop),
            ..ov(&["veth0"])
        };
        let p = Policy::build(ConfigFile::default(), &o).expect("valid");
        assert_eq!(p.services.len(), 1);
        let s = &p.services[0];
        assert_eq!((s.name.as_str(), s.ports.as_slice(), s.burst, s.action), ("default", &[2525][..], 5, Action::Drop));
        assert_eq!(s.bucket(), Bucket::new(5, 1_000_000_000, 5));
    }

    #[test]
    fn config_file_parses_and_flags_override() {
        let text = r#"
            interfaces = ["eth0"]
            xdp_mode = "skb"
            ipv6_prefix = 56
            [[service]]
            name = "smtp"
            ports = [25, 587]
            rate = "30/m"
            burst = 10
            action = "drop"
        "#;
        let f = ConfigFile::parse(text, "t.toml").expect("parses");
        let p = Policy::build(f, &Overrides { ipv4_prefix: Some(24), ..ov(&[]) }).expect("valid");
        assert_eq!(p.interfaces, ["eth0"]);
        assert_eq!((p.xdp_mode, p.ipv4_prefix, p.ipv6_prefix), (XdpMode::Skb, 24, 56));
        assert_eq!(p.services[0].action, Action::Drop);
    }

    #[test]
    fn map_sizes_default_and_from_config() {
        let p = Policy::build(ConfigFile::default(), &ov(&["eth0"])).expect("valid");
        assert_eq!(p.maps, MapSizes::default());
        assert_eq!((p.maps.connections, p.maps.pending_slots), (65_536, 65_536));
        // 2 x 65536 x 78 + 65536 x 32: about 12 MiB.
        assert_eq!(p.maps.memory_bytes(), 2 * 65_536 * 78 + 65_536 * 32);
        let f = ConfigFile::parse("interfaces = [\"eth0\"]\n[maps]\nconnections = 2048\n", "t.toml").expect("parse");
        let p = Policy::build(f, &ov(&[])).expect("valid");
        assert_eq!(p.maps, MapSizes { connections: 2048, ..MapSizes::default() }, "unnamed sizes keep their defaults");
    }

    #[test]
    fn responder_budgets_default_read_from_the_config() {
        let p = Policy::build(ConfigFile::default(), &ov(&["eth0"])).expect("valid");
        let d = p.responder;
        assert_eq!(d, ResponderLimits::default());
        assert_eq!(
            (d.rate, d.burst, d.per_source_rate, d.per_source_burst, d.max_connections, d.deadline),
            (1_000, 2_000, 2, 4, 256, Duration::from_secs(2))
        );
        assert_eq!(d.steer_tokens(), 100, "1,000 a second is 100 per 100 ms, on each CPU");
        let text = "interfaces = [\"eth0\"]\n[responder]\nrate = 5001\nper_source_rate = 10\n\
                    max_connections = 1024\ndeadline = \"500ms\"\n";
        let c = check(text, "t.toml", &Overrides::default()).unwrap_or_else(|ps| panic!("{ps:#?}"));
        assert_eq!(
            c.policy.responder,
            ResponderLimits {
                rate: 5_001,
                per_source_rate: 10,
                max_connections: 1_024,
                deadline: Duration::from_millis(500),
                ..ResponderLimits::default()
            },
            "unnamed values keep their defaults"
        );
        assert_eq!(c.policy.responder.steer_tokens(), 501, "rounded up");
        let top = ResponderLimits {
            rate: 1_000_000,
            burst: 1_000_000,
            per_source_rate: 1_000_000,
            per_source_burst: 1_000_000,
            max_connections: 65_536,
            deadline: Duration::from_secs(30),
        };
        let text = "interfaces = [\"eth0\"]\nresponder = { rate = 1000000, burst = 1000000, per_source_rate = \
                    1000000, per_source_burst = 1000000, max_connections = 65536, deadline = \"30s\" }\n";
        assert_eq!(check(text, "t.toml", &Overrides::default()).expect("the bounds are valid").policy.responder, top);
        assert_eq!(top.steer_tokens(), 100_000);
    }

    #[test]
    fn responder_budgets_out_of_bounds_are_problems_at_their_line() {
        let head = "interfaces = [\"eth0\"]\n[responder]\n";
        assert_problems(
            &format!(
                "{head}rate = 0\nburst = 2000000\nmax_connections = 0\ndeadline = \"50ms\"\nper_source_rate = -1\n\
                 size = 3\nper_source_burst = 70000\n"
            ),
            &[
                (3, "responder.rate = 0 would answer nothing: expected 1..=1000000"),
                (4, "responder.burst = 2000000 is out of range: expected 1..=1000000"),
                (5, "responder.max_connections = 0 would answer nothing: expected 1..=65536"),
                (6, "responder.deadline = 50ms is out of range: expected 100ms..=30s"),
                (7, "responder.per_source_rate = -1: expected a whole number 1..=1000000"),
                (8, "unknown field 'responder.size': expected one of rate, burst, per_source_rate"),
            ],
        );
        let one = |body: &str| {
            let got = problems(&format!("{head}{body}"));
            assert_eq!(got.len(), 1, "{body}: {got:#?}");
            got.into_iter().next().map(|(line, m)| (line.unwrap_or(0), m)).unwrap_or_default()
        };
        // A source's share above the total, at the value written.
        assert_eq!(
            one("per_source_rate = 5000\n"),
            (
                3,
                "responder.per_source_rate = 5000 is above responder.rate = 1000 (the default): expected one source's \
                 share at most the total"
                    .to_owned()
            )
        );
        assert_eq!(
            one("burst = 3\n"),
            (
                3,
                "responder.per_source_burst = 4 (the default) is above responder.burst = 3: expected one source's \
                 share at most the total"
                    .to_owned()
            )
        );
        assert_eq!(one("rate = 50\nper_source_rate = 60\n").0, 4, "both written: at the share");
        assert_eq!(one("deadline = \"31s\"\n").1, "responder.deadline = 31s is out of range: expected 100ms..=30s");
        for bad in ["deadline = 2", "deadline = \"2 min\"", "deadline = \"1.5s\""] {
            let (line, m) = one(&format!("{bad}\n"));
            assert_eq!(line, 3);
            assert!(m.starts_with(&format!("responder.{bad}: expected ")), "{m}");
            assert!(m.contains("\"2s\" or \"500ms\""), "{m}");
        }
        assert_eq!(
            one("rate = 2000000000000\n").1,
            "responder.rate = 2000000000000: expected a whole number 1..=1000000"
        );
        let one_line = ConfigFile::parse(&format!("{head}per_source_rate = 5000\n"), "t.toml")
            .and_then(|f| Policy::build(f, &Overrides::default()))
            .expect_err("refused")
            .to_string();
        assert!(one_line.starts_with("t.toml:3: responder.per_source_rate = 5000 is above"), "{one_line}");
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("interfaces = [\"eth0\"]\n[[service]]\nname = \"a\"\nports = [0]\n", "port 0"),
            (
                "interfaces = [\"eth0\"]\n[[service]]\nname = \"a\"\nports = [25]\n[[service]]\nname = \"b\"\nports = [25]\n",
                "port 25 belongs to both",
            ),
            ("interfaces = [\"eth0\"]\n[[service]]\nname = \"a\"\nports = [25]\nrate = \"0/s\"\n", "rate = \"0/s\""),
            ("interfaces = [\"eth0\"]\n[[service]]\nname = \"a\"\nports = [25]\nburst = 0\n", "burst"),
            ("interfaces = [\"eth0\"]\nipv4_prefix = 33\n", "t.toml:2: ipv4_prefix = 33"),
            ("interfaces = [\"eth0\"]\nbogus = 1\n", "unknown field"),
            ("ipv4_prefix = 24\n", "no interface"),
            ("interfaces = [\"eth0\"]\n[maps]\npending_slots = 3000\n", "power of two"),
            ("interfaces = [\"eth0\"]\n[maps]\nconnections = 10\n", "maps.connections = 10 is out of range"),
            ("interfaces = [\"eth0\"]\n[maps]\npending_slots = 33554432\n", "maps.pending_slots"),
            ("interfaces = [\"eth0\"]\n[maps]\nconns = 5000\n", "unknown field"),
        ];
        for (text, want) in cases {
            let err = ConfigFile::parse(text, "t.toml").and_then(|f| Policy::build(f, &ov(&[]))).expect_err(text);
            let msg = err.to_string();
            assert!(msg.contains(want), "{text:?}: error {msg:?} does not mention {want:?}");
            assert!(!msg.contains('\n'), "error is not one line: {msg:?}");
        }
        assert!(parse_port("0").is_err());
        assert!(parse_port("65536").is_err());
        assert!(parse_burst("0").is_err());
    }

    /// `check` with no flags; the problems as (line, message).
    fn problems(text: &str) -> Vec<(Option<usize>, String)> {
        match check(text, "t.toml", &Overrides::default()) {
            Ok(c) => panic!("accepted: {:?}", c.policy),
            Err(ps) => ps.into_iter().map(|p| (p.line, p.message)).collect(),
        }
    }

    /// Every expected (line, fragment) is reported, and nothing else.
    fn assert_problems(text: &str, want: &[(usize, &str)]) {
        let got = problems(text);
        for (line, fragment) in want {
            assert!(
                got.iter().any(|(l, m)| *l == Some(*line) && m.contains(fragment)),
                "no problem {fragment:?} at line {line}; got:\n{got:#?}"
            );
        }
        assert_eq!(got.len(), want.len(), "other problems reported:\n{got:#?}");
        assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "not sorted by line: {got:#?}");
        assert!(got.iter().all(|(_, m)| !m.contains('\n')), "a message is not one line: {got:#?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        // Long on purpose: most of it is the one config with every problem in it.
        let text = r#"interfaces = ["eth0", "eth0"]
ipv4_prefix = 33
bogus = 1
[[service]]
name = "smtp"
ports = [25, 0, 25]
burst = 0
max_sessions = 10
reserved_sessions = 20
[[service]]
name = "imap"
ports = [
  143,
  25,
]
rate = "5/h"
max_conn_per_source = 0
reserved_sessions = 3
[[service]]
name = "smtp"
ports = [2525]
[[service]]
name = "bad name"
ports = [70000]
max_sessions = 0
action = "block"
[[allow]]
prefix = "300.1.1.1"
[[allow]]
prefix = "10.*"
max_conn_per_source = 0
[[allow]]
prefix = "10.0.0.0/8"
burst = 5
[[deny]]
prefix = "10.0.0.0/8"
[[deny]]
prefix = "1.2.3.4/33"
[[reserve]]
service = "nosuch"
prefix = "198.51.100.10"
[[reserve]]
service = "smtp"
prefix = "198.51.100.0/24"
[[reserve]]
service = "smtp"
prefix = "198.51.100.7/24"
[maps]
connections = 10
"#;
        assert_problems(
            text,
            &[
                (1, "interface 'eth0' listed twice"),
                (2, "ipv4_prefix = 33: expected 1..=32"),
                (3, "unknown field 'bogus': expected one of interfaces, "),
                (6, "service 'smtp': port 0: expected 1..=65535"),
                (6, "service 'smtp': port 25 listed twice"),
                (7, "service 'smtp': burst = 0: expected 1..=1000000"),
                (9, "service 'smtp': reserved_sessions = 20 is above max_sessions = 10: expected reserve <= max"),
                (14, "port 25 belongs to both 'smtp' (line 6) and 'imap'"),
                (16, "service 'imap': rate = \"5/h\": expected N/s or N/m"),
                (17, "service 'imap': max_conn_per_source = 0 would refuse every source"),
                (18, "service 'imap': reserved_sessions = 3 without max_sessions"),
                (20, "service 'smtp' defined twice (first at line 5)"),
                (23, "service name 'bad name': expected 1 to 32 letters, digits, '.', '-' and '_'"),
                (24, "service 'bad name': port 70000: expected a whole number 1..=65535"),
                (25, "service 'bad name': max_sessions = 0"),
                (26, "service 'bad name': action = \"block\": expected one of drop, reset"),
                (28, "allow: prefix = \"300.1.1.1\": expected an address, a CIDR"),
                (31, "allow 10.0.0.0/8: max_conn_per_source = 0"),
                (33, "allow 10.0.0.0/8 listed twice (first at line 30)"),
                (34, "allow 10.0.0.0/8: burst = 5 without rate"),
                (38, "deny: prefix = \"1.2.3.4/33\": prefix length out of range"),
                (40, "reserve 198.51.100.10/32: service 'nosuch' is not configured: expected one of smtp, imap"),
                (47, "reserve 198.51.100.0/24 for 'smtp' listed twice (first at line 44)"),
                (49, "maps.connections = 10 is out of range: expected 1024..=16777216"),
            ],
        );
    }

    #[test]
    fn problems_display_with_file_and_line() {
        let e = check("interfaces = [\"eth0\"]\n\n[[service]]\nname = \"a\"\nports = [0]\n", "/etc/l.toml", &ov(&[]));
        let ps = e.expect_err("port 0");
        assert_eq!(
            ps.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["/etc/l.toml:5: service 'a': port 0: expected 1..=65535"]
        );
        let ps = check("ipv4_prefix = 24\n", "/etc/l.toml", &ov(&[])).expect_err("no interface");
        assert_eq!(
            ps[0].to_string(),
            "/etc/l.toml: no interface to protect: give --iface IF or interfaces = [\"IF\"] in the config"
        );
        let p = Problem { path: String::new(), line: None, message: "m".into() };
        assert_eq!(p.to_string(), "m");
    }

    #[test]
    fn syntax_errors_stop_with_their_line() {
        for (text, line) in [
            ("interfaces = [\"eth0\"]\n[[service]\nname = \"a\"\n", 2),
            ("interfaces = [\"eth0\"]\nipv4_prefix = \n", 2),
            ("interfaces = [\"eth0\"]\n[maps]\nconnections = 1\nconnections = 2\n", 4),
            ("a = \"unterminated\n", 1),
        ] {
            let got = problems(text);
            assert_eq!(got.len(), 1, "{text:?}: {got:?}");
            assert_eq!(got[0].0, Some(line), "{text:?}: {got:?}");
            assert!(got[0].1.starts_with("TOML syntax: "), "{got:?}");
        }
    }

    #[test]
    fn types_and_missing_fields_are_reported() {
        let text = r#"interfaces = "eth0"
xdp_mode = "fast"
ipv6_prefix = "64"
[[service]]
ports = 25
burst = -1
[[service]]
name = 7
ports = [25]
[maps]
pending_slots = 3000
conns = 1
[[allow]]
comment = "no prefix"
[[reserve]]
prefix = "198.51.100.1"
[[allow]]
prefix = "10.*.1.1"
rate = "fast"
burst = 5
"#;
        assert_problems(
            text,
            &[
                (1, "interfaces = \"eth0\": expected a list of names"),
                (2, "xdp_mode = \"fast\": expected one of auto, native, skb"),
                (3, "ipv6_prefix = \"64\": expected a whole number 1..=128"),
                (4, "service #1: no name: expected name = "),
                (5, "service #1: ports = 25: expected a list of ports"),
                (6, "service #1: burst = -1: expected a whole number 1..=1000000"),
                (8, "service #2: name = 7: expected a string in quotes"),
                (11, "maps.pending_slots = 3000 is not a power of two: expected one, e.g. 4096"),
                (12, "unknown field 'maps.conns': expected one of connections, pending_slots"),
                (13, "allow: no prefix: expected prefix = "),
                (15, "reserve 198.51.100.1/32: no service: expected service = "),
                (18, "allow: prefix = \"10.*.1.1\": a wildcard may only replace whole trailing IPv4 octets"),
                (19, "allow: rate = \"fast\": expected N/s or N/m"),
            ],
        );
    }

    #[test]
    fn too_many_services_and_entries() {
        let mut text = String::from("interfaces = [\"eth0\"]\n");
        for i in 0..17 {
            write!(text, "[[service]]\nname = \"s{i}\"\nports = [{}]\n", 1000 + i).expect("to a String");
        }
        // The 17th service's header.
        assert_problems(&text, &[(50, "17 services: at most 16 are supported")]);

        // The room is `[maps] list_entries`: its smallest, then one entry more.
        let lists = |n: u32, room: Option<u32>| {
            let mut text = String::from("interfaces = [\"eth0\"]\n");
            if let Some(room) = room {
                write!(text, "[maps]\nlist_entries = {room}\n").expect("to a String");
            }
            for i in 0..n {
                write!(text, "[[deny]]\nprefix = \"10.{}.{}.{}\"\n", i >> 16, (i >> 8) & 255, i & 255)
                    .expect("to a String");
            }
            text
        };
        let accepted = |text: &str| {
            let c = check(text, "t.toml", &Overrides::default()).unwrap_or_else(|e| panic!("refused: {e:?}"));
            (c.policy.lists.deny.len(), c.policy.maps.list_entries)
        };
        assert_eq!(accepted(&lists(1024, Some(1024))), (1024, 1024));
        assert_eq!(
            problems(&lists(1025, Some(1024))),
            [(
                None,
                "1025 list entries (0 allow, 1025 deny, 0 reserve): expected at most 1024 in all (raise [maps] \
                 list_entries)"
                    .to_owned()
            )]
        );
        // The default room takes a large block list.
        assert_eq!(MapSizes::default().list_entries, LIST_ENTRIES);
        assert_eq!(accepted(&lists(100_000, None)), (100_000, LIST_ENTRIES));
        assert_problems(&lists(8, Some(1023)), &[(3, "maps.list_entries = 1023 is out of range")]);
    }

    #[test]
    fn valid_config_builds_lists_and_limits() {
        let text = r#"
interfaces = ["eth0"]
[[service]]
name = "smtp"
ports = [25, 465, 587]
max_conn_per_source = 8
rate = "30/m"
burst = 10
max_sessions = 50
reserved_sessions = 30
action = "reset"
[[service]]
name = "imap"
ports = [143, 993]
max_sessions = 20
reserved_sessions = 20

[[allow]]
prefix = "192.168.1.*"
max_conn_per_source = 100
comment = "office"
[[allow]]
prefix = "10.*"
[[allow]]
prefix = "172.16.0.0/12"
rate = "5/s"
[[deny]]
prefix = "203.0.113.0/24"
[[deny]]
prefix = "10.1.*"          # deny wins over the allow entry of 10.*
[[deny]]
prefix = "192.168.1.0/24"  # also in allow: legal, deny wins
[[reserve]]
service = "smtp"
prefix = "198.51.100.10"
[[reserve]]
service = "imap"
prefix = "198.51.100.10"   # the same prefix for another service
"#;
        let c = check(text, "t.toml", &Overrides::default()).unwrap_or_else(|ps| panic!("{ps:#?}"));
        let p = &c.policy;
        let smtp = &p.services[0];
        assert_eq!(
            (smtp.id, smtp.max_conn_per_source, smtp.max_sessions, smtp.reserved_sessions),
            (1, Some(8), Some(50), 30)
        );
        assert_eq!((smtp.rate, smtp.burst), (Some(Rate { count: 30, per_secs: 60 }), 10));
        let imap = &p.services[1];
        assert_eq!((imap.id, imap.max_sessions, imap.reserved_sessions), (2, Some(20), 20));
        let allow: Vec<(String, bool)> = p.lists.allow.iter().map(|e| (e.prefix.to_string(), e.is_exempt())).collect();
        assert_eq!(
            allow,
            [("192.168.1.0/24".into(), false), ("10.0.0.0/8".into(), true), ("172.16.0.0/12".into(), false)]
        );
        assert_eq!(p.lists.allow[0].max_conn_per_source, Some(100));
        assert_eq!(p.lists.allow[0].comment.as_deref(), Some("office"));
        assert_eq!(p.lists.allow[2].rate, Some(Rate { count: 5, per_secs: 1 }));
        let deny: Vec<String> = p.lists.deny.iter().map(|e| e.prefix.to_string()).collect();
        assert_eq!(deny, ["203.0.113.0/24", "10.1.0.0/16", "192.168.1.0/24"]);
        let reserve: Vec<(&str, String)> =
            p.lists.reserve.iter().map(|e| (e.service.as_str(), e.prefix.to_string())).collect();
        assert_eq!(reserve, [("smtp", "198.51.100.10/32".into()), ("imap", "198.51.100.10/32".into())]);
        // Policy::build agrees with check.
        let built = ConfigFile::parse(text, "t.toml").and_then(|f| Policy::build(f, &Overrides::default()));
        assert_eq!(built.expect("valid"), c.policy);
    }

    #[test]
    fn wildcards_in_the_config_are_normalized() {
        let text = "interfaces = [\"eth0\"]\nallow = [{ prefix = \"192.168.1.*\" }, { prefix = \"10.*\" }]\n\
                    deny = [{ prefix = \"*\" }, { prefix = \"2001:db8::1/48\" }]\n\
                    [[reserve]]\nservice = \"smtp\"\nprefix = \"::ffff:198.51.100.7\"\n";
        let p = check(text, "t.toml", &Overrides::default()).unwrap_or_else(|ps| panic!("{ps:#?}")).policy;
        let shown = |v: Vec<String>| v.join(" ");
        assert_eq!(shown(p.lists.allow.iter().map(|e| e.prefix.to_string()).collect()), "192.168.1.0/24 10.0.0.0/8");
        assert_eq!(shown(p.lists.deny.iter().map(|e| e.prefix.to_string()).collect()), "0.0.0.0/0 2001:db8::/48");
        assert_eq!(p.lists.reserve[0].prefix.to_string(), "198.51.100.7/32");
        // Written differently, the same prefix twice is a duplicate.
        assert_problems(
            "interfaces = [\"eth0\"]\n[[deny]]\nprefix = \"10.*\"\n[[deny]]\nprefix = \"10.1.2.3/8\"\n",
            &[(5, "deny 10.0.0.0/8 listed twice (first at line 3)")],
        );
    }

    #[test]
    fn dead_peer_timeouts_read_and_are_bounded() {
        let config = |v: &str| format!("interfaces = [\"eth0\"]\n[[service]]\nname = \"imap\"\nports = [143]\n{v}\n");
        let timeout = |v: &str| {
            check(&config(v), "t.toml", &Overrides::default()).expect("valid").policy.services[0].dead_peer_timeout
        };
        assert_eq!(timeout(""), None, "off unless set");
        assert_eq!(timeout("dead_peer_timeout = \"2m\""), Some(Duration::from_mins(2)));
        assert_eq!(timeout("dead_peer_timeout = \"1s\""), Some(Duration::from_secs(1)));
        assert_eq!(timeout("dead_peer_timeout = \"1000ms\""), Some(Duration::from_secs(1)));
        assert_eq!(timeout("dead_peer_timeout = \"1d\""), Some(Duration::from_hours(24)));
        assert_eq!(timeout("dead_peer_timeout = \"24h\""), Some(Duration::from_hours(24)));
        for (v, fragment) in [
            ("\"500ms\"", "dead_peer_timeout = \"500ms\" is below 1s"),
            ("\"0s\"", "dead_peer_timeout = \"0s\" is below 1s"),
            ("\"2d\"", "dead_peer_timeout = \"2d\" is above 1d"),
            ("\"86401s\"", "dead_peer_timeout = \"86401s\" is above 1d"),
            ("\"1500ms\"", "is not a whole number of seconds"),
            ("\"abc\"", "dead_peer_timeout = \"abc\": expected a whole number of ms, s, m, h or d"),
            ("\"2 min\"", "expected a whole number of ms, s, m, h or d"),
            ("120", "expected a duration in quotes"),
        ] {
            assert_problems(&config(&format!("dead_peer_timeout = {v}")), &[(5, fragment)]);
            assert!(problems(&config(&format!("dead_peer_timeout = {v}")))[0].1.starts_with("service 'imap': "));
        }
    }

    #[test]
    fn build_reports_the_first_problem_with_its_line() {
        let text = "interfaces = [\"eth0\"]\n[[service]]\nname = \"a\"\nports = [25]\nmax_sessions = 5\n\
                    reserved_sessions = 6\n[[reserve]]\nservice = \"b\"\nprefix = \"198.51.100.1\"\n";
        let err = ConfigFile::parse(text, "t.toml").and_then(|f| Policy::build(f, &Overrides::default()));
        let msg = err.expect_err("invalid").to_string();
        assert_eq!(
            msg,
            "t.toml:6: service 'a': reserved_sessions = 6 is above max_sessions = 5: expected reserve <= max"
        );
        // A value that does not read is ConfigFile::parse's error.
        let err = ConfigFile::parse("[[allow]]\nprefix = \"10.*.1.1\"\n", "t.toml").expect_err("bad wildcard");
        assert!(err.to_string().starts_with("t.toml:2: allow: prefix = \"10.*.1.1\": a wildcard"), "{err}");
    }

    #[test]
    fn flags_replace_file_values_and_their_places() {
        // --port replaces the file's services: a reserve entry naming one of
        // them no longer names a service.
        let text = "interfaces = [\"eth0\"]\n[[service]]\nname = \"smtp\"\nports = [25]\n\
                    [[reserve]]\nservice = \"smtp\"\nprefix = \"198.51.100.1\"\n";
        let o = Overrides { ports: vec![2525], ..Overrides::default() };
        let ps = check(text, "t.toml", &o).expect_err("unknown service");
        assert_eq!(ps.len(), 1, "{ps:?}");
        assert_eq!(ps[0].line, Some(6));
        assert!(ps[0].message.contains("service 'smtp' is not configured: expected one of default"), "{ps:?}");
        // A bad file value that a flag replaces is not a problem.
        let text = "interfaces = [\"no such if\"]\nipv4_prefix = 33\n";
        let o = Overrides { ipv4_prefix: Some(24), ..ov(&["eth0"]) };
        assert!(check(text, "t.toml", &o).is_ok());
    }

    /// The Debian package's /etc/limiter/limiter.toml does what `run` with no
    /// config does, on the interface it names.
    #[test]
    fn packaged_config_is_the_builtin_policy() {
        let text = include_str!("../../../packaging/limiter.toml");
        let c = check(text, "limiter.toml", &Overrides::default()).unwrap_or_else(|ps| panic!("{ps:#?}"));
        let builtin = Policy::build(ConfigFile::default(), &ov(&["eth0"])).expect("valid");
        assert_eq!(c.policy, builtin);
    }

    #[test]
    fn a_missing_interface_is_a_warning() {
        let c = check("interfaces = [\"lo\", \"nosuchif0\"]\n", "t.toml", &Overrides::default()).expect("valid");
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            w,
            ["t.toml:1: warning: interface 'nosuchif0' does not exist on this host (run would refuse it here)"]
        );
        assert_eq!(c.policy.interfaces, ["lo", "nosuchif0"]);
    }

    #[test]
    fn service_names_are_bounded() {
        let config = |name: &str| format!("interfaces = [\"eth0\"]\n[[service]]\nname = \"{name}\"\nports = [25]\n");
        for good in ["smtp", "mail.submission", "a", "imap_tls-2", &"x".repeat(32)] {
            let f = ConfigFile::parse(&config(good), "t.toml").expect("parses");
            Policy::build(f, &ov(&[])).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let huge = "x".repeat(10 << 20);
        for bad in [&"x".repeat(33), "bad name", "smtp\\u001b[2J", "sm/tp", "\\u00e9t\\u00e9", &huge] {
            let f = ConfigFile::parse(&config(bad), "t.toml").expect("parses");
            let msg = Policy::build(f, &ov(&[])).expect_err("refused").to_string();
            assert!(msg.contains("t.toml:3: service name '"), "{msg}");
            assert!(msg.len() < 200, "the message stays short: {} bytes", msg.len());
            assert!(!msg.chars().any(char::is_control), "printable: {msg:?}");
        }
    }

    #[test]
    fn comments_are_bounded_everywhere_in_the_config() {
        let long = "y".repeat(201);
        let cases = [
            (format!("[[allow]]\nprefix = \"10.0.0.1\"\ncomment = \"{long}\"\n"), 7, "201 bytes"),
            ("[[deny]]\nprefix = \"10.0.0.1\"\ncomment = \"a\\nb\"\n".to_owned(), 7, "control character"),
            (
                "[[reserve]]\nservice = \"smtp\"\nprefix = \"10.0.0.1\"\ncomment = \"\\u001b[31m\"\n".to_owned(),
                8,
                "control character",
            ),
        ];
        for (lists, line, want) in cases {
            let text = format!("interfaces = [\"eth0\"]\n[[service]]\nname = \"smtp\"\nports = [25]\n{lists}");
            assert_problems(&text, &[(line, want)]);
        }
        let ok = format!("interfaces = [\"lo\"]\n[[deny]]\nprefix = \"10.0.0.1\"\ncomment = \"{}\"\n", "z".repeat(200));
        check(&ok, "t.toml", &Overrides::default()).expect("200 bytes is fine");
    }

    #[test]
    fn respond_services_read_their_protocol_tls_and_texts() {
        let text = r#"interfaces = ["eth0"]
hostname = "mx.example.org"
[[service]]
name = "smtp"
ports = [25, 465, 587]
action = "respond"
tls_cert = "/etc/ssl/mail.pem"
tls_key = "/etc/ssl/private/mail.key"
[service.respond]
connections = "421 4.7.0 {host} {source}: {count} of {limit} connections, later please"
deny = "421 4.7.1 {host} Go away"
[[service]]
name = "mail-in"
ports = [2525]
protocol = "imap"
action = "respond"
respond = { rate = "* BYE [UNAVAILABLE] Slow down" }
[[service]]
name = "other"
ports = [8080]
"#;
        let c = check(text, "t.toml", &Overrides::default()).unwrap_or_else(|ps| panic!("{ps:#?}"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let p = &c.policy;
        assert_eq!(p.hostname.as_deref(), Some("mx.example.org"));
        let smtp = &p.services[0].respond;
        assert_eq!((p.services[0].action, smtp.protocol), (Action::Respond, Some(Protocol::Smtp)));
        let tls = smtp.tls.as_ref().expect("tls");
        assert_eq!(
            (tls.cert.to_str(), tls.key.to_str()),
            (Some("/etc/ssl/mail.pem"), Some("/etc/ssl/private/mail.key"))
        );
        assert_eq!(
            smtp.template(Reason::Connections),
            Some("421 4.7.0 {host} {source}: {count} of {limit} connections, later please")
        );
        assert_eq!(smtp.template(Reason::Deny), Some("421 4.7.1 {host} Go away"));
        assert_eq!(smtp.template(Reason::Rate), Some(default_text(Protocol::Smtp, Reason::Rate)));
        let imap = &p.services[1].respond;
        assert_eq!((imap.protocol, imap.tls.as_ref()), (Some(Protocol::Imap), None));
        assert_eq!(imap.template(Reason::Rate), Some("* BYE [UNAVAILABLE] Slow down"));
        assert_eq!(p.services[2].respond, Respond::default(), "no protocol is fine without respond");
        // The built-in services know their protocols.
        let b = Policy::build(ConfigFile::default(), &ov(&["eth0"])).expect("valid");
        let protocols: Vec<_> = b.services.iter().map(|s| s.respond.protocol).collect();
        assert_eq!(protocols, [Protocol::Smtp, Protocol::Imap, Protocol::Pop3, Protocol::Ftp].map(Some));
        assert_eq!(b.hostname, None, "policy looks no name up");
    }

    #[test]
    fn respond_problems_are_reported_with_their_lines() {
        let text = r#"interfaces = ["eth0"]
hostname = "mx_1.example.org"
[[service]]
name = "web"
ports = [8080]
action = "respond"
[[service]]
name = "smtp"
ports = [25]
action = "respond"
tls_cert = "/etc/ssl/mail.pem"
[service.respond]
connections = "550 5.7.1 no"
rate = "421 {rates}"
sessions_full = "421 a\r\n250 b"
concurrency = "421 x"
[[service]]
name = "pop3"
ports = [110]
protocol = "pop"
tls_key = "mail.key"
[[service]]
name = "alt"
ports = [2121]
respond = { deny = "421 bye" }
"#;
        assert_problems(
            text,
            &[
                (2, "hostname = \"mx_1.example.org\": expected a host name"),
                (6, "service 'web': action = respond needs a protocol, and none follows from its name or ports"),
                (11, "service 'smtp': tls_cert without tls_key: expected both"),
                (
                    13,
                    "service 'smtp': respond.connections does not start with '421 ': expected smtp's temporary refusal",
                ),
                (14, "service 'smtp': respond.rate holds an unknown placeholder '{rates}'"),
                (15, "service 'smtp': respond.sessions_full holds a line break ('\\r'): expected one line"),
                (
                    16,
                    "service 'smtp': unknown field 'respond.concurrency': expected one of connections, rate, sessions_full, sessions_reserved, deny",
                ),
                (20, "service 'pop3': protocol = \"pop\": expected one of smtp, imap, pop3, ftp"),
                (21, "service 'pop3': tls_key = \"mail.key\": expected an absolute path"),
                (25, "service 'alt': respond texts need a protocol"),
            ],
        );
    }

    #[test]
    fn respond_from_flags_needs_a_protocol_and_warns_of_implicit_tls() {
        let flags = Overrides { ports: vec![2525], action: Some(Action::Respond), ..ov(&["eth0"]) };
        let build = |o: &Overrides| Policy::build(ConfigFile::default(), o);
        let err = build(&flags).expect_err("no protocol").to_string();
        assert!(err.starts_with("service 'default': action = respond needs a protocol"), "{err}");
        let with = build(&Overrides { protocol: Some(Protocol::Smtp), ..flags.clone() }).expect("--protocol");
        assert_eq!(with.services[0].respond.protocol, Some(Protocol::Smtp));
        let guessed = build(&Overrides { ports: vec![25, 587], ..flags.clone() }).expect("guessed");
        assert_eq!(guessed.services[0].respond.protocol, Some(Protocol::Smtp));

        // Implicit-TLS ports without TLS files fall back to reset: a warning at the port.
        let text =
            "interfaces = [\"eth0\"]\n[[service]]\nname = \"imap\"\nports = [143,\n  993]\naction = \"respond\"\n";
        let c = check(text, "t.toml", &Overrides::default()).expect("a warning, not a problem");
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            w,
            [
                "t.toml:5: warning: service 'imap': port 993 is implicit TLS and tls_cert/tls_key are not set: refusals there fall back to reset"
            ]
        );
        let with_tls = text.replace("action", "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\naction");
        assert!(check(&with_tls, "t.toml", &Overrides::default()).expect("ok").warnings.is_empty());
        let reset = text.replace("respond", "reset");
        assert!(check(&reset, "t.toml", &Overrides::default()).expect("ok").warnings.is_empty());
        // The built-in services with --action respond: every implicit-TLS port, no line.
        let c = check("interfaces = [\"lo\"]\n", "t.toml", &Overrides { action: Some(Action::Respond), ..ov(&[]) })
            .expect("ok");
        let ports: Vec<bool> = [465, 993, 995]
            .iter()
            .map(|p| c.warnings.iter().any(|w| w.message.contains(&format!("port {p} "))))
            .collect();
        assert_eq!((ports, c.warnings.len()), (vec![true; 3], 3), "{:?}", c.warnings);
        assert!(c.warnings.iter().all(|w| w.line.is_none()));
    }

    #[test]
    fn implicit_tls_ports_default_to_the_well_known_ones_and_replace_them_when_set() {
        let service = |ports: &str, extra: &str| {
            format!(
                "interfaces = [\"eth0\"]\n[[service]]\nname = \"imap\"\nports = [{ports}]\naction = \"respond\"\n{extra}"
            )
        };
        let implicit = |text: &str| {
            let c = check(text, "t.toml", &Overrides::default()).unwrap_or_else(|ps| panic!("{ps:#?}"));
            let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
            (c.policy.services[0].respond.implicit_tls_ports.clone(), w)
        };
        let (ports, w) = implicit(&service("143, 993", ""));
        assert_eq!((ports, w.len()), (vec![993], 1), "the default: the well-known port, and its warning");
        let (ports, w) = implicit(&service("143, 10993", "implicit_tls_ports = [10993]\n"));
        assert_eq!(ports, [10993]);
        assert_eq!(
            w,
            [
                "t.toml:4: warning: service 'imap': port 10993 is implicit TLS and tls_cert/tls_key are not set: refusals there fall back to reset"
            ],
            "the warning follows the setting"
        );
        let (ports, w) = implicit(&service("143, 993", "implicit_tls_ports = []\n"));
        assert_eq!((ports, w), (vec![], vec![]), "an empty list: none, so no warning");
        let (ports, w) =
            implicit(&service("993, 10993", "implicit_tls_ports = [10993]\ntls_cert = \"/c\"\ntls_key = \"/k\"\n"));
        assert_eq!((ports, w), (vec![10993], vec![]), "replaces the default: 993 is not implicit TLS here");
        // --port services get the default of their ports.
        let o = Overrides { ports: vec![993, 2525], action: Some(Action::Respond), ..ov(&["eth0"]) };
        let p = Policy::build(ConfigFile::default(), &o).expect("valid");
        assert_eq!(p.services[0].respond.implicit_tls_ports, [993]);

        assert_problems(
            &service("143, 993", "implicit_tls_ports = [995, 993,\n  993]\n"),
            &[
                (
                    6,
                    "service 'imap': implicit_tls_ports: port 995 is not one of its ports (143, 993): expected some of them",
                ),
                (7, "service 'imap': implicit_tls_ports: port 993 listed twice"),
            ],
        );
        assert_problems(
            &service("993", "implicit_tls_ports = 993\n"),
            &[(
                6,
                "service 'imap': implicit_tls_ports = 993: expected a list of the service's ports, e.g. [993], or [] for none",
            )],
        );
        assert_problems(
            &service("993", "implicit_tls_ports = [0]\n"),
            &[(6, "service 'imap': implicit_tls_ports: port 0 is not one of its ports (993)")],
        );
    }

    #[test]
    fn check_warns_of_deny_everything_and_allow_deny_on_one_prefix() {
        let text = "interfaces = [\"lo\"]
[[allow]]
prefix = \"198.51.100.0/24\"
[[deny]]
prefix = \"0.0.0.0/0\"
[[deny]]
prefix = \"::/0\"
[[deny]]
prefix = \"198.51.100.*\"
[[deny]]
prefix = \"198.51.101.0/24\"
";
        let c = check(text, "t.toml", &Overrides::default()).expect("a warning, not a problem");
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            w,
            [
                "t.toml:5: warning: deny 0.0.0.0/0 covers every IPv4 source: every connection to every service is refused",
                "t.toml:7: warning: deny ::/0 covers every IPv6 source: every connection to every service is refused",
                "t.toml:9: warning: 198.51.100.0/24 is in both the allow and the deny list: deny wins, the allow entry has no effect",
            ]
        );
        let c =
            check("interfaces = [\"lo\"]\n[[deny]]\nprefix = \"*\"\n", "t.toml", &Overrides::default()).expect("ok");
        assert_eq!(c.warnings.len(), 1, "'*' is 0.0.0.0/0: {:?}", c.warnings);
        let c = check("interfaces = [\"lo\"]\n[[deny]]\nprefix = \"10.0.0.0/8\"\n", "t.toml", &Overrides::default())
            .expect("ok");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}
