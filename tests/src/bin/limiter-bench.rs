//! `limiter-bench` (run by `cargo xtask bench`): ns/packet of `limiter_xdp` on each of its paths, timed with
//! `BPF_PROG_TEST_RUN` on one pinned CPU, next to the empty `floor_pass`/`floor_drop` programs of the same object.
//! Cases run round-robin, so drift hits them all alike; each reports the median of its runs.

use std::{
    error::Error,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::ExitCode,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use limiter_common::{
    SourceKey, Verdict,
    maps::{MAX_SERVICES, family, names},
    pending,
};
use limiter_tests::frames::{self, ACK, Shape, Tcp};
use limiter_user::{
    EBPF_OBJECT,
    config::{Action, Policy, Rate, Service, XdpMode},
    loader::{read_counters, service_id, write_policy},
};
// A dependency of the library's namespace helpers, unused here.
use socket2 as _;

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// Service "open": a rate no flood reaches, so every SYN goes through the bucket and is admitted.
const OPEN_PORT: u16 = 25;
/// Service "strict": one SYN a minute, refused with a drop.
const STRICT_PORT: u16 = 587;
const UNPROTECTED_PORT: u16 = 8080;
/// Service "conc": at most 8 connections per source, no rate; `CLIENT` holds 8.
const CONC_PORT: u16 = 2525;
/// Service `conc_open`: a connection limit no bench reaches, no rate.
const CONC_OPEN_PORT: u16 = 2526;
/// Service "builtin": the built-in mail policy (10 connections, 30/m, burst 10).
const BUILTIN_PORT: u16 = 465;
/// Reservations taken per chunk on `conc_open` before its slot is cleared
/// (a slot counts at most 65535 handshakes in flight).
const CHUNK: u32 = 50_000;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

const USAGE: &str = "usage: limiter-bench [--quick] [--repeat N] [--runs N] [--json FILE]";

struct Args {
    repeat: u32,
    runs: usize,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let (mut quick, mut repeat, mut runs, mut json) = (false, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--quick" => quick = true,
            "--repeat" => repeat = Some(value()?.parse::<u32>().map_err(|e| format!("--repeat: {e}"))?),
            "--runs" => runs = Some(value()?.parse::<usize>().map_err(|e| format!("--runs: {e}"))?),
            "--json" => json = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument '{arg}'\n{USAGE}").into()),
        }
    }
    let repeat = repeat.unwrap_or(if quick { 100_000 } else { 1_000_000 });
    let runs = runs.unwrap_or(if quick { 3 } else { 5 });
    if repeat == 0 || runs == 0 {
        return Err("--repeat and --runs must be at least 1".into());
    }
    Ok(Args { repeat, runs, json })
}

/// One timed path: a program, the frame it is fed, the XDP action it must return and, for `limiter_xdp`, the
/// counter (service id, verdict) each packet must land in.
struct Case {
    name: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    expect: u32,
    verdict: Option<(u32, Verdict)>,
    /// Action and verdict of the very first packet, when they differ (it creates the source's bucket).
    first: Option<(u32, Verdict)>,
    /// Packets sent after the first.
    sent: u64,
    runs: Vec<f64>,
    /// The floor case this one is compared with.
    floor: &'static str,
    /// `PENDING` slot cleared before every chunk of `CHUNK` packets: accepted SYNs keep their reservation (no
    /// handshake completes here), so a steady accept path needs it given back.
    reset_slot: Option<u32>,
    /// Flood cases: the frame's source /64 starts at `run << 24` in each run, so runs never repeat a source.
    flood: bool,
}

impl Case {
    fn floor(name: &'static str, program: &'static str, frame: Vec<u8>, expect: u32) -> Self {
        let floor = if expect == XDP_DROP { "xdp_drop_floor" } else { "xdp_pass_floor" };
        Self {
            name,
            program,
            frame,
            expect,
            verdict: None,
            first: None,
            sent: 0,
            runs: Vec::new(),
            floor,
            reset_slot: None,
            flood: false,
        }
    }

