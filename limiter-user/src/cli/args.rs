//! The clap definitions of the command line: every subcommand's flags.
//! Nothing here runs a command; `dispatch` in `cli` hands each to its module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::doctor::DoctorArgs;
use crate::{
    policy::{
        lists::Cidr,
        model::XdpMode,
        parse::{parse_burst, parse_listen, parse_max_conn, parse_port},
        respond::Protocol,
        service::{Action, Rate},
    },
    protocol,
};

#[derive(Parser, Debug)]
#[command(name = "limiter", version, about = "Per-source connection limits for mail hosts, enforced in XDP")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Load the XDP program and enforce the policy until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Show interfaces, services and verdict counters of the running daemon.
    Status {
        /// Machine-readable output (schema in docs/status.md).
        #[arg(long)]
        json: bool,
        /// Control socket of the daemon.
        #[arg(long, env = "LIMITER_SOCKET", default_value = protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Remove the pinned programs and maps: stops enforcement and counting
    /// (counts start over from the kernel's sockets at the next `run`).
    Unload {
        /// Where `run` pinned them.
        #[arg(long, default_value = "/sys/fs/bpf/limiter")]
        pin_dir: PathBuf,
        /// Control socket of the daemon, which must not be running.
        #[arg(long, env = "LIMITER_SOCKET", default_value = protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Sources by current connections, with their limit.
    Top {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// How many sources to show.
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
        /// Machine-readable output (schema in docs/status.md).
        #[arg(long)]
        json: bool,
        /// Redraw every SECS seconds until interrupted.
        #[arg(long, value_name = "SECS", conflicts_with = "json")]
        #[arg(value_parser = clap::value_parser!(u64).range(1..=3600))]
        watch: Option<u64>,
        /// Control socket of the daemon.
        #[arg(long, env = "LIMITER_SOCKET", default_value = protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// How the running policy decides for one address now: the source it
    /// counts as, the list entries covering it, and per service the limits,
    /// what it holds, and what its next connection attempt would get.
    Explain {
        /// A client address (IPv4 or IPv6).
        #[arg(value_parser = parse_address)]
        address: std::net::IpAddr,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Machine-readable output (schema in docs/status.md).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The allow list: sources exempt from the limits, or with their own
    /// per-source limits.
    Allow {
        #[command(subcommand)]
        op: AllowOp,
    },
    /// The deny list: sources refused at once.
    Deny {
        #[command(subcommand)]
        op: DenyOp,
    },
    /// Reserve lists: sources that may use a service's reserved sessions.
    Reserve {
        #[command(subcommand)]
        op: ReserveOp,
    },
    /// Re-read the config file and apply it atomically (also SIGHUP); a
    /// broken config is refused and the running policy stays.
    Reload {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Check a config file without a daemon or the kernel: every problem,
    /// one line each with its line number; exit 2 if there is any.
    CheckConfig {
        /// The config file [default: /etc/limiter/limiter.toml].
        file: Option<PathBuf>,
    },
    /// Check that this host can run the limiter and that what runs is
    /// healthy: kernel, privileges, bpffs, cgroup2, BPF features, the
    /// programs, config, daemon, pins, XDP per interface. Exit 0: no
    /// failure (warnings allowed); 1: a check failed; 2: bad input.
    Doctor(DoctorArgs),
    /// Print shell completions on stdout (e.g. `limiter completions bash >
    /// /etc/bash_completion.d/limiter`); the Debian package installs them.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the man pages, limiter.1 and one per subcommand
    /// (limiter-run.1, ...), into DIR: how the package makes them.
    #[command(hide = true)]
    GenerateMan {
        /// Directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Check that the maps pinned under DIR fit a version's programs: this
    /// binary's, or those of the layout read from FILE (`-`: stdin), which
    /// the Debian package's preinst passes for the version it is about to
    /// unpack. Exit 0: they fit (or nothing is pinned); 1: they do not; 2:
    /// a malformed layout. `--print-layout` prints this binary's.
    #[command(hide = true)]
    CheckPins {
        /// Where `run` pinned them.
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/limiter")]
        pin_dir: PathBuf,
        /// The layout to check against, one map a line: NAME TYPE KEY VALUE ENTRIES.
        #[arg(long, value_name = "FILE", conflicts_with = "print_layout")]
        layout: Option<PathBuf>,
        /// Print this binary's layout and exit.
        #[arg(long)]
        print_layout: bool,
    },
    /// Write the JSON Schemas of the `--json` outputs into DIR
    /// (docs/schemas), generated from the types that print them.
    #[command(hide = true)]
    GenerateSchemas {
        /// Directory to write the schemas into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Write nothing; exit 1 if a schema in DIR differs from the types.
        #[arg(long)]
        check: bool,
    },
}

/// Shells `limiter completions` writes for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The daemon's control socket.
#[derive(Args, Debug)]
pub struct SocketArg {
    /// Control socket of the daemon.
    #[arg(long, env = "LIMITER_SOCKET", default_value = protocol::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum AllowOp {
    /// Add (or replace) an entry. With no limit the source is exempt: accepted
    /// and not counted against `max_sessions`. Limits given replace the
    /// service's per-source limits (a limit not given is no limit).
    Add {
        /// Address, CIDR or wildcard (192.168.1.*).
        #[arg(value_parser = parse_cidr)]
        prefix: Cidr,
        #[arg(long, value_name = "N", value_parser = parse_max_conn)]
        max_conn_per_source: Option<u32>,
        /// Connections over all services together (replaces the config's
        /// limit over all services for the entry's sources).
        #[arg(long, value_name = "N", value_parser = parse_max_conn)]
        max_conn_all_services: Option<u32>,
        /// New connection attempts: N/s or N/m.
        #[arg(long, value_name = "N/s|N/m")]
        rate: Option<Rate>,
        #[arg(long, value_parser = parse_burst)]
        burst: Option<u64>,
        /// One line of at most 200 bytes.
        #[arg(long)]
        comment: Option<String>,
        /// Apply even if the prefix is also on the deny list.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Remove a run-time entry.
    Del {
        #[arg(value_parser = parse_cidr)]
        prefix: Cidr,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Entries from the config and from run time.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum DenyOp {
    /// Add an entry (adding one that is there already changes nothing).
    Add {
        /// Address, CIDR or wildcard (203.0.113.*).
        #[arg(value_parser = parse_cidr)]
        prefix: Cidr,
        /// One line of at most 200 bytes.
        #[arg(long)]
        comment: Option<String>,
        /// Widen the prefix to the source the daemon counts (`ipv4_prefix`,
        /// `ipv6_prefix`: an IPv6 address becomes its /64), so a ban covers
        /// all of what the limiter treats as one client.
        #[arg(long)]
        source_prefix: bool,
        /// Apply even if the entry covers every address (`0.0.0.0/0`, `::/0`,
        /// `*`) or the prefix is also on the allow list.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Remove a run-time entry.
    Del {
        #[arg(value_parser = parse_cidr)]
        prefix: Cidr,
        /// Widen the prefix as `deny add --source-prefix` did.
        #[arg(long)]
        source_prefix: bool,
        /// Succeed when the entry is not there (for scripts such as fail2ban's unban).
        #[arg(long)]
        missing_ok: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Entries from the config and from run time.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReserveOp {
    /// Add an entry for a service.
    Add {
        /// Address, CIDR or wildcard (192.168.1.*).
        #[arg(value_parser = parse_cidr)]
        prefix: Cidr,
        #[arg(long)]
        service: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Remove a run-time entry.
    Del {
        #[arg(value_parser = parse_cidr)]
        prefix: Cidr,
        #[arg(long)]
        service: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Entries from the config and from run time.
    List {
        /// Only this service's entries.
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
}

fn parse_address(s: &str) -> Result<std::net::IpAddr, String> {
    s.parse().map_err(|_| "expected a client address, e.g. 198.51.100.7 or 2001:db8::7".to_owned())
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Config file; defaults to /etc/limiter/limiter.toml when that exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Interface to protect (repeatable).
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,
    /// Protected TCP port (repeatable); forms one service named `default`.
    #[arg(long = "port", value_name = "P", value_parser = parse_port)]
    pub ports: Vec<u16>,
    /// New connection attempts per source: N/s or N/m.
    #[arg(long, value_name = "N/s|N/m")]
    pub rate: Option<Rate>,
    /// Attempts a source may make at once before the rate applies.
    #[arg(long, value_parser = parse_burst)]
    pub burst: Option<u64>,
    /// Connections a source may hold at once (no limit when omitted).
    #[arg(long, value_name = "N", value_parser = parse_max_conn)]
    pub max_conn_per_source: Option<u32>,
    /// cgroup v2 directory whose sockets are counted (default: the cgroup2 mount).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// What happens to a refused attempt: drop, reset (a TCP reset), respond (the
    /// protocol's refusal line from the daemon's responder, else a reset) or log
    /// (observe mode: counted and logged as would-be, let through).
    #[arg(long, value_enum)]
    pub action: Option<Action>,
    /// The protocol of the services' refusal lines (default: from the name or ports).
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// IPv4 sources are aggregated to this prefix length (default 32).
    #[arg(long, value_name = "L", value_parser = clap::value_parser!(u8).range(1..=32))]
    pub ipv4_prefix: Option<u8>,
    /// IPv6 sources are aggregated to this prefix length (default 64).
    #[arg(long, value_name = "L", value_parser = clap::value_parser!(u8).range(1..=128))]
    pub ipv6_prefix: Option<u8>,
    /// XDP attach mode.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// Where the maps are pinned on bpffs while the daemon runs.
    #[arg(long, default_value = "/sys/fs/bpf/limiter")]
    pub pin_dir: PathBuf,
    /// Control socket path.
    #[arg(long, default_value = protocol::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Directory for persistent state.
    #[arg(long, default_value = "/var/lib/limiter")]
    pub state_dir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// If `STATE_DIR/lists.json` cannot be read, move it aside to
    /// `lists.json.bad-TIMESTAMP` (kept) and start without run-time entries.
    #[arg(long)]
    pub discard_runtime_lists: bool,
}
