//! The replies as they were before they had types: each `pinned/` file is
//! the text the daemon's `json!` code produced for the same data (the
//! `--json` output, pretty, or the response line), captured from it.

use std::fmt::Debug;

use serde::de::DeserializeOwned;

use super::*;
use crate::policy::lists::{AllowEntry, Cidr, DenyEntry, ReserveEntry};

fn cidr(s: &str) -> Cidr {
    s.parse().expect("prefix")
}

fn rate(s: &str) -> Rate {
    s.parse().expect("rate")
}

/// `value` prints as `pinned` (pretty) and reads back from it as itself.
fn same_pretty<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T, pinned: &str) {
    assert_eq!(json_text(value, true).expect("json") + "\n", pinned);
    assert_eq!(&serde_json::from_str::<T>(pinned).expect("read back"), value);
}

/// `reply` goes over the socket as `pinned` (one line), and a client reads it back as itself.
fn same_wire<T: Serialize + DeserializeOwned + PartialEq + Debug>(reply: Reply, expected: &T, pinned: &str) {
    assert_eq!(json_text(&Response::Ok { ok: reply }, false).expect("json") + "\n", pinned);
    match serde_json::from_str::<Response<T>>(pinned).expect("read back") {
        Response::Ok { ok } => assert_eq!(&ok, expected),
        Response::Err { error } => panic!("{error}"),
    }
}

fn counters(c: [u64; 7]) -> Counters {
    let [accepted, deny, sessions, reserve, concurrency, rate, non_syn] = c.map(Some);
    Counters {
        accepted,
        refused_deny: deny,
        refused_sessions: sessions,
        refused_reserve: reserve,
        refused_concurrency: concurrency,
        refused_rate: rate,
        passed_non_syn: non_syn,
    }
}

fn smtp() -> ServiceStatus {
    ServiceStatus {
        name: "smtp".into(),
        ports: vec![25, 465, 587],
        rate: Some(rate("30/m")),
        burst: 10,
        action: "reset".into(),
        max_conn_per_source: Some(8),
        max_sessions: Some(50),
        reserved_sessions: 30,
        dead_peer_timeout: None,
        sessions: Some(12),
        connections: 14,
        counters: counters([1234, 3, 0, 2, 41, 7, 99_999]),
        answers: std::collections::BTreeMap::new(),
        would_refuse: std::collections::BTreeMap::new(),
    }
}

fn imap() -> ServiceStatus {
    ServiceStatus {
        name: "imap".into(),
        ports: vec![143, 993],
        rate: None,
        burst: 5,
        action: "drop".into(),
        max_conn_per_source: None,
        max_sessions: None,
        reserved_sessions: 0,
        dead_peer_timeout: None,
        sessions: Some(0),
        connections: 0,
        counters: counters([5, 0, 1, 0, 0, 0, 6]),
        answers: std::collections::BTreeMap::new(),
        would_refuse: std::collections::BTreeMap::new(),
    }
}

fn status() -> StatusReply {
    StatusReply {
        responder: None,
        all_services: None,
        version: "0.1.0".into(),
        pin_dir: Some("/sys/fs/bpf/limiter".into()),
        interfaces: vec![Interface { name: "eth0".into(), ifindex: 2, xdp_mode: "native".into() }],
        ipv4_prefix: 32,
        ipv6_prefix: 64,
        services: vec![smtp(), imap()],
        lists: Some(ListCounts { allow: 2, deny: 1, reserve: 0 }),
        totals: Totals { counters: counters([1239, 3, 1, 2, 41, 7, 100_005]), passed_other: 5120 },
        metrics_listen: Some("127.0.0.1:9100".into()),
        refusal_lines: Some(RefusalLines { logged: 4, suppressed: 17, unreported: 0 }),
    }
}

