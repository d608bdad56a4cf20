//! The loaded XDP program on crafted frames through `BPF_PROG_TEST_RUN`:
//! every header variant the parser handles, truncated and malformed frames,
//! and the exact RST reply. Each test loads a fresh object, so buckets and
//! counters start empty.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::net::IpAddr;

use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use limiter_common::{Verdict, maps::names, pending};
use limiter_tests::{
    frames::{self, ACK, CLIENT_MAC, RST, SERVER_MAC, SYN, Shape, Tcp, checksums_ok, v4, v6},
    privileged, require,
};
use limiter_user::{
    kernel::{counters, loader, writer},
    policy::{
        model::{Policy, XdpMode},
        service::{Action, Rate, Service},
    },
};

const PASS: u32 = 2;
const DROP: u32 = 1;
const TX: u32 = 3;
const PORT: u16 = 2525;

struct Harness {
    ebpf: Ebpf,
}

fn policy(action: Action, burst: u64, v4_prefix: u8, v6_prefix: u8) -> Policy {
    Policy {
        interfaces: vec![],
        xdp_mode: XdpMode::Auto,
        ipv4_prefix: v4_prefix,
        ipv6_prefix: v6_prefix,
        metrics_listen: None,
        hostname: None,
        services: vec![Service {
            id: 1,
            name: "smtp".into(),
            ports: vec![PORT, 465],
            // One per minute: nothing refills while a test runs.
            rate: Some(Rate { count: 1, per_secs: 60 }),
            burst,
            action,
            max_conn_per_source: None,
            max_sessions: None,
            reserved_sessions: 0,
            dead_peer_timeout: None,
            respond: limiter_user::policy::respond::Respond::default(),
        }],
        max_conn_all_services: None,
        maps: limiter_user::policy::model::MapSizes::default(),
        responder: limiter_user::policy::model::ResponderLimits::default(),
        lists: limiter_user::policy::lists::Lists::default(),
        list_lines: limiter_user::policy::lists::ListLines::default(),
    }
}

impl Harness {
    fn new(p: &Policy) -> Self {
        Self { ebpf: loader::load(p).expect("load the kernel object") }
    }

    fn reset(burst: u64) -> Self {
        Self::new(&policy(Action::Reset, burst, 32, 64))
    }

    /// Runs one frame; returns the XDP action and the frame afterwards.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut Xdp = self.ebpf.program_mut(names::XDP_PROGRAM).expect("program").try_into().expect("xdp");
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn action(&mut self, frame: &[u8]) -> u32 {
        self.run(frame).0
    }

    /// Spends the source's burst: `burst` SYNs must pass.
    fn exhaust(&mut self, frame: &[u8], burst: u64) {
        for i in 0..burst {
            assert_eq!(self.action(frame), PASS, "SYN {i} within the burst must pass");
        }
    }

    fn counter(&self, service: u32, v: Verdict) -> u64 {
        counters::read_counters(&self.ebpf).expect("counters")[service as usize][v as usize]
    }
}

fn server4() -> IpAddr {
    v4(1)
}

fn server6() -> IpAddr {
    v6(0, 1)
}

/// Offset of the IP header for a shape.
fn l3(shape: &Shape) -> usize {
    14 + 4 * shape.vlans.len()
}

/// The RST+ACK the program must send for `syn` (checksum fields zero; the
/// caller checks them separately with an independent implementation).
fn expected_rst(syn: &Tcp, shape: &Shape) -> Vec<u8> {
    let mut f = frames::ethernet(CLIENT_MAC, SERVER_MAC, shape);
    match (syn.dst, syn.src) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, 6, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => unreachable!(),
    }
    f.extend_from_slice(&syn.dport.to_be_bytes());
    f.extend_from_slice(&syn.sport.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    let payload = u32::try_from(syn.payload.len()).expect("small");
    f.extend_from_slice(&syn.seq.wrapping_add(1).wrapping_add(payload).to_be_bytes());
    f.extend_from_slice(&[0x50, RST | ACK, 0, 0, 0, 0, 0, 0]);
    f
}

/// Asserts `out` is exactly the RST for `syn`, with valid checksums.
fn assert_rst(out: &[u8], syn: &Tcp, shape: &Shape) {
    let want = expected_rst(syn, shape);
    assert_eq!(out.len(), want.len(), "reply length: got {out:02x?}");
    let l3 = l3(shape);
    let mut masked = out.to_vec();
    let (ipc, tcpc) = if syn.src.is_ipv4() { (Some(l3 + 10), l3 + 20 + 16) } else { (None, l3 + 40 + 16) };
    if let Some(i) = ipc {
        masked[i..i + 2].fill(0);
    }
    masked[tcpc..tcpc + 2].fill(0);
    assert_eq!(masked, want, "reply frame");
    assert!(checksums_ok(out, l3), "reply checksums must verify: {out:02x?}");
}

#[test]
fn ipv4_burst_then_exact_rst() {
    require!(privileged());
    let mut h = Harness::reset(3);
    let syn = Tcp::syn(v4(10), server4(), PORT);
    let f = frames::frame(&syn, &Shape::default());
    h.exhaust(&f, 3);
    let (action, out) = h.run(&f);
    assert_eq!(action, TX, "4th SYN refused with XDP_TX");
    assert_rst(&out, &syn, &Shape::default());
    assert_eq!(h.counter(1, Verdict::Accepted), 3);
    assert_eq!(h.counter(1, Verdict::RefusedRate), 1);
    // Another source is untouched.
    assert_eq!(h.action(&frames::syn(v4(11), server4(), PORT)), PASS);
}

#[test]
fn ipv6_burst_then_exact_rst() {
    require!(privileged());
    let mut h = Harness::reset(2);
    let syn = Tcp::syn(v6(5, 7), server6(), 465);
    let f = frames::frame(&syn, &Shape::default());
    h.exhaust(&f, 2);
    let (action, out) = h.run(&f);
    assert_eq!(action, TX);
    assert_rst(&out, &syn, &Shape::default());
}

#[test]
fn drop_action_drops() {
    require!(privileged());
    let mut h = Harness::new(&policy(Action::Drop, 1, 32, 64));
    let f = frames::syn(v4(10), server4(), PORT);
    h.exhaust(&f, 1);
    assert_eq!(h.action(&f), DROP);
    assert_eq!(h.counter(1, Verdict::RefusedRate), 1);
}

#[test]
fn vlan_tags_are_parsed_and_kept_in_the_reply() {
    require!(privileged());
    for vlans in [vec![(0x8100, 10)], vec![(0x88a8, 100), (0x8100, 20)], vec![(0x8100, 5), (0x8100, 6)]] {
        let mut h = Harness::reset(1);
        let shape = Shape { vlans, ..Shape::default() };
        for syn in [Tcp::syn(v4(20), server4(), PORT), Tcp::syn(v6(1, 2), server6(), PORT)] {
            let f = frames::frame(&syn, &shape);
            h.exhaust(&f, 1);
            let (action, out) = h.run(&f);
            assert_eq!(action, TX, "{shape:?}");
            assert_rst(&out, &syn, &shape);
        }
    }
    // Three tags are more than the parser reads: the frame passes.
    let mut h = Harness::reset(1);
    let shape = Shape { vlans: vec![(0x8100, 1), (0x8100, 2), (0x8100, 3)], ..Shape::default() };
    let f = frames::frame(&Tcp::syn(v4(21), server4(), PORT), &shape);
    for _ in 0..3 {
        assert_eq!(h.action(&f), PASS);
    }
}

#[test]
fn ipv4_options_any_ihl() {
    require!(privileged());
    let mut h = Harness::reset(1);
    for (i, words) in (1u8..=10).enumerate() {
        // NOPs then end-of-list: 4 * words bytes of options, IHL 5 + words.
        let mut opts = vec![1u8; usize::from(words) * 4 - 1];
        opts.push(0);
        let shape = Shape { ip_options: opts, ..Shape::default() };
        let syn = Tcp::syn(v4(30 + u8::try_from(i).expect("small")), server4(), PORT);
        let f = frames::frame(&syn, &shape);
        h.exhaust(&f, 1);
        let (action, out) = h.run(&f);
        assert_eq!(action, TX, "IHL {}", 5 + words);
        // The reply has no IP options: IHL 5.
        assert_rst(&out, &syn, &Shape::default());
    }
}

#[test]
fn syn_with_data_is_acked_past_the_data() {
    require!(privileged());
    let mut h = Harness::reset(1);
    let mut syn = Tcp::syn(v4(40), server4(), PORT);
    syn.payload = b"EHLO fast.open".to_vec();
    syn.seq = u32::MAX - 3; // the ACK number wraps
    let f = frames::frame(&syn, &Shape::default());
    h.exhaust(&f, 1);
    let (action, out) = h.run(&f);
    assert_eq!(action, TX);
    assert_rst(&out, &syn, &Shape::default());
}

#[test]
fn ipv6_extension_headers() {
    require!(privileged());
    // Hop-by-hop, routing, destination options and AH are skipped.
    let mut h = Harness::reset(1);
    let shapes = [
        vec![(0u8, 8usize)],
        vec![(0, 8), (43, 24), (51, 16), (60, 16)],
        vec![(60, 8), (60, 8), (60, 8), (60, 8), (60, 8)],
    ];
    for (i, ext) in shapes.into_iter().enumerate() {
        let shape = Shape { ipv6_ext: ext, ..Shape::default() };
        let syn = Tcp::syn(v6(100 + u16::try_from(i).expect("small"), 1), server6(), PORT);
        let f = frames::frame(&syn, &shape);
        h.exhaust(&f, 1);
        let (action, out) = h.run(&f);
        assert_eq!(action, TX, "{shape:?}");
        assert_rst(&out, &syn, &Shape::default());
    }
    // A fragment header, more headers than the parser skips, and an unknown
    // header all pass, however often they are sent.
    for (i, ext) in [vec![(44u8, 8usize)], vec![(60, 8); 7], vec![(0, 8), (59, 8)]].into_iter().enumerate() {
        let shape = Shape { ipv6_ext: ext, ..Shape::default() };
        let f = frames::frame(&Tcp::syn(v6(200 + u16::try_from(i).expect("small"), 1), server6(), PORT), &shape);
        for _ in 0..3 {
            assert_eq!(h.action(&f), PASS, "{shape:?}");
        }
    }
}

