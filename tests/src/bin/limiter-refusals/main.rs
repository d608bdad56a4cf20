//! `limiter-refusals` (run by `cargo xtask bench --refusals`): who pays for a refusal that says why. Sources that
//! each hold their one allowed connection to a real Postfix try again; every attempt over the limit is answered with
//! a 421, either by `limiter`'s responder (`action = "respond"`, Postfix's own limits off) or by Postfix itself
//! (`smtpd_client_connection_count_limit = 1`). Two measurements per side:
//!
//! - at a fixed load (each source twice a second, within the responder's default budgets): the CPU time (scheduler
//!   run time, all threads) the daemon and the Postfix processes spent per answered attempt;
//! - sustained: the answering side (the daemon with its budgets lifted through `[responder]`, or every Postfix
//!   process) pinned to one CPU with `taskset`, clients pinned to another connecting as fast as they can for a fixed
//!   time; complete 421 lines read per second, the answering side's CPU per 421 and how busy its CPU was.
//!
//! The kernel's share (XDP, the handshake, in softirq) is in neither CPU figure; it is the same handshake in both,
//! and `cargo xtask bench` times it (`limiter_respond`).

use std::{
    collections::HashMap,
    error::Error,
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
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
    cli::{Scratch, path_str},
    netns::{self, Attempt, Daemon, Netns, Pair, Spawn},
    postfix::Postfix,
};
use limiter_user as _;
#[cfg(test)]
use object as _;
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
/// Client threads of the sustained measurement, each connecting again as soon as its last attempt closed.
const DRIVERS: usize = 64;
/// The CPU the answering side is pinned to in the sustained measurement, and the clients' CPU.
const ANSWER_CPU: usize = 1;
const CLIENT_CPU: usize = 0;
const _: () = assert!(CLIENT_CPU < ANSWER_CPU);
/// How long the sustained measurement drives before it starts counting (Postfix forks its smtpd processes).
const WARM_UP: Duration = Duration::from_secs(2);
/// The responder's budgets in the sustained measurement: lifted far above what one core answers, so that the core
/// is the limit.
const LIFTED: &str = "[responder]\nrate = 1000000\nburst = 1000000\nper_source_rate = 1000000\n\
                      per_source_burst = 1000000\nmax_connections = 4096\n";

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

/// Threads of user processes outside `ns` other than this one (a build, say) running now: what competes with the
/// measurement for the CPUs. Sampled, since a compiler's processes come and go between two readings of run time.
fn others_running(ns: &Path) -> u64 {
    let want = format!("net:[{}]", std::fs::metadata(ns).map_or(0, |m| std::os::unix::fs::MetadataExt::ino(&m)));
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut running = 0;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        // Kernel threads have no command line; the softirq work they run is the measured traffic's.
        if pid == me
            || std::fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |c| c.is_empty())
            || std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.to_string_lossy() == want)
        {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        running += tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            // The state follows the command's closing parenthesis.
            .filter(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('R')))
            .count() as u64;
    }
    running
}

/// Samples [`others_running`] for the namespace at `ns` every 100 ms, from CPU [`CLIENT_CPU`], until `stop`;
/// returns the mean number of such threads running, in hundredths (100: one CPU's worth).
fn sample_others(ns: std::path::PathBuf, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        pin_me(CLIENT_CPU);
        let (mut sum, mut n) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            sum += others_running(&ns);
            n += 1;
            thread::sleep(Duration::from_millis(100));
        }
        (sum * 100).checked_div(n).unwrap_or(0)
    })
}

/// Each source's one allowed connection, greeted by Postfix, to hold for a phase.
fn hold(pair: &Pair, sources: &[IpAddr]) -> Result<Vec<TcpStream>> {
    let dst = SocketAddr::new(pair.server_v4(), PORT);
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
    Ok(held)
}

/// Splits the CPU time spent in the server namespace between `before` and `after` into the daemon's (`daemon`)
/// and the rest's (Postfix).
fn split(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>, daemon: Option<u32>) -> (u64, u64) {
    let (mut daemon_ns, mut postfix_ns) = (0, 0);
    for (pid, ns) in after {
        let d = ns.saturating_sub(before.get(pid).copied().unwrap_or(0));
        if Some(*pid) == daemon { daemon_ns += d } else { postfix_ns += d }
    }
    (daemon_ns, postfix_ns)
}

