//! Command line: clap definitions and dispatch. Errors from the admin's
//! input exit with code 2, failures of the system with code 1; both print
//! one line.

pub mod doctor;
pub mod schemas;
pub mod views;

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    daemon::{self, Paths},
    kernel::error::LoadError,
    policy::{
        build,
        file::{self, ConfigError, ConfigFile},
        lists::{Cidr, printable},
        model::{Overrides, Policy, XdpMode},
        parse::{parse_burst, parse_listen, parse_max_conn, parse_port},
        service::{Action, Rate},
        state::{RuntimeLists, StateError},
    },
    protocol::{
        self, AddedReply, Entry, ListName, ListReply, ReloadReply, RemovedReply, Request, StatusReply, TopReply,
    },
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
    Doctor(crate::cli::doctor::DoctorArgs),
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

pub fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Status { json, socket } => status(&socket, json),
        Cmd::Unload { pin_dir, socket } => {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Err(Failure::bad_input(format!(
                    "a limiter daemon is running on {}: stop it first (systemctl stop limiter)",
                    socket.display()
                )));
            }
            let removed = crate::kernel::pins::unload(&pin_dir)
                .map_err(|e| Failure::system(format!("removing {}: {e}", pin_dir.display())))?;
            if removed.is_empty() {
                println!("nothing pinned under {}", pin_dir.display());
            } else {
                println!("removed {} pins under {}; enforcement stopped", removed.len(), pin_dir.display());
            }
            Ok(())
        }
        Cmd::Allow { op } => match op {
            AllowOp::Add { prefix, max_conn_per_source, rate, burst, comment, force, socket } => change(
                &socket.socket,
                &Request::ListAdd {
                    list: ListName::Allow,
                    prefix: prefix.to_string(),
                    service: None,
                    max_conn_per_source,
                    rate,
                    burst,
                    comment,
                    source_prefix: false,
                    force,
                },
            ),
            AllowOp::Del { prefix, socket } => del(&socket.socket, ListName::Allow, prefix, None, Widen::default()),
            AllowOp::List { json, socket } => show(&socket.socket, ListName::Allow, None, json),
        },
        Cmd::Deny { op } => match op {
            DenyOp::Add { prefix, comment, source_prefix, force, socket } => change(
                &socket.socket,
                &Request::ListAdd {
                    list: ListName::Deny,
                    prefix: prefix.to_string(),
                    service: None,
                    max_conn_per_source: None,
                    rate: None,
                    burst: None,
                    comment,
                    source_prefix,
                    force,
                },
            ),
            DenyOp::Del { prefix, source_prefix, missing_ok, socket } => {
                del(&socket.socket, ListName::Deny, prefix, None, Widen { source_prefix, missing_ok })
            }
            DenyOp::List { json, socket } => show(&socket.socket, ListName::Deny, None, json),
        },
        Cmd::Reserve { op } => match op {
            ReserveOp::Add { prefix, service, comment, socket } => change(
                &socket.socket,
                &Request::ListAdd {
                    list: ListName::Reserve,
                    prefix: prefix.to_string(),
                    service: Some(service),
                    max_conn_per_source: None,
                    rate: None,
                    burst: None,
                    comment,
                    source_prefix: false,
                    force: false,
                },
            ),
            ReserveOp::Del { prefix, service, socket } => {
                del(&socket.socket, ListName::Reserve, prefix, Some(service), Widen::default())
            }
            ReserveOp::List { service, json, socket } => show(&socket.socket, ListName::Reserve, service, json),
        },
        Cmd::Reload { socket } => {
            let r: ReloadReply = client(&socket.socket, &Request::Reload)?;
            print_warnings(&r.warnings);
            println!("reloaded {} ({} services)", printable(&r.reloaded), r.services);
            Ok(())
        }
        Cmd::CheckConfig { file } => check_config(file.as_deref().unwrap_or(Path::new(file::DEFAULT_CONFIG))),
        Cmd::Completions { shell } => {
            print_completions(shell);
            Ok(())
        }
        Cmd::GenerateMan { out } => generate_man(&out),
        Cmd::GenerateSchemas { out, check } => crate::cli::schemas::main(&out, check),
        Cmd::Doctor(a) => crate::cli::doctor::main(&a),
        Cmd::Top { service, n, json, watch, socket } => top(&socket, &Request::Top { service, limit: n }, json, watch),
    }
}

/// `limiter status`: JSON or the table.
fn status(socket: &Path, json: bool) -> Result<(), Failure> {
    let status: StatusReply = client(socket, &Request::Status)?;
    if json {
        return print_json(&status);
    }
    print!("{}", crate::cli::views::status(&status));
    Ok(())
}

