//! The whole system in network namespaces: `limiter run` started as an admin
//! would, a real listener in the server namespace, real TCP clients in the
//! client namespace. Each test asserts what a client sees and what
//! `limiter status --json` counts.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::{Scratch, limiter_at, unload},
    netns::{Attempt, Daemon, Netns, Pair, Spawn, attach_pass, connect, enter, limiter_bin, tally},
    nft, patience, privileged, require,
};

const PORT: u16 = 2525;
const OTHER_PORT: u16 = 2626;
const QUICK: Duration = Duration::from_millis(800);

fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["services"][0]["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {status}"))
}

/// `limiter run` in the pair's server namespace, rate-limiting [`PORT`]:
/// `--rate RATE --burst BURST --action ACTION`.
fn rate_limited(pair: &Pair, rate: &str, burst: &str, action: &str) -> Daemon {
    Daemon::start(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--rate", rate, "--burst", burst, "--action", action],
    )
}

/// Every refused attempt was answered by an RST well before the client's
/// SYN retransmission (1 s): the client saw "connection refused" at once.
fn assert_refused_at_once(attempts: &[Attempt]) {
    for a in attempts {
        if let Attempt::Refused(took) = a {
            assert!(*took < Duration::from_millis(500), "refusal took {took:?}");
        }
    }
}

#[test]
#[expect(clippy::many_single_char_names, reason = "a, b: the two sources; d, s, t: daemon, status, tally")]
fn rate_limit_per_source_with_reset_v4() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let _o = pair.listen(OTHER_PORT);
    let a = pair.add_client_v4(2);
    let b = pair.add_client_v4(3);
    // 5 per minute: no token refills during the test, so counts are exact.
    let d = rate_limited(&pair, "5/m", "5", "reset");

    let first = pair.connect_many(a, PORT, 9, QUICK);
    let t = tally(&first);
    assert_eq!((t.connected, t.refused, t.timed_out, t.other), (5, 4, 0, 0), "source a: {first:?}");
    assert!(first[..5].iter().all(Attempt::is_connected), "the first five must be the ones let in: {first:?}");
    assert_refused_at_once(&first);

    // Another source has its own bucket.
    let t = tally(&pair.connect_many(b, PORT, 7, QUICK));
    assert_eq!((t.connected, t.refused), (5, 2), "source b");

    // Other ports are untouched.
    let t = tally(&pair.connect_many(a, OTHER_PORT, 10, QUICK));
    assert_eq!((t.connected, t.refused, t.timed_out), (10, 0, 0), "unprotected port");

    let s = d.status_json().expect("status");
    assert_eq!(counter(&s, "accepted"), 10);
    assert_eq!(counter(&s, "refused_rate"), 6);
    assert!(counter(&s, "passed_non_syn") > 0, "handshake ACKs pass and are counted: {s}");
    assert!(s["totals"]["passed_other"].as_u64().unwrap_or(0) >= 10, "other-port SYNs counted as passed: {s}");
    assert_eq!(s["interfaces"][0]["name"], pair.server_if.as_str());
    assert_eq!(s["services"][0]["ports"][0], 2525);
    assert_eq!(s["services"][0]["action"], "reset");
}

#[test]
fn rate_limit_v6_aggregates_a_64() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let h1 = pair.add_client_v6(1, 0x10);
    let h2 = pair.add_client_v6(1, 0x20); // same /64 as h1
    let other = pair.add_client_v6(2, 0x10); // another /64
    let d = rate_limited(&pair, "4/m", "4", "reset");

    let t = tally(&pair.connect_many(h1, PORT, 3, QUICK));
    assert_eq!((t.connected, t.refused), (3, 0));
    let r = pair.connect_many(h2, PORT, 3, QUICK);
    let t = tally(&r);
    assert_eq!((t.connected, t.refused), (1, 2), "h2 shares h1's /64 bucket: {r:?}");
    assert_refused_at_once(&r);
    let t = tally(&pair.connect_many(other, PORT, 5, QUICK));
    assert_eq!((t.connected, t.refused), (4, 1), "another /64 has its own bucket");

    let s = d.status_json().expect("status");
    assert_eq!((counter(&s, "accepted"), counter(&s, "refused_rate")), (8, 3));
}

