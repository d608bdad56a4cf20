//! The policy lists and session limits, end to end: `limiter run`
//! in a namespace with a config file, the `allow`/`deny`/`reserve`, `reload`
//! and `check-config` commands as an admin types them, and real TCP clients
//! from several source addresses of another namespace. Counts are exact:
//! every test says how many attempts get in and how many are refused.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::{Output, Scratch, limiter, limiter_at, ok, path_str},
    netns::{Attempt, Daemon, Pair, streams, tally},
    privileged, require,
};
use serde_json::{Value, json};

const PORT: u16 = 2525;
/// Connect timeout: a refused attempt returns at once (RST), so only a
/// dropped SYN would take this long.
const WAIT: Duration = Duration::from_secs(2);
/// The contract's prompt release: a closed connection frees its slot within 1 s.
const RELEASE: Duration = Duration::from_secs(1);
/// An IPv6 /48 outside every pair's own `2001:db8:N::/48` (N <= 200), for
/// sources the deny test puts on the list as a whole.
const FOREIGN_V6: &str = "2001:db8:f066";

// ---------------------------------------------------------------------------
// Helpers

/// Checks the contract for bad input: exit 2, exactly one line on stderr
/// that starts with `limiter: ` and names `want`, no panic.
fn assert_bad_input(out: &Output, what: &str, want: &str) {
    assert_eq!(out.code, Some(2), "{what}: exit code: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{what}: exactly one line on stderr: {out:?}");
    assert!(out.stderr.starts_with("limiter: "), "{what}: stderr starts with 'limiter: ': {out:?}");
    assert!(out.stderr.contains(want), "{what}: stderr does not name {want:?}: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{what}: {out:?}");
}

/// `limiter LIST list --json`.
fn list(d: &Daemon, which: &str) -> Value {
    let v = d.client_json(&[which, "list", "--json"]);
    assert_eq!(v["list"], which, "list names itself: {v}");
    assert!(v["entries"].is_array(), "entries array: {v}");
    v
}

/// The entries of a list, sorted by prefix (then service) so that
/// comparisons do not depend on the order the daemon prints.
fn entries(d: &Daemon, which: &str) -> Vec<Value> {
    let mut e = list(d, which)["entries"].as_array().cloned().unwrap_or_default();
    e.sort_by_key(|v| (v["prefix"].as_str().unwrap_or("").to_owned(), v["service"].as_str().unwrap_or("").to_owned()));
    e
}

/// All three lists, for before/after comparisons.
fn all_lists(d: &Daemon) -> [Value; 3] {
    [list(d, "allow"), list(d, "deny"), list(d, "reserve")]
}

/// The first service of `status --json`.
fn service(d: &Daemon) -> Value {
    let s = d.status_json().expect("status --json");
    s["services"][0].clone()
}

fn counter(d: &Daemon, name: &str) -> u64 {
    let s = service(d);
    s["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {s}"))
}

/// `sessions` of the first service: its connections in use (established or
/// in their handshake) from non-exempt sources.
fn sessions(d: &Daemon) -> u64 {
    let s = service(d);
    s["sessions"].as_u64().unwrap_or_else(|| panic!("no sessions in {s}"))
}