#[test]
fn status_as_before() {
    same_pretty(&status(), include_str!("pinned/status.json"));
    same_wire(Reply::Status(Box::new(status())), &status(), include_str!("pinned/status.wire"));
    let empty = StatusReply {
        responder: None,
        all_services: None,
        version: "0.1.0".into(),
        pin_dir: Some("/p".into()),
        interfaces: Vec::new(),
        ipv4_prefix: 24,
        ipv6_prefix: 128,
        services: Vec::new(),
        lists: Some(ListCounts { allow: 0, deny: 0, reserve: 0 }),
        totals: Totals { counters: counters([0; 7]), passed_other: 0 },
        metrics_listen: None,
        refusal_lines: Some(RefusalLines { logged: 0, suppressed: 0, unreported: 0 }),
    };
    same_pretty(&empty, include_str!("pinned/status-empty.json"));
}

#[test]
fn top_as_before() {
    let top = TopReply {
        sources: vec![
            TopRow {
                source: "198.51.100.7".into(),
                service: "smtp".into(),
                connections: 8,
                limit: Some(8),
                refused: None,
                all_services: None,
                all_services_limit: None,
            },
            TopRow {
                source: "2001:db8:1:2::/64".into(),
                service: "imap".into(),
                connections: 3,
                limit: None,
                refused: None,
                all_services: None,
                all_services_limit: None,
            },
        ],
        total_sources: Some(5),
        total_connections: Some(17),
    };
    same_pretty(&top, include_str!("pinned/top.json"));
    let empty = TopReply { sources: Vec::new(), total_sources: Some(0), total_connections: Some(0) };
    same_pretty(&empty, include_str!("pinned/top-empty.json"));
    assert!(top.sources[0].is_full() && !top.sources[1].is_full());
}

fn allow_entries() -> [AllowEntry; 2] {
    [
        AllowEntry {
            prefix: cidr("198.18.0.0/24"),
            max_conn_per_source: Some(20),
            max_conn_all_services: None,
            rate: Some(rate("5/s")),
            burst: Some(9),
            comment: Some("office".into()),
        },
        AllowEntry {
            prefix: cidr("2001:db8::/32"),
            max_conn_per_source: None,
            max_conn_all_services: None,
            rate: None,
            burst: None,
            comment: None,
        },
    ]
}

fn deny_entry() -> DenyEntry {
    DenyEntry { prefix: cidr("203.0.113.9/32"), comment: Some("spam \"bot\"".into()) }
}

fn reserve_entry() -> ReserveEntry {
    ReserveEntry { service: "smtp".into(), prefix: cidr("192.0.2.0/24"), comment: None }
}

/// The entries of a list shown as the daemon shows them: config, then run time.
fn listed(list: ListName, entries: &[Entry]) -> ListReply {
    let tagged = |origin| entries.iter().map(move |e| ListedEntry { entry: e.clone(), origin });
    ListReply { list, entries: tagged(Origin::Config).chain(tagged(Origin::Runtime)).collect() }
}

#[test]
fn lists_as_before() {
    let allow: Vec<Entry> = allow_entries().iter().map(Entry::from).collect();
    same_pretty(&listed(ListName::Allow, &allow), include_str!("pinned/list-allow.json"));
    same_pretty(&listed(ListName::Deny, &[Entry::from(&deny_entry())]), include_str!("pinned/list-deny.json"));
    let reserve = [Entry::from(&reserve_entry())];
    same_pretty(&listed(ListName::Reserve, &reserve), include_str!("pinned/list-reserve.json"));
}

#[test]
fn changes_as_before() {
    let added = AddedReply { list: ListName::Allow, added: Entry::from(&allow_entries()[0]), warnings: Vec::new() };
    same_wire(Reply::Added(added.clone()), &added, include_str!("pinned/added-allow.wire"));
    let warnings = vec!["a warning".to_owned()];
    let added = AddedReply { list: ListName::Reserve, added: Entry::from(&reserve_entry()), warnings };
    same_wire(Reply::Added(added.clone()), &added, include_str!("pinned/added-reserve.wire"));
    let prefix = deny_entry().prefix;
    let absent = RemovedReply { list: ListName::Deny, removed: None, absent: Some(prefix), still_in_config: true };
    same_wire(Reply::Removed(absent.clone()), &absent, include_str!("pinned/removed-absent.wire"));
    let removed = RemovedReply { list: ListName::Deny, removed: Some(prefix), absent: None, still_in_config: false };
    same_wire(Reply::Removed(removed.clone()), &removed, include_str!("pinned/removed.wire"));
    let warnings = vec!["a warning".to_owned()];
    let reloaded = ReloadReply { reloaded: "/etc/limiter/limiter.toml".into(), services: 2, warnings };
    same_wire(Reply::Reloaded(reloaded.clone()), &reloaded, include_str!("pinned/reloaded.wire"));
}