#[test]
fn everything_but_a_syn_to_a_service_port_passes() {
    require!(privileged());
    let mut h = Harness::reset(1);
    let src = v4(50);
    let base = Tcp::syn(src, server4(), PORT);
    // Empty the bucket so that anything mistaken for a SYN would be refused.
    h.exhaust(&frames::frame(&base, &Shape::default()), 1);

    let with_flags = |flags: u8| frames::frame(&Tcp { flags, ..base.clone() }, &Shape::default());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ACK", with_flags(ACK)),
        ("SYN+ACK", with_flags(SYN | ACK)),
        ("RST", with_flags(RST)),
        ("FIN+ACK", with_flags(0x11)),
        ("other port", frames::frame(&Tcp { dport: 2526, ..base.clone() }, &Shape::default())),
        ("fragment MF", frames::frame(&base, &Shape { frag: 0x2000, ..Shape::default() })),
        ("fragment offset", frames::frame(&base, &Shape { frag: 0x0010, ..Shape::default() })),
    ];
    for (name, f) in &cases {
        for _ in 0..3 {
            assert_eq!(h.action(f), PASS, "{name}");
        }
    }
    assert_eq!(h.counter(1, Verdict::PassedNonSyn), 12, "ACK, SYN+ACK, RST, FIN+ACK to the port are non-SYN");
    assert_eq!(h.counter(1, Verdict::RefusedRate), 0);

    // Not IP, UDP to the port, ICMP.
    let mut arp = frames::syn(src, server4(), PORT);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut udp = frames::syn(src, server4(), PORT);
    udp[14 + 9] = 17;
    let mut icmp6 = frames::syn(v6(9, 9), server6(), PORT);
    icmp6[14 + 6] = 58;
    for (name, f) in [("ARP", arp), ("UDP", udp), ("ICMPv6", icmp6)] {
        assert_eq!(h.action(&f), PASS, "{name}");
    }
}

#[test]
fn truncated_and_malformed_frames_pass() {
    require!(privileged());
    let mut h = Harness::reset(1);
    let shapes =
        [Shape::default(), Shape { vlans: vec![(0x8100, 7)], ip_options: vec![1, 1, 1, 0], ..Shape::default() }];
    for (i, shape) in shapes.iter().enumerate() {
        for syn in [
            Tcp::syn(v4(60 + u8::try_from(i).expect("small")), server4(), PORT),
            Tcp::syn(v6(60 + u16::try_from(i).expect("small"), 1), server6(), PORT),
        ] {
            let f = frames::frame(&syn, shape);
            h.exhaust(&f, 1);
            // The full frame is now refused; every truncation of it passes.
            assert_eq!(h.action(&f), TX);
            let tcp_end = f.len() - syn.options.len();
            for len in 14..tcp_end {
                assert_eq!(h.action(&f[..len]), PASS, "frame cut to {len} bytes ({shape:?})");
            }
        }
    }

    let f = frames::syn(v4(70), server4(), PORT);
    let mutate = |at: usize, value: u8| {
        let mut m = f.clone();
        m[at] = value;
        m
    };
    let cases = [
        ("IHL 4", mutate(14, 0x44)),
        ("IP version 6 in an IPv4 frame", mutate(14, 0x65)),
        ("total length shorter than the header", {
            let mut m = f.clone();
            m[16..18].copy_from_slice(&10u16.to_be_bytes());
            m
        }),
        ("IHL past the frame", mutate(14, 0x4f)),
    ];
    h.exhaust(&f, 1);
    for (name, m) in cases {
        assert_eq!(h.action(&m), PASS, "{name}");
    }
}

#[test]
fn prefix_aggregation_shares_a_bucket() {
    require!(privileged());
    let mut h = Harness::new(&policy(Action::Drop, 2, 24, 48));
    // 198.18.0.10 and .11 share a /24.
    assert_eq!(h.action(&frames::syn(v4(10), server4(), PORT)), PASS);
    assert_eq!(h.action(&frames::syn(v4(11), server4(), PORT)), PASS);
    assert_eq!(h.action(&frames::syn(v4(12), server4(), PORT)), DROP);
    // 2001:db8:0:1:: and 2001:db8:0:2:: share a /48; 2001:db8:1:: does not.
    assert_eq!(h.action(&frames::syn(v6(1, 1), server6(), PORT)), PASS);
    assert_eq!(h.action(&frames::syn(v6(2, 1), server6(), PORT)), PASS);
    assert_eq!(h.action(&frames::syn(v6(3, 1), server6(), PORT)), DROP);
    let other: IpAddr = "2001:db8:1::1".parse().expect("v6");
    assert_eq!(h.action(&frames::syn(other, server6(), PORT)), PASS);
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; pointers are valid for the sizes given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set), 0, "pin to CPU {cpu}");
    }
}

#[test]
fn bucket_is_exact_across_cpus() {
    const BURST: u64 = 500;
    require!(privileged());
    // SAFETY: sysconf has no preconditions.
    let cpus = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1);
    assert!(cpus >= 2 || !limiter_tests::privileged_required(), "needs two CPUs to race");
    let p = policy(Action::Drop, BURST, 32, 64);
    let interval_ns = p.services[0].rate.as_ref().map_or(0, |r| r.per_secs * 1_000_000_000 / r.count);
    let h = Harness::new(&p);
    let frame = frames::syn(v4(90), server4(), PORT);
    let prog: &Xdp = h.ebpf.program(names::XDP_PROGRAM).expect("program").try_into().expect("xdp");
    // The programs' clock (bpf_ktime_get_coarse_ns).
    let coarse_ns = || {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec it is given.
        assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut t) }, 0);
        u64::try_from(t.tv_sec).expect("positive") * 1_000_000_000 + u64::try_from(t.tv_nsec).expect("positive")
    };
    let (started, t0) = (std::time::Instant::now(), coarse_ns());
    // Each CPU sends 20000 SYNs of one source at once: together they may
    // spend exactly BURST tokens, never one more.
    std::thread::scope(|s| {
        for cpu in 0..cpus.min(4) {
            let frame = &frame;
            s.spawn(move || {
                pin_to_cpu(cpu);
                for _ in 0..20 {
                    prog.test_run(TestRunOptions { data_in: Some(frame), repeat: 1000, ..Default::default() })
                        .expect("test run");
                }
            });
        }
    });
    let took = started.elapsed();
    // Every admission through the compare-and-swap moved the source's TAT
    // one interval ahead of the first SYN's time (a refill admission too);
    // an admission that left it alone came from the fail-open after the
    // last compare-and-swap failed. The interval (a minute) is far longer
    // than the run, so the count of intervals is exact.
    let key = source_key(v4(90), 1);
    let tag = pending::slot_of(pending::hash(key.words()), 1).1;
    let (index, _) = limiter_tests::kernel::slot_index(&h.ebpf, &key).expect("slot index");
    let slots: aya::maps::Array<_, pending::Slot> =
        aya::maps::Array::try_from(h.ebpf.map(names::PENDING).expect("PENDING")).expect("array");
    let tat = [index & !1, index | 1]
        .iter()
        .map(|i| slots.get(i, 0).expect("slot").rate)
        .map(|word| limiter_common::bucket::slot::tat(word, tag))
        .max()
        .expect("two slots");
    let written = (tat + limiter_common::bucket::slot::UNIT_NS).saturating_sub(t0) / interval_ns;
    let accepted = h.counter(1, Verdict::Accepted);
    eprintln!("bucket: {accepted} admitted, {written} spent a token, in {took:?}");
    assert!(took.as_nanos() < u128::from(interval_ns / 2), "the run took {took:?}: a token could have refilled");
    assert_eq!(
        accepted,
        BURST,
        "admitted exactly the burst across CPUs: {written} admissions spent a token, {} were admitted \
         without one (the fail-open after failed compare-and-swaps); the run took {took:?}, a token refills \
         in {} s",
        accepted.saturating_sub(written),
        interval_ns / 1_000_000_000
    );
    let sent = u64::try_from(cpus.min(4)).expect("small") * 20_000;
    assert_eq!(h.counter(1, Verdict::RefusedRate), sent - BURST);
}

/// The kernel's key for `src` and `service` at the test policy's /32 and /64.
fn source_key(src: IpAddr, service: u8) -> limiter_common::SourceKey {
    let IpAddr::V4(v4) = src else { panic!("an IPv4 source") };
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&v4.octets());
    limiter_common::SourceKey { addr, service, family: limiter_common::maps::family::V4, pad: [0; 2] }
}

/// A SYN from `src` that starts a handshake of its own: a client port and
/// ISN never sent before in this process. (The same frame sent again is a
/// retransmission of one handshake, which a source with a connection limit
/// gets through on the first one's reservation.)
fn attempt(src: IpAddr) -> Vec<u8> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    syn_from(src, 20_000 + u16::try_from(n % 20_000).expect("small"), n)
}

/// Writes an established count for `src` as `sock_ops` would.
fn set_established(h: &mut Harness, src: [u8; 4], service: u8, n: u64) {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&src);
    let key = limiter_common::SourceKey { addr, service, family: limiter_common::maps::family::V4, pad: [0; 2] };
    limiter_tests::kernel::set_established(&mut h.ebpf, key, n).expect("established");
}

/// Writes `n` for `src` into the `CONNS`-shaped map `map`.
fn set_count(h: &mut Harness, map: &str, src: [u8; 4], service: u8, n: u64) {
    let mut conns: aya::maps::HashMap<_, limiter_common::SourceKey, u64> =
        aya::maps::HashMap::try_from(h.ebpf.map_mut(map).expect("map")).expect("hash map");
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&src);
    let key = limiter_common::SourceKey { addr, service, family: limiter_common::maps::family::V4, pad: [0; 2] };
    conns.insert(key, n, 0).expect("insert");
}

