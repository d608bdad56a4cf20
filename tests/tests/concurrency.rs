//! Exact per-source concurrent-connection limits, end to end: `limiter run
//! --max-conn-per-source N` in a namespace, simultaneous real TCP clients
//! from another, and the kernel's own count of what is established.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::{Scratch, limiter, path_str},
    netns::{Daemon, Pair, streams, tally},
    privileged, require,
};

const PORT: u16 = 2525;
const WAIT: Duration = Duration::from_secs(2);

#[test]
fn fifty_simultaneous_attempts_give_exactly_eight() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let src = pair.add_client_v4(2);
    let d = Daemon::start(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "8", "--action", "reset"],
    );

    let first = pair.connect_parallel(src, PORT, 50, WAIT);
    let t = tally(&first);
    assert_eq!((t.connected, t.refused, t.timed_out, t.other), (8, 42, 0, 0), "{t:?}");
    let mut held = streams(first);
    d.wait_connections(8, WAIT);

    // `limiter top` shows the source with its 8 and its limit.
    let top = d.client_json(&["top", "--json"]);
    let rows = top["sources"].as_array().expect("sources");
    assert_eq!(rows.len(), 1, "{top}");
    assert_eq!(rows[0]["source"], src.to_string());
    assert_eq!((rows[0]["connections"].as_u64(), rows[0]["limit"].as_u64()), (Some(8), Some(8)), "{top}");
    assert_eq!(rows[0]["service"], "default");
    let out = limiter(&d, &["top", "--service", "nope"]);
    assert_eq!(out.code, Some(2), "unknown service is bad input");
    assert!(out.stderr.contains("unknown service 'nope'"));

    // Close 3: their slots come back within a second, and exactly 3 get in.
    held.truncate(5);
    let took = d.wait_connections(5, Duration::from_secs(1));
    eprintln!("3 closes released in {took:?}");
    let again = pair.connect_parallel(src, PORT, 20, WAIT);
    let t = tally(&again);
    assert_eq!((t.connected, t.refused), (3, 17), "after closing 3: {t:?}");
    held.extend(streams(again));
    d.wait_connections(8, WAIT);

    let s = d.status_json().expect("status");
    let c = &s["services"][0]["counters"];
    assert_eq!(c["accepted"], 11, "{s}");
    assert_eq!(c["refused_concurrency"], 59, "{s}");
    assert_eq!(s["services"][0]["max_conn_per_source"], 8);

    // Everything closed: the count returns to zero.
    drop(held);
    d.wait_connections(0, Duration::from_secs(1));
}

#[test]
fn ipv6_hosts_of_one_64_share_the_limit() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let h1 = pair.add_client_v6(1, 0x10);
    let h2 = pair.add_client_v6(1, 0x20);
    let other = pair.add_client_v6(2, 0x10);
    let d = Daemon::start(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "8", "--action", "reset"],
    );
    let a = pair.connect_parallel(h1, PORT, 5, WAIT);
    assert_eq!(tally(&a).connected, 5);
    let b = pair.connect_parallel(h2, PORT, 10, WAIT);
    assert_eq!(tally(&b).connected, 3, "h2 shares h1's /64");
    let c = pair.connect_parallel(other, PORT, 10, WAIT);
    assert_eq!(tally(&c).connected, 8, "another /64 has its own 8");
    d.wait_connections(16, WAIT);
    let top = d.client_json(&["top", "--json", "-n", "1"]);
    let rows = top["sources"].as_array().expect("sources");
    assert_eq!(rows.len(), 1, "-n 1: {top}");
    assert_eq!(rows[0]["connections"], 8);
    let full = d.client_json(&["top", "--json"]);
    let mut seen: Vec<String> = full["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|r| r["source"].as_str().unwrap_or("").to_owned())
        .collect();
    seen.sort();
    let net = pair.net;
    assert_eq!(seen, [format!("2001:db8:{net:x}:1::/64"), format!("2001:db8:{net:x}:2::/64")], "{full}");
}

#[test]
fn kill_9_and_restart_keep_counts_and_connections() {
    use std::io::{ErrorKind, Read as _, Write as _};
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let src = pair.add_client_v4(2);
    let args =
        ["--iface", pair.server_if.as_str(), "--port", "2525", "--max-conn-per-source", "8", "--action", "reset"];
    let mut d = Daemon::start(&pair.server, &args);
    let mut held = streams(pair.connect_parallel(src, PORT, 12, WAIT));
    assert_eq!(held.len(), 8);
    d.wait_connections(8, WAIT);

    d.kill();
    // Nobody is watching, yet the limit holds and closes are counted.
    assert_eq!(tally(&pair.connect_parallel(src, PORT, 5, WAIT)).connected, 0, "limit holds while the daemon is dead");
    held.truncate(6);
    thread::sleep(Duration::from_millis(300));

    d.restart(&pair.server, &args);
    d.wait_connections(6, Duration::from_secs(1));
    // The held connections survived both the crash and the restart.
    for s in &mut held {
        s.write_all(b"NOOP\r\n").expect("held connection still writable");
        s.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("held connection was closed or reset: {other:?}"),
        }
    }
    let t = tally(&pair.connect_parallel(src, PORT, 10, WAIT));
    assert_eq!(t.connected, 2, "exactly the 2 freed slots: {t:?}");
    let s = d.status_json().expect("status");
    assert_eq!(s["services"][0]["counters"]["accepted"], 10, "counters survived the restart: {s}");
}

