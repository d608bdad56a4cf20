//! `limiter-refusals` (run by `cargo xtask bench --refusals`): who pays for a refusal that says why. Sources that
//! each hold their one allowed connection to a real Postfix try again twice a second; every attempt over the limit is
//! answered with a 421, either by `limiter`'s responder (`--action respond`, Postfix's own limits off) or by Postfix
//! itself (`smtpd_client_connection_count_limit = 1`). Reported per configuration: 421 lines read per second, and
//! the CPU time (scheduler run time, all threads) the responder daemon and the Postfix processes spent per answered
//! attempt. The kernel's share (XDP, the handshake, in softirq) is in neither figure; it is the same handshake in
//! both, and `cargo xtask bench` times it (`limiter_respond`).

use std::{
    collections::HashMap,
    error::Error,
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya as _;
// Dependencies of the library's helpers and of the tests, unused here.
#[cfg(test)]
use jsonschema as _;
use limiter_common as _;
use limiter_tests::{
    netns::{self, Attempt, Daemon, Netns, Pair},
    postfix::Postfix,
};
use limiter_user as _;
use serde_json as _;
use socket2 as _;

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

const PORT: u16 = 2525;
/// Sources, each holding one connection and trying again every `GAP`: within the responder's per-source budget
/// (2 answers a second, burst 4) and its total (1,000 a second), so every attempt is answered in both
/// configurations and the figures compare the same work.
const SOURCES: u8 = 100;
const FIRST_HOST: u8 = 100;
const GAP: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    other: AtomicU64,
}

/// Scheduler run time (ns) of every thread of every process in `ns`, by pid.
fn cpu_by_pid(ns: &Netns) -> HashMap<u32, u64> {
    let want = std::fs::metadata(ns.path()).map_or(0, |m| std::os::unix::fs::MetadataExt::ino(&m));
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let same = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|l| l.to_string_lossy() == format!("net:[{want}]"));
        if !same {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        let ns: u64 = tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        out.insert(pid, ns);
    }
    out
}