#[test]
fn acceptance_5_per_second_refills() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let a = pair.add_client_v4(2);
    let a6 = pair.add_client_v6(3, 1);
    let d = rate_limited(&pair, "5/s", "5", "reset");

    for src in [a, a6] {
        let start = Instant::now();
        let r = pair.connect_many(src, PORT, 12, QUICK);
        let elapsed = start.elapsed();
        let t = tally(&r);
        // 5 at once, plus one per 200 ms that passed while attempting.
        let refill = usize::try_from(elapsed.as_millis() / 200).unwrap_or(usize::MAX);
        assert!(t.connected >= 5 && t.connected <= 5 + refill + 1, "{src}: {t:?} in {elapsed:?}");
        assert_eq!(t.connected + t.refused, 12, "{src}: every attempt connected or was refused: {r:?}");
        assert!(t.refused >= 5, "{src}: {t:?}");
        assert_refused_at_once(&r);

        // Tokens refill: after a second the source gets a full burst again.
        thread::sleep(Duration::from_millis(1100));
        let t = tally(&pair.connect_many(src, PORT, 5, QUICK));
        assert_eq!(t.connected, 5, "{src}: after refill {t:?}");
    }
    let s = d.status_json().expect("status");
    assert!(counter(&s, "refused_rate") >= 10, "{s}");
}

#[test]
#[expect(clippy::many_single_char_names, reason = "a: the source; d, r, s, t: daemon, results, status, tally")]
fn drop_action_makes_clients_time_out() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let a = pair.add_client_v4(2);
    let d = rate_limited(&pair, "2/m", "2", "drop");
    let r = pair.connect_many(a, PORT, 4, Duration::from_millis(400));
    let t = tally(&r);
    assert_eq!((t.connected, t.refused, t.timed_out), (2, 0, 2), "{r:?}");
    let s = d.status_json().expect("status");
    assert!(counter(&s, "refused_rate") >= 2, "{s}");
}

#[test]
fn stop_keeps_enforcement_and_unload_removes_it() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let a = pair.add_client_v4(2);
    let mut d =
        Daemon::start(&pair.server, &["--iface", &pair.server_if, "--port", "2525", "--rate", "1/m", "--burst", "1"]);
    let link = pair.server.exec(&["ip", "link", "show", &pair.server_if]);
    assert!(link.contains("xdp"), "XDP attached while running: {link}");
    for pin in ["COUNTERS", "CONNS", "link_sock_ops", &format!("link_xdp_{}", pair.server_if)] {
        assert!(d.pin_dir.join(pin).exists(), "{pin} pinned");
    }
    assert_eq!(tally(&pair.connect_many(a, PORT, 3, QUICK)).connected, 1);

    let status = d.stop().expect("daemon was running");
    assert!(status.success(), "clean exit on SIGTERM: {status}: {}", d.log_text());
    assert!(d.log_text().contains("continue"), "{}", d.log_text());
    assert!(!d.socket.exists(), "socket removed");
    let link = pair.server.exec(&["ip", "link", "show", &pair.server_if]);
    assert!(link.contains("xdp"), "XDP stays attached after the daemon stops: {link}");
    assert_eq!(tally(&pair.connect_many(a, PORT, 3, QUICK)).connected, 0, "the limit still holds");

    // unload removes everything: no program, no pins, no enforcement.
    unload(&d);
    assert!(!d.pin_dir.exists(), "pins removed");
    let link = pair.server.exec(&["ip", "link", "show", &pair.server_if]);
    assert!(!link.contains("xdp"), "XDP detached by unload: {link}");
    assert_eq!(tally(&pair.connect_many(a, PORT, 3, QUICK)).connected, 3, "no enforcement after unload");
}

