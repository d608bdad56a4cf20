//! `limiter-bench` (run by `cargo xtask bench`): ns/packet of `limiter_xdp` on each of its paths, of empty XDP
//! programs (the floors), and of the netfilter rules and the SYN-cookie listener it is meant to beat (the peers),
//! all timed by one harness in one run.
//!
//! Every case is `BPF_PROG_TEST_RUN` in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`) with the ingress
//! interface set to the server's veth in a private namespace: what the program passes goes through that
//! namespace's real stack (conntrack, nftables, iptables, TCP), synchronously, inside the timed region; what it
//! drops costs only the XDP path. The timing thread has entered the server namespace (the kernel resolves the
//! ingress interface there) and is pinned to one CPU; cases run round-robin, so drift hits them all alike, and
//! each reports the median of its runs, in the kernel's own figure (duration / packets, whole nanoseconds).
//!
//! Traffic: the client (198.18.0.1) holds 8 real connections to the server's (198.18.0.2) port 2525; the
//! injected SYN comes from 198.18.0.1 too, from a port its sockets never use, to that same port, with valid
//! checksums and the server veth's MAC, so the stack takes it as a real client's ninth attempt. Each case checks
//! that every packet took the path it times (the limiter's verdict counters, the peers' rule counters, the
//! server's SNMP counters) and the run fails if one did not, or if any checksum error showed up. Timings never
//! fail the run.

mod events;
mod objects;
mod peers;
mod steer;
mod testbed;

use std::{
    collections::HashMap as StdHashMap,
    error::Error,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions},
};
// The schema and object tests' dev-dependencies, unused here.
#[cfg(test)]
use jsonschema as _;
use limiter_common::{
    Globals, ServicePolicy, SourceKey, Verdict,
    maps::{ALL_SERVICES, MAX_SERVICES, family, flags, names, policy_index},
    pending,
    prefix::Prefix,
};
use limiter_tests::{frames, netns};
use limiter_user::{
    kernel::{
        counters::{read_counters, read_observed},
        writer::write_policy,
    },
    policy::{
        lists::{AllowEntry, Cidr, DenyEntry, Lists},
        model::{MapSizes, Policy, XdpMode},
        service::{Action, Rate, Service, service_id},
    },
};
#[cfg(test)]
use object as _;

use crate::{
    objects::Objects,
    peers::{LIMIT, Peer},
    steer::Steering,
    testbed::{CLIENT, CLIENT6, Testbed},
};

/// Send: errors cross from the timing thread.
pub(crate) type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// Frames per batch in live-frames mode: NAPI's poll weight, what a driver hands the stack at once.
const BATCH: u32 = 64;
/// Service "conc": at most `LIMIT` connections per source, refused with a drop. The client holds `LIMIT` real
/// connections here, and every peer polices this port.
const REFUSE_PORT: u16 = 2525;
/// Service `conc_open`: a connection limit no bench reaches, no rate.
const ACCEPT_PORT: u16 = 2526;
/// Service "open": a rate no bench reaches, so every SYN goes through the bucket and is admitted.
const RATE_OPEN_PORT: u16 = 25;
/// Service "strict": one SYN a day, refused with a drop (the run is far shorter than a day).
const RATE_STRICT_PORT: u16 = 587;
/// Service "builtin": the built-in mail policy (10 connections, 30/m, burst 10, reset).
const BUILTIN_PORT: u16 = 465;
/// Service "respond": at most `LIMIT` connections per source, over-limit SYNs steered to the responder. `CONNS`
/// holds `LIMIT` for the client here (no real connections: nothing else polices this port).
const RESPOND_PORT: u16 = 2527;
/// Service "observe": at most `LIMIT` connections per source, `action = "log"`: over-limit SYNs are counted as
/// would-be refusals and passed. `CONNS` holds `LIMIT` for the client here, as for `respond`.
const OBSERVE_PORT: u16 = 2528;
/// The source-wide budget of the cases that set one (`max_conn_per_source` at the top of the config): the
/// client's `LIMIT` connections count against it, so a SYN to a service with room is refused by the budget.
const BUDGET: u32 = LIMIT;
/// Source port of the SYNs refused by the budget: not `INJECT_SPORT`, whose SYN to `ACCEPT_PORT`
/// `limiter_accept` has remembered as a handshake in flight (a SYN repeating it is let through as a
/// retransmission, on its reservation).
const BUDGET_SPORT: u16 = 998;
/// Source port of the injected SYNs: below 1024, where the client's sockets never are, so `bench_sink` on the
/// client's veth drops whatever the server answers to them.
const INJECT_SPORT: u16 = 999;
/// Reservations taken per chunk on `conc_open` before its slot is cleared (a slot counts at most 65535
/// handshakes in flight).
const CHUNK: u32 = 50_000;

/// Server counters that must never grow: the stack saw a frame with a bad IP or TCP checksum.
const CHECKSUM_ERRORS: [&str; 2] = ["IpExtInCsumErrors", "TcpInCsumErrors"];

static STOP: AtomicBool = AtomicBool::new(false);

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

/// One timed path: a program, the frame it is fed, and how to tell that every packet took the path.
#[expect(clippy::struct_excessive_bools, reason = "independent properties of a case, set by name in the table")]
struct Case {
    name: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    /// XDP action of one plain (not live) test run of the frame, checked before timing.
    expect: u32,
    /// For `limiter_xdp`: the counter (service id, verdict) each packet must land in.
    verdict: Option<(u32, Verdict)>,
    /// Verdict of the very first packet, when it differs (it creates the source's bucket).
    first: Option<Verdict>,
    /// Netfilter rules installed for this case only.
    peer: Option<Peer>,
    /// Server counters (`nstat` names) that must grow by about one per packet, and ones that must stay flat.
    per_packet: &'static [&'static str],
    flat: &'static [&'static str],
    /// What the server does with the packet after XDP (for the JSON report).
    path: &'static str,
    /// The case this one is compared with in the "vs" column.
    reference: &'static str,
    /// `PENDING` slot cleared before every chunk of `CHUNK` packets: accepted SYNs keep their reservation (no
    /// handshake completes here), so a steady accept path needs it given back.
    reset_slot: Option<u32>,
    /// Flood cases: the program takes a new source from `BENCH_SEQ` for every packet.
    flood: bool,
    /// The source-wide budget in force while this case runs (0: none), written to `POLICY` before it.
    budget: u32,
    /// `action = "log"`: every packet is also counted as a would-be refusal (`OBSERVED`) of `verdict`'s service.
    observed: Option<Verdict>,
    /// Every refusal has an event token and is reported through `EVENTS` (drained on another CPU).
    events: bool,
    /// `respond`: every packet is steered (tokens topped up before each run; `STEER_BUDGET` checked after).
    steered: bool,
    /// Live frames (the default): what the program passes goes up the server's stack. Otherwise a plain
    /// `BPF_PROG_TEST_RUN` on one buffer: the program alone, its action not carried out.
    live: bool,
    /// Not run: it needs live frames, which this machine refuses (see [`live_frames_permitted`]).
    skipped: bool,
    /// Packets run through the program after `first`, timed or not.
    sent: u64,
    runs: Vec<f64>,
}