/// Waits up to `limit` for the first service's sessions to be `want`.
fn wait_sessions(d: &Daemon, want: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = sessions(d);
        if got == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "sessions stayed at {got}, want {want} within {limit:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// `n` simultaneous attempts from `src`: exactly `want` must connect and
/// the rest be refused at once (RST, no time-outs, no other errors).
/// Returns the connected streams, to be held open.
fn attempt(pair: &Pair, src: IpAddr, n: usize, want: usize, what: &str) -> Vec<TcpStream> {
    let attempts = pair.connect_parallel(src, PORT, n, WAIT);
    let t = tally(&attempts);
    assert_eq!(
        (t.connected, t.refused, t.timed_out, t.other),
        (want, n - want, 0, 0),
        "{what}: {n} attempts from {src}, want {want} connected and the rest refused: {attempts:?}"
    );
    for a in &attempts {
        if let Attempt::Refused(took) = a {
            assert!(*took < Duration::from_millis(500), "{what}: a refusal took {took:?}");
        }
    }
    streams(attempts)
}

/// Every stream is still open end to end: a line sent on it comes back
/// from the echo server.
fn assert_open(streams: &mut [TcpStream], what: &str) {
    for (i, s) in streams.iter_mut().enumerate() {
        let msg = format!("NOOP {i}\r\n");
        s.write_all(msg.as_bytes()).unwrap_or_else(|e| panic!("{what}: connection {i} not writable: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap_or_else(|e| panic!("{what}: connection {i} gave no echo: {e}"));
        assert_eq!(back, msg.as_bytes(), "{what}: connection {i} echo");
    }
}

/// A dual-stack echo server on `[::]:port` in the server namespace: it
/// accepts forever, keeps every connection open and sends back what it
/// reads; closes when the client does. Stops accepting on drop.
struct Echo {
    listener: TcpListener,
}

impl Drop for Echo {
    fn drop(&mut self) {
        // Wakes the accept thread (accept fails on a shut-down socket), so
        // no thread keeps the namespace alive after the test.
        // SAFETY: shutting down a socket we own.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

fn listen_echo(pair: &Pair, port: u16) -> Echo {
    let listener = pair.bind_dual_stack(port);
    let accepter = listener.try_clone().expect("clone listener");
    thread::spawn(move || {
        while let Ok((mut s, _)) = accepter.accept() {
            thread::spawn(move || {
                let mut buf = [0u8; 512];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Echo { listener }
}

/// Lets client addresses in `198.19.N.0/24` (outside the pair's own
/// `198.18.N.0/24`, still in 198.18.0.0/15) reach the server: a route on
/// the server side. Returns the /24's third octet.
fn route_second_v4_net(pair: &Pair) -> u8 {
    pair.server.exec(&["ip", "route", "add", &format!("198.19.{}.0/24", pair.net), "dev", &pair.server_if]);
    pair.net
}

/// Adds client address `198.19.N.host` (see [`route_second_v4_net`]).
fn add_second_net_client(pair: &Pair, host: u8) -> IpAddr {
    let a = format!("198.19.{}.{host}", pair.net);
    pair.client.exec(&["ip", "addr", "add", &format!("{a}/24"), "dev", &pair.client_if]);
    a.parse().expect("valid v4")
}

/// Lets client addresses in [`FOREIGN_V6`]`::/48` reach the server.
fn route_foreign_v6(pair: &Pair) {
    pair.server.exec(&["ip", "-6", "route", "add", &format!("{FOREIGN_V6}::/48"), "dev", &pair.server_if]);
}

/// Adds client address `FOREIGN_V6:subnet::host` (see [`route_foreign_v6`]).
fn add_foreign_v6(pair: &Pair, subnet: u16, host: u16) -> IpAddr {
    let a = format!("{FOREIGN_V6}:{subnet:x}::{host:x}");
    pair.client.exec(&["ip", "addr", "add", &format!("{a}/48"), "dev", &pair.client_if, "nodad"]);
    a.parse().expect("valid v6")
}

/// A config with one service `smtp` on [`PORT`] protecting `iface`;
/// `service` adds lines to the service table, `rest` adds tables after it.
fn smtp_config(iface: &str, service: &str, rest: &str) -> String {
    format!(
        "interfaces = [\"{iface}\"]\n\n[[service]]\nname = \"smtp\"\nports = [{PORT}]\naction = \"reset\"\n{service}\n{rest}"
    )
}

fn pid(d: &Daemon) -> libc::pid_t {
    // nsenter without a PID namespace execs the daemon: same pid.
    libc::pid_t::try_from(d.child.as_ref().expect("daemon running").id()).expect("pid")
}

// ---------------------------------------------------------------------------
// Tests

/// The acceptance scenario: per-source 2, 10 sessions of which 6
/// are reserved for a gateway that is also allowed 20 per source.
#[test]
fn reserved_sessions_are_kept_for_the_gateway() {
    require!(privileged());
    let pair = Pair::new();
    let _echo = listen_echo(&pair, PORT);
    let (a, b, c) = (pair.add_client_v4(2), pair.add_client_v4(3), pair.add_client_v4(4));
    let gw = pair.add_client_v4(50);
    let scratch = Scratch::new();
    let config = scratch.write(
        "limiter.toml",
        &smtp_config(
            &pair.server_if,
            "max_conn_per_source = 2\nmax_sessions = 10\nreserved_sessions = 6\n",
            &format!(
                "[[allow]]\nprefix = \"{gw}\"\nmax_conn_per_source = 20\n\n\
                 [[reserve]]\nservice = \"smtp\"\nprefix = \"{gw}\"\n"
            ),
        ),
    );
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    let svc = service(&d);
    assert_eq!(
        (&svc["name"], &svc["max_sessions"], &svc["reserved_sessions"], &svc["sessions"]),
        (&json!("smtp"), &json!(10), &json!(6), &json!(0)),
        "{svc}"
    );
    assert_eq!(
        entries(&d, "allow"),
        [json!({"prefix": format!("{gw}/32"), "max_conn_per_source": 20, "origin": "config"})],
        "config allow entry, normalized to /32"
    );
    assert_eq!(
        entries(&d, "reserve"),
        [json!({"prefix": format!("{gw}/32"), "service": "smtp", "origin": "config"})],
        "config reserve entry"
    );

    // Two ordinary sources get their 2 each: 4 in use = 10 - 6. a's other
    // 3 meet its own limit (the connections rule); b's other 3 arrive at 4 in use
    // and meet the reserve first (the sessions rule comes before the connections rule).
    let mut held_a = attempt(&pair, a, 5, 2, "ordinary a");
    let _held_b = attempt(&pair, b, 5, 2, "ordinary b");
    wait_sessions(&d, 4, WAIT);
    // The rest is reserved: a third ordinary source gets nothing.
    let _ = attempt(&pair, c, 5, 0, "ordinary c at 4 of 10 (6 reserved)");
    // The gateway gets exactly the remaining 6, though its own limit is 20.
    let held_gw = attempt(&pair, gw, 10, 6, "gateway");
    wait_sessions(&d, 10, WAIT);
    // Full: nobody gets in, whatever their own count.
    let _ = attempt(&pair, c, 3, 0, "ordinary c at 10 of 10");
    let _ = attempt(&pair, a, 2, 0, "ordinary a at 10 of 10");
    let _ = attempt(&pair, gw, 2, 0, "gateway at 10 of 10");
    let svc = service(&d);
    let cs = &svc["counters"];
    assert_eq!(
        (
            &cs["accepted"],
            &cs["refused_concurrency"],
            &cs["refused_reserve"],
            &cs["refused_sessions"],
            &cs["refused_deny"]
        ),
        (&json!(10), &json!(3), &json!(3 + 5), &json!(4 + 3 + 2 + 2), &json!(0)),
        "counters: {svc}"
    );

    // The gateway closes its 6: back at 4 in use, still none for ordinary sources.
    drop(held_gw);
    let took = wait_sessions(&d, 4, RELEASE);
    eprintln!("6 gateway closes released in {took:?}");
    let _ = attempt(&pair, c, 3, 0, "ordinary c at 4 of 10 after the gateway closed");
    // One more closes: 3 in use, so exactly one ordinary attempt gets in.
    held_a.truncate(1);
    wait_sessions(&d, 3, RELEASE);
    let held_c = attempt(&pair, c, 3, 1, "ordinary c at 3 of 10");
    wait_sessions(&d, 4, WAIT);
    // The reserve is still the gateway's, whole.
    let mut held_gw = attempt(&pair, gw, 10, 6, "gateway again");
    wait_sessions(&d, 10, WAIT);
    assert_open(&mut held_gw, "gateway connections");
    drop((held_a, held_c, held_gw));
}

/// A run-time allow entry with its own limit raises a source's cap; deleting
/// it lowers the cap again without cutting what is established.
#[test]
fn runtime_allow_raises_the_cap_and_del_keeps_connections() {
    require!(privileged());
    let pair = Pair::new();
    let _echo = listen_echo(&pair, PORT);
    let src = pair.add_client_v4(2);
    let other = pair.add_client_v4(3);
    let d = Daemon::start(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "2", "--action", "reset"],
    );
    let net = pair.net;
    let mut held = attempt(&pair, src, 6, 2, "base limit 2");
    assert_eq!(entries(&d, "allow"), Vec::<Value>::new(), "no allow entries at start");

    // The wildcard form, as mail admins write it.
    let wildcard = format!("198.18.{net}.*");
    ok(&d, &["allow", "add", &wildcard, "--max-conn-per-source", "4"]);
    let cidr = format!("198.18.{net}.0/24");
    assert_eq!(
        entries(&d, "allow"),
        [json!({"prefix": cidr, "max_conn_per_source": 4, "origin": "runtime"})],
        "the wildcard is listed as a /24"
    );
    held.extend(attempt(&pair, src, 6, 2, "allow entry raises the cap to 4"));
    assert_eq!(held.len(), 4);
    // The /24 covers the other host too: its own 4.
    let held_other = attempt(&pair, other, 6, 4, "another host of the /24");

    ok(&d, &["allow", "del", &cidr]);
    assert_eq!(entries(&d, "allow"), Vec::<Value>::new(), "entry gone");
    // Established connections are never cut; new ones meet the base limit.
    assert_open(&mut held, "connections over the restored limit");
    let refused_before = counter(&d, "refused_concurrency");
    let _ = attempt(&pair, src, 3, 0, "back to limit 2 while holding 4");
    assert_eq!(counter(&d, "refused_concurrency"), refused_before + 3);
    // Two close: still at the limit (2 held of 2), nothing gets in.
    held.truncate(2);
    d.wait_connections(2 + 4, RELEASE);
    let _ = attempt(&pair, src, 3, 0, "holding 2 of 2");
    held.truncate(1);
    d.wait_connections(1 + 4, RELEASE);
    let _more = attempt(&pair, src, 3, 1, "holding 1 of 2");
    drop(held_other);
}

/// Deny entries refuse at once, for an IPv4 host and an IPv6 /48, and beat
/// an allow entry for the same host.
#[test]
fn deny_refuses_v4_host_and_v6_48_and_beats_allow() {
    require!(privileged());
    let pair = Pair::new();
    let _echo = listen_echo(&pair, PORT);
    let denied4 = pair.add_client_v4(5);
    let fine4 = pair.add_client_v4(6);
    let both = pair.add_client_v4(7);
    let fine6 = pair.add_client_v6(1, 0x10);
    route_foreign_v6(&pair);
    let (far1, far2) = (add_foreign_v6(&pair, 1, 5), add_foreign_v6(&pair, 2, 5));
    let d = Daemon::start(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "2", "--action", "reset"],
    );
    // The foreign /48 is reachable: one of far1's two slots, held.
    let _far1_held = attempt(&pair, far1, 1, 1, "far1 before the deny entry");

    ok(&d, &["deny", "add", &denied4.to_string(), "--comment", "spam run"]);
    ok(&d, &["deny", "add", &format!("{FOREIGN_V6}::/48")]);
    assert_eq!(
        entries(&d, "deny"),
        [
            json!({"prefix": format!("198.18.{}.5/32", pair.net), "comment": "spam run", "origin": "runtime"}),
            json!({"prefix": format!("{FOREIGN_V6}::/48"), "origin": "runtime"}),
        ],
        "deny list"
    );
    let _ = attempt(&pair, denied4, 3, 0, "denied IPv4 host");
    let _ = attempt(&pair, far1, 3, 0, "denied /48, first /64 (holding 1 of 2)");
    let _ = attempt(&pair, far2, 3, 0, "denied /48, second /64");
    assert_eq!(counter(&d, "refused_deny"), 9);
    // Their neighbours, identical but for the address, are admitted.
    let _h1 = attempt(&pair, fine4, 3, 2, "IPv4 host next to the denied one");
    let _h2 = attempt(&pair, fine6, 3, 2, "IPv6 host outside the denied /48");

    // Exempt first: more than the limit.
    ok(&d, &["allow", "add", &both.to_string()]);
    let mut held_both = attempt(&pair, both, 5, 5, "exempt host");
    // Deny wins over allow for the same host; what is established stays.
    // One prefix on both lists is almost surely a mistake: refused without --force.
    let out = limiter(&d, &["deny", "add", &both.to_string()]);
    assert_bad_input(&out, "deny add of an allowed host", "--force");
    ok(&d, &["deny", "add", &both.to_string(), "--force"]);
    let _ = attempt(&pair, both, 3, 0, "host on both lists");
    assert_eq!(counter(&d, "refused_deny"), 12);
    assert_open(&mut held_both, "connections of the newly denied host");
    ok(&d, &["deny", "del", &format!("{both}/32")]);
    let _more = attempt(&pair, both, 2, 2, "exempt again after deny del");
    ok(&d, &["deny", "del", &denied4.to_string()]);
    let _back = attempt(&pair, denied4, 3, 2, "no longer denied");
    assert_eq!(counter(&d, "refused_deny"), 12, "no deny refusals after the entries went");
    assert_eq!(
        entries(&d, "deny"),
        [json!({"prefix": format!("{FOREIGN_V6}::/48"), "origin": "runtime"})],
        "deny list after del"
    );
}

/// An exempt source (allow entry without limits) is held to nothing and
/// does not use up `max_sessions`.
#[test]
fn exempt_sources_are_unlimited_and_not_counted_in_sessions() {
    require!(privileged());
    let pair = Pair::new();
    let _echo = listen_echo(&pair, PORT);
    let exempt = pair.add_client_v4(9);
    let (a, b, c) = (pair.add_client_v4(2), pair.add_client_v4(3), pair.add_client_v4(4));
    let scratch = Scratch::new();
    let config = scratch.write(
        "limiter.toml",
        &smtp_config(
            &pair.server_if,
            "max_conn_per_source = 2\nmax_sessions = 4\n",
            &format!("[[allow]]\nprefix = \"{exempt}\"\ncomment = \"local relay\"\n"),
        ),
    );
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    assert_eq!(
        entries(&d, "allow"),
        [json!({"prefix": format!("{exempt}/32"), "comment": "local relay", "origin": "config"})],
        "a comment is not a limit"
    );

    let mut held_exempt = attempt(&pair, exempt, 10, 10, "exempt source, limit 2 for others");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(sessions(&d), 0, "exempt connections are not sessions");
    // Ordinary sources still get the whole max_sessions. a's other 3 meet
    // its own limit; b's other 3 arrive at 4 of 4 sessions, and the sessions
    // rule comes before the connections rule (per source).
    let _ha = attempt(&pair, a, 5, 2, "ordinary a");
    let _hb = attempt(&pair, b, 5, 2, "ordinary b");
    wait_sessions(&d, 4, WAIT);
    let _ = attempt(&pair, c, 3, 0, "ordinary c, sessions full");
    // The exempt source still gets in while the sessions are full.
    held_exempt.extend(attempt(&pair, exempt, 5, 5, "exempt source, sessions full"));
    assert_eq!(sessions(&d), 4, "still 4 sessions");
    let svc = service(&d);
    let cs = &svc["counters"];
    assert_eq!(
        (&cs["accepted"], &cs["refused_concurrency"], &cs["refused_sessions"], &cs["refused_reserve"]),
        (&json!(19), &json!(3), &json!(3 + 3), &json!(0)),
        "counters: {svc}"
    );
    // They still show in `top`.
    let top = d.client_json(&["top", "--json"]);
    let row = top["sources"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["source"] == exempt.to_string()))
        .unwrap_or_else(|| panic!("exempt source not in top: {top}"));
    assert_eq!(row["connections"], 15, "{top}");
    assert_open(&mut held_exempt, "exempt connections");
    drop(held_exempt);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(sessions(&d), 4, "closing exempt connections frees no sessions");
    let _ = attempt(&pair, c, 3, 0, "ordinary c, sessions still full");
}

/// Bad input to the list commands exits 2 with one line and changes nothing.
#[test]
fn bad_list_input_exits_2_and_changes_nothing() {
    require!(privileged());
    let pair = Pair::new();
    let scratch = Scratch::new();
    let config = scratch.write(
        "limiter.toml",
        &smtp_config(
            &pair.server_if,
            "max_conn_per_source = 2\nmax_sessions = 10\nreserved_sessions = 2\n",
            "[[allow]]\nprefix = \"198.18.7.0/24\"\nmax_conn_per_source = 5\n\n\
             [[deny]]\nprefix = \"198.18.66.66\"\n\n\
             [[reserve]]\nservice = \"smtp\"\nprefix = \"198.18.8.1\"\n",
        ),
    );
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    ok(&d, &["allow", "add", "198.18.9.0/24", "--max-conn-per-source", "3"]);
    let before = all_lists(&d);
    let state_before = state_files(&d);

    let cases: &[(&[&str], &str)] = &[
        (&["allow", "add", "198.18.0.300/24"], "198.18.0.300/24"),
        (&["allow", "add", "10.*.1.1"], "10.*.1.1"),
        (&["deny", "add", "198.18.0.300/24"], "198.18.0.300/24"),
        (&["deny", "add", "2001:db8::/129"], "2001:db8::/129"),
        (&["reserve", "add", "198.18.1.0/24", "--service", "nope"], "nope"),
        (&["allow", "add", "198.18.1.0/24", "--max-conn-per-source", "0"], "max"),
        (&["allow", "add", "198.18.1.0/24", "--rate", "5/hour"], "5/hour"),
        // Entries of the config file are changed in the file, not at run time.
        (&["allow", "del", "198.18.7.0/24"], "config"),
        (&["deny", "del", "198.18.66.66"], "config"),
        (&["reserve", "del", "198.18.8.1", "--service", "smtp"], "config"),
    ];
    for (args, want) in cases {
        let out = limiter(&d, args);
        assert_bad_input(&out, &format!("limiter {args:?}"), want);
        assert_eq!(all_lists(&d), before, "limiter {args:?} changed the lists");
    }
    // No daemon at the socket: bad input too.
    let out = limiter_at(&scratch.0.join("none.sock"), &["allow", "add", "198.18.1.0/24"]);
    assert_bad_input(&out, "unreachable socket", "cannot reach");
    assert_eq!(all_lists(&d), before);
    assert_eq!(state_files(&d), state_before, "the state dir was not rewritten");

    // The comparison does see a change: a good command makes one.
    ok(&d, &["allow", "add", "198.18.1.*"]);
    let after = all_lists(&d);
    assert_ne!(after, before);

    // A missing required option is bad input too, and the one line must
    // say which option (clap's first line alone does not).
    let out = limiter(&d, &["reserve", "add", "198.18.1.0/24"]);
    assert_bad_input(&out, "reserve add without --service", "--service");
    assert_eq!(all_lists(&d), after);
}

/// Names and contents of the files in the daemon's state dir.
fn state_files(d: &Daemon) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(d.state_dir())
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Run-time entries survive `kill -9` and a restart, and so do the counts
/// of the connections held meanwhile.
#[test]
fn runtime_entries_and_counts_survive_kill_9() {
    require!(privileged());
    let pair = Pair::new();
    let _echo = listen_echo(&pair, PORT);
    let a = pair.add_client_v4(2);
    let b = pair.add_client_v4(3);
    let gw = pair.add_client_v4(10);
    let spam = pair.add_client_v4(66);
    let net = pair.net;
    let scratch = Scratch::new();
    let config = scratch.write(
        "limiter.toml",
        &smtp_config(&pair.server_if, "max_conn_per_source = 2\nmax_sessions = 10\nreserved_sessions = 5\n", ""),
    );
    let args = ["--config", path_str(&config)];
    let mut d = Daemon::start(&pair.server, &args);
    ok(&d, &["allow", "add", &gw.to_string(), "--max-conn-per-source", "4", "--comment", "gateway"]);
    ok(&d, &["deny", "add", &spam.to_string()]);
    ok(&d, &["reserve", "add", &gw.to_string(), "--service", "smtp"]);
    let lists = all_lists(&d);
    assert_eq!(
        [entries(&d, "allow"), entries(&d, "deny"), entries(&d, "reserve")],
        [
            vec![
                json!({"prefix": format!("198.18.{net}.10/32"), "max_conn_per_source": 4, "comment": "gateway", "origin": "runtime"})
            ],
            vec![json!({"prefix": format!("198.18.{net}.66/32"), "origin": "runtime"})],
            vec![json!({"prefix": format!("198.18.{net}.10/32"), "service": "smtp", "origin": "runtime"})],
        ]
    );
    let mut held_a = attempt(&pair, a, 4, 2, "a before the crash");
    let mut held_gw = attempt(&pair, gw, 3, 3, "gateway before the crash");
    wait_sessions(&d, 5, WAIT);

    d.kill();
    thread::sleep(Duration::from_millis(200));
    d.restart(&pair.server, &args);
    assert_eq!(all_lists(&d), lists, "lists after kill -9 and restart");
    assert_eq!(sessions(&d), 5, "held connections still counted");
    assert_open(&mut held_a, "a's connections after the restart");
    assert_open(&mut held_gw, "gateway's connections after the restart");

    // a holds its 2: nothing more. The gateway's own limit (4) and its
    // reserve entry hold: exactly one more, past the 5 unreserved sessions.
    let _ = attempt(&pair, a, 3, 0, "a holding its limit after the restart");
    let deny_before = counter(&d, "refused_deny");
    let _ = attempt(&pair, spam, 3, 0, "denied source after the restart");
    assert_eq!(counter(&d, "refused_deny"), deny_before + 3, "refused by the deny entry, not another rule");
    let _ = attempt(&pair, b, 3, 0, "ordinary b: 5 of 10 in use, 5 reserved");
    held_gw.extend(attempt(&pair, gw, 5, 1, "gateway: 3 of its 4"));
    wait_sessions(&d, 6, WAIT);
    // Below the reserve again (2 + 2 in use): a is held by its own count,
    // which the restart kept exact.
    held_gw.truncate(2);
    wait_sessions(&d, 4, RELEASE);
    let _ = attempt(&pair, a, 3, 0, "a holding 2 of 2, 4 of 10 in use");
    held_a.truncate(1);
    wait_sessions(&d, 3, RELEASE);
    held_a.extend(attempt(&pair, a, 3, 1, "a after one close"));
    assert_open(&mut held_a, "a's connections at the end");
}

/// `limiter reload` and SIGHUP apply an edited config; a broken one is
/// refused with the reason and the old policy keeps working.
#[test]
fn reload_applies_good_configs_and_refuses_broken_ones() {
    require!(privileged());
    let pair = Pair::new();
    let _echo = listen_echo(&pair, PORT);
    let (a, b, c, spam) = (pair.add_client_v4(2), pair.add_client_v4(3), pair.add_client_v4(4), pair.add_client_v4(66));
    let scratch = Scratch::new();
    let write = |max: u32, extra: &str| {
        scratch.write(
            "limiter.toml",
            &smtp_config(&pair.server_if, &format!("max_conn_per_source = {max}\nmax_sessions = 100\n"), extra),
        )
    };
    let config = write(2, "");
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    let mut held_a = attempt(&pair, a, 5, 2, "a, limit 2");
    ok(&d, &["allow", "add", &c.to_string(), "--max-conn-per-source", "5"]);

    write(3, "");
    ok(&d, &["reload"]);
    assert_eq!(service(&d)["max_conn_per_source"], 3);
    held_a.extend(attempt(&pair, a, 5, 1, "a after reload to 3"));

    // Broken: more reserved than there are sessions. Refused, nothing applied.
    scratch.write(
        "limiter.toml",
        &smtp_config(&pair.server_if, "max_conn_per_source = 10\nmax_sessions = 2\nreserved_sessions = 5\n", ""),
    );
    let out = limiter(&d, &["reload"]);
    assert_bad_input(&out, "reload of reserved_sessions > max_sessions", "reserved_sessions");
    let svc = service(&d);
    assert_eq!((&svc["max_conn_per_source"], &svc["max_sessions"]), (&json!(3), &json!(100)), "old policy: {svc}");
    let mut held_b = attempt(&pair, b, 5, 3, "b under the old limit 3 after a refused reload");
    let _ = attempt(&pair, a, 3, 0, "a holds 3 of 3");

    // Broken: not TOML at all.
    scratch.write("limiter.toml", "interfaces = [\"x\"\n[[service]\nname = \n");
    let out = limiter(&d, &["reload"]);
    assert_bad_input(&out, "reload of invalid TOML", "limiter.toml");
    let _ = attempt(&pair, b, 3, 0, "b holds 3 of 3 after the second refused reload");
    assert_eq!(service(&d)["max_conn_per_source"], 3);

    // SIGHUP applies a good edit: limit 4 and a deny entry.
    write(4, &format!("[[deny]]\nprefix = \"{spam}\"\n"));
    // SAFETY: signalling the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid(&d), libc::SIGHUP) }, 0);
    let start = Instant::now();
    while service(&d)["max_conn_per_source"] != 4 {
        assert!(start.elapsed() < Duration::from_secs(3), "SIGHUP not applied within 3 s: {}", d.log_text());
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("SIGHUP applied in {:?}", start.elapsed());
    assert_eq!(
        entries(&d, "deny"),
        [json!({"prefix": format!("{spam}/32"), "origin": "config"})],
        "the reloaded config's deny entry"
    );
    held_a.extend(attempt(&pair, a, 3, 1, "a after SIGHUP to 4"));
    held_b.extend(attempt(&pair, b, 3, 1, "b after SIGHUP to 4"));
    let _ = attempt(&pair, spam, 3, 0, "denied by the reloaded config");
    // The run-time entry was not lost by the reloads.
    assert_eq!(
        entries(&d, "allow"),
        [json!({"prefix": format!("{c}/32"), "max_conn_per_source": 5, "origin": "runtime"})],
        "run-time allow entry after reloads"
    );
    let _held_c = attempt(&pair, c, 7, 5, "c's own limit 5 survives the reloads");
    assert_open(&mut held_a, "a's connections across reloads");
    assert_open(&mut held_b, "b's connections across reloads");
}

/// VPOP3, scaled down: "Maximum Incoming Sessions 5, Number of Sessions to
/// Reserve 3, Reserve Sessions for 198.19.N.*" (the second /24 on the link).
#[test]
fn vpop3_reserve_sessions_for_a_wildcard() {
    require!(privileged());
    let pair = Pair::new();
    let _echo = listen_echo(&pair, PORT);
    let (o1, o2, o3) = (pair.add_client_v4(2), pair.add_client_v4(3), pair.add_client_v6(1, 0x10));
    let lan = route_second_v4_net(&pair);
    let (r1, r2) = (add_second_net_client(&pair, 5), add_second_net_client(&pair, 6));
    let scratch = Scratch::new();
    let config = scratch.write(
        "limiter.toml",
        &smtp_config(
            &pair.server_if,
            // A per-source limit that never bites, and so no rate limit.
            "max_conn_per_source = 100\nmax_sessions = 5\nreserved_sessions = 3\n",
            &format!("[[reserve]]\nservice = \"smtp\"\nprefix = \"198.19.{lan}.*\"\n"),
        ),
    );
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    assert_eq!(
        entries(&d, "reserve"),
        [json!({"prefix": format!("198.19.{lan}.0/24"), "service": "smtp", "origin": "config"})]
    );
    let mut held = attempt(&pair, o1, 1, 1, "ordinary o1");
    held.extend(attempt(&pair, o2, 4, 1, "ordinary o2: 2 ordinary sessions in all"));
    let _ = attempt(&pair, o3, 3, 0, "ordinary IPv6 o3");
    let _ = attempt(&pair, o1, 3, 0, "ordinary o1 again");
    wait_sessions(&d, 2, WAIT);
    held.extend(attempt(&pair, r1, 2, 2, "reserved r1"));
    held.extend(attempt(&pair, r2, 4, 1, "reserved r2 gets the last"));
    wait_sessions(&d, 5, WAIT);
    let _ = attempt(&pair, r1, 3, 0, "reserved r1: no 6th");
    let _ = attempt(&pair, o2, 3, 0, "ordinary o2: no 6th");
    let svc = service(&d);
    let cs = &svc["counters"];
    assert_eq!(
        (&cs["accepted"], &cs["refused_reserve"], &cs["refused_sessions"], &cs["refused_concurrency"]),
        (&json!(5), &json!(3 + 3 + 3), &json!(3 + 3 + 3), &json!(0)),
        "counters: {svc}"
    );
    assert_eq!((&svc["max_sessions"], &svc["reserved_sessions"], &svc["sessions"]), (&json!(5), &json!(3), &json!(5)));
    assert_open(&mut held, "all five sessions");
}

/// Garbage on the control socket gets an error or a closed connection; the
/// daemon keeps serving others and the policy is unchanged.
#[test]
fn control_socket_garbage_changes_nothing() {
    require!(privileged());
    let pair = Pair::new();
    let _echo = listen_echo(&pair, PORT);
    let a = pair.add_client_v4(2);
    let scratch = Scratch::new();
    let config = scratch.write(
        "limiter.toml",
        &smtp_config(
            &pair.server_if,
            "max_conn_per_source = 2\nmax_sessions = 10\nreserved_sessions = 1\n",
            // Away from the pair's own 198.18.N.0/24.
            "[[deny]]\nprefix = \"198.19.66.0/24\"\n",
        ),
    );
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    ok(&d, &["allow", "add", "198.19.9.0/24", "--max-conn-per-source", "3"]);
    let before = all_lists(&d);

    // Answered with one error line, or closed without an answer.
    let ask = |name: &str, bytes: &[u8]| {
        let mut s = UnixStream::connect(&d.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(7))).expect("timeout");
        // The daemon may answer and close before reading everything.
        let _ = s.write_all(bytes);
        let mut line = String::new();
        let start = Instant::now();
        match BufReader::new(s).read_line(&mut line) {
            Ok(0) => {}
            Ok(_) => {
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{name}: {e}: {line:?}"));
                assert!(v["error"].is_string(), "{name}: expected an error reply, got {v}");
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{name}: neither an answer nor a close after {:?}: {e}", start.elapsed()),
        }
    };
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..512)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            match rng.to_le_bytes()[3] {
                b'\n' => 0,
                x => x,
            }
        })
        .chain([b'\n'])
        .collect();
    let mut big = vec![b'{'; 100 * 1024];
    big.push(b'\n');
    for (name, req) in [
        ("random bytes", random),
        ("invalid JSON", b"{\"cmd\": \"status\"\n".to_vec()),
        ("unknown command", b"{\"cmd\":\"nope\"}\n".to_vec()),
        ("wrong argument types", b"{\"cmd\":\"top\",\"service\":7,\"limit\":\"x\"}\n".to_vec()),
        ("a 100 KiB line", big),
        ("empty line", b"\n".to_vec()),
    ] {
        ask(name, &req);
    }
    // Clients that connect and say nothing, or half a request, block nobody.
    let mut silent: Vec<UnixStream> = (0..8).map(|_| UnixStream::connect(&d.socket).expect("connect")).collect();
    let mut half = UnixStream::connect(&d.socket).expect("connect");
    half.write_all(b"{\"cmd\":").expect("half a request");
    silent.push(half);
    let start = Instant::now();
    let out = ok(&d, &["status", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout).expect("status JSON");
    assert!(start.elapsed() < Duration::from_secs(2), "status blocked by silent clients: {:?}", start.elapsed());
    assert_eq!(v["services"][0]["name"], "smtp");
    let start = Instant::now();
    assert_eq!(all_lists(&d), before, "lists while silent clients wait");
    assert!(start.elapsed() < Duration::from_secs(2), "list blocked by silent clients");
    drop(silent);

    assert!(d.status_json().is_some(), "daemon still answers");
    assert_eq!(all_lists(&d), before, "lists unchanged by garbage");
    let _held = attempt(&pair, a, 5, 2, "policy unchanged: limit 2");
}

/// The line numbers of `check-config`'s `FILE:LINE: message` lines, sorted.
/// Besides them stderr may hold one summary line starting `limiter: `,
/// nothing else.
fn problem_lines(out: &Output, file: &str) -> Vec<u32> {
    let mut lines = Vec::new();
    let mut summaries = 0;
    for l in out.stderr.lines() {
        if let Some(rest) = l.strip_prefix(&format!("{file}:")) {
            let (n, msg) = rest.split_once(": ").unwrap_or_else(|| panic!("not FILE:LINE: message: {l:?}"));
            assert!(!msg.trim().is_empty(), "empty message: {l:?}");
            lines.push(n.parse().unwrap_or_else(|e| panic!("line number {n:?} in {l:?}: {e}")));
        } else {
            assert!(l.starts_with("limiter: "), "neither FILE:LINE: nor a summary: {l:?}: {out:?}");
            summaries += 1;
        }
    }
    assert!(summaries <= 1, "at most one summary line: {out:?}");
    lines.sort_unstable();
    lines
}

/// `check-config` reports every problem of a file, one `FILE:LINE:` line
/// each, and passes a good file.
#[test]
fn check_config_reports_each_problem_with_its_line() {
    require!(privileged());
    let scratch = Scratch::new();
    let bad = scratch.write(
        "bad.toml",
        "interfaces = [\"lo\"]\n\
         \n\
         [[service]]\n\
         name = \"smtp\"\n\
         ports = [2525]\n\
         max_conn_per_source = 0\n\
         max_sessions = 10\n\
         \n\
         [[deny]]\n\
         prefix = \"198.18.0.300/24\"\n\
         \n\
         [[reserve]]\n\
         service = \"nope\"\n\
         prefix = \"198.18.0.50\"\n",
    );
    let bad_s = path_str(&bad);
    let out = limiter_at(&scratch.0.join("none.sock"), &["check-config", bad_s]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(problem_lines(&out, bad_s), [6, 10, 13], "one line per problem, at the problem's line: {out:?}");
    let text = &out.stderr;
    assert!(text.contains("198.18.0.300/24") && text.contains("nope"), "messages name the bad values: {text}");

    // A syntax error: one problem at its line.
    let broken = scratch.write("broken.toml", "interfaces = [\"lo\"]\n[[service]]\nname = \"smtp\"\nports = [25,\n");
    let out = limiter_at(&scratch.0.join("none.sock"), &["check-config", path_str(&broken)]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(problem_lines(&out, path_str(&broken)).len(), 1, "{out:?}");

    let good = scratch.write(
        "good.toml",
        "interfaces = [\"lo\"]\n\
         [[service]]\n\
         name = \"smtp\"\n\
         ports = [25, 465, 587]\n\
         max_conn_per_source = 8\n\
         max_sessions = 50\n\
         reserved_sessions = 30\n\
         [[allow]]\n\
         prefix = \"192.168.1.*\"\n\
         max_conn_per_source = 100\n\
         [[deny]]\n\
         prefix = \"203.0.113.0/24\"\n\
         [[reserve]]\n\
         service = \"smtp\"\n\
         prefix = \"198.51.100.10\"\n",
    );
    let out = limiter_at(&scratch.0.join("none.sock"), &["check-config", path_str(&good)]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with(&format!("{}: ok", good.display())), "{out:?}");
}
