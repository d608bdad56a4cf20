//! Command line: clap definitions and dispatch. Errors from the admin's
//! input exit with code 2, failures of the system with code 1; both print
//! one line.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::{
    config::{self, Action, ConfigError, ConfigFile, Overrides, Policy, Rate, XdpMode},
    control::{self, Request},
    daemon::{self, Paths},
    loader::LoadError,
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
        #[arg(long, env = "LIMITER_SOCKET", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Remove the pinned programs and maps: stops enforcement and counting
    /// (counts start over from the kernel's sockets at the next `run`).
    Unload {
        /// Where `run` pinned them.
        #[arg(long, default_value = "/sys/fs/bpf/limiter")]
        pin_dir: PathBuf,
        /// Control socket of the daemon, which must not be running.
        #[arg(long, env = "LIMITER_SOCKET", default_value = control::DEFAULT_SOCKET)]
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
        /// Control socket of the daemon.
        #[arg(long, env = "LIMITER_SOCKET", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Check a config file without a daemon or the kernel: every problem,
    /// one line each with its line number; exit 2 if there is any.
    CheckConfig {
        /// The config file [default: /etc/limiter/limiter.toml].
        file: Option<PathBuf>,
    },
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
    #[arg(long = "port", value_name = "P", value_parser = config::parse_port)]
    pub ports: Vec<u16>,
    /// New connection attempts per source: N/s or N/m.
    #[arg(long, value_name = "N/s|N/m")]
    pub rate: Option<Rate>,
    /// Attempts a source may make at once before the rate applies.
    #[arg(long, value_parser = config::parse_burst)]
    pub burst: Option<u64>,
    /// Connections a source may hold at once (no limit when omitted).
    #[arg(long, value_name = "N", value_parser = config::parse_max_conn)]
    pub max_conn_per_source: Option<u32>,
    /// cgroup v2 directory whose sockets are counted (default: the cgroup2 mount).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// What happens to a refused attempt.
    #[arg(long, value_enum)]
    pub action: Option<Action>,
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
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Directory for persistent state.
    #[arg(long, default_value = "/var/lib/limiter")]
    pub state_dir: PathBuf,
}

/// A one-line error and the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    fn bad_input(e: impl std::fmt::Display) -> Self {
        Self { message: e.to_string(), code: 2 }
    }
    fn system(e: impl std::fmt::Display) -> Self {
        Self { message: e.to_string(), code: 1 }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::bad_input(e)
    }
}

/// Reads the config named by `--config`, or the default one if present.
fn read_config(path: Option<&Path>) -> Result<ConfigFile, ConfigError> {
    match path {
        Some(p) => ConfigFile::read(p),
        None if Path::new(config::DEFAULT_CONFIG).exists() => ConfigFile::read(Path::new(config::DEFAULT_CONFIG)),
        None => Ok(ConfigFile::default()),
    }
}

pub fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Status { json, socket } => {
            let v = client(&socket, &Request::Status)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).map_err(Failure::system)?);
            } else {
                print_status(&v);
            }
            Ok(())
        }
        Cmd::Unload { pin_dir, socket } => {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Err(Failure::bad_input(format!(
                    "a limiter daemon is running on {}: stop it first (systemctl stop limiter)",
                    socket.display()
                )));
            }
            let removed = crate::pins::unload(&pin_dir)
                .map_err(|e| Failure::system(format!("removing {}: {e}", pin_dir.display())))?;
            if removed.is_empty() {
                println!("nothing pinned under {}", pin_dir.display());
            } else {
                println!("removed {} pins under {}; enforcement stopped", removed.len(), pin_dir.display());
            }
            Ok(())
        }
        Cmd::CheckConfig { file } => check_config(file.as_deref().unwrap_or(Path::new(config::DEFAULT_CONFIG))),
        Cmd::Top { service, n, json, socket } => {
            let v = client(&socket, &Request::Top { service, limit: n })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).map_err(Failure::system)?);
            } else {
                print_top(&v);
            }
            Ok(())
        }
    }
}