    fn limiter(name: &'static str, frame: Vec<u8>, expect: u32, service: u32, verdict: Verdict) -> Self {
        Self { verdict: Some((service, verdict)), ..Self::floor(name, names::XDP_PROGRAM, frame, expect) }
    }

    fn median(&self) -> f64 {
        let mut v = self.runs.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { f64::midpoint(v[n / 2 - 1], v[n / 2]) }
    }
}

fn policy() -> Policy {
    let service = |name: &str, port, count, per_secs, burst| Service {
        name: name.into(),
        ports: vec![port],
        rate: Some(Rate { count, per_secs }),
        burst,
        action: Action::Drop,
        max_conn_per_source: None,
    };
    let conc =
        |name: &str, port, max| Service { rate: None, max_conn_per_source: Some(max), ..service(name, port, 1, 1, 1) };
    Policy {
        interfaces: vec![],
        xdp_mode: XdpMode::default(),
        ipv4_prefix: 32,
        ipv6_prefix: 64,
        services: vec![
            service("open", OPEN_PORT, 1_000_000_000, 1, 1_000_000),
            service("strict", STRICT_PORT, 1, 60, 1),
            conc("conc", CONC_PORT, 8),
            conc("conc_open", CONC_OPEN_PORT, 65_535),
            Service {
                max_conn_per_source: Some(10),
                action: Action::Reset,
                ..service("builtin", BUILTIN_PORT, 30, 60, 10)
            },
        ],
        maps: limiter_user::config::MapSizes::default(),
    }
}

/// A minimal IPv4 UDP datagram (UDP checksum 0, which IPv4 allows).
fn udp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let payload = [0u8; 32];
    let udp_len = u16::try_from(8 + payload.len()).expect("small datagram");
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum: u32 = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !u16::try_from((sum & 0xffff) + (sum >> 16)).expect("folded");
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    let mut f = [frames::SERVER_MAC, frames::CLIENT_MAC].concat();
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&53_000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}

/// The `CLIENT` key of service `service`.
fn client_key(service: u32) -> SourceKey {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&CLIENT.octets());
    SourceKey { addr, service: u8::try_from(service).expect("small id"), family: family::V4, pad: [0; 2] }
}

fn cases() -> Vec<Case> {
    let (client, server) = (IpAddr::V4(CLIENT), IpAddr::V4(SERVER));
    let (open, strict, conc, conc_open, builtin) =
        (service_id(0), service_id(1), service_id(2), service_id(3), service_id(4));
    let syn = |port| frames::syn(client, server, port);
    let ack = Tcp { flags: ACK, seq: 0x1234_5679, ack: 0x0bad_cafe, ..Tcp::syn(client, server, OPEN_PORT) };
    let (flood_src, flood_dst) = (
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1)),
    );
    // Every packet from a /64 never seen before; all admitted (a spoofed SYN within the limits passes).
    let flood = |name, port, service| Case {
        floor: "xdp_flood_drop_floor",
        flood: true,
        program: names::BENCH_FLOOD,
        ..Case::limiter(name, frames::syn(flood_src, flood_dst, port), XDP_PASS, service, Verdict::Accepted)
    };
    let (open_slot, _) = pending::slot_of(pending::hash(client_key(conc_open).words()), pending::DEFAULT_SLOTS);
    vec![
        Case::floor("xdp_drop_floor", names::FLOOR_DROP, syn(OPEN_PORT), XDP_DROP),
        Case::floor("xdp_pass_floor", names::FLOOR_PASS, syn(OPEN_PORT), XDP_PASS),
        Case::limiter("limiter_non_tcp", udp(CLIENT, SERVER, OPEN_PORT), XDP_PASS, 0, Verdict::PassedOther),
        Case::limiter("limiter_non_syn", frames::frame(&ack, &Shape::default()), XDP_PASS, open, Verdict::PassedNonSyn),
        Case::limiter("limiter_unprotected_port", syn(UNPROTECTED_PORT), XDP_PASS, 0, Verdict::PassedOther),
        Case::limiter("limiter_accept", syn(OPEN_PORT), XDP_PASS, open, Verdict::Accepted),
        Case {
            first: Some((XDP_PASS, Verdict::Accepted)),
            ..Case::limiter("limiter_refuse", syn(STRICT_PORT), XDP_DROP, strict, Verdict::RefusedRate)
        },
        Case {
            reset_slot: Some(open_slot),
            ..Case::limiter("limiter_conc_accept", syn(CONC_OPEN_PORT), XDP_PASS, conc_open, Verdict::Accepted)
        },
        Case::limiter("limiter_conc_refuse", syn(CONC_PORT), XDP_DROP, conc, Verdict::RefusedConcurrency),
        Case {
            flood: true,
            ..Case::floor(
                "xdp_flood_drop_floor",
                names::FLOOR_FLOOD_DROP,
                frames::syn(flood_src, flood_dst, CONC_PORT),
                XDP_DROP,
            )
        },
        flood("limiter_flood_conc", CONC_PORT, conc),
        flood("limiter_flood_builtin", BUILTIN_PORT, builtin),
    ]
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let prog = ebpf.program_mut(name).ok_or_else(|| format!("program {name} is not in the kernel object"))?;
    Ok(prog.try_into()?)
}