#[test]
fn concurrency_counts_established_and_pending() {
    require!(privileged());
    let mut p = policy(Action::Reset, 1, 32, 64);
    p.services[0].rate = None;
    p.services[0].max_conn_per_source = Some(3);
    let mut h = Harness::new(&p);
    let f = || attempt(v4(100));
    // No established connections: three handshakes may be in flight.
    for i in 0..3 {
        assert_eq!(h.action(&f()), PASS, "attempt {i}");
    }
    let (action, out) = h.run(&frames::syn(v4(100), server4(), PORT));
    assert_eq!(action, TX, "4th concurrent attempt refused");
    assert_rst(&out, &Tcp::syn(v4(100), server4(), PORT), &Shape::default());
    assert_eq!(h.counter(1, Verdict::RefusedConcurrency), 1);
    assert_eq!(h.counter(1, Verdict::RefusedRate), 0);

    // Another source with two established connections gets one more.
    set_established(&mut h, [198, 18, 0, 101], 1, 2);
    let g = || attempt(v4(101));
    assert_eq!(h.action(&g()), PASS);
    assert_eq!(h.action(&g()), TX);
    // A close (count back to 1) lets one more in.
    set_established(&mut h, [198, 18, 0, 101], 1, 1);
    assert_eq!(h.action(&g()), PASS);
    assert_eq!(h.action(&g()), TX);
    assert_eq!(h.counter(1, Verdict::Accepted), 5);
    assert_eq!(h.counter(1, Verdict::RefusedConcurrency), 3);
}

#[test]
fn rate_refusal_gives_the_reservation_back() {
    require!(privileged());
    // Limit 2 connections, burst 1: the second SYN is refused by the rate,
    // and must not keep a reservation that would refuse a third by concurrency.
    let mut p = policy(Action::Drop, 1, 32, 64);
    p.services[0].max_conn_per_source = Some(2);
    let mut h = Harness::new(&p);
    let f = || attempt(v4(110));
    assert_eq!(h.action(&f()), PASS);
    for _ in 0..5 {
        assert_eq!(h.action(&f()), DROP);
    }
    assert_eq!(h.counter(1, Verdict::RefusedRate), 5, "rate refuses while one slot stays free");
    assert_eq!(h.counter(1, Verdict::RefusedConcurrency), 0);
}

#[test]
fn seeded_connections_count_while_the_flag_is_set() {
    require!(privileged());
    let mut p = policy(Action::Reset, 1, 32, 64);
    p.services[0].rate = None;
    p.services[0].max_conn_per_source = Some(4);
    let mut h = Harness::new(&p);
    // 2 counted by sock_ops, 1 seeded from before the start: one more fits.
    let src = [198, 18, 0, 120];
    set_established(&mut h, src, 1, 2);
    set_count(&mut h, names::SEEDED, src, 1, 1);
    limiter_user::kernel::writer::set_flags(&h.ebpf, limiter_common::maps::flags::SEEDED, 0).expect("flags");
    let f = || attempt(v4(120));
    assert_eq!(h.action(&f()), PASS);
    assert_eq!(h.action(&f()), TX, "2 counted + 1 seeded + 1 pending = 4");
    // Without the flag XDP does not look at SEEDED (the daemon clears it
    // when the last seeded socket is gone): the seeded one no longer counts.
    limiter_user::kernel::writer::set_flags(&h.ebpf, 0, limiter_common::maps::flags::SEEDED).expect("flags");
    assert_eq!(h.action(&f()), PASS);
    assert_eq!(h.action(&f()), TX);
}

/// Whether the `PENDING` hint of `src` (service 1) says "at its limit" under the current policy.
fn hinted_full(h: &mut Harness, src: [u8; 4]) -> bool {
    use limiter_common::{SourceKey, pending};
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&src);
    let key = SourceKey { addr, service: 1, family: limiter_common::maps::family::V4, pad: [0; 2] };
    let (_, g) = limiter_tests::kernel::slot_index(&h.ebpf, &key).expect("globals");
    let word = limiter_tests::kernel::slot(&h.ebpf, &key).expect("slot").hint;
    pending::hint::is_full(word, pending::fingerprint(pending::hash(key.words())), g.generation)
}

#[test]
fn a_source_at_its_limit_is_hinted_until_a_new_policy() {
    require!(privileged());
    let mut p = policy(Action::Drop, 1, 32, 64);
    p.services[0].rate = None;
    p.services[0].max_conn_per_source = Some(2);
    let mut h = Harness::new(&p);
    let src = [198, 18, 0, 130];
    let f = || attempt(v4(130));
    set_established(&mut h, src, 1, 2);
    assert!(!hinted_full(&mut h, src));
    assert_eq!(h.action(&f()), DROP, "2 established, limit 2");
    assert!(hinted_full(&mut h, src), "the refusal by CONNS alone marks the source");
    assert_eq!(h.action(&f()), DROP, "refused on the hint");
    // A neighbour is not refused by someone else's hint.
    assert_eq!(h.action(&frames::syn(v4(131), server4(), PORT)), PASS);
    // Raising the limit writes a new policy generation: the hint is void.
    p.services[0].max_conn_per_source = Some(3);
    writer::write_policy(&h.ebpf, &p).expect("policy");
    assert!(!hinted_full(&mut h, src));
    assert_eq!(h.action(&f()), PASS, "the raised limit applies at once");
    assert_eq!(h.action(&f()), DROP, "2 established + 1 pending = 3");
    assert!(!hinted_full(&mut h, src), "full with a handshake in flight is not a hint: it expires");
    assert_eq!(h.counter(1, Verdict::RefusedConcurrency), 3);
}

#[test]
fn hints_are_not_used_while_seeded_counts_are_in_play() {
    require!(privileged());
    let mut p = policy(Action::Drop, 1, 32, 64);
    p.services[0].rate = None;
    p.services[0].max_conn_per_source = Some(2);
    let mut h = Harness::new(&p);
    let src = [198, 18, 0, 140];
    let f = || attempt(v4(140));
    set_established(&mut h, src, 1, 1);
    set_count(&mut h, names::SEEDED, src, 1, 1);
    limiter_user::kernel::writer::set_flags(&h.ebpf, limiter_common::maps::flags::SEEDED, 0).expect("flags");
    assert_eq!(h.action(&f()), DROP, "1 counted + 1 seeded");
    assert!(!hinted_full(&mut h, src), "the daemon releases seeded counts without touching hints");
    // The seeded socket closes: the daemon takes it away.
    set_count(&mut h, names::SEEDED, src, 1, 0);
    assert_eq!(h.action(&f()), PASS);
}

/// The verifier walks every path of the packet program; a change that
/// multiplies its states fails to load at a million instructions. Keep
/// well clear of that.
#[test]
fn the_verifier_has_headroom() {
    require!(privileged());
    let h = Harness::reset(1);
    for name in [names::XDP_PROGRAM, names::SOCK_OPS_PROGRAM] {
        let prog = h.ebpf.program(name).expect("program");
        let n = prog.info().expect("info").verified_instruction_count().expect("count");
        println!("{name}: {n} instructions verified");
        assert!(n < 600_000, "{name}: {n} verified instructions, too close to the 1,000,000 limit");
    }
}

/// A policy with no rate, `max` connections per source and these lists.
fn listed(max: u32, allow: &[(&str, Option<u32>)], deny: &[&str], reserve: &[&str]) -> Policy {
    use limiter_user::policy::lists::{AllowEntry, DenyEntry, Lists, ReserveEntry};
    let mut p = policy(Action::Reset, 1, 32, 64);
    p.services[0].rate = None;
    p.services[0].max_conn_per_source = Some(max);
    p.lists = Lists {
        allow: allow
            .iter()
            .map(|(prefix, max)| AllowEntry {
                prefix: prefix.parse().expect("prefix"),
                max_conn_per_source: *max,
                max_conn_all_services: None,
                rate: None,
                burst: None,
                comment: None,
            })
            .collect(),
        deny: deny.iter().map(|prefix| DenyEntry { prefix: prefix.parse().expect("prefix"), comment: None }).collect(),
        reserve: reserve
            .iter()
            .map(|prefix| ReserveEntry {
                service: "smtp".into(),
                prefix: prefix.parse().expect("prefix"),
                comment: None,
            })
            .collect(),
    };
    p
}

/// How many of `n` SYNs from `src` (each a new handshake) pass.
fn passed(h: &mut Harness, src: IpAddr, n: usize) -> usize {
    (0..n).filter(|_| h.action(&attempt(src)) == PASS).count()
}

/// The deny and exempt rules on crafted SYNs: deny beats an allow entry covering the
/// same host; an exempt entry ignores the per-source limit; an allow entry
/// with a limit replaces the service's; the longest prefix decides; IPv6
/// prefixes match; a new policy write applies at once and removes entries.
#[test]
fn deny_and_allow_lists_decide_first() {
    require!(privileged());
    let p = listed(1, &[("198.18.0.*", None), ("198.18.0.32/28", Some(3))], &["198.18.0.66", "2001:db8:66::/48"], &[]);
    let mut h = Harness::new(&p);
    assert_eq!(passed(&mut h, v4(66), 3), 0, "denied host inside an exempt /24");
    assert_eq!(h.counter(1, Verdict::RefusedDeny), 3);
    assert_eq!(passed(&mut h, v4(10), 8), 8, "exempt: no per-source limit");
    assert_eq!(passed(&mut h, v4(40), 8), 3, "the /28 entry's own limit (longest match)");
    let deny6 = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x66, 7, 0, 0, 0, 1));
    assert_eq!(passed(&mut h, deny6, 2), 0, "inside the denied /48");
    assert_eq!(passed(&mut h, v6(9, 1), 3), 1, "an IPv6 source outside every list: the service's limit");
    assert_eq!(h.counter(1, Verdict::RefusedDeny), 5);

    // A new policy without the deny entries: the host gets in at once
    // (exempt), and the old bank's entries are gone from the one in force.
    let p = listed(1, &[("198.18.0.*", None)], &[], &[]);
    writer::write_policy(&h.ebpf, &p).expect("write policy");
    assert_eq!(passed(&mut h, v4(66), 3), 3);
    assert_eq!(passed(&mut h, deny6, 1), 1);
    let p = listed(1, &[], &[], &[]);
    writer::write_policy(&h.ebpf, &p).expect("write policy");
    assert_eq!(passed(&mut h, v4(11), 3), 1, "no lists: the per-source limit again");
}