#[test]
fn an_error_as_before() {
    let pinned = include_str!("pinned/error.wire");
    let error = Response::<Reply>::Err { error: "unknown service 'x'".into() };
    assert_eq!(json_text(&error, false).expect("json") + "\n", pinned);
    assert!(
        matches!(serde_json::from_str(pinned), Ok(Response::<StatusReply>::Err { error }) if error == "unknown service 'x'")
    );
}

#[test]
fn a_reply_of_an_older_daemon_reads_with_its_gaps() {
    // No pin_dir, lists, sessions or refusal_lines; counters it did not have.
    let old = r#"{"version":"0.0.9","interfaces":[],"ipv4_prefix":32,"ipv6_prefix":64,
        "services":[{"name":"default","ports":[2525],"rate":"5/s","burst":5,"action":"reset",
        "max_conn_per_source":8,"connections":5,"counters":{"accepted":12,"refused_rate":7,"passed_non_syn":143}}],
        "totals":{"passed_other":1},"metrics_listen":null,"a_newer_field":{"x":1}}"#;
    let s: StatusReply = serde_json::from_str(old).expect("an older reply");
    assert_eq!((s.pin_dir, s.lists, s.refusal_lines), (None, None, None));
    let svc = &s.services[0];
    assert_eq!((svc.sessions, svc.max_sessions, svc.reserved_sessions), (None, None, 0));
    assert_eq!((svc.counters.accepted, svc.counters.refused_deny), (Some(12), None));
    assert_eq!(s.totals, Totals { counters: Counters::default(), passed_other: 1 });
}

#[test]
fn a_reply_of_the_wrong_type_names_the_field() {
    let e = serde_json::from_str::<TopReply>(r#"{"sources":[{"source":"a","service":"s","connections":"1"}]}"#)
        .expect_err("a string count");
    assert!(e.to_string().contains("invalid type: string \"1\""), "{e}");
}

#[test]
fn a_rate_travels_as_the_text_it_was_given() {
    // The wire of `limiter allow add ... --rate 30/m` before `rate` was typed.
    let wire = r#"{"cmd":"list_add","list":"allow","prefix":"198.18.0.0/24","service":null,"max_conn_per_source":3,"rate":"30/m","burst":4,"comment":"c","source_prefix":false,"force":true}"#;
    let req = Request::ListAdd {
        list: ListName::Allow,
        prefix: "198.18.0.0/24".into(),
        service: None,
        max_conn_per_source: Some(3),
        max_conn_all_services: None,
        rate: Some(Rate { count: 30, per_secs: 60 }),
        burst: Some(4),
        comment: Some("c".into()),
        source_prefix: false,
        force: true,
    };
    assert_eq!(serde_json::to_string(&req).expect("serialize"), wire);
    let back: Request = serde_json::from_str(wire).expect("parse");
    assert!(matches!(back, Request::ListAdd { rate: Some(Rate { count: 30, per_secs: 60 }), .. }), "{back:?}");
    let bad = wire.replace("30/m", "30/h");
    let e = serde_json::from_str::<Request>(&bad).expect_err("30/h");
    assert!(e.to_string().contains("30/h"), "{e}");
}

/// A service's answers are there when it has any, read back as written,
/// and an older daemon's status without them reads as none.
#[test]
fn answers_are_written_when_there_are_some() {
    let mut s = smtp();
    s.answers = [("fallback".to_owned(), 2), ("responded".to_owned(), 40)].into();
    let v = serde_json::to_value(&s).expect("json");
    assert_eq!(v["answers"], serde_json::json!({ "fallback": 2, "responded": 40 }));
    let back: ServiceStatus = serde_json::from_value(v).expect("reads back");
    assert_eq!(back, s);
    let older = serde_json::to_value(smtp()).expect("json");
    assert!(older.get("answers").is_none(), "none: not written");
}
