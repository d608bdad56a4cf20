//! What the kernel layer looks up on the host: interfaces, the network
//! namespace's cookie, the cgroup v2 mount, and whether a cgroup filter sees
//! what the daemon's own sockets receive.

use std::ffi::CString;

use crate::kernel::error::LoadError;

/// The interface index of `name` in the current network namespace.
pub fn ifindex(name: &str) -> Result<u32, LoadError> {
    let c = CString::new(name).map_err(|_| LoadError::UnknownInterface(name.to_owned()))?;
    // SAFETY: c is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(LoadError::UnknownInterface(name.to_owned())),
        i => Ok(i),
    }
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`),
/// which `sock_ops` compares to count only this namespace's sockets.
pub fn netns_cookie() -> Result<u64, LoadError> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket calls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(LoadError::NetnsCookie(std::io::Error::last_os_error()));
        }
        let mut cookie = 0u64;
        let mut len = libc::socklen_t::try_from(size_of::<u64>()).unwrap_or(8);
        let rc = libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &raw mut len);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(LoadError::NetnsCookie(err));
        }
        Ok(cookie)
    }
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on a pure v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Result<std::path::PathBuf, LoadError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|_| LoadError::NoCgroup2)?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| std::path::PathBuf::from(dir))
        })
        .ok_or(LoadError::NoCgroup2)
}

/// Whether a cgroup BPF program filters the packets the daemon's own sockets
/// receive (`BPF_CGROUP_INET_INGRESS` on its cgroup, inherited ones too):
/// systemd's `IPAddressDeny=`/`IPAddressAllow=` attach one. What it lets in
/// cannot be read without `CAP_SYS_ADMIN`, only that it is there.
pub fn own_packets_filtered() -> std::io::Result<bool> {
    use std::os::fd::AsFd as _;
    const BPF_CGROUP_INET_INGRESS: u32 = 0;
    let mount = cgroup2_mount().map_err(std::io::Error::other)?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| std::io::Error::other("no cgroup v2 line in /proc/self/cgroup"))?;
    let dir = std::fs::File::open(mount.join(rel.trim_start_matches('/')))?;
    Ok(!crate::kernel::pins::effective_prog_ids(dir.as_fd(), BPF_CGROUP_INET_INGRESS)?.is_empty())
}

/// An XDP program attached to an interface, as rtnetlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedXdp {
    pub id: u32,
    /// `native`, `skb`, `offload` or `several`.
    pub mode: &'static str,
    /// The program's name, where this process may look it up (listing
    /// programs by id needs `CAP_SYS_ADMIN`).
    pub name: Option<String>,
}

impl std::fmt::Display for AttachedXdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "program {} '{name}' ({} mode)", self.id, self.mode),
            None => write!(f, "program {} ({} mode; `bpftool prog show id {}` names it)", self.id, self.mode, self.id),
        }
    }
}

/// The XDP program attached to interface `index`, if any: an `RTM_GETLINK`
/// request and its `IFLA_XDP` attribute, as `ip link` reads it.
pub fn xdp_attached(index: u32) -> std::io::Result<Option<AttachedXdp>> {
    let reply = rtnl_getlink(index)?;
    let Some((id, mode)) = parse_xdp(&reply) else {
        return Ok(None);
    };
    let name = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_owned));
    Ok(Some(AttachedXdp { id, mode, name }))
}

/// The netlink messages answering `RTM_GETLINK` for `index`.
fn rtnl_getlink(index: u32) -> std::io::Result<Vec<u8>> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // nlmsghdr (16) + ifinfomsg (16).
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    #[expect(clippy::cast_possible_truncation, reason = "netlink flags are 16 bits")]
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = 0; // AF_UNSPEC
    req[20..24].copy_from_slice(&index.to_ne_bytes());
    // SAFETY: a socket we own (OwnedFd closes it), buffers we own with their lengths.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        if libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 64 * 1024];
        let n = libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(usize::try_from(n).unwrap_or(0));
        Ok(buf)
    }
}

/// The attached program's id and mode from an `RTM_NEWLINK` message:
/// `IFLA_XDP` (43) holds `IFLA_XDP_ATTACHED` (2) and `IFLA_XDP_PROG_ID` (4).
fn parse_xdp(msg: &[u8]) -> Option<(u32, &'static str)> {
    /// A native-endian u16 at `at`, if `b` holds it.
    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        b.get(at..at + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]))
    }
    /// Attributes: len u16, type u16, payload, aligned to 4.
    fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        while let (Some(len), Some(kind)) = (u16_at(b, 0), u16_at(b, 2)) {
            let len = usize::from(len);
            if len < 4 || len > b.len() {
                break;
            }
            out.push((kind & 0x3fff, &b[4..len]));
            b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        }
        out
    }
    const IFLA_XDP: u16 = 43;
    const ATTACHED: u16 = 2;
    const PROG_ID: u16 = 4;
    let kind = u16_at(msg, 4)?;
    if kind != libc::RTM_NEWLINK {
        return None;
    }
    let len = usize::try_from(u32::from_ne_bytes(msg.get(0..4)?.try_into().ok()?)).ok()?;
    let body = msg.get(32..len.min(msg.len()))?;
    let xdp = attrs(body).into_iter().find(|(k, _)| *k == IFLA_XDP)?.1;
    let nested = attrs(xdp);
    let attached = nested.iter().find(|(k, _)| *k == ATTACHED).and_then(|(_, v)| v.first().copied())?;
    let mode = match attached {
        0 => return None,
        1 => "native",
        2 => "skb",
        3 => "offload",
        _ => "several",
    };
    let id = nested
        .iter()
        .find(|(k, _)| *k == PROG_ID)
        .and_then(|(_, v)| v.get(0..4))
        .map(|v| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]))?;
    Some((id, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + payload.len()).expect("short");
        let mut a = [len.to_ne_bytes(), kind.to_ne_bytes()].concat();
        a.extend_from_slice(payload);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    fn newlink(attrs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attrs.concat();
        let len = u32::try_from(32 + body.len()).expect("short");
        let mut m = vec![0u8; 32];
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn the_xdp_attribute_is_read() {
        let ifname = attr(3, b"eth0\0");
        let xdp = attr(43, &[attr(2, &[1]), attr(4, &42u32.to_ne_bytes())].concat());
        assert_eq!(parse_xdp(&newlink(&[ifname.clone(), xdp])), Some((42, "native")));
        let skb = attr(43, &[attr(2, &[2]), attr(4, &7u32.to_ne_bytes())].concat());
        assert_eq!(parse_xdp(&newlink(&[skb])), Some((7, "skb")));
        let none = attr(43, &attr(2, &[0]));
        assert_eq!(parse_xdp(&newlink(&[ifname.clone(), none])), None);
        assert_eq!(parse_xdp(&newlink(&[ifname])), None, "no IFLA_XDP at all");
        // A truncated message or an error reply is no program, not a panic.
        let whole = newlink(&[attr(43, &[attr(2, &[1]), attr(4, &9u32.to_ne_bytes())].concat())]);
        for cut in 0..whole.len() {
            let _ = parse_xdp(&whole[..cut]);
        }
        let mut error = whole.clone();
        error[4..6].copy_from_slice(&2u16.to_ne_bytes());
        assert_eq!(parse_xdp(&error), None);
    }

    #[test]
    fn an_attached_program_is_named() {
        let named = AttachedXdp { id: 42, mode: "native", name: Some("xdp_fw".into()) };
        assert_eq!(named.to_string(), "program 42 'xdp_fw' (native mode)");
        let anon = AttachedXdp { id: 7, mode: "skb", name: None };
        assert!(anon.to_string().contains("bpftool prog show id 7"));
    }
}