#[test]
fn spoofed_flood_cannot_inflate_or_evict_real_counts() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let real = pair.add_client_v4(2);
    let real6 = pair.add_client_v6(1, 1);
    let fresh = pair.add_client_v4(3);
    let d = Daemon::start(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "8", "--action", "reset"],
    );
    let mut held = streams(pair.connect_parallel(real, PORT, 12, WAIT));
    held.extend(streams(pair.connect_parallel(real6, PORT, 12, WAIT)));
    assert_eq!(held.len(), 16);
    d.wait_connections(16, WAIT);

    let start = Instant::now();
    pair.flood_spoofed(PORT, 300_000);
    eprintln!("300000 spoofed SYNs sent in {:?}", start.elapsed());
    let s = d.status_json().expect("status");
    let accepted = s["services"][0]["counters"]["accepted"].as_u64().unwrap_or(0);
    assert!(accepted >= 290_000, "the flood reached the program: {s}");

    // The real sources' counts are exactly what they were, and they are still capped.
    d.wait_connections(16, WAIT);
    let top = d.client_json(&["top", "--json"]);
    let rows = top["sources"].as_array().expect("sources");
    assert_eq!(rows.len(), 2, "spoofed sources created no connection state: {top}");
    assert!(rows.iter().all(|r| r["connections"] == 8), "{top}");
    assert_eq!(tally(&pair.connect_parallel(real, PORT, 5, WAIT)).connected, 0, "real IPv4 source still at 8");
    assert_eq!(tally(&pair.connect_parallel(real6, PORT, 5, WAIT)).connected, 0, "real IPv6 source still at 8");
    // A fresh source still gets exactly 8; closing 3 of the real ones frees exactly 3.
    let attempts = pair.connect_parallel(fresh, PORT, 20, WAIT);
    let t = tally(&attempts);
    assert_eq!(t.connected, 8, "fresh source after the flood: {t:?}");
    let _fresh = streams(attempts);
    // `held` is the 8 IPv4 connections, then the 8 IPv6 ones: close 3 IPv4.
    held.drain(..3);
    d.wait_connections(5 + 8 + 8, Duration::from_secs(1));
    assert_eq!(tally(&pair.connect_parallel(real, PORT, 10, WAIT)).connected, 3);
}

#[test]
fn connections_made_before_start_count_and_release() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let src = pair.add_client_v4(2);
    let (h1, h2) = (pair.add_client_v6(1, 0x10), pair.add_client_v6(1, 0x20));
    // Made before the limiter exists: 5 from one IPv4 host (they reach the
    // dual-stack listener as ::ffff:198.18.N.2) and 3 from two hosts of one /64.
    let mut before = streams(pair.connect_many(src, PORT, 5, WAIT));
    let mut before6 = streams(pair.connect_many(h1, PORT, 2, WAIT));
    before6.extend(streams(pair.connect_many(h2, PORT, 1, WAIT)));
    assert_eq!((before.len(), before6.len()), (5, 3));

    let args =
        ["--iface", pair.server_if.as_str(), "--port", "2525", "--max-conn-per-source", "8", "--action", "reset"];
    let mut d = Daemon::start(&pair.server, &args);
    d.wait_connections(8, WAIT);
    let a = pair.connect_parallel(src, PORT, 20, WAIT);
    let t = tally(&a);
    assert_eq!((t.connected, t.refused), (3, 17), "5 made before start count against 8: {t:?}");
    let b = pair.connect_parallel(h2, PORT, 20, WAIT);
    let t6 = tally(&b);
    assert_eq!((t6.connected, t6.refused), (5, 15), "3 made before start count against the /64's 8: {t6:?}");
    let mut held = streams(a);
    held.extend(streams(b));
    d.wait_connections(16, WAIT);
    let top = d.client_json(&["top", "--json"]);
    let rows = top["sources"].as_array().expect("sources");
    assert!(rows.iter().all(|r| r["connections"] == 8), "{top}");

    // There is no close callback for these sockets; the daemon still
    // releases them within a second.
    before.truncate(3);
    let took = d.wait_connections(14, Duration::from_secs(1));
    eprintln!("2 pre-existing closes released in {took:?}");
    let a = pair.connect_parallel(src, PORT, 10, WAIT);
    let t = tally(&a);
    assert_eq!(t.connected, 2, "exactly the 2 freed slots: {t:?}");
    held.extend(streams(a));
    d.wait_connections(16, WAIT);

    // A crash does not lose track of them: one closes while the daemon is
    // dead, and the restarted daemon releases it.
    d.kill();
    before.truncate(2);
    before6.truncate(2);
    thread::sleep(Duration::from_millis(300));
    d.restart(&pair.server, &args);
    let took = d.wait_connections(14, Duration::from_secs(1));
    eprintln!("closes made while the daemon was down released {took:?} after restart");
    let (a, b) = (pair.connect_parallel(src, PORT, 10, WAIT), pair.connect_parallel(h1, PORT, 10, WAIT));
    assert_eq!((tally(&a).connected, tally(&b).connected), (1, 1), "one freed slot each after the restart");
    held.extend(streams(a));
    held.extend(streams(b));
    d.wait_connections(16, WAIT);

    // The pre-existing ones close: only the 12 counted by the kernel remain;
    // then those close too.
    drop((before, before6));
    d.wait_connections(12, Duration::from_secs(1));
    assert_eq!(held.len(), 12);
    drop(held);
    d.wait_connections(0, Duration::from_secs(1));
}

