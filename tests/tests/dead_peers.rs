//! Dead peers (`dead_peer_timeout`, issue 17): a service's accepted
//! connections get keepalive and a user timeout from `sock_ops`, so a client
//! that vanished (here: a client namespace that drops every packet) is given
//! up by the kernel within about the timeout and its count released, while
//! a client that is still there keeps its connections however long it idles.
//! A server's own keepalive stands; a service without a timeout is untouched;
//! a bad timeout is refused by `check-config`, `run` and `reload`.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::{Output, Scratch, limiter, ok, path_str},
    netns::{Daemon, Pair, limiter_bin},
    nft, patience,
    policy::{PORT, WAIT, assert_bad_input, attempt, smtp_config},
    privileged, require,
};
use serde_json::Value;

/// A second service port, for the tests that need two.
const OTHER_PORT: u16 = 2526;

/// The table that makes the client vanish.
const VANISH: &str = "limiter_vanish";

/// A server that accepts and never writes nor reads: it holds every
/// connection until the test ends, as an IMAP server holds an IDLE client.
/// The accepted sockets are kept to read their options.
struct Holder {
    listener: TcpListener,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
}

impl Holder {
    fn new(listener: TcpListener) -> Self {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (incoming, kept) = (listener.try_clone().expect("clone listener"), Arc::clone(&accepted));
        thread::spawn(move || {
            while let Ok((s, _)) = incoming.accept() {
                kept.lock().expect("accepted").push(s);
            }
        });
        Self { listener, accepted }
    }

