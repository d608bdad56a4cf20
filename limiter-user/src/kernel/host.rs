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
