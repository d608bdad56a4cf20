//! Footguns and bounds, end to end: `limiter run` in a namespace, the
//! commands as an admin types them. A deny entry that covers everything or
//! shares its prefix with an allow entry is warned about everywhere and
//! refused at run time without `--force`; a corrupt `lists.json` stops the
//! start with exit 2 and a way out; the state file is 0640; a refused huge
//! config leaves no memory behind; idle control clients cannot take every
//! descriptor, nor keep an admin's command waiting.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    net::{IpAddr, TcpStream},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::{Output, Scratch, limiter, ok, path_str},
    netns::{Daemon, Pair, Spawn, limiter_bin, streams, tally},
    policy::counter,
    privileged, require,
};
use serde_json::Value;

const PORT: u16 = 2525;
const WAIT: Duration = Duration::from_secs(2);

fn output(out: &std::process::Output) -> Output {
    Output::from(out)
}

/// Exit 2 and exactly one `limiter: ` line on stderr naming every `want`.
fn assert_bad_input(out: &Output, what: &str, want: &[&str]) {
    assert_eq!(out.code, Some(2), "{what}: exit code: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{what}: exactly one line on stderr: {out:?}");
    assert!(out.stderr.starts_with("limiter: "), "{what}: {out:?}");
    for w in want {
        assert!(out.stderr.contains(w), "{what}: stderr does not name {w:?}: {out:?}");
    }
}

fn smtp_config(iface: &str, rest: &str) -> String {
    format!(
        "interfaces = [\"{iface}\"]\n\n[[service]]\nname = \"smtp\"\nports = [{PORT}]\naction = \"reset\"\n\
         max_conn_per_source = 5\n\n{rest}"
    )
}

fn lists(d: &Daemon) -> [Value; 3] {
    ["allow", "deny", "reserve"].map(|l| d.client_json(&[l, "list", "--json"]))
}

fn state_file(d: &Daemon) -> PathBuf {
    d.state_dir().join("lists.json")
}

fn state_bytes(d: &Daemon) -> Option<Vec<u8>> {
    std::fs::read(state_file(d)).ok()
}

/// `n` attempts from `src`; returns how many connected (the rest must be
/// refused at once, none time out).
fn connected(pair: &Pair, src: IpAddr, n: usize) -> (usize, Vec<TcpStream>) {
    let attempts = pair.connect_parallel(src, PORT, n, WAIT);
    let t = tally(&attempts);
    assert_eq!(t.connected + t.refused, n, "{attempts:?}");
    (t.connected, streams(attempts))
}

fn pid(d: &Daemon) -> u32 {
    d.child.as_ref().expect("daemon running").id()
}

/// A `kB` field of /proc/PID/status, in bytes.
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = text.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("kB");
    kb * 1024
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir").count()
}

/// `n` deny entries in config syntax (10.N.N.N, one /32 each).
fn deny_entries(n: u32) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for i in 0..n {
        let _ = write!(
            s,
            "[[deny]]\nprefix = \"10.{}.{}.{}\"\ncomment = \"abuse ticket {i}\"\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        );
    }
    s
}

// ---------------------------------------------------------------------------

