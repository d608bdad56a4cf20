//! The policy across changes of the daemon (see `limiter_tests::policy`):
//! `limiter reload` and SIGHUP apply an edited config and refuse a broken
//! one, run-time entries survive the reloads, and entries and counts
//! survive `kill -9` and a restart.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::{Scratch, limiter, ok, path_str},
    netns::{Daemon, Pair},
    policy::{
        PORT, RELEASE, WAIT, all_lists, assert_bad_input, assert_open, attempt, counter, entries, listen_echo, service,
        sessions, smtp_config, wait_sessions,
    },
    privileged, require,
};
use serde_json::json;

/// The daemon's pid, to signal it.
fn pid(d: &Daemon) -> libc::pid_t {
    // nsenter without a PID namespace execs the daemon: same pid.
    libc::pid_t::try_from(d.child.as_ref().expect("daemon running").id()).expect("pid")
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
