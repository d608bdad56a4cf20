//! `limiter-control` (run by `cargo xtask bench --control`): what the control plane costs an admin, with the
//! built-in default policy and with 100,000 list entries in the config (a mix of lengths, IPv4 and IPv6, as an
//! imported block list has them), all in a private network namespace pair:
//!
//! - start-up: `limiter run` started to `READY=1` on a notify socket (what `systemctl start` waits for), cold (no
//!   pins) and warm (the pins of the run before, as after a restart);
//! - a list change: `limiter allow add` and `limiter deny add` of one host, then `del`, each as the admin's command
//!   (a process started per change) and as one request on the control socket (the daemon's share), p50 and p99;
//! - `limiter reload` of the unchanged config;
//! - memory: the kernel maps' memory (the `memlock` the kernel charges for each map the daemon holds) and the
//!   daemon's RSS, at the default map sizes and at 1,000,000 sources with the 100,000 entries.
//!
//! It prints each figure against its target (a list change <= 20 ms p99, reload <= 2 s, start-up <= 1 s with the
//! defaults) and, with `--json FILE`, writes them. It fails if a change or a reload is refused or a start never
//! becomes ready, never on a timing.

use std::{
    collections::HashSet,
    error::Error,
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::{UnixDatagram, UnixStream},
    path::{Path, PathBuf},
    process::{Child, ExitCode, Stdio},
    time::{Duration, Instant},
};

#[cfg(test)]
use jsonschema as _;
use limiter_tests::{
    cli::{Scratch, limiter_at, path_str},
    netns::{Daemon, Netns, Pair, Spawn},
};
use limiter_user as _;
#[cfg(test)]
use object as _;
use socket2 as _;

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// The entries of the large config, and how many of them are allow entries.
const ENTRIES: usize = 100_000;
const ALLOW: usize = 1_024 + 600;
/// Sources the large maps are sized for.
const SOURCES: u32 = 1_000_000;

struct Args {
    quick: bool,
    json: Option<PathBuf>,
}

fn args() -> Result<Args> {
    let mut a = Args { quick: false, json: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--json" => a.json = Some(it.next().ok_or("--json needs a file")?.into()),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(a)
}

/// The large config's list entries: 65,152 IPv4 (60,000 hosts, 4,096 /29, 1,024 /28, 32 /24) and 34,848 IPv6
/// (30,000 /64, 4,000 /128, 848 /48), all inside 198.18.0.0/15 and `2001:db8::/32` and none in 198.18.224.0/19, where
/// the changes go. The /28s and every 50th /64 are allow entries with a limit of their own, the rest deny entries.
fn large_lists() -> String {
    let mut t = String::with_capacity(ENTRIES * 48);
    let mut n = 0;
    let mut entry = |t: &mut String, allow: bool, prefix: String| {
        n += 1;
        if allow {
            let _ = write!(t, "\n[[allow]]\nprefix = \"{prefix}\"\nmax_conn_per_source = 20\n");
        } else {
            let _ = write!(t, "\n[[deny]]\nprefix = \"{prefix}\"\n");
        }
    };
    for i in 0..60_000u32 {
        entry(&mut t, false, format!("198.19.{}.{}", i / 256, i % 256));
    }
    for i in 0..4_096u32 {
        let a = i * 8;
        entry(&mut t, false, format!("198.18.{}.{}/29", a / 256, a % 256));
    }
    for i in 0..1_024u32 {
        let a = 128 * 256 + i * 16;
        entry(&mut t, true, format!("198.18.{}.{}/28", a / 256, a % 256));
    }
    for i in 0..32u32 {
        entry(&mut t, false, format!("198.18.{}.0/24", 192 + i));
    }
    for i in 0..30_000u32 {
        entry(&mut t, i % 50 == 0, format!("2001:db8:1:{i:x}::/64"));
    }
    for i in 0..4_000u32 {
        entry(&mut t, false, format!("2001:db8:2::{:x}", i + 1));
    }
    for i in 0..848u32 {
        entry(&mut t, false, format!("2001:db8:{:x}::/48", 0x100 + i));
    }
    assert_eq!(n, ENTRIES);
    t
}

fn config(iface: &str, large: bool) -> String {
    let mut t = format!(
        "interfaces = [\"{iface}\"]\n\n[[service]]\nname = \"smtp\"\nports = [2525]\nmax_conn_per_source = 8\n"
    );
    if large {
        let _ = write!(t, "\n[maps]\nconnections = {SOURCES}\npending_slots = {}\n", SOURCES.next_power_of_two());
        t.push_str(&large_lists());
    }
    t
}

/// What a started daemon holds.
struct Start {
    maps_bytes: Vec<(String, u64)>,
    rss_bytes: u64,
}

/// Starts `d` with `args` and a notify socket; returns when `READY=1` came.
fn start(d: &Daemon, ns: &Netns, args: &[&str], scratch: &Scratch) -> Result<(Child, Duration)> {
    let path = scratch.0.join(format!("notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&d.log)?;
    let t = Instant::now();
    // The daemon as shipped: without the tests' 200 ms reclaim period.
    let mut child = d
        .command(ns, args)
        .env_remove("LIMITER_RECLAIM_MS")
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = sock.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
        {
            return Ok((child, t.elapsed()));
        }
        if let Some(status) = child.try_wait()? {
            return Err(format!("limiter run exited before READY=1 ({status}): {}", d.log_text()).into());
        }
        if t.elapsed() > Duration::from_mins(2) {
            let _ = child.kill();
            return Err(format!("no READY=1 within 120 s: {}", d.log_text()).into());
        }
    }
}

/// The kernel's memory charge for each map `pid` holds (`memlock` of each distinct map in its fdinfo), by name,
/// largest first.
fn maps_bytes(pid: u32) -> Vec<(String, u64)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return out };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name).map(str::trim)).and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:"))
            && seen.insert(id)
        {
            let name = u32::try_from(id)
                .ok()
                .and_then(|id| aya::maps::MapInfo::from_id(id).ok())
                .and_then(|info| info.name_as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("map {id}"));
            out.push((name, memlock));
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()))
        })
        .map_or(0, |kb: u64| kb * 1024)
}

