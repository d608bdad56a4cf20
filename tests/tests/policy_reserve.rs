//! Reserved sessions end to end (see `limiter_tests::policy`): the issue's
//! gateway scenario and VPOP3's "reserve sessions for 198.19.N.*", scaled
//! down.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::net::IpAddr;

use limiter_tests::{
    cli::{Scratch, path_str},
    netns::{Daemon, Pair},
    policy::{PORT, RELEASE, WAIT, assert_open, attempt, entries, listen_echo, service, smtp_config, wait_sessions},
    privileged, require,
};
use serde_json::json;

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

/// The acceptance scenario: per-source 2, 10 sessions of which 6
/// are reserved for a gateway that is also allowed 20 per source.
#[test]
fn reserved_sessions_are_kept_for_the_gateway() {
    // Long on purpose: one acceptance scenario, read top to bottom.
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
