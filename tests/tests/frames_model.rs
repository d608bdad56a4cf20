//! Random and mutated frames through the loaded XDP program
//! (`BPF_PROG_TEST_RUN`), each verdict, counter change and reply compared
//! with the host-side model (`limiter_tests::model`). Frames are built
//! valid (VLAN stacks, IPv4 options and fragments, IPv6 extension-header
//! chains, every TCP flag byte, SYNs with payload) and then, half of them,
//! broken: truncated at every offset, bytes flipped in the headers, garbage
//! appended, or replaced by random bytes.
//!
//! `LIMITER_FRAMES` (default 1,000,000) sets how many; `LIMITER_FRAMES_SEED`
//! the seed (fixed by default, so CI runs the same frames every time;
//! `cargo xtask frames --seed N` picks one by hand). A mismatch names the
//! seed and the frame's number and prints its bytes: the run with that seed
//! reproduces it. Frames go through `BPF_PROG_TEST_RUN` only, never onto a
//! link: a flipped address byte leaves the test ranges in memory, not on a wire.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use limiter_common::{
    SourceKey, Verdict,
    maps::{ALL_SERVICES, action},
    prefix::Prefix,
};
use limiter_tests::{
    frames::{self, Shape, Tcp},
    kernel::{set_established, set_sessions},
    model::{self, Expect, ModelService, World, XDP_TX},
    privileged, require,
};
use limiter_user::{
    kernel::{counters, loader},
    policy::{
        lists::{AllowEntry, Cidr, DenyEntry, ListLines, Lists, ReserveEntry},
        model::{MapSizes, Policy, ResponderLimits, XdpMode},
        respond::Respond,
        service::{Action, Service},
    },
};

/// The connection limit of the limited services: held sources hold exactly
/// this many in every service, and no other source comes near it within a run.
const LIMIT: u32 = 50_000;
/// The source-wide budget; held sources hold exactly this many over all services.
const ALL_LIMIT: u32 = 100_000;
/// An allow entry's limits far above what held sources hold, and under it.
const LOOSE: u32 = 1_000_000;
const TIGHT: u32 = 40_000;
/// Sessions: a pool held full, and one held at its open part (`OPEN` in
/// use, `RESERVED` more for the reserve list).
const POOL: u32 = 1_000_000;
const OPEN: u32 = 1_000;
const RESERVED: u32 = 1_000_000;
/// Frames between two counter comparisons.
const BATCH: usize = 8_192;

const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// Service ports: (ports, action, limit, (`max_sessions`, reserved, in use)).
type ServiceRow = (&'static [u16], Action, u32, Option<(u32, u32, u32)>);
const SERVICES: [ServiceRow; 6] = [
    (&[25], Action::Reset, LIMIT, None),
    (&[110, 995], Action::Drop, LIMIT, None),
    (&[587], Action::Drop, 0, None),
    (&[143], Action::Log, LIMIT, None),
    (&[465], Action::Drop, LIMIT, Some((POOL, 0, POOL))),
    (&[993], Action::Reset, LIMIT, Some((OPEN + RESERVED, RESERVED, OPEN))),
];
/// The service with the reserve list (1-based id).
const RESERVE_SERVICE: u32 = 6;
/// Ports frames are sent to: the services' and two of no service.
const PORTS: [u16; 9] = [25, 110, 995, 587, 143, 465, 993, 2526, 80];

fn v4(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, a, b + c))
}

fn v6(g2: u16, g3: u16, low: u64) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(
        (0x2001_0db8_u128 << 96) | (u128::from(g2) << 80) | (u128::from(g3) << 64) | u128::from(low),
    ))
}

/// The lists: (deny, exempt allow), IPv4 and IPv6, some nested.
/// Prefixes as (network, length).
type Prefixes = Vec<(IpAddr, u8)>;

fn lists() -> (Prefixes, Prefixes) {
    let deny = vec![
        (v4(200, 0, 0), 24),
        (v4(201, 7, 0), 32),
        (v4(202, 0, 0), 24), // covers an exempt /28: deny wins
        (v6(0xdead, 0, 0), 48),
        (v6(0xbeef, 0, 1), 128),
    ];
    let exempt = vec![(v4(202, 16, 0), 28), (v4(203, 0, 0), 25), (v6(0x0a11, 0, 0), 48), (v6(0xbeef, 0, 0), 64)];
    (deny, exempt)
}

