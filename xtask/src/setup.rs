//! `cargo xtask setup`: installs, idempotently, everything the build and the
//! tests need on a fresh machine: the BPF toolchain (rust-src, bpf-linker built
//! against the toolchain's own libLLVM) and the Debian packages the tests use.

use std::{
    env, fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{output, run};

/// bpf-linker release we build; pinned so a new release cannot change the
/// kernel object under us.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages used by the build, the tests and the benchmarks.
pub(crate) const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "iptables",
    "bpftool",
    "tcpdump",
    // Real servers and clients for end-to-end tests; each test runs its own
    // private instance in a namespace (see SERVICES below).
    "postfix",
    "dovecot-imapd",
    "dovecot-pop3d",
    "vsftpd",
    "swaks",
    // smtplib/imaplib/poplib/ftplib clients, and test certificates.
    "python3",
    "openssl",
    "netsniff-ng",
    "util-linux",
    "procps",
    // fail2ban-regex checks the shipped filter against real daemon output;
    // python3-systemd is its `backend = systemd` (the shipped jail's), which
    // the guest's systemd test reads the journal with.
    "fail2ban",
    "python3-systemd",
    // promtool checks /metrics as Prometheus reads it.
    "prometheus",
    // The package's tests: lintian checks the .deb; systemd-analyze (in systemd)
    // scores the unit's hardening offline, with no systemd running; strace lists the
    // system calls the daemon makes, which the unit's filter must allow.
    "lintian",
    "systemd",
    "strace",
    // `systemd-analyze verify` of the unit (tests/tests/package.rs) runs
    // `man` for its Documentation= pages; a minimal system (the qemu guests
    // of `cargo xtask test --kernel`) has no man-db.
    "man-db",
];

/// The system-wide services of the packages above, by package. The tests
/// start private instances in their own namespaces and never need these; a
/// system instance would hold ports 21, 25, 110, 143, 993 and 995 of the
/// host for nothing. So they are never started on install (policy-rc.d) and
/// are disabled afterwards, but only for packages this run installed: an
/// admin's own Postfix or Dovecot stays as it was.
const SERVICES: &[(&str, &[&str])] = &[
    ("postfix", &["postfix.service"]),
    ("dovecot-imapd", &["dovecot.service", "dovecot.socket"]),
    ("dovecot-pop3d", &["dovecot.service", "dovecot.socket"]),
    ("vsftpd", &["vsftpd.service"]),
    ("prometheus", &["prometheus.service"]),
];

/// Debian's hook that `invoke-rc.d` asks before it starts a service
/// (exit 101: "not allowed").
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// The toolchain that builds the kernel crate, and how to invoke it.
#[derive(Debug, Clone)]
pub(crate) struct BpfToolchain {
    /// rustup toolchain name (`nightly`, or `stable` with `RUSTC_BOOTSTRAP=1`).
    pub(crate) name: String,
    /// Whether unstable flags must be unlocked with `RUSTC_BOOTSTRAP=1`.
    pub(crate) bootstrap: bool,
}

impl BpfToolchain {
    pub(crate) fn detect() -> Result<Self> {
        let list = output(Command::new("rustup").args(["toolchain", "list"]))?;
        if list.lines().any(|l| l.starts_with("nightly")) {
            Ok(Self { name: "nightly".into(), bootstrap: false })
        } else {
            eprintln!("xtask: no nightly toolchain; building the kernel crate with stable + RUSTC_BOOTSTRAP=1");
            Ok(Self { name: "stable".into(), bootstrap: true })
        }
    }

    fn sysroot(&self) -> Result<PathBuf> {
        let out = output(Command::new("rustc").arg(format!("+{}", self.name)).args(["--print", "sysroot"]))?;
        Ok(PathBuf::from(out.trim()))
    }
}

fn cache_dir() -> PathBuf {
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/limiter")
}

pub(crate) fn cargo_bin_dir() -> PathBuf {
    if let Some(dir) = env::var_os("CARGO_HOME") {
        return PathBuf::from(dir).join("bin");
    }
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cargo/bin")
}

pub(crate) fn setup(with_packages: bool) -> Result<BpfToolchain> {
    let tc = BpfToolchain::detect()?;
    ensure_rust_src(&tc)?;
    ensure_bpf_linker(&tc)?;
    if with_packages {
        ensure_debian_packages(DEBIAN_PACKAGES)?;
    }
    ensure_bpffs()?;
    Ok(tc)
}

fn ensure_rust_src(tc: &BpfToolchain) -> Result<()> {
    let core = tc.sysroot()?.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.exists() {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for {}", tc.name);
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &tc.name]))
}