/// A pinned `LIST_FILTER` another build left behind may be valid yet wrong
/// for the trie: a source an entry covers would skip it. The writer of a
/// starting daemon clears both banks' headers before anything else, so the
/// trie answers until it has written a filter whole.
#[test]
fn a_stale_filter_is_distrusted_at_a_start() {
    use limiter_common::{filter, maps::flags};
    require!(privileged());
    let p = listed(1, &[], &["198.18.0.66", "2001:db8:66::/48"], &[]);
    let mut h = Harness::new(&p);
    assert_eq!(passed(&mut h, v4(66), 2), 0, "denied");
    // The bank in force's filter with every bit clear, as a stale one could be.
    let bank = {
        let w = writer::PolicyWriter::new(&h.ebpf).expect("writer");
        u8::from(w.globals().expect("globals").flags & flags::BANK_B != 0)
    };
    {
        let mut map: aya::maps::Array<&mut aya::maps::MapData, u64> =
            h.ebpf.map_mut(names::LIST_FILTER).expect("LIST_FILTER").try_into().expect("an array");
        for i in 0..filter::WORDS {
            map.set(filter::header_index(bank) + 1 + i, 0, 0).expect("clear a word");
        }
    }
    assert_eq!(passed(&mut h, v4(66), 1), 1, "a wrong filter lets the denied host skip the trie");
    // And bits no entry sets, in both banks: the writer reads the pinned
    // words back at a start and writes only those that differ, so these
    // must differ from what it wants.
    {
        let mut map: aya::maps::Array<&mut aya::maps::MapData, u64> =
            h.ebpf.map_mut(names::LIST_FILTER).expect("LIST_FILTER").try_into().expect("an array");
        for b in [0, 1] {
            for i in [0, 1, filter::WORDS / 2, filter::WORDS - 1] {
                map.set(filter::header_index(b) + 1 + i, u64::MAX, 0).expect("set a word");
            }
        }
    }
    // What a start does first.
    let mut w = writer::PolicyWriter::new(&h.ebpf).expect("writer");
    w.start_filters(false).expect("distrust the filters");
    assert_eq!(passed(&mut h, v4(66), 2), 0, "the trie answers again");
    assert_eq!(bank_filter(&h, bank).0 & filter::VALID, 0, "the header cleared");
    // The first write puts a whole filter in force, and brings the other
    // bank's up to it.
    w.write(&p).expect("write");
    assert_eq!(passed(&mut h, v4(66), 2), 0, "denied, through the new filter");
    let merged = p.lists.merge(&p.services);
    let bank = u8::from(w.globals().expect("globals").flags & flags::BANK_B != 0);
    check_filter(&h, bank, &merged, true, "after the first write");
    check_filter(&h, 1 - bank, &merged, true, "the other bank, after the first write");
}

/// Host entries live in `LIST_HOSTS`, which a version before it did not
/// know: a bank such a version put in force (its `GLOBALS` write leaves
/// `layout` zero) keeps them in the trie, and whatever `LIST_HOSTS` still
/// holds for that bank from an earlier run is stale. The program reads that
/// bank from the trie alone; the next write moves the trie's host entries
/// out and corrects the stale ones.
#[test]
fn a_bank_an_older_version_wrote_is_read_from_the_trie_alone() {
    use limiter_common::{
        Globals,
        lists::{KEY_BYTES, ListEntry, entry, key_data, key_len},
        maps::{family, flags, layout},
    };
    require!(privileged());
    let p = listed(1, &[], &["198.18.0.66"], &[]);
    let mut h = Harness::new(&p);
    // Written twice, so that both banks hold the service's policy.
    writer::write_policy(&h.ebpf, &p).expect("write policy");
    assert_eq!(passed(&mut h, v4(66), 2), 0, "denied, through LIST_HOSTS");
    assert_eq!(passed(&mut h, v4(77), 2), 1, "the per-source limit");
    let (in_force, old) = {
        let w = writer::PolicyWriter::new(&h.ebpf).expect("writer");
        let g = w.globals().expect("globals");
        assert_eq!(g.layout, layout::HOSTS, "written with host entries apart");
        (u8::from(g.flags & flags::BANK_B != 0), g)
    };
    let other = 1 - in_force;
    let host = |last: u8| key_data(other, family::V4, &v4_bytes(last));
    // What an older version leaves: the other bank's host entries in the trie
    // (198.18.0.77 denied), then a flip to it with `layout` zero ...
    {
        let mut trie: aya::maps::LpmTrie<&mut aya::maps::MapData, [u8; KEY_BYTES], ListEntry> =
            h.ebpf.map_mut(names::LISTS).expect("LISTS").try_into().expect("trie");
        let deny = ListEntry { flags: entry::DENY, ..ListEntry::default() };
        trie.insert(&aya::maps::lpm_trie::Key::new(key_len(32), host(77)), deny, 0).expect("trie entry");
    }
    // ... while LIST_HOSTS still says, from an earlier run, that .77 is exempt
    // and .66 denied.
    {
        let mut hosts: aya::maps::HashMap<&mut aya::maps::MapData, [u8; KEY_BYTES], ListEntry> =
            h.ebpf.map_mut(names::LIST_HOSTS).expect("LIST_HOSTS").try_into().expect("hash");
        let exempt = ListEntry { flags: entry::ALLOW | entry::EXEMPT, ..ListEntry::default() };
        hosts.insert(host(77), exempt, 0).expect("stale entry");
        hosts.insert(host(66), ListEntry { flags: entry::DENY, ..ListEntry::default() }, 0).expect("stale entry");
    }
    {
        let mut globals: aya::maps::Array<&mut aya::maps::MapData, Globals> =
            h.ebpf.map_mut(names::GLOBALS).expect("GLOBALS").try_into().expect("array");
        let flipped = Globals { flags: old.flags ^ flags::BANK_B, layout: 0, ..old };
        globals.set(0, flipped, 0).expect("flip");
    }
    // A start distrusts the filters first (`a_stale_filter_is_distrusted_at_a_start`).
    let mut w = writer::PolicyWriter::new(&h.ebpf).expect("writer");
    w.start_filters(false).expect("distrust the filters");
    assert_eq!(passed(&mut h, v4(77), 2), 0, "denied by the trie; the stale exempt entry is not read");
    assert_eq!(passed(&mut h, v4(66), 2), 1, "not on that bank's lists; the stale entry is not read");
    // The next write puts every host entry where this version keeps it, in
    // both banks, and the stale ones are gone.
    // (A limit of 2: .66 holds one handshake in flight from above.)
    let p2 = listed(2, &[], &["198.18.0.77"], &[]);
    w.write(&p2).expect("write");
    let merged = p2.lists.merge(&p2.services);
    assert_eq!(w.globals().expect("globals").layout, layout::HOSTS);
    assert_eq!(bank_entries(&h, 0), merged, "bank 0");
    assert_eq!(bank_entries(&h, 1), merged, "bank 1");
    assert_eq!(passed(&mut h, v4(77), 2), 0, "denied, through LIST_HOSTS");
    assert_eq!(passed(&mut h, v4(66), 2), 1, "no longer denied: one more, to the limit of 2");
}

fn v4_bytes(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[198, 18, 0, last]);
    a
}

/// What `bank` holds, read whole: its host entries from `LIST_HOSTS`, the
/// rest from the `LISTS` trie, which must hold no host entry.
fn bank_entries(
    h: &Harness,
    bank: u8,
) -> std::collections::BTreeMap<limiter_common::prefix::Prefix, limiter_common::lists::ListEntry> {
    use limiter_common::{
        lists::{KEY_BYTES, ListEntry},
        maps::host_len,
        prefix::Prefix,
    };
    let trie: aya::maps::LpmTrie<&aya::maps::MapData, [u8; KEY_BYTES], ListEntry> =
        h.ebpf.map(names::LISTS).expect("LISTS").try_into().expect("trie");
    let hosts: aya::maps::HashMap<&aya::maps::MapData, [u8; KEY_BYTES], ListEntry> =
        h.ebpf.map(names::LIST_HOSTS).expect("LIST_HOSTS").try_into().expect("hash");
    let prefix = |data: &[u8; KEY_BYTES], len| {
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&data[2..]);
        Prefix { family: data[1], addr, len }
    };
    let mut out = std::collections::BTreeMap::new();
    for item in &trie {
        let (key, e) = item.expect("trie entry");
        if key.data()[0] != bank {
            continue;
        }
        let p = prefix(&key.data(), u8::try_from(key.prefix_len() - 16).expect("a prefix length"));
        assert_ne!(p.len, host_len(p.family), "host entry {p:?} in the trie of bank {bank}");
        out.insert(p, e);
    }
    for item in &hosts {
        let (data, e) = item.expect("host entry");
        if data[0] == bank {
            assert!(out.insert(prefix(&data, host_len(data[1])), e).is_none(), "twice");
        }
    }
    out
}

/// What `bank` of `LIST_FILTER` holds: its header and words.
fn bank_filter(h: &Harness, bank: u8) -> (u64, Vec<u64>) {
    use limiter_common::filter;
    let map: aya::maps::Array<&aya::maps::MapData, u64> =
        h.ebpf.map(names::LIST_FILTER).expect("LIST_FILTER").try_into().expect("an array");
    let at = filter::header_index(bank);
    let words = (0..filter::WORDS).map(|i| map.get(&(at + 1 + i), 0).expect("a word")).collect();
    (map.get(&at, 0).expect("the header"), words)
}

