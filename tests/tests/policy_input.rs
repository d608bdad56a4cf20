//! Bad input changes nothing (see `limiter_tests::policy`): bad list
//! commands exit 2 with one line, garbage on the control socket gets an
//! error or a closed connection, and `check-config` names every problem of
//! a file at its line.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::{Output, Scratch, limiter, limiter_at, ok, path_str},
    netns::{Daemon, Pair},
    policy::{PORT, all_lists, assert_bad_input, attempt, listen_echo, smtp_config},
    privileged, require,
};
use serde_json::Value;

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
    // No daemon at the socket: exit 3 ("not running"), one line, nothing changed.
    let out = limiter_at(&scratch.0.join("none.sock"), &["allow", "add", "198.18.1.0/24"]);
    assert_eq!(out.code, Some(3), "unreachable socket: {out:?}");
    assert!(out.stderr.contains("daemon is not running") && out.stderr.lines().count() == 1, "{out:?}");
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

/// Garbage on the control socket gets an error or a closed connection; the
/// daemon keeps serving others and the policy is unchanged.
#[test]
fn control_socket_garbage_changes_nothing() {
    // Long on purpose: one kind of garbage after another on the same daemon.
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
