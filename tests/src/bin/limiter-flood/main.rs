//! `limiter-flood` (run by `cargo xtask bench --flood`): what floods do to a legitimate mail client, and what
//! nftables `ct count` and `limiter` change about it, end to end and in one run. A real Postfix listens in a server
//! namespace; from a client namespace a legitimate client does complete SMTP sessions in a loop, first alone, then
//! while one abusive source holds connections and floods SYNs, then while `trafgen` sends SYNs from spoofed
//! sources. Every flood is bounded by a rate and a duration and never leaves the two namespaces.

mod abuser;
mod report;
mod trafgen;

use std::{
    error::Error,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode},
    thread,
    time::{Duration, Instant},
};

// Dependencies of the library's helpers and of the tests, unused here.
#[cfg(test)]
use jsonschema as _;
use limiter_common as _;
use limiter_tests::{
    netns::{self, Attempt, Daemon, Netns, Pair, unique},
    nft,
    postfix::{Postfix, Smtp},
};
use limiter_user::EBPF_OBJECT;
#[cfg(test)]
use object as _;
use serde_json::{Value, json};
use socket2 as _;

use crate::{
    abuser::Abuser,
    report::{check, detail_header, detail_line, header, line, percentile},
    trafgen::{CLIENT_QDISC, FloodFrames, Trafgen, check_frames, is_spoofed},
};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// The SMTP port Postfix listens on in the server namespace.
const PORT: u16 = 2525;
/// Connections per source, for nftables (`ct count over 8`) and limiter (`--max-conn-per-source 8`) alike.
const LIMIT: u32 = 8;
/// Host numbers in the pair's 198.18.N.0/24: the legitimate client, the abusive source, and the client-side next
/// hop the server routes the spoofed ranges to (the client namespace does not forward, so replies die there).
const LEGIT_HOST: u8 = 10;
const ABUSER_HOST: u8 = 66;
const GATEWAY_HOST: u8 = 254;
/// Spoofed sources: 198.19.0.0/16 and `2001:db8:8000::/33`, both outside the pair's own 198.18.N.0/24 and
/// `2001:db8:N::/48`.
const SPOOFED_V4: &str = "198.19.0.0/16";
const SPOOFED_V6: &str = "2001:db8:8000::/33";
/// Workers per legitimate source (one IPv4 address, one IPv6 address): each does one session at a time, so a
/// source never holds more than this many connections, well under `LIMIT`.
const WORKERS_PER_SOURCE: usize = 2;
/// A worker starts at most one session per this interval (about 40 sessions a second in all).
const SESSION_GAP: Duration = Duration::from_millis(100);
/// A session fails if its TCP handshake takes longer (this allows one SYN retransmission, at 1 s) ...
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// ... or if any SMTP reply, the 220 greeting included, takes longer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections the abusive source tries to hold at once: more than Postfix's default 100 smtpd processes plus its
/// listen backlog of 100.
const ABUSER_SLOTS: usize = 250;
/// How long the abuser waits after a refusal before it tries again, per slot.
const ABUSER_RETRY: Duration = Duration::from_millis(100);
/// The flood and the abuser start this long before the legitimate client is measured.
const WARMUP: Duration = Duration::from_secs(1);
/// Seed of trafgen's random numbers: every configuration sees the same spoofed sources in the same order.
const SEED: u32 = 4242;

const USAGE: &str = "usage: limiter-flood [--quick] [--seconds S] [--pps N] [--json FILE]
                     [--configs none,nft,xdp-pass,limiter,limiter-respond] [--phases baseline,abuser,spoofed]";

struct Args {
    quick: bool,
    /// Seconds the legitimate client is measured in each phase.
    seconds: u32,
    /// SYNs per second trafgen sends in the flood phases.
    pps: u32,
    json: Option<PathBuf>,
    configs: Vec<Config>,
    phases: Vec<Phase>,
}

