//! `limiter doctor`: whether this host can run the limiter and whether what
//! runs is healthy. Each check gives one finding, `ok`, `warn` or `FAIL`, and
//! for the last two what the admin should do. Exit code 1 when any check
//! failed, 0 otherwise (warnings allowed), 2 for bad input.

use std::{
    ffi::CString,
    fmt::Write as _,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapType,
    programs::{ProgramError, ProgramType, SockOps, Xdp},
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};
use clap::Args;
use limiter_common::maps::names;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    cli::failure::Failure,
    kernel::{host, pins},
    policy::{build, file, model::Overrides},
    protocol::{self, Request, StatusReply},
};

/// The oldest kernel the programs and the daemon work on, 5.15, set by the
/// newest feature they use:
/// - 5.15: `bpf_get_netns_cookie` from `sock_ops` (only the daemon's network
///   namespace is counted);
/// - 5.14: `SO_NETNS_COOKIE`, the daemon's side of the same comparison;
/// - 5.12: atomic fetch-add and compare-and-exchange instructions (`-C
///   target-cpu=v3`), which make the counts exact under bursts;
/// - 5.11: `bpf_ktime_get_coarse_ns` (token buckets, handshake ages), and BPF
///   memory charged to the cgroup instead of `RLIMIT_MEMLOCK`;
/// - 5.9: XDP attached through a BPF link, which is what gets pinned so
///   enforcement outlives the daemon;
/// - below that: ring buffer (5.8), cgroup links and `BPF_LINK_UPDATE` (5.7),
///   bounded loops (5.3), LPM trie (4.11).
///
/// The feature probes and the test load of the real programs below decide;
/// the version only explains a failure in advance.
pub const MIN_KERNEL: (u32, u32) = (5, 15);

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    /// The word the text output starts the line with.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One check's finding, and for `warn`/`FAIL` what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend(
    "if" = { "properties": { "status": { "enum": ["warn", "fail"] } } },
    "then" = { "properties": { "fix": { "type": "string" } } }
))]
pub struct Check {
    /// kernel, btf, privileges, bpffs, cgroup2, bpf features, programs, config, daemon, pins, or xdp IF (one per interface).
    pub name: String,
    pub status: Status,
    pub finding: String,
    /// What to do; null when the status is ok.
    pub fix: Option<String>,
}

/// `limiter doctor --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "limiter doctor --json",
    description = "The checks of `limiter doctor`, in the order it ran them. healthy is false when any check \
                   failed (exit code 1). Fields are only ever added: every object allows properties not listed \
                   here."
)]
pub struct Report {
    #[schemars(length(min = 1))]
    pub checks: Vec<Check>,
    /// No check failed.
    pub healthy: bool,
}

impl Check {
    fn ok(name: impl Into<String>, finding: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Ok, finding: finding.into(), fix: None }
    }

    fn warn(name: impl Into<String>, finding: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Warn, finding: finding.into(), fix: Some(fix.into()) }
    }

    fn fail(name: impl Into<String>, finding: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Fail, finding: finding.into(), fix: Some(fix.into()) }
    }
}

/// `limiter doctor` flags.
#[derive(Args, Debug, Default)]
pub struct DoctorArgs {
    /// Config file whose interfaces are checked [default: /etc/limiter/limiter.toml if it exists].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also check this interface (repeatable).
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,
    /// Where `run` pins [default: the running daemon's, else /sys/fs/bpf/limiter].
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Control socket of the daemon.
    #[arg(long, env = "LIMITER_SOCKET", default_value = protocol::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// cgroup v2 directory `run --cgroup` is given [default: the cgroup2 mount].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Find out native XDP support by attaching a pass-all program to each
    /// interface that has no XDP program, and detaching it at once. Some NIC
    /// drivers reset the link for that: not done unless asked.
    #[arg(long)]
    pub probe_xdp: bool,
    /// Machine-readable output (schema in docs/schemas/doctor.schema.json).
    #[arg(long)]
    pub json: bool,
}

const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/limiter";

/// Runs `limiter doctor` and prints the report. `Err` with code 1 when a
/// check failed, code 2 for bad input (an unreadable `--config`).
pub fn main(a: &DoctorArgs) -> Result<(), Failure> {
    let checks = run(a).map_err(|message| Failure { message, code: 2 })?;
    if a.json {
        let text =
            protocol::json_text(&report(&checks), true).map_err(|e| Failure { message: e.to_string(), code: 1 })?;
        println!("{text}");
    } else {
        for c in &checks {
            print!("{}", format_check(c));
        }
        println!("{}", summary(&checks));
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        return Err(Failure {
            message: format!("{failed} check{} failed", if failed == 1 { "" } else { "s" }),
            code: 1,
        });
    }
    Ok(())
}

