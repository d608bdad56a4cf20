//! What survives a daemon's end, end to end (the contract's stable identities,
//! "counts the present" / "restart-safe"): service ids
//! follow names across reorders, reloads and restarts, and the connections
//! that predate the first start are counted exactly once whatever step of
//! a start the daemon is killed at (`LIMITER_FAILPOINT`).
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    fmt::Write as _,
    net::{IpAddr, TcpStream},
    os::unix::process::ExitStatusExt as _,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData};
use limiter_common::maps::{MAX_SERVICES, ServiceRecord, names, service_state};
use limiter_tests::{
    cli::{Scratch, limiter, ok, path_str, unload},
    netns::{Daemon, Listener, Pair, Spawn, streams, tally},
    privileged, require,
};
use serde_json::Value;

const SMTP: u16 = 2525;
const IMAP: u16 = 2143;
const POP3: u16 = 2110;
/// Connect timeout: refusals are RSTs and come back at once.
const WAIT: Duration = Duration::from_secs(3);
/// How long a count may take to settle; generous, the machine may be slow.
const SETTLE: Duration = Duration::from_secs(5);
/// How long a start (or a start killed at a failpoint) may take.
const START: Duration = Duration::from_mins(1);

/// `n` simultaneous attempts from `src` to `port`: exactly `want` connect,
/// the rest are refused. Returns the connected streams.
fn admit(pair: &Pair, src: IpAddr, port: u16, n: usize, want: usize, what: &str) -> Vec<TcpStream> {
    let attempts = pair.connect_parallel(src, port, n, WAIT);
    let t = tally(&attempts);
    assert_eq!((t.connected, t.refused), (want, n - want), "{what}: {n} attempts to {port}: {t:?}");
    streams(attempts)
}

