//! The bench's network: a server and a client namespace joined by a veth pair, listeners in the server, and the
//! client's real connections. Everything is owned here and removed on drop, also on error or panic.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use aya::programs::{Xdp, XdpMode};
use limiter_tests::{
    frames::{self, ACK, Tcp},
    netns::{self, Listener, Netns},
    nft,
};

use crate::Result;

pub(crate) const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The IPv6 client of the injected IPv6 SYNs (its /64 is its source key). IPv6 is off in the namespaces: those
/// SYNs are only ever dropped by XDP, never sent on or answered.
pub(crate) const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x6000, 0, 0, 0, 0, 1);
/// The address the IPv6 SYNs are sent to.
pub(crate) const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub(crate) const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The client's connections count up from here (above the injected SYNs' ports, below the ephemeral range).
const FIRST_CLIENT_PORT: u16 = 20_000;

/// Server and client namespaces on a veth pair (client 198.18.0.1, server 198.18.0.2, IPv6 off so nothing but
/// those two addresses is ever sent), with plain listeners on the bench ports and the client's connections.
pub(crate) struct Testbed {
    // Declared first so they close before the namespaces go.
    conns: Vec<TcpStream>,
    flows: Vec<TcpStream>,
    _listeners: Vec<Listener>,
    pub(crate) server: Netns,
    pub(crate) client: Netns,
    pub(crate) server_if: String,
    client_if: String,
    server_mac: [u8; 6],
    client_mac: [u8; 6],
    /// Source port of the client's next connection (see `reconnect`).
    next_sport: u16,
    /// Resets the client sent closing its connections (`disconnect`).
    resets_sent: u64,
}

