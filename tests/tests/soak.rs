//! The soak: for `LIMITER_SOAK_MINUTES` (2 in CI; `cargo xtask soak
//! --minutes N` by hand), 1,250 sources connect and close in every close
//! style (client FIN, client RST, server FIN, server RST), bursts go over
//! the limit, spoofed SYN floods arrive, list entries come and go, the
//! config is reloaded, and the daemon is stopped and killed with `kill -9`
//! and started again, all at the same time. Throughout, a burst from one
//! source never gets more than its limit. At the end every count is back
//! to exactly 0, each limit gives exactly its N again, the connection
//! table holds no entry for a source without connections, and the
//! daemon's memory and descriptors, sampled all along, are flat.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use limiter_common::{SourceKey, maps::names};
use limiter_tests::{
    cli::{Scratch, limiter, path_str, unload},
    netns::{Daemon, Pair, streams, tally},
    patience, privileged, require,
};

const SMTP: u16 = 2525;
/// Connections per source.
const LIMIT: usize = 4;
const V4_SOURCES: u8 = 250;
const V6_SOURCES: u16 = 1_000;
const WAIT: Duration = Duration::from_secs(3);

/// How a connection ends.
#[derive(Clone, Copy, Debug)]
enum Close {
    ClientFin,
    ClientRst,
    ServerFin,
    ServerRst,
}

/// The server: accepts forever; each connection's first byte says how it
/// ends (`S`: the server closes, `R`: the server resets, else it waits for
/// the client's close).
fn serve(listener: &TcpListener, stop: &AtomicBool) {
    listener.set_nonblocking(true).expect("nonblocking");
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).expect("blocking");
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_mins(1)));
                    let mut b = [0u8; 1];
                    match s.read(&mut b) {
                        Ok(1) if b[0] == b'S' => {}
                        Ok(1) if b[0] == b'R' => {
                            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        }
                        _ => {
                            let _ = s.read_to_end(&mut Vec::new());
                        }
                    }
                });
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        usize::try_from((z ^ (z >> 31)) % n as u64).expect("fits")
    }
}