/// A check as text: `ok|warn|FAIL  name: finding`, and `fix: ...` indented
/// below it for a warning or a failure.
#[must_use]
pub fn format_check(c: &Check) -> String {
    let mut s = format!("{:<4}  {}: {}\n", c.status.label(), c.name, c.finding);
    if let Some(fix) = &c.fix {
        let _ = writeln!(s, "      fix: {fix}");
    }
    s
}

/// The closing line of the text report.
#[must_use]
pub fn summary(checks: &[Check]) -> String {
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    let (fails, warns) = (count(Status::Fail), count(Status::Warn));
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    if fails == 0 {
        format!("healthy: {}, {}", plural(checks.len(), "check"), plural(warns, "warning"))
    } else {
        format!("NOT healthy: {}, {}", plural(fails, "failure"), plural(warns, "warning"))
    }
}

/// The checks and whether the host is healthy.
#[must_use]
pub fn report(checks: &[Check]) -> Report {
    Report { checks: checks.to_vec(), healthy: healthy(checks) }
}

/// No check failed.
#[must_use]
pub fn healthy(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

/// Runs every check. `Err` only for bad input: a `--config` that cannot be read.
pub fn run(a: &DoctorArgs) -> Result<Vec<Check>, String> {
    let mut out = Vec::new();
    out.push(kernel_check(&kernel_release()));
    out.push(btf_check(Path::new("/sys/kernel/btf/vmlinux").exists()));
    let caps = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_cap_eff(&s));
    let caps_check = privileges_check(caps);
    let privileged = caps_check.status != Status::Fail;
    out.push(caps_check);

    let daemon = Daemon::query(&a.socket);
    let daemon_pins = daemon.status.as_ref().and_then(|s| s.pin_dir.clone());
    let pin_dir = a.pin_dir.clone().or_else(|| daemon_pins.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));

    out.push(bpffs_check(&pin_dir, privileged));
    out.push(cgroup_check(a.cgroup.as_deref()));
    out.push(features_check(privileged));
    let (programs, ebpf) = programs_check(privileged);
    out.push(programs);

    let (config, mut ifaces) = config_check(a.config.as_deref(), &a.ifaces)?;
    out.push(config);
    out.push(daemon.check(&a.socket, a.pin_dir.as_deref(), daemon_pins.as_deref()));
    out.push(pins_check(&pin_dir, daemon.status.is_some(), privileged));

    // The interfaces of the config, the flags and the daemon, in that order.
    for name in a.ifaces.iter().chain(daemon.interfaces().iter()) {
        if !ifaces.contains(name) {
            ifaces.push(name.clone());
        }
    }
    if ifaces.is_empty() {
        out.push(Check::warn(
            "xdp",
            "no interface to check: none in a config file, none given with --iface, no daemon running",
            "give the interfaces `limiter run` protects: `limiter doctor --iface IF`",
        ));
    }
    let mut ebpf = ebpf;
    for name in &ifaces {
        let probe = if a.probe_xdp { ebpf.as_mut() } else { None };
        out.push(xdp_check(name, daemon.status.as_ref(), &pin_dir, probe));
    }
    Ok(out)
}

// ---- kernel -------------------------------------------------------------

fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct we own.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&raw mut u) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr()).to_string_lossy().into_owned()
    }
}

/// `major.minor.patch` from a kernel release such as `6.18.0-1-amd64` or
/// `5.15`; a missing patch is 0.
#[must_use]
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// The kernel check for a release string.
#[must_use]
pub fn kernel_check(release: &str) -> Check {
    let (min_major, min_minor) = MIN_KERNEL;
    match parse_kernel_release(release) {
        Some((major, minor, _)) if (major, minor) >= MIN_KERNEL => {
            Check::ok("kernel", format!("{release} (the programs need {min_major}.{min_minor} or later)"))
        }
        Some(_) => Check::fail(
            "kernel",
            format!(
                "{release} is older than {min_major}.{min_minor}: the programs use BPF features it lacks \
                 (netns cookies in sock_ops, atomic fetch-add, BPF links for XDP)"
            ),
            format!("boot a kernel {min_major}.{min_minor} or later (Debian 12: the stock 6.1 kernel)"),
        ),
        None => Check::warn(
            "kernel",
            format!("cannot read the kernel version from '{release}'"),
            "see the feature probes below; the programs need {min_major}.{min_minor} or later",
        ),
    }
}

fn btf_check(present: bool) -> Check {
    if present {
        Check::ok("btf", "/sys/kernel/btf/vmlinux present")
    } else {
        // The programs carry their own BTF and need no CO-RE relocation
        // against the kernel's, so they load without it.
        Check::warn(
            "btf",
            "/sys/kernel/btf/vmlinux missing: the programs load without it, but `bpftool` cannot show map \
             contents by type",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (every Debian kernel since 11 is)",
        )
    }
}

