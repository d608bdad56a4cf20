//! `limiter doctor`'s flags.

use std::path::PathBuf;

use clap::Args;

use crate::protocol;

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

/// Where `run` pins when not told otherwise.
pub(super) const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/limiter";