/// Checks `bank`'s filter against `merged`: the levels are the shortest
/// prefix of each family (capped), every entry's bits are set (so no source
/// an entry covers skips the trie), and, with `exact`, no other bit is.
fn check_filter(
    h: &Harness,
    bank: u8,
    merged: &std::collections::BTreeMap<limiter_common::prefix::Prefix, limiter_common::lists::ListEntry>,
    exact: bool,
    what: &str,
) {
    use limiter_common::{filter, maps::family};
    let (header, words) = bank_filter(h, bank);
    assert_eq!(header & filter::VALID, filter::VALID, "{what}: the filter is valid");
    let mut want = vec![0u64; words.len()];
    for fam in [family::V4, family::V6] {
        if let Some(shortest) = merged.keys().filter(|p| p.family == fam).map(|p| p.len).min() {
            assert_eq!(filter::level(header, fam), filter::level_for(fam, shortest), "{what}: level of {fam}");
        }
    }
    for p in merged.keys() {
        let (w, bits) = filter::place(filter::hash(p.family, &p.addr, filter::level(header, p.family)));
        assert_eq!(words[w as usize] & bits, bits, "{what}: the bits of {p:?}");
        want[w as usize] |= bits;
    }
    if exact {
        assert!(words == want, "{what}: bits no entry sets");
    }
}

/// List changes written one prefix at a time, as the daemon writes an
/// `allow|deny|reserve add|del` (only the changed prefix, and what the
/// other bank lagged), leave the bank in force holding exactly the merged
/// lists built whole, change after change, as the two banks alternate, and
/// its filter (`LIST_FILTER`) with every entry's bits and no others; the
/// family flags follow, and the program decides by the new entries.
#[test]
fn list_changes_written_a_prefix_at_a_time_leave_exactly_the_merged_lists() {
    use limiter_common::maps::flags;
    use limiter_user::policy::{
        force::Force,
        lists::{AllowEntry, Cidr, DenyEntry, Lists, ReserveEntry},
    };
    require!(privileged());
    let config =
        listed(1, &[("198.18.0.0/24", None), ("198.18.0.32/28", Some(3))], &["198.18.0.66"], &["198.18.0.128/25"]);
    // Loaded without lists: the writer's first whole write must fill both banks.
    let mut h = Harness::new(&listed(1, &[], &[], &[]));
    let mut lists_writer = writer::PolicyWriter::new(&h.ebpf).expect("writer");
    let mut runtime = Lists::default();
    let mut force = Force::new(&config, &runtime);
    lists_writer.write_merged(&force.policy, &force.merged, None).expect("write");
    // A whole write leaves both banks holding the lists, so that the first
    // change after a start writes only what it changes.
    assert_eq!(bank_entries(&h, 0), force.merged, "bank 0 after a whole write");
    assert_eq!(bank_entries(&h, 1), force.merged, "bank 1 after a whole write");
    check_filter(&h, 0, &force.merged, true, "bank 0 after a whole write");
    check_filter(&h, 1, &force.merged, true, "bank 1 after a whole write");
    let prefixes: Vec<Cidr> = [
        "198.18.0.0/24",
        "198.18.0.0/25",
        "198.18.0.32/28",
        "198.18.0.40",
        "198.18.0.66",
        "198.18.0.130",
        "198.18.0.0/16",
        "2001:db8::/32",
        "2001:db8:66::/48",
        "2001:db8:66::1",
    ]
    .iter()
    .map(|s| s.parse().expect("prefix"))
    .collect();
    // xorshift64: the same 150 changes every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % n as u64).expect("small")
    };
    let mut lists_seen = [false; 2];
    for i in 0..150 {
        let p = prefixes[next(prefixes.len())];
        match next(6) {
            0 => {
                runtime.allow.retain(|a| a.prefix != p);
                runtime.allow.push(AllowEntry {
                    prefix: p,
                    max_conn_per_source: [None, Some(2), Some(5)][next(3)],
                    max_conn_all_services: None,
                    rate: None,
                    burst: None,
                    comment: None,
                });
            }
            1 => {
                runtime.deny.retain(|d| d.prefix != p);
                runtime.deny.push(DenyEntry { prefix: p, comment: None });
            }
            2 => {
                runtime.reserve.retain(|r| r.prefix != p);
                runtime.reserve.push(ReserveEntry { service: "smtp".into(), prefix: p, comment: None });
            }
            3 => runtime.allow.retain(|a| a.prefix != p),
            4 => runtime.deny.retain(|d| d.prefix != p),
            _ => runtime.reserve.retain(|r| r.prefix != p),
        }
        let change = force.change(&config, &runtime, p.0);
        force.apply(change);
        lists_writer.write_merged(&force.policy, &force.merged, Some(p.0)).expect("write");
        let g = lists_writer.globals().expect("globals");
        let bank = u8::from(g.flags & flags::BANK_B != 0);
        assert_eq!(bank_entries(&h, bank), force.merged, "change {i} ({p}): the bank in force");
        if !force.merged.is_empty() {
            check_filter(&h, bank, &force.merged, i % 50 == 49, &format!("change {i} ({p})"));
        }
        let whole = Force::new(&config, &runtime);
        assert_eq!(force.merged, whole.merged, "change {i} ({p}): kept and whole merges");
        let has = |f: u8| force.merged.keys().any(|k| k.family == f);
        assert_eq!(g.flags & flags::LISTS != 0, has(limiter_common::maps::family::V4), "change {i}");
        assert_eq!(g.flags & flags::LISTS_V6 != 0, has(limiter_common::maps::family::V6), "change {i}");
        lists_seen[usize::from(bank)] = true;
    }
    assert_eq!(lists_seen, [true, true], "both banks were in force");
    // The program reads what was written: deny the config's exempt /24's
    // host 198.18.0.10 at run time, and it is refused at once.
    let host: Cidr = "198.18.0.10".parse().expect("prefix");
    runtime.deny.push(DenyEntry { prefix: host, comment: None });
    let change = force.change(&config, &runtime, host.0);
    force.apply(change);
    lists_writer.write_merged(&force.policy, &force.merged, Some(host.0)).expect("write");
    let before = h.counter(1, Verdict::RefusedDeny);
    assert_eq!(passed(&mut h, v4(10), 2), 0, "denied at run time");
    assert_eq!(h.counter(1, Verdict::RefusedDeny), before + 2);
}

/// The sessions rule on crafted SYNs (each a handshake in flight, which counts as a
/// session): of 5 sessions with 3 reserved, ordinary sources get 2, sources
/// on the reserve list the other 3, nobody a 6th; exempt sources are not
/// counted and not refused.
#[test]
fn sessions_and_reserved_sessions_are_exact() {
    require!(privileged());
    let mut p = listed(100, &[("198.18.0.200", None)], &[], &["198.18.0.128/25"]);
    p.services[0].max_sessions = Some(5);
    p.services[0].reserved_sessions = 3;
    let mut h = Harness::new(&p);
    assert_eq!(passed(&mut h, v4(1), 1) + passed(&mut h, v4(2), 1), 2);
    assert_eq!(passed(&mut h, v4(3), 4), 0, "2 in use: the rest is reserved");
    assert_eq!(h.counter(1, Verdict::RefusedReserve), 4);
    assert_eq!(passed(&mut h, v4(130), 5), 3, "the reserve list gets the other 3");
    assert_eq!(h.counter(1, Verdict::RefusedSessions), 2);
    assert_eq!(passed(&mut h, v4(4), 1), 0, "all 5 in use");
    assert_eq!(h.counter(1, Verdict::RefusedSessions), 3, "refused by sessions, the first rule that decides");
    assert_eq!(passed(&mut h, v4(200), 4), 4, "exempt: not counted, not refused");
    assert_eq!(h.counter(1, Verdict::Accepted), 9);
}

/// A SYN from `src` with this client port and ISN (the rest as `Tcp::syn`).
fn syn_from(src: IpAddr, sport: u16, isn: u32) -> Vec<u8> {
    let dst = if src.is_ipv4() { server4() } else { server6() };
    frames::frame(&Tcp { sport, seq: isn, ..Tcp::syn(src, dst, PORT) }, &Shape::default())
}

/// The source key of `src` (IPv4 /32) for service 1.
fn key4(src: [u8; 4]) -> limiter_common::SourceKey {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&src);
    limiter_common::SourceKey { addr, service: 1, family: limiter_common::maps::family::V4, pad: [0; 2] }
}

/// Handshakes `src` (service 1) holds in flight, as its `PENDING` slot says
/// (the slot's word, whatever its age: the test runs in well under the timeout).
fn in_flight(h: &Harness, src: [u8; 4]) -> u16 {
    limiter_common::pending::unpack(limiter_tests::kernel::slot(&h.ebpf, &key4(src)).expect("slot").reserved).1
}

/// The case: at limit N with N-1 established, the Nth handshake's
/// SYN-ACK is lost and the client retransmits its SYN. The retransmission
/// (same 4-tuple, same ISN) is the same attempt: it passes on the first
/// copy's reservation, and takes no second one.
#[test]
fn a_retransmitted_syn_rides_on_its_reservation() {
    require!(privileged());
    let mut p = policy(Action::Reset, 1, 32, 64);
    p.services[0].rate = None;
    p.services[0].max_conn_per_source = Some(8);
    let mut h = Harness::new(&p);
    let src = [198, 18, 0, 150];
    set_established(&mut h, src, 1, 7);
    let first = syn_from(v4(150), 40_000, 0x0bad_cafe);
    assert_eq!(h.action(&first), PASS, "7 established + this one = 8");
    assert_eq!(in_flight(&h, src), 1);
    assert_eq!(h.action(&syn_from(v4(150), 40_001, 0x0bad_cafe)), TX, "another handshake is a 9th");
    for i in 0..3 {
        assert_eq!(h.action(&first), PASS, "retransmission {i} of the 8th handshake");
    }
    assert_eq!(in_flight(&h, src), 1, "the retransmissions took no reservation");
    // The same 4-tuple with another ISN is a new handshake (the client gave
    // the first one up): it needs a reservation of its own.
    assert_eq!(h.action(&syn_from(v4(150), 40_000, 0x0bad_cafe + 1)), TX);
    assert_eq!(h.counter(1, Verdict::Accepted), 4);
    assert_eq!(h.counter(1, Verdict::RefusedConcurrency), 2);
    // Another source sending the same ports and ISN is not recognised.
    set_established(&mut h, [198, 18, 0, 151], 1, 8);
    assert_eq!(h.action(&syn_from(v4(151), 40_000, 0x0bad_cafe)), TX);
}