/// Runs `limiter ARGS` and returns (exit code, stderr).
fn limiter(args: &[&str]) -> (i32, String) {
    let out = Command::new(limiter_bin()).args(args).output().expect("run limiter");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A user who is not root asking the running daemon: "not permitted", exit
/// 4, not "is it running?".
#[test]
fn a_non_root_client_is_told_it_is_not_permitted() {
    require!(privileged());
    let pair = Pair::new();
    let d = Daemon::start(&pair.server, &["--iface", &pair.server_if, "--port", "2525"]);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(limiter_bin())
        .arg("status")
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.status.code(), err.lines().count()), (Some(4), 1), "{err}");
    assert!(err.contains("not permitted") && err.contains("run this as root"), "{err}");
}

/// `run` by a user without the capabilities: one line that says what is
/// needed, exit 4, before anything is created (not the kernel's refusal of
/// a map's creation).
#[test]
fn run_without_capabilities_says_what_it_needs() {
    require!(privileged());
    let scratch = Scratch::new();
    let pins = format!("/sys/fs/bpf/limiter-test-nocaps-{}", std::process::id());
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(limiter_bin())
        .args(["run", "--iface", "lo", "--port", "2525", "--pin-dir", &pins, "--socket"])
        .arg(scratch.0.join("l.sock"))
        .arg("--state-dir")
        .arg(scratch.0.join("state"))
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.status.code(), err.lines().count()), (Some(4), 1), "{err}");
    for part in ["needs root", "lacks CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON", "limiter doctor"] {
        assert!(err.contains(part), "{part} missing: {err}");
    }
    assert!(!std::path::Path::new(&pins).exists(), "{pins} was created");
}

