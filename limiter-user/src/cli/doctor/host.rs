//! What the host gives the limiter: this process's privileges, bpffs and
//! cgroup2 mounts, and the config file `run` would read.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use super::report::Check;
use crate::{
    kernel::host,
    policy::{build, file, model::Overrides},
};

/// Capability numbers (linux/capability.h).
pub mod cap {
    pub const NET_ADMIN: u32 = 12;
    pub const SYS_ADMIN: u32 = 21;
    pub const SYS_RESOURCE: u32 = 24;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;
}

/// The effective capability mask from `/proc/self/status` (`CapEff:` in hex).
#[must_use]
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

const fn has(mask: u64, cap: u32) -> bool {
    mask & (1 << cap) != 0
}

/// The capabilities `run` needs that `mask` lacks: `CAP_BPF` and
/// `CAP_PERFMON` (or `CAP_SYS_ADMIN`, which implies both), `CAP_NET_ADMIN`.
#[must_use]
pub fn missing_capabilities(mask: u64) -> Vec<&'static str> {
    let admin = has(mask, cap::SYS_ADMIN);
    [
        ("CAP_BPF", has(mask, cap::BPF) || admin),
        ("CAP_NET_ADMIN", has(mask, cap::NET_ADMIN)),
        ("CAP_PERFMON", has(mask, cap::PERFMON) || admin),
    ]
    .iter()
    .filter(|(_, held)| !held)
    .map(|(name, _)| *name)
    .collect()
}

/// This process's effective capabilities, if `/proc/self/status` says.
#[must_use]
pub fn own_cap_eff() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(parse_cap_eff)
}

/// What `run` needs: `CAP_BPF` and `CAP_PERFMON` to load the programs
/// (`CAP_SYS_ADMIN` implies both), `CAP_NET_ADMIN` to attach them.
/// `CAP_SYS_RESOURCE` only raises `RLIMIT_MEMLOCK`, which kernels since
/// 5.11 no longer charge BPF memory to: its absence is a warning.
#[must_use]
pub fn privileges_check(cap_eff: Option<u64>) -> Check {
    let Some(mask) = cap_eff else {
        return Check::warn(
            "privileges",
            "cannot read CapEff from /proc/self/status",
            "run as root, or with CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_RESOURCE",
        );
    };
    let missing = missing_capabilities(mask);
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let who = if uid == 0 { "root".to_owned() } else { format!("uid {uid}") };
    if !missing.is_empty() {
        return Check::fail(
            "privileges",
            format!("{who} lacks {} (CapEff {mask:016x})", missing.join(", ")),
            "run `limiter` as root, or give it CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_RESOURCE (systemd: \
             AmbientCapabilities= and CapabilityBoundingSet=)",
        );
    }
    if !has(mask, cap::SYS_RESOURCE) {
        return Check::warn(
            "privileges",
            format!("{who} has CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON but not CAP_SYS_RESOURCE"),
            "add CAP_SYS_RESOURCE if BPF maps fail to allocate (kernels before 5.11 charge them to RLIMIT_MEMLOCK)",
        );
    }
    Check::ok("privileges", format!("{who} with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_RESOURCE"))
}

// ---- file systems -------------------------------------------------------

fn statfs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        (libc::statfs(c.as_ptr(), &raw mut st) == 0).then_some(st.f_type)
    }
}

fn writable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

pub(super) fn bpffs_check(pin_dir: &Path, privileged: bool) -> Check {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let name = "bpffs";
    let mount_fix = "mount -t bpf bpf /sys/fs/bpf (and add `bpf /sys/fs/bpf bpf defaults 0 0` to /etc/fstab)";
    let root = statfs_magic(Path::new("/sys/fs/bpf")) == Some(BPF_FS_MAGIC);
    // The pin dir exists, or `run` creates it in its parent.
    let target = if pin_dir.exists() { pin_dir } else { pin_dir.parent().unwrap_or(pin_dir) };
    let shown = pin_dir.display();
    if statfs_magic(target) != Some(BPF_FS_MAGIC) {
        if !root {
            return Check::fail(name, "no bpffs mounted at /sys/fs/bpf: nothing can be pinned", mount_fix);
        }
        return Check::fail(
            name,
            format!("pin dir {shown} is not on bpffs"),
            "give --pin-dir a directory under /sys/fs/bpf (the default is /sys/fs/bpf/limiter)",
        );
    }
    if !writable(target) {
        let finding = format!("bpffs mounted, but {} is not writable by this user", target.display());
        return if privileged {
            Check::fail(name, finding, format!("remount bpffs read-write, or check the mode of {}", target.display()))
        } else {
            Check::warn(name, finding, "run `limiter` as root")
        };
    }
    let at = if root { "/sys/fs/bpf".to_owned() } else { target.display().to_string() };
    Check::ok(name, format!("mounted at {at}; pin dir {shown} can be created or written"))
}