/// Builds bpf-linker against the libLLVM that ships inside the rustup
/// toolchain (no downloadable LLVM here): a shim prefix whose `llvm-config`
/// only has to exist and whose `lib/` links to the toolchain's libLLVM.
fn ensure_bpf_linker(tc: &BpfToolchain) -> Result<()> {
    let sysroot = tc.sysroot()?;
    let lib_dir = sysroot.join("lib");
    let lib = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib_dir.display()))?;
    // libLLVM.so.22.1-rust-1.97.0-nightly -> 22
    let major = lib
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .context("cannot read the LLVM major version")?
        .to_owned();

    let stamp_value = format!("{BPF_LINKER_VERSION} {lib}");
    let shim = cache_dir().join("llvm-shim");
    let stamp = cache_dir().join("bpf-linker.stamp");
    let linker = cargo_bin_dir().join("bpf-linker");
    if linker.exists()
        && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == stamp_value)
        && Path::new(&shim.join("lib").join(&lib)).exists()
        && Command::new(&linker).arg("--version").output().is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }

    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {lib} (about a minute)");
    fs::create_dir_all(shim.join("bin"))?;
    fs::create_dir_all(shim.join("lib"))?;
    let llvm_config = shim.join("bin/llvm-config");
    fs::write(&llvm_config, "#!/bin/sh\nexit 1\n")?;
    fs::set_permissions(&llvm_config, fs::Permissions::from_mode(0o755))?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = shim.join("lib").join(name);
        let _ = fs::remove_file(&link);
        symlink(lib_dir.join(&lib), &link).with_context(|| format!("linking {}", link.display()))?;
    }
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--force", "--locked", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &shim)
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    fs::write(&stamp, stamp_value)?;
    Ok(())
}

fn missing_packages<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

/// Installs those of `packages` that are missing (as root, with apt-get).
pub(crate) fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    if !nix_is_root() {
        bail!("installing {} needs root", missing.join(" "));
    }
    run(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    {
        // Installing a daemon starts it; with this hook in place none starts,
        // so no port is taken even for a moment.
        let _no_starts = NoServiceStarts::install()?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let still = missing_packages(packages);
    if !still.is_empty() {
        bail!("apt-get did not install: {}", still.join(" "));
    }
    disable_services(&missing);
    Ok(())
}

/// A `policy-rc.d` that refuses every start, removed on drop; an existing
/// one (a container's, or an admin's) is left alone and nothing is removed.
struct NoServiceStarts {
    ours: bool,
}

impl NoServiceStarts {
    fn install() -> Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(Self { ours: false });
        }
        fs::write(POLICY_RC_D, "#!/bin/sh\n# Written by cargo xtask setup for one apt-get run.\nexit 101\n")
            .with_context(|| format!("writing {POLICY_RC_D}"))?;
        fs::set_permissions(POLICY_RC_D, fs::Permissions::from_mode(0o755))?;
        Ok(Self { ours: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.ours
            && let Err(e) = fs::remove_file(POLICY_RC_D)
        {
            eprintln!("xtask: could not remove {POLICY_RC_D}: {e}");
        }
    }
}

/// Stops and disables the system services of the `installed` packages (see
/// [`SERVICES`]), so that they neither run now (if a policy-rc.d of someone
/// else's let them start) nor start at the next boot. Best effort: a
/// service manager that is missing has nothing to start them either.
fn disable_services(installed: &[&str]) {
    let mut units: Vec<&str> =
        SERVICES.iter().filter(|(p, _)| installed.contains(p)).flat_map(|(_, u)| u.iter().copied()).collect();
    units.sort_unstable();
    units.dedup();
    if units.is_empty() {
        return;
    }
    eprintln!("xtask: disabling the system instances of {}: the tests run their own", units.join(" "));
    let systemd_running = Path::new("/run/systemd/system").exists();
    if Path::new("/bin/systemctl").exists() || Path::new("/usr/bin/systemctl").exists() {
        // `disable` works without a running systemd (it removes the links);
        // `--now` also stops a running unit.
        let now: &[&str] = if systemd_running { &["--now"] } else { &[] };
        if let Err(e) = run(Command::new("systemctl").arg("disable").args(now).args(&units)) {
            eprintln!("xtask: {e}");
        }
    }
    if !systemd_running {
        // sysvinit (or none): stop a running instance and drop its rc links.
        for unit in units.iter().filter_map(|u| u.strip_suffix(".service")) {
            if Path::new("/etc/init.d").join(unit).exists() {
                let _ = Command::new("/etc/init.d/".to_owned() + unit).arg("stop").output();
                let _ = Command::new("update-rc.d").args([unit, "disable"]).output();
            }
        }
    }
}

fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf")) || !nix_is_root() {
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