/// Runs `case` `repeat` times in the kernel as run number `round`; returns the last return value and the mean ns
/// per packet (the kernel reports whole nanoseconds per run).
fn run(ebpf: &mut Ebpf, case: &Case, repeat: u32, round: u32) -> Result<(u32, f64)> {
    let mut frame = case.frame.clone();
    if case.flood {
        // Bytes 4..8 of the IPv6 source: the program adds one per packet.
        frame[26..30].copy_from_slice(&(round << 24).to_be_bytes());
    }
    let (mut left, mut total, mut ret) = (repeat, 0f64, 0);
    while left > 0 {
        let n = if case.reset_slot.is_some() { left.min(CHUNK) } else { left };
        if let Some(slot) = case.reset_slot {
            let mut pending: Array<_, pending::Slot> =
                Array::try_from(ebpf.map_mut(names::PENDING).ok_or("no PENDING map")?)?;
            pending.set(slot, pending::Slot::default(), 0)?;
        }
        let opts = TestRunOptions { data_in: Some(&frame), repeat: n, ..TestRunOptions::default() };
        let r = xdp(ebpf, case.program)?
            .test_run(opts)
            .map_err(|e| format!("{}: BPF_PROG_TEST_RUN failed: {e}", case.name))?;
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds per packet are small")]
        let ns = r.duration.as_nanos() as f64;
        total += ns * f64::from(n);
        ret = r.return_value;
        left -= n;
    }
    Ok((ret, total / f64::from(repeat)))
}

fn check(case: &Case, got: u32, want: u32) -> Result<()> {
    let action = |a| match a {
        XDP_DROP => "XDP_DROP".to_owned(),
        XDP_PASS => "XDP_PASS".to_owned(),
        3 => "XDP_TX".to_owned(),
        a => format!("action {a}"),
    };
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{}: expected {}, the program returned {}: the bench would time the wrong path",
            case.name,
            action(want),
            action(got)
        )
        .into())
    }
}

/// Checks `limiter_xdp`'s own counters: every packet of every case, not only the last, took the path it times.
fn check_counters(ebpf: &Ebpf, cases: &[Case]) -> Result<()> {
    let mut want = vec![[0u64; Verdict::COUNT as usize]; MAX_SERVICES as usize + 1];
    for case in cases {
        if let Some((service, verdict)) = case.verdict {
            let row = &mut want[service as usize];
            row[verdict as usize] += case.sent;
            if let Some((_, first)) = case.first {
                row[first as usize] += 1;
            }
        }
    }
    let got = read_counters(ebpf)?;
    for (service, (got, want)) in got.iter().zip(&want).enumerate() {
        for v in Verdict::ALL {
            let (g, w) = (got[v as usize], want[v as usize]);
            if g != w {
                return Err(format!(
                    "counter {} of service {service} is {g}, expected {w}: some packets took another path",
                    v.name()
                )
                .into());
            }
        }
    }
    Ok(())
}