// ---- privileges ---------------------------------------------------------

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
    let admin = has(mask, cap::SYS_ADMIN);
    let missing: Vec<&str> = [
        ("CAP_BPF", has(mask, cap::BPF) || admin),
        ("CAP_NET_ADMIN", has(mask, cap::NET_ADMIN)),
        ("CAP_PERFMON", has(mask, cap::PERFMON) || admin),
    ]
    .iter()
    .filter(|(_, held)| !held)
    .map(|(name, _)| *name)
    .collect();
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

fn bpffs_check(pin_dir: &Path, privileged: bool) -> Check {
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

fn cgroup_check(given: Option<&Path>) -> Check {
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

// ---- BPF features and the programs ----------------------------------------

/// A probe's name, whether `run` needs it, and its outcome.
type Probe = (&'static str, bool, Result<bool, String>);

fn probes() -> Vec<Probe> {
    let map = |t| is_map_supported(t).map_err(|e| e.to_string());
    let prog = |t| is_program_supported(t).map_err(|e| e.to_string());
    let helper = |t, h| is_helper_supported(t, h).map_err(|e| e.to_string());
    vec![
        ("XDP programs", true, prog(ProgramType::Xdp)),
        ("sock_ops programs", true, prog(ProgramType::SockOps)),
        ("hash map", true, map(MapType::Hash)),
        ("array map", true, map(MapType::Array)),
        ("per-CPU array", true, map(MapType::PerCpuArray)),
        ("LPM trie", true, map(MapType::LpmTrie)),
        // The refusal events (EVENTS).
        ("ring buffer", true, map(MapType::RingBuf)),
        ("bpf_ringbuf_output in XDP", true, helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_ringbuf_output)),
        ("bpf_get_netns_cookie in sock_ops", true, helper(ProgramType::SockOps, BpfHelper::BPF_FUNC_get_netns_cookie)),
        ("bpf_ktime_get_coarse_ns in XDP", true, helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_ktime_get_coarse_ns)),
        ("bpf_xdp_adjust_tail", true, helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_xdp_adjust_tail)),
    ]
}

