//! Exact per-source concurrent-connection limits, end to end: `limiter run
//! --max-conn-per-source N` in a namespace, simultaneous real TCP clients
//! from another, and the kernel's own count of what is established.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    can_run_privileged,
    netns::{Attempt, Daemon, Pair, tally},
};

const PORT: u16 = 2525;
const WAIT: Duration = Duration::from_secs(2);

fn connections(d: &Daemon) -> u64 {
    let s = d.status_json().expect("status");
    s["services"][0]["connections"].as_u64().unwrap_or_else(|| panic!("no connections in {s}"))
}

/// Waits up to `limit` for the daemon's count to reach `want`.
fn wait_connections(d: &Daemon, want: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = connections(d);
        if got == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "connections stayed at {got}, want {want}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn streams(attempts: Vec<Attempt>) -> Vec<std::net::TcpStream> {
    attempts
        .into_iter()
        .filter_map(|a| match a {
            Attempt::Connected(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn fifty_simultaneous_attempts_give_exactly_eight() {
    if !can_run_privileged("fifty_simultaneous_attempts_give_exactly_eight") {
        return;
    }
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
    wait_connections(&d, 8, WAIT);

    // Close 3: their slots come back within a second, and exactly 3 get in.
    held.truncate(5);
    let took = wait_connections(&d, 5, Duration::from_secs(1));
    eprintln!("3 closes released in {took:?}");
    let again = pair.connect_parallel(src, PORT, 20, WAIT);
    let t = tally(&again);
    assert_eq!((t.connected, t.refused), (3, 17), "after closing 3: {t:?}");
    held.extend(streams(again));
    wait_connections(&d, 8, WAIT);

    let s = d.status_json().expect("status");
    let c = &s["services"][0]["counters"];
    assert_eq!(c["accepted"], 11, "{s}");
    assert_eq!(c["refused_concurrency"], 59, "{s}");
    assert_eq!(s["services"][0]["max_conn_per_source"], 8);

    // Everything closed: the count returns to zero.
    drop(held);
    wait_connections(&d, 0, Duration::from_secs(1));
}

#[test]
fn ipv6_hosts_of_one_64_share_the_limit() {
    if !can_run_privileged("ipv6_hosts_of_one_64_share_the_limit") {
        return;
    }
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
    wait_connections(&d, 16, WAIT);
}