impl Case {
    fn new(name: &'static str, program: &'static str, frame: Vec<u8>, expect: u32, reference: &'static str) -> Self {
        Self {
            name,
            program,
            frame,
            expect,
            verdict: None,
            first: None,
            peer: None,
            per_packet: &[],
            flat: &[],
            path: "",
            reference,
            reset_slot: None,
            flood: false,
            budget: 0,
            observed: None,
            events: false,
            steered: false,
            live: true,
            skipped: false,
            sent: 0,
            runs: Vec::new(),
        }
    }

    /// The median of the timed runs; NaN for a case that was not run.
    fn median(&self) -> f64 {
        if self.runs.is_empty() {
            return f64::NAN;
        }
        let mut v = self.runs.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { f64::midpoint(v[n / 2 - 1], v[n / 2]) }
    }
}

fn policy() -> Policy {
    let service = |name: &str, port, count, per_secs, burst| Service {
        id: 0,
        name: name.into(),
        ports: vec![port],
        rate: Some(Rate { count, per_secs }),
        burst,
        action: Action::Drop,
        max_conn_per_source: None,
        max_sessions: None,
        reserved_sessions: 0,
        dead_peer_timeout: None,
        respond: limiter_user::policy::respond::Respond::default(),
    };
    let conc =
        |name: &str, port, max| Service { rate: None, max_conn_per_source: Some(max), ..service(name, port, 1, 1, 1) };
    let mut p = Policy {
        interfaces: vec![],
        xdp_mode: XdpMode::default(),
        ipv4_prefix: 32,
        ipv6_prefix: 64,
        metrics_listen: None,
        hostname: None,
        services: vec![
            service("open", RATE_OPEN_PORT, 1_000_000_000, 1, 1_000_000),
            service("strict", RATE_STRICT_PORT, 1, 86_400, 1),
            conc("conc", REFUSE_PORT, LIMIT),
            conc("conc_open", ACCEPT_PORT, 65_535),
            Service {
                max_conn_per_source: Some(10),
                action: Action::Reset,
                ..service("builtin", BUILTIN_PORT, 30, 60, 10)
            },
            Service { action: Action::Respond, ..conc("respond", RESPOND_PORT, LIMIT) },
            Service { action: Action::Log, ..conc("observe", OBSERVE_PORT, LIMIT) },
        ],
        max_conn_all_services: None,
        maps: sizes(),
        responder: limiter_user::policy::model::ResponderLimits::default(),
        lists: bench_lists(),
        list_lines: limiter_user::policy::lists::ListLines::default(),
    };
    for (i, s) in p.services.iter_mut().enumerate() {
        s.id = service_id(i);
    }
    p
}

/// Sources in `CONNS` besides the client's, in the small world and in the large one (issue 18).
const SMALL_SOURCES: u32 = 1_000;
const LARGE_SOURCES: u32 = 1_000_000;
/// Prefixes in the large world's lists.
const LARGE_PREFIXES: usize = 100_000;

/// The maps, sized for the large world in both worlds: only what they hold differs between the two.
fn sizes() -> MapSizes {
    MapSizes { connections: 1 << 20, pending_slots: 1 << 20, ..MapSizes::default() }
}

/// `CONNS` entries `from..to` of the sources that fill the worlds, one connection each, with their `PENDING` slot
/// sums, as `sock_ops` would have counted them: IPv4 hosts from 198.18.16.0, then IPv6 /64s of `2001:db8:4000::/34`
/// (apart from the client, the server and the flood's `2001:db8:8000::/33`), over three services in turn.
fn fill_sources(ebpf: &mut aya::Ebpf, from: u32, to: u32) -> Result<()> {
    let services = [service_id(2), service_id(3), service_id(4)];
    let slots_n = sizes().pending_slots;
    let mut sums: StdHashMap<u32, Vec<u32>> = StdHashMap::new();
    {
        let mut conns: aya::maps::HashMap<_, SourceKey, u64> =
            aya::maps::HashMap::try_from(ebpf.map_mut(names::CONNS).ok_or("no CONNS map")?)?;
        for i in from..to {
            let (addr, family) = limiter_tests::kernel::held_source(i);
            let service = u8::try_from(services[i as usize % services.len()]).map_err(|_| "a small id")?;
            let key = SourceKey { addr, service, family, pad: [0; 2] };
            conns.insert(key, 1, 0).map_err(|e| format!("CONNS entry {i} of {to}: {e}"))?;
            let hash = pending::hash(key.words());
            let (slot, _) = pending::slot_of(hash, slots_n);
            sums.entry(slot).or_default().push(pending::fingerprint(hash));
        }
    }
    // The slots' connection words, as `sock_ops` would have left them (`pending::holders`).
    let mut slots: Array<_, pending::Slot> = Array::try_from(ebpf.map_mut(names::PENDING).ok_or("no PENDING map")?)?;
    for (index, holders) in sums {
        let mut slot = slots.get(&index, 0)?;
        for fingerprint in holders {
            slot.conns = pending::holders::add(slot.conns, fingerprint, 1);
        }
        slots.set(index, slot, 0)?;
    }
    Ok(())
}

/// The large world's lists: `bench_lists` and 98,960 more, a mix of lengths as imported block lists have them,
/// none covering the client, the server or the flood's sources: 55,000 IPv4 hosts from 198.18.32.0, 4,096 /29s
/// in 198.19.128.0/17, 1,024 /28 allow entries with a limit in 198.19.16.0/18, 32 /24s in 198.19.96.0/19;
/// 30,000 IPv6 /64s (every 50th an allow entry), 4,000 /128s and 4,808 /48s, all in `2001:db8::/32`.
fn large_lists() -> Lists {
    let mut lists = bench_lists();
    let v4 = |base: Ipv4Addr, i: u32, len| Cidr(Prefix::new(IpAddr::V4(Ipv4Addr::from(u32::from(base) + i)), len));
    let v6 = |a: u128, len| Cidr(Prefix::new(IpAddr::V6(Ipv6Addr::from(a)), len));
    let deny = |prefix| DenyEntry { prefix, comment: None };
    let allow = |prefix| AllowEntry {
        prefix,
        max_conn_per_source: Some(20),
        max_conn_all_services: None,
        rate: None,
        burst: None,
        comment: None,
    };
    lists.deny.extend((0..55_000).map(|i| deny(v4(Ipv4Addr::new(198, 18, 32, 0), i, 32))));
    lists.deny.extend((0..4_096).map(|i| deny(v4(Ipv4Addr::new(198, 19, 128, 0), i * 8, 29))));
    lists.allow.extend((0..1_024).map(|i| allow(v4(Ipv4Addr::new(198, 19, 16, 0), i * 16, 28))));
    lists.deny.extend((0..32).map(|i| deny(v4(Ipv4Addr::new(198, 19, 96, 0), i * 256, 24))));
    for i in 0..30_000u128 {
        let p = v6((0x2001_0db8_0001_u128 << 80) | (i << 64), 64);
        if i % 50 == 0 {
            lists.allow.push(allow(p));
        } else {
            lists.deny.push(deny(p));
        }
    }
    lists.deny.extend((0..4_000u128).map(|i| deny(v6((0x2001_0db8_0002_u128 << 80) | (i + 1), 128))));
    lists.deny.extend((0..4_808u128).map(|i| deny(v6((0x2001_0db8_u128 << 96) | ((0x100 + i) << 80), 48))));
    lists
}

