//! Refusal lines an outsider cannot forge, and fail2ban banning where the
//! limiter refuses. SYNs with forged source addresses (addresses that never
//! completed a handshake with the host) are refused and logged as
//! `unverified`, which the shipped filter never matches, for IPv4 and IPv6,
//! under a connection limit and a rate limit; a real client over its limit
//! gets a `refused` line, and a real `fail2ban-server` with the shipped
//! filter and action puts it on `limiter deny` and takes it off after the
//! ban time.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::{Scratch, path_str},
    fail2ban::{Fail2ban, packaging, regex_matches},
    netns::{Daemon, Listener, Pair, Spawn, limiter_bin, tally},
    privileged, require,
};

/// The connection-limited service (2 per source) and the rate-limited one
/// (bursts of 2, then 6 a minute).
const CONN_PORT: u16 = 2525;
const RATE_PORT: u16 = 2526;
const WAIT: Duration = Duration::from_secs(2);
/// Forged sources: outside every test pair's own 198.18.N.0/24 and
/// `2001:db8:N::/48`, and never used by a real client.
const FORGED_V4: &str = "198.19.250.99";
const FORGED_V6: &str = "2001:db8:f9f9:1::99";

fn config(iface: &str) -> String {
    format!(
        "interfaces = [\"{iface}\"]\n\n\
         [[service]]\nname = \"conn\"\nports = [{CONN_PORT}]\nmax_conn_per_source = 2\naction = \"reset\"\n\n\
         [[service]]\nname = \"rate\"\nports = [{RATE_PORT}]\nrate = \"6/m\"\nburst = 2\naction = \"reset\"\n"
    )
}

/// Where both tests start: a pair with a listener on each port, and a
/// daemon with the two services and 1 s refusal bursts, its config in the
/// scratch dir.
fn start() -> (Pair, Listener, Listener, Scratch, Daemon) {
    let pair = Pair::new();
    let conn = pair.listen(CONN_PORT);
    let rate = pair.listen(RATE_PORT);
    let scratch = Scratch::new();
    let cfg = scratch.write("limiter.toml", &config(&pair.server_if));
    let spawn = Spawn { env: vec![("LIMITER_EVENT_WINDOW_MS".to_owned(), "1000".to_owned())], ..Spawn::default() };
    let d = Daemon::start_with(&pair.server, &["--config", path_str(&cfg)], spawn);
    (pair, conn, rate, scratch, d)
}

/// Forged SYNs from two addresses that never connected, against both
/// limits and both families: all refused past the limits, logged as
/// `unverified` with what the refusal was based on, and not one line the
/// shipped filter matches. A real client over its limit in the same log is
/// matched, so the filter is live.
#[test]
fn forged_floods_make_no_line_fail2ban_matches() {
    require!(privileged());
    let (pair, _conn, _rate, _scratch, d) = start();
    for forged in [FORGED_V4, FORGED_V6] {
        let src: IpAddr = forged.parse().expect("addr");
        // 2 handshakes in flight use up the connection limit; the rest are refused.
        pair.forge_syns(src, CONN_PORT, 10);
        // A burst of 2, then the rate refuses.
        pair.forge_syns(src, RATE_PORT, 10);
        d.wait_log("unverified lines", |log| {
            log.contains(&format!(
                "unverified {src} conn:{CONN_PORT} too many connections (0 established + 2 in handshake, limit 2)"
            )) && log.contains(&format!(
                "unverified {src} rate:{RATE_PORT} too many attempts (rate 6/m, burst 2; no completed handshake)"
            ))
        });
    }
    // And a flood of random forged sources against both.
    pair.flood_spoofed(CONN_PORT, 2_000);
    pair.flood_spoofed(RATE_PORT, 2_000);
    let s = d.status_json().expect("status");
    for svc in s["services"].as_array().expect("services") {
        let c = &svc["counters"];
        let refused = c["refused_concurrency"].as_u64().unwrap_or(0) + c["refused_rate"].as_u64().unwrap_or(0);
        assert!(refused >= 16, "the forged SYNs were refused: {svc}");
    }
    let log = d.log_text();
    assert!(!log.lines().any(|l| l.contains("refused 198.19.") || l.contains("refused 2001:db8:f9f9")), "{log}");
    let (total, hits) = regex_matches(&d.log);
    assert!(total.starts_with("Failregex: 0 total"), "forged SYNs matched the filter: {total}\n{hits}");

    // A real client holding its 2 and trying a third: a proved line, matched.
    let real = pair.add_client_v4(7);
    let _held = pair.hold(real, CONN_PORT, 2, WAIT);
    assert_eq!(tally(&pair.connect_many(real, CONN_PORT, 1, WAIT)).refused, 1);
    let line = format!("refused {real} conn:{CONN_PORT} too many connections (2 established, limit 2)");
    d.wait_log("the real client's line", |log| log.contains(&line));
    let (total, hits) = regex_matches(&d.log);
    assert!(total.starts_with("Failregex: 1 total"), "{total}\n{hits}");
    assert!(hits.contains(&line), "{hits}");
    drop(d);
}