/// A comma-separated subset of `all`, by key, in the order given.
fn pick<T: Copy>(list: &str, all: &[T], key: fn(T) -> &'static str, what: &str) -> Result<Vec<T>> {
    list.split(',')
        .map(|k| {
            all.iter().copied().find(|&x| key(x) == k).ok_or_else(|| {
                let keys: Vec<_> = all.iter().map(|&x| key(x)).collect();
                format!("unknown {what} '{k}' (one of {})", keys.join(", ")).into()
            })
        })
        .collect()
}

fn parse_args() -> Result<Args> {
    let (mut quick, mut seconds, mut pps, mut json) = (false, None, None, None);
    let (mut configs, mut phases) = (Config::ALL.to_vec(), Phase::ALL.to_vec());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--quick" => quick = true,
            "--seconds" => seconds = Some(value()?.parse::<u32>().map_err(|e| format!("--seconds: {e}"))?),
            "--pps" => pps = Some(value()?.parse::<u32>().map_err(|e| format!("--pps: {e}"))?),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--configs" => configs = pick(&value()?, &Config::ALL, Config::key, "config")?,
            "--phases" => phases = pick(&value()?, &Phase::ALL, Phase::key, "phase")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument '{arg}'\n{USAGE}").into()),
        }
    }
    let seconds = seconds.unwrap_or(if quick { 2 } else { 15 });
    let pps = pps.unwrap_or(50_000);
    // Floods are bounded: at most a minute a phase, at most a million packets a second.
    if !(1..=60).contains(&seconds) {
        return Err("--seconds must be between 1 and 60".into());
    }
    if !(1..=1_000_000).contains(&pps) {
        return Err("--pps must be between 1 and 1000000".into());
    }
    Ok(Args { quick, seconds, pps, json, configs, phases })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    None,
    Nft,
    /// The object's empty XDP program on the server veth: what XDP itself costs on this path, without the limiter.
    XdpPass,
    Limiter,
    /// `limiter` with `--action respond`: over-limit attempts complete a handshake with the daemon's responder and
    /// read its 421, within the kernel's steering budget; the rest are reset.
    LimiterRespond,
}

impl Config {
    const ALL: [Self; 5] = [Self::None, Self::Nft, Self::XdpPass, Self::Limiter, Self::LimiterRespond];

    const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Nft => "nft ct count",
            Self::XdpPass => "xdp pass",
            Self::Limiter => "limiter",
            Self::LimiterRespond => "limiter respond",
        }
    }

    /// The empty-program control shows what XDP costs on the packet path; against the abuser it would only repeat
    /// `none` (nothing limits it).
    fn runs(self, phase: Phase) -> bool {
        self != Self::XdpPass || phase != Phase::Abuser
    }

    const fn key(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Nft => "nft",
            Self::XdpPass => "xdp-pass",
            Self::Limiter => "limiter",
            Self::LimiterRespond => "limiter-respond",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The legitimate client alone: the sanity check.
    Baseline,
    /// One abusive source holds as many connections as it can and floods SYNs from its own address.
    Abuser,
    /// SYNs from spoofed sources, a new one on almost every packet.
    Spoofed,
}

impl Phase {
    const ALL: [Self; 3] = [Self::Baseline, Self::Abuser, Self::Spoofed];

    const fn key(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Abuser => "abuser",
            Self::Spoofed => "spoofed",
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Baseline => "no flood",
            Self::Abuser => "one abuser",
            Self::Spoofed => "spoofed SYNs",
        }
    }
}

/// What enforces the limit in a configuration; removes itself on drop.
enum Enforcer<'a> {
    None,
    Nft(NftTable<'a>),
    /// Holds the program attached.
    XdpPass {
        _program: aya::Ebpf,
    },
    Limiter(Daemon),
}

/// The nftables `ct count` table in the server namespace, deleted on drop.
struct NftTable<'a>(&'a Netns);

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        nft::uninstall(self.0);
    }
}

