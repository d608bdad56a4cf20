//! The kernel's TCP socket table through `NETLINK_SOCK_DIAG` (what `ss`
//! reads): every socket of the calling thread's network namespace with its
//! cookie, the same 64-bit cookie `bpf_get_socket_cookie` gives `sock_ops`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid (48), then
/// expires, rqueue, wqueue, uid, inode.
const INET_DIAG_MSG_LEN: usize = 72;

/// TCP states (`include/net/tcp_states.h`).
pub mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const CLOSING: u8 = 11;

    /// The states between a completed handshake and `TCP_CLOSE`: the span
    /// in which `sock_ops` keeps a connection counted. `TIME_WAIT` is a
    /// separate mini-socket; the full socket has closed by then.
    pub const COUNTED: u32 =
        bit(ESTABLISHED) | bit(FIN_WAIT1) | bit(FIN_WAIT2) | bit(CLOSE_WAIT) | bit(LAST_ACK) | bit(CLOSING);

    const fn bit(s: u8) -> u32 {
        1 << s
    }
}

/// One TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    pub cookie: u64,
    pub state: u8,
    pub local_port: u16,
    /// The peer; an IPv4 peer of a dual-stack socket reads `::ffff:a.b.c.d`.
    pub remote: IpAddr,
}

/// Every IPv4 and IPv6 TCP socket whose state is in the `states` bit mask
/// (bit `1 << state`).
pub fn tcp_sockets(states: u32) -> io::Result<Vec<TcpSocket>> {
    let fd = open()?;
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "AF_INET and AF_INET6 fit a u8")]
        dump(&fd, family as u8, states, &mut out)?;
    }
    Ok(out)
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: creates a descriptor we own from here on.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dump(fd: &OwnedFd, family: u8, states: u32, out: &mut Vec<TcpSocket>) -> io::Result<()> {
    // nlmsghdr + inet_diag_req_v2 (family, protocol, ext, pad, states, sockid).
    let mut req = [0u8; NLMSG_HDRLEN + 56];
    let len = u32::try_from(req.len()).unwrap_or(0);
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = family;
    #[expect(clippy::cast_possible_truncation, reason = "IPPROTO_TCP is 6")]
    let tcp = libc::IPPROTO_TCP as u8;
    req[17] = tcp;
    req[20..24].copy_from_slice(&states.to_ne_bytes());
    // SAFETY: sends from a buffer we own, of the length given.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receives into a buffer we own, at most its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        let mut msgs = &buf[..n];
        while msgs.len() >= NLMSG_HDRLEN {
            let len = u32_at(msgs, 0) as usize;
            if len < NLMSG_HDRLEN || len > msgs.len() {
                return Err(io::Error::other("malformed sock_diag reply"));
            }
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            let body = &msgs[NLMSG_HDRLEN..len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    #[expect(clippy::cast_possible_wrap, reason = "nlmsgerr.error is an int")]
                    let errno = -(u32_at(body, 0) as i32);
                    return Err(io::Error::from_raw_os_error(errno));
                }
                SOCK_DIAG_BY_FAMILY if body.len() >= INET_DIAG_MSG_LEN => out.push(parse(body)),
                _ => {}
            }
            msgs = &msgs[(len + 3) & !3..];
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
}

/// One `inet_diag_msg`: the sockid sits at offset 4 (sport, dport in network
/// order, then src and dst as four words each, the interface, the cookie
/// as two host-order words, low first).
fn parse(m: &[u8]) -> TcpSocket {
    let id = &m[4..52];
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&id[20..36]);
    let remote = if i32::from(m[0]) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(dst))
    };
    TcpSocket {
        cookie: u64::from(u32_at(id, 40)) | (u64::from(u32_at(id, 44)) << 32),
        state: m[1],
        local_port: u16::from_be_bytes([id[0], id[1]]),
        remote,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// Our own loopback connection shows up with the right port, peer and
    /// state, on both ends, with distinct cookies.
    #[test]
    fn sees_a_loopback_connection() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (_s, peer) = l.accept().expect("accept");
        let all = tcp_sockets(state::COUNTED).expect("sock_diag dump");
        let server: Vec<_> = all.iter().filter(|s| s.local_port == port).collect();
        assert_eq!(server.len(), 1, "one accepted socket on {port}: {all:?}");
        assert_eq!(server[0].remote, peer.ip());
        assert_eq!(server[0].state, state::ESTABLISHED);
        let client_port = c.local_addr().expect("addr").port();
        let client: Vec<_> = all.iter().filter(|s| s.local_port == client_port).collect();
        assert_eq!(client.len(), 1);
        assert_ne!(client[0].cookie, server[0].cookie);
        assert_ne!(server[0].cookie, 0);
        // Listening sockets are not in the counted states.
        assert!(all.iter().all(|s| s.state != 10));
    }
}
