//! Network namespaces, veth pairs and daemons for integration tests. Every
//! resource is owned by a guard that removes it in `Drop`, also on panic,
//! and names are unique per process so a crashed run cannot break the next.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::scratch::Scratch;
pub use crate::scratch::unique;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs a command and panics with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace (network namespace only, so
    /// bpffs and cgroup2 stay visible).
    pub fn exec(&self, args: &[&str]) -> String {
        let net = format!("--net={}", self.path().display());
        let mut full = vec!["nsenter", net.as_str()];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// A plain listener on `addr` in this namespace that accepts forever and
    /// keeps every connection open (see [`Pair::listen`] for a dual-stack one).
    pub fn listen(&self, addr: SocketAddr) -> Listener {
        serve(self.run(move || TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))))
    }

    /// Sets a sysctl of this namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Whether something listens on TCP `port` in this namespace, waiting
    /// up to `limit` for it (a server started in the background).
    #[must_use]
    pub fn wait_listening(&self, port: u16, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let filter = format!("sport = :{port}");
        loop {
            if !self.exec(&["ss", "-Hltn", &filter]).trim().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The namespace's network statistics as `nstat` names them
    /// (`TcpInSegs`, `TcpExtSyncookiesSent`, `IpExtInCsumErrors`, ...):
    /// absolute values, zeros included, nstat's history left alone.
    #[must_use]
    pub fn nstat(&self) -> std::collections::HashMap<String, u64> {
        self.exec(&["nstat", "-asz"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.to_owned(), w.next()?.parse().ok()?))
            })
            .collect()
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it
    /// creates belong to the namespace for their whole life.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Attaches the object's empty XDP program (`limiter_probe`: every frame
/// passes) to `iface` in `ns`, in native mode; it stays attached until the
/// returned handle is dropped.
#[must_use]
pub fn attach_pass(ns: &Netns, iface: &str) -> aya::Ebpf {
    let iface = iface.to_owned();
    ns.run(move || {
        let mut ebpf = aya::Ebpf::load(limiter_user::EBPF_OBJECT).expect("load object");
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut(limiter_common::maps::names::PROBE_PROGRAM)
            .expect("limiter_probe program")
            .try_into()
            .expect("xdp program");
        prog.load().expect("load limiter_probe");
        prog.attach(&iface, aya::programs::XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attach limiter_probe to {iface}: {e}"));
        ebpf
    })
}

/// Two namespaces joined by a veth pair: `server` (where the limiter runs,
/// on `server_if`) and `client`. IPv4 198.18.N.0/24 and IPv6 `2001:db8:N::/48`.
pub struct Pair {
    /// Holds the pass-through XDP program on the client veth (see `new`).
    _peer_xdp: aya::Ebpf,
    pub server: Netns,
    pub client: Netns,
    pub server_if: String,
    pub client_if: String,
    pub net: u8,
}

impl Pair {
    #[must_use]
    pub fn new() -> Self {
        let server = Netns::new("lts");
        let client = Netns::new("ltc");
        let net = u8::try_from(SEQ.fetch_add(1, Ordering::Relaxed) % 200 + 1).unwrap_or(1);
        let (server_if, client_if) = veth(&server, &client, "v");
        // A veth hands XDP_TX frames to its peer only if the peer runs XDP
        // itself (its NAPI path); a real NIC needs nothing. So the client
        // side gets the object's empty pass program.
        let peer_xdp = attach_pass(&client, &client_if);
        let p = Self { _peer_xdp: peer_xdp, server, client, server_if, client_if, net };
        p.server.exec(&["ip", "addr", "add", &format!("198.18.{net}.1/24"), "dev", &p.server_if]);
        p.server.exec(&["ip", "addr", "add", &format!("2001:db8:{net:x}::1/48"), "dev", &p.server_if, "nodad"]);
        p.server.exec(&["ip", "link", "set", &p.server_if, "up"]);
        p.client.exec(&["ip", "link", "set", &p.client_if, "up"]);
        p
    }

    /// Adds a client address (IPv4 host number or an IPv6 address string).
    pub fn add_client_v4(&self, host: u8) -> IpAddr {
        self.client.exec(&["ip", "addr", "add", &format!("198.18.{}.{host}/24", self.net), "dev", &self.client_if]);
        format!("198.18.{}.{host}", self.net).parse().expect("valid v4")
    }

    /// Adds `v4` IPv4 hosts (198.18.N.2 on) and `v6` IPv6 /64s
    /// (`2001:db8:N:S::2` for S from 1) on the client side, in one `ip -batch`
    /// (thousands take a second, not minutes); returns them in that order.
    pub fn add_clients(&self, v4: u8, v6: u16) -> Vec<IpAddr> {
        use std::fmt::Write as _;
        assert!(v4 <= 253, "198.18.N.2 to .254 at most");
        let (mut batch, mut added) = (String::new(), Vec::new());
        for h in (2..).take(usize::from(v4)) {
            let a = format!("198.18.{}.{h}", self.net);
            let _ = writeln!(batch, "addr add {a}/24 dev {}", self.client_if);
            added.push(a.parse().expect("valid v4"));
        }
        for s in 1..=v6 {
            let a = format!("2001:db8:{:x}:{s:x}::2", self.net);
            let _ = writeln!(batch, "addr add {a}/48 dev {} nodad", self.client_if);
            added.push(a.parse().expect("valid v6"));
        }
        let dir = Scratch::new();
        let file = dir.write("addrs.batch", &batch);
        self.client.exec(&["ip", "-batch", file.to_str().expect("utf-8 path")]);
        added
    }

    /// Adds `2001:db8:N:SUBNET::HOST` on the client side.
    pub fn add_client_v6(&self, subnet: u16, host: u16) -> IpAddr {
        let a = format!("2001:db8:{:x}:{subnet:x}::{host:x}", self.net);
        self.client.exec(&["ip", "addr", "add", &format!("{a}/48"), "dev", &self.client_if, "nodad"]);
        a.parse().expect("valid v6")
    }

    #[must_use]
    pub fn server_v4(&self) -> IpAddr {
        format!("198.18.{}.1", self.net).parse().expect("valid v4")
    }

    #[must_use]
    pub fn server_v6(&self) -> IpAddr {
        format!("2001:db8:{:x}::1", self.net).parse().expect("valid v6")
    }

    /// A dual-stack listener on `[::]:port` in the server namespace that
    /// accepts forever and keeps every connection open.
    pub fn listen(&self, port: u16) -> Listener {
        serve(self.bind_dual_stack(port))
    }

    /// A bound dual-stack listener on `[::]:port` in the server namespace,
    /// for tests that serve it their own way.
    #[must_use]
    pub fn bind_dual_stack(&self, port: u16) -> TcpListener {
        self.server.run(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).expect("socket");
            s.set_only_v6(false).expect("dual stack");
            s.set_reuse_address(true).expect("reuseaddr");
            s.bind(&SocketAddr::from(([0u16; 8], port)).into()).expect("bind");
            s.listen(1024).expect("listen");
            TcpListener::from(s)
        })
    }

    /// `n` connection attempts from `src` started at the same instant, one
    /// thread each, from the client namespace.
    #[must_use]
    pub fn connect_parallel(&self, src: IpAddr, port: u16, n: usize, timeout: Duration) -> Vec<Attempt> {
        let dst = if src.is_ipv4() { self.server_v4() } else { self.server_v6() };
        self.client.run(move || {
            // Threads inherit the network namespace of the thread that makes them.
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
            let threads: Vec<_> = (0..n)
                .map(|_| {
                    let barrier = std::sync::Arc::clone(&barrier);
                    thread::spawn(move || {
                        barrier.wait();
                        connect(src, SocketAddr::new(dst, port), timeout)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().expect("connect thread")).collect()
        })
    }

    /// Connection attempts from `src` to the server on `port`, made from
    /// the client namespace; each result is kept open until dropped.
    #[must_use]
    pub fn connect_many(&self, src: IpAddr, port: u16, n: usize, timeout: Duration) -> Vec<Attempt> {
        let dst = if src.is_ipv4() { self.server_v4() } else { self.server_v6() };
        self.client.run(move || (0..n).map(|_| connect(src, SocketAddr::new(dst, port), timeout)).collect())
    }

    /// [`Self::connect_many`], and every one must get in: `n` connections
    /// from `src` to `port` to hold.
    #[must_use]
    pub fn hold(&self, src: IpAddr, port: u16, n: usize, timeout: Duration) -> Vec<Attempt> {
        let a = self.connect_many(src, port, n, timeout);
        assert_eq!(tally(&a).connected, n, "holding {n} from {src}: {a:?}");
        a
    }
}

impl Pair {
    /// The MAC address of `iface` in `ns` (see [`mac`]).
    #[must_use]
    pub fn mac(ns: &Netns, iface: &str) -> [u8; 6] {
        mac(ns, iface)
    }

    /// Sends `n` TCP SYNs to the server's `port`, each from a new spoofed
    /// source (alternating 198.18.0.0/15 and `2001:db8::/32`, never the
    /// pair's own addresses), with valid checksums, through an `AF_PACKET`
    /// socket on the client veth. Bounded: returns when all are sent.
    pub fn flood_spoofed(&self, port: u16, n: u32) {
        let net = self.net;
        let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
        let syns = (0..n)
            .map(|i| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let b = rng.to_be_bytes();
                let src: IpAddr = if i % 2 == 0 {
                    // 198.18.0.0/15 minus the pair's own /24.
                    let third = if b[1] == net { b[1].wrapping_add(1) } else { b[1] };
                    std::net::Ipv4Addr::new(198, 18 + (b[0] & 1), third, b[2]).into()
                } else {
                    // 2001:db8:8000::/33, away from the pair's 2001:db8:N::/48.
                    let a = u16::from_be_bytes([b[0], b[1]]) | 0x8000;
                    let w = |k: usize| u16::from_be_bytes([b[k], b[k + 1]]);
                    std::net::Ipv6Addr::new(0x2001, 0xdb8, a, w(2), w(4), w(6), w(1), w(3)).into()
                };
                Syn {
                    src,
                    sport: u16::from_be_bytes([b[5], b[6]]) | 1024,
                    seq: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                }
            })
            .collect();
        self.send_syns(port, syns);
    }

    /// Sends `n` SYNs to the server's `port` from `src`, a forged address
    /// that is not the client's (one that never completed a handshake):
    /// each from its own source port, as new connection attempts would be.
    pub fn forge_syns(&self, src: IpAddr, port: u16, n: u16) {
        let syns = (0..n).map(|i| Syn { src, sport: 40_000 + i, seq: 0x1000_0000 + u32::from(i) }).collect();
        self.send_syns(port, syns);
    }

    /// Sends `each` SYNs from every forged address of `srcs`, round-robin
    /// (one SYN of each source in turn), each from its own source port.
    pub fn forge_syns_from(&self, srcs: &[IpAddr], port: u16, each: u16) {
        let mut syns = Vec::with_capacity(srcs.len() * usize::from(each));
        for i in 0..each {
            for src in srcs {
                syns.push(Syn { src: *src, sport: 40_000 + i, seq: 0x1000_0000 + u32::from(i) });
            }
        }
        self.send_syns(port, syns);
    }

    /// Sends each SYN (from its own spoofed source) to `port` through an
    /// `AF_PACKET` socket on the client veth, with valid checksums. Bounded:
    /// returns when all are sent.
    fn send_syns(&self, port: u16, syns: Vec<Syn>) {
        let (dst_mac, src_mac) = (mac(&self.server, &self.server_if), mac(&self.client, &self.client_if));
        let (v4, v6) = (self.server_v4(), self.server_v6());
        let ifname = self.client_if.clone();
        self.client.run(move || {
            let ifindex = limiter_user::kernel::host::ifindex(&ifname).expect("client veth");
            // SAFETY: a raw packet socket we own; every call checks its result.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = u16::try_from(libc::AF_PACKET).expect("family");
            addr.sll_ifindex = i32::try_from(ifindex).expect("ifindex");
            addr.sll_halen = 6;
            for syn in syns {
                let dst = if syn.src.is_ipv4() { v4 } else { v6 };
                let mut tcp = crate::frames::Tcp::syn(syn.src, dst, port);
                tcp.sport = syn.sport;
                tcp.seq = syn.seq;
                let mut f = crate::frames::frame(&tcp, &crate::frames::Shape::default());
                f[..6].copy_from_slice(&dst_mac);
                f[6..12].copy_from_slice(&src_mac);
                loop {
                    // SAFETY: f and addr outlive the call; sizes are theirs.
                    let sent = unsafe {
                        libc::sendto(
                            fd,
                            f.as_ptr().cast(),
                            f.len(),
                            0,
                            (&raw const addr).cast(),
                            u32::try_from(size_of::<libc::sockaddr_ll>()).expect("size"),
                        )
                    };
                    if usize::try_from(sent).ok() == Some(f.len()) {
                        break;
                    }
                    let e = std::io::Error::last_os_error();
                    // The veth queue is full: let the receiver catch up.
                    assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "sendto: {e}");
                    thread::sleep(Duration::from_micros(200));
                }
            }
            // SAFETY: closing the descriptor we opened.
            unsafe { libc::close(fd) };
        });
    }
}

/// One forged SYN: its source address, port and sequence number.
struct Syn {
    src: IpAddr,
    sport: u16,
    seq: u32,
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

/// A plain listener on `addr` in the calling thread's namespace (a test's own
/// thread: the root namespace) that accepts forever and keeps every connection
/// open, as [`Netns::listen`] does in a namespace.
#[must_use]
pub fn listen_here(addr: SocketAddr) -> Listener {
    serve(TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
}

/// Keeps a listener open.
pub struct Listener {
    _listener: TcpListener,
}

/// Accepts on `l` forever and keeps every connection open, like a mail
/// server: each is held until the client closes it, then our side closes
/// too (a server left in CLOSE-WAIT really holds its slot).
fn serve(l: TcpListener) -> Listener {
    let accepter = l.try_clone().expect("clone listener");
    thread::spawn(move || {
        while let Ok((mut s, _)) = accepter.accept() {
            thread::spawn(move || {
                let mut buf = [0u8; 512];
                while matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    Listener { _listener: l }
}

/// A veth pair with one end in each namespace, named uniquely from
/// `prefix` (`{prefix}s…` in `server`, `{prefix}c…` in `client`); returns
/// the two names. Deleting either namespace removes the pair.
#[must_use]
pub fn veth(server: &Netns, client: &Netns, prefix: &str) -> (String, String) {
    let server_if = unique(&format!("{prefix}s"));
    let client_if = unique(&format!("{prefix}c"));
    sh(&[
        "ip",
        "link",
        "add",
        &server_if,
        "netns",
        &server.name,
        "type",
        "veth",
        "peer",
        "name",
        &client_if,
        "netns",
        &client.name,
    ]);
    (server_if, client_if)
}

/// The MAC address of `iface` in `ns`.
#[must_use]
pub fn mac(ns: &Netns, iface: &str) -> [u8; 6] {
    let out = ns.exec(&["ip", "-o", "link", "show", "dev", iface]);
    let hex = out.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next()).expect("link/ether");
    let mut mac = [0u8; 6];
    for (m, h) in mac.iter_mut().zip(hex.split(':')) {
        *m = u8::from_str_radix(h, 16).expect("mac hex");
    }
    mac
}

/// The outcome of one connection attempt.
#[derive(Debug)]
pub enum Attempt {
    Connected(TcpStream),
    /// Refused (an RST came back), with how long it took.
    Refused(Duration),
    TimedOut,
    Other(std::io::Error),
}

/// The connections of `attempts` that got in, to hold or close.
#[must_use]
pub fn streams(attempts: Vec<Attempt>) -> Vec<TcpStream> {
    attempts
        .into_iter()
        .filter_map(|a| match a {
            Attempt::Connected(s) => Some(s),
            _ => None,
        })
        .collect()
}

impl Attempt {
    #[must_use]
    pub const fn is_connected(&self) -> bool {
        matches!(self, Self::Connected(_))
    }
}

/// One connection attempt from a bound source address.
#[must_use]
pub fn connect(src: IpAddr, dst: SocketAddr, timeout: Duration) -> Attempt {
    let domain = if src.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(src, 0).into()).expect("bind source");
    let start = Instant::now();
    match s.connect_timeout(&dst.into(), timeout) {
        Ok(()) => Attempt::Connected(s.into()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Attempt::Refused(start.elapsed()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock => {
            Attempt::TimedOut
        }
        Err(e) => Attempt::Other(e),
    }
}

/// Counts of attempt outcomes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub connected: usize,
    pub refused: usize,
    pub timed_out: usize,
    pub other: usize,
}

#[must_use]
pub fn tally(attempts: &[Attempt]) -> Tally {
    let mut t = Tally::default();
    for a in attempts {
        match a {
            Attempt::Connected(_) => t.connected += 1,
            Attempt::Refused(_) => t.refused += 1,
            Attempt::TimedOut => t.timed_out += 1,
            Attempt::Other(_) => t.other += 1,
        }
    }
    t
}

/// A `limiter run` process in a namespace, stopped with SIGTERM on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub log: PathBuf,
    pub spawn: Spawn,
    /// Holds the socket, the log and the state dir; removed after the daemon stops.
    dir: Scratch,
}

/// How the daemon process is started, beyond its arguments.
#[derive(Debug, Clone, Default)]
pub struct Spawn {
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// A command the binary runs under, inside the namespace (e.g.
    /// `unshare -m ...`), ending with the argument that takes the binary.
    pub wrap: Vec<String>,
}

/// The binary under test (set by `cargo xtask test`).
#[must_use]
pub fn limiter_bin() -> PathBuf {
    std::env::var_os("LIMITER_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/limiter"), PathBuf::from)
}

impl Daemon {
    /// Starts `limiter run ARGS` in `ns` with private socket, pin and state
    /// paths, and waits until its control socket answers.
    #[must_use]
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        Self::start_with(ns, args, Spawn::default())
    }

    /// [`Self::start`] with extra environment or a wrapping command.
    #[must_use]
    pub fn start_with(ns: &Netns, args: &[&str], spawn: Spawn) -> Self {
        let mut d = Self::unstarted(spawn);
        d.spawn(ns, args);
        d
    }

    /// Private socket, pin and state paths, nothing started (start it with
    /// [`Self::restart`] or [`Self::run_to_exit`]).
    #[must_use]
    pub fn unstarted(spawn: Spawn) -> Self {
        let dir = Scratch::new();
        Self {
            child: None,
            socket: dir.0.join("limiter.sock"),
            pin_dir: PathBuf::from("/sys/fs/bpf").join(unique("limiter-test-")),
            log: dir.0.join("daemon.log"),
            spawn,
            dir,
        }
    }

    /// The state dir the daemon is given.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.dir.0.join("state")
    }

    /// Runs `limiter run ARGS` with the extra environment `env` and waits
    /// up to `limit` for it to exit by itself (a failpoint kills it);
    /// returns how it ended. Panics if it is still running then.
    pub fn run_to_exit(
        &mut self,
        ns: &Netns,
        args: &[&str],
        env: &[(&str, &str)],
        limit: Duration,
    ) -> std::process::ExitStatus {
        assert!(self.child.is_none(), "a daemon is running");
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut child = self
            .command(ns, args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn limiter");
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("limiter run {args:?} with {env:?} did not exit within {limit:?}: {}", self.log_text());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The command that runs `limiter run ARGS` in `ns` as this daemon (its
    /// socket, pins and state dir), for a test that runs it its own way.
    #[must_use]
    pub fn command(&self, ns: &Netns, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path().display()))
            .args(&self.spawn.wrap)
            .arg(limiter_bin())
            .arg("run")
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(self.state_dir())
            // Idle connection-table entries are reclaimed every 200 ms
            // instead of 30 s, so every test runs alongside reclamation.
            .env("LIMITER_RECLAIM_MS", "200")
            .envs(self.spawn.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts the daemon again with the same paths (after `stop` or `kill`).
    pub fn restart(&mut self, ns: &Netns, args: &[&str]) {
        assert!(self.child.is_none(), "restart of a running daemon");
        self.spawn(ns, args);
    }

    fn spawn(&mut self, ns: &Netns, args: &[&str]) {
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = self.command(ns, args).stdout(Stdio::null()).stderr(logf).spawn().expect("spawn limiter");
        self.child = Some(child);
        let limit = crate::patience(Duration::from_secs(10));
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("limiter run exited early ({status}): {}", self.log_text());
            }
            if self.status_json().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("limiter run did not answer on {} within {limit:?}: {}", self.socket.display(), self.log_text());
    }

    /// Established connections of the first service, as `status` reports them.
    #[must_use]
    pub fn connections(&self) -> u64 {
        let s = self.status_json().expect("status");
        s["services"][0]["connections"].as_u64().unwrap_or_else(|| panic!("no connections in {s}"))
    }

    /// Waits up to `limit` for [`Self::connections`] to reach `want`; returns how long it took.
    pub fn wait_connections(&self, want: u64, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.connections();
            if got == want {
                return start.elapsed();
            }
            assert!(start.elapsed() < limit, "connections stayed at {got}, want {want}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: the daemon gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 15 s until `f` holds for the daemon's log, and returns
    /// the log; panics with it otherwise.
    pub fn wait_log(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let log = self.log_text();
            if f(&log) {
                return log;
            }
            assert!(
                start.elapsed() < crate::patience(Duration::from_secs(15)),
                "no {what} in the daemon's log:\n{log}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `limiter status --json` through the real client command.
    #[must_use]
    pub fn status_json(&self) -> Option<serde_json::Value> {
        self.try_client_json(&["status", "--json"]).ok()
    }

    /// Runs a client command (`limiter ARGS`, ARGS ending in `--json`)
    /// against this daemon through `LIMITER_SOCKET` and parses its output.
    /// Panics with the command's stderr if it fails.
    #[must_use]
    pub fn client_json(&self, args: &[&str]) -> serde_json::Value {
        self.try_client_json(args).unwrap_or_else(|e| panic!("limiter {args:?}: {e}"))
    }

    fn try_client_json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = Command::new(limiter_bin())
            .args(args)
            .env("LIMITER_SOCKET", &self.socket)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad JSON: {e}"))
    }

    /// Sends SIGTERM and waits; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = libc::pid_t::try_from(child.id()).ok()?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + crate::patience(Duration::from_secs(10));
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // The programs stay attached after the daemon stops; remove them.
        // (Its scratch dir goes after this, with the fields.)
        let _ = limiter_user::kernel::pins::unload(&self.pin_dir);
    }
}