/// An interface another XDP program holds: `run` names that program, does
/// not blame the driver (no "falling back to skb"), exits 1 and leaves
/// nothing pinned.
#[test]
fn run_names_the_xdp_program_already_on_the_interface() {
    require!(privileged());
    let pair = Pair::new();
    let other = attach_pass(&pair.server, &pair.server_if);
    let mut d = Daemon::unstarted(Spawn::default());
    let args = ["--iface", pair.server_if.as_str(), "--port", "2525"];
    let status = d.run_to_exit(&pair.server, &args, &[], patience(Duration::from_secs(30)));
    let log = d.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    let want = format!("another XDP program is attached to {}: program ", pair.server_if);
    assert!(log.contains(&want) && log.contains("'limiter_probe' (native mode)"), "{log}");
    assert!(log.contains("ip link set dev") && !log.contains("falling back"), "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("limiter:")).count(), 1, "one line: {log}");
    let left = std::fs::read_dir(&d.pin_dir).map_or(0, Iterator::count);
    assert_eq!(left, 0, "pins left under {}", d.pin_dir.display());
    // With that program gone the same command starts (it answers status)
    // and its own program is the one attached.
    drop(other);
    d.restart(&pair.server, &args);
    let status = d.status_json().expect("status");
    assert_eq!(status["interfaces"][0]["name"], pair.server_if.as_str(), "{status}");
    let on_if = pair.server.exec(&["ip", "-d", "link", "show", &pair.server_if]);
    assert!(on_if.contains("limiter_xdp"), "{on_if}");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    require!(privileged());
    let scratch = Scratch::new();
    let broken = scratch.write("broken.toml", "interfaces = [\"lo\"]\n[[service]]\nname = \"smtp\"\nports = [25, 0]\n");
    let sock = scratch.0.join("none.sock");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--iface", "nosuchif0", "--port", "2525"], "unknown interface 'nosuchif0'"),
        (vec!["run", "--iface", "lo", "--rate", "5/hour"], "bad rate"),
        (vec!["run", "--iface", "lo", "--port", "0"], "port 0"),
        (vec!["run", "--iface", "lo", "--burst", "0"], "burst"),
        (
            vec!["run", "--iface", "lo", "--config", "/nonexistent/limiter.toml"],
            "cannot read config /nonexistent/limiter.toml",
        ),
        (vec!["run", "--config", broken.to_str().expect("utf8")], "port 0"),
    ];
    // No daemon: its own exit code, as `systemctl status` has for a stopped unit.
    let (code, err) = limiter(&["status", "--socket", sock.to_str().expect("utf8")]);
    assert_eq!((code, err.lines().count()), (3, 1), "{err}");
    assert!(err.contains("the limiter daemon is not running") && err.contains("systemctl start limiter"), "{err}");
    for (args, want) in cases {
        let (code, err) = limiter(&args);
        assert_eq!(code, 2, "{args:?}: exit {code}, stderr {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line on stderr, got {err:?}");
        assert!(err.contains(want), "{args:?}: {err:?} does not name {want:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn status_honours_limiter_socket_and_prints_a_table() {
    require!(privileged());
    let pair = Pair::new();
    let d = Daemon::start(&pair.server, &["--iface", &pair.server_if, "--port", "2525", "--port", "2526"]);
    let out = limiter_at(&d.socket, &["status"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let text = &out.stdout;
    assert!(text.contains(&pair.server_if) && text.contains("2525,2526") && text.contains("30/m"), "{text}");
    let _: IpAddr = pair.server_v4();
}

#[test]
fn failed_start_leaves_nothing_behind() {
    require!(privileged());
    let pair = Pair::new();
    let scratch = Scratch::new();
    let dir = &scratch.0;
    std::fs::create_dir_all(dir.join("not-a-cgroup")).expect("dir");
    let sock = dir.join("limiter.sock");
    let pin_dir = std::path::PathBuf::from("/sys/fs/bpf").join(limiter_tests::netns::unique("limiter-fail-"));
    let run = |extra: &[&std::ffi::OsStr]| {
        Command::new("nsenter")
            .arg(format!("--net={}", pair.server.path().display()))
            .arg(limiter_bin())
            .args(["run", "--iface", &pair.server_if, "--port", "2525", "--socket"])
            .arg(&sock)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(extra)
            .output()
            .expect("run limiter")
    };
    // Attaching sock_ops fails after the maps were created and pinned.
    let out =
        run(&["--pin-dir".as_ref(), pin_dir.as_os_str(), "--cgroup".as_ref(), dir.join("not-a-cgroup").as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a system failure exits 1: {err}");
    assert!(err.contains("attaching sock_ops"), "{err}");
    assert!(!sock.exists(), "no stale control socket");
    assert!(!pin_dir.exists(), "the pins of a failed first start are removed");
    let link = pair.server.exec(&["ip", "link", "show", &pair.server_if]);
    assert!(!link.contains("xdp"), "nothing left attached: {link}");

    // A pin dir off bpffs is refused before anything is loaded.
    let out = run(&["--pin-dir".as_ref(), dir.join("not-bpffs").as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not on bpffs"), "{err}");
}

#[test]
fn control_socket_survives_garbage() {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        os::unix::net::UnixStream,
    };
    require!(privileged());
    let pair = Pair::new();
    let d = Daemon::start(&pair.server, &["--iface", &pair.server_if, "--port", "2525"]);
    let ask = |bytes: &[u8]| -> String {
        let mut s = UnixStream::connect(&d.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        // The daemon may answer and close before reading everything.
        let _ = s.write_all(bytes);
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        line
    };
    for (name, req) in [
        ("not JSON", b"hello\n".to_vec()),
        ("unknown command", b"{\"cmd\":\"format_disk\"}\n".to_vec()),
        ("binary", vec![0xff, 0x00, 0xfe, b'\n']),
        ("oversized", vec![b'x'; 200 * 1024]),
    ] {
        let reply = ask(&req);
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{name}: {e}: {reply:?}"));
        assert!(v["error"].is_string(), "{name}: expected an error reply, got {v}");
    }
    // A client that connects and says nothing does not block others.
    let _silent = UnixStream::connect(&d.socket).expect("connect");
    let start = Instant::now();
    let v = d.status_json().expect("daemon still answers");
    assert!(start.elapsed() < Duration::from_secs(2), "status blocked by a silent client");
    assert_eq!(v["services"][0]["name"], "default");
}

/// Drops every SYN-ACK arriving in `ns`, counting them, until dropped.
struct SynAckLoss<'a> {
    ns: &'a Netns,
}

impl<'a> SynAckLoss<'a> {
    const TABLE: &'static str = "limiter_synack_loss";

    fn new(ns: &'a Netns) -> Self {
        let rules = format!(
            "table inet {} {{\n chain input {{\n  type filter hook input priority filter; policy accept;\n  tcp \
             flags & (syn | ack) == (syn | ack) counter drop\n }}\n}}\n",
            Self::TABLE
        );
        nft::install(ns, &rules);
        Self { ns }
    }

    /// SYN-ACKs dropped so far.
    fn dropped(&self) -> u64 {
        nft::counted(self.ns, Self::TABLE)
    }
}

impl Drop for SynAckLoss<'_> {
    fn drop(&mut self) {
        nft::delete_table(self.ns, Self::TABLE);
    }
}

/// The case end to end: limit 8, the client holds 7 connections and
/// opens an 8th whose SYN-ACK is lost twice. The client's retransmitted SYN
/// is the same attempt, not a 9th: the 8th connection is established once
/// the SYN-ACKs get through, and only then is a 9th attempt refused. Every
/// completed handshake is forgotten by `sock_ops` (`HANDSHAKES` ends empty).
#[test]
fn a_lost_syn_ack_does_not_cost_the_last_slot() {
    require!(privileged(), nft::available());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let a = pair.add_client_v4(2);
    let d = Daemon::start(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "8", "--action", "reset"],
    );
    let held = pair.connect_many(a, PORT, 7, Duration::from_secs(5));
    assert_eq!(tally(&held).connected, 7, "{held:?}");
    d.wait_connections(7, Duration::from_secs(10));

    let loss = SynAckLoss::new(&pair.client);
    let (path, dst) = (pair.client.path(), SocketAddr::new(pair.server_v4(), PORT));
    let start = Instant::now();
    let eighth = thread::spawn(move || {
        enter(&path);
        connect(a, dst, Duration::from_secs(30))
    });
    while loss.dropped() < 2 {
        assert!(start.elapsed() < Duration::from_secs(20), "two SYN-ACKs were not dropped in 20 s");
        assert!(!eighth.is_finished(), "the 8th attempt ended while its SYN-ACKs were being dropped");
        thread::sleep(Duration::from_millis(20));
    }
    drop(loss);
    let eighth = eighth.join().expect("8th attempt");
    let took = start.elapsed();
    assert!(eighth.is_connected(), "8th connection after two lost SYN-ACKs: {eighth:?} after {took:?}");
    assert!(took < Duration::from_secs(12), "8th connection took {took:?}");
    d.wait_connections(8, Duration::from_secs(10));

    let ninth = pair.connect_many(a, PORT, 1, Duration::from_secs(5));
    assert!(matches!(ninth[0], Attempt::Refused(_)), "a 9th attempt is refused: {ninth:?}");

    // Every handshake let through completed, and sock_ops forgot each one.
    let map = aya::maps::MapData::from_pin(d.pin_dir.join(limiter_common::maps::names::HANDSHAKES))
        .expect("pinned HANDSHAKES");
    let entries: aya::maps::Array<_, limiter_common::handshake::Handshake> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map)).expect("array");
    let left: Vec<_> = entries.iter().filter_map(Result::ok).filter(|h| h.family != 0).collect();
    assert!(left.is_empty(), "handshakes not forgotten after completing: {left:?}");
    drop((held, eighth));
}
