//! `limiter run`: the flags and the config file made into a `Policy`,
//! checked against the host, then handed to the daemon.

use std::path::{Path, PathBuf};

use super::{args::RunArgs, failure::Failure};
use crate::{
    daemon::{self, Paths},
    kernel::error::LoadError,
    policy::{
        file::{self, ConfigError, ConfigFile},
        model::{Overrides, Policy},
        state::{RuntimeLists, StateError},
    },
};

/// The config file `run` reads (and `reload` re-reads): `--config`, or the
/// default one if present.
fn config_path(path: Option<&Path>) -> Option<PathBuf> {
    match path {
        Some(p) => Some(p.to_path_buf()),
        None if Path::new(file::DEFAULT_CONFIG).exists() => Some(PathBuf::from(file::DEFAULT_CONFIG)),
        None => None,
    }
}

/// Reads the config named by `--config`, or the default one if present.
fn read_config(path: Option<&Path>) -> Result<ConfigFile, ConfigError> {
    match path {
        Some(p) => ConfigFile::read(p),
        None if Path::new(file::DEFAULT_CONFIG).exists() => ConfigFile::read(Path::new(file::DEFAULT_CONFIG)),
        None => Ok(ConfigFile::default()),
    }
}

/// Builds the policy from `--config` and the flags, checks the interfaces
/// and the cgroup, and runs the daemon until it stops.
pub(super) fn run(a: RunArgs) -> Result<(), Failure> {
    let config_path = config_path(a.config.as_deref());
    let file = read_config(a.config.as_deref())?;
    let o = Overrides {
        interfaces: a.ifaces,
        ports: a.ports,
        rate: a.rate,
        burst: a.burst,
        action: a.action,
        protocol: a.protocol,
        max_conn_per_source: a.max_conn_per_source,
        ipv4_prefix: a.ipv4_prefix,
        ipv6_prefix: a.ipv6_prefix,
        xdp_mode: a.xdp_mode,
        metrics_listen: a.metrics_listen,
    };
    let policy = Policy::build(file, &o)?;
    // Unknown interfaces are bad input: check before touching the kernel.
    for i in &policy.interfaces {
        crate::kernel::host::ifindex(i).map_err(Failure::bad_input)?;
    }
    // Without the capabilities the kernel's refusal would name a map
    // ("failed to create map `SERVICES`: Operation not permitted").
    if let Some(mask) = super::doctor::host::own_cap_eff() {
        let missing = super::doctor::host::missing_capabilities(mask);
        if !missing.is_empty() {
            return Err(Failure::not_permitted(format!(
                "`limiter run` needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; this process lacks {} (run it as \
                 root or as the limiter unit does; `limiter doctor` checks the rest)",
                missing.join(", ")
            )));
        }
    }
    let cgroup = match a.cgroup {
        Some(c) => c,
        None => crate::kernel::host::cgroup2_mount().map_err(Failure::bad_input)?,
    };
    if a.discard_runtime_lists
        && let Some(backup) = RuntimeLists::discard_if_unusable(&a.state_dir).map_err(Failure::system)?
    {
        log::warn!(
            "moved the unusable {} aside to {}: starting without run-time entries",
            a.state_dir.join("lists.json").display(),
            backup.display()
        );
    }
    let paths = Paths { socket: a.socket, pin_dir: a.pin_dir, state_dir: a.state_dir, cgroup };
    daemon::run(policy, daemon::Source { config: config_path, overrides: o }, &paths).map_err(|e| {
        let bad = e.downcast_ref::<LoadError>().is_some_and(LoadError::is_bad_input)
            || matches!(e.downcast_ref::<StateError>(), Some(StateError::Corrupt { .. }));
        let msg = format!("{e:#}");
        if bad { Failure::bad_input(msg) } else { Failure::system(msg) }
    })
}
