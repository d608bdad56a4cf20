//! `limiter doctor`: whether this host can run the limiter and whether what
//! runs is healthy. Each check gives one finding, `ok`, `warn` or `FAIL`, and
//! for the last two what the admin should do. Exit code 1 when any check
//! failed, 0 otherwise (warnings allowed), 2 for bad input.

pub mod args;
pub mod daemon;
pub mod host;
pub mod kernel;
pub mod report;
pub mod xdp;

use std::path::{Path, PathBuf};

use self::{
    args::DEFAULT_PIN_DIR,
    daemon::{Daemon, pins_check},
    host::{bpffs_check, cgroup_check, config_check, parse_cap_eff, privileges_check},
    kernel::{btf_check, features_check, kernel_check, kernel_release, programs_check},
    report::{format_check, report, summary},
    xdp::xdp_check,
};
pub use self::{
    args::DoctorArgs,
    report::{Check, Report, Status},
};
use crate::{cli::failure::Failure, protocol};

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