/// Allow entries with limits: (prefix, length, per service, over all services).
fn allow_limits() -> Vec<(IpAddr, u8, u32, u32)> {
    vec![
        (v4(12, 0, 0), 23, LOOSE, LOOSE),
        (v6(0x20, 0, 0), 48, LOOSE, LOOSE),
        (v4(16, 0, 0), 23, TIGHT, 0),
        (v6(0x21, 0, 0), 48, TIGHT, 0),
    ]
}

/// The reserve list of [`RESERVE_SERVICE`].
fn reserve() -> Prefixes {
    vec![(v4(14, 0, 0), 23), (v6(0x30, 0, 0), 48)]
}

/// Source prefixes holding `LIMIT` in every service and `ALL_LIMIT` over
/// all: IPv4 /24s and IPv6 /56s, two plain, one in each allow entry with
/// limits and one on the reserve list (each of those also has unheld sources).
fn held() -> Vec<(IpAddr, bool)> {
    let mut h = vec![(v4(10, 0, 0), true), (v4(11, 0, 0), true), (v6(0x10, 0, 0), false), (v6(0x10, 0x100, 0), false)];
    h.extend([12, 16, 14].map(|a| (v4(a, 0, 0), true)));
    h.extend([0x20, 0x21, 0x30].map(|g| (v6(g, 0, 0), false)));
    h
}

fn policy() -> Policy {
    let (deny, exempt) = lists();
    let services = SERVICES
        .iter()
        .enumerate()
        .map(|(i, (ports, action, limit, sessions))| Service {
            id: u32::try_from(i + 1).expect("small"),
            name: format!("s{}", i + 1),
            ports: ports.to_vec(),
            rate: None,
            burst: 0,
            action: *action,
            max_conn_per_source: (*limit != 0).then_some(*limit),
            max_sessions: sessions.map(|(max, _, _)| max),
            reserved_sessions: sessions.map_or(0, |(_, reserved, _)| reserved),
            dead_peer_timeout: None,
            respond: Respond::default(),
        })
        .collect();
    Policy {
        interfaces: vec![],
        xdp_mode: XdpMode::Auto,
        ipv4_prefix: 24,
        ipv6_prefix: 56,
        metrics_listen: None,
        hostname: None,
        services,
        max_conn_all_services: Some(ALL_LIMIT),
        maps: MapSizes::default(),
        responder: ResponderLimits::default(),
        lists: Lists {
            allow: exempt
                .into_iter()
                .map(|(ip, len)| (ip, len, 0, 0))
                .chain(allow_limits())
                .map(|(ip, len, per, all)| AllowEntry {
                    prefix: Cidr(Prefix::new(ip, len)),
                    max_conn_per_source: (per != 0).then_some(per),
                    max_conn_all_services: (all != 0).then_some(all),
                    rate: None,
                    burst: None,
                    comment: None,
                })
                .collect(),
            deny: deny
                .into_iter()
                .map(|(ip, len)| DenyEntry { prefix: Cidr(Prefix::new(ip, len)), comment: None })
                .collect(),
            reserve: reserve()
                .into_iter()
                .map(|(ip, len)| ReserveEntry {
                    service: format!("s{RESERVE_SERVICE}"),
                    prefix: Cidr(Prefix::new(ip, len)),
                    comment: None,
                })
                .collect(),
        },
        list_lines: ListLines::default(),
    }
}

fn world() -> World {
    let (deny, exempt) = lists();
    let mut w = World {
        deny,
        exempt,
        allow_limits: allow_limits().into_iter().map(|(ip, len, per, all)| ((ip, len), per, all)).collect(),
        reserve: reserve().into_iter().map(|p| (p, RESERVE_SERVICE)).collect(),
        all_limit: ALL_LIMIT,
        ipv4_prefix: 24,
        ipv6_prefix: 56,
        held_per_service: u64::from(LIMIT),
        held_all: u64::from(ALL_LIMIT),
        ..World::default()
    };
    for (i, (ports, action, limit, sessions)) in SERVICES.iter().enumerate() {
        let action = match action {
            Action::Reset => action::RESET,
            Action::Log => action::LOG,
            _ => action::DROP,
        };
        for port in *ports {
            let (max_sessions, reserved, in_use) = sessions.unwrap_or_default();
            w.ports.insert(
                *port,
                ModelService {
                    id: u32::try_from(i + 1).expect("small"),
                    action,
                    limit: *limit,
                    max_sessions,
                    open_sessions: max_sessions - reserved,
                    sessions_in_use: u64::from(in_use),
                },
            );
        }
    }
    for (ip, is_v4) in held() {
        let addr = addr16(ip);
        w.held.insert(w.source_prefix(&addr, is_v4));
    }
    w
}

fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// splitmix64: small, seedable, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("fits")
    }

    /// True with probability `percent`%.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn u16(&mut self) -> u16 {
        let b = self.next().to_le_bytes();
        u16::from_le_bytes([b[0], b[1]])
    }

    fn u32(&mut self) -> u32 {
        let b = self.next().to_le_bytes();
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Uniform in `0..n` (n <= 65,536), as a `u16`.
    fn small(&mut self, n: usize) -> u16 {
        u16::try_from(self.below(n)).expect("n <= 65,536")
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

/// A source address: held, denied, exempt, or anywhere in the test ranges.
fn source(r: &mut Rng, is_v4: bool) -> IpAddr {
    let host = r.byte();
    let low = r.next() & 0xffff;
    match (r.below(6), is_v4) {
        (0, true) => v4(r.pick(&[10, 11]), 0, host),
        (1, true) => v4(r.pick(&[200, 201, 202]), 0, host),
        (2, true) => v4(r.pick(&[202, 203]), r.pick(&[16, 0]), host & 0x0f),
        // The allow entries with limits and the reserve list, held or not.
        (3, true) => v4(r.pick(&[12, 13, 14, 15, 16, 17]), 0, host),
        (_, true) => IpAddr::V4(Ipv4Addr::from(0xc612_0000 | u32::from(r.u16()) | (u32::from(r.byte() & 1) << 16))),
        (0, false) => v6(0x10, r.pick(&[0, 0x100, 0x1ff]), low),
        (1, false) => v6(0xdead, r.small(4), low),
        (2, false) => v6(r.pick(&[0x0a11, 0xbeef]), r.small(2), r.pick(&[0, 1, low])),
        (3, false) => v6(r.pick(&[0x20, 0x21, 0x30]), r.pick(&[0, 0x100]), low),
        (_, false) => v6(r.u16(), r.u16(), r.next()),
    }
}

/// A well-formed frame of a random shape.
fn valid(r: &mut Rng) -> Vec<u8> {
    let is_v4 = r.chance(50);
    let src = source(r, is_v4);
    let dst = if is_v4 { IpAddr::V4(SERVER4) } else { IpAddr::V6(SERVER6) };
    let dport = if r.chance(10) { r.u16() } else { r.pick(&PORTS) };
    let flags = if r.chance(50) { frames::SYN } else { r.byte() };
    let mut options = Vec::new();
    if r.chance(70) {
        options.extend_from_slice(&[2, 4, 5, 0xb4]);
    }
    if r.chance(20) {
        let n = r.below(36);
        options.extend(r.bytes(n));
    }
    let payload = if r.chance(15) {
        let n = r.below(48);
        r.bytes(n)
    } else {
        Vec::new()
    };
    let tcp = Tcp { src, dst, sport: r.u16(), dport, seq: r.u32(), ack: r.u32(), flags, options, payload };
    let vlans = (0..r.pick(&[0, 0, 0, 0, 0, 1, 1, 2, 2, 3]))
        .map(|_| (r.pick(&[0x8100u16, 0x88a8]), r.u16() & 0x0fff))
        .collect();
    let mut shape = Shape { vlans, ..Shape::default() };
    if is_v4 {
        if r.chance(20) {
            let n = r.below(41);
            shape.ip_options = r.bytes(n);
        }
        if r.chance(10) {
            let any = r.u16();
            shape.frag = r.pick(&[0x2000, 0x4000, 0x0001, 0x1fff, 0x2001, any]);
        }
    } else if r.chance(30) {
        let n = r.pick(&[1, 1, 2, 3, 4, 5, 5, 6, 7]);
        shape.ipv6_ext = (0..n)
            .map(|_| match r.pick(&[0u8, 43, 60, 60, 51, 44, 59, 135]) {
                51 => (51, 4 * (2 + r.below(6))),
                t => (t, 8 * (1 + r.below(4))),
            })
            .collect();
    }
    let l3 = 14 + 4 * shape.vlans.len();
    let mut f = frames::frame(&tcp, &shape);
    if r.chance(5) {
        // An IP length that disagrees with the frame: the RST's ACK number
        // comes from it, and a TCP header longer than it allows is dropped.
        let at = if is_v4 { l3 + 2 } else { l3 + 4 };
        let len = u16::from_be_bytes([f[at], f[at + 1]]);
        let delta = 1 + r.small(40);
        let len = if r.chance(70) { len.saturating_sub(delta) } else { len + delta };
        f[at..at + 2].copy_from_slice(&len.to_be_bytes());
    }
    f
}

/// Breaks a frame: truncates it, flips header bytes, appends garbage.
fn mutate(r: &mut Rng, f: &mut Vec<u8>) {
    for _ in 0..=r.below(3) {
        match r.below(4) {
            0 => {
                let at = 14 + r.below(f.len().saturating_sub(13).max(1));
                f.truncate(at);
            }
            1 => {
                // A header byte (Ethernet type to the first bytes of TCP).
                let end = f.len().min(110);
                if end > 12 {
                    let i = 12 + r.below(end - 12);
                    f[i] = if r.chance(50) { r.byte() } else { f[i] ^ (1 << r.below(8)) };
                }
            }
            2 => {
                let i = r.below(f.len());
                f[i] ^= r.byte() | 1;
            }
            _ => {
                let n = 1 + r.below(64);
                f.extend(r.bytes(n));
            }
        }
    }
}

/// Random bytes, half of them with an IP `EtherType`.
fn noise(r: &mut Rng) -> Vec<u8> {
    let n = 14 + r.below(120);
    let mut f = r.bytes(n);
    if r.chance(50) {
        f[12..14].copy_from_slice(&r.pick(&[0x0800u16, 0x86dd]).to_be_bytes());
    }
    f
}

/// The frames of a run, in order: mostly one at a time, with every
/// truncation of one valid frame in 500 following it.
struct Frames {
    r: Rng,
    queue: Vec<Vec<u8>>,
}

impl Iterator for Frames {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if let Some(f) = self.queue.pop() {
            return Some(f);
        }
        let r = &mut self.r;
        let f = match r.below(1000) {
            0..=1 => {
                let f = valid(r);
                self.queue = (14..f.len()).rev().map(|n| f[..n].to_vec()).collect();
                f
            }
            2..=29 => noise(r),
            30..=499 => valid(r),
            _ => {
                let mut f = valid(r);
                mutate(r, &mut f);
                f
            }
        };
        Some(f)
    }
}

fn hex(f: &[u8]) -> String {
    f.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Counter values by (observed, service row, verdict number).
type Counts = BTreeMap<(bool, u32, u32), u64>;

fn read_counts(ebpf: &Ebpf) -> Counts {
    let mut c = Counts::new();
    for (observed, rows) in [
        (false, counters::read_counters(ebpf).expect("counters")),
        (true, counters::read_observed(ebpf).expect("observed")),
    ] {
        for (service, row) in rows.iter().enumerate() {
            for v in Verdict::ALL {
                let n = row[v as usize];
                if n != 0 {
                    c.insert((observed, u32::try_from(service).expect("small"), v as u32), n);
                }
            }
        }
    }
    c
}

fn add(c: &mut Counts, e: &Expect) {
    *c.entry((false, e.counter.0, e.counter.1 as u32)).or_default() += 1;
    if let Some((s, v)) = e.observed {
        *c.entry((true, s, v as u32)).or_default() += 1;
    }
}

struct Run {
    ebpf: Ebpf,
    seed: u64,
}

impl Run {
    /// One frame: the action and the frame afterwards.
    fn frame(&mut self, f: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut Xdp =
            self.ebpf.program_mut(limiter_common::maps::names::XDP_PROGRAM).expect("program").try_into().expect("xdp");
        let mut out = vec![0u8; f.len() + 256];
        let r = prog
            .test_run(TestRunOptions { data_in: Some(f), data_out: Some(&mut out), repeat: 1, ..Default::default() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Compares one frame's action and bytes afterwards with the model.
    fn check(&mut self, n: usize, f: &[u8], e: &Expect) {
        let (got, out) = self.frame(f);
        let seed = self.seed;
        assert_eq!(got, e.action, "frame {n} (seed {seed}): action {got}, model says {e:?}\nframe: {}", hex(f));
        if got == XDP_TX {
            let want = e.reply.as_ref().expect("a TX has a reply");
            let (ip, tcp, l3) = model::reply_checksums(want);
            let mut masked = out.clone();
            if masked.len() == want.len() {
                if let Some(i) = ip {
                    masked[i..i + 2].fill(0);
                }
                masked[tcp..tcp + 2].fill(0);
            }
            assert!(
                masked == *want && frames::checksums_ok(&out, l3),
                "frame {n} (seed {seed}): reply {}\nmodel: {}\nframe: {}",
                hex(&out),
                hex(want),
                hex(f)
            );
        } else {
            assert_eq!(out, f, "frame {n} (seed {seed}): not sent back, yet changed\nframe: {}", hex(f));
        }
    }
}

#[test]
fn random_and_mutated_frames_agree_with_the_model() {
    require!(privileged());
    // A million here; under emulation (the qemu guests) a tenth as many.
    let count: usize = std::env::var("LIMITER_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000 / limiter_tests::time_factor() as usize);
    let seed: u64 = std::env::var("LIMITER_FRAMES_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x11a1_7e20);
    let world = world();
    let mut run = Run { ebpf: loader::load(&policy()).expect("load the kernel object"), seed };
    for (ip, is_v4) in held() {
        let addr = world.source_prefix(&addr16(ip), is_v4);
        // Every service (an allow entry's limit applies to one without its
        // own), and over all services.
        for service in
            (1..=SERVICES.len()).map(|i| (u8::try_from(i).expect("small"), LIMIT)).chain([(ALL_SERVICES, ALL_LIMIT)])
        {
            let key = SourceKey { addr, service: service.0, family: model::family_of(is_v4), pad: [0; 2] };
            set_established(&mut run.ebpf, key, u64::from(service.1)).expect("hold the source");
        }
    }
    for (i, (_, _, _, sessions)) in SERVICES.iter().enumerate() {
        if let Some((_, _, in_use)) = sessions {
            let id = u32::try_from(i + 1).expect("small");
            set_sessions(&mut run.ebpf, id, u64::from(*in_use)).expect("hold the sessions");
        }
    }

    let start = Instant::now();
    let mut frames = Frames { r: Rng(seed), queue: Vec::new() };
    let mut want = read_counts(&run.ebpf);
    let mut outcomes: BTreeMap<(u32, u32, u32), u64> = BTreeMap::new();
    let mut done = 0;
    while done < count {
        let batch: Vec<(Vec<u8>, Expect)> = frames
            .by_ref()
            .filter_map(|f| model::expect(&world, &f).map(|e| (f, e)))
            .take(BATCH.min(count - done))
            .collect();
        let before = want.clone();
        for (i, (f, e)) in batch.iter().enumerate() {
            run.check(done + i, f, e);
            add(&mut want, e);
            let (s, v) = e.observed.unwrap_or(e.counter);
            *outcomes.entry((s, v as u32, e.action)).or_default() += 1;
        }
        if read_counts(&run.ebpf) != want {
            // Find the frame: again one at a time, reading the counters after
            // each (the world's verdicts do not depend on what ran before).
            let mut expect = read_counts(&run.ebpf);
            for (i, (f, e)) in batch.iter().enumerate() {
                run.check(done + i, f, e);
                add(&mut expect, e);
                let got = read_counts(&run.ebpf);
                assert_eq!(
                    got,
                    expect,
                    "frame {} (seed {seed}): counters differ from the model's {e:?} (batch from {before:?})\nframe: {}",
                    done + i,
                    hex(f)
                );
            }
            panic!("frames {done}.. (seed {seed}): counters differed, then agreed one frame at a time");
        }
        done += batch.len();
    }
    let took = start.elapsed();
    eprintln!(
        "{done} frames (seed {seed}) agreed with the model in {took:.1?}; by (service, verdict or observe mode's, action):"
    );
    for ((s, v, a), n) in &outcomes {
        eprintln!("  service {s} {:?} action {a}: {n}", Verdict::ALL[*v as usize]);
    }
    // The run must have reached every outcome, or it proves less than it says.
    for (s, v, a) in [
        (0, Verdict::PassedOther, model::XDP_PASS),
        (1, Verdict::PassedNonSyn, model::XDP_PASS),
        (1, Verdict::Accepted, model::XDP_PASS),
        (1, Verdict::RefusedConcurrency, XDP_TX),
        (1, Verdict::RefusedConcurrency, model::XDP_DROP),
        (1, Verdict::RefusedDeny, XDP_TX),
        (2, Verdict::RefusedConcurrency, model::XDP_DROP),
        (3, Verdict::RefusedDeny, model::XDP_DROP),
        (3, Verdict::Accepted, model::XDP_PASS),
        (4, Verdict::Accepted, model::XDP_PASS),
        (4, Verdict::RefusedConcurrency, model::XDP_PASS),
        // The budget on a service with no limit of its own.
        (3, Verdict::RefusedConcurrency, model::XDP_DROP),
        (5, Verdict::RefusedSessions, model::XDP_DROP),
        (6, Verdict::RefusedReserve, XDP_TX),
        (6, Verdict::Accepted, model::XDP_PASS),
        (6, Verdict::RefusedConcurrency, XDP_TX),
    ] {
        let floor = (count / 20_000).max(1) as u64;
        assert!(
            outcomes.get(&(s, v as u32, a)).copied().unwrap_or(0) >= floor,
            "fewer than {floor} frames of service {s} {v:?} -> {a} in {done}: the generator misses a case"
        );
    }
}