/// One configuration: holds, then `seconds` of attempts; returns (answered, other, daemon CPU ns, Postfix CPU ns).
fn measure(pair: &Pair, sources: &[IpAddr], daemon: Option<u32>, seconds: u32) -> Result<(u64, u64, u64, u64)> {
    let dst = SocketAddr::new(pair.server_v4(), PORT);
    let held = hold(pair, sources)?;
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
    let (daemon_ns, postfix_ns) = split(&before, &after, daemon);
    Ok((tally.answered.load(Ordering::Relaxed), tally.other.load(Ordering::Relaxed), daemon_ns, postfix_ns))
}

/// What the sustained measurement saw on one side.
struct Sustained {
    /// Complete 421 lines read within the window, and attempts that ended otherwise.
    answered: u64,
    other: u64,
    daemon_ns: u64,
    postfix_ns: u64,
    /// Busy time of [`ANSWER_CPU`] and [`CLIENT_CPU`] (all but idle and iowait, softirq included), ns.
    cpu_busy_ns: u64,
    client_cpu_busy_ns: u64,
    /// Other processes running on the host, in hundredths of a CPU ([`sample_others`]).
    others: u64,
    window: Duration,
}

/// Busy time of one CPU so far (`/proc/stat`: all but idle and iowait), ns.
fn cpu_busy(cpu: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&name)) else { return 0 };
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    total.saturating_sub(idle) * 1_000_000_000 / hz
}

/// Pins the calling thread to `cpu`.
fn pin_me(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it; the call reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

/// Pins every thread of process `pid` to `cpu` (`taskset -a`); its later children inherit it.
fn taskset(pid: u32, cpu: usize) -> Result<()> {
    let out = Command::new("taskset").args(["-a", "-c", "-p", &cpu.to_string(), &pid.to_string()]).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("taskset -a -c -p {cpu} {pid}: {}", String::from_utf8_lossy(&out.stderr).trim()).into())
    }
}