/// A denied source (in `bench_lists`).
const DENIED: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 5);

/// Lists as a busy host might have them, none covering `CLIENT`: 1,024
/// denied hosts in 198.19.0.0/22 and 16 allow entries with limits, so every
/// IPv4 limiter case pays the trie lookup. (No IPv6 entries: the IPv6 flood
/// cases skip it, as on a host whose lists are IPv4 only.)
fn bench_lists() -> Lists {
    let deny = (0u16..1024)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            DenyEntry { prefix: Cidr(Prefix::new(IpAddr::V4(Ipv4Addr::new(198, 19, hi, lo)), 32)), comment: None }
        })
        .collect();
    let allow = (0u8..16)
        .map(|i| AllowEntry {
            prefix: Cidr(Prefix::new(IpAddr::V4(Ipv4Addr::new(198, 19, 64 + i, 0)), 24)),
            max_conn_per_source: Some(100),
            max_conn_all_services: None,
            rate: None,
            burst: None,
            comment: None,
        })
        .collect();
    Lists { allow, deny, reserve: Vec::new() }
}

/// The `CLIENT` key of service `service`.
fn client_key(service: u32) -> SourceKey {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&CLIENT.octets());
    SourceKey { addr, service: u8::try_from(service).expect("small id"), family: family::V4, pad: [0; 2] }
}

/// The `CLIENT6` key of service `service`: its /64 (`policy`'s `ipv6_prefix`).
fn client6_key(service: u32) -> SourceKey {
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&CLIENT6.octets()[..8]);
    SourceKey { addr, service: u8::try_from(service).expect("small id"), family: family::V6, pad: [0; 2] }
}

/// The cases, in the order they run in every round.
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn cases(bed: &Testbed, ack: &[u8]) -> Vec<Case> {
    let (open, strict, conc, conc_open, builtin, respond, observe) =
        (service_id(0), service_id(1), service_id(2), service_id(3), service_id(4), service_id(5), service_id(6));
    let refuse = bed.syn(INJECT_SPORT, REFUSE_PORT);
    let respond_syn = bed.syn(INJECT_SPORT, RESPOND_PORT);
    // Spoofed sources: the program writes a new /64 of 2001:db8:8000::/33 into every packet (see
    // limiter-ebpf/src/bench.rs); the template's own is the last one it would write.
    let flood_frame = |port| {
        let src = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0xffff, 0, 0, 0, 1));
        let dst = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        bed.frame(&frames::Tcp { sport: INJECT_SPORT, ..frames::Tcp::syn(src, dst, port) })
    };
    let limiter = |name, frame, expect, service, verdict, reference| Case {
        verdict: Some((service, verdict)),
        ..Case::new(name, names::XDP_PROGRAM, frame, expect, reference)
    };
    let to_stack = &["TcpInSegs"][..];
    let dropped = &["IpInReceives"][..];
    let cookie = &["TcpExtSyncookiesSent"][..];
    let flood = |name, port, service| Case {
        program: names::BENCH_FLOOD,
        flood: true,
        flat: &["IpInReceives", "Ip6InDiscards"],
        path: "dropped by XDP: the limiter's own cost per spoofed SYN (what it passes is dropped, not sent up)",
        ..limiter(name, flood_frame(port), XDP_DROP, service, Verdict::Accepted, "xdp_flood_drop_floor")
    };
    let peer = |name, peer, path| Case {
        peer: Some(peer),
        per_packet: &[],
        flat: cookie,
        path,
        ..Case::new(name, names::FLOOR_PASS, refuse.clone(), XDP_PASS, "limiter_refuse")
    };
    let (open_slot, _) = pending::slot_of(pending::hash(client_key(conc_open).words()), sizes().pending_slots);
    vec![
        Case {
            flat: dropped,
            path: "dropped by XDP",
            ..Case::new("xdp_drop_floor", names::FLOOR_DROP, refuse.clone(), XDP_DROP, "xdp_drop_floor")
        },
        Case {
            per_packet: to_stack,
            flat: &["TcpOutRsts"],
            path: "TCP: duplicate ACK of an established connection, no answer",
            ..Case::new("xdp_pass_floor", names::FLOOR_PASS, ack.to_vec(), XDP_PASS, "xdp_pass_floor")
        },
        Case {
            per_packet: to_stack,
            flat: &["TcpOutRsts"],
            path: "TCP: duplicate ACK of an established connection, no answer",
            ..limiter("limiter_non_syn", ack.to_vec(), XDP_PASS, conc_open, Verdict::PassedNonSyn, "xdp_pass_floor")
        },
        Case {
            reset_slot: Some(open_slot),
            per_packet: cookie,
            path: "TCP: listener answers with a SYN cookie",
            ..limiter(
                "limiter_accept",
                bed.syn(INJECT_SPORT, ACCEPT_PORT),
                XDP_PASS,
                conc_open,
                Verdict::Accepted,
                "listener_syncookies",
            )
        },
        Case {
            flat: dropped,
            path: "dropped by XDP (over the connection limit)",
            ..limiter("limiter_refuse", refuse.clone(), XDP_DROP, conc, Verdict::RefusedConcurrency, "xdp_drop_floor")
        },
        Case {
            flat: &["IpInReceives", "Ip6InDiscards"],
            path: "dropped by XDP (an IPv6 /64 over the connection limit)",
            ..limiter(
                "limiter_refuse_v6",
                bed.syn6(INJECT_SPORT, REFUSE_PORT),
                XDP_DROP,
                conc,
                Verdict::RefusedConcurrency,
                "xdp_drop_floor",
            )
        },
        Case {
            flat: dropped,
            events: true,
            path: "dropped by XDP (over the connection limit), reported through EVENTS (drained between chunks)",
            ..limiter(
                "limiter_refuse_reported",
                refuse.clone(),
                XDP_DROP,
                conc,
                Verdict::RefusedConcurrency,
                "limiter_refuse",
            )
        },
        Case {
            budget: BUDGET,
            flat: dropped,
            path: "dropped by XDP (over the service's connection limit, with a source-wide budget set)",
            ..limiter(
                "limiter_refuse_budget",
                refuse.clone(),
                XDP_DROP,
                conc,
                Verdict::RefusedConcurrency,
                "limiter_refuse",
            )
        },
        Case {
            budget: BUDGET,
            flat: dropped,
            path: "dropped by XDP (within the service's limit, over the source-wide budget: the service's \
                   reservation taken and given back)",
            ..limiter(
                "limiter_refuse_by_budget",
                bed.syn(BUDGET_SPORT, ACCEPT_PORT),
                XDP_DROP,
                conc_open,
                Verdict::RefusedConcurrency,
                "limiter_refuse",
            )
        },
        Case {
            observed: Some(Verdict::RefusedConcurrency),
            per_packet: cookie,
            flat: &["TcpOutRsts"],
            path: "over the connection limit, action log: counted as would-be refused, passed; the listener \
                   answers with a SYN cookie",
            ..limiter(
                "limiter_observe",
                bed.syn(INJECT_SPORT, OBSERVE_PORT),
                XDP_PASS,
                observe,
                Verdict::Accepted,
                "listener_syncookies",
            )
        },
        Case {
            steered: true,
            per_packet: cookie,
            flat: &["TcpOutRsts"],
            path: "steered by XDP (over the connection limit, a token spent, STEER written), passed; sk_lookup hands \
                   it to the responder's listener, which answers with a SYN cookie",
            ..limiter(
                "limiter_respond",
                respond_syn.clone(),
                XDP_PASS,
                respond,
                Verdict::RefusedConcurrency,
                "limiter_accept",
            )
        },
        Case {
            flat: dropped,
            path: "dropped by XDP (deny list)",
            ..limiter(
                "limiter_deny",
                bed.frame(&frames::Tcp {
                    sport: INJECT_SPORT,
                    ..frames::Tcp::syn(IpAddr::V4(DENIED), IpAddr::V4(testbed::SERVER), REFUSE_PORT)
                }),
                XDP_DROP,
                conc,
                Verdict::RefusedDeny,
                "xdp_drop_floor",
            )
        },
        Case {
            per_packet: cookie,
            path: "TCP: listener answers with a SYN cookie",
            ..limiter(
                "limiter_rate_accept",
                bed.syn(INJECT_SPORT, RATE_OPEN_PORT),
                XDP_PASS,
                open,
                Verdict::Accepted,
                "listener_syncookies",
            )
        },
        Case {
            first: Some(Verdict::Accepted),
            flat: dropped,
            path: "dropped by XDP (over the rate)",
            ..limiter(
                "limiter_rate_refuse",
                bed.syn(INJECT_SPORT, RATE_STRICT_PORT),
                XDP_DROP,
                strict,
                Verdict::RefusedRate,
                "xdp_drop_floor",
            )
        },
        Case {
            flood: true,
            flat: &["IpInReceives", "Ip6InDiscards"],
            path: "new source written, then dropped by XDP",
            ..Case::new(
                "xdp_flood_drop_floor",
                names::FLOOR_FLOOD_DROP,
                flood_frame(BUILTIN_PORT),
                XDP_DROP,
                "xdp_flood_drop_floor",
            )
        },
        flood("limiter_spoofed_flood", BUILTIN_PORT, builtin),
        flood("limiter_spoofed_flood_conc", REFUSE_PORT, conc),
        Case {
            budget: BUDGET,
            path: "dropped by XDP: the limiter's own cost per spoofed SYN, accepted on a reservation of the \
                   service's count and of the source-wide budget",
            ..flood("limiter_spoofed_flood_budget", REFUSE_PORT, conc)
        },
        peer("nft_ct_count", Peer::NftCtCount, "nftables: conntrack, ct count over 8, drop"),
        peer(
            "iptables_connlimit_reset",
            Peer::ConnlimitReset,
            "iptables: conntrack, connlimit above 8, REJECT with a TCP reset",
        ),
        peer("iptables_connlimit_drop", Peer::ConnlimitDrop, "iptables: conntrack, connlimit above 8, DROP"),
        peer("iptables_hashlimit", Peer::Hashlimit, "iptables: hashlimit by source above 1/min, DROP"),
        Case {
            per_packet: cookie,
            path: "TCP: listener answers with a SYN cookie (tcp_syncookies=2)",
            ..Case::new("listener_syncookies", names::FLOOR_PASS, refuse.clone(), XDP_PASS, "limiter_refuse")
        },
        // The program alone (plain test runs, nothing carried out): what `limiter_respond` costs XDP, next to the
        // drop it replaces and an empty program timed the same way.
        Case {
            live: false,
            flat: dropped,
            path: "plain test run: the empty program only",
            ..Case::new("xdp_drop_floor_plain", names::FLOOR_DROP, refuse.clone(), XDP_DROP, "xdp_drop_floor_plain")
        },
        Case {
            live: false,
            flat: dropped,
            path: "plain test run: the limiter's decision, drop (not carried out)",
            ..limiter(
                "limiter_refuse_plain",
                refuse,
                XDP_DROP,
                conc,
                Verdict::RefusedConcurrency,
                "xdp_drop_floor_plain",
            )
        },
        Case {
            live: false,
            steered: true,
            flat: dropped,
            path: "plain test run: the limiter's decision, steered (token, STEER written), XDP_PASS not carried out",
            ..limiter(
                "limiter_respond_plain",
                respond_syn,
                XDP_PASS,
                respond,
                Verdict::RefusedConcurrency,
                "limiter_refuse_plain",
            )
        },
    ]
}