pub(super) fn cgroup_check(given: Option<&Path>) -> Check {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let name = "cgroup2";
    if let Some(dir) = given {
        return if statfs_magic(dir) == Some(CGROUP2_SUPER_MAGIC) {
            Check::ok(name, format!("{} is a cgroup v2 directory (sock_ops attaches there)", dir.display()))
        } else {
            Check::fail(
                name,
                format!("--cgroup {} is not a cgroup v2 directory", dir.display()),
                "give a directory of the cgroup2 mount (see /proc/mounts), or leave --cgroup out",
            )
        };
    }
    match host::cgroup2_mount() {
        Ok(dir) => Check::ok(name, format!("mounted at {} (sock_ops attaches there)", dir.display())),
        Err(_) => Check::fail(
            name,
            "no cgroup2 mount in /proc/mounts: connections cannot be counted",
            "mount -t cgroup2 none /sys/fs/cgroup (hybrid hosts: /sys/fs/cgroup/unified)",
        ),
    }
}

/// The config check and the interfaces the config names. `Err` when an
/// explicitly given config cannot be read.
pub(super) fn config_check(given: Option<&Path>, ifaces: &[String]) -> Result<(Check, Vec<String>), String> {
    let name = "config";
    let path = match given {
        Some(p) => p.to_path_buf(),
        None if Path::new(file::DEFAULT_CONFIG).exists() => PathBuf::from(file::DEFAULT_CONFIG),
        None => {
            return Ok((
                Check::ok(
                    name,
                    format!(
                        "no config file ({} absent): `limiter run` takes its flags and the built-in policy",
                        file::DEFAULT_CONFIG
                    ),
                ),
                Vec::new(),
            ));
        }
    };
    let shown = path.display().to_string();
    let text = match file::read_text(&path) {
        Ok(t) => t,
        Err(file::ConfigError::Read { source, .. }) if given.is_none() => {
            return Ok((
                Check::warn(name, format!("cannot read {shown}: {source}"), "run `limiter doctor` as root"),
                Vec::new(),
            ));
        }
        // Unreadable when named, or above the size cap.
        Err(e) => return Err(e.to_string()),
    };
    // As `run --config FILE [--iface IF]...` would read it.
    let o = Overrides { interfaces: ifaces.to_vec(), ..Overrides::default() };
    let file_ifaces = file::ConfigFile::parse(&text, &shown).map(|f| f.interfaces).unwrap_or_default();
    let check = match build::check(&text, &shown, &o, &|n| host::ifindex(n).is_ok()) {
        Ok(c) if c.warnings.is_empty() => Check::ok(name, format!("{shown}: valid ({})", c.policy.summary())),
        Ok(c) => Check::warn(
            name,
            c.warnings.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            format!("check the file (`limiter check-config {shown}`)"),
        ),
        Err(problems) => Check::fail(
            name,
            format!(
                "{} problem{}: {}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            ),
            format!(
                "fix them (`limiter check-config {shown}` lists each with its line), then `limiter reload`; until then \
                 a start or reload refuses the file"
            ),
        ),
    };
    Ok((check, file_ifaces))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::doctor::report::Status;

    #[test]
    fn capability_masks() {
        let status =
            "Name:\tlimiter\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x0000_01ff_ffff_ffff));
        assert_eq!(parse_cap_eff("CapEff:\t0000000000000000\n"), Some(0));
        assert_eq!(parse_cap_eff("CapPrm:\t1\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);

        let bit = |c: u32| 1u64 << c;
        assert_eq!(privileges_check(Some(0x01ff_ffff_ffff)).status, Status::Ok);
        let all = bit(cap::BPF) | bit(cap::PERFMON) | bit(cap::NET_ADMIN) | bit(cap::SYS_RESOURCE);
        assert_eq!(privileges_check(Some(all)).status, Status::Ok);
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON.
        let admin = bit(cap::SYS_ADMIN) | bit(cap::NET_ADMIN) | bit(cap::SYS_RESOURCE);
        assert_eq!(privileges_check(Some(admin)).status, Status::Ok);
        let no_resource = privileges_check(Some(all & !bit(cap::SYS_RESOURCE)));
        assert_eq!(no_resource.status, Status::Warn);
        let none = privileges_check(Some(0));
        assert_eq!(none.status, Status::Fail);
        assert!(none.finding.contains("lacks CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"), "{none:?}");
        assert!(none.fix.as_deref().is_some_and(|f| f.contains("root")), "{none:?}");
        let no_net = privileges_check(Some(all & !bit(cap::NET_ADMIN)));
        assert_eq!(no_net.status, Status::Fail);
        assert!(no_net.finding.contains("lacks CAP_NET_ADMIN ("), "{no_net:?}");
        assert_eq!(privileges_check(None).status, Status::Warn);
    }
}