/// The feature check from probe outcomes.
#[must_use]
pub fn features_from(probes: &[Probe]) -> Check {
    let name = "bpf features";
    let list = |f: &dyn Fn(&Probe) -> bool| probes.iter().filter(|p| f(p)).map(|p| p.0).collect::<Vec<_>>();
    let missing = list(&|p| p.1 && p.2 == Ok(false));
    let optional = list(&|p| !p.1 && p.2 == Ok(false));
    let errors: Vec<String> =
        probes.iter().filter_map(|p| p.2.as_ref().err().map(|e| format!("{}: {e}", p.0))).collect();
    if !missing.is_empty() {
        return Check::fail(
            name,
            format!("the kernel lacks {}", missing.join(", ")),
            format!(
                "boot a kernel {}.{} or later with CONFIG_BPF_SYSCALL, CONFIG_XDP_SOCKETS",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        );
    }
    if !errors.is_empty() {
        return Check::warn(
            name,
            format!("could not probe: {}", errors.join("; ")),
            "run `limiter doctor` as root to probe the kernel",
        );
    }
    let supported = list(&|p| p.2 == Ok(true));
    if !optional.is_empty() {
        return Check::warn(
            name,
            format!("{} supported; missing {} (not needed by this version)", supported.join(", "), optional.join(", ")),
            "nothing needed now; a newer kernel adds it",
        );
    }
    Check::ok(name, format!("probed: {}", supported.join(", ")))
}

fn features_check(privileged: bool) -> Check {
    if !privileged {
        return Check::warn(
            "bpf features",
            "not probed: creating BPF maps and programs needs the privileges above",
            "run `limiter doctor` as root",
        );
    }
    features_from(&probes())
}

/// Shortens a long error (a verifier log) to its first and last lines.
fn short(e: &str) -> String {
    let lines: Vec<&str> = e.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.as_slice() {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [first, .., last] => format!("{first} ... {last}"),
    }
}

/// Loads the embedded object's maps and its XDP and `sock_ops` programs
/// (the verifier runs; nothing is pinned or attached). Returns the loaded
/// object for the XDP probe.
fn programs_check(privileged: bool) -> (Check, Option<Ebpf>) {
    let name = "programs";
    if crate::EBPF_OBJECT.is_empty() {
        return (
            Check::warn(
                name,
                "this binary has no kernel object (built with AYA_BUILD_SKIP): cannot test-load the programs",
                "rebuild with `cargo xtask build`",
            ),
            None,
        );
    }
    if !privileged {
        return (
            Check::warn(
                name,
                "not loaded: loading programs needs the privileges above",
                "run `limiter doctor` as root",
            ),
            None,
        );
    }
    let fix = format!(
        "the kernel refused what `limiter run` would load: use a kernel {}.{} or later; the error names the part",
        MIN_KERNEL.0, MIN_KERNEL.1
    );
    let mut ebpf = match EbpfLoader::new().load(crate::EBPF_OBJECT) {
        Ok(e) => e,
        Err(e) => {
            return (Check::fail(name, format!("creating the maps failed: {}", short(&format!("{e:#}"))), fix), None);
        }
    };
    let loaded = (|| -> Result<(), (&'static str, ProgramError)> {
        let p = ebpf.program_mut(names::XDP_PROGRAM).ok_or((names::XDP_PROGRAM, ProgramError::NotLoaded))?;
        let xdp: &mut Xdp = p.try_into().map_err(|e| (names::XDP_PROGRAM, e))?;
        xdp.load().map_err(|e| (names::XDP_PROGRAM, e))?;
        let p = ebpf.program_mut(names::SOCK_OPS_PROGRAM).ok_or((names::SOCK_OPS_PROGRAM, ProgramError::NotLoaded))?;
        let sock_ops: &mut SockOps = p.try_into().map_err(|e| (names::SOCK_OPS_PROGRAM, e))?;
        sock_ops.load().map_err(|e| (names::SOCK_OPS_PROGRAM, e))
    })();
    match loaded {
        Ok(()) => (
            Check::ok(
                name,
                format!(
                    "{} and {} pass the verifier (test load, not attached)",
                    names::XDP_PROGRAM,
                    names::SOCK_OPS_PROGRAM
                ),
            ),
            Some(ebpf),
        ),
        Err((prog, e)) => {
            (Check::fail(name, format!("the kernel refused {prog}: {}", short(&format!("{e:#}"))), fix), None)
        }
    }
}

// ---- config ---------------------------------------------------------------

/// The config check and the interfaces the config names. `Err` when an
/// explicitly given config cannot be read.
fn config_check(given: Option<&Path>, ifaces: &[String]) -> Result<(Check, Vec<String>), String> {
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

// ---- the daemon and its pins ------------------------------------------------

/// What the control socket said.
struct Daemon {
    status: Option<StatusReply>,
    error: Option<protocol::ClientError>,
}

impl Daemon {
    fn query(socket: &Path) -> Self {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let error = protocol::ClientError::Io { path: socket.display().to_string(), source: e };
                return Self { status: None, error: Some(error) };
            }
        };
        match rt.block_on(protocol::request(socket, &Request::Status)) {
            Ok(v) => Self { status: Some(v), error: None },
            Err(e) => Self { status: None, error: Some(e) },
        }
    }

    fn interfaces(&self) -> Vec<String> {
        let Some(s) = &self.status else { return Vec::new() };
        s.interfaces.iter().map(|i| i.name.clone()).collect()
    }

    /// A stopped daemon is a warning, not a failure, also with pins present:
    /// the kernel goes on counting and enforcing without it (that is what
    /// the pins are for), so the host is protected; only reporting, list
    /// changes and reloads wait for it. Failures are kept for what stops
    /// the limiter from working on this host.
    fn check(&self, socket: &Path, pin_flag: Option<&Path>, daemon_pins: Option<&Path>) -> Check {
        let name = "daemon";
        let shown = socket.display();
        if let Some(s) = &self.status {
            let version = &s.version;
            let services = s.services.len();
            let plural = if services == 1 { "" } else { "s" };
            let finding = format!("limiter {version} answers on {shown} ({services} service{plural})");
            if version != env!("CARGO_PKG_VERSION") {
                return Check::warn(
                    name,
                    format!("{finding}; this binary is {}", env!("CARGO_PKG_VERSION")),
                    "restart the daemon after an upgrade (`systemctl restart limiter`): the new programs replace the \
                     old ones without a gap",
                );
            }
            if let (Some(flag), Some(theirs)) = (pin_flag, daemon_pins)
                && flag != theirs
            {
                return Check::warn(
                    name,
                    format!("{finding}, pinned under {}, not --pin-dir {}", theirs.display(), flag.display()),
                    format!("check --pin-dir {}", theirs.display()),
                );
            }
            return Check::ok(name, finding);
        }
        let start = "start it (`systemctl start limiter`, or `limiter run ...`)";
        let io_kind = match &self.error {
            Some(protocol::ClientError::Connect { source, .. }) => Some(source.kind()),
            _ => None,
        };
        match io_kind {
            Some(std::io::ErrorKind::NotFound) => {
                Check::warn(name, format!("not running (no control socket {shown})"), start)
            }
            Some(std::io::ErrorKind::ConnectionRefused) => {
                Check::warn(name, format!("not running: {shown} is left from a daemon that is gone"), start)
            }
            Some(std::io::ErrorKind::PermissionDenied) => Check::warn(
                name,
                format!("cannot connect to {shown}: permission denied"),
                "run as root or as a member of the socket's group",
            ),
            _ => Check::warn(
                name,
                self.error.as_ref().map_or_else(|| "no answer".to_owned(), ToString::to_string),
                format!("check the daemon's log; {start}"),
            ),
        }
    }
}