/// Runs a flood program twice, the second time on the first run's output (as a recycled live-frames page would
/// hold it), and checks that each run wrote a new source in `2001:db8:8000::/33` and left the checksum valid.
fn check_rewrite(objs: &mut Objects, case: &Case) -> Result<()> {
    let mut frame = case.frame.clone();
    for _ in 0..2 {
        let mut out = vec![0u8; frame.len()];
        let opts =
            TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), repeat: 1, ..TestRunOptions::default() };
        objs.xdp(case.program)?.test_run(opts).map_err(|e| format!("{}: BPF_PROG_TEST_RUN failed: {e}", case.name))?;
        // Untagged IPv6: the source address is bytes 22..38.
        let (old, new) = (&frame[22..38], &out[22..38]);
        if new == old || new[..4] != [0x20, 0x01, 0x0d, 0xb8] || new[4] & 0x80 == 0 || !frames::checksums_ok(&out, 14) {
            return Err(format!(
                "{}: the rewritten frame is wrong (source {:02x?}, checksums ok: {}): {out:02x?}",
                case.name,
                new,
                frames::checksums_ok(&out, 14)
            )
            .into());
        }
        frame = out;
    }
    Ok(())
}

/// `struct xdp_md` for `BPF_PROG_TEST_RUN`: the whole frame is packet data, received on `ifindex` queue 0.
fn xdp_md(frame_len: usize, ifindex: u32) -> Result<[u8; 24]> {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&u32::try_from(frame_len)?.to_ne_bytes()); // data_end
    md[12..16].copy_from_slice(&ifindex.to_ne_bytes()); // ingress_ifindex
    Ok(md)
}

/// One plain test run of the case's frame; returns the program's XDP action.
fn run_once(objs: &mut Objects, case: &Case) -> Result<u32> {
    if case.steered {
        steer::top_up(&mut objs.limiter)?;
    }
    let opts = TestRunOptions { data_in: Some(&case.frame), repeat: 1, ..TestRunOptions::default() };
    let r =
        objs.xdp(case.program)?.test_run(opts).map_err(|e| format!("{}: BPF_PROG_TEST_RUN failed: {e}", case.name))?;
    Ok(r.return_value)
}