/// The run-time deny entries: (prefix, comment).
fn denied(d: &Daemon) -> Vec<(String, String)> {
    limiter_tests::fail2ban::denied_entries(&d.client_json(&["deny", "list", "--json"]))
}

fn wait_until(what: &str, limit: Duration, f2b: &Fail2ban, d: &Daemon, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "{what} within {limit:?}\nfail2ban log:\n{}\nlimiter log:\n{}",
            f2b.log(),
            d.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A real fail2ban with the shipped filter, action and jail: a client that
/// keeps hitting its connection limit (IPv4) and its rate limit (IPv6) is
/// banned through `limiter deny add` (the IPv6 one as its /64), refused by
/// the deny list while banned, and off the list after the ban time; forged
/// SYNs in the same run ban nobody.
#[test]
fn fail2ban_bans_verified_abusers_through_the_deny_list() {
    require!(privileged());
    let (pair, _conn, _rate, scratch, d) = start();
    // The shipped jail with the test's paths and times: a ban after 2 proved
    // bursts, lifted 4 s later.
    let jail = format!(
        "[limiter]\nenabled = true\nfilter = limiter\naction = limiter[limiter=\"{}\", socket=\"{}\"]\n\
         backend = polling\nlogpath = {}\nmaxretry = 2\nfindtime = 60\nbantime = 4\n",
        limiter_bin().display(),
        d.socket.display(),
        d.log.display()
    );
    let f2b = Fail2ban::start(&scratch.0, &packaging(), &jail);
    // fail2ban is up when it reads our log.
    wait_until("fail2ban started the jail", Duration::from_secs(30), &f2b, &d, || {
        f2b.log().contains("Jail 'limiter' started")
    });

    // Forged SYNs first: they must ban nobody.
    for forged in [FORGED_V4, FORGED_V6] {
        let src: IpAddr = forged.parse().expect("addr");
        for _ in 0..3 {
            pair.forge_syns(src, CONN_PORT, 6);
            pair.forge_syns(src, RATE_PORT, 6);
            thread::sleep(Duration::from_millis(1_100));
        }
    }

    // The IPv4 abuser holds its 2 and keeps trying, one attempt per burst.
    let v4 = pair.add_client_v4(9);
    let _held = pair.hold(v4, CONN_PORT, 2, WAIT);
    // The IPv6 abuser spends its burst of 2, then keeps trying; it holds one
    // connection, so its refusals are proved.
    let v6 = pair.add_client_v6(3, 9);
    let _held6 = pair.hold(v6, RATE_PORT, 1, WAIT);
    let _spent = pair.connect_many(v6, RATE_PORT, 1, WAIT);
    let banned4 = format!("{v4}/32");
    let banned6 = "2001:db8:{net:x}:3::/64".replace("{net:x}", &format!("{:x}", pair.net));
    let start = Instant::now();
    while !(denied(&d).iter().any(|(p, _)| *p == banned4) && denied(&d).iter().any(|(p, _)| *p == banned6)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not banned within 30 s: {:?}\nfail2ban log:\n{}\nlimiter log:\n{}",
            denied(&d),
            f2b.log(),
            d.log_text()
        );
        let _ = pair.connect_many(v4, CONN_PORT, 1, WAIT);
        let _ = pair.connect_many(v6, RATE_PORT, 1, WAIT);
        thread::sleep(Duration::from_millis(1_100));
    }
    let entries = denied(&d);
    assert!(entries.iter().any(|(p, c)| *p == banned4 && c == "fail2ban limiter"), "{entries:?}");
    assert!(
        !entries.iter().any(|(p, _)| p.starts_with("198.19.") || p.starts_with("2001:db8:f9f9")),
        "a forged source was banned: {entries:?}"
    );
    // While banned, the deny list refuses it: its XDP counter moves.
    let before = d.status_json().expect("status")["totals"]["refused_deny"].as_u64().unwrap_or(0);
    let _ = pair.connect_many(v4, CONN_PORT, 1, WAIT);
    let after = d.status_json().expect("status")["totals"]["refused_deny"].as_u64().unwrap_or(0);
    assert!(after > before, "a banned source is refused by the deny list ({before} -> {after})");

    // After the ban time fail2ban lifts both bans through `limiter deny del`.
    wait_until("both bans lifted", Duration::from_secs(30), &f2b, &d, || {
        denied(&d).iter().all(|(p, _)| *p != banned4 && *p != banned6)
    });
    drop(f2b);
    drop(d);
}