/// check-config, reload and `deny add` warn of a deny entry that covers
/// everything and of a prefix on both lists; at run time such a change is
/// refused without `--force` (exit 2, nothing changed) and applied with it.
#[test]
fn deny_everything_and_allow_deny_overlap_warn_and_need_force() {
    // Long on purpose: the same footgun through each of the admin's doors in turn.
    require!(privileged());
    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let a = pair.add_client_v4(2);
    let scratch = Scratch::new();

    // check-config: warnings with their lines, exit 0.
    let footguns = scratch.write(
        "footguns.toml",
        &smtp_config(
            "lo",
            "[[allow]]\nprefix = \"198.51.100.0/24\"\n\n[[deny]]\nprefix = \"*\"\n\n[[deny]]\nprefix = \"198.51.100.*\"\n",
        ),
    );
    let out = output(&Command::new(limiter_bin()).arg("check-config").arg(&footguns).output().expect("check-config"));
    assert_eq!(out.code, Some(0), "warnings only: {out:?}");
    let f = path_str(&footguns);
    assert!(
        out.stderr.contains(&format!("{f}:13: warning: deny 0.0.0.0/0 covers every IPv4 source")),
        "deny-everything warning at its line: {out:?}"
    );
    assert!(
        out.stderr.contains(&format!("{f}:16: warning: 198.51.100.0/24 is in both the allow and the deny list")),
        "overlap warning at its line: {out:?}"
    );

    // A running daemon with a config allow entry away from the pair's net.
    let config =
        scratch.write("limiter.toml", &smtp_config(&pair.server_if, "[[allow]]\nprefix = \"198.19.5.0/24\"\n"));
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    ok(&d, &["allow", "add", "198.19.7.7"]);
    ok(&d, &["deny", "add", "198.19.66.0/24"]);
    let before = lists(&d);
    let state_before = state_bytes(&d);

    let refused: &[(&[&str], &str)] = &[
        (&["deny", "add", "0.0.0.0/0"], "0.0.0.0/0 covers every IPv4 source"),
        (&["deny", "add", "*"], "0.0.0.0/0 covers every IPv4 source"),
        (&["deny", "add", "::/0", "--comment", "all v6"], "::/0 covers every IPv6 source"),
        (&["deny", "add", "198.19.5.*"], "198.19.5.0/24 is in both"),
        (&["deny", "add", "198.19.7.7/32"], "198.19.7.7/32 is in both"),
        (&["allow", "add", "198.19.66.0/24", "--max-conn-per-source", "9"], "198.19.66.0/24 is in both"),
    ];
    for (args, why) in refused {
        let out = limiter(&d, args);
        assert_bad_input(&out, &format!("limiter {args:?}"), &[why, "--force", "nothing changed"]);
        assert_eq!(lists(&d), before, "limiter {args:?} changed the lists");
        assert_eq!(state_bytes(&d), state_before, "limiter {args:?} rewrote lists.json");
    }
    let (n, _held) = connected(&pair, a, 2);
    assert_eq!(n, 2, "the running policy is unchanged: a is admitted");

    // --force applies it, with the warning on stderr and in the log.
    let out = ok(&d, &["deny", "add", "0.0.0.0/0", "--force"]);
    assert!(
        out.stderr.contains("limiter: warning: deny 0.0.0.0/0 covers every IPv4 source"),
        "forced add warns: {out:?}"
    );
    assert!(out.stdout.contains("deny 0.0.0.0/0 added"), "{out:?}");
    let refused_before = counter(&d, "refused_deny");
    let (n, _) = connected(&pair, a, 3);
    assert_eq!(n, 0, "everything is denied now");
    assert_eq!(counter(&d, "refused_deny"), refused_before + 3);
    assert!(d.log_text().contains("covers every IPv4 source"), "daemon log: {}", d.log_text());
    // An unrelated add is not refused for the footgun already in force, but still warns.
    let out = ok(&d, &["deny", "add", "198.19.67.0/24"]);
    assert!(out.stderr.contains("warning: deny 0.0.0.0/0"), "{out:?}");
    ok(&d, &["deny", "del", "0.0.0.0/0"]);
    let (n, _held_too) = connected(&pair, a, 2);
    assert_eq!(n, 2, "admitted again after deny del (4 of its 5)");
    ok(&d, &["allow", "add", "198.19.66.0/24", "--force"]);

    // reload of a config with ::/0 denied: applied, with the warning in
    // the response and in the daemon log.
    scratch.write(
        "limiter.toml",
        &smtp_config(&pair.server_if, "[[allow]]\nprefix = \"198.19.5.0/24\"\n\n[[deny]]\nprefix = \"::/0\"\n"),
    );
    let out = ok(&d, &["reload"]);
    assert!(out.stderr.contains("limiter: warning: deny ::/0 covers every IPv6 source"), "reload warns: {out:?}");
    assert!(out.stderr.contains("198.19.66.0/24 is in both"), "run-time overlap is in the reload's warnings: {out:?}");
    assert!(
        d.log_text().lines().any(|l| l.contains("reload: deny ::/0 covers every IPv6 source")),
        "daemon log: {}",
        d.log_text()
    );
}