/// Runs `case` on `repeat` live frames received on `ifindex` (or, for a case that is not `live`, `repeat` times on
/// one buffer); returns the mean ns per packet.
fn run_live(objs: &mut Objects, case: &Case, ifindex: u32, repeat: u32) -> Result<f64> {
    let md = xdp_md(case.frame.len(), ifindex)?;
    let (mut left, mut total) = (repeat, 0f64);
    while left > 0 {
        if STOP.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        let n = if case.reset_slot.is_some() { left.min(CHUNK) } else { left };
        if let Some(slot) = case.reset_slot {
            let mut pending: Array<_, pending::Slot> =
                Array::try_from(objs.limiter.map_mut(names::PENDING).ok_or("no PENDING map")?)?;
            pending.set(slot, pending::Slot::default(), 0)?;
        }
        let attrs = if case.live { TestRunAttrs::new().xdp_live_frames(BATCH) } else { TestRunAttrs::new() };
        let opts = TestRunOptions {
            data_in: Some(&case.frame),
            ctx_in: Some(&md),
            repeat: n,
            attrs,
            ..TestRunOptions::default()
        };
        let r = objs
            .xdp(case.program)?
            .test_run(opts)
            .map_err(|e| format!("{}: BPF_PROG_TEST_RUN (live frames) failed: {e}", case.name))?;
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds per packet are small")]
        let ns = r.duration.as_nanos() as f64;
        total += ns * f64::from(n);
        left -= n;
    }
    Ok(total / f64::from(repeat))
}

fn action_name(a: u32) -> String {
    match a {
        XDP_DROP => "XDP_DROP".to_owned(),
        XDP_PASS => "XDP_PASS".to_owned(),
        3 => "XDP_TX".to_owned(),
        a => format!("action {a}"),
    }
}

/// `n` packets grew `counter` by about `n` (`per_packet`) or left it about flat; "about" allows for the odd packet
/// a rule lets through (hashlimit admits its first) and background traffic, never for a path not taken.
fn check_delta(counter: &str, delta: u64, n: u64, per_packet: bool) -> Result<()> {
    let slack = n / 100 + 100;
    let ok = if per_packet { delta + slack >= n && delta <= n + slack } else { delta <= slack };
    if ok {
        return Ok(());
    }
    let want = if per_packet { format!("about {n}") } else { "about 0".to_owned() };
    Err(format!("{counter} grew by {delta} over {n} packets, expected {want}: the packets took another path").into())
}

fn delta(before: &StdHashMap<String, u64>, after: &StdHashMap<String, u64>, name: &str) -> Result<u64> {
    let get = |m: &StdHashMap<String, u64>| m.get(name).copied().ok_or_else(|| format!("nstat has no {name}"));
    Ok(get(after)?.saturating_sub(get(before)?))
}

/// Times `case` once on `repeat` packets, with its rules in place, and checks that every packet took its path.
fn timed_run(
    objs: &mut Objects,
    bed: &mut Testbed,
    steering: &Steering,
    case: &Case,
    ifindex: u32,
    repeat: u32,
) -> Result<f64> {
    if case.steered {
        return timed_steered(objs, bed, steering, case, ifindex, repeat);
    }
    // `ct count` and `connlimit` count only the connections whose SYN went through their rule: the client's are
    // closed before the rule is in place and opened again under it.
    let counts_connections = case.peer.is_some_and(Peer::counts_connections);
    if counts_connections {
        bed.disconnect(REFUSE_PORT)?;
    }
    let rules = case.peer.map(|p| p.install(&bed.server, REFUSE_PORT));
    if counts_connections {
        bed.reconnect(REFUSE_PORT, LIMIT as usize)?;
    }
    let hits = rules.as_ref().map(|r| r.hits(&bed.server)).transpose()?.unwrap_or(0);
    if hits != 0 {
        return Err(format!("the rule refused {hits} of the client's own {LIMIT} connections").into());
    }
    let before = bed.server.nstat();
    let ns = run_live(objs, case, ifindex, repeat)?;
    let after = bed.server.nstat();
    check_stack(case, &before, &after, repeat)?;
    if let Some(rules) = &rules {
        check_delta("the rule counter", rules.hits(&bed.server)? - hits, u64::from(repeat), true)?;
    }
    Ok(ns)
}

/// [`timed_run`] of a `respond` case: tokens topped up first, so every SYN is steered; live, with the socket
/// lookup attached for the run, so every steered SYN is handed to the responder's listener. Checks `STEER_BUDGET`
/// exactly: `repeat` steered, as many redirected when live (none otherwise), no fallback.
fn timed_steered(
    objs: &mut Objects,
    bed: &mut Testbed,
    steering: &Steering,
    case: &Case,
    ifindex: u32,
    repeat: u32,
) -> Result<f64> {
    steer::top_up(&mut objs.limiter)?;
    let before = steer::counts(&objs.limiter)?;
    let stack_before = bed.server.nstat();
    let ns = if case.live {
        steering.attached(objs, |objs| run_live(objs, case, ifindex, repeat))?
    } else {
        run_live(objs, case, ifindex, repeat)?
    };
    check_stack(case, &stack_before, &bed.server.nstat(), repeat)?;
    let got = steer::counts(&objs.limiter)?.since(before);
    let n = u64::from(repeat);
    let want = steer::Counts { steered: n, redirected: if case.live { n } else { 0 }, ..steer::Counts::default() };
    if got != want {
        return Err(format!("STEER_BUDGET counted {got:?} over {n} packets, expected {want:?}").into());
    }
    Ok(ns)
}

fn check_stack(case: &Case, before: &StdHashMap<String, u64>, after: &StdHashMap<String, u64>, n: u32) -> Result<()> {
    for c in CHECKSUM_ERRORS {
        let d = delta(before, after, c)?;
        if d != 0 {
            return Err(format!("{c} grew by {d}: the frames it sent up had bad checksums").into());
        }
    }
    for &c in case.per_packet {
        check_delta(c, delta(before, after, c)?, u64::from(n), true)?;
    }
    for &c in case.flat {
        check_delta(c, delta(before, after, c)?, u64::from(n), false)?;
    }
    Ok(())
}

/// Whether this machine runs XDP test runs in live-frames mode: one empty program's run, live. Some sandboxes
/// refuse it with EPERM (a plain test run works there); any other failure is an error.
fn live_frames_permitted(objs: &mut Objects, ifindex: u32) -> Result<bool> {
    let frame = vec![0u8; 60];
    let md = xdp_md(frame.len(), ifindex)?;
    let opts = TestRunOptions {
        data_in: Some(&frame),
        ctx_in: Some(&md),
        repeat: 1,
        attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
        ..TestRunOptions::default()
    };
    match objs.xdp(names::FLOOR_DROP)?.test_run(opts) {
        Ok(_) => Ok(true),
        Err(e) if io_error(&e).and_then(io::Error::raw_os_error) == Some(libc::EPERM) => Ok(false),
        Err(e) => Err(format!("probing live frames: {e}").into()),
    }
}

/// The OS error under an error's sources, if there is one.
fn io_error<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// Writes the source-wide budget (0: none) into the `POLICY` bank in force, entry 0, as the daemon's writer
/// does for `max_conn_per_source` at the top of the config. No "at its limit" hint depends on it (the budget
/// sets none), so the generation stays.
fn set_budget(objs: &mut Objects, budget: u32) -> Result<()> {
    let globals: Array<_, Globals> = Array::try_from(objs.limiter.map(names::GLOBALS).ok_or("no GLOBALS map")?)?;
    let bank = u8::from(globals.get(&0, 0)?.flags & flags::BANK_B != 0);
    let mut policy: Array<_, ServicePolicy> =
        Array::try_from(objs.limiter.map_mut(names::POLICY).ok_or("no POLICY map")?)?;
    let index = policy_index(bank, u32::from(ALL_SERVICES));
    if policy.get(&index, 0)?.max_conn_per_source != budget {
        policy.set(index, ServicePolicy { max_conn_per_source: budget, ..ServicePolicy::default() }, 0)?;
    }
    Ok(())
}