/// Opens up to `n` connections from `src`, then ends them in `style`.
fn churn_once(pair: &Pair, src: IpAddr, n: usize, style: Close, hold: Duration) {
    let attempts = pair.connect_many(src, SMTP, n, WAIT);
    let streams: Vec<TcpStream> = streams(attempts);
    thread::sleep(hold);
    for mut s in streams {
        match style {
            Close::ClientFin => drop(s),
            Close::ClientRst => {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
            }
            Close::ServerFin | Close::ServerRst => {
                let _ = s.write_all(if matches!(style, Close::ServerFin) { b"S" } else { b"R" });
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
    }
}

/// Entries of the pinned connection table.
fn conns_entries(d: &Daemon) -> usize {
    let map = MapData::from_pin(d.pin_dir.join(names::CONNS)).expect("pinned CONNS");
    let m: BpfHashMap<MapData, SourceKey, u64> = BpfHashMap::try_from(Map::HashMap(map)).expect("hash map");
    m.keys().count()
}

/// Total connections over all services, per `status`.
fn connections(d: &Daemon) -> Option<u64> {
    let s = d.status_json()?;
    s["services"].as_array().map(|a| a.iter().map(|x| x["connections"].as_u64().unwrap_or(0)).sum())
}

/// One sample of the daemon: seconds into the run, pid, RSS, descriptors, `CONNS` entries.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: u64,
    pid: u32,
    rss_kib: u64,
    fds: usize,
    tracked: usize,
}

fn sample(d: &Daemon, at: u64) -> Option<Sample> {
    let pid = d.child.as_ref()?.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(Sample { at, pid, rss_kib, fds, tracked: conns_entries(d) })
}

/// The config: SMTP limited to [`LIMIT`] per source; with `imap`, a second
/// service the reloads add and remove.
fn config(iface: &str, imap: bool) -> String {
    let mut c = format!(
        "interfaces = [\"{iface}\"]\nipv6_prefix = 64\n\n[[service]]\nname = \"smtp\"\nports = [{SMTP}]\n\
         max_conn_per_source = {LIMIT}\naction = \"reset\"\n"
    );
    if imap {
        c.push_str("\n[[service]]\nname = \"imap\"\nports = [2143]\nmax_conn_per_source = 2\naction = \"drop\"\n");
    }
    c
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, its threads side by side")]
fn soak() {
    require!(privileged());
    let minutes: f64 = std::env::var("LIMITER_SOAK_MINUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0);
    let run = Duration::from_secs_f64(minutes * 60.0);
    let pair = Arc::new(Pair::new());
    let stop = Arc::new(AtomicBool::new(false));
    // The server outlives the load: the checks at the end connect too.
    let server_stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (l, stop) = (pair.bind_dual_stack(SMTP), Arc::clone(&server_stop));
        thread::spawn(move || serve(&l, &stop))
    };
    // 250 IPv4 hosts and 1,000 IPv6 /64s, added in one batch.
    let sources = pair.add_clients(V4_SOURCES, V6_SOURCES);
    let scratch = Scratch::new();
    let sources = Arc::new(sources);

    let file = scratch.write("limiter.toml", &config(&pair.server_if, false));
    let file_arg = path_str(&file).to_owned();
    let args = ["--config", file_arg.as_str()];
    let d = Arc::new(Mutex::new(Daemon::start(&pair.server, &args)));
    let socket = d.lock().expect("daemon").socket.clone();
    let started = Instant::now();
    let over = Arc::new(AtomicU64::new(0));
    let (churned, bursts, floods, changes) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut workers = Vec::new();
    // Churn: two threads, every close style, 1 to LIMIT connections a time.
    for w in 0..2u64 {
        let (pair, sources, stop, churned) =
            (Arc::clone(&pair), Arc::clone(&sources), Arc::clone(&stop), Arc::clone(&churned));
        workers.push(thread::spawn(move || {
            let mut r = Rng(w + 1);
            let styles = [Close::ClientFin, Close::ClientRst, Close::ServerFin, Close::ServerRst];
            while !stop.load(Ordering::Relaxed) {
                let src = sources[r.below(sources.len())];
                let n = 1 + r.below(LIMIT);
                let hold = Duration::from_millis(r.below(80) as u64);
                churn_once(&pair, src, n, styles[r.below(4)], hold);
                churned.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Bursts: LIMIT + 3 at once from one source; never more than LIMIT get in.
    {
        let (pair, sources, stop, over, bursts) =
            (Arc::clone(&pair), Arc::clone(&sources), Arc::clone(&stop), Arc::clone(&over), Arc::clone(&bursts));
        workers.push(thread::spawn(move || {
            let mut r = Rng(99);
            while !stop.load(Ordering::Relaxed) {
                let src = sources[r.below(sources.len())];
                let a = pair.connect_parallel(src, SMTP, LIMIT + 3, WAIT);
                let t = tally(&a);
                if t.connected > LIMIT {
                    eprintln!("soak: a burst from {src} got {} of {}", t.connected, LIMIT + 3);
                    over.fetch_add(1, Ordering::Relaxed);
                }
                drop(a);
                bursts.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(300));
            }
        }));
    }
    // Spoofed SYN floods.
    {
        let (pair, stop, floods) = (Arc::clone(&pair), Arc::clone(&stop), Arc::clone(&floods));
        workers.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                pair.flood_spoofed(SMTP, 2_000);
                floods.fetch_add(2_000, Ordering::Relaxed);
                thread::sleep(Duration::from_secs(2));
            }
        }));
    }
    // List changes and reloads (failing while the daemon is down is expected).
    {
        let (stop, changes, socket) = (Arc::clone(&stop), Arc::clone(&changes), socket.clone());
        let (file, iface) = (file.clone(), pair.server_if.clone());
        workers.push(thread::spawn(move || {
            let mut r = Rng(7);
            let at = |args: &[&str]| limiter_tests::cli::limiter_at(&socket, args).code == Some(0);
            while !stop.load(Ordering::Relaxed) {
                let a = format!("198.19.{}.{}", r.below(256), r.below(256));
                let ok = match r.below(5) {
                    0 | 1 => at(&["deny", "add", &a]),
                    2 => at(&["deny", "del", &a, "--missing-ok"]),
                    3 => at(&["allow", "add", &a, "--max-conn-per-source", "2"]),
                    _ => {
                        // A service comes and goes (its id is kept, then retired).
                        std::fs::write(&file, config(&iface, r.below(2) == 0)).expect("config");
                        at(&["reload"])
                    }
                };
                if ok {
                    changes.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(200));
            }
        }));
    }

    // The main thread: samples every few seconds, and stops or kills the
    // daemon and starts it again about every quarter of the run.
    let every = Duration::from_secs_f64((run.as_secs_f64() / 40.0).clamp(3.0, 30.0));
    let chaos = Duration::from_secs_f64((run.as_secs_f64() / 4.0).max(20.0));
    let mut samples: Vec<Sample> = Vec::new();
    let (mut next_chaos, mut kills, mut stops) = (started + chaos, 0, 0);
    let mut r = Rng(2026);
    while started.elapsed() < run {
        thread::sleep(every);
        let mut dm = d.lock().expect("daemon");
        if let Some(s) = sample(&dm, started.elapsed().as_secs()) {
            samples.push(s);
        }
        if Instant::now() >= next_chaos && started.elapsed() + Duration::from_secs(10) < run {
            if r.below(2) == 0 {
                dm.kill();
                kills += 1;
            } else {
                dm.stop();
                stops += 1;
            }
            // Enforcement and counting go on from the pins meanwhile.
            thread::sleep(Duration::from_millis(500));
            dm.restart(&pair.server, &args);
            next_chaos = Instant::now() + chaos;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    let dm = d.lock().expect("daemon");
    // The config of the start again: the last reload may have added imap.
    std::fs::write(&file, config(&pair.server_if, false)).expect("config");
    assert_eq!(limiter(&dm, &["reload"]).code, Some(0), "reload to the end's config");

    eprintln!(
        "soak: {:.1} min: {} churn rounds, {} bursts, {} spoofed SYNs, {} list changes and reloads, {kills} kill -9, \
         {stops} stops",
        started.elapsed().as_secs_f64() / 60.0,
        churned.load(Ordering::Relaxed),
        bursts.load(Ordering::Relaxed),
        floods.load(Ordering::Relaxed),
        changes.load(Ordering::Relaxed)
    );
    eprintln!("soak: samples (s, pid, RSS KiB, descriptors, CONNS entries):");
    for s in &samples {
        eprintln!("  {:>5} {:>7} {:>7} {:>4} {:>6}", s.at, s.pid, s.rss_kib, s.fds, s.tracked);
    }
    assert_eq!(over.load(Ordering::Relaxed), 0, "bursts over the limit");
    assert!(churned.load(Ordering::Relaxed) > 0 && bursts.load(Ordering::Relaxed) > 0, "the load ran");

    // Every count back to exactly 0, and no entry left for a source that holds nothing.
    let t0 = Instant::now();
    loop {
        let (c, e) = (connections(&dm), conns_entries(&dm));
        if c == Some(0) && e == 0 {
            break;
        }
        assert!(
            t0.elapsed() < patience(Duration::from_secs(30)),
            "after the soak: {c:?} connections, {e} CONNS entries"
        );
        thread::sleep(Duration::from_millis(200));
    }
    // Each limit gives exactly its N.
    for src in
        [sources[0], sources[usize::from(V4_SOURCES) - 1], sources[usize::from(V4_SOURCES)], sources[sources.len() - 1]]
    {
        let a = pair.connect_parallel(src, SMTP, LIMIT + 3, WAIT);
        let t = tally(&a);
        if (t.connected, t.refused) != (LIMIT, 3) {
            let explain = limiter(&dm, &["explain", &src.to_string(), "--json"]);
            panic!(
                "after the soak, {src}: {t:?}; explain: {}{}; log: {}",
                explain.stdout,
                explain.stderr,
                dm.log_text()
            );
        }
        drop(a);
    }
    // Memory and descriptors flat within each daemon run: the last sample of
    // a run against its second (the first after start-up settled).
    let mut runs: Vec<Vec<Sample>> = Vec::new();
    for s in samples {
        match runs.last_mut() {
            Some(r) if r[0].pid == s.pid => r.push(s),
            _ => runs.push(vec![s]),
        }
    }
    for r in runs.iter().filter(|r| r.len() >= 3) {
        let (a, b) = (r[1], r[r.len() - 1]);
        assert!(b.fds <= a.fds + 8, "descriptors grew in run {}: {a:?} -> {b:?}", a.pid);
        assert!(b.rss_kib <= a.rss_kib * 3 / 2 + 16 * 1024, "memory grew in run {}: {a:?} -> {b:?}", a.pid);
    }
    drop(dm);
    let mut dm = Arc::try_unwrap(d).ok().expect("the only owner").into_inner().expect("daemon");
    dm.stop();
    unload(&dm);
    server_stop.store(true, Ordering::Relaxed);
    server.join().expect("server");
}