/// Names and comments are bounded and printable at run time too.
#[test]
fn runtime_comments_are_bounded() {
    require!(privileged());
    let pair = Pair::new();
    let d = Daemon::start(&pair.server, &["--iface", &pair.server_if, "--port", "2525"]);
    let before = lists(&d);
    let long = "c".repeat(201);
    for (args, want) in [
        (vec!["deny", "add", "198.19.1.1", "--comment", long.as_str()], "at most 200 bytes"),
        (vec!["allow", "add", "198.19.1.2", "--comment", "clear\x1b[2J"], "control character"),
        (vec!["deny", "add", "198.19.1.3", "--comment", "two\nlines"], "control character"),
    ] {
        let out = limiter(&d, &args);
        assert_bad_input(&out, &format!("{args:?}"), &[want]);
        assert!(!out.stderr.contains('\x1b'), "the escape is not echoed raw: {out:?}");
        assert_eq!(lists(&d), before);
    }
    ok(&d, &["deny", "add", "198.19.1.1", "--comment", &"c".repeat(200)]);
}

/// A corrupt or invalid `lists.json` stops `limiter run` with exit 2 and
/// one line naming the file and `--discard-runtime-lists`, which moves it
/// aside (kept) and starts without run-time entries. The file is 0640.
#[test]
fn corrupt_lists_json_exits_2_and_discard_keeps_a_backup() {
    require!(privileged());
    let pair = Pair::new();
    let args = ["--iface", pair.server_if.as_str(), "--port", "2525"];
    let mut d = Daemon::start(&pair.server, &args);
    ok(&d, &["deny", "add", "198.19.1.1", "--comment", "spam"]);
    let mode = std::fs::metadata(state_file(&d)).expect("lists.json").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640, "lists.json mode {mode:o}");
    d.stop();

    let run = |extra: &[&str]| {
        let mut cmd = d.command(&pair.server, &[&args[..], extra].concat());
        output(&cmd.env("RUST_LOG", "off").output().expect("limiter run"))
    };
    let file = state_file(&d);
    let f = path_str(&file).to_owned();
    for bad in [
        "{ \"deny\": [ {\"prefix\": ",
        r#"{"allow":[{"prefix":"198.19.2.0/24","max_conn_per_source":0}]}"#,
        r#"{"deny":[{"prefix":"198.19.2.0/24","why":"x"}]}"#,
    ] {
        std::fs::write(&file, bad).expect("corrupt");
        let out = run(&[]);
        assert_bad_input(&out, bad, &[&f, "--discard-runtime-lists"]);
        assert_eq!(std::fs::read_to_string(&file).expect("still there"), bad, "left as it was");
    }

    let bad = std::fs::read(&file).expect("bad");
    d.restart(&pair.server, &[&args[..], &["--discard-runtime-lists"]].concat());
    let backups: Vec<PathBuf> = std::fs::read_dir(d.state_dir())
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("lists.json.bad-")))
        .collect();
    assert_eq!(backups.len(), 1, "one backup: {backups:?}");
    assert_eq!(std::fs::read(&backups[0]).expect("backup"), bad, "the backup holds the file as it was");
    assert!(lists(&d).iter().all(|l| l["entries"].as_array().is_some_and(Vec::is_empty)), "no run-time entries");
    assert!(d.log_text().contains("lists.json.bad-"), "the log names the backup: {}", d.log_text());
    ok(&d, &["deny", "add", "198.19.1.1"]);
}