/// Holds, then [`DRIVERS`] clients pinned to [`CLIENT_CPU`] attempt as fast as they can: [`WARM_UP`], then
/// `seconds` counted.
fn sustained(pair: &Pair, sources: &[IpAddr], daemon: Option<u32>, seconds: u32) -> Result<Sustained> {
    let dst = SocketAddr::new(pair.server_v4(), PORT);
    let held = hold(pair, sources)?;
    rps(&pair.server, &pair.server_if, Some(ANSWER_CPU));
    rps(&pair.client, &pair.client_if, Some(CLIENT_CPU));
    // 0: warming up, 1: counting, 2: stopping.
    let (phase, tally) = (Arc::new(AtomicU8::new(0)), Arc::new(Tally::default()));
    let sources = Arc::new(sources.to_vec());
    let workers: Vec<_> = (0..DRIVERS)
        .map(|i| {
            let (phase, tally, sources, path) =
                (Arc::clone(&phase), Arc::clone(&tally), Arc::clone(&sources), pair.client.path());
            thread::spawn(move || {
                pin_me(CLIENT_CPU);
                netns::enter(&path);
                let mut k = i;
                while phase.load(Ordering::Relaxed) < 2 {
                    let src = sources[k % sources.len()];
                    k += DRIVERS;
                    let mut line = Vec::new();
                    if let Attempt::Connected(mut s) = netns::connect(src, dst, TIMEOUT) {
                        s.set_read_timeout(Some(TIMEOUT)).ok();
                        let _ = s.read_to_end(&mut line);
                    }
                    if phase.load(Ordering::Relaxed) == 1 {
                        let whole = line.starts_with(b"421 ") && line.ends_with(b"\r\n");
                        let c = if whole { &tally.answered } else { &tally.other };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    thread::sleep(WARM_UP);
    let busy = || (cpu_busy(ANSWER_CPU), cpu_busy(CLIENT_CPU));
    let (before, busy_before) = (cpu_by_pid(&pair.server), busy());
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_others(pair.server.path(), Arc::clone(&stop_sampling));
    let started = Instant::now();
    phase.store(1, Ordering::Relaxed);
    thread::sleep(Duration::from_secs(u64::from(seconds)));
    phase.store(2, Ordering::Relaxed);
    let (after, busy_after, window) = (cpu_by_pid(&pair.server), busy(), started.elapsed());
    stop_sampling.store(true, Ordering::Relaxed);
    let others = sampler.join().map_err(|_| "sampler panicked")?;
    for w in workers {
        w.join().map_err(|_| "attempt worker panicked")?;
    }
    drop(held);
    rps(&pair.server, &pair.server_if, None);
    rps(&pair.client, &pair.client_if, None);
    let (daemon_ns, postfix_ns) = split(&before, &after, daemon);
    Ok(Sustained {
        answered: tally.answered.load(Ordering::Relaxed),
        other: tally.other.load(Ordering::Relaxed),
        daemon_ns,
        postfix_ns,
        cpu_busy_ns: busy_after.0.saturating_sub(busy_before.0),
        client_cpu_busy_ns: busy_after.1.saturating_sub(busy_before.1),
        others,
        window,
    })
}

/// Has the network stack of `ns` take what `iface` receives on `cpu` (RPS), or where it arrives (`None`): the
/// veth's NAPI runs on the sender's CPU, so without it the server's half of every handshake would run on the
/// clients' CPU.
fn rps(ns: &Netns, iface: &str, cpu: Option<usize>) {
    // `ip netns exec` mounts the namespace's own sysfs, where its veth is.
    let mask = cpu.map_or(0, |c| 1u64 << c);
    let write = format!("echo {mask:x} > /sys/class/net/{iface}/queues/rx-0/rps_cpus");
    netns::sh(&["ip", "netns", "exec", &ns.name, "sh", "-c", &write]);
}

/// The pids of the processes in `ns`.
fn pids_in(ns: &Netns) -> Vec<u32> {
    cpu_by_pid(ns).into_keys().collect()
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

/// us per 421 of `ns`, NaN without a 421.
#[expect(clippy::cast_precision_loss, reason = "small counts")]
fn per(ns: u64, answered: u64) -> f64 {
    if answered == 0 { f64::NAN } else { ns as f64 / answered as f64 / 1000.0 }
}

/// `limiter run` with SMTP on [`PORT`] (one connection per source, over-limit attempts answered), with `responder`
/// as its `[responder]` table; idle entries reclaimed every 30 s as in production (the tests' 200 ms would be the
/// daemon's work too).
fn responder(pair: &Pair, dir: &Scratch, responder: &str) -> Daemon {
    let config = dir.write(
        "limiter.toml",
        &format!(
            "interfaces = [\"{}\"]\n\n[[service]]\nname = \"smtp\"\nports = [{PORT}]\nmax_conn_per_source = 1\n\
             action = \"respond\"\n\n{responder}",
            pair.server_if
        ),
    );
    let spawn = Spawn { env: vec![("LIMITER_RECLAIM_MS".into(), "30000".into())], ..Spawn::default() };
    Daemon::start_with(&pair.server, &["--config", path_str(&config)], spawn)
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
    if thread::available_parallelism().map_or(1, std::num::NonZero::get) <= ANSWER_CPU {
        return Err(format!(
            "needs CPUs {CLIENT_CPU} and {ANSWER_CPU}: the clients and the answering side each get one"
        )
        .into());
    }
    let pair = Pair::new();
    let sources: Vec<IpAddr> = (0..SOURCES).map(|i| pair.add_client_v4(FIRST_HOST + i)).collect();
    let postfix = Postfix::start(&pair.server, PORT);
    // More smtpd processes than the held connections and the attempts need, none exiting within a phase (its CPU
    // would be lost from the count).
    postconf(&postfix, &pair.server, &["default_process_limit = 400", "max_use = 100000"]);
    let dir = Scratch::new();

    let mut daemon = responder(&pair, &dir, "");
    let pid = daemon.child.as_ref().map(std::process::Child::id);
    let fixed_responder = measure(&pair, &sources, pid, seconds)?;
    daemon.stop();
    drop(daemon);
    thread::sleep(Duration::from_secs(1));

    let mut daemon = responder(&pair, &dir, LIFTED);
    let pid = daemon.child.as_ref().map(std::process::Child::id).ok_or("no daemon process")?;
    taskset(pid, ANSWER_CPU)?;
    let sustained_responder = sustained(&pair, &sources, Some(pid), seconds)?;
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
    let fixed_postfix = measure(&pair, &sources, None, seconds)?;
    // Every Postfix process (master, anvil, the smtpd it has forked); the ones it forks later inherit the master's.
    for pid in pids_in(&pair.server) {
        if let Err(e) = taskset(pid, ANSWER_CPU)
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            return Err(e);
        }
    }
    let sustained_postfix = sustained(&pair, &sources, None, seconds)?;
    drop(postfix);
    report_fixed(seconds, fixed_responder, fixed_postfix)?;
    report_sustained(seconds, &sustained_responder, &sustained_postfix)
}

/// The fixed-load table: (answered, other, daemon CPU ns, Postfix CPU ns) of each side.
fn report_fixed(seconds: u32, responder: (u64, u64, u64, u64), postfix: (u64, u64, u64, u64)) -> Result<()> {
    println!(
        "At a fixed load: {SOURCES} sources each hold 1 connection to Postfix on port {PORT} and try again every {} ms \
         for {seconds} s (within the responder's default budgets); CPU: scheduler run time of the daemon and of every \
         Postfix process in the server namespace\n",
        GAP.as_millis()
    );
    println!(
        "{:<34} {:>9} {:>7} {:>10} {:>16} {:>18}",
        "who answers", "421 read", "other", "421 per s", "daemon us/421", "Postfix us/421"
    );
    let fixed = |name: &str, (answered, other, daemon_ns, postfix_ns): (u64, u64, u64, u64)| {
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let rate = answered as f64 / f64::from(seconds);
        println!(
            "{name:<34} {answered:>9} {other:>7} {rate:>10.0} {:>16.1} {:>18.1}",
            per(daemon_ns, answered),
            per(postfix_ns, answered)
        );
        if answered == 0 { Err(format!("{name}: no attempt was answered with a 421")) } else { Ok(()) }
    };
    fixed("limiter respond (responder's 421)", responder)?;
    fixed("Postfix connection_count_limit", postfix)?;
    println!(
        "\nCPU per 421 of the side that answers: Postfix's own limit {:.1}x the responder's",
        per(postfix.3, postfix.0) / per(responder.2, responder.0)
    );
    Ok(())
}

/// The sustained table and its ratios.
fn report_sustained(seconds: u32, responder: &Sustained, postfix: &Sustained) -> Result<()> {
    println!(
        "\nSustained: the answering side pinned to CPU {ANSWER_CPU} (taskset: the daemon, its budgets lifted by \
         [responder] to 1,000,000 a second; or every Postfix process) with the server namespace's network stack \
         (RPS), {DRIVERS} clients pinned to CPU {CLIENT_CPU} connecting as fast as they can from the same {SOURCES} sources for {seconds} s (after {} s of warm-up); a \
         421 counts when its whole line (CRLF) was read\n",
        WARM_UP.as_secs()
    );
    println!(
        "{:<34} {:>9} {:>7} {:>10} {:>14} {:>15} {:>12} {:>13} {:>10} {:>10} {:>8}",
        "who answers",
        "421 read",
        "other",
        "421 per s",
        "daemon us/421",
        "Postfix us/421",
        format!("CPU {ANSWER_CPU} us/421"),
        "answerer CPU",
        format!("CPU {ANSWER_CPU} busy"),
        format!("CPU {CLIENT_CPU} busy"),
        "others"
    );
    let row = |name: &str, s: &Sustained, answerer_ns: u64| {
        let secs = s.window.as_secs_f64();
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let (rate, share) = (s.answered as f64 / secs, answerer_ns as f64 / 1e9 / secs);
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let busy = |ns: u64| ns as f64 / 1e9 / secs * 100.0;
        println!(
            "{name:<34} {:>9} {:>7} {rate:>10.0} {:>14.1} {:>15.1} {:>12.1} {:>12.0}% {:>9.0}% {:>9.0}% {:>7}%",
            s.answered,
            s.other,
            per(s.daemon_ns, s.answered),
            per(s.postfix_ns, s.answered),
            per(s.cpu_busy_ns, s.answered),
            share * 100.0,
            busy(s.cpu_busy_ns),
            busy(s.client_cpu_busy_ns),
            s.others
        );
        if s.others > 5 {
            println!("  warning: other processes ran during this measurement; its figures are disturbed");
        }
        if s.answered == 0 { Err(format!("{name}: no attempt was answered with a 421")) } else { Ok(rate) }
    };
    let r = row("limiter respond (responder's 421)", responder, responder.daemon_ns)?;
    let p = row("Postfix connection_count_limit", postfix, postfix.postfix_ns)?;
    println!(
        "\nSustained 421 per second on one CPU: the responder {:.1}x Postfix's own limit; CPU per 421 of the side that \
         answers: Postfix {:.1}x the responder; Postfix's CPU per attempt the responder refused: {:.1} us\n\
         CPU {ANSWER_CPU} us/421: all the work of that CPU per 421 (the answering side and the kernel's share there); \
         answerer CPU: the answering processes' run time over the window (100% = the whole pinned CPU; without IRQ \
         time accounting it includes the softirq work that interrupted them); CPU N busy: everything that ran on it \
         (RPS puts what the server namespace receives on CPU {ANSWER_CPU}, what the clients receive on CPU \
         {CLIENT_CPU}; XDP runs on the sender's CPU); others: user processes outside the measurement running, sampled \
         every 100 ms (100% = a CPU's worth)",
        r / p,
        per(postfix.postfix_ns, postfix.answered) / per(responder.daemon_ns, responder.answered),
        per(responder.postfix_ns, responder.answered)
    );
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
