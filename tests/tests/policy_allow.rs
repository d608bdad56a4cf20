//! Allow entries end to end (see `limiter_tests::policy`): a run-time entry
//! with its own limit raises a source's cap, and deleting it lowers the cap
//! without cutting what is established; an entry without limits exempts a
//! source from every limit and from the sessions count.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{thread, time::Duration};

use limiter_tests::{
    cli::{Scratch, ok, path_str},
    netns::{Daemon, Pair},
    policy::{
        PORT, RELEASE, WAIT, assert_open, attempt, counter, entries, listen_echo, service, sessions, smtp_config,
        wait_sessions,
    },
    privileged, require,
};
use serde_json::{Value, json};

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