impl<'a> Enforcer<'a> {
    fn start(config: Config, pair: &'a Pair) -> Self {
        match config {
            Config::None => Self::None,
            Config::XdpPass => Self::XdpPass { _program: netns::attach_pass(&pair.server, &pair.server_if) },
            Config::Nft => {
                nft::install(&pair.server, &nft::ct_count_ruleset(PORT, LIMIT));
                Self::Nft(NftTable(&pair.server))
            }
            Config::Limiter | Config::LimiterRespond => {
                let (port, limit) = (PORT.to_string(), LIMIT.to_string());
                let args = ["--iface", &pair.server_if, "--port", &port, "--max-conn-per-source", &limit];
                let action: &[&str] = if config == Config::Limiter {
                    &["--action", "reset"]
                } else {
                    &["--action", "respond", "--protocol", "smtp"]
                };
                Self::Limiter(Daemon::start(&pair.server, &[&args[..], action].concat()))
            }
        }
    }

    /// SYNs refused so far: nftables' reject counters, or limiter's refusal counters; fails if the daemon died.
    fn refused(&mut self) -> Result<Option<u64>> {
        match self {
            Self::None | Self::XdpPass { .. } => Ok(None),
            Self::Nft(table) => Ok(Some(nft::rejected(table.0))),
            Self::Limiter(d) => {
                if let Some(Ok(Some(status))) = d.child.as_mut().map(Child::try_wait) {
                    return Err(format!("limiter run exited ({status}): {}", d.log_text()).into());
                }
                let s = d.status_json().ok_or_else(|| format!("limiter status failed: {}", d.log_text()))?;
                let c = &s["services"][0]["counters"];
                let n = |k: &str| c[k].as_u64().ok_or_else(|| format!("no counter {k} in {s}"));
                Ok(Some(n("refused_concurrency")? + n("refused_rate")?))
            }
        }
    }

    /// The daemon's `respond` counts (`status`'s `responder`), for a limiter that responds.
    fn responder(&mut self, config: Config) -> Result<Option<Value>> {
        match self {
            Self::Limiter(d) if config == Config::LimiterRespond => {
                let s = d.status_json().ok_or_else(|| format!("limiter status failed: {}", d.log_text()))?;
                Ok(Some(s["responder"].clone()))
            }
            _ => Ok(None),
        }
    }
}

/// `after - before` for every counter of the two `responder` objects.
fn counts_since(before: Option<Value>, after: Option<Value>) -> Option<Value> {
    let (before, after) = (before?, after?);
    let fields = after
        .as_object()?
        .iter()
        .map(|(k, v)| (k.clone(), json!(v.as_u64().unwrap_or(0).saturating_sub(before[k].as_u64().unwrap_or(0)))));
    Some(Value::Object(fields.collect()))
}

/// How one legitimate session ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// An RST in answer to the SYN: the client was refused.
    Refused,
    ConnectTimeout,
    ConnectError,
    /// Connected, but no 220 greeting in time (or the server closed first).
    NoBanner,
    /// Greeted, but a later reply was missing or wrong.
    SmtpError,
}

struct Session {
    connect: Option<Duration>,
    banner: Option<Duration>,
    outcome: Outcome,
}

/// One complete SMTP session from `src`: connect, 220, EHLO, MAIL, RCPT, DATA, QUIT.
fn session(src: IpAddr, dst: SocketAddr, tag: &str) -> Session {
    let start = Instant::now();
    let failed = |connect, outcome| Session { connect, banner: None, outcome };
    let stream = match netns::connect(src, dst, CONNECT_TIMEOUT) {
        Attempt::Connected(s) => s,
        Attempt::Refused(_) => return failed(None, Outcome::Refused),
        Attempt::TimedOut => return failed(None, Outcome::ConnectTimeout),
        Attempt::Other(_) => return failed(None, Outcome::ConnectError),
    };
    let connect = Some(start.elapsed());
    let Ok(mut smtp) = Smtp::try_greet(stream, REPLY_TIMEOUT) else { return failed(connect, Outcome::NoBanner) };
    let banner = Some(start.elapsed());
    let done = smtp.try_send_mail(tag).and_then(|_| smtp.try_quit());
    Session { connect, banner, outcome: if done.is_ok() { Outcome::Ok } else { Outcome::SmtpError } }
}