/// A config above the size cap is refused on reload without being read
/// (peak memory stays put), and a refused large config within the cap
/// gives its memory back.
#[test]
fn refused_huge_reload_leaves_no_memory_behind() {
    require!(privileged());
    let pair = Pair::new();
    let scratch = Scratch::new();
    let config = scratch.write("limiter.toml", &smtp_config(&pair.server_if, ""));
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    let pid = pid(&d);
    let (rss0, hwm0) = (proc_status(pid, "VmRSS:"), proc_status(pid, "VmHWM:"));
    eprintln!("start: VmRSS {} MiB, VmHWM {} MiB", rss0 >> 20, hwm0 >> 20);

    // Above 64 MiB: 200,000 entries, then a long comment.
    let mut text = smtp_config(&pair.server_if, &deny_entries(200_000));
    text.push('#');
    text.push_str(&"x".repeat((65 << 20) - text.len()));
    text.push('\n');
    scratch.write("limiter.toml", &text);
    drop(text);
    let out = limiter(&d, &["reload"]);
    assert_bad_input(&out, "oversized reload", &["limiter.toml", "64 MiB"]);
    let big = scratch.0.join("limiter.toml");
    for args in [vec!["check-config", path_str(&big)], vec!["run", "--config", path_str(&big)]] {
        let out = output(&Command::new(limiter_bin()).args(&args).env("RUST_LOG", "off").output().expect("limiter"));
        assert_bad_input(&out, &format!("{args:?}"), &["limiter.toml", "64 MiB"]);
    }
    let (rss1, hwm1) = (proc_status(pid, "VmRSS:"), proc_status(pid, "VmHWM:"));
    eprintln!("after the oversized reload: VmRSS {} MiB, VmHWM {} MiB", rss1 >> 20, hwm1 >> 20);
    assert!(hwm1 < hwm0 + (16 << 20), "the file was not read: peak {hwm0} -> {hwm1} bytes");

    // Within the cap but refused (300,000 entries, more than the lists
    // hold by default: 262,144): parsed, so memory grew, and given back
    // afterwards.
    scratch.write("limiter.toml", &smtp_config(&pair.server_if, &deny_entries(300_000)));
    let out = limiter(&d, &["reload"]);
    assert_bad_input(&out, "reload of too many entries", &["list entries", "[maps] list_entries"]);
    let (rss2, hwm2) = (proc_status(pid, "VmRSS:"), proc_status(pid, "VmHWM:"));
    eprintln!("after the refused large reload: VmRSS {} MiB, VmHWM {} MiB", rss2 >> 20, hwm2 >> 20);
    assert!(hwm2 > hwm0 + (100 << 20), "the parse did take memory (else this checks nothing): {hwm2}");
    assert!(rss2 < rss0 + (32 << 20), "memory given back: VmRSS {rss0} -> {rss2} bytes");
    // Still serving, with the old policy.
    assert_eq!(d.status_json().expect("status")["services"][0]["max_conn_per_source"], 5);
}

/// Control clients of the idle flood.
const IDLE: usize = 1_500;

/// 1,500 control clients that connect and send nothing, against a daemon
/// under the default file limit (1024): it keeps at most `MAX_CLIENTS` open,
/// closes the longest idle with the reason to make room, says so in its
/// log, and answers an admin's `status` and list change at once.
#[test]
fn an_idle_client_flood_closes_itself_and_commands_are_answered() {
    require!(privileged());
    let cap = limiter_user::protocol::MAX_CLIENTS;
    // This process holds the 1,500 ends: raise its own descriptor limit.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim), 0);
        lim.rlim_cur = lim.rlim_max.max(4096);
        lim.rlim_max = lim.rlim_cur;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim), 0, "raise the test's file limit");
    }
    let pair = Pair::new();
    let spawn = Spawn { wrap: vec!["prlimit".into(), "--nofile=1024:1024".into(), "--".into()], ..Spawn::default() };
    let d = Daemon::start_with(&pair.server, &["--iface", &pair.server_if, "--port", "2525"], spawn);
    let pid = pid(&d);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    assert!(limits.lines().any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")), "{limits}");
    let fds0 = open_fds(pid);
    let idle: Vec<UnixStream> =
        (0..IDLE).map(|i| UnixStream::connect(&d.socket).unwrap_or_else(|e| panic!("client {i}: {e}"))).collect();
    let fds1 = open_fds(pid);
    eprintln!("descriptors: {fds0} before, {fds1} with {IDLE} idle clients connected");
    // The cap, and the one just accepted while the oldest idle one goes.
    assert!(fds1 <= fds0 + cap + 1, "at most {cap} clients open at once: {fds0} -> {fds1} descriptors");

    // The admin's commands are answered at once, flood or not.
    let start = Instant::now();
    let status = d.status_json().expect("status answers during the flood");
    assert!(status["services"].is_array(), "{status}");
    ok(&d, &["deny", "add", "198.19.3.3"]);
    let took = start.elapsed();
    eprintln!("status and a deny add took {took:?} with {IDLE} idle clients");
    assert!(took < limiter_tests::patience(Duration::from_secs(2)), "commands waited {took:?} behind idle clients");
    let deny = d.client_json(&["deny", "list", "--json"]);
    assert_eq!(deny["entries"][0]["prefix"], "198.19.3.3/32", "{deny}");

    // The first idle client was closed, and told why.
    let mut first = &idle[0];
    first.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut told = String::new();
    std::io::Read::read_to_string(&mut first, &mut told).expect("the closed client reads its answer");
    assert!(told.contains("sent no request"), "the closed client is told why: {told:?}");
    let log = d.wait_log("the warning about idle clients", |l| l.contains("clients open at once"));
    assert_eq!(log.matches("clients open at once").count(), 1, "one warning a minute, not one per client: {log}");
    drop(idle);
}