/// What a pin dir holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PinsFound {
    pub maps: Vec<String>,
    pub sock_ops_link: bool,
    pub xdp_links: Vec<String>,
}

/// Reads the names under `dir` (`None` when it does not exist).
fn pins_found(dir: &Path) -> std::io::Result<Option<PinsFound>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut found = PinsFound::default();
    for e in entries.filter_map(Result::ok) {
        let n = e.file_name().to_string_lossy().into_owned();
        if pins::MAPS.contains(&n.as_str()) {
            found.maps.push(n);
        }
    }
    found.maps.sort();
    found.sock_ops_link = pins::sock_ops_link(dir).exists();
    found.xdp_links = pins::xdp_link_ifaces(dir);
    found.xdp_links.sort();
    Ok(Some(found))
}

/// The pins check from what the dir holds, whether its maps have this
/// version's layout, and whether a daemon answers.
/// `layouts` is `None` when they could not be checked (no privileges).
#[must_use]
pub fn pins_from(dir: &Path, found: Option<&PinsFound>, layouts: Option<Result<(), String>>, daemon: bool) -> Check {
    let name = "pins";
    let shown = dir.display();
    let unload = format!(
        "stop the daemon, `limiter unload --pin-dir {shown}` (counts start over from the open sockets), start it again"
    );
    let Some(found) = found.filter(|f| !f.maps.is_empty() || f.sock_ops_link || !f.xdp_links.is_empty()) else {
        return Check::ok(name, format!("not loaded (nothing pinned under {shown})"));
    };
    let mut what = format!("{} of {} maps", found.maps.len(), pins::MAPS.len());
    if found.sock_ops_link {
        what.push_str(", sock_ops link");
    }
    if !found.xdp_links.is_empty() {
        let _ = write!(what, ", XDP links: {}", found.xdp_links.join(" "));
    }
    if layouts.is_none() {
        what.push_str(" (map layouts not checked: needs privileges)");
    }
    if let Some(Err(e)) = layouts {
        return Check::warn(name, format!("{what} under {shown} from an incompatible version: {e}"), unload);
    }
    let missing: Vec<&str> = pins::MAPS.iter().copied().filter(|m| !found.maps.iter().any(|f| f == m)).collect();
    if !missing.is_empty() {
        return Check::warn(
            name,
            format!(
                "{what} under {shown}; missing {} (an older layout, or a start that failed half-way)",
                missing.join(", ")
            ),
            unload,
        );
    }
    if !daemon {
        return Check::warn(
            name,
            format!(
                "{what} under {shown}, and no daemon answers: enforcement continues without a daemon (stopped unit?)"
            ),
            format!(
                "`systemctl start limiter` to manage it again, or `limiter unload --pin-dir {shown}` to stop enforcing"
            ),
        );
    }
    Check::ok(name, format!("present: {what} under {shown}, in use by the daemon"))
}

fn pins_check(dir: &Path, daemon: bool, privileged: bool) -> Check {
    match pins_found(dir) {
        Ok(found) => {
            // Opening a pinned map needs the privileges to use it.
            let layouts = if !privileged {
                None
            } else if found.as_ref().is_some_and(|f| !f.maps.is_empty()) {
                Some(pins::check_layouts(dir))
            } else {
                Some(Ok(()))
            };
            pins_from(dir, found.as_ref(), layouts, daemon)
        }
        Err(e) => Check::warn("pins", format!("cannot read {}: {e}", dir.display()), "run `limiter doctor` as root"),
    }
}

// ---- XDP per interface ------------------------------------------------------

/// A link as `ip -j link show` reports it: only what the XDP check reads.
#[derive(Debug, Default, Deserialize)]
pub struct IpLink {
    #[serde(default)]
    xdp: IpXdp,
}

/// `xdp` of a link: one program (`mode`, `prog`), or several (`attached`).
#[derive(Debug, Default, Deserialize)]
struct IpXdp {
    mode: Option<u64>,
    #[serde(default)]
    prog: IpProg,
    attached: Option<Vec<IpXdp>>,
}

#[derive(Debug, Default, Deserialize)]
struct IpProg {
    id: Option<u64>,
    /// Without privileges `ip` shows the id only.
    name: Option<String>,
}

/// XDP programs attached to an interface, as `ip -j link show` reports them:
/// `(mode, program name, program id)`; mode is `native`, `skb` or `hw`.
#[must_use]
pub fn xdp_attached(links: &[IpLink]) -> Vec<(&'static str, String, u64)> {
    fn mode(n: u64) -> &'static str {
        match n {
            1 => "native",
            2 => "skb",
            3 => "hw",
            _ => "unknown",
        }
    }
    fn prog(x: &IpXdp) -> Option<(&'static str, String, u64)> {
        let name = x.prog.name.clone().unwrap_or_default();
        Some((mode(x.mode?), name, x.prog.id.unwrap_or(0)))
    }
    let Some(link) = links.first() else { return Vec::new() };
    match &link.xdp.attached {
        Some(all) => all.iter().filter_map(prog).collect(),
        None => prog(&link.xdp).into_iter().collect(),
    }
}