/// Pins this thread to the highest CPU it may run on and returns that CPU.
fn pin_cpu() -> Result<usize> {
    // SAFETY: cpu_set_t is plain data; the pointers are valid for the sizes given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) != 0 {
            return Err(io::Error::last_os_error().into());
        }
        let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(1024);
        let cpu = (0..max).rev().find(|&c| libc::CPU_ISSET(c, &set)).ok_or("empty CPU affinity mask")?;
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(format!("sched_setaffinity to CPU {cpu}: {}", io::Error::last_os_error()).into());
        }
        Ok(cpu)
    }
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
        ("bpf_jit_enable", read("/proc/sys/net/core/bpf_jit_enable")),
    ]
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limiter-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<()> {
    let args = parse_args()?;
    if EBPF_OBJECT.is_empty() {
        return Err("built without the kernel object (AYA_BUILD_SKIP): build with `cargo xtask bench`".into());
    }
    for (k, v) in machine_facts() {
        println!("{k:<15} {v}");
    }
    let cpu = pin_cpu()?;
    println!("{:<15} CPU {cpu}, repeat {}, median of {} runs (BPF_PROG_TEST_RUN)\n", "pinned", args.repeat, args.runs);

    let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT)?;
    write_policy(&mut ebpf, &policy())?;
    for name in [names::FLOOR_DROP, names::FLOOR_PASS, names::XDP_PROGRAM, names::BENCH_FLOOD, names::FLOOR_FLOOD_DROP]
    {
        xdp(&mut ebpf, name)?.load().map_err(|e| format!("loading {name}: {e}"))?;
    }
    // `CLIENT` holds its 8 connections of "conc", as sock_ops would have counted them.
    let mut conns: HashMap<_, SourceKey, u64> = HashMap::try_from(ebpf.map_mut(names::CONNS).ok_or("no CONNS map")?)?;
    conns.insert(client_key(service_id(2)), 8, 0)?;

    let mut cases = cases();
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        cases.retain(|c| c.name.contains("floor") || only.split(',').any(|o| o == c.name));
    }
    for case in &mut cases {
        if let Some((first, _)) = case.first {
            check(case, run(&mut ebpf, case, 1, 255)?.0, first)?;
        }
        check(case, run(&mut ebpf, case, 1, 255)?.0, case.expect)?;
        case.sent += 1;
    }
    // One untimed round warms caches and CPU clocks; then the timed rounds, round-robin.
    for round in 0..=args.runs {
        for case in &mut cases {
            let (ret, ns) = run(&mut ebpf, case, args.repeat, u32::try_from(round % 255)?)?;
            check(case, ret, case.expect)?;
            case.sent += u64::from(args.repeat);
            if round > 0 {
                case.runs.push(ns);
            }
        }
    }

    if std::env::var("BENCH_ONLY").is_err() {
        check_counters(&ebpf, &cases)?;
    }

    let floor = |name| cases.iter().find(|c| c.name == name).map(Case::median).ok_or(format!("no floor {name}"));
    let drop_floor = floor("xdp_drop_floor")?;
    println!("{:<26} {:>8} {:>10} {:<20} {:>8}   runs (ns)", "case", "ns/pkt", "vs floor", "(floor)", "vs drop");
    let mut json = Vec::new();
    for case in &cases {
        let ns = case.median();
        let ratio = ns / floor(case.floor)?;
        let vs_drop = ns / drop_floor;
        let runs = case.runs.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" ");
        println!("{:<26} {ns:>8.1} {ratio:>9.2}x {:<20} {vs_drop:>7.2}x   {runs}", case.name, case.floor);
        json.push(serde_json::json!({
            "case": case.name, "ns_per_packet": ns, "runs": case.runs, "floor": case.floor, "vs_floor": ratio,
            "vs_drop_floor": vs_drop,
        }));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}