/// A retransmission spends no token from the source's bucket (the source
/// holds a connection: a first contact's handshake is not remembered, see
/// `a_first_contact_is_not_remembered`).
#[test]
fn a_retransmitted_syn_spends_no_token() {
    require!(privileged());
    let mut p = policy(Action::Drop, 2, 32, 64);
    p.services[0].max_conn_per_source = Some(8);
    let mut h = Harness::new(&p);
    set_established(&mut h, [198, 18, 0, 160], 1, 1);
    let first = syn_from(v4(160), 41_000, 7);
    assert_eq!(h.action(&first), PASS, "token 1 of 2");
    for i in 0..3 {
        assert_eq!(h.action(&first), PASS, "retransmission {i}");
    }
    assert_eq!(h.action(&syn_from(v4(160), 41_001, 8)), PASS, "token 2 of 2 is still there");
    assert_eq!(h.action(&syn_from(v4(160), 41_002, 9)), DROP, "no token left");
    assert_eq!(h.counter(1, Verdict::RefusedRate), 1);
}

/// A retransmission takes no second session (the sessions rule) either.
#[test]
fn a_retransmitted_syn_takes_no_second_session() {
    require!(privileged());
    let mut p = policy(Action::Reset, 1, 32, 64);
    p.services[0].rate = None;
    p.services[0].max_conn_per_source = Some(8);
    p.services[0].max_sessions = Some(2);
    let mut h = Harness::new(&p);
    set_established(&mut h, [198, 18, 0, 170], 1, 1);
    let first = syn_from(v4(170), 42_000, 1);
    assert_eq!(h.action(&first), PASS, "session 1 of 2");
    assert_eq!(h.action(&syn_from(v4(171), 42_000, 1)), PASS, "session 2 of 2, another source");
    assert_eq!(h.action(&first), PASS, "the retransmission holds session 1 already");
    assert_eq!(h.action(&syn_from(v4(172), 42_000, 1)), TX, "a third handshake finds no session");
    assert_eq!(h.counter(1, Verdict::RefusedSessions), 1);
}

/// Refusal events carry what a connection-limit refusal was based on:
/// established connections alone (on the hint, with the limit as the count,
/// and on `CONNS`), or established plus handshakes in flight; other
/// refusals carry nothing.
#[test]
fn refusal_events_say_what_they_were_based_on() {
    use limiter_common::events::{Refusal, basis};
    require!(privileged());
    let mut p = policy(Action::Reset, 1, 32, 64);
    p.services[0].max_conn_per_source = Some(2);
    let mut h = Harness::new(&p);
    let mut budget = limiter_user::kernel::events::Budget::new(&h.ebpf).expect("budget");
    budget.refill().expect("tokens");
    let mut ring = aya::maps::RingBuf::try_from(h.ebpf.take_map(names::EVENTS).expect("EVENTS")).expect("ring");
    let mut next = |h: &mut Harness, frame: &[u8]| -> Refusal {
        assert_eq!(h.action(frame), TX, "refused");
        let item = ring.next().expect("an event for the refusal");
        assert!(item.len() >= size_of::<Refusal>());
        // SAFETY: the kernel wrote a whole `Refusal` (checked length); read unaligned.
        unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Refusal>()) }
    };
    let facts = |r: &Refusal| (r.verdict, r.basis, r.established, r.pending);
    let conc = Verdict::RefusedConcurrency as u8;

    // One established and one handshake in flight: the limit with what may be forged.
    set_established(&mut h, [198, 18, 0, 180], 1, 1);
    assert_eq!(h.action(&syn_from(v4(180), 43_000, 1)), PASS);
    let e = next(&mut h, &syn_from(v4(180), 43_001, 2));
    assert_eq!(facts(&e), (conc, basis::IN_FLIGHT, 1, 1), "Busy: {e:?}");
    assert_eq!((e.addr[..4].to_vec(), e.port), (vec![198, 18, 0, 180], PORT));

    // Three established (the limit was lowered under them): `CONNS` alone,
    // then the hint that refusal set, which reads no count (the limit).
    set_established(&mut h, [198, 18, 0, 181], 1, 3);
    let e = next(&mut h, &syn_from(v4(181), 43_000, 1));
    assert_eq!(facts(&e), (conc, basis::ESTABLISHED, 3, 0), "Full: {e:?}");
    assert!(hinted_full(&mut h, [198, 18, 0, 181]));
    let e = next(&mut h, &syn_from(v4(181), 43_000, 1));
    assert_eq!(facts(&e), (conc, basis::ESTABLISHED, 2, 0), "on the hint: {e:?}");

    // A rate refusal (burst 1, the reservation given back): no basis.
    assert_eq!(h.action(&syn_from(v4(182), 43_000, 1)), PASS);
    let e = next(&mut h, &syn_from(v4(182), 43_001, 2));
    assert_eq!(facts(&e), (Verdict::RefusedRate as u8, basis::NONE, 0, 0), "rate: {e:?}");
}

/// A source that holds nothing is not remembered (a spoofed flood is all
/// first contacts; remembering each costs a cache miss per SYN): its
/// retransmission takes a reservation of its own, while there is room. At a
/// limit of 1 there is none, so there it is remembered.
#[test]
fn a_first_contact_is_not_remembered_unless_at_its_limit() {
    require!(privileged());
    let mut p = policy(Action::Reset, 1, 32, 64);
    p.services[0].rate = None;
    p.services[0].max_conn_per_source = Some(8);
    let mut h = Harness::new(&p);
    let first = syn_from(v4(190), 44_000, 1);
    assert_eq!(h.action(&first), PASS);
    assert_eq!(h.action(&first), PASS);
    assert_eq!(in_flight(&h, [198, 18, 0, 190]), 2, "not remembered: a second reservation");

    p.services[0].max_conn_per_source = Some(1);
    writer::write_policy(&h.ebpf, &p).expect("policy");
    let first = syn_from(v4(191), 44_000, 1);
    assert_eq!(h.action(&first), PASS);
    assert_eq!(h.action(&first), PASS, "limit 1: remembered, the retransmission rides on it");
    assert_eq!(h.action(&syn_from(v4(191), 44_001, 2)), TX);
    assert_eq!(in_flight(&h, [198, 18, 0, 191]), 1);
}

/// Switches service 1 to the `respond` action in both policy banks (the
/// policy layer has no `Action::Respond` yet; the kernel only reads the byte).
fn respond(h: &mut Harness) {
    use limiter_common::{
        ServicePolicy,
        maps::{action, policy_index},
    };
    let mut pol: aya::maps::Array<_, ServicePolicy> =
        aya::maps::Array::try_from(h.ebpf.map_mut(names::POLICY).expect("POLICY")).expect("array");
    for bank in 0..2 {
        let i = policy_index(bank, 1);
        let mut v = pol.get(&i, 0).expect("policy");
        v.action = action::RESPOND;
        pol.set(i, v, 0).expect("policy");
    }
}

/// A refused SYN to a `respond` service passes (to the socket lookup) with
/// a `STEER` entry saying why, while there is a token; without one it is
/// reset and counted as a fallback. Counted and reported as before either way.
#[test]
fn a_refused_syn_to_a_respond_service_is_steered_with_a_token_else_reset() {
    use limiter_common::{Verdict as V, events::basis};
    use limiter_user::kernel::responder::Responder;
    require!(privileged());
    let mut pol = policy(Action::Reset, 1, 32, 64);
    pol.services[0].max_conn_per_source = Some(2);
    let mut h = Harness::new(&pol);
    respond(&mut h);
    let mut resp = Responder::new(&h.ebpf).expect("responder");
    let r = &mut resp;

    // No tokens yet (the daemon has not refilled): reset, counted as a fallback.
    set_established(&mut h, [198, 18, 0, 200], 1, 2);
    let (action, out) = h.run(&syn_from(v4(200), 45_000, 1));
    assert_eq!(action, TX, "no token: reset");
    assert_rst(&out, &Tcp { sport: 45_000, seq: 1, ..Tcp::syn(v4(200), server4(), PORT) }, &Shape::default());
    let counts = r.counts().expect("counts");
    assert_eq!((counts.steered, counts.no_token), (0, 1));

    r.refill(limiter_common::steer::TOKENS_PER_REFILL).expect("tokens");
    // At its connection limit: steered, with the limit and the count read.
    assert_eq!(h.action(&syn_from(v4(200), 45_001, 2)), PASS, "steered");
    let peer = "198.18.0.200:45001".parse().expect("addr");
    let local = std::net::SocketAddr::new(server4(), PORT);
    let e = r.steer_entry(peer, local).expect("read").expect("a STEER entry");
    assert_eq!(
        (e.verdict, e.service, e.basis, e.limit, e.count, e.pending),
        (V::RefusedConcurrency as u8, 1, basis::ESTABLISHED, 2, 2, 0)
    );
    assert!(e.at_ns > 0);
    // Over the rate (burst 1): steered, no connection numbers.
    assert_eq!(h.action(&syn_from(v6(0, 201), 45_002, 3)), PASS, "first SYN within the burst");
    assert_eq!(h.action(&syn_from(v6(0, 201), 45_003, 4)), PASS, "rate refusal steered");
    let peer6 = std::net::SocketAddr::new(v6(0, 201), 45_003);
    let entry = r.steer_entry(peer6, std::net::SocketAddr::new(server6(), PORT)).expect("read").expect("entry");
    assert_eq!((entry.verdict, entry.limit, entry.count), (V::RefusedRate as u8, 0, 0));
    r.forget(peer6, std::net::SocketAddr::new(server6(), PORT)).expect("forget");
    assert!(r.steer_entry(peer6, std::net::SocketAddr::new(server6(), PORT)).expect("read").is_none());

    let counts = r.counts().expect("counts");
    assert_eq!((counts.steered, counts.no_token), (2, 1));
    assert_eq!(h.counter(1, V::RefusedConcurrency), 2, "steered refusals are counted under their verdict");
    assert_eq!(h.counter(1, V::RefusedRate), 1);
    assert_eq!(h.counter(1, V::Accepted), 1);
}