#[test]
fn map_sizes_come_from_the_config() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let src = pair.add_client_v4(2);
    let scratch = Scratch::new();
    let write = |text: &str| scratch.write("limiter.toml", text);
    let config = write("[maps]\nconnections = 2048\npending_slots = 1024\n");
    let args = [
        "--iface",
        pair.server_if.as_str(),
        "--port",
        "2525",
        "--max-conn-per-source",
        "8",
        "--config",
        path_str(&config),
    ];
    let mut d = Daemon::start(&pair.server, &args);
    let pins = d.pin_dir.clone();
    let size = |map: &str| {
        let out =
            limiter_tests::netns::sh(&["bpftool", "-j", "map", "show", "pinned", &format!("{}/{map}", pins.display())]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool json");
        v["max_entries"].as_u64().expect("max_entries")
    };
    assert_eq!((size("CONNS"), size("SEEDED"), size("PENDING")), (2048, 2048, 1024));
    // The handshake hash uses the real slot count: still exactly 8.
    let held = pair.connect_parallel(src, PORT, 30, WAIT);
    assert_eq!(tally(&held).connected, 8);

    // Pinned maps keep their size across a restart with other sizes; the
    // daemon says so, and the limit still holds.
    d.stop();
    write("[maps]\nconnections = 4096\n");
    d.restart(&pair.server, &args);
    assert_eq!(size("CONNS"), 2048);
    assert!(
        d.log_text()
            .contains("map CONNS is pinned with 2048 entries; the configured 4096 takes effect after `limiter unload`"),
        "{}",
        d.log_text()
    );
    assert_eq!(tally(&pair.connect_parallel(src, PORT, 5, WAIT)).connected, 0);
    drop(held);
}

#[test]
fn idle_sources_are_reclaimed_and_counting_stays_exact() {
    require!(privileged());
    let pair = Pair::new();
    let _l = pair.listen(PORT);
    let (a, b) = (pair.add_client_v4(2), pair.add_client_v4(3));
    let d = Daemon::start(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "8", "--action", "reset"],
    );
    let entries = || {
        let out = limiter_tests::netns::sh(&[
            "bpftool",
            "-j",
            "map",
            "dump",
            "pinned",
            &format!("{}/CONNS", d.pin_dir.display()),
        ]);
        serde_json::from_str::<serde_json::Value>(&out).expect("bpftool json").as_array().map_or(0, Vec::len)
    };
    let held_a = streams(pair.connect_parallel(a, PORT, 3, WAIT));
    let held_b = streams(pair.connect_parallel(b, PORT, 2, WAIT));
    assert_eq!((held_a.len(), held_b.len()), (3, 2));
    d.wait_connections(5, WAIT);
    // Two entries a source: its service's and its count over all services
    // (the source-wide budget's, kept whether or not one is set).
    assert_eq!(entries(), 4);
    // `a` closes everything: its entries, at zero for two passes (200 ms each
    // in tests), are deleted; `b`'s, in use, stay.
    drop(held_a);
    d.wait_connections(2, Duration::from_secs(1));
    let start = Instant::now();
    while entries() != 2 {
        assert!(start.elapsed() < Duration::from_secs(3), "idle entry not reclaimed");
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("idle entry reclaimed {:?} after its last close", start.elapsed());
    // A reclaimed source starts again from nothing and is still held to 8,
    // also while reclamation keeps running.
    for round in 0..3 {
        let burst = pair.connect_parallel(a, PORT, 20, WAIT);
        assert_eq!(tally(&burst).connected, 8, "round {round}");
        d.wait_connections(10, WAIT);
        drop(burst);
        d.wait_connections(2, Duration::from_secs(1));
        thread::sleep(Duration::from_millis(450));
    }
    drop(held_b);
    d.wait_connections(0, Duration::from_secs(1));
}