/// The legitimate client: `WORKERS_PER_SOURCE` workers per source doing sessions back to back (at most one start
/// per `SESSION_GAP` each) until `deadline`; each returns its sessions when its last one has ended.
fn start_legit(pair: &Pair, sources: &[IpAddr], deadline: Instant) -> Vec<thread::JoinHandle<Vec<Session>>> {
    sources
        .iter()
        .flat_map(|&src| (0..WORKERS_PER_SOURCE).map(move |w| (src, w)))
        .map(|(src, w)| {
            let path = pair.client.path();
            let dst = SocketAddr::new(if src.is_ipv4() { pair.server_v4() } else { pair.server_v6() }, PORT);
            thread::spawn(move || {
                netns::enter(&path);
                let mut done = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    done.push(session(src, dst, &format!("legit-{w}-{}", done.len())));
                    let pause = SESSION_GAP.saturating_sub(started.elapsed());
                    thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                }
                done
            })
        })
        .collect()
}

/// Counters the kernel keeps, read around each phase: frames lost on the client side (the veth's or its queue's
/// drops), SYN cookies the server sent, and SYNs or handshakes its listener dropped.
fn kernel_counters(pair: &Pair) -> [u64; 3] {
    // " Sent 3400000 bytes 50000 pkt (dropped 0, overlimits 0 requeues 12)"
    let qdisc = pair.client.exec(&["tc", "-s", "qdisc", "show", "dev", &pair.client_if]);
    let qdisc_drops: u64 =
        qdisc.split("(dropped ").skip(1).filter_map(|r| r.split(',').next()?.trim().parse::<u64>().ok()).sum();
    let dev = pair.client.exec(&["cat", "/proc/net/dev"]);
    // "  vc1x2: rx_bytes rx_packets rx_errs rx_drop rx_fifo rx_frame rx_compressed rx_multicast tx_bytes tx_packets
    // tx_errs tx_drop ..."
    let tx_drop = dev
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{}:", pair.client_if)))
        .and_then(|l| l.split_whitespace().nth(11)?.parse().ok())
        .unwrap_or(0);
    let netstat = pair.server.exec(&["cat", "/proc/net/netstat"]);
    let tcp_ext: Vec<Vec<&str>> =
        netstat.lines().filter_map(|l| l.strip_prefix("TcpExt:")).map(|l| l.split_whitespace().collect()).collect();
    let ext = |name: &str| {
        let [names, values] = &tcp_ext[..] else { return 0 };
        names.iter().position(|n| *n == name).and_then(|i| values.get(i)?.parse().ok()).unwrap_or(0)
    };
    [tx_drop + qdisc_drops, ext("SyncookiesSent"), ext("ListenDrops")]
}

/// Established connections to `PORT` in the server namespace.
fn established(ns: &Netns) -> usize {
    let sport = format!(":{PORT}");
    ns.exec(&["ss", "-Htn", "state", "established", "sport", "=", &sport]).lines().filter(|l| !l.is_empty()).count()
}

/// Waits (up to 10 s) until the server holds no connection, then drops the handshakes a flood left half-open: the
/// kernel would resend their SYN-ACKs for a minute, and while they fill the listener's SYN queue every new SYN is
/// answered with a cookie. So every phase starts from the same state.
fn settle(ns: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while established(ns) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let sport = format!(":{PORT}");
    ns.exec(&["ss", "-K", "-Htn", "state", "syn-recv", "sport", "=", &sport]);
    thread::sleep(Duration::from_millis(300));
}

/// Everything a phase needs.
struct Bench {
    pair: Pair,
    legit: Vec<IpAddr>,
    abuser: IpAddr,
    abuser_cfg: PathBuf,
    spoofed_cfg: PathBuf,
    /// trafgen's configs and output.
    dir: limiter_tests::cli::Scratch,
    seconds: u32,
    pps: u32,
}