/// `ip -j link show dev IF`, parsed; `None` if `ip` cannot tell.
fn ip_link(iface: &str) -> Option<Vec<IpLink>> {
    let out = Command::new("ip").args(["-j", "link", "show", "dev", iface]).output().ok()?;
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// The interface's driver (`ETHTOOL_GDRVINFO`, in this network namespace:
/// sysfs would show the host's devices under `nsenter --net`).
fn driver(iface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 160] };
    // SAFETY: a socket we own and close; ifreq points at info, which
    // outlives the ioctl and is large enough for struct ethtool_drvinfo.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
            *d = libc::c_char::from_ne_bytes([*s]);
        }
        ifr.ifr_ifru.ifru_data = (&raw mut info).cast();
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &raw mut ifr);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned()).filter(|d| !d.is_empty())
}

/// Drivers with native XDP in mainline kernels since 5.15 (as ethtool names
/// them). A guess from the name; `--probe-xdp` finds out.
const NATIVE_XDP_DRIVERS: &[&str] = &[
    "veth",
    "virtio_net",
    "tun",
    "mlx4_en",
    "mlx5_core",
    "i40e",
    "ice",
    "ixgbe",
    "ixgbevf",
    "igb",
    "igc",
    "bnxt_en",
    "nfp",
    "qede",
    "ena",
    "hv_netvsc",
    "sfc",
    "atlantic",
    "gve",
    "bonding",
];

/// Attaches the object's pass-all program to `ifindex` in driver mode and
/// detaches it: `Ok(true)` native works, `Ok(false)` the driver has none.
fn probe_native(ebpf: &mut Ebpf, ifindex: u32) -> Result<bool, String> {
    let p = ebpf.program_mut(names::FLOOR_PASS).ok_or("the object has no pass-all program")?;
    let prog: &mut Xdp = p.try_into().map_err(|e: ProgramError| e.to_string())?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| e.to_string())?;
    }
    match prog.attach_to_if_index(ifindex, aya::programs::XdpMode::Driver) {
        Ok(id) => {
            prog.detach(id).map_err(|e| format!("detaching the probe: {e}"))?;
            Ok(true)
        }
        Err(e) => {
            let text = format!("{e:#}");
            let errno = match &e {
                ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
                _ => None,
            };
            let unsupported = errno == Some(libc::EOPNOTSUPP)
                || text.contains("not supported")
                || text.contains("Operation not supported");
            if unsupported { Ok(false) } else { Err(text) }
        }
    }
}