/// `limiter top`: JSON, one table, or a table redrawn every `watch` seconds.
fn top(socket: &Path, req: &Request, json: bool, watch: Option<u64>) -> Result<(), Failure> {
    if json {
        return print_json(&client::<TopReply>(socket, req)?);
    }
    let Some(secs) = watch else {
        print!("{}", crate::cli::views::top(&client(socket, req)?, &crate::cli::views::local_time()));
        return Ok(());
    };
    loop {
        let text = crate::cli::views::top(&client(socket, req)?, &crate::cli::views::local_time());
        // Home the cursor and clear the screen, then draw.
        print!("\x1b[H\x1b[2J{text}");
        std::io::Write::flush(&mut std::io::stdout()).map_err(Failure::system)?;
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}

/// `limiter completions SHELL`: the script for the clap definitions above,
/// without the hidden subcommands (`clap_complete` would offer them).
fn print_completions(shell: Shell) {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let full = Cli::command();
    // clap cannot remove a subcommand: rebuild the top level from the visible ones.
    let mut cmd = clap::Command::new("limiter")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    clap_complete::generate(shell, &mut cmd, "limiter", &mut std::io::stdout());
}

/// `limiter generate-man --out DIR`: a page per (visible) command, named
/// after its path: limiter.1, limiter-run.1, limiter-allow-add.1, ...
/// (`clap_mangen::generate_to`, with the version on every page, not only
/// on limiter.1).
fn generate_man(out: &Path) -> Result<(), Failure> {
    fn pages(cmd: &clap::Command, out: &Path) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub, out)?;
        }
        clap_mangen::Man::new(cmd.clone()).source(concat!("limiter ", env!("CARGO_PKG_VERSION"))).generate_to(out)?;
        Ok(())
    }
    let fail = |e: std::io::Error| Failure::system(format!("writing man pages to {}: {e}", out.display()));
    std::fs::create_dir_all(out).map_err(fail)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Names the subcommands' pages "limiter-run" and so on.
    cmd.build();
    pages(&cmd, out).map_err(fail)
}

/// Sends a list change and reports it in one line.
fn change(socket: &Path, req: &Request) -> Result<(), Failure> {
    let r: AddedReply = client(socket, req)?;
    let e = &r.added;
    let mut line = format!("{} {} added", r.list.as_str(), e.prefix);
    if let Some(s) = &e.service {
        line = format!("{line} for service {s}");
    }
    let limits = describe_limits(e);
    if !limits.is_empty() {
        line = format!("{line} ({limits})");
    }
    print_warnings(&r.warnings);
    println!("{line}");
    Ok(())
}

/// The `warnings` of a daemon response, one `limiter: warning: ` line each
/// on stderr.
fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("limiter: warning: {}", printable(w));
    }
}

fn describe_limits(e: &Entry) -> String {
    let mut parts = Vec::new();
    if let Some(n) = e.max_conn_per_source {
        parts.push(format!("max {n} connections per source"));
    }
    if let Some(r) = e.rate {
        parts.push(format!("rate {r}"));
    }
    if let Some(b) = e.burst {
        parts.push(format!("burst {b}"));
    }
    parts.join(", ")
}

/// How `del` finds its entry.
#[derive(Debug, Default, Clone, Copy)]
struct Widen {
    source_prefix: bool,
    missing_ok: bool,
}

fn del(socket: &Path, list: ListName, prefix: Cidr, service: Option<String>, w: Widen) -> Result<(), Failure> {
    let req = Request::ListDel {
        list,
        prefix: prefix.to_string(),
        service,
        source_prefix: w.source_prefix,
        missing_ok: w.missing_ok,
    };
    let r: RemovedReply = client(socket, &req)?;
    if let Some(p) = r.removed {
        println!("{} {p} removed", list.as_str());
    } else {
        let absent = r.absent.map_or_else(|| "?".to_owned(), |p| p.to_string());
        println!("{} {absent} was not in the list", list.as_str());
    }
    Ok(())
}

fn show(socket: &Path, list: ListName, service: Option<String>, json: bool) -> Result<(), Failure> {
    let r: ListReply = client(socket, &Request::ListShow { list, service })?;
    if json {
        return print_json(&r);
    }
    let entries = r.entries;
    if entries.is_empty() {
        println!("the {} list is empty", list.as_str());
        return Ok(());
    }
    println!("{:<44} {:<10} {:<8} {:<40} COMMENT", "PREFIX", "SERVICE", "ORIGIN", "LIMITS");
    for listed in entries {
        let e = &listed.entry;
        let limits = match (list, describe_limits(e)) {
            (ListName::Allow, l) if l.is_empty() => "exempt".to_owned(),
            (_, l) => l,
        };
        println!(
            "{:<44} {:<10} {:<8} {:<40} {}",
            printable(&e.prefix.to_string()),
            printable(e.service.as_deref().unwrap_or("-")),
            listed.origin.as_str(),
            if limits.is_empty() { "-" } else { &limits },
            printable(e.comment.as_deref().unwrap_or(""))
        );
    }
    Ok(())
}

/// `limiter check-config`: problems and warnings on stderr, one per line;
/// on success one line on stdout.
fn check_config(path: &Path) -> Result<(), Failure> {
    let shown = path.display().to_string();
    let text = file::read_text(path)?;
    match build::check(&text, &shown, &Overrides::default(), &|n| crate::kernel::host::ifindex(n).is_ok()) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("{w}");
            }
            println!("{shown}: ok ({})", c.policy.summary());
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

fn run(a: RunArgs) -> Result<(), Failure> {
    let config_path = config_path(a.config.as_deref());
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
        metrics_listen: a.metrics_listen,
    };
    let policy = Policy::build(file, &o)?;
    // Unknown interfaces are bad input: check before touching the kernel.
    for i in &policy.interfaces {
        crate::kernel::host::ifindex(i).map_err(Failure::bad_input)?;
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

/// `--json`: the reply as the daemon's JSON, pretty, keys in alphabetical order.
fn print_json<T: Serialize>(reply: &T) -> Result<(), Failure> {
    println!("{}", protocol::json_text(reply, true).map_err(Failure::system)?);
    Ok(())
}

/// Sends `req` and reads the daemon's reply as `R`, the type `req` is answered with.
fn client<R: DeserializeOwned>(socket: &Path, req: &Request) -> Result<R, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Failure::system)?;
    rt.block_on(protocol::request(socket, req)).map_err(|e| match e {
        protocol::ClientError::Connect { .. } | protocol::ClientError::Refused(_) => Failure::bad_input(e),
        _ => Failure::system(e),
    })
}