/// Checks `limiter_xdp`'s own counters, and what observe mode counted apart: every packet of every case, not only
/// the last, took the path it times.
fn check_counters(objs: &Objects, cases: &[&Case]) -> Result<()> {
    let mut want = vec![[0u64; Verdict::COUNT as usize]; MAX_SERVICES as usize + 1];
    let mut want_observed = want.clone();
    for case in cases {
        if let Some((service, verdict)) = case.verdict {
            let row = &mut want[service as usize];
            row[verdict as usize] += case.sent;
            if let Some(first) = case.first {
                row[first as usize] += 1;
            }
            if let Some(would) = case.observed {
                want_observed[service as usize][would as usize] += case.sent;
            }
        }
    }
    for (what, got, want) in [
        ("counter", read_counters(&objs.limiter)?, want),
        ("would-be counter", read_observed(&objs.limiter)?, want_observed),
    ] {
        for (service, (got, want)) in got.iter().zip(&want).enumerate() {
            for v in Verdict::ALL {
                let (g, w) = (got[v as usize], want[v as usize]);
                if g != w {
                    return Err(format!(
                        "{what} {} of service {service} is {g}, expected {w}: some packets took another path",
                        v.name()
                    )
                    .into());
                }
            }
        }
    }
    Ok(())
}

/// Checks that the flood programs gave every packet its own source: `BENCH_SEQ` counts the sources handed out.
fn check_flood_sources(objs: &Objects, cases: &[&Case]) -> Result<()> {
    let seq: PerCpuArray<_, u64> = PerCpuArray::try_from(objs.bench.map(names::BENCH_SEQ).ok_or("no BENCH_SEQ map")?)?;
    let got: u64 = seq.get(&0, 0)?.iter().sum();
    let want: u64 = cases.iter().filter(|c| c.flood).map(|c| c.sent).sum();
    if got == want {
        Ok(())
    } else {
        Err(format!("the flood programs wrote {got} new sources for {want} packets: some frames were not rewritten")
            .into())
    }
}

/// Checks that every packet of the steered cases, the plain checks before timing included, was steered, and none
/// of any other case: `STEER_BUDGET`'s count is exact.
fn check_steered(objs: &Objects, cases: &[&Case]) -> Result<()> {
    let got = steer::counts(&objs.limiter)?;
    let want: u64 = cases.iter().filter(|c| c.steered).map(|c| c.sent).sum();
    if got.steered == want && got.no_token == 0 && got.no_responder == 0 {
        Ok(())
    } else {
        Err(format!("STEER_BUDGET counted {got:?}, expected {want} steered and no fallback").into())
    }
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

fn machine_facts() -> serde_json::Value {
    let read = |path: &str| std::fs::read_to_string(path).map_or_else(|e| format!("? ({e})"), |s| s.trim().to_owned());
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "?".into());
    // SAFETY: sysconf has no preconditions.
    let vcpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let jit = read("/proc/sys/net/core/bpf_jit_enable");
    serde_json::json!({
        "cpu": cpu,
        "vcpus": vcpus,
        "kernel": read("/proc/sys/kernel/osrelease"),
        "jit_enabled": jit != "0" && !jit.starts_with('?'),
        "bpf_jit_enable": jit,
        "iptables": peers::iptables_version(),
    })
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    // Ctrl-C or SIGTERM ends the run between packets (the test run returns EINTR), so the namespaces and rules are
    // still removed by their guards.
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
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
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (BPF programs, network namespaces, netfilter rules)".into());
    }
    let machine = machine_facts();
    for k in ["cpu", "vcpus", "kernel", "bpf_jit_enable", "iptables"] {
        let v = &machine[k];
        println!("{k:<15} {}", v.as_str().map_or_else(|| v.to_string(), str::to_owned));
    }

    let mut objs = Objects::load(&sizes(), |ebpf| {
        write_policy(ebpf, &policy())?;
        fill_sources(ebpf, 0, SMALL_SOURCES)?;
        // `CLIENT` holds its connections of "conc", as sock_ops would have counted them (nothing counts them here).
        limiter_tests::kernel::set_established(ebpf, client_key(service_id(2)), u64::from(LIMIT))?;
        // And `CLIENT6`'s /64, of "conc" alone.
        limiter_tests::kernel::set_established(ebpf, client6_key(service_id(2)), u64::from(LIMIT))?;
        // And of "respond" and "observe", which take the same path up to the action.
        limiter_tests::kernel::set_established(ebpf, client_key(service_id(5)), u64::from(LIMIT))?;
        limiter_tests::kernel::set_established(ebpf, client_key(service_id(6)), u64::from(LIMIT))?;
        // And under the source-wide key, which counts every connection of the source's whatever the service.
        limiter_tests::kernel::set_established(ebpf, client_key(u32::from(ALL_SERVICES)), u64::from(LIMIT))?;
        Ok(())
    })?;
    for name in [
        names::FLOOR_DROP,
        names::FLOOR_PASS,
        names::XDP_PROGRAM,
        names::BENCH_FLOOD,
        names::FLOOR_FLOOD_DROP,
        names::BENCH_SINK,
    ] {
        objs.xdp(name)?.load().map_err(|e| format!("loading {name}: {e}"))?;
    }

    let mut bed = Testbed::new(&[REFUSE_PORT, ACCEPT_PORT, RATE_OPEN_PORT, OBSERVE_PORT]);
    bed.attach_client(objs.xdp(names::BENCH_SINK)?)?;
    bed.reconnect(REFUSE_PORT, LIMIT as usize)?;
    let ack = bed.established_ack(ACCEPT_PORT)?;
    let steering = Steering::new(&mut objs.limiter, &bed)?;
    let mut small = cases(&bed, &ack);

    let objs = &mut objs;
    let bed = &mut bed;
    let cpu = timed(objs, bed, &steering, &mut small, &args)?;

    // The large worlds, one change at a time on the same maps: the sources held, then the lists too.
    let started = std::time::Instant::now();
    fill_sources(&mut objs.limiter, SMALL_SOURCES, LARGE_SOURCES)?;
    println!(
        "\nlarge world 1: CONNS holds {LARGE_SOURCES} sources (was {SMALL_SOURCES}); filled in {:.1} s\n",
        started.elapsed().as_secs_f64()
    );
    let mut sources = flat_cases(bed, &ack);
    timed(objs, bed, &steering, &mut sources, &args)?;
    let started = std::time::Instant::now();
    let large_policy = Policy { lists: large_lists(), ..policy() };
    let merged = large_policy.lists.merge(&large_policy.services).len();
    if merged != LARGE_PREFIXES {
        return Err(format!("the large lists merge to {merged} prefixes, expected {LARGE_PREFIXES}").into());
    }
    write_policy(&objs.limiter, &large_policy)?;
    println!(
        "\nlarge world 2: and the lists hold {LARGE_PREFIXES} prefixes (was 1,040); written in {:.1} s\n",
        started.elapsed().as_secs_f64()
    );
    let mut lists = flat_cases(bed, &ack);
    lists.push(dense_deny(bed, &ack)?);
    timed(objs, bed, &steering, &mut lists, &args)?;

    let all: Vec<&Case> = small.iter().chain(&sources).chain(&lists).collect();
    check_counters(objs, &all)?;
    check_flood_sources(objs, &all)?;
    check_steered(objs, &all)?;
    report(&small, &args, cpu, &machine)?;
    report_flat(&small, &sources, &lists)
}