impl Testbed {
    /// Sets up the namespaces and a listener on each of `ports` in the server.
    ///
    /// Every SYN that reaches a listener gets a SYN cookie (`tcp_syncookies=2`): stateless, so each accepted SYN
    /// costs the same stack work however many come (no half-open table to fill or retransmissions to match).
    /// The client sends no TCP timestamps, so an ACK built here needs no timestamp option to be in order.
    pub(crate) fn new(ports: &[u16]) -> Self {
        let server = Netns::new("lbs");
        let client = Netns::new("lbc");
        for ns in [&server, &client] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        }
        server.sysctl("net.ipv4.tcp_syncookies", "2");
        client.sysctl("net.ipv4.tcp_timestamps", "0");
        let (server_if, client_if) = netns::veth(&server, &client, "vb");
        server.exec(&["ip", "addr", "add", &format!("{SERVER}/24"), "dev", &server_if]);
        client.exec(&["ip", "addr", "add", &format!("{CLIENT}/24"), "dev", &client_if]);
        server.exec(&["ip", "link", "set", &server_if, "up"]);
        client.exec(&["ip", "link", "set", &client_if, "up"]);
        let listeners = ports.iter().map(|&p| server.listen(SocketAddr::new(SERVER.into(), p))).collect();
        let (server_mac, client_mac) = (netns::mac(&server, &server_if), netns::mac(&client, &client_if));
        Self {
            conns: Vec::new(),
            flows: Vec::new(),
            _listeners: listeners,
            server,
            client,
            server_if,
            client_if,
            server_mac,
            client_mac,
            next_sport: FIRST_CLIENT_PORT,
            resets_sent: 0,
        }
    }

    /// Attaches `prog` (loaded) to the client's veth; it stays attached until the program or the namespace goes.
    pub(crate) fn attach_client(&self, prog: &mut Xdp) -> Result<()> {
        let (path, iface) = (self.client.path(), self.client_if.clone());
        std::thread::scope(|s| {
            s.spawn(|| {
                // The interface name and the link are resolved in the calling thread's namespace.
                netns::enter(&path);
                prog.attach(&iface, XdpMode::Driver).map(drop)
            })
            .join()
            .map_err(|_| "attach thread panicked")?
            .map_err(|e| format!("attaching to the client veth {iface}: {e}").into())
        })
    }

    /// Closes the client's connections with a reset each and waits until the server has let go of them: a
    /// single RST that conntrack, should it be on by now, cannot mistake for a connection to pick up (the last ACK
    /// of a FIN handshake would be, and `ct state new` would count it).
    pub(crate) fn disconnect(&mut self, port: u16) -> Result<()> {
        for s in self.conns.drain(..) {
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
            self.resets_sent += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while nft::server_sockets(&self.server, port) != 0 {
            if Instant::now() > deadline {
                return Err(format!(
                    "the server still holds connections on port {port} 5 s after the client reset them"
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Resets the client sent closing its own connections so far: the only ones it should send.
    pub(crate) const fn resets_sent(&self) -> u64 {
        self.resets_sent
    }

    /// Opens `n` connections from `CLIENT` to the server's `port` (closing the client's earlier ones first).
    ///
    /// Each comes from a source port never used before in this run: conntrack entries of earlier connections
    /// whose close it did not see (it is on only while a peer's rules are) stay behind as established, and a new
    /// connection on the same 4-tuple would be taken for one of them instead of counted.
    pub(crate) fn reconnect(&mut self, port: u16, n: usize) -> Result<()> {
        self.disconnect(port)?;
        let first = self.next_sport;
        self.next_sport = u16::try_from(n).ok().and_then(|n| first.checked_add(n)).ok_or("out of client ports")?;
        self.conns = self.connect(port, first, n)?;
        Ok(())
    }

    fn connect(&self, port: u16, first_sport: u16, n: usize) -> Result<Vec<TcpStream>> {
        let dst = SocketAddr::new(SERVER.into(), port);
        let streams: std::io::Result<Vec<TcpStream>> = self.client.run(move || {
            (first_sport..)
                .take(n)
                .map(|sport| {
                    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                    s.bind(&SocketAddr::new(CLIENT.into(), sport).into())?;
                    s.connect_timeout(&dst.into(), Duration::from_secs(3))?;
                    Ok(TcpStream::from(s))
                })
                .collect::<std::io::Result<Vec<_>>>()
        });
        Ok(streams.map_err(|e| format!("client connection to {dst}: {e}"))?)
    }

    /// Opens one more connection from `CLIENT` to `port` and returns an ACK of it as the client would send it
    /// (the next sequence number, acknowledging everything): the server's TCP takes it as a duplicate ACK of an
    /// established connection and answers nothing, however often it comes.
    pub(crate) fn established_ack(&mut self, port: u16) -> Result<Vec<u8>> {
        let sport = self.next_sport;
        self.next_sport = sport.checked_add(1).ok_or("out of client ports")?;
        let s = self.connect(port, sport, 1)?.pop().ok_or("no connection")?;
        let (seq, ack) = next_seqs(&s)?;
        let local = s.local_addr()?;
        self.flows.push(s);
        let tcp = Tcp {
            flags: ACK,
            seq,
            ack,
            sport: local.port(),
            options: vec![],
            ..Tcp::syn(local.ip(), SERVER.into(), port)
        };
        Ok(self.frame(&tcp))
    }

    /// A frame as the client's veth would deliver it: valid checksums, the real MAC addresses, so the server's
    /// stack takes it as addressed to itself.
    pub(crate) fn frame(&self, tcp: &Tcp) -> Vec<u8> {
        let mut f = frames::frame(tcp, &frames::Shape::default());
        f[..6].copy_from_slice(&self.server_mac);
        f[6..12].copy_from_slice(&self.client_mac);
        f
    }

    /// The `SYN` the injected cases send: from `CLIENT` port `sport` to the server's `port`.
    pub(crate) fn syn(&self, sport: u16, port: u16) -> Vec<u8> {
        self.frame(&Tcp { sport, ..Tcp::syn(IpAddr::V4(CLIENT), IpAddr::V4(SERVER), port) })
    }

    /// The same from `CLIENT6` to `SERVER6`.
    pub(crate) fn syn6(&self, sport: u16, port: u16) -> Vec<u8> {
        self.frame(&Tcp { sport, ..Tcp::syn(IpAddr::V6(CLIENT6), IpAddr::V6(SERVER6), port) })
    }
}

/// The client's next sequence number and the next one it expects, read in TCP repair mode (root only), which is
/// left again without a window probe; the connection goes on as before.
fn next_seqs(s: &TcpStream) -> Result<(u32, u32)> {
    const TCP_RECV_QUEUE: libc::c_int = 1;
    const TCP_SEND_QUEUE: libc::c_int = 2;
    const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
    #[expect(clippy::cast_possible_truncation, reason = "4 bytes")]
    const LEN: libc::socklen_t = size_of::<libc::c_int>() as libc::socklen_t;
    let fd = s.as_raw_fd();
    let set = |opt, v: libc::c_int| {
        // SAFETY: a valid socket and an int option of the right size.
        let rc = unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, opt, (&raw const v).cast(), LEN) };
        if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    };
    let seq = |queue| -> std::io::Result<u32> {
        set(libc::TCP_REPAIR_QUEUE, queue)?;
        let (mut v, mut len) = (0u32, LEN);
        // SAFETY: as above, with an out-parameter of the size given.
        let rc =
            unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ, (&raw mut v).cast(), &raw mut len) };
        if rc == 0 { Ok(v) } else { Err(std::io::Error::last_os_error()) }
    };
    set(libc::TCP_REPAIR, 1).map_err(|e| format!("TCP_REPAIR on the client connection: {e}"))?;
    let seqs = seq(TCP_SEND_QUEUE).and_then(|snd| Ok((snd, seq(TCP_RECV_QUEUE)?)));
    set(libc::TCP_REPAIR, TCP_REPAIR_OFF_NO_WP).map_err(|e| format!("leaving TCP repair mode: {e}"))?;
    Ok(seqs.map_err(|e| format!("TCP_QUEUE_SEQ: {e}"))?)
}