/// `limiter check-config`: problems and warnings on stderr, one per line;
/// on success one line on stdout.
fn check_config(path: &Path) -> Result<(), Failure> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
    match config::check(&text, &shown, &Overrides::default()) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("{w}");
            }
            let (p, l) = (&c.policy, &c.policy.lists);
            println!(
                "{shown}: ok ({} services, {} allow, {} deny, {} reserve entries)",
                p.services.len(),
                l.allow.len(),
                l.deny.len(),
                l.reserve.len()
            );
            Ok(())
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            let n = problems.len();
            Err(Failure::bad_input(format!("{shown}: {n} problem{}", if n == 1 { "" } else { "s" })))
        }
    }
}

fn print_top(v: &Value) {
    println!("{:<42} {:<12} {:>11} {:>6}", "SOURCE", "SERVICE", "CONNECTIONS", "LIMIT");
    for s in v["sources"].as_array().into_iter().flatten() {
        let limit = s["limit"].as_u64().map_or_else(|| "-".to_owned(), |l| l.to_string());
        println!(
            "{:<42} {:<12} {:>11} {:>6}",
            s["source"].as_str().unwrap_or("?"),
            s["service"].as_str().unwrap_or("?"),
            s["connections"].to_string(),
            limit
        );
    }
}

fn run(a: RunArgs) -> Result<(), Failure> {
    let file = read_config(a.config.as_deref())?;
    let o = Overrides {
        interfaces: a.ifaces,
        ports: a.ports,
        rate: a.rate,
        burst: a.burst,
        action: a.action,
        max_conn_per_source: a.max_conn_per_source,
        ipv4_prefix: a.ipv4_prefix,
        ipv6_prefix: a.ipv6_prefix,
        xdp_mode: a.xdp_mode,
    };
    let policy = Policy::build(file, &o)?;
    // Unknown interfaces are bad input: check before touching the kernel.
    for i in &policy.interfaces {
        crate::loader::ifindex(i).map_err(Failure::bad_input)?;
    }
    let cgroup = match a.cgroup {
        Some(c) => c,
        None => crate::loader::cgroup2_mount().map_err(Failure::bad_input)?,
    };
    let paths = Paths { socket: a.socket, pin_dir: a.pin_dir, state_dir: a.state_dir, cgroup };
    daemon::run(policy, &paths).map_err(|e| {
        let bad = e.downcast_ref::<LoadError>().is_some_and(LoadError::is_bad_input);
        let msg = format!("{e:#}");
        if bad { Failure::bad_input(msg) } else { Failure::system(msg) }
    })
}

fn client(socket: &Path, req: &Request) -> Result<Value, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Failure::system)?;
    rt.block_on(control::request(socket, req)).map_err(|e| match e {
        control::ClientError::Connect { .. } | control::ClientError::Refused(_) => Failure::bad_input(e),
        _ => Failure::system(e),
    })
}

fn print_status(v: &Value) {
    println!("limiter {}", v["version"].as_str().unwrap_or("?"));
    println!("interfaces:");
    for i in v["interfaces"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} ifindex {:<4} xdp {}",
            i["name"].as_str().unwrap_or("?"),
            i["ifindex"].to_string(),
            i["xdp_mode"].as_str().unwrap_or("?")
        );
    }
    println!("sources: IPv4 /{}, IPv6 /{}", v["ipv4_prefix"], v["ipv6_prefix"]);
    println!(
        "{:<10} {:<16} {:>8} {:>6} {:>6} {:>10} {:>12} {:>10}",
        "SERVICE", "PORTS", "RATE", "BURST", "ACTION", "ACCEPTED", "REFUSED_RATE", "NON_SYN"
    );
    for s in v["services"].as_array().into_iter().flatten() {
        let ports: Vec<String> = s["ports"].as_array().into_iter().flatten().map(ToString::to_string).collect();
        let c = &s["counters"];
        println!(
            "{:<10} {:<16} {:>8} {:>6} {:>6} {:>10} {:>12} {:>10}",
            s["name"].as_str().unwrap_or("?"),
            ports.join(","),
            s["rate"].as_str().unwrap_or("none"),
            s["burst"].to_string(),
            s["action"].as_str().unwrap_or("?"),
            c["accepted"].to_string(),
            c["refused_rate"].to_string(),
            c["passed_non_syn"].to_string(),
        );
    }
    println!("other packets passed: {}", v["totals"]["passed_other"]);
}