fn stop(mut child: Child) -> Result<()> {
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("limiter run stopped with {status}").into());
    }
    Ok(())
}

/// `runs` cold starts (fresh pins each time) and `runs` warm ones (the same pins again); the figures of the last
/// warm one's memory.
fn starts(pair: &Pair, args: &[&str], runs: usize, scratch: &Scratch) -> Result<(Vec<Duration>, Vec<Duration>, Start)> {
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..runs {
        let d = Daemon::unstarted(Spawn::default());
        let (child, t) = start(&d, &pair.server, args, scratch)?;
        cold.push(t);
        stop(child)?;
        let (child, t) = start(&d, &pair.server, args, scratch)?;
        warm.push(t);
        // The maps and the daemon once it settled (its first reclaim and report rounds).
        std::thread::sleep(Duration::from_millis(500));
        last = Some(Start { maps_bytes: maps_bytes(child.id()), rss_bytes: rss_bytes(child.id()) });
        stop(child)?;
    }
    Ok((cold, warm, last.ok_or("no run")?))
}

/// One request on the control socket, as `limiter` sends it; the reply must be `ok`.
fn request(socket: &Path, line: &str) -> Result<Duration> {
    let t = Instant::now();
    let mut s = UnixStream::connect(socket)?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    let took = t.elapsed();
    if !reply.starts_with("{\"ok\"") {
        return Err(format!("{line} was answered {}", reply.trim()).into());
    }
    Ok(took)
}

fn command(socket: &Path, args: &[&str]) -> Result<Duration> {
    let t = Instant::now();
    let out = limiter_at(socket, args);
    let took = t.elapsed();
    if out.code != Some(0) {
        return Err(format!("limiter {args:?}: exit {:?}: {}", out.code, out.stderr.trim()).into());
    }
    Ok(took)
}

/// p50 and p99 of `v` (sorted here).
fn percentiles(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    let at = |q: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index"
        )]
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i]
    };
    (at(0.5), at(0.99))
}