/// Runs `cases` through [`measure`] on a thread of its own (which `measure` pins to a CPU); returns that CPU.
fn timed(objs: &mut Objects, bed: &mut Testbed, steering: &Steering, cases: &mut [Case], args: &Args) -> Result<usize> {
    std::thread::scope(|s| {
        s.spawn(|| measure(objs, bed, steering, cases, args)).join().map_err(|_| "the timing thread panicked")?
    })
}

/// The cases of [`FLAT`] and their floors, for a large world: the first packet of each was seen before.
fn flat_cases(bed: &Testbed, ack: &[u8]) -> Vec<Case> {
    cases(bed, ack)
        .into_iter()
        .filter(|c| FLAT.iter().any(|(name, floor)| c.name == *name || c.name == *floor))
        .map(|c| Case { first: None, ..c })
        .collect()
}

/// `limiter_deny` from a source among the large world's 55,000 denied hosts (198.18.32.0 on), where the trie is
/// densest: the cost of a listed host's look-up where the lists are big, not beside them.
fn dense_deny(bed: &Testbed, ack: &[u8]) -> Result<Case> {
    let deny = cases(bed, ack).into_iter().find(|c| c.name == "limiter_deny").ok_or("no case limiter_deny")?;
    let src = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 32, 0)) + 27_183));
    let frame = bed
        .frame(&frames::Tcp { sport: INJECT_SPORT, ..frames::Tcp::syn(src, IpAddr::V4(testbed::SERVER), REFUSE_PORT) });
    Ok(Case { name: "limiter_deny_dense", frame, first: None, ..deny })
}

/// The cases issue 18 wants flat, each with the floor it is measured against in its own world.
const FLAT: [(&str, &str); 7] = [
    ("limiter_refuse", "xdp_drop_floor"),
    ("limiter_refuse_v6", "xdp_drop_floor"),
    ("limiter_deny", "xdp_drop_floor"),
    ("limiter_rate_refuse", "xdp_drop_floor"),
    ("limiter_spoofed_flood", "xdp_drop_floor"),
    ("limiter_non_syn", "xdp_pass_floor"),
    ("limiter_refuse_plain", "xdp_drop_floor_plain"),
];

/// Each of [`FLAT`] against its floor in each world, and the change from one world to the next.
fn report_flat(small: &[Case], sources: &[Case], lists: &[Case]) -> Result<()> {
    let median = |cases: &[Case], name: &str| {
        cases.iter().find(|c| c.name == name).map(Case::median).ok_or_else(|| format!("no case {name}"))
    };
    let plain = small.iter().any(|c| !c.skipped && !c.live && c.name == "limiter_refuse");
    println!(
        "\nflat (issue 18): each case against its floor in its own world: small ({SMALL_SOURCES} sources held, 1,040 \
         prefixes), 1M ({LARGE_SOURCES} sources), 1M+100k (and {LARGE_PREFIXES} prefixes); target <= 1.10 for 1M / \
         small and for 1M+100k / 1M{}:",
        if plain { "; plain runs" } else { "" }
    );
    let verdict = |r: f64| {
        if r.is_nan() {
            "not measured"
        } else if r <= 1.10 {
            "met"
        } else {
            "MISSED"
        }
    };
    for (case, floor) in FLAT {
        let s = median(small, case)? / median(small, floor)?;
        let m = median(sources, case)? / median(sources, floor)?;
        let l = median(lists, case)? / median(lists, floor)?;
        println!(
            "  {:<44} small {}x ({:.0} ns)  1M {}x ({:.0} ns)  1M+100k {}x ({:.0} ns)   1M/small {} {:<7} 1M+100k/1M {} {}",
            format!("{case} / {floor}"),
            ratio(s),
            median(small, case)?,
            ratio(m),
            median(sources, case)?,
            ratio(l),
            median(lists, case)?,
            ratio(m / s),
            verdict(m / s),
            ratio(l / m),
            verdict(l / m)
        );
    }
    println!(
        "  informational (no target): a host among the 55,000 denied ones, where the trie is densest, in 1M+100k:\n  \
         {:<44} {}x ({:.0} ns)  vs limiter_deny {}",
        "limiter_deny_dense / xdp_drop_floor",
        ratio(median(lists, "limiter_deny_dense")? / median(lists, "xdp_drop_floor")?),
        median(lists, "limiter_deny_dense")?,
        ratio(median(lists, "limiter_deny_dense")? / median(lists, "limiter_deny")?),
    );
    Ok(())
}

/// The timing thread: enters the server namespace, pins itself, and runs every case round-robin.
/// [`timed_run`] with a token for every refusal, in chunks the ring holds,
/// drained between chunks; checks that every refusal was reported.
fn timed_reported(
    objs: &mut Objects,
    bed: &mut Testbed,
    steering: &Steering,
    case: &Case,
    ifindex: u32,
    repeat: u32,
    ring: &mut RingBuf<MapData>,
) -> Result<f64> {
    let before = events::unreported(&objs.limiter)?;
    events::set_tokens(&mut objs.limiter, u64::MAX / 2)?;
    events::drain(ring);
    let (mut left, mut total, mut read) = (repeat, 0f64, 0);
    while left > 0 {
        let n = left.min(events::CHUNK);
        total += timed_run(objs, bed, steering, case, ifindex, n)? * f64::from(n);
        read += events::drain(ring);
        left -= n;
    }
    events::set_tokens(&mut objs.limiter, 0)?;
    let lost = events::unreported(&objs.limiter)? - before;
    if (read, lost) != (u64::from(repeat), 0) {
        return Err(format!("{read} events read and {lost} unreported for {repeat} refusals").into());
    }
    Ok(total / f64::from(repeat))
}