/// `reset` and `drop` services are untouched by steering tokens.
#[test]
fn reset_and_drop_services_are_not_steered() {
    use limiter_user::kernel::responder::Responder;
    require!(privileged());
    for (action, want) in [(Action::Reset, TX), (Action::Drop, DROP)] {
        let mut h = Harness::new(&policy(action, 1, 32, 64));
        let mut r = Responder::new(&h.ebpf).expect("responder");
        r.refill(limiter_common::steer::TOKENS_PER_REFILL).expect("tokens");
        let f = frames::syn(v4(210), server4(), PORT);
        h.exhaust(&f, 1);
        assert_eq!(h.action(&f), want);
        assert_eq!(r.counts().expect("counts"), limiter_user::kernel::responder::SteerCounts::default());
    }
}

/// `limiter_sk_lookup` in a namespace of its own: a flow with a fresh
/// `STEER` entry reaches the responder socket (which carries the mark its
/// accepted connection inherits), never the service's; with the responder
/// socket closed the client is refused (RST: ECONNREFUSED) and the service
/// still sees nothing; a flow without an entry reaches the service.
#[test]
fn sk_lookup_steers_to_the_responder_and_refuses_without_it() {
    use std::{
        io::ErrorKind,
        net::{SocketAddr, TcpListener},
        os::fd::AsRawFd as _,
    };

    use aya::programs::SkLookup;
    use limiter_common::steer::{RESPONDER_MARK, SteerKey, SteerValue};
    use limiter_user::kernel::responder::{Responder, flow};
    require!(privileged());
    let ns = limiter_tests::netns::Netns::new("lmsk");
    let mut h = Harness::reset(1);
    let prog: &mut SkLookup = h.ebpf.program_mut(names::SK_LOOKUP_PROGRAM).expect("program").try_into().expect("sk");
    prog.attach(std::fs::File::open(ns.path()).expect("netns")).expect("attach sk_lookup");
    let mut r = Responder::new(&h.ebpf).expect("responder");
    let mut steer: aya::maps::HashMap<_, SteerKey, SteerValue> =
        aya::maps::HashMap::try_from(h.ebpf.map_mut(names::STEER).expect("STEER")).expect("hash");
    let path = ns.path();
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&path).expect("netns");
            // SAFETY: moves this thread only into the test's namespace.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            let service = TcpListener::bind("127.0.0.1:2525").expect("service");
            service.set_nonblocking(true).expect("nonblocking");
            let responder = TcpListener::bind("127.0.0.1:0").expect("responder");
            r.set_listener(&responder).expect("responder socket");
            let now = || {
                let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: writes into ts; the kernel's coarse clock, as bpf_ktime_get_coarse_ns.
                unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
                u64::try_from(ts.tv_sec).expect("time") * 1_000_000_000 + u64::try_from(ts.tv_nsec).expect("time")
            };
            let local: SocketAddr = "127.0.0.1:2525".parse().expect("addr");
            let connect_from = |port: u16| {
                let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
                sock.set_reuse_address(true).expect("reuse");
                sock.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into()).expect("bind");
                sock.connect(&local.into())
            };
            let steered = |steer: &mut aya::maps::HashMap<_, _, _>, port: u16| {
                let v = SteerValue { at_ns: now(), verdict: 4, service: 1, ..SteerValue::default() };
                steer.insert(flow(SocketAddr::from(([127, 0, 0, 1], port)), local), v, 0).expect("insert");
            };

            steered(&mut steer, 46_000);
            connect_from(46_000).expect("a steered client completes its handshake with the responder");
            let (conn, peer) = responder.accept().expect("the responder accepts it");
            assert_eq!(peer.port(), 46_000);
            assert_eq!(conn.local_addr().expect("local"), local, "the client sees the service's address");
            let mark = socket2::SockRef::from(&conn).mark().expect("SO_MARK");
            assert_eq!(mark, RESPONDER_MARK, "the accepted connection inherits the listener's mark");
            assert_eq!(service.accept().map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::WouldBlock));

            // A flow without an entry, and one whose entry is stale, go to the service.
            connect_from(46_001).expect("unsteered");
            service.accept().expect("the service gets the unsteered client");
            let stale = SteerValue { at_ns: now().saturating_sub(5_000_000_000), ..SteerValue::default() };
            steer.insert(flow(SocketAddr::from(([127, 0, 0, 1], 46_002)), local), stale, 0).expect("insert");
            connect_from(46_002).expect("a stale entry is not followed");
            service.accept().expect("the service gets the client of the stale entry");

            // The responder gone: refused, and the service sees nothing.
            drop(conn);
            drop(responder);
            std::thread::sleep(std::time::Duration::from_millis(50));
            steered(&mut steer, 46_003);
            let err = connect_from(46_003).expect_err("no responder: refused");
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "a RST: {err}");
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(service.accept().map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::WouldBlock));
        });
    });
    let c = r.counts().expect("counts");
    assert_eq!((c.redirected, c.no_responder), (1, 1));
}

/// Each refusal's event says what answered it (`events::answer`) and the
/// client's port: a reset, a drop, a SYN steered to the responder, and the
/// fallback reset for want of a steering token. A steered SYN's `STEER`
/// entry says whether its event was reported (only those get a fate the
/// socket lookup notes for the daemon).
#[test]
fn refusal_events_say_what_answered_them() {
    use limiter_common::events::{Refusal, answer};
    use limiter_user::kernel::responder::Responder;
    require!(privileged());
    for (action, steer_tokens, want_action, want_answer) in [
        (Action::Reset, false, TX, answer::RESET),
        (Action::Drop, false, DROP, answer::DROPPED),
        (Action::Reset, true, PASS, answer::STEERED),
        (Action::Reset, false, TX, answer::FALLBACK),
    ] {
        let responding = want_answer == answer::STEERED || want_answer == answer::FALLBACK;
        let mut pol = policy(action, 1, 32, 64);
        pol.services[0].max_conn_per_source = Some(1);
        let mut harness = Harness::new(&pol);
        if responding {
            respond(&mut harness);
        }
        let mut r = Responder::new(&harness.ebpf).expect("responder");
        if steer_tokens {
            r.refill(limiter_common::steer::TOKENS_PER_REFILL).expect("steering tokens");
        }
        let mut budget = limiter_user::kernel::events::Budget::new(&harness.ebpf).expect("budget");
        budget.refill().expect("event tokens");
        let mut ring =
            aya::maps::RingBuf::try_from(harness.ebpf.take_map(names::EVENTS).expect("EVENTS")).expect("ring");
        set_established(&mut harness, [198, 18, 0, 220], 1, 1);
        assert_eq!(harness.action(&syn_from(v4(220), 46_000, 1)), want_action, "{want_answer}");
        let item = ring.next().expect("an event");
        // SAFETY: the kernel wrote a whole `Refusal`; read unaligned.
        let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Refusal>()) };
        assert_eq!((e.answer, e.client_port, e.port), (want_answer, 46_000, PORT), "{e:?}");
        drop(item);
        if want_answer == answer::STEERED {
            let peer = "198.18.0.220:46000".parse().expect("addr");
            let local = std::net::SocketAddr::new(server4(), PORT);
            let v = r.steer_entry(peer, local).expect("read").expect("entry");
            assert_eq!(v.reported, 1, "its event was reported");
            // With the event budget spent, a steered SYN's entry says so.
            let cpus = aya::util::nr_cpus().expect("cpus");
            let spent = aya::maps::PerCpuValues::try_from(vec![0u64; cpus]).expect("values");
            let mut b: aya::maps::PerCpuArray<_, u64> =
                aya::maps::PerCpuArray::try_from(harness.ebpf.map_mut(names::EVENT_BUDGET).expect("budget"))
                    .expect("a");
            b.set(limiter_common::events::TOKENS, spent, 0).expect("spend");
            assert_eq!(harness.action(&syn_from(v4(220), 46_001, 2)), PASS);
            let peer = "198.18.0.220:46001".parse().expect("addr");
            let v = r.steer_entry(peer, local).expect("read").expect("entry");
            assert_eq!(v.reported, 0, "not reported");
        }
    }
}

/// Sets every CPU's refusal-event tokens to `n`.
fn set_event_tokens(h: &mut Harness, n: u64) {
    let mut m: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(h.ebpf.map_mut(names::EVENT_BUDGET).expect("EVENT_BUDGET"))
            .expect("per-CPU array");
    let cpus = aya::util::nr_cpus().expect("CPUs");
    m.set(limiter_common::events::TOKENS, aya::maps::PerCpuValues::try_from(vec![n; cpus]).expect("values"), 0)
        .expect("set tokens");
}

