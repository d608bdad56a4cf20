//! `limiter` as a mail-host service, end to end in namespaces: the refusal
//! log lines (and the shipped fail2ban filter run on them), `/metrics`,
//! systemd's notify protocol and the journal with fields.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{IpAddr, TcpStream},
    os::unix::{fs::MetadataExt as _, net::UnixDatagram},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::{Scratch, ok},
    netns::{Daemon, Pair, Spawn, tally},
    privileged, require,
};

const PORT: u16 = 2525;
const WAIT: Duration = Duration::from_secs(2);

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// `n` more attempts from `src`, one after the other; returns how many were refused.
fn refused(pair: &Pair, src: IpAddr, n: usize) -> usize {
    tally(&pair.connect_many(src, PORT, n, WAIT)).refused
}

/// `GET path` on `addr` from inside the server namespace: (status line, body).
fn http_get(pair: &Pair, addr: &'static str, path: &'static str) -> (String, String) {
    let (head, body) = http_get_with(pair, addr, path, "");
    (head.lines().next().unwrap_or("").to_owned(), body)
}

/// `GET path` with `headers` (CRLF-terminated lines): the whole response
/// head and the body.
fn http_get_with(pair: &Pair, addr: &'static str, path: &'static str, headers: &str) -> (String, String) {
    let headers = headers.to_owned();
    pair.server.run(move || {
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n").expect("request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("response");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        (head.to_owned(), body.to_owned())
    })
}

/// The classic text format to whoever does not ask for `OpenMetrics` (`body`,
/// as fetched), as Prometheus's own checker reads it; `OpenMetrics` to whoever does.
fn both_metrics_formats(pair: &Pair, body: &str) {
    // The classic text format to whoever does not ask for OpenMetrics, as
    // Prometheus's own checker reads it; OpenMetrics to whoever does.
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(body.as_bytes())?;
            c.wait_with_output()
        })
        .expect("promtool (cargo xtask setup installs it)");
    assert!(
        check.status.success() && check.stdout.is_empty() && check.stderr.is_empty(),
        "promtool check metrics: {check:?}\n{body}"
    );
    let (head, om) = http_get_with(
        pair,
        "127.0.0.1:19464",
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    );
    assert!(head.contains("Content-Type: application/openmetrics-text; version=1.0.0"), "{head}");
    assert!(om.contains("# TYPE limiter_packets counter\n") && om.ends_with("# EOF\n"), "{om}");
}