impl Bench {
    fn run_phase(&self, config: Config, phase: Phase, enforcer: &mut Enforcer<'_>) -> Result<Value> {
        let refused_before = enforcer.refused()?;
        let responder_before = enforcer.responder(config)?;
        let kernel_before = kernel_counters(&self.pair);
        let flood_secs = WARMUP.as_secs() + u64::from(self.seconds);
        // A bound in case the phase never stops it; trafgen's rate may overshoot, hence twice the nominal count.
        let count = 2 * u64::from(self.pps) * flood_secs;
        let trafgen = match phase {
            Phase::Baseline => None,
            Phase::Abuser | Phase::Spoofed => {
                let cfg = if phase == Phase::Abuser { &self.abuser_cfg } else { &self.spoofed_cfg };
                let log = self.dir.0.join(unique("trafgen-"));
                Some(Trafgen::start(&self.pair.client, &self.pair.client_if, cfg, log, self.pps, count)?)
            }
        };
        let abuser = (phase == Phase::Abuser).then(|| Abuser::start(&self.pair, self.abuser));
        if phase != Phase::Baseline {
            thread::sleep(WARMUP);
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(u64::from(self.seconds));
        let workers = start_legit(&self.pair, &self.legit, deadline);
        thread::sleep(deadline.saturating_duration_since(Instant::now()));
        // The SYN flood lasts exactly the warm-up and the measured window, in every configuration alike.
        let flood = trafgen.map(Trafgen::finish).transpose()?;
        // Sessions started in the window run to their end or their timeout; the abuser holds its connections until
        // then, or a session queued behind them would be served the moment it let go.
        let sessions: Vec<Session> =
            workers.into_iter().flat_map(|w| w.join().expect("legitimate client worker")).collect();
        let measured = started.elapsed();
        let abuser = abuser.map(Abuser::stop);
        let refused_after = enforcer.refused()?;
        let responder = counts_since(responder_before, enforcer.responder(config)?);
        let kernel: Vec<u64> = kernel_counters(&self.pair).iter().zip(kernel_before).map(|(a, b)| a - b).collect();
        settle(&self.pair.server);

        let n = |o| sessions.iter().filter(|s| s.outcome == o).count();
        let connect: Vec<_> = sessions.iter().map(|s| s.connect).collect();
        let banner: Vec<_> = sessions.iter().map(|s| s.banner).collect();
        #[expect(clippy::cast_precision_loss, reason = "packet counts are far below 2^52")]
        let flood = flood.map(|(sent, took)| {
            json!({ "packets": sent, "seconds": took.as_secs_f64(), "pps": sent as f64 / took.as_secs_f64(),
                    "target_pps": self.pps })
        });
        Ok(json!({
            "config": config.name(),
            "phase": phase.name(),
            "seconds": measured.as_secs_f64(),
            "sessions": sessions.len(),
            "ok": n(Outcome::Ok),
            "failures": {
                "refused": n(Outcome::Refused), "connect_timeout": n(Outcome::ConnectTimeout),
                "connect_error": n(Outcome::ConnectError), "no_banner": n(Outcome::NoBanner),
                "smtp_error": n(Outcome::SmtpError),
            },
            "connect_ms": { "p50": percentile(&connect, 50.0), "p99": percentile(&connect, 99.0) },
            "banner_ms": { "p50": percentile(&banner, 50.0), "p99": percentile(&banner, 99.0) },
            "abuser": abuser,
            "flood": flood,
            "refused": refused_before.zip(refused_after).map(|(b, a)| a - b),
            "responder": responder,
            "kernel": { "client_drops": kernel[0], "syncookies_sent": kernel[1], "listen_drops": kernel[2] },
        }))
    }
}

fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces, XDP, nftables)".into());
    }
    if EBPF_OBJECT.is_empty() {
        return Err("built without the kernel object (AYA_BUILD_SKIP): run it with `cargo xtask bench --flood`".into());
    }
    for (bin, arg, package) in
        [("trafgen", "-v", "netsniff-ng"), (nft::nft_bin().as_str(), "--version", "nftables"), ("ss", "-V", "iproute2")]
    {
        // `trafgen -v` prints its version and exits 1: that it runs is enough.
        let ok = Command::new(bin).arg(arg).output().is_ok_and(|o| o.status.success() || !o.stdout.is_empty());
        if !ok {
            return Err(
                format!("cannot run `{bin}` (Debian package {package}; `cargo xtask setup` installs it)").into()
            );
        }
    }
    if !Path::new("/usr/sbin/postfix").exists() {
        return Err("Postfix is not installed (`cargo xtask setup` installs it)".into());
    }
    if !netns::limiter_bin().exists() {
        return Err(format!(
            "{} does not exist: set LIMITER_BIN or run `cargo xtask bench --flood`",
            netns::limiter_bin().display()
        )
        .into());
    }
    Ok(())
}