/// A refusal is reported while the CPU has an event token and counted as
/// unreported after, under every action: a drop and observe mode's pass
/// skip the frame's second parse then, a reset still builds its reply.
#[test]
fn refusals_past_the_event_tokens_are_counted_unreported() {
    require!(privileged());
    for (action, want) in [(Action::Drop, DROP), (Action::Log, PASS), (Action::Reset, TX)] {
        let mut h = Harness::new(&policy(action, 1, 32, 64));
        let f = frames::syn(v4(30), server4(), PORT);
        h.exhaust(&f, 1);
        set_event_tokens(&mut h, 2);
        for i in 0..5 {
            assert_eq!(h.action(&f), want, "{action:?}: refusal {i}");
        }
        let mut ring = aya::maps::RingBuf::try_from(h.ebpf.take_map(names::EVENTS).expect("EVENTS")).expect("ring");
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            assert!(item.len() >= size_of::<limiter_common::events::Refusal>(), "{action:?}: a short record");
            // SAFETY: the ring holds `Refusal` records, checked long enough; read unaligned.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<limiter_common::events::Refusal>()) });
        }
        assert_eq!(events.len(), 2, "{action:?}: one event per token");
        for e in &events {
            assert_eq!(e.verdict, Verdict::RefusedRate as u8, "{action:?}");
            assert_eq!(e.addr[..4], [198, 18, 0, 30], "{action:?}: the source, from the second parse");
        }
        let m: aya::maps::PerCpuArray<_, u64> =
            aya::maps::PerCpuArray::try_from(h.ebpf.map(names::EVENT_BUDGET).expect("EVENT_BUDGET")).expect("array");
        let unreported: u64 = m.get(&limiter_common::events::UNREPORTED, 0).expect("unreported").iter().sum();
        assert_eq!(unreported, 3, "{action:?}: the refusals past the tokens");
        if action == Action::Log {
            assert_eq!(h.counter(1, Verdict::Accepted), 6, "observe mode counts every SYN as accepted");
            let observed = counters::read_observed(&h.ebpf).expect("observed")[1][Verdict::RefusedRate as usize];
            assert_eq!(observed, 5, "and what it would have refused apart");
        } else {
            assert_eq!(h.counter(1, Verdict::RefusedRate), 5, "{action:?}");
        }
    }
}

/// `status`, `top` and the metrics read `CONNS` and `SEEDED` in batches
/// (`BPF_MAP_LOOKUP_BATCH`): the batch read sees exactly what the walk key by
/// key sees, over several batches and with entries deleted between them, and
/// the report's figures (per service, source-wide, tracked) come from it.
#[test]
fn a_batch_read_of_the_connection_maps_sees_each_entry_once() {
    use limiter_common::{
        SourceKey,
        maps::{ALL_SERVICES, family},
    };
    require!(privileged());
    let mut h = Harness::reset(5);
    let key = |i: u32, service: u8| {
        let mut addr = [0u8; 16];
        let family = if i.is_multiple_of(3) {
            addr[..8].copy_from_slice(&(0x2001_0db8_4000_0000_u64 + u64::from(i)).to_be_bytes());
            family::V6
        } else {
            addr[..4].copy_from_slice(&(0xc612_0000_u32 + i).to_be_bytes());
            family::V4
        };
        SourceKey { addr, service, family, pad: [0; 2] }
    };
    let n: u32 = 20_000;
    let expected = (n - n.div_ceil(7)) + n.div_ceil(4);
    let mut walked: Vec<(SourceKey, u64)> = {
        let mut conns: aya::maps::HashMap<_, SourceKey, u64> =
            aya::maps::HashMap::try_from(h.ebpf.map_mut(names::CONNS).expect("CONNS")).expect("hash");
        for i in 0..n {
            // Counts 0..=4, service 1, and the source-wide key for every 4th.
            conns.insert(key(i, 1), u64::from(i % 5), 0).expect("insert");
            if i.is_multiple_of(4) {
                conns.insert(key(i, ALL_SERVICES), u64::from(i % 5) + 1, 0).expect("insert");
            }
        }
        for i in (0..n).step_by(7) {
            conns.remove(&key(i, 1)).expect("remove");
        }
        conns.iter().map(|e| e.expect("entry")).collect()
    };
    {
        let mut seeded: aya::maps::HashMap<_, SourceKey, u64> =
            aya::maps::HashMap::try_from(h.ebpf.map_mut(names::SEEDED).expect("SEEDED")).expect("hash");
        // A seeded source that also holds counted connections, and one that does not.
        seeded.insert(key(1, 1), 10, 0).expect("seed");
        seeded.insert(key(n + 1, 1), 3, 0).expect("seed");
    }
    let mut batched: Vec<(SourceKey, u64)> = counters::entries(&h.ebpf, names::CONNS).expect("batch read");
    let order = |a: &(SourceKey, u64), b: &(SourceKey, u64)| (a.0.addr, a.0.service).cmp(&(b.0.addr, b.0.service));
    walked.sort_by(order);
    batched.sort_by(order);
    assert_eq!(walked.len(), expected as usize, "entries put in");
    let first_difference = batched.iter().zip(&walked).position(|(a, b)| a != b);
    assert!(
        batched.len() == walked.len() && first_difference.is_none(),
        "the batch read ({} entries) and the walk ({}) differ, first at {first_difference:?}",
        batched.len(),
        walked.len()
    );

    let held = counters::Held::read(&h.ebpf).expect("read");
    assert_eq!(held.entries(), (u64::from(expected), 2), "entries in CONNS and SEEDED");
    assert_eq!(held.tracked(), u64::from(n - n.div_ceil(7)), "sources of a service in CONNS");
    let counted: u64 = (0..n).filter(|i| i % 7 != 0).map(|i| u64::from(i % 5)).sum();
    assert_eq!(held.by_service()[1], counted + 10 + 3, "connections of service 1, seeded ones included");
    let sources = held.sources();
    let of = |k: SourceKey| sources.iter().find(|(s, _)| *s == k).map(|(_, c)| *c);
    assert_eq!(of(key(1, 1)), Some(1 + 10), "counted and seeded added up");
    assert_eq!(of(key(n + 1, 1)), Some(3), "a seeded source alone");
    assert_eq!(of(key(7, 1)), None, "a deleted source");
    assert_eq!(held.sources_all().len(), n.div_ceil(4) as usize, "source-wide keys");
    let some = held.counts_of([key(0, ALL_SERVICES), key(4, ALL_SERVICES), key(1, ALL_SERVICES)]);
    assert_eq!(some.get(&key(0, ALL_SERVICES)), Some(&1), "a source-wide count of a shown row");
    assert_eq!(some.get(&key(4, ALL_SERVICES)), Some(&5));
    assert_eq!(some.get(&key(1, ALL_SERVICES)), None, "a key with no entry");
    assert_eq!(some.len(), 2, "only the keys asked for");
}

/// Two sources on one `PENDING` slot: the slot's `conns` word says who may
/// hold connections (`pending::holders`), and XDP skips `CONNS` for a source
/// it rules out. A source sharing the slot with a holder is not counted as
/// holding (it gets its full limit), the holder is counted exactly, and a
/// word an earlier version wrote (a plain sum) makes XDP look both up.
#[test]
fn a_slot_shared_with_a_holder_counts_each_source_exactly() {
    use limiter_common::pending::{self, holders};
    require!(privileged());
    let mut two = policy(Action::Drop, 1, 32, 64);
    two.services[0].rate = None;
    two.services[0].max_conn_per_source = Some(2);
    let mut h = Harness::new(&two);
    // Two addresses on the same slot whose bits tell them apart.
    let slot_of = |h: &Harness, a: [u8; 4]| {
        let key = source_key(IpAddr::from(a), 1);
        let (index, _) = limiter_tests::kernel::slot_index(&h.ebpf, &key).expect("slot");
        (index, pending::fingerprint(pending::hash(key.words())))
    };
    let holder = [198, 18, 1, 1];
    let (index, holder_fp) = slot_of(&h, holder);
    let mut others = (0u32..(1 << 17))
        .map(|i| {
            let [_, b, c, d] = i.to_be_bytes();
            [198, 18 + b, c, d]
        })
        .filter(|a| {
            let (i, fp) = slot_of(&h, *a);
            *a != holder && i == index && !holders::may_hold(holders::add(0, holder_fp, 1), fp)
        });
    let other = others.next().expect("an address on the holder's slot with other bits");
    let third = others.next().expect("a second one");
    let slot = |h: &Harness| limiter_tests::kernel::slot(&h.ebpf, &source_key(IpAddr::from(holder), 1)).expect("slot");

    // The holder at its limit: refused, on `CONNS`.
    set_established(&mut h, holder, 1, 2);
    assert!(holders::may_hold(slot(&h).conns, holder_fp), "the holder is among the holders");
    assert_eq!(holders::count(slot(&h).conns), 2);
    assert_eq!(h.action(&attempt(IpAddr::from(holder))), DROP, "the holder at 2 of 2");
    // The other source, on the same slot, holds nothing: two handshakes.
    assert_eq!(h.action(&attempt(IpAddr::from(other))), PASS, "the other source's first");
    assert_eq!(h.action(&attempt(IpAddr::from(other))), PASS, "its second");
    assert_eq!(h.action(&attempt(IpAddr::from(other))), DROP, "its third: 2 in flight");

    // A word as an earlier version left it: the sum alone. Every source is
    // looked up: the holder is still refused, and a third source on the
    // slot, at its limit in `CONNS` though the word's bits never saw it, is
    // refused too (with the bits, it would have been ruled out).
    let mut legacy = slot(&h);
    legacy.conns = 2;
    {
        let mut slots: aya::maps::Array<_, pending::Slot> =
            aya::maps::Array::try_from(h.ebpf.map_mut(names::PENDING).expect("PENDING")).expect("array");
        slots.set(index, legacy, 0).expect("write the slot");
    }
    assert!(holders::may_hold(slot(&h).conns, holder_fp) && holders::may_hold(slot(&h).conns, 0x0000_0442));
    assert_eq!(h.action(&attempt(IpAddr::from(holder))), DROP, "the holder, read from CONNS");
    set_count(&mut h, names::CONNS, third, 1, 2);
    assert_eq!(h.action(&attempt(IpAddr::from(third))), DROP, "a count the bits never saw, looked up");
}