/// The acceptance scenario: a source holding 3 with a limit of 3
/// tries 3 more. `top` shows it with 3, `/metrics` counts the 3 refusals,
/// the log names it once for the burst and then counts the rest, and the
/// shipped fail2ban filter matches that line (and an IPv6 one) and not the
/// summaries.
#[test]
fn refusals_are_logged_counted_in_metrics_and_matched_by_fail2ban() {
    // Long on purpose: one scenario from the first refusal to the ban, read top to bottom.
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let src = pair.add_client_v4(2);
    let src6 = pair.add_client_v6(1, 7);
    let d = Daemon::start_with(
        &pair.server,
        &[
            "--iface",
            &pair.server_if,
            "--port",
            "2525",
            "--max-conn-per-source",
            "3",
            "--action",
            "reset",
            "--metrics-listen",
            "127.0.0.1:19464",
        ],
        Spawn { env: env(&[("LIMITER_EVENT_WINDOW_MS", "1000")]), ..Spawn::default() },
    );

    let _held = pair.hold(src, PORT, 3, WAIT);
    d.wait_connections(3, WAIT);
    assert_eq!(refused(&pair, src, 3), 3, "3 more from a source holding 3");

    let top = d.client_json(&["top", "--json"]);
    let rows = top["sources"].as_array().expect("sources");
    assert_eq!(rows.len(), 1, "{top}");
    assert_eq!(rows[0]["source"], src.to_string());
    assert_eq!((rows[0]["connections"].as_u64(), rows[0]["limit"].as_u64()), (Some(3), Some(3)), "{top}");

    let (status, body) = http_get(&pair, "127.0.0.1:19464", "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    for want in [
        "# TYPE limiter_packets_total counter",
        "limiter_packets_total{service=\"default\",verdict=\"refused_concurrency\"} 3",
        "limiter_packets_total{service=\"default\",verdict=\"accepted\"} 3",
        "limiter_connections{service=\"default\"} 3",
        "limiter_sources_connected 1",
        "limiter_sources_tracked 1",
        // Its service's entry and its count over all services.
        "limiter_map_entries{map=\"CONNS\"} 2",
        "limiter_refusal_events_unreported_total 0",
    ] {
        assert!(body.contains(want), "missing {want:?} in /metrics:\n{body}");
    }
    assert!(
        body.contains(&format!("limiter_xdp_attached{{interface=\"{}\",mode=\"native\"}} 1", pair.server_if)),
        "{body}"
    );
    both_metrics_formats(&pair, &body);
    let s = d.status_json().expect("status");
    assert_eq!(s["metrics_listen"], "127.0.0.1:19464", "{s}");
    assert_eq!(s["refusal_lines"]["unreported"], 0, "{s}");
    let (status, _) = http_get(&pair, "127.0.0.1:19464", "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // `limiter doctor` on the same host reports it healthy, the daemon and
    // the interface's mode included.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", pair.server.path().display()))
        .arg(limiter_tests::netns::limiter_bin())
        .args(["doctor", "--json", "--iface", &pair.server_if, "--socket"])
        .arg(&d.socket)
        .arg("--pin-dir")
        .arg(&d.pin_dir)
        .output()
        .expect("doctor");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    assert_eq!((out.status.code(), &report["healthy"]), (Some(0), &serde_json::Value::Bool(true)), "{report}");
    let check = |name: &str| {
        report["checks"].as_array().and_then(|c| c.iter().find(|c| c["name"] == name)).cloned().unwrap_or_default()
    };
    assert_eq!(check("daemon")["status"], "ok", "{report}");
    assert_eq!(check(&format!("xdp {}", pair.server_if))["status"], "ok", "{report}");

    // One line for the burst, then after the 1 s window the 2 not logged.
    let line = format!("refused {src} default:2525 too many connections (3 established, limit 3), reset");
    let log = d.wait_log("burst summary", |l| l.contains(&format!("{line}: 2 more in 1s")));
    assert_eq!(log.matches(&line).count(), 2, "one line and one summary:\n{log}");
    let s = d.status_json().expect("status");
    assert_eq!((s["refusal_lines"]["logged"].as_u64(), s["refusal_lines"]["suppressed"].as_u64()), (Some(1), Some(2)));

    // An IPv6 source over its limit too, for the filter's <HOST>.
    let _held6 = pair.hold(src6, PORT, 3, WAIT);
    d.wait_connections(6, WAIT);
    assert_eq!(refused(&pair, src6, 1), 1);
    let line6 = format!("refused {src6} default:2525 too many connections (3 established, limit 3), reset");
    d.wait_log("IPv6 refusal", |l| l.contains(&line6));

    // The shipped filter, run by fail2ban itself on the daemon's output:
    // the two burst lines match (with their hosts), the summary does not.
    let filter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/fail2ban/filter.d/limiter.conf");
    let out = Command::new("fail2ban-regex")
        .args(["--print-all-matched", "--print-all-missed"])
        .arg(&d.log)
        .arg(&filter)
        .output()
        .expect("fail2ban-regex (Debian package fail2ban; cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fail2ban-regex failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Failregex: 2 total"), "{text}");
    let matched = text.split("Lines:").nth(1).unwrap_or("");
    assert!(matched.contains("2 matched"), "{text}");
    let hits = text.split("|- Matched line(s):").nth(1).unwrap_or("").split("|- Missed line(s):").next().unwrap_or("");
    assert!(hits.contains(&line) && hits.contains(&line6), "matched lines:\n{hits}");
    assert!(!hits.contains("more in"), "a summary matched:\n{hits}");
}