fn machine_facts() -> Vec<(&'static str, String)> {
    let read = |path: &str| std::fs::read_to_string(path).map_or_else(|e| format!("? ({e})"), |s| s.trim().to_owned());
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "?".into());
    // SAFETY: sysconf has no preconditions.
    let nproc = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    vec![
        ("cpu", cpu),
        ("nproc", nproc.to_string()),
        ("kernel", read("/proc/sys/kernel/osrelease")),
        ("loadavg", read("/proc/loadavg")),
    ]
}

fn main() -> ExitCode {
    match flood() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limiter-flood: {e}");
            ExitCode::FAILURE
        }
    }
}

impl Bench {
    /// The namespaces, addresses, routes and client queue, and the two flood configurations, checked offline.
    fn new(args: &Args) -> Result<Self> {
        let pair = Pair::new();
        let legit = vec![pair.add_client_v4(LEGIT_HOST), pair.add_client_v6(1, u16::from(LEGIT_HOST))];
        let abuser = pair.add_client_v4(ABUSER_HOST);
        // The server answers spoofed SYNs through the client namespace, which has these next hops and does not
        // forward: the replies end there. Neither namespace has another interface or a default route.
        let gw4 = pair.add_client_v4(GATEWAY_HOST);
        let gw6 = pair.add_client_v6(0, u16::from(GATEWAY_HOST));
        pair.server.exec(&["ip", "route", "add", SPOOFED_V4, "via", &gw4.to_string(), "dev", &pair.server_if]);
        pair.server.exec(&["ip", "-6", "route", "add", SPOOFED_V6, "via", &gw6.to_string(), "dev", &pair.server_if]);
        pair.client.exec(&[&["tc", "qdisc", "replace", "dev", &pair.client_if, "root"][..], &CLIENT_QDISC].concat());

        let dir = limiter_tests::cli::Scratch::new();
        let (IpAddr::V4(server_v4), IpAddr::V6(server_v6), IpAddr::V4(abuser_v4)) =
            (pair.server_v4(), pair.server_v6(), abuser)
        else {
            return Err("the pair's addresses are not of the families expected".into());
        };
        let frames = FloodFrames {
            dst_mac: Pair::mac(&pair.server, &pair.server_if),
            src_mac: Pair::mac(&pair.client, &pair.client_if),
            server_v4,
            server_v6,
        };
        let (abuser_cfg, spoofed_cfg) = (dir.0.join("abuser.cfg"), dir.0.join("spoofed.cfg"));
        std::fs::write(&abuser_cfg, frames.abuser(abuser_v4))?;
        std::fs::write(&spoofed_cfg, frames.spoofed())?;
        let servers = [pair.server_v4(), pair.server_v6()];
        check_frames(&dir.0, "abuser", &abuser_cfg, &servers, &|ip| ip == abuser)?;
        check_frames(&dir.0, "spoofed", &spoofed_cfg, &servers, &is_spoofed)?;
        Ok(Self { pair, legit, abuser, abuser_cfg, spoofed_cfg, dir, seconds: args.seconds, pps: args.pps })
    }