/// One configuration: holds, then `seconds` of attempts; returns (answered, other, daemon CPU ns, Postfix CPU ns).
fn measure(pair: &Pair, sources: &[IpAddr], daemon: Option<u32>, seconds: u32) -> Result<(u64, u64, u64, u64)> {
    let dst = SocketAddr::new(pair.server_v4(), PORT);
    // Each source's one allowed connection, greeted, held for the phase.
    let held: Vec<TcpStream> = sources
        .iter()
        .map(|&src| match pair.client.run(move || netns::connect(src, dst, TIMEOUT)) {
            Attempt::Connected(mut s) => {
                s.set_read_timeout(Some(TIMEOUT)).ok();
                let mut b = [0u8; 256];
                match s.read(&mut b) {
                    Ok(n) if b[..n].starts_with(b"220") => Ok(s),
                    other => Err(format!("{src}'s held connection got {other:?}, not a 220 greeting")),
                }
            }
            other => Err(format!("{src} could not open its allowed connection: {other:?}")),
        })
        .collect::<Result<_, _>>()?;
    thread::sleep(Duration::from_millis(500));
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let before = cpu_by_pid(&pair.server);
    let workers: Vec<_> = sources
        .iter()
        .map(|&src| {
            let (stop, tally, path) = (Arc::clone(&stop), Arc::clone(&tally), pair.client.path());
            thread::spawn(move || {
                netns::enter(&path);
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let mut line = Vec::new();
                    if let Attempt::Connected(mut s) = netns::connect(src, dst, TIMEOUT) {
                        s.set_read_timeout(Some(TIMEOUT)).ok();
                        let _ = s.read_to_end(&mut line);
                    }
                    let c = if line.starts_with(b"421") { &tally.answered } else { &tally.other };
                    c.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(GAP.saturating_sub(start.elapsed()));
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(u64::from(seconds)));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().map_err(|_| "attempt worker panicked")?;
    }
    let after = cpu_by_pid(&pair.server);
    drop(held);
    let (mut daemon_ns, mut postfix_ns) = (0, 0);
    for (pid, ns) in &after {
        let d = ns.saturating_sub(before.get(pid).copied().unwrap_or(0));
        if Some(*pid) == daemon { daemon_ns += d } else { postfix_ns += d }
    }
    Ok((tally.answered.load(Ordering::Relaxed), tally.other.load(Ordering::Relaxed), daemon_ns, postfix_ns))
}

fn postconf(postfix: &Postfix, ns: &Netns, settings: &[&str]) {
    let dir = postfix.dir.to_string_lossy().into_owned();
    for s in settings {
        let out = Command::new("/usr/sbin/postconf").args(["-c", &dir, "-e", s]).output();
        assert!(out.as_ref().is_ok_and(|o| o.status.success()), "postconf -e {s}: {out:?}");
    }
    ns.exec(&["script", "-qec", &format!("/usr/sbin/postfix -c {dir} reload"), "/dev/null"]);
    thread::sleep(Duration::from_secs(2));
}

fn run() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let seconds: u32 = if quick { 3 } else { 15 };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces, XDP, Postfix)".into());
    }
    if !Path::new("/usr/sbin/postfix").exists() || !netns::limiter_bin().exists() {
        return Err("needs Postfix and LIMITER_BIN (run it with `cargo xtask bench --refusals`)".into());
    }
    let pair = Pair::new();
    let sources: Vec<IpAddr> = (0..SOURCES).map(|i| pair.add_client_v4(FIRST_HOST + i)).collect();
    let postfix = Postfix::start(&pair.server, PORT);
    // More smtpd processes than the held connections and the attempts need, none exiting within a phase (its CPU
    // would be lost from the count).
    postconf(&postfix, &pair.server, &["default_process_limit = 400", "max_use = 100000"]);
    println!(
        "{SOURCES} sources each hold 1 connection to Postfix on port {PORT} and try again every {} ms for {seconds} s; \
         CPU: scheduler run time of the daemon and of every Postfix process in the server namespace\n",
        GAP.as_millis()
    );
    println!(
        "{:<34} {:>9} {:>7} {:>10} {:>16} {:>18} {:>20}",
        "who answers", "421 read", "other", "421 per s", "daemon us/421", "Postfix us/421", "421 per core-second"
    );
    let report = |name: &str, (answered, other, daemon_ns, postfix_ns): (u64, u64, u64, u64)| {
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let per = |ns: u64| if answered == 0 { f64::NAN } else { ns as f64 / answered as f64 / 1000.0 };
        let answerer = if name.starts_with("limiter") { per(daemon_ns) } else { per(postfix_ns) };
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let rate = answered as f64 / f64::from(seconds);
        println!(
            "{name:<34} {answered:>9} {other:>7} {rate:>10.0} {:>16.1} {:>18.1} {:>20.0}",
            per(daemon_ns),
            per(postfix_ns),
            1e6 / answerer
        );
        if answered == 0 { Err(format!("{name}: no attempt was answered with a 421")) } else { Ok(()) }
    };

    let mut daemon = Daemon::start(
        &pair.server,
        &[
            "--iface",
            &pair.server_if,
            "--port",
            &PORT.to_string(),
            "--max-conn-per-source",
            "1",
            "--action",
            "respond",
            "--protocol",
            "smtp",
        ],
    );
    let pid = daemon.child.as_ref().map(std::process::Child::id);
    let responder = measure(&pair, &sources, pid, seconds)?;
    daemon.stop();
    drop(daemon);
    thread::sleep(Duration::from_secs(1));

    postconf(
        &postfix,
        &pair.server,
        &[
            "smtpd_client_connection_count_limit = 1",
            // mynetworks (the test nets) are exempt by default.
            "smtpd_client_event_limit_exceptions =",
        ],
    );
    let own = measure(&pair, &sources, None, seconds)?;
    report("limiter respond (responder's 421)", responder)?;
    report("Postfix connection_count_limit", own)?;
    println!(
        "\n421 per core-second: 1 s / the answering side's CPU per 421 (the responder's budget caps what it answers at \
         1,000 a second, and the kernel steers at most 640 a second per CPU, so its rate here is the offered load)"
    );
    drop(postfix);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limiter-refusals: {e}");
            ExitCode::FAILURE
        }
    }
}