/// Reads datagrams from `sock` until `want` has been seen or `limit` passes.
fn notifications(sock: &UnixDatagram, until: impl Fn(&[String]) -> bool, limit: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    sock.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    while start.elapsed() < limit && !until(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

/// `Type=notify`: READY=1 comes only when the programs are attached and the
/// control socket answers; WATCHDOG=1 at half of `WATCHDOG_USEC`; a reload
/// is RELOADING=1 then READY=1; SIGTERM sends STOPPING=1.
#[test]
fn systemd_is_told_ready_watchdog_reload_and_stop() {
    require!(privileged());
    let pair = Pair::new();
    let scratch = Scratch::new();
    let path = scratch.0.join("notify");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    let path_s = path.display().to_string();
    let mut d = Daemon::start_with(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "3"],
        Spawn { env: env(&[("NOTIFY_SOCKET", &path_s), ("WATCHDOG_USEC", "400000")]), ..Spawn::default() },
    );
    // `start_with` returned once the control socket answered; READY=1 was
    // sent before that, and only after the XDP link was pinned.
    let got = notifications(&sock, |g| g.iter().any(|m| m.contains("READY=1")), Duration::from_secs(5));
    let ready = got.iter().find(|m| m.contains("READY=1")).unwrap_or_else(|| panic!("no READY=1: {got:?}"));
    assert!(ready.contains(&format!("STATUS=enforcing 1 services on {} (", pair.server_if)), "{ready}");
    assert!(d.pin_dir.join(format!("link_xdp_{}", pair.server_if)).exists(), "READY before the XDP link");

    // Watchdog: 400 ms → a ping every 200 ms.
    let start = Instant::now();
    let got =
        notifications(&sock, |g| g.iter().filter(|m| m.trim() == "WATCHDOG=1").count() >= 3, Duration::from_secs(3));
    assert!(got.iter().filter(|m| m.trim() == "WATCHDOG=1").count() >= 3, "{got:?}");
    assert!(start.elapsed() < Duration::from_secs(2), "3 pings took {:?}", start.elapsed());

    // A reload is announced and closed.
    let _ = d.client_json(&["status", "--json"]);
    ok(&d, &["reload"]);
    let got = notifications(&sock, |g| g.iter().any(|m| m.contains("RELOADING=1")), Duration::from_secs(3));
    let at = got.iter().position(|m| m.contains("RELOADING=1")).unwrap_or_else(|| panic!("no RELOADING=1: {got:?}"));
    assert!(got[at].contains("MONOTONIC_USEC="), "{got:?}");
    let rest = notifications(&sock, |g| g.iter().any(|m| m.contains("READY=1")), Duration::from_secs(3));
    assert!(
        got[at..].iter().chain(&rest).any(|m| m.contains("READY=1")),
        "no READY=1 after the reload: {got:?} {rest:?}"
    );

    let status = d.stop().expect("stopped");
    assert!(status.success(), "{status}");
    let got = notifications(&sock, |g| g.iter().any(|m| m.contains("STOPPING=1")), Duration::from_secs(2));
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
}

/// `systemctl stop` as soon as `systemctl start` returned: a SIGTERM sent
/// the moment READY=1 arrives is a clean stop (exit 0, STOPPING=1), and so is
/// a SIGHUP then a reload, not death by the signal. Before, the handlers were
/// installed after READY=1, and `limiter-control` (`cargo xtask bench
/// --control`) saw every such stop end by the signal.
#[test]
fn a_signal_right_after_ready_is_handled() {
    require!(privileged());
    let pair = Pair::new();
    let scratch = Scratch::new();
    for (signal, name) in [(libc::SIGHUP, "SIGHUP"), (libc::SIGTERM, "SIGTERM")] {
        let path = scratch.0.join(format!("notify-{name}"));
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let d = Daemon::unstarted(Spawn::default());
        let log = std::fs::File::create(&d.log).expect("log");
        let mut child = d
            .command(&pair.server, &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "3"])
            .env("NOTIFY_SOCKET", &path)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn limiter");
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            assert!(start.elapsed() < limiter_tests::patience(Duration::from_secs(20)), "no READY=1: {}", d.log_text());
            if let Ok(n) = sock.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
            {
                break;
            }
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, signal) };
        if signal == libc::SIGHUP {
            // Still serving after the reload it asked for.
            let got = notifications(&sock, |g| g.iter().any(|m| m.contains("READY=1")), Duration::from_secs(10));
            assert!(got.iter().any(|m| m.contains("READY=1")), "{name}: no READY=1 after the reload: {got:?}");
            assert!(child.try_wait().expect("wait").is_none(), "{name} ended the daemon: {}", d.log_text());
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let status = child.wait().expect("wait");
        assert!(status.success(), "{name} right after READY=1: {status}: {}", d.log_text());
        let got = notifications(&sock, |g| g.iter().any(|m| m.contains("STOPPING=1")), Duration::from_secs(2));
        assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{name}: no STOPPING=1: {got:?}");
        assert!(!d.socket.exists(), "{name}: the control socket was left behind");
    }
}