    fn print_settings(&self) {
        let postfix_version = Command::new("/usr/sbin/postconf")
            .args(["-h", "mail_version"])
            .output()
            .map_or_else(|_| "?".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        println!(
            "server    Postfix {postfix_version} on port {PORT}, discarding all mail (default 100 smtpd processes, its \
             own per-client limits off)"
        );
        println!(
            "client    {} and {}, {WORKERS_PER_SOURCE} workers each doing complete sessions back to back (at most \
             one start per {} ms a worker); a session fails after {} s without a TCP connection or {} s without a \
             reply",
            self.legit[0],
            self.legit[1],
            SESSION_GAP.as_millis(),
            CONNECT_TIMEOUT.as_secs(),
            REPLY_TIMEOUT.as_secs(),
        );
        println!(
            "phases    {} s each, floods start {} s earlier; \"one abuser\": {} holds up to {ABUSER_SLOTS} silent \
             connections while trafgen sends {} SYNs/s from it; \"spoofed SYNs\": trafgen sends {} SYNs/s from \
             {SPOOFED_V4} and {SPOOFED_V6}, one CPU, through a {} queue on the client veth",
            self.seconds,
            WARMUP.as_secs(),
            self.abuser,
            self.pps,
            self.pps,
            CLIENT_QDISC.join(" "),
        );
        println!(
            "configs   none; nftables `ct count over {LIMIT}` per IPv4 address and IPv6 /64, reject with tcp reset; \
             xdp pass: an empty XDP program on the server veth (the control for what XDP itself costs here); \
             limiter: `limiter run --max-conn-per-source {LIMIT} --action reset` (no rate), XDP native on the \
             server veth; limiter respond: the same with `--action respond --protocol smtp` (the daemon's \
             responder answers over-limit attempts with a 421 within its budgets; beyond them, resets)\n"
        );
    }

    fn json(&self, args: &Args, rows: &[Value], took: Duration) -> Value {
        let machine: serde_json::Map<_, _> =
            machine_facts().into_iter().map(|(k, v)| (k.to_owned(), v.into())).collect();
        json!({
            "machine": machine,
            "settings": {
                "port": PORT, "limit": LIMIT, "seconds": self.seconds, "warmup_seconds": WARMUP.as_secs(),
                "pps": self.pps, "abuser_slots": ABUSER_SLOTS, "legit_workers": WORKERS_PER_SOURCE * self.legit.len(),
                "connect_timeout_s": CONNECT_TIMEOUT.as_secs(), "reply_timeout_s": REPLY_TIMEOUT.as_secs(),
                "client_qdisc": CLIENT_QDISC.join(" "), "quick": args.quick,
            },
            "rows": rows,
            "seconds": took.as_secs_f64(),
        })
    }
}

fn flood() -> Result<()> {
    let args = parse_args()?;
    preflight()?;
    let run_started = Instant::now();
    for (k, v) in machine_facts() {
        println!("{k:<9} {v}");
    }
    let bench = Bench::new(&args)?;
    // Declared after `bench`, so it stops before the namespaces go.
    let postfix = Postfix::start(&bench.pair.server, PORT);
    bench.print_settings();

    println!("{}", header());
    let mut rows = Vec::new();
    for &config in &args.configs {
        let mut enforcer = Enforcer::start(config, &bench.pair);
        for &phase in args.phases.iter().filter(|&&p| config.runs(p)) {
            let row = bench.run_phase(config, phase, &mut enforcer)?;
            println!("{}", line(&row));
            rows.push(row);
        }
    }
    drop(postfix);
    println!("\nlegitimate sessions that failed, by why; kernel counters over the phase");
    println!("{}", detail_header());
    for r in &rows {
        println!("{}", detail_line(r));
    }
    let took = run_started.elapsed();
    println!("\nran {:.0} s{}", took.as_secs_f64(), if args.quick { " (--quick)" } else { "" });
    println!(
        "connect: until the TCP handshake completed; banner: until the 220 greeting; \"fail\": more than 50% (p50) \
         or 1% (p99) of the sessions never got there. abuser: most connections it held at once. flood: packets trafgen \
         sent (the rate it reached). refused: SYNs the enforcer refused. lost frames: dropped on the client side \
         before the server saw them."
    );
    if let Some(path) = &args.json {
        let doc = bench.json(&args, &rows, took);
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    check(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_and_phases_parse_by_key() {
        let picked = pick("limiter,none", &Config::ALL, Config::key, "config").expect("valid list");
        assert!(picked == [Config::Limiter, Config::None]);
        assert!(pick("iptables", &Config::ALL, Config::key, "config").is_err());
        assert!(pick("spoofed", &Phase::ALL, Phase::key, "phase").is_ok_and(|p| p == [Phase::Spoofed]));
    }
}
