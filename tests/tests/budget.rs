//! One budget across services: the config's top-level `max_conn_per_source`
//! counts a source's connections over every service together, besides each
//! service's own limit, exactly under bursts spread over CPUs; allow
//! entries replace it with their own (`max_conn_all_services`); exempt
//! sources stay exempt; `status`, `top` and `explain` show the count.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::{Scratch, limiter, path_str},
    netns::{Attempt, Daemon, Pair, connect, streams, tally},
    patience, privileged, require,
};

const SMTP: u16 = 2525;
const IMAP: u16 = 2143;
const WAIT: Duration = Duration::from_secs(2);

/// SMTP and IMAP, 4 connections per source each, with `top` at the top of
/// the config and `allow` after the services.
fn config(iface: &str, top: &str, allow: &str) -> String {
    format!(
        "interfaces = [\"{iface}\"]\n{top}\n\n[[service]]\nname = \"smtp\"\nports = [{SMTP}]\naction = \
         \"reset\"\nmax_conn_per_source = 4\n\n[[service]]\nname = \"imap\"\nports = [{IMAP}]\naction = \
         \"reset\"\nmax_conn_per_source = 4\n{allow}"
    )
}

/// `per_port` attempts from `src` to each port, all started at one instant
/// (one thread each, pinned round-robin to the CPUs, so the SYNs are
/// decided on every CPU at once).
fn simultaneous(pair: &Pair, src: IpAddr, per_port: &[(u16, usize)]) -> Vec<(u16, Attempt)> {
    let dst = pair.server_v4();
    let ports: Vec<u16> = per_port.iter().flat_map(|&(p, n)| std::iter::repeat_n(p, n)).collect();
    pair.client.run(move || {
        let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let barrier = Arc::new(Barrier::new(ports.len()));
        let threads: Vec<_> = ports
            .into_iter()
            .enumerate()
            .map(|(i, port)| {
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    pin(i % cpus);
                    barrier.wait();
                    (port, connect(src, SocketAddr::new(dst, port), WAIT))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("connect thread")).collect()
    })
}

/// The attempts without their ports.
fn only(got: Vec<(u16, Attempt)>) -> Vec<Attempt> {
    got.into_iter().map(|(_, a)| a).collect()
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; the calls write only into it and
    // set this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

/// Established connections of each service (smtp, imap), as `status` reports them.
fn per_service(d: &Daemon) -> (u64, u64) {
    let s = d.status_json().expect("status");
    let n = |i: usize| s["services"][i]["connections"].as_u64().expect("connections");
    (n(0), n(1))
}

fn wait_total(d: &Daemon, want: u64) {
    let start = Instant::now();
    loop {
        let (a, b) = per_service(d);
        if a + b == want {
            return;
        }
        assert!(start.elapsed() < patience(WAIT), "connections stayed at {a} + {b}, want {want}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn four_and_four_attempts_get_exactly_five_in_every_run() {
    require!(privileged());
    let pair = Pair::new();
    let (_smtp, _imap) = (pair.listen(SMTP), pair.listen(IMAP));
    let src = pair.add_client_v4(2);
    let scratch = Scratch::new();
    let cfg = scratch.write("limiter.toml", &config(&pair.server_if, "max_conn_per_source = 5", ""));
    let d = Daemon::start(&pair.server, &["--config", path_str(&cfg)]);

    for run in 0..8 {
        let (ports, attempts): (Vec<u16>, Vec<Attempt>) =
            simultaneous(&pair, src, &[(SMTP, 4), (IMAP, 4)]).into_iter().unzip();
        let t = tally(&attempts);
        assert_eq!((t.connected, t.refused, t.timed_out, t.other), (5, 3, 0, 0), "run {run}: {t:?}");
        wait_total(&d, 5);
        let (smtp, imap) = per_service(&d);
        assert!(smtp <= 4 && imap <= 4, "run {run}: each service within its own 4: {smtp} + {imap}");

        if run == 0 {
            // What the admin sees: status, top and explain name the budget and the count.
            let s = d.status_json().expect("status");
            assert_eq!(s["all_services"]["max_conn_per_source"], 5, "{s}");
            assert_eq!((&s["all_services"]["sources"], &s["all_services"]["at_limit"]), (&1.into(), &1.into()));
            let top = d.client_json(&["top", "--json"]);
            for row in top["sources"].as_array().expect("rows") {
                assert_eq!((row["all_services"].as_u64(), row["all_services_limit"].as_u64()), (Some(5), Some(5)));
            }
            let e = d.client_json(&["explain", &src.to_string(), "--json"]);
            assert_eq!(e["all_services"]["max_conn_per_source"], 5, "{e}");
            assert_eq!(e["all_services"]["connections"], 5, "{e}");
            for svc in e["services"].as_array().expect("services") {
                assert_eq!(svc["verdict"], "refused_concurrency", "the budget refuses on every service: {e}");
            }
            let text = limiter(&d, &["explain", &src.to_string()]);
            assert!(text.stdout.contains("all services: 5/5 connections"), "{}", text.stdout);
            assert!(text.stdout.contains("at its connection limit over all services"), "{}", text.stdout);
        }

        // Closing one lets exactly one more in, on either service.
        let mut held: Vec<_> = ports.into_iter().zip(attempts).filter(|(_, a)| a.is_connected()).collect();
        let closed_port = held.remove(run % held.len()).0;
        wait_total(&d, 4);
        let again = only(simultaneous(&pair, src, &[(SMTP, 4), (IMAP, 4)]));
        let t = tally(&again);
        assert_eq!(t.connected, 1, "run {run}: after closing one on port {closed_port}: {t:?}");
        wait_total(&d, 5);
        drop(again);
        drop(held);
        wait_total(&d, 0);
    }
    let s = d.status_json().expect("status");
    let refused: u64 = (0..2).map(|i| s["services"][i]["counters"]["refused_concurrency"].as_u64().unwrap_or(0)).sum();
    assert_eq!(refused, 8 * (3 + 7), "every refusal counted as a connection refusal: {s}");
    let log = d.log_text();
    assert!(log.contains("too many connections over all services (5 established, limit 5)"), "{log}");
}

#[test]
fn allow_entries_set_their_own_budget_and_exempt_sources_stay_exempt() {
    require!(privileged());
    let pair = Pair::new();
    let (_smtp, _imap) = (pair.listen(SMTP), pair.listen(IMAP));
    let (partner, office, other) = (pair.add_client_v4(10), pair.add_client_v4(20), pair.add_client_v4(30));
    let allow = format!(
        "\n[[allow]]\nprefix = \"{partner}\"\nmax_conn_per_source = 4\nmax_conn_all_services = 7\n\n[[allow]]\nprefix \
         = \"{office}\"\n"
    );
    let scratch = Scratch::new();
    let cfg = scratch.write("limiter.toml", &config(&pair.server_if, "max_conn_per_source = 5", &allow));
    let d = Daemon::start(&pair.server, &["--config", path_str(&cfg)]);

    let got = only(simultaneous(&pair, partner, &[(SMTP, 4), (IMAP, 4)]));
    assert_eq!(tally(&got).connected, 7, "its own 7");
    let got2 = only(simultaneous(&pair, office, &[(SMTP, 6), (IMAP, 6)]));
    assert_eq!(tally(&got2).connected, 12, "exempt");
    let got3 = only(simultaneous(&pair, other, &[(SMTP, 4), (IMAP, 4)]));
    assert_eq!(tally(&got3).connected, 5, "the config's 5");
    let e = d.client_json(&["explain", &partner.to_string(), "--json"]);
    assert_eq!((&e["all_services"]["max_conn_per_source"], &e["all_services"]["connections"]), (&7.into(), &7.into()));

    // A reload that removes the budget: each service's own 4 alone.
    scratch.write("limiter.toml", &config(&pair.server_if, "", &allow));
    let out = limiter(&d, &["reload"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let fresh = pair.add_client_v4(40);
    let more = only(simultaneous(&pair, fresh, &[(SMTP, 4), (IMAP, 4)]));
    assert_eq!(tally(&more).connected, 8, "no budget: 4 + 4");
    assert!(d.status_json().expect("status")["all_services"].is_null(), "no budget, no figures");
    // Setting it again applies to what is already held (counted all along):
    // 8 and 5 held, at or over 5, refused on either service.
    scratch.write("limiter.toml", &config(&pair.server_if, "max_conn_per_source = 5", &allow));
    assert_eq!(limiter(&d, &["reload"]).code, Some(0));
    for src in [fresh, other] {
        let t = tally(&only(simultaneous(&pair, src, &[(SMTP, 1), (IMAP, 1)])));
        assert_eq!(t.connected, 0, "{src} already at or over the budget: {t:?}");
    }
    // A run-time allow entry sets its own budget too.
    let rt = pair.add_client_v4(50);
    let out =
        limiter(&d, &["allow", "add", &rt.to_string(), "--max-conn-per-source", "4", "--max-conn-all-services", "6"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("max 6 over all services"), "{out:?}");
    let rt_held = only(simultaneous(&pair, rt, &[(SMTP, 4), (IMAP, 4)]));
    assert_eq!(tally(&rt_held).connected, 6, "the run-time entry's 6");
    let e = d.client_json(&["explain", &rt.to_string(), "--json"]);
    assert_eq!(e["all_services"]["max_conn_per_source"], 6, "{e}");
    assert_eq!(limiter(&d, &["deny", "add", "198.18.0.1", "--max-conn-all-services", "3"]).code, Some(2));
    let s = d.status_json().expect("status");
    assert_eq!(s["all_services"]["at_limit"], 4, "partner 7 of its 7, rt 6 of 6, fresh 8 and other 5 of 5: {s}");
    drop((streams(more), got, got2, got3, rt_held));
}

#[test]
fn a_zero_or_bad_budget_is_refused_with_one_line() {
    require!(privileged());
    let scratch = Scratch::new();
    for (top, allow, what) in [
        ("max_conn_per_source = 0", "", "max_conn_per_source = 0 (over all services) would refuse every source"),
        ("max_conn_per_source = -1", "", "max_conn_per_source"),
        ("", "\n[[allow]]\nprefix = \"198.18.0.1\"\nmax_conn_all_services = 0\n", "max_conn_all_services = 0"),
        ("", "\n[[allow]]\nprefix = \"198.18.0.1\"\nmax_conn_all_service = 3\n", "max_conn_all_service"),
    ] {
        let cfg = scratch.write("limiter.toml", &config("lo", top, allow));
        let out = limiter_tests::cli::limiter_at(
            std::path::Path::new("/nonexistent/limiter.sock"),
            &["check-config", path_str(&cfg)],
        );
        assert_eq!(out.code, Some(2), "{what}: {}{}", out.stdout, out.stderr);
        // One problem line (`FILE:LINE: ...`), then the count.
        let problems: Vec<&str> =
            out.stderr.lines().filter(|l| !l.starts_with("limiter:") && l.contains("limiter.toml:")).collect();
        assert_eq!(problems.len(), 1, "one line for {what}: {}", out.stderr);
        assert!(problems[0].contains(what), "{what}: {}", out.stderr);
    }
}
