//! What the kernel offers: its version, BTF, the BPF features the programs
//! use, a test load of the embedded programs, and the native-XDP probe.

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, SkLookup, SockOps, Xdp},
};
use limiter_common::maps::names;

use super::report::Check;
pub use crate::kernel::features::MIN_KERNEL;
pub(super) use crate::kernel::features::kernel_release;
use crate::kernel::features::{FEATURES, OLDEST_TESTED, TESTED_KERNELS, UNPROBED};

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

/// The kernel check for a release string: below the minimum fails, between
/// the minimum and the oldest tested kernel warns (the features are there;
/// the test load below is the evidence), else ok. Each line names the
/// minimum, what sets it, and the tested kernels.
#[must_use]
pub fn kernel_check(release: &str) -> Check {
    let (min_major, min_minor) = MIN_KERNEL;
    let tested = TESTED_KERNELS.join(", ");
    match parse_kernel_release(release) {
        Some((major, minor, _)) if (major, minor) >= OLDEST_TESTED => Check::ok(
            "kernel",
            format!("{release} (the programs need {min_major}.{min_minor} or later; tested on {tested})"),
        ),
        Some((major, minor, _)) if (major, minor) >= MIN_KERNEL => Check::warn(
            "kernel",
            format!(
                "{release} has every feature the programs need ({min_major}.{min_minor} or later) but is older than \
                 any kernel they are tested on ({tested})"
            ),
            "the feature probes and the test load below are the evidence; a tested kernel is safer",
        ),
        Some((major, minor, _)) => {
            let lacks: Vec<String> = FEATURES
                .iter()
                .map(|f| (f.name, f.since))
                .chain(UNPROBED.iter().map(|u| (u.0, u.1)))
                .filter(|(_, since)| (major, minor) < *since)
                .map(|(name, (a, b))| format!("{name} ({a}.{b})"))
                .collect();
            Check::fail(
                "kernel",
                format!("{release} is older than {min_major}.{min_minor}: it lacks {}", lacks.join(", ")),
                format!("boot a kernel {min_major}.{min_minor} or later (Debian 12: the stock 6.1 kernel)"),
            )
        }
        None => Check::warn(
            "kernel",
            format!("cannot read the kernel version from '{release}'"),
            format!("see the feature probes below; the programs need {min_major}.{min_minor} or later"),
        ),
    }
}

pub(super) fn btf_check(present: bool) -> Check {
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

/// A probe's name, whether `run` needs it, and its outcome.
type Probe = (&'static str, bool, Result<bool, String>);

fn probes() -> Vec<Probe> {
    FEATURES.iter().map(|f| (f.name, true, f.probe())).collect()
}

/// A missing feature's name with the Linux version that added it.
fn with_since(name: &str) -> String {
    FEATURES.iter().find(|f| f.name == name).map_or_else(
        || name.to_owned(),
        |f| format!("{name} (Linux {}.{}, for {})", f.since.0, f.since.1, f.needed_for),
    )
}

/// The feature check from probe outcomes.
#[must_use]
pub fn features_from(probes: &[Probe]) -> Check {
    let name = "bpf features";
    let list = |f: &dyn Fn(&Probe) -> bool| probes.iter().filter(|p| f(p)).map(|p| p.0).collect::<Vec<_>>();
    let missing: Vec<String> = list(&|p| p.1 && p.2 == Ok(false)).into_iter().map(with_since).collect();
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

pub(super) fn features_check(privileged: bool) -> Check {
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
pub(super) fn programs_check(privileged: bool) -> (Check, Option<Ebpf>) {
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
        sock_ops.load().map_err(|e| (names::SOCK_OPS_PROGRAM, e))?;
        let p =
            ebpf.program_mut(names::SK_LOOKUP_PROGRAM).ok_or((names::SK_LOOKUP_PROGRAM, ProgramError::NotLoaded))?;
        let sk_lookup: &mut SkLookup = p.try_into().map_err(|e| (names::SK_LOOKUP_PROGRAM, e))?;
        sk_lookup.load().map_err(|e| (names::SK_LOOKUP_PROGRAM, e))
    })();
    match loaded {
        Ok(()) => (
            Check::ok(
                name,
                format!(
                    "{}, {} and {} pass the verifier (test load, not attached)",
                    names::XDP_PROGRAM,
                    names::SOCK_OPS_PROGRAM,
                    names::SK_LOOKUP_PROGRAM
                ),
            ),
            Some(ebpf),
        ),
        Err((prog, e)) => {
            (Check::fail(name, format!("the kernel refused {prog}: {}", short(&format!("{e:#}"))), fix), None)
        }
    }
}

/// Attaches the object's pass-all program to `ifindex` in driver mode and
/// detaches it: `Ok(true)` native works, `Ok(false)` the driver has none.
pub(super) fn probe_native(ebpf: &mut Ebpf, ifindex: u32) -> Result<bool, String> {
    let p = ebpf.program_mut(names::PROBE_PROGRAM).ok_or("the object has no pass-all program")?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::doctor::report::Status;

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
        assert_eq!(kernel_check("6.1.0-28-amd64").status, Status::Ok);
        assert!(kernel_check("6.1.0-28-amd64").finding.contains("tested on 6.1 (Debian 12)"));
        // Every feature, but no tested kernel that old.
        let untested = kernel_check("5.15.0-91-generic");
        assert_eq!(untested.status, Status::Warn);
        assert!(untested.finding.contains("older than any kernel they are tested on"), "{untested:?}");
        // Compared as numbers: 5.9 < 5.15 < 6.0.
        assert_eq!(kernel_check("5.9.0").status, Status::Fail);
        assert_eq!(kernel_check("5.14.21").status, Status::Fail);
        assert_eq!(kernel_check("6.0.0").status, Status::Warn);
        let old = kernel_check("4.19.0-26-amd64");
        assert!(old.finding.contains("older than 5.15") && old.fix.is_some(), "{old:?}");
        // It names what that kernel lacks, with the version that added each.
        assert!(old.finding.contains("ring buffer (5.8)") && old.finding.contains("SO_NETNS_COOKIE (5.14)"), "{old:?}");
        assert!(!old.finding.contains("LPM trie"), "4.19 has the LPM trie: {old:?}");
        let near = kernel_check("5.14.21");
        assert!(near.finding.contains("lacks bpf_get_netns_cookie in sock_ops (5.15)"), "{near:?}");
        assert_eq!(kernel_check("weird").status, Status::Warn);
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
        assert!(c.finding.contains("lacks LPM trie (Linux 4.11, for allow and deny lists)"), "{c:?}");
        let denied: Vec<Probe> = vec![("LPM trie", true, Err("Operation not permitted".into()))];
        assert_eq!(features_from(&denied).status, Status::Warn);
    }
    #[test]
    fn short_errors() {
        assert_eq!(short("one"), "one");
        assert_eq!(short("first\n\n  middle\nlast\n"), "first ... last");
    }
}