/// Native XDP on `iface`. With a daemon attached there, its mode; with an
/// XDP program attached already (the limiter's pinned link, or another
/// tool's), that program's mode, never touched; otherwise the driver, and
/// with `--probe-xdp` a real attach. The probe is opt-in because attaching
/// in native mode makes drivers such as mlx5, i40e, ixgbe and ice rebuild
/// their rings, which drops the link for a moment on a live mail host.
fn xdp_check(iface: &str, daemon: Option<&StatusReply>, pin_dir: &Path, probe: Option<&mut Ebpf>) -> Check {
    let name = format!("xdp {iface}");
    let skb_fix = "the driver has no native XDP: skb (generic) mode works but costs more per packet; use a NIC whose \
                   driver has native XDP for floods";
    if let Some(a) = daemon.and_then(|s| s.interfaces.iter().find(|i| i.name == iface)) {
        let mode = a.xdp_mode.as_str();
        return match mode {
            "native" => Check::ok(name, "native (driver) mode, attached by the running daemon"),
            _ => Check::warn(name, format!("{mode} mode, attached by the running daemon"), skb_fix),
        };
    }
    let Ok(ifindex) = host::ifindex(iface) else {
        return Check::fail(
            name,
            format!("no interface '{iface}' in this network namespace: `limiter run` would refuse it"),
            "check the name (`ip link`), or run `limiter doctor` in the daemon's network namespace",
        );
    };
    let drv = driver(iface);
    let drv_text = drv.as_deref().map_or_else(|| "driver unknown".to_owned(), |d| format!("driver {d}"));
    let ip = ip_link(iface);
    let attached = ip.as_deref().map(xdp_attached).unwrap_or_default();
    let ours = pins::xdp_link(pin_dir, iface).exists();
    if let Some((mode, prog, id)) = attached.first() {
        let prog = if prog.is_empty() { format!("prog id {id}") } else { format!("{prog}, prog id {id}") };
        let whose = if ours {
            format!("the limiter's pinned link ({prog}), no daemon managing it")
        } else {
            format!("another program ({prog})")
        };
        return match (*mode, ours) {
            ("native", true) => Check::ok(name, format!("native (driver) mode: {whose}")),
            (_, true) => Check::warn(name, format!("{mode} mode: {whose}"), skb_fix),
            (_, false) => Check::warn(
                name,
                format!("{mode} mode, {whose}; {drv_text}: `limiter run` cannot attach next to it"),
                format!("find its owner (`bpftool net show dev {iface}`) and detach it, or protect another interface"),
            ),
        };
    }
    if ip.is_none() {
        // Without `ip` we cannot tell whether a program is attached: do not probe.
        return Check::warn(
            name,
            format!("{drv_text}; cannot tell whether an XDP program is attached (`ip -j link` failed)"),
            "install iproute2 for this check",
        );
    }
    if let Some(ebpf) = probe {
        return match probe_native(ebpf, ifindex) {
            Ok(true) => Check::ok(
                name,
                format!("native XDP works ({drv_text}; probed: attached and detached a pass-all program)"),
            ),
            Ok(false) => Check::warn(
                name,
                format!("{drv_text} has no native XDP (probed): `--xdp-mode auto` falls back to skb (generic)"),
                skb_fix,
            ),
            Err(e) => Check::warn(
                name,
                format!("{drv_text}; the native XDP probe failed: {e}"),
                "see the error; `limiter run --xdp-mode auto` still falls back to skb",
            ),
        };
    }
    match drv.as_deref() {
        Some(d) if NATIVE_XDP_DRIVERS.contains(&d) => Check::ok(
            name,
            format!("{drv_text} has native XDP (known driver, not probed; --probe-xdp attaches a test program)"),
        ),
        _ => Check::warn(
            name,
            format!("{drv_text}: native XDP support unknown, probably skb (generic) mode"),
            format!(
                "`limiter doctor --probe-xdp --iface {iface}` finds out (it attaches a pass-all program for a moment; \
                 some drivers reset the link); `--xdp-mode auto` falls back to skb by itself"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_release("6.18.0-1-amd64"), Some((6, 18, 0)));
        assert_eq!(parse_kernel_release("5.15"), Some((5, 15, 0)));
        assert_eq!(parse_kernel_release("5.4.0-150-generic"), Some((5, 4, 0)));
        assert_eq!(parse_kernel_release("6.1.55+deb12"), Some((6, 1, 55)));
        assert_eq!(parse_kernel_release("4.19.0_rc1"), Some((4, 19, 0)));
        assert_eq!(parse_kernel_release("linux"), None);
        assert_eq!(parse_kernel_release("6"), None);
        assert_eq!(parse_kernel_release(""), None);
        assert_eq!(kernel_check("6.18.0").status, Status::Ok);
        assert_eq!(kernel_check("5.15.0-91-generic").status, Status::Ok);
        // Compared as numbers: 5.9 < 5.15 < 6.0.
        assert_eq!(kernel_check("5.9.0").status, Status::Fail);
        assert_eq!(kernel_check("5.14.21").status, Status::Fail);
        assert_eq!(kernel_check("6.0.0").status, Status::Ok);
        let old = kernel_check("4.19.0-26-amd64");
        assert!(old.finding.contains("older than 5.15") && old.fix.is_some(), "{old:?}");
        assert_eq!(kernel_check("weird").status, Status::Warn);
    }

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

    #[test]
    fn lines_and_json() {
        let ok = Check::ok("kernel", "6.18.0");
        let warn = Check::warn("daemon", "not running", "systemctl start limiter");
        let fail = Check::fail("privileges", "uid 65534 lacks CAP_BPF", "run as root");
        assert_eq!(format_check(&ok), "ok    kernel: 6.18.0\n");
        assert_eq!(format_check(&warn), "warn  daemon: not running\n      fix: systemctl start limiter\n");
        assert_eq!(format_check(&fail), "FAIL  privileges: uid 65534 lacks CAP_BPF\n      fix: run as root\n");
        assert_eq!(summary(&[ok.clone(), warn.clone()]), "healthy: 2 checks, 1 warning");
        assert_eq!(summary(std::slice::from_ref(&ok)), "healthy: 1 check, 0 warnings");
        assert_eq!(summary(&[ok.clone(), warn.clone(), fail.clone()]), "NOT healthy: 1 failure, 1 warning");
        let r = report(&[ok.clone(), fail.clone()]);
        assert_eq!(r, Report { checks: vec![ok.clone(), fail], healthy: false });
        assert!(report(&[ok, warn]).healthy);
    }

    #[test]
    fn feature_verdicts() {
        let all_ok: Vec<Probe> = vec![("XDP programs", true, Ok(true)), ("ring buffer", false, Ok(true))];
        assert_eq!(features_from(&all_ok).status, Status::Ok);
        let no_ring: Vec<Probe> = vec![("XDP programs", true, Ok(true)), ("ring buffer", false, Ok(false))];
        assert_eq!(features_from(&no_ring).status, Status::Warn);
        let no_trie: Vec<Probe> = vec![("LPM trie", true, Ok(false)), ("ring buffer", false, Err("EPERM".into()))];
        let c = features_from(&no_trie);
        assert_eq!(c.status, Status::Fail);
        assert!(c.finding.contains("lacks LPM trie"), "{c:?}");
        let denied: Vec<Probe> = vec![("LPM trie", true, Err("Operation not permitted".into()))];
        assert_eq!(features_from(&denied).status, Status::Warn);
    }

    #[test]
    fn pin_verdicts() {
        let dir = Path::new("/sys/fs/bpf/limiter");
        assert_eq!(pins_from(dir, None, Some(Ok(())), false).status, Status::Ok);
        assert!(pins_from(dir, None, Some(Ok(())), false).finding.starts_with("not loaded"));
        let all = PinsFound {
            maps: pins::MAPS.iter().map(|m| (*m).to_owned()).collect(),
            sock_ops_link: true,
            xdp_links: vec!["eth0".into()],
        };
        let running = pins_from(dir, Some(&all), Some(Ok(())), true);
        assert_eq!(running.status, Status::Ok, "{running:?}");
        assert!(running.finding.starts_with("present: 14 of 14 maps, sock_ops link, XDP links: eth0"), "{running:?}");
        let orphan = pins_from(dir, Some(&all), Some(Ok(())), false);
        assert_eq!(orphan.status, Status::Warn);
        assert!(orphan.finding.contains("enforcement continues without a daemon"), "{orphan:?}");
        assert!(
            orphan
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("systemctl start limiter") && f.contains("limiter unload"))
        );
        let stale = pins_from(dir, Some(&all), Some(Err("pinned map CONNS is Hash with 16-byte keys".into())), true);
        assert_eq!(stale.status, Status::Warn);
        assert!(stale.finding.contains("incompatible version"), "{stale:?}");
        let partial = PinsFound { maps: vec!["CONNS".into(), "COUNTERS".into()], ..PinsFound::default() };
        let old = pins_from(dir, Some(&partial), Some(Ok(())), true);
        assert_eq!(old.status, Status::Warn);
        assert!(old.finding.contains("missing") && old.finding.contains("LISTS"), "{old:?}");
    }

    #[test]
    fn json_text_as_before() {
        // `doctor --json` as `report_json` printed it with `json!` before
        // the report had a type: keys in alphabetical order.
        let before = r#"{
  "checks": [
    {
      "finding": "6.1.0 (ok)",
      "fix": null,
      "name": "kernel",
      "status": "ok"
    },
    {
      "finding": "not running",
      "fix": "start it",
      "name": "daemon",
      "status": "warn"
    },
    {
      "finding": "no \"iface\"",
      "fix": "check",
      "name": "xdp eth0",
      "status": "fail"
    }
  ],
  "healthy": false
}"#;
        let checks = [
            Check::ok("kernel", "6.1.0 (ok)"),
            Check::warn("daemon", "not running", "start it"),
            Check::fail("xdp eth0", "no \"iface\"", "check"),
        ];
        let r = report(&checks);
        assert_eq!(protocol::json_text(&r, true).expect("json"), before);
        assert_eq!(serde_json::from_str::<Report>(before).expect("parse"), r);
    }

    #[test]
    fn xdp_from_ip_json() {
        let links = |text: &str| serde_json::from_str::<Vec<IpLink>>(text).expect("ip -j link");
        let none = links(r#"[{ "ifname": "eth0", "flags": ["UP"] }]"#);
        assert!(xdp_attached(&none).is_empty());
        assert!(xdp_attached(&[]).is_empty());
        let drv = links(
            r#"[{ "ifname": "v", "xdp": { "mode": 1, "prog": { "id": 42, "name": "limiter_xdp", "tag": "x", "jited": 1 } } }]"#,
        );
        assert_eq!(xdp_attached(&drv), vec![("native", "limiter_xdp".to_owned(), 42)]);
        let multi = links(
            r#"[{ "xdp": { "mode": 4, "attached": [
            { "mode": 2, "prog": { "id": 7, "name": "a" } },
            { "mode": 1, "prog": { "id": 8, "name": "b" } } ] } }]"#,
        );
        assert_eq!(xdp_attached(&multi), vec![("skb", "a".to_owned(), 7), ("native", "b".to_owned(), 8)]);
        // Without privileges: the id only.
        let unprivileged = links(r#"[{ "xdp": { "mode": 2, "prog": { "id": 9 } } }]"#);
        assert_eq!(xdp_attached(&unprivileged), vec![("skb", String::new(), 9)]);
    }

    #[test]
    fn short_errors() {
        assert_eq!(short("one"), "one");
        assert_eq!(short("first\n\n  middle\nlast\n"), "first ... last");
    }
}