    /// The options of every accepted socket, once `n` have been accepted.
    fn options(&self, n: usize) -> Vec<Options> {
        let start = Instant::now();
        loop {
            let got = self.accepted.lock().expect("accepted");
            if got.len() >= n {
                return got.iter().map(Options::of).collect();
            }
            drop(got);
            assert!(start.elapsed() < patience(Duration::from_secs(5)), "fewer than {n} connections accepted");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pending error of every accepted socket (`SO_ERROR`), as the server would read it.
    fn errors(&self) -> Vec<Option<i32>> {
        self.accepted
            .lock()
            .expect("accepted")
            .iter()
            .map(|s| s.take_error().expect("SO_ERROR").and_then(|e| e.raw_os_error()))
            .collect()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Wakes the accept thread, so nothing keeps the namespace alive.
        // SAFETY: shutting down a socket we own.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// The keepalive options of a socket, as the server reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Options {
    keepalive: i32,
    idle_s: i32,
    interval_s: i32,
    probes: i32,
    user_timeout_ms: i32,
}

impl Options {
    fn of(s: &TcpStream) -> Self {
        let get = |level, name| {
            let mut v: libc::c_int = 0;
            let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("len");
            // SAFETY: an int option of a socket we own, into an int.
            let r = unsafe { libc::getsockopt(s.as_raw_fd(), level, name, (&raw mut v).cast(), &raw mut len) };
            assert_eq!(r, 0, "getsockopt({level}, {name}): {}", std::io::Error::last_os_error());
            v
        };
        Self {
            keepalive: get(libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            idle_s: get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            interval_s: get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            probes: get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
            user_timeout_ms: get(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
        }
    }
}

/// What `dead_peer_timeout = "5s"` gives (`limiter_common::keepalive`).
const FIVE_S: Options = Options { keepalive: 1, idle_s: 2, interval_s: 1, probes: 3, user_timeout_ms: 5_000 };

/// What Linux gives a socket nobody set anything on (the namespace's
/// `net.ipv4.tcp_keepalive_*` defaults, which the tests do not change).
const UNTOUCHED: Options = Options { keepalive: 0, idle_s: 7_200, interval_s: 75, probes: 9, user_timeout_ms: 0 };

/// Sets an int socket option on a listener (accepted sockets inherit it).
fn set(l: &TcpListener, level: i32, name: i32, value: i32) {
    // SAFETY: an int option of a socket we own, from an int.
    let r = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("len"),
        )
    };
    assert_eq!(r, 0, "setsockopt({level}, {name}): {}", std::io::Error::last_os_error());
}

/// The service `name` of `status --json`.
fn service(d: &Daemon, name: &str) -> Value {
    let s = d.status_json().expect("status --json");
    s["services"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no service {name} in {s}"))
}

/// Connections `source` holds with `name`, as `limiter top --json` reports them.
fn held(d: &Daemon, name: &str, source: &str) -> u64 {
    let top = d.client_json(&["top", "--service", name, "--json"]);
    top["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|r| r["source"] == source)
        .map_or(0, |r| r["connections"].as_u64().expect("connections"))
}

/// A config of service `smtp` on [`PORT`] with at most 4 connections per
/// source, and `service` lines added (e.g. the timeout).
fn config(pair: &Pair, service: &str, rest: &str) -> String {
    smtp_config(&pair.server_if, &format!("max_conn_per_source = 4\n{service}"), rest)
}

/// A client that vanishes (every packet to or from it dropped in its
/// namespace, as when a phone loses its network) is given up about 5 s after
/// it was last heard from: its 4 connections are released, the server's
/// sockets read `ETIMEDOUT`, and the same source, back, gets all 4 again.
#[test]
fn a_vanished_client_is_released_within_about_the_timeout() {
    require!(privileged(), nft::available());
    let pair = Pair::new();
    let server = Holder::new(pair.bind_dual_stack(PORT));
    let a = pair.add_client_v4(2);
    let scratch = Scratch::new();
    let path = scratch.write("limiter.toml", &config(&pair, "dead_peer_timeout = \"5s\"\n", ""));
    let d = Daemon::start(&pair.server, &["--config", path_str(&path)]);
    assert_eq!(service(&d, "smtp")["dead_peer_timeout"], "5s", "status shows the setting");

    let held_a = attempt(&pair, a, 5, 4, "a, limit 4");
    let last_heard = Instant::now();
    assert_eq!(server.options(4), vec![FIVE_S; 4], "the accepted sockets' keepalive");
    d.wait_connections(4, patience(WAIT));
    assert_eq!(held(&d, "smtp", &a.to_string()), 4);

    nft::install(
        &pair.client,
        &format!(
            "table inet {VANISH} {{
    chain input {{ type filter hook input priority -300; policy drop; }}
    chain output {{ type filter hook output priority -300; policy drop; }}
}}
"
        ),
    );
    let vanished = Instant::now();
    // Counted until the kernel gives up, then released at once.
    let mut seen = 4;
    while seen > 0 {
        seen = held(&d, "smtp", &a.to_string());
        assert!(
            vanished.elapsed() < patience(Duration::from_secs(10)),
            "a's connections still counted {:?} after it vanished: {seen}",
            vanished.elapsed()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let (after_heard, after_vanished) = (last_heard.elapsed(), vanished.elapsed());
    eprintln!("released {after_heard:?} after a was last heard from, {after_vanished:?} after it vanished");
    assert!(after_heard >= Duration::from_millis(4_500), "released before the timeout: {after_heard:?}");
    assert_eq!(d.connections(), 0, "the service's count too");
    assert_eq!(
        server.errors(),
        vec![Some(libc::ETIMEDOUT); 4],
        "the kernel gave up on each (the server reads ETIMEDOUT)"
    );

    // a comes back: a fresh client from the same source gets its full 4.
    nft::delete_table(&pair.client, VANISH);
    drop(held_a);
    let _again = attempt(&pair, a, 5, 4, "a back after its connections were given up");
    d.wait_connections(4, patience(WAIT));
    // The server reads the error and closes the given-up sockets (the first
    // four it accepted): that releases nothing a second time.
    drop(server.accepted.lock().expect("accepted").drain(..4).collect::<Vec<_>>());
    thread::sleep(Duration::from_millis(500));
    assert_eq!(held(&d, "smtp", &a.to_string()), 4, "the server's close of a given-up socket releases nothing");
    let _ = attempt(&pair, a, 2, 0, "a holds its 4 again");
}

/// A server that writes to its idle clients (Dovecot's "still here" line in
/// IDLE) and closes a connection when a write fails: once a client vanished,
/// the write goes unacknowledged, and the user timeout gives up on it after
/// about 5 s (without it Linux retransmits for about 15 minutes). The count
/// is released, and the server's close after the error releases nothing twice.
#[test]
fn a_server_writing_into_a_vanished_client_gives_up_after_the_user_timeout() {
    require!(privileged(), nft::available());
    let pair = Pair::new();
    let listener = pair.bind_dual_stack(PORT);
    let incoming = listener.try_clone().expect("clone listener");
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    thread::spawn(move || {
        while let Ok((mut s, _)) = incoming.accept() {
            let seen = Arc::clone(&seen);
            thread::spawn(move || {
                loop {
                    if let Err(e) = std::io::Write::write_all(&mut s, b"* OK Still here\r\n") {
                        seen.lock().expect("errors").push(e.raw_os_error());
                        break;
                    }
                    thread::sleep(Duration::from_secs(1));
                }
                // Dropped here: the server closes after the error.
            });
        }
    });
    let _server = Holder { listener, accepted: Arc::new(Mutex::new(Vec::new())) };
    let a = pair.add_client_v4(2);
    let scratch = Scratch::new();
    // Keepalive does not probe while data is unacknowledged: the user
    // timeout alone gives up here.
    let path = scratch.write("limiter.toml", &config(&pair, "dead_peer_timeout = \"5s\"\n", ""));
    let d = Daemon::start(&pair.server, &["--config", path_str(&path)]);
    let held_a = attempt(&pair, a, 5, 4, "a, limit 4");
    d.wait_connections(4, patience(WAIT));
    // The client reads the lines until it vanishes (a live client keeps up).
    thread::sleep(Duration::from_secs(2));
    assert_eq!(held(&d, "smtp", &a.to_string()), 4);

    nft::install(
        &pair.client,
        &format!(
            "table inet {VANISH} {{
    chain input {{ type filter hook input priority -300; policy drop; }}
    chain output {{ type filter hook output priority -300; policy drop; }}
}}
"
        ),
    );
    let vanished = Instant::now();
    while held(&d, "smtp", &a.to_string()) > 0 {
        assert!(
            vanished.elapsed() < patience(Duration::from_secs(10)),
            "a's connections still counted {:?} after it vanished",
            vanished.elapsed()
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("released {:?} after a vanished", vanished.elapsed());
    let start = Instant::now();
    while errors.lock().expect("errors").len() < 4 {
        assert!(start.elapsed() < patience(Duration::from_secs(5)), "the server saw {:?}", errors.lock());
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(*errors.lock().expect("errors"), vec![Some(libc::ETIMEDOUT); 4], "each write failed: timed out");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(d.connections(), 0, "the server's closes after the error released nothing twice");

    nft::delete_table(&pair.client, VANISH);
    drop(held_a);
    let _again = attempt(&pair, a, 5, 4, "a back after its connections were given up");
}

/// A client that is still there answers the probes and keeps its 4 idle
/// connections for 30 s, 15 idle times of a 5 s timeout: it is probed, and
/// not given up.
#[test]
fn an_idle_client_that_is_still_there_keeps_its_connections() {
    require!(privileged());
    let pair = Pair::new();
    let server = Holder::new(pair.bind_dual_stack(PORT));
    let a = pair.add_client_v4(2);
    let scratch = Scratch::new();
    let path = scratch.write("limiter.toml", &config(&pair, "dead_peer_timeout = \"5s\"\n", ""));
    let d = Daemon::start(&pair.server, &["--config", path_str(&path)]);
    let probes = |pair: &Pair| pair.server.nstat().get("TcpExtTCPKeepAlive").copied().unwrap_or(0);
    let probes_before = probes(&pair);

    let held_a = attempt(&pair, a, 5, 4, "a, limit 4");
    assert_eq!(server.options(4), vec![FIVE_S; 4]);
    d.wait_connections(4, patience(WAIT));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        assert_eq!(held(&d, "smtp", &a.to_string()), 4, "a's idle connections after {:?}", start.elapsed());
        thread::sleep(Duration::from_millis(500));
    }
    let sent = probes(&pair) - probes_before;
    eprintln!("{sent} keepalive probes in 30 s to 4 connections");
    // A probe 2 s after the last answer: about 15 per connection.
    assert!(sent >= 4 * 8, "the connections were probed (else this checks nothing): {sent} probes");
    assert_eq!(server.errors(), vec![None; 4], "no connection given up");
    for s in &held_a {
        assert!(s.take_error().expect("SO_ERROR").is_none(), "the client's side is fine too");
    }
    let _ = attempt(&pair, a, 2, 0, "a still holds its 4");
}

/// A server that turned keepalive on itself keeps its own settings; one
/// that only set a user timeout gets keepalive but keeps its user timeout.
#[test]
fn a_server_that_set_its_own_keepalive_keeps_it() {
    require!(privileged());
    let pair = Pair::new();
    let own = pair.bind_dual_stack(PORT);
    set(&own, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(&own, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77);
    set(&own, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 11);
    set(&own, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 5);
    let own = Holder::new(own);
    let timeout_only = pair.bind_dual_stack(OTHER_PORT);
    set(&timeout_only, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 9_000);
    let timeout_only = Holder::new(timeout_only);
    let a = pair.add_client_v4(2);
    let scratch = Scratch::new();
    let path = scratch.write(
        "limiter.toml",
        &smtp_config(&pair.server_if, "dead_peer_timeout = \"5s\"\n", "")
            .replace(&format!("ports = [{PORT}]"), &format!("ports = [{PORT}, {OTHER_PORT}]")),
    );
    let d = Daemon::start(&pair.server, &["--config", path_str(&path)]);

    let _held = attempt(&pair, a, 2, 2, "a to the server with its own keepalive");
    let servers = Options { keepalive: 1, idle_s: 77, interval_s: 11, probes: 5, user_timeout_ms: 0 };
    assert_eq!(own.options(2), vec![servers; 2], "the server's own settings, not the service's");
    let _held_other = pair.hold(a, OTHER_PORT, 2, WAIT);
    assert_eq!(
        timeout_only.options(2),
        vec![Options { user_timeout_ms: 9_000, ..FIVE_S }; 2],
        "keepalive from the service, the server's own user timeout"
    );
    // Counted all the same.
    d.wait_connections(4, patience(WAIT));
}

/// A service without a timeout leaves its sockets as Linux made them, while
/// another service of the same daemon gets keepalive.
#[test]
fn a_service_without_a_timeout_is_untouched() {
    require!(privileged());
    let pair = Pair::new();
    let plain = Holder::new(pair.bind_dual_stack(PORT));
    let imap = Holder::new(pair.bind_dual_stack(OTHER_PORT));
    let a = pair.add_client_v4(2);
    let scratch = Scratch::new();
    let path = scratch.write(
        "limiter.toml",
        &config(
            &pair,
            "",
            &format!(
                "[[service]]\nname = \"imap\"\nports = [{OTHER_PORT}]\nmax_conn_per_source = 4\n\
                 dead_peer_timeout = \"5s\"\n"
            ),
        ),
    );
    let d = Daemon::start(&pair.server, &["--config", path_str(&path)]);
    assert!(service(&d, "smtp").get("dead_peer_timeout").is_none(), "off: not shown");
    assert_eq!(service(&d, "imap")["dead_peer_timeout"], "5s");

    let _held = attempt(&pair, a, 5, 4, "a to smtp, limit 4");
    let _held_imap = pair.hold(a, OTHER_PORT, 2, WAIT);
    assert_eq!(plain.options(4), vec![UNTOUCHED; 4], "smtp has no timeout: its sockets are untouched");
    assert_eq!(imap.options(2), vec![FIVE_S; 2], "imap's are not (else this checks nothing)");
    assert_eq!((held(&d, "smtp", &a.to_string()), held(&d, "imap", &a.to_string())), (4, 2));
}

/// A timeout below 1 s, above a day or not a duration: `check-config`
/// names it at its line, `run` refuses to start and `reload` changes
/// nothing, each with exit 2 and one line; a good reload applies to the
/// next connections.
#[test]
fn bad_timeouts_are_refused_and_a_reload_applies_to_new_connections() {
    require!(privileged());
    let pair = Pair::new();
    let server = Holder::new(pair.bind_dual_stack(PORT));
    let a = pair.add_client_v4(2);
    let scratch = Scratch::new();
    // The holder never closes, so a connection the client closes stays
    // counted: room for every connection of the test.
    let config = |timeout: &str| smtp_config(&pair.server_if, &format!("max_conn_per_source = 10\n{timeout}"), "");
    let path = scratch.write("limiter.toml", &config("dead_peer_timeout = \"5s\"\n"));
    let d = Daemon::start(&pair.server, &["--config", path_str(&path)]);
    let mut held = attempt(&pair, a, 1, 1, "a under 5s");
    // The options of the latest accepted connection.
    let latest = |held: &[TcpStream]| server.options(held.len())[held.len() - 1];
    assert_eq!(latest(&held), FIVE_S);

    for (bad, why) in [("\"500ms\"", "below 1s"), ("\"2d\"", "above 1d"), ("\"abc\"", "expected a whole number")] {
        let text = config(&format!("dead_peer_timeout = {bad}\n"));
        let line = text.lines().position(|l| l.starts_with("dead_peer_timeout")).expect("the line") + 1;
        let file = scratch.write("bad.toml", &text);
        let file_s = path_str(&file);

        let out = limiter(&d, &["check-config", file_s]);
        assert_eq!(out.code, Some(2), "check-config of {bad}: {out:?}");
        let problems: Vec<&str> = out.stderr.lines().filter(|l| !l.starts_with("limiter: ")).collect();
        assert_eq!(problems.len(), 1, "check-config of {bad}: one problem line: {out:?}");
        assert!(
            problems[0].starts_with(&format!("{file_s}:{line}: service 'smtp': dead_peer_timeout = {bad}"))
                && problems[0].contains(why),
            "check-config of {bad} names file, line and value: {out:?}"
        );
        assert_eq!(out.stderr.lines().count(), 2, "the problem and the summary: {out:?}");

        let pins = std::path::PathBuf::from("/sys/fs/bpf").join(limiter_tests::netns::unique("limiter-test-bad-"));
        let run = Command::new("nsenter")
            .arg(format!("--net={}", pair.server.path().display()))
            .arg(limiter_bin())
            .args(["run", "--config", file_s, "--socket"])
            .arg(scratch.0.join("bad.sock"))
            .arg("--pin-dir")
            .arg(&pins)
            .arg("--state-dir")
            .arg(scratch.0.join("bad-state"))
            .env("RUST_LOG", "off")
            .output()
            .expect("limiter run");
        let run = Output::from(&run);
        assert_bad_input(&run, &format!("run with {bad}"), &format!("{file_s}:{line}:"));
        assert!(run.stderr.contains("dead_peer_timeout") && run.stderr.contains(why), "{run:?}");
        assert!(!pins.exists(), "run loaded nothing");

        scratch.write("limiter.toml", &text);
        let out = limiter(&d, &["reload"]);
        assert_bad_input(&out, &format!("reload with {bad}"), &format!("limiter.toml:{line}:"));
        assert!(out.stderr.contains("dead_peer_timeout") && out.stderr.contains(why), "{out:?}");
        assert_eq!(service(&d, "smtp")["dead_peer_timeout"], "5s", "nothing applied");
        held.extend(attempt(&pair, a, 1, 1, &format!("a after the refused reload with {bad}")));
        assert_eq!(latest(&held), FIVE_S, "the next connection still gets 5s");
    }

    // A good reload: the next connection gets the new timeout, the open ones keep theirs.
    scratch.write("limiter.toml", &config("dead_peer_timeout = \"1m\"\n"));
    ok(&d, &["reload"]);
    assert_eq!(service(&d, "smtp")["dead_peer_timeout"], "1m");
    held.extend(attempt(&pair, a, 1, 1, "a after the reload to 1m"));
    let one_minute = Options { keepalive: 1, idle_s: 30, interval_s: 10, probes: 3, user_timeout_ms: 60_000 };
    let opts = server.options(held.len());
    assert_eq!(opts[..held.len() - 1], vec![FIVE_S; held.len() - 1], "open connections keep theirs");
    assert_eq!(opts[held.len() - 1], one_minute, "the next one gets the reloaded timeout");
    // And off again.
    scratch.write("limiter.toml", &config(""));
    ok(&d, &["reload"]);
    assert!(service(&d, "smtp").get("dead_peer_timeout").is_none(), "off: not shown");
    held.extend(attempt(&pair, a, 1, 1, "a after the reload to off"));
    assert_eq!(latest(&held), UNTOUCHED, "off: untouched");
    d.wait_connections(u64::try_from(held.len()).expect("count"), patience(WAIT));
}