fn median(v: &mut [Duration]) -> Duration {
    percentiles(v).0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `changes` list changes, half `allow`, half `deny`, each an add then a del of a host in 198.18.224.0/19; every
/// one timed. `raw`: as one control-socket request, else as the admin's command.
fn changes(socket: &Path, changes: usize, raw: bool) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(changes);
    for i in 0..changes / 2 {
        let list = if i % 2 == 0 { "allow" } else { "deny" };
        #[expect(clippy::cast_possible_truncation, reason = "bounded")]
        let host = format!("198.18.{}.{}", 224 + (i / 250) as u8, i % 250 + 1);
        if raw {
            times.push(request(socket, &format!(r#"{{"cmd":"list_add","list":"{list}","prefix":"{host}"}}"#))?);
            times.push(request(socket, &format!(r#"{{"cmd":"list_del","list":"{list}","prefix":"{host}"}}"#))?);
        } else {
            times.push(command(socket, &[list, "add", &host, "--comment", "bench"])?);
            times.push(command(socket, &[list, "del", &host])?);
        }
    }
    Ok(times)
}

struct World {
    name: &'static str,
    start_cold: Duration,
    start_warm: Duration,
    change_cmd: (Duration, Duration),
    change_raw: (Duration, Duration),
    reload: (Duration, Duration),
    maps_bytes: Vec<(String, u64)>,
    rss_bytes: u64,
    held: Option<Held>,
}

fn world(pair: &Pair, name: &'static str, large: bool, quick: bool) -> Result<World> {
    let scratch = Scratch::new();
    let path = scratch.write("limiter.toml", &config(&pair.server_if, large));
    let args = ["--config", path_str(&path)];
    let runs = if quick { 1 } else { 3 };
    let t = Instant::now();
    let (mut cold, mut warm, last) = starts(pair, &args, runs, &scratch)?;
    eprintln!("limiter-control: {name}: {runs} cold and warm starts in {:.1} s", t.elapsed().as_secs_f64());

    let d = Daemon::unstarted(Spawn::default());
    let (child, _) = start(&d, &pair.server, &args, &scratch)?;
    // The lists are in force, all of them.
    let status = d.status_json().ok_or("no status")?;
    let want = if large { (ALLOW, ENTRIES - ALLOW) } else { (0, 0) };
    let got = (status["lists"]["allow"].as_u64(), status["lists"]["deny"].as_u64());
    if got != (u64::try_from(want.0).ok(), u64::try_from(want.1).ok()) {
        return Err(format!("lists in force: {got:?} allow/deny entries, want {want:?}").into());
    }
    let n = if quick { 20 } else { 200 };
    let mut cmd = changes(&d.socket, n, false)?;
    let mut raw = changes(&d.socket, n, true)?;
    let mut reloads = (0..if quick { 2 } else { 5 })
        .map(|_| request(&d.socket, r#"{"cmd":"reload"}"#))
        .collect::<Result<Vec<_>>>()?;
    let reload = percentiles(&mut reloads);
    let held = if large { Some(held_sources(&d, child.id(), quick)?) } else { None };
    stop(child)?;
    Ok(World {
        name,
        start_cold: median(&mut cold),
        start_warm: median(&mut warm),
        change_cmd: percentiles(&mut cmd),
        change_raw: percentiles(&mut raw),
        reload: (reload.0, *reloads.last().ok_or("no reload")?),
        maps_bytes: last.maps_bytes,
        rss_bytes: last.rss_bytes,
        held,
    })
}

/// What a report costs with `SOURCES` sources holding connections, and the daemon's RSS after it.
struct Held {
    /// Time to put the sources into `CONNS`.
    filled: Duration,
    status: Duration,
    top: Duration,
    rss_bytes: u64,
}

/// Puts `SOURCES` sources with one connection each into the running daemon's `CONNS` (through its pin: IPv4
/// hosts from 198.18.16.0, then IPv6 /64s of `2001:db8:4000::/34`), then times `status` and `top` (the reports
/// that read every source) and reads the daemon's RSS. The sources hold no sockets: the daemon's reclaim, which
/// checks counts against the sockets, removes them later; the figures are taken before.
fn held_sources(d: &Daemon, pid: u32, quick: bool) -> Result<Held> {
    use limiter_common::SourceKey;
    let n = if quick { SOURCES / 10 } else { SOURCES };
    let t = Instant::now();
    let map = aya::maps::MapData::from_pin(d.pin_dir.join(limiter_common::maps::names::CONNS))?;
    let mut conns: aya::maps::HashMap<_, SourceKey, u64> = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map))?;
    for i in 0..n {
        let (addr, family) = limiter_tests::kernel::held_source(i);
        conns.insert(SourceKey { addr, service: 1, family, pad: [0; 2] }, 1, 0)?;
    }
    let filled = t.elapsed();
    let status = request(&d.socket, r#"{"cmd":"status"}"#)?;
    let top = request(&d.socket, r#"{"cmd":"top","service":null,"limit":20}"#)?;
    Ok(Held { filled, status, top, rss_bytes: rss_bytes(pid) })
}

fn mib(b: u64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "a figure")]
    let m = b as f64 / f64::from(1 << 20);
    m
}

fn run() -> Result<()> {
    let args = args()?;
    let pair = Pair::new();
    let worlds = [
        world(&pair, "default", false, args.quick)?,
        world(&pair, "large (100,000 entries, 1,000,000 sources)", true, args.quick)?,
    ];
    println!(
        "\n{:<46} {:>10} {:>10} {:>13} {:>13} {:>13} {:>13} {:>11} {:>11} {:>9} {:>9}",
        "world",
        "start",
        "restart",
        "change p50",
        "change p99",
        "daemon p50",
        "daemon p99",
        "reload p50",
        "reload max",
        "maps MiB",
        "RSS MiB"
    );
    for w in &worlds {
        println!(
            "{:<46} {:>8.0}ms {:>8.0}ms {:>11.1}ms {:>11.1}ms {:>11.1}ms {:>11.1}ms {:>9.0}ms {:>9.0}ms {:>9.1} {:>9.1}",
            w.name,
            ms(w.start_cold),
            ms(w.start_warm),
            ms(w.change_cmd.0),
            ms(w.change_cmd.1),
            ms(w.change_raw.0),
            ms(w.change_raw.1),
            ms(w.reload.0),
            ms(w.reload.1),
            mib(w.maps_bytes.iter().map(|(_, b)| b).sum()),
            mib(w.rss_bytes)
        );
    }
    println!("\nthe maps' memory, by map (MiB; maps under 0.1 MiB in both worlds left out):");
    println!("{:<20} {:>10} {:>10}", "map", "default", "large");
    let of = |w: &World, name: &str| w.maps_bytes.iter().find(|(n, _)| n == name).map_or(0, |(_, b)| *b);
    for (name, bytes) in &worlds[1].maps_bytes {
        if mib(*bytes) >= 0.1 || mib(of(&worlds[0], name)) >= 0.1 {
            println!("{name:<20} {:>10.1} {:>10.1}", mib(of(&worlds[0], name)), mib(*bytes));
        }
    }
    for w in &worlds {
        if let Some(h) = &w.held {
            println!(
                "\n{}: with {} sources holding a connection (put into CONNS in {:.1} s): `status` {:.0} ms, `top` \
                 {:.0} ms, the daemon's RSS then {:.1} MiB",
                w.name,
                if args.quick { SOURCES / 10 } else { SOURCES },
                h.filled.as_secs_f64(),
                ms(h.status),
                ms(h.top),
                mib(h.rss_bytes)
            );
        }
    }
    println!(
        "\n'start' is `limiter run` to READY=1 with no pins, 'restart' with the pins of the run before; 'change' an \
         `allow`/`deny` `add` or `del` as the admin's command (a process per change), 'daemon' the same as one \
         request on the control socket; memory is the kernel's charge for the maps and the daemon's RSS after start."
    );
    let [small, large] = &worlds;
    let judge = |what: &str, got: Duration, target: Duration| {
        let verdict = if got <= target { "met" } else { "MISSED" };
        println!("target: {what} <= {} ms: {:.1} ms, {verdict}", target.as_millis(), ms(got));
    };
    println!();
    judge("a list change with 100,000 entries, p99 (admin's command)", large.change_cmd.1, Duration::from_millis(20));
    judge("reload with 100,000 entries (slowest)", large.reload.1, Duration::from_secs(2));
    judge("start-up with the defaults", small.start_cold, Duration::from_secs(1));
    if let Some(path) = &args.json {
        let rows: Vec<_> = worlds
            .iter()
            .map(|w| {
                serde_json::json!({
                    "world": w.name,
                    "start_ms": ms(w.start_cold),
                    "restart_ms": ms(w.start_warm),
                    "change_p50_ms": ms(w.change_cmd.0),
                    "change_p99_ms": ms(w.change_cmd.1),
                    "daemon_change_p50_ms": ms(w.change_raw.0),
                    "daemon_change_p99_ms": ms(w.change_raw.1),
                    "reload_p50_ms": ms(w.reload.0),
                    "reload_max_ms": ms(w.reload.1),
                    "maps_bytes": w.maps_bytes.iter().map(|(_, b)| b).sum::<u64>(),
                    "maps": w.maps_bytes.iter().map(|(n, b)| serde_json::json!({"map": n, "bytes": b})).collect::<Vec<_>>(),
                    "rss_bytes": w.rss_bytes,
                    "held_sources": w.held.as_ref().map(|h| serde_json::json!({
                        "status_ms": ms(h.status), "top_ms": ms(h.top), "rss_bytes": h.rss_bytes,
                    })),
                })
            })
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limiter-control: {e}");
            ExitCode::FAILURE
        }
    }
}