/// `(source, service, connections)` of every `top --json` row.
fn top(d: &Daemon) -> (Vec<(String, String, u64)>, Value) {
    let v = d.client_json(&["top", "--json"]);
    let rows = v["sources"]
        .as_array()
        .unwrap_or_else(|| panic!("no sources in {v}"))
        .iter()
        .map(|r| {
            (
                r["source"].as_str().unwrap_or_default().to_owned(),
                r["service"].as_str().unwrap_or_default().to_owned(),
                r["connections"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    (rows, v)
}

/// Waits until `top` shows exactly `want` (sorted) and `total_connections`
/// is their sum (nothing counted under a service it does not show).
fn wait_top(d: &Daemon, want: &[(&str, &str, u64)], what: &str) {
    wait_top_hidden(d, want, 0, what);
}

/// [`wait_top`], with `hidden` connections counted under a removed
/// service (in the total, in no row).
fn wait_top_hidden(d: &Daemon, want: &[(&str, &str, u64)], hidden: u64, what: &str) {
    let mut want: Vec<(String, String, u64)> =
        want.iter().map(|(s, svc, n)| ((*s).to_owned(), (*svc).to_owned(), *n)).collect();
    want.sort();
    let total: u64 = want.iter().map(|r| r.2).sum::<u64>() + hidden;
    let start = Instant::now();
    loop {
        let (mut rows, v) = top(d);
        rows.sort();
        if rows == want && v["total_connections"].as_u64() == Some(total) {
            return;
        }
        assert!(
            start.elapsed() < SETTLE,
            "{what}: top shows {v}, want {want:?} (total {total}); log: {}",
            d.log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The status row of service `name`.
fn service(d: &Daemon, name: &str) -> Value {
    let s = d.status_json().expect("status");
    s["services"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no service {name} in {s}"))
}

/// The pinned service id table: `(state, name)` by id.
fn id_table(d: &Daemon) -> Vec<(u8, String)> {
    let map = MapData::from_pin(d.pin_dir.join(names::SERVICES)).expect("pinned SERVICES");
    let m: Array<MapData, ServiceRecord> = Array::try_from(aya::maps::Map::Array(map)).expect("array");
    (0..=MAX_SERVICES)
        .map(|id| {
            let r = m.get(&id, 0).expect("record");
            (r.state, String::from_utf8_lossy(&r.name[..usize::from(r.len)]).into_owned())
        })
        .collect()
}

fn service_block(name: &str, port: u16, limit: u32) -> String {
    format!("[[service]]\nname = \"{name}\"\nports = [{port}]\nmax_conn_per_source = {limit}\naction = \"reset\"\n\n")
}

fn config(iface: &str, blocks: &[String]) -> String {
    format!("interfaces = [\"{iface}\"]\n\n{}", blocks.concat())
}

#[test]
fn service_counts_follow_their_name_across_a_reorder_and_restart() {
    require!(privileged());
    let pair = Pair::new();
    let (_smtp, _imap) = (pair.listen(SMTP), pair.listen(IMAP));
    let src = pair.add_client_v4(2);
    let scratch = Scratch::new();
    let (smtp, imap) = (service_block("smtp", SMTP, 8), service_block("imap", IMAP, 3));
    let file = scratch.write("limiter.toml", &config(&pair.server_if, &[smtp.clone(), imap.clone()]));
    let args = ["--config", path_str(&file)];
    let mut d = Daemon::start(&pair.server, &args);
    let held = admit(&pair, src, SMTP, 6, 6, "smtp before the reorder");
    let s = src.to_string();
    wait_top(&d, &[(&s, "smtp", 6)], "before the reorder");

    // SIGTERM: the pins stay. The blocks swap places in the file.
    d.stop();
    scratch.write("limiter.toml", &config(&pair.server_if, &[imap, smtp]));
    d.restart(&pair.server, &args);
    wait_top(&d, &[(&s, "smtp", 6)], "after the reorder and restart");
    assert_eq!(service(&d, "imap")["connections"], 0, "imap holds nothing");
    let _imap_held = admit(&pair, src, IMAP, 6, 3, "imap after the reorder: the source holds none of its 3");
    let _more = admit(&pair, src, SMTP, 6, 2, "smtp after the reorder: 6 of 8 held");
    wait_top(&d, &[(&s, "smtp", 8), (&s, "imap", 3)], "both at their limits");
    let table = id_table(&d);
    assert_eq!(table[1], (service_state::ACTIVE, "smtp".to_owned()), "smtp kept id 1: {table:?}");
    assert_eq!(table[2], (service_state::ACTIVE, "imap".to_owned()), "imap kept id 2: {table:?}");
    drop(held);
}

#[test]
fn a_removed_service_keeps_its_id_until_its_connections_close() {
    require!(privileged());
    let pair = Pair::new();
    let (_smtp, _imap, _pop3) = (pair.listen(SMTP), pair.listen(IMAP), pair.listen(POP3));
    let src = pair.add_client_v4(2);
    let s = src.to_string();
    let scratch = Scratch::new();
    let (smtp, imap, pop3) =
        (service_block("smtp", SMTP, 8), service_block("imap", IMAP, 3), service_block("pop3", POP3, 4));
    let file = scratch.write("limiter.toml", &config(&pair.server_if, &[smtp.clone(), imap]));
    let args = ["--config", path_str(&file)];
    let mut d = Daemon::start(&pair.server, &args);
    let imap_held = admit(&pair, src, IMAP, 5, 3, "imap");
    let _smtp_held = admit(&pair, src, SMTP, 2, 2, "smtp");
    wait_top(&d, &[(&s, "smtp", 2), (&s, "imap", 3)], "before the reload");

    // imap is dropped by reload while it holds 3: its id is retired.
    scratch.write("limiter.toml", &config(&pair.server_if, std::slice::from_ref(&smtp)));
    ok(&d, &["reload"]);
    wait_top_hidden(&d, &[(&s, "smtp", 2)], 3, "after the reload: imap's 3 stay under its retired id");

    // Restart with that file plus a new service: it must not get imap's id
    // (and with it the 3 connections), nor may smtp.
    d.stop();
    scratch.write("limiter.toml", &config(&pair.server_if, &[pop3, smtp]));
    d.restart(&pair.server, &args);
    wait_top_hidden(&d, &[(&s, "smtp", 2)], 3, "after the restart");
    assert_eq!(service(&d, "pop3")["connections"], 0, "pop3 inherits nothing");
    assert_eq!(service(&d, "pop3")["sessions"], 0, "pop3 inherits no sessions");
    let _pop3_held = admit(&pair, src, POP3, 6, 4, "pop3 gives the source all 4");
    let _smtp_more = admit(&pair, src, SMTP, 8, 6, "smtp gives the source its other 6");
    wait_top_hidden(&d, &[(&s, "smtp", 8), (&s, "pop3", 4)], 3, "new service at its limit");
    let table = id_table(&d);
    assert_eq!(table[1], (service_state::ACTIVE, "smtp".to_owned()), "{table:?}");
    assert_eq!(table[2], (service_state::RETIRED, "imap".to_owned()), "{table:?}");
    assert_eq!(table[3], (service_state::ACTIVE, "pop3".to_owned()), "pop3 took a free id: {table:?}");

    // The removed service's connections close: its id becomes free (the
    // reclaim pass runs every 200 ms in tests).
    drop(imap_held);
    let start = Instant::now();
    while id_table(&d)[2].0 != service_state::FREE {
        assert!(start.elapsed() < SETTLE, "id 2 still {:?}: {}", id_table(&d)[2], d.log_text());
        thread::sleep(Duration::from_millis(50));
    }
    wait_top(&d, &[(&s, "smtp", 8), (&s, "pop3", 4)], "nothing moved when imap's connections closed");
}

/// Waits for the daemon to exit by itself (a failpoint); returns the signal.
fn wait_death(d: &mut Daemon, what: &str) -> Option<i32> {
    let start = Instant::now();
    loop {
        let child = d.child.as_mut().expect("daemon running");
        if let Ok(Some(status)) = child.try_wait() {
            d.child = None;
            return status.signal();
        }
        assert!(start.elapsed() < START, "{what}: the daemon did not die: {}", d.log_text());
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the source holds nothing anywhere and no session is in use.
fn wait_zero(d: &Daemon, what: &str) {
    wait_top(d, &[], what);
    let start = Instant::now();
    while service(d, "default")["sessions"] != 0 || service(d, "default")["connections"] != 0 {
        assert!(start.elapsed() < SETTLE, "{what}: {}", service(d, "default"));
        thread::sleep(Duration::from_millis(50));
    }
}

/// Lines an older version's `seeded` file could hold: two garbled, then
/// five well-formed ones naming sockets that do not exist for the source.
fn old_seeded_file(src: IpAddr) -> String {
    let IpAddr::V4(a) = src else { panic!("v4 source") };
    let hex: String = a.octets().iter().chain([0u8; 12].iter()).fold(String::new(), |mut h, b| {
        let _ = write!(h, "{b:02x}");
        h
    });
    let mut text = String::from("garbage\n17 1 4 00\n");
    for cookie in 1..=5 {
        let _ = writeln!(text, "{cookie} 1 4 {hex}");
    }
    text
}

/// Where the two failpoint tests start: a pair with a listener on SMTP and
/// one client address.
fn one_source() -> (Pair, Listener, IpAddr) {
    let pair = Pair::new();
    let listener = pair.listen(SMTP);
    let src = pair.add_client_v4(2);
    (pair, listener, src)
}

/// The daemon arguments of the failpoint tests: the default service on
/// `port`, 8 per source, refused with a reset.
fn limit_8<'a>(iface: &'a str, port: &'a str) -> [&'a str; 8] {
    ["--iface", iface, "--port", port, "--max-conn-per-source", "8", "--action", "reset"]
}

#[test]
fn connections_before_the_first_start_count_once_whatever_step_it_dies_at() {
    require!(privileged());
    let (pair, _l, src) = one_source();
    let (s, port) = (src.to_string(), SMTP.to_string());
    let args = limit_8(&pair.server_if, &port);
    // (failpoint of the first start, what an older version left in `seeded`)
    // Without a failpoint, the file is written between a clean stop and the
    // restart (an older version's file, trusted, lost or doubled counts).
    let cases: Vec<(Option<&str>, Option<String>)> = vec![
        (None, Some(String::new())),
        (None, Some(old_seeded_file(src))),
        (Some("seeding-flags"), None),
        (Some("sock-ops-attached"), None),
        (Some("sock-ops-pinned"), Some(String::new())),
        (Some("seed-table-read"), None),
        (Some("seed-partial"), None),
        (Some("seed-written"), Some(old_seeded_file(src))),
        (Some("seed-done"), None),
        (Some("xdp-attached"), None),
        (Some("xdp-pinned"), None),
        (Some("ready"), None),
    ];
    let steps: Vec<&str> = cases.iter().filter_map(|c| c.0).collect();
    assert_eq!(steps, START_STEPS, "every step of a start, in order");
    for (failpoint, file) in cases {
        let what = format!("failpoint {failpoint:?}, seeded file {:?}", file.as_ref().map(String::len));
        eprintln!("{what}");
        // Made before any daemon runs.
        let before = admit(&pair, src, SMTP, 5, 5, "no limiter yet");
        let mut d = Daemon::unstarted(Spawn::default());
        let old_file = d.state_dir().join("seeded");
        let state_dir = d.state_dir();
        let write_file = || {
            if let Some(text) = &file {
                std::fs::create_dir_all(&state_dir).expect("state dir");
                std::fs::write(&old_file, text).expect("seeded file");
            }
        };
        if let Some(fp) = failpoint {
            write_file();
            let status = d.run_to_exit(&pair.server, &args, &[("LIMITER_FAILPOINT", fp)], START);
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}: {}", d.log_text());
        } else {
            d.restart(&pair.server, &args);
            wait_top(&d, &[(&s, "default", 5)], &what);
            d.stop();
            write_file();
        }
        d.restart(&pair.server, &args);
        wait_top(&d, &[(&s, "default", 5)], &what);
        let more = admit(&pair, src, SMTP, 8, 3, &what);
        wait_top(&d, &[(&s, "default", 8)], &what);
        assert_eq!(service(&d, "default")["sessions"], 8, "{what}: 5 seeded + 3 established sessions");
        drop((before, more));
        wait_zero(&d, &what);
        assert!(!old_file.exists(), "{what}: the old seeded file is gone");
        d.stop();
        unload(&d);
    }
}

#[test]
fn a_crash_while_releasing_a_connection_made_before_start_loses_nothing() {
    require!(privileged());
    let (pair, _l, src) = one_source();
    let (s, port) = (src.to_string(), SMTP.to_string());
    let args = limit_8(&pair.server_if, &port);
    let mut before = admit(&pair, src, SMTP, 5, 5, "no limiter yet");
    let spawn = Spawn { env: vec![("LIMITER_FAILPOINT".into(), "reconcile".into())], ..Spawn::default() };
    let mut d = Daemon::start_with(&pair.server, &args, spawn);
    wait_top(&d, &[(&s, "default", 5)], "seeded");
    // Two close: the daemon dies half way through releasing them.
    before.truncate(3);
    assert_eq!(wait_death(&mut d, "reconcile"), Some(libc::SIGKILL), "{}", d.log_text());
    d.spawn.env.clear();
    d.restart(&pair.server, &args);
    wait_top(&d, &[(&s, "default", 3)], "after the crash in the release");
    let more = admit(&pair, src, SMTP, 8, 5, "5 free slots");
    wait_top(&d, &[(&s, "default", 8)], "at the limit");
    drop((before, more));
    wait_zero(&d, "all closed");
}

#[test]
fn pins_of_a_version_without_the_id_table_keep_their_counts() {
    require!(privileged());
    let pair = Pair::new();
    let (_smtp, _imap) = (pair.listen(SMTP), pair.listen(IMAP));
    let src = pair.add_client_v4(2);
    let s = src.to_string();
    let scratch = Scratch::new();
    let (smtp, imap) = (service_block("smtp", SMTP, 8), service_block("imap", IMAP, 3));
    let file = scratch.write("limiter.toml", &config(&pair.server_if, &[smtp.clone(), imap.clone()]));
    let args = ["--config", path_str(&file)];
    // 2 made before the first start (seeded), 4 after (counted by sock_ops).
    let before = admit(&pair, src, SMTP, 2, 2, "no limiter yet");
    let mut d = Daemon::start(&pair.server, &args);
    let after = admit(&pair, src, SMTP, 4, 4, "smtp");
    wait_top(&d, &[(&s, "smtp", 6)], "first start");

    // What the previous version leaves: no id table, no seeding record, and
    // its own list of seeded sockets (here a stale one).
    d.stop();
    for name in [names::SERVICES, names::SEED_STATE] {
        std::fs::remove_file(d.pin_dir.join(name)).expect("remove pin");
    }
    std::fs::write(d.state_dir().join("seeded"), old_seeded_file(src)).expect("seeded file");
    d.restart(&pair.server, &args);
    wait_top(&d, &[(&s, "smtp", 6)], "upgrade: ids by position, seeded from the socket table");
    let table = id_table(&d);
    assert_eq!((table[1].1.as_str(), table[2].1.as_str()), ("smtp", "imap"), "recorded: {table:?}");

    // From now on the names hold: a reorder keeps them.
    d.stop();
    scratch.write("limiter.toml", &config(&pair.server_if, &[imap, smtp]));
    d.restart(&pair.server, &args);
    wait_top(&d, &[(&s, "smtp", 6)], "reorder after the upgrade");
    let more = admit(&pair, src, SMTP, 6, 2, "smtp: 6 of 8 held");
    let imap_held = admit(&pair, src, IMAP, 6, 3, "imap: none held");
    drop((before, after, more, imap_held));
    wait_top(&d, &[], "all closed: nothing left behind");
}

/// The steps of a start a crash may hit, in the order a first start runs them.
const START_STEPS: [&str; 10] = [
    "seeding-flags",
    "sock-ops-attached",
    "sock-ops-pinned",
    "seed-table-read",
    "seed-partial",
    "seed-written",
    "seed-done",
    "xdp-attached",
    "xdp-pinned",
    "ready",
];

/// Every failpoint of the daemon is one a test here kills it at: the start's,
/// the release of a connection made before it (`reconcile`), and a running
/// daemon's changes and stop.
#[test]
fn every_failpoint_has_a_crash_test() {
    let tested: Vec<&str> = START_STEPS.iter().chain(&["reconcile"]).chain(&CHANGE_STEPS).copied().collect();
    assert_eq!(tested, limiter_user::failpoint::ALL, "a failpoint without a crash test, or one that is gone");
}

/// The steps of a running daemon's changes and of its stop that a crash
/// may hit, in the order they run: a list change (`lists.json` half written,
/// stored, applied to the kernel before the reply), a reload (the id table
/// written, the policy applied before the reply), and a stop.
const CHANGE_STEPS: [&str; 6] =
    ["lists-temp-written", "list-stored", "list-applied", "reload-ids-written", "reload-applied", "stopping"];

/// Whether `d`'s deny list holds `addr` (as a /32), per `deny list --json`.
fn denied(d: &Daemon, addr: IpAddr) -> bool {
    let v = d.client_json(&["deny", "list", "--json"]);
    let want = format!("{addr}/32");
    v["entries"].as_array().unwrap_or_else(|| panic!("no entries in {v}")).iter().any(|e| e["prefix"] == want.as_str())
}

#[test]
fn a_crash_at_any_step_of_a_change_or_a_stop_leaves_the_old_policy_or_the_new() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(SMTP);
    let (src, acked, pending) = (pair.add_client_v4(2), pair.add_client_v4(3), pair.add_client_v4(4));
    let s = src.to_string();
    let scratch = Scratch::new();
    for step in CHANGE_STEPS {
        let file = scratch.write("limiter.toml", &config(&pair.server_if, &[service_block("smtp", SMTP, 8)]));
        let args = ["--config", path_str(&file)];
        let mut d = Daemon::start(&pair.server, &args);
        let held = admit(&pair, src, SMTP, 3, 3, step);
        wait_top(&d, &[(&s, "smtp", 3)], step);
        // A change acknowledged before the crash.
        ok(&d, &["deny", "add", &acked.to_string()]);
        // The same daemon again, set to die at `step`.
        d.stop();
        d.spawn.env = vec![("LIMITER_FAILPOINT".into(), step.into())];
        d.restart(&pair.server, &args);
        wait_top(&d, &[(&s, "smtp", 3)], &format!("{step}: armed"));
        let reload = step.starts_with("reload");
        if step == "stopping" {
            let status = d.stop().expect("a daemon to stop");
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{step}: {}", d.log_text());
        } else {
            let out = if reload {
                scratch.write("limiter.toml", &config(&pair.server_if, &[service_block("smtp", SMTP, 5)]));
                limiter(&d, &["reload"])
            } else {
                limiter(&d, &["deny", "add", &pending.to_string()])
            };
            assert_ne!(out.code, Some(0), "{step}: the change is not acknowledged: {out:?}");
            assert_eq!(wait_death(&mut d, step), Some(libc::SIGKILL), "{}", d.log_text());
        }
        assert!(
            d.log_text().contains(&format!("failpoint {step}: killing the daemon")),
            "{step}: the daemon died elsewhere: {}",
            d.log_text()
        );
        d.spawn.env.clear();
        d.restart(&pair.server, &args);
        let what = format!("after a crash at {step}");
        // Counted once: not lost, not doubled.
        wait_top(&d, &[(&s, "smtp", 3)], &what);
        // The acknowledged change is kept, and enforced.
        assert!(denied(&d, acked), "{what}: the acknowledged deny entry is gone");
        drop(admit(&pair, acked, SMTP, 1, 0, &format!("{what}: the acknowledged entry")));
        // The unacknowledged one is all there or not at all: listed exactly
        // when enforced. Stored before it is applied, it is there from
        // `list-stored` on; a temporary file is not the list.
        let listed = denied(&d, pending);
        let stored = matches!(step, "list-stored" | "list-applied");
        assert_eq!(listed, stored, "{what}: the change in flight is listed: {listed}");
        drop(admit(&pair, pending, SMTP, 1, usize::from(!listed), &format!("{what}: listed {listed}")));
        // The config file is the reload's source: the new limit (5) is in
        // force after any crash during it, the old (8) otherwise.
        let (limit, more) = if reload { (5, 2) } else { (8, 5) };
        let extra = admit(&pair, src, SMTP, 6, more, &format!("{what}: limit {limit}, 3 held"));
        wait_top(&d, &[(&s, "smtp", limit)], &what);
        drop((held, extra));
        wait_top(&d, &[], &format!("{what}: all closed"));
        d.stop();
        unload(&d);
    }
}