/// `deny list` entries' prefixes.
fn deny_prefixes(d: &Daemon) -> Vec<String> {
    let v = d.client_json(&["deny", "list", "--json"]);
    v["entries"]
        .as_array()
        .map_or_else(Vec::new, |a| a.iter().filter_map(|e| e["prefix"].as_str().map(str::to_owned)).collect())
}

/// A list change the state dir cannot take fails with one line naming the
/// file and why, and changes nothing (not the file, not the list, not the
/// kernel); the daemon goes on, and the same change works once the dir is
/// back. The dir full (a 64 KiB tmpfs filled up), read-only (remounted), and
/// gone (removed).
#[test]
fn a_full_read_only_or_missing_state_dir_refuses_a_change_and_changes_nothing() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let (src, kept) = (pair.add_client_v4(2), pair.add_client_v4(3));
    for fault in ["full", "read-only", "gone"] {
        let mut d = Daemon::unstarted(Spawn::default());
        let dir = d.state_dir();
        std::fs::create_dir_all(&dir).expect("state dir");
        let mount = |args: &[&str]| {
            let out = Command::new("mount").args(args).arg(&dir).output().expect("mount");
            assert!(out.status.success(), "mount {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        mount(&["-t", "tmpfs", "-o", "size=64k,mode=0750", "tmpfs"]);
        d.restart(&pair.server, &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "2"]);
        ok(&d, &["deny", "add", &kept.to_string()]);
        let before = state_bytes(&d).expect("lists.json written");
        let filler = dir.join("filler");
        match fault {
            "full" => {
                // Fill every byte the tmpfs has left.
                let mut f = std::fs::File::create(&filler).expect("filler");
                let chunk = vec![0u8; 4096];
                while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
            }
            "read-only" => mount(&["-o", "remount,ro"]),
            _ => {
                let out = Command::new("umount").arg(&dir).output().expect("umount");
                assert!(out.status.success(), "umount: {}", String::from_utf8_lossy(&out.stderr));
                std::fs::remove_dir_all(&dir).expect("remove the state dir");
            }
        }
        let out = limiter(&d, &["deny", "add", &src.to_string()]);
        assert_ne!(out.code, Some(0), "{fault}: the change must fail: {out:?}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{fault}: one line: {out:?}");
        assert!(lines[0].contains("lists.json"), "{fault}: the line names the file: {out:?}");
        eprintln!("{fault}: {}", lines[0]);
        // Nothing changed: the list, the kernel (the source still gets in), the file.
        assert_eq!(deny_prefixes(&d), [format!("{kept}/32")], "{fault}: the list");
        let (n, held) = connected(&pair, src, 2);
        assert_eq!(n, 2, "{fault}: the source is not denied");
        drop(held);
        if fault != "gone" {
            assert_eq!(state_bytes(&d).as_deref(), Some(before.as_slice()), "{fault}: lists.json unchanged");
        }
        // The dir back: the same change works, and the daemon never stopped.
        match fault {
            "full" => std::fs::remove_file(&filler).expect("free the space"),
            "read-only" => mount(&["-o", "remount,rw"]),
            _ => std::fs::create_dir_all(&dir).expect("the state dir again"),
        }
        ok(&d, &["deny", "add", &src.to_string()]);
        let (n, _) = connected(&pair, src, 1);
        assert_eq!(n, 0, "{fault}: denied once the change is made");
        assert!(d.status_json().is_some(), "{fault}: the daemon still answers");
        d.stop();
        let _ = Command::new("umount").arg(&dir).output();
        limiter_tests::cli::unload(&d);
    }
}