fn measure(
    objs: &mut Objects,
    bed: &mut Testbed,
    steering: &Steering,
    cases: &mut [Case],
    args: &Args,
) -> Result<usize> {
    netns::enter(&bed.server.path());
    let ifindex = limiter_user::kernel::host::ifindex(&bed.server_if)?;
    let cpu = pin_cpu()?;
    println!(
        "{:<15} CPU {cpu}; {} packets per run, median of {} runs; live frames on {} (ifindex {ifindex}), batch {BATCH}\n",
        "pinned", args.repeat, args.runs, bed.server_if
    );

    if !live_frames_permitted(objs, ifindex)? {
        println!(
            "{:<15} live frames refused here (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: EPERM): every case \
             runs as a plain test run (the program's decision, its action not carried out); the netfilter peers and \
             the listener, which are stack paths, are not measured\n",
            "mode"
        );
        for case in cases.iter_mut() {
            if case.peer.is_some() || case.name == "listener_syncookies" {
                case.skipped = true;
            }
            // Nothing reaches the stack: no server counter grows per packet.
            case.live = false;
            case.per_packet = &[];
        }
    }

    // One plain run per case checks the program's action before any timing (the live mode reports none).
    for case in cases.iter_mut().filter(|c| !c.skipped) {
        set_budget(objs, case.budget)?;
        if let Some(first) = case.first {
            let got = run_once(objs, case)?;
            if got != XDP_PASS {
                return Err(
                    format!("{}: the first packet ({}) got {}", case.name, first.name(), action_name(got)).into()
                );
            }
        }
        if case.flood {
            check_rewrite(objs, case)?;
            case.sent += 2;
        }
        let got = run_once(objs, case)?;
        if got != case.expect {
            return Err(format!(
                "{}: expected {}, the program returned {}: the bench would time the wrong path",
                case.name,
                action_name(case.expect),
                action_name(got)
            )
            .into());
        }
        case.sent += 1;
    }

    let (server_before, client_before, resets_before) = (bed.server.nstat(), bed.client.nstat(), bed.resets_sent());
    // Taken once: only the small world has a reported case.
    let mut ring = if cases.iter().any(|c| c.events && !c.skipped) {
        Some(RingBuf::try_from(objs.limiter.take_map(names::EVENTS).ok_or("no EVENTS map")?)?)
    } else {
        None
    };
    // One untimed round warms caches and CPU clocks; then the timed rounds, round-robin.
    for round in 0..=args.runs {
        for case in cases.iter_mut().filter(|c| !c.skipped) {
            set_budget(objs, case.budget).map_err(|e| format!("{} (round {round}): {e}", case.name))?;
            let ns = if let (true, Some(ring)) = (case.events, ring.as_mut()) {
                timed_reported(objs, bed, steering, case, ifindex, args.repeat, ring)
            } else {
                timed_run(objs, bed, steering, case, ifindex, args.repeat)
            }
            .map_err(|e| format!("{} (round {round}): {e}", case.name))?;
            case.sent += u64::from(args.repeat);
            if round > 0 {
                case.runs.push(ns);
            }
        }
    }
    let (server_after, client_after) = (bed.server.nstat(), bed.client.nstat());
    for c in CHECKSUM_ERRORS {
        let d = delta(&server_before, &server_after, c)?;
        if d != 0 {
            return Err(
                format!("{c} grew by {d} in the server namespace: some injected frames had bad checksums").into()
            );
        }
    }
    // The client's kernel answers nothing: what the server sends to the injected SYNs dies in `bench_sink`. It
    // resets only its own connections, when the ct count peers need them opened again.
    let rsts = delta(&client_before, &client_after, "TcpOutRsts")?.saturating_sub(bed.resets_sent() - resets_before);
    if rsts > 100 {
        return Err(format!("the client sent {rsts} resets: bench_sink let the server's answers through").into());
    }
    Ok(cpu)
}

/// A ratio for the report, "-" where one side was not measured.
fn ratio(r: f64) -> String {
    if r.is_nan() { format!("{:>7}", "-") } else { format!("{r:>7.2}") }
}

/// Prints each ratio `a / b` of medians.
fn informational(
    median: &impl Fn(&'static str) -> Result<f64, String>,
    pairs: &[(&'static str, &'static str)],
) -> Result<()> {
    for &(a, b) in pairs {
        println!("  {:<56} {}", format!("{a} / {b}"), ratio(median(a)? / median(b)?));
    }
    Ok(())
}

fn report(cases: &[Case], args: &Args, cpu: usize, machine: &serde_json::Value) -> Result<()> {
    let median = |name| cases.iter().find(|c| c.name == name).map(Case::median).ok_or(format!("no case {name}"));
    let drop_floor = median("xdp_drop_floor")?;
    let live = !cases.iter().any(|c| c.skipped);
    println!("{:<28} {:>8} {:>8} {:<26} {:>8}   runs (ns)", "case", "ns/pkt", "vs ref", "ref", "vs drop");
    let mut json = Vec::new();
    for case in cases {
        if case.skipped {
            println!("{:<28} {:>8}   not measured: needs live frames", case.name, "-");
            continue;
        }
        let ns = case.median();
        let vs_ref = ns / median(case.reference)?;
        let vs_drop = ns / drop_floor;
        let runs = case.runs.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" ");
        let vs = if vs_ref.is_nan() { "-".to_owned() } else { format!("{vs_ref:.2}x") };
        println!("{:<28} {ns:>8.1} {vs:>8} {:<26} {vs_drop:>7.2}x   {runs}", case.name, case.reference);
        json.push(serde_json::json!({
            "case": case.name, "ns_per_packet": ns, "runs": case.runs, "program": case.program,
            "reference": case.reference, "vs_reference": if vs_ref.is_nan() { None } else { Some(vs_ref) }, "vs_drop_floor": vs_drop, "path": case.path,
            "packets_per_run": args.repeat, "mode": if case.live { "live_frames" } else { "plain" },
            "batch": if case.live { Some(BATCH) } else { None }, "cpu_pinned": cpu,
            "machine": machine,
        }));
    }

    println!(
        "\ntargets (issue 18; every IPv4 limiter case also looks up 1,040 list entries, the IPv6 ones none: the bench's \
         lists are IPv4; timings never fail the run):"
    );
    let targets: [(&str, &str, f64, bool); 8] = [
        ("limiter_refuse", "xdp_drop_floor", 1.3, true),
        ("limiter_refuse_v6", "xdp_drop_floor", 1.3, true),
        ("limiter_deny", "xdp_drop_floor", 1.6, true),
        ("limiter_rate_refuse", "xdp_drop_floor", 1.6, true),
        ("limiter_spoofed_flood", "xdp_drop_floor", 2.5, true),
        ("limiter_non_syn", "xdp_pass_floor", 1.05, true),
        ("nft_ct_count", "limiter_refuse", 15.0, false),
        ("iptables_connlimit_drop", "limiter_refuse", 15.0, false),
    ];
    for (a, b, target, at_most) in targets {
        let r = median(a)? / median(b)?;
        let met = if at_most { r <= target } else { r >= target };
        let op = if at_most { "<=" } else { ">=" };
        let verdict = if r.is_nan() {
            "not measured (needs live frames)"
        } else if !live {
            "not judged (plain runs; the target is for live frames)"
        } else if met {
            "met"
        } else {
            "MISSED"
        };
        println!("  {:<56} {}   target {op} {target:<4}  {verdict}", format!("{a} / {b}"), ratio(r));
    }

    println!("informational (no target): the respond action's cost, live with its stack path and as the program alone");
    informational(
        &median,
        &[
            ("limiter_respond", "xdp_drop_floor"),
            ("limiter_respond", "limiter_accept"),
            ("limiter_respond_plain", "xdp_drop_floor_plain"),
            ("limiter_respond_plain", "limiter_refuse_plain"),
        ],
    )?;
    println!("informational (no target): a source-wide budget set, next to the same path without one; observe mode");
    informational(
        &median,
        &[
            ("limiter_refuse_budget", "limiter_refuse"),
            ("limiter_refuse_by_budget", "limiter_refuse"),
            ("limiter_refuse_by_budget", "xdp_drop_floor"),
            ("limiter_spoofed_flood_budget", "limiter_spoofed_flood_conc"),
            ("limiter_observe", "listener_syncookies"),
            ("limiter_observe", "limiter_refuse"),
        ],
    )?;

    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}