/// Parses a journal native-protocol datagram: `KEY=value\n`, or
/// `KEY\n` + 64-bit little-endian length + value + `\n` (the form
/// systemd-journal-logger uses for the message and for every custom field).
fn journal_fields(mut d: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while !d.is_empty() {
        let Some(end) = d.iter().position(|&b| b == b'=' || b == b'\n') else { break };
        let key = String::from_utf8_lossy(&d[..end]).into_owned();
        let value;
        if d[end] == b'=' {
            let rest = &d[end + 1..];
            let stop = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            value = &rest[..stop];
            d = rest.get(stop + 1..).unwrap_or_default();
        } else {
            let rest = &d[end + 1..];
            let len = usize::try_from(u64::from_le_bytes(rest[..8].try_into().expect("length"))).expect("len");
            value = &rest[8..8 + len];
            d = rest.get(8 + len + 1..).unwrap_or_default();
        }
        fields.insert(key, String::from_utf8_lossy(value).into_owned());
    }
    fields
}

/// Under systemd (stderr is the journal stream), refusal lines go to the
/// journal with fields: SOURCE, SERVICE, PORT, REASON, LIMIT, COUNT. The
/// daemon runs in a private mount namespace where the journal socket is a
/// socket this test reads.
#[test]
fn under_systemd_refusals_go_to_the_journal_with_fields() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let src = pair.add_client_v4(3);
    let scratch = Scratch::new();
    let dir = &scratch.0;
    let journal = UnixDatagram::bind(dir.join("socket")).expect("bind journal socket");
    journal.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    // The daemon's stderr is its log file: JOURNAL_STREAM names that file,
    // as systemd names the stream it connects.
    let wrap: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal && mount --bind \"$0\" /run/systemd/journal \
         && exec \"$@\"",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(std::iter::once(dir.display().to_string()))
    .collect();
    let mut d = Daemon::start_with(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "1", "--action", "reset"],
        Spawn { env: Vec::new(), wrap: wrap.clone() },
    );
    // Restart with JOURNAL_STREAM set to the log file the daemon writes to
    // (it exists now).
    d.stop();
    let meta = std::fs::metadata(&d.log).expect("log file");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    d.spawn = Spawn { env: env(&[("JOURNAL_STREAM", &stream)]), wrap };
    d.restart(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "1", "--action", "reset"],
    );

    let _held = pair.hold(src, PORT, 1, WAIT);
    d.wait_connections(1, WAIT);
    assert_eq!(refused(&pair, src, 1), 1);

    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    let mut seen = Vec::new();
    let fields = loop {
        assert!(start.elapsed() < Duration::from_secs(10), "no refusal in the journal; got {seen:?}");
        let Ok(n) = journal.recv(&mut buf) else { continue };
        let f = journal_fields(&buf[..n]);
        if f.get("MESSAGE").is_some_and(|m| m.starts_with("refused ")) {
            break f;
        }
        seen.push(f.get("MESSAGE").cloned().unwrap_or_default());
    };
    let want = [
        ("MESSAGE", format!("refused {src} default:2525 too many connections (1 established, limit 1), reset")),
        ("SOURCE", src.to_string()),
        ("SERVICE", "default".to_owned()),
        ("PORT", "2525".to_owned()),
        ("REASON", "refused_concurrency".to_owned()),
        ("LIMIT", "1".to_owned()),
        ("COUNT", "1".to_owned()),
        ("VERIFIED", "true".to_owned()),
        ("ANSWER", "reset".to_owned()),
        // log's Info is the journal's "notice" in systemd-journal-logger.
        ("PRIORITY", "5".to_owned()),
        ("SYSLOG_IDENTIFIER", "limiter".to_owned()),
    ];
    for (k, v) in want {
        assert_eq!(fields.get(k), Some(&v), "{k} in {fields:?}");
    }
    // Start-up lines went to the journal too, not to stderr.
    assert!(seen.iter().any(|m| m.starts_with("attached to")), "{seen:?}");
    assert!(!d.log_text().contains("refused "), "the refusal went to stderr too:\n{}", d.log_text());
}