/// The connection table full (`[maps] connections = 1024`, 1,050 sources
/// holding one connection each, two entries a source): the sources past
/// the first 512 go uncounted, so
/// their limit is not enforced (the limiter fails open, as documented) and
/// the table's entries stay at its size; the log warns within seconds of the
/// first uncounted connection (not at the next reclaim pass), and `/metrics`
/// counts every one; once connections close and the reclaim frees entries,
/// every source is counted again.
#[test]
fn a_full_connection_table_fails_open_warns_and_recovers() {
    // Each counted source takes two entries: its service's count and its
    // count over all services (README, `[maps]`).
    const CAPACITY: usize = 1024 / 2;
    const WARNED: &str = "went uncounted: the connection table is full (1024 entries)";
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let scratch = Scratch::new();
    let sources = pair.add_clients(250, 800);
    let config = scratch.write(
        "limiter.toml",
        &format!(
            "interfaces = [\"{}\"]\nmetrics_listen = \"127.0.0.1:9464\"\n\n[[service]]\nname = \"smtp\"\nports = \
             [{PORT}]\nmax_conn_per_source = 1\naction = \"reset\"\n\n[maps]\nconnections = 1024\n",
            pair.server_if
        ),
    );
    let args = ["--config", path_str(&config)];
    // The reclaim pass, which warns of a nearly full table, every 10 minutes:
    // a warning within seconds can only come from the uncounted connections.
    let slow_reclaim = Spawn { env: vec![("LIMITER_RECLAIM_MS".into(), "600000".into())], ..Spawn::default() };
    let mut d = Daemon::start_with(&pair.server, &args, slow_reclaim);
    // One connection from each, in order: the first 512 fill the table.
    let mut held = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let (n, s) = connected(&pair, *src, 1);
        assert_eq!(n, 1, "source {i} ({src}) gets its first connection");
        held.extend(s);
        if i == CAPACITY {
            // The first connection that found the table full: warned at once.
            let start = Instant::now();
            while !d.log_text().contains(WARNED) {
                assert!(
                    start.elapsed() < limiter_tests::patience(Duration::from_secs(5)),
                    "no warning {:?} after the first uncounted connection: {}",
                    start.elapsed(),
                    d.log_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("warned {:?} after the first uncounted connection completed", start.elapsed());
        }
    }
    let (first, last) = (sources[0], sources[sources.len() - 1]);
    // A counted source is at its limit; an uncounted one is not (fail open:
    // a second connection, once the first has completed, gets in).
    assert_eq!(connected(&pair, first, 1).0, 0, "the first source is counted: 1 of 1");
    assert_eq!(connected(&pair, sources[CAPACITY - 1], 1).0, 0, "the last source that fit is counted");
    let (n, extra) = connected(&pair, sources[CAPACITY], 1);
    assert_eq!(n, 1, "the first source past the table went uncounted: its limit is not enforced");
    drop(extra);
    let (n, extra) = connected(&pair, last, 1);
    assert_eq!(n, 1, "the last source went uncounted: its limit is not enforced");
    drop(extra);
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains(WARNED)).unwrap_or_default();
    eprintln!("warned: {line}");
    assert!(line.contains("[maps] connections"), "the warning says what to raise: {line}");
    assert!(!log.contains("the connection table holds"), "the reclaim pass did not run, so it did not warn: {log}");
    assert_eq!(log.matches(WARNED).count(), 1, "one warning a minute at most: {log}");
    // Every connection past the table's size, and the two second ones let in.
    let want = format!("limiter_connections_uncounted_total {}\n", sources.len() - CAPACITY + 2);
    let metrics = pair.server.run(|| {
        use std::io::{Read as _, Write as _};
        let mut s = TcpStream::connect("127.0.0.1:9464").expect("connect to /metrics");
        s.set_read_timeout(Some(WAIT)).expect("read timeout");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send the request");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    });
    assert!(metrics.contains(&want), "/metrics counts them: want {want:?} in {metrics}");
    // Everything closes; a daemon that reclaims (every 200 ms, restarted on
    // the same pins) frees the entries; the last source is counted again.
    drop(held);
    let _ = d.stop();
    d.spawn = Spawn::default();
    d.restart(&pair.server, &args);
    let start = Instant::now();
    loop {
        // One connection, then a second once it is established: counted, the
        // second is refused.
        let (n, one) = connected(&pair, last, 1);
        assert_eq!(n, 1, "the last source's first connection");
        let (second, s) = connected(&pair, last, 1);
        drop((one, s));
        if second == 0 {
            break;
        }
        assert!(
            start.elapsed() < limiter_tests::patience(Duration::from_mins(2)),
            "the last source is still uncounted after the table emptied: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("counted again {:?} after the connections closed", start.elapsed());
}
