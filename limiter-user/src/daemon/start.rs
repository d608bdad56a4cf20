//! Start-up, in the order that keeps a crash or a failure safe: the state
//! dir and run-time lists, the control socket (removed by a guard on every
//! way out), the programs loaded and attached (a failed first start leaves
//! nothing behind), the event ring and the metrics port.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    rc::Rc,
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use log::{info, warn};
use tokio::{
    io::unix::AsyncFd,
    net::{TcpListener, UnixListener},
};

use crate::{
    daemon::{
        metrics, refusals,
        refusals::{AnswerCounts, Bursts, Recent},
        respond::{Answered, Answers},
        state::{Daemon, Paths, Source, copy_ids, log_policy},
        steered::Awaiting,
    },
    kernel::{
        error::LoadError,
        events::{self, Budget},
        loader::{self, Loaded},
        pins,
    },
    policy::{
        force::{Force, layered},
        model::Policy,
        state::RuntimeLists,
    },
};

/// What start-up hands the main loop.
pub struct Started {
    pub daemon: Daemon,
    pub listener: UnixListener,
    pub ring: AsyncFd<RingBuf<MapData>>,
    pub metrics: Option<TcpListener>,
    /// Removes the control socket's file when dropped.
    pub socket_file: SocketFile,
    /// The responder's listening sockets, in `RESPONDER` already.
    pub responder: Vec<tokio::net::TcpListener>,
}

/// The control socket's file: removed when dropped, so a failed start-up
/// and a stop leave no stale socket behind, whichever way they return.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Starts everything but the main loop.
pub async fn start(policy: Policy, source: Source, paths: &Paths) -> anyhow::Result<Started> {
    fs::create_dir_all(&paths.state_dir)
        .with_context(|| format!("cannot create state dir {}", paths.state_dir.display()))?;
    let runtime = RuntimeLists::load(&paths.state_dir)?;
    for r in &runtime.lists.reserve {
        if !policy.services.iter().any(|s| s.name == r.service) {
            warn!(
                "run-time reserve entry {} names service '{}', which the config does not define: ignored",
                r.prefix, r.service
            );
        }
    }
    let listener = bind_socket(&paths.socket)?;
    // From here on every way out, a failed start included, removes the socket.
    let socket_file = SocketFile(paths.socket.clone());
    let mut effective = layered(&policy, &runtime.lists);
    let mut loaded = load(&mut effective, paths)?;
    // The ids the pinned table gave (stable by name), for the config layer too.
    let mut policy = policy;
    copy_ids(&mut policy, &effective);
    for a in &loaded.attachments {
        info!("attached to {} (ifindex {}) in {} mode", a.name, a.ifindex, a.xdp_mode);
    }
    let (ring, budget) = take_events(&loaded)?;
    let responder = responder_sockets(&mut loaded, &policy.responder)?;
    warn_if_responder_filtered(&effective);
    let metrics = match policy.metrics_listen {
        Some(addr) => match metrics::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => bail!("cannot serve metrics on {addr}: {e} (metrics_listen / --metrics-listen)"),
        },
        None => None,
    };
    log_policy(&effective);
    let force = Force::of(effective);
    for w in force.warnings() {
        warn!("{w}");
    }
    info!("control socket {}", paths.socket.display());
    let answers = Answers::new(&policy);
    let daemon = Daemon {
        loaded,
        policy,
        runtime,
        source,
        budget,
        bursts: Bursts::new(refusals::window()),
        pin_dir: paths.pin_dir.clone(),
        answers,
        responder: Rc::default(),
        answered: Answered::default(),
        awaiting: Awaiting::default(),
        answer_counts: AnswerCounts::default(),
        recent: Recent::default(),
        force,
    };
    Ok(Started { daemon, listener, ring, metrics, socket_file, responder })
}

/// A `respond` service's clients reach the responder's socket, which is the
/// daemon's own: a cgroup filter on the daemon's packets (an `IPAddressDeny=`
/// an admin added to the unit) drops them unless it lets remote addresses in, and they
/// time out as with `drop`. Said once at start, with what to do.
fn warn_if_responder_filtered(effective: &Policy) {
    let Some(service) = effective.services.iter().find(|s| s.action == crate::policy::service::Action::Respond) else {
        return;
    };
    match crate::kernel::host::own_packets_filtered() {
        Ok(false) => {}
        Ok(true) => warn!(
            "service {} answers with respond, and a cgroup filter (an IPAddressDeny= on the unit) sees this \
             daemon's packets: unless it lets remote addresses in, the responder's clients time out instead of \
             reading the line; remove it, or add IPAddressAllow=any",
            service.name
        ),
        Err(e) => log::debug!("cannot tell whether a cgroup filter sees the responder's clients: {e}"),
    }
}

/// Loads and attaches the programs with `effective` (the policy in force).
/// A failed first start leaves nothing behind; a failed restart leaves
/// the running enforcement of the previous start alone.
fn load(effective: &mut Policy, paths: &Paths) -> anyhow::Result<Loaded> {
    let fresh = fs::read_dir(&paths.pin_dir).map_or(true, |mut d| d.next().is_none());
    loader::load_and_attach(effective, &paths.cgroup, &paths.pin_dir, &paths.state_dir).map_err(|e| {
        if fresh && pins::on_bpffs(&paths.pin_dir) {
            let _ = pins::unload(&paths.pin_dir);
        }
        e.into()
    })
}

/// Takes the refusal ring buffer and the event budget out of the object
/// (the daemon reads them outside the shared state).
fn take_events(loaded: &Loaded) -> Result<(AsyncFd<RingBuf<MapData>>, Budget), LoadError> {
    let ring = events::ring(&loaded.ebpf)?;
    // SAFETY: the ring buffer owns its descriptor and keeps it open while the
    // `AsyncFd` holds it.
    let ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| LoadError::Seed { what: "watch the refusal ring buffer".into(), source: e.into() })?;
    let mut budget = Budget::new(&loaded.ebpf)?;
    budget.refill()?;
    Ok((ring, budget))
}

/// Binds the control socket (mode 0660), refusing to steal it from a live daemon.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create socket dir {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another limiter daemon is already listening on {}", path.display());
        }
        fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind control socket {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// The responder's listening sockets, one per family, on loopback so that
/// nothing reaches them but what the kernel steers (`sk_lookup` hands them
/// SYNs for any address and port): `127.0.0.1` and, where the host has
/// IPv6, `::1`. Marked and put in `RESPONDER`, each CPU given `tokens`.
fn responder_sockets(
    loaded: &mut Loaded,
    limits: &crate::policy::model::ResponderLimits,
) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    let v4 = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .context("cannot open the responder's socket on 127.0.0.1")?;
    let mut all = vec![v4];
    match std::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)) {
        Ok(v6) => all.push(v6),
        Err(e) => warn!("no IPv6 responder socket on ::1 ({e}): IPv6 over-limit clients are reset"),
    }
    let mut out = Vec::new();
    for listener in all {
        listener.set_nonblocking(true)?;
        loaded.responder.set_listener(&listener)?;
        info!("responder on {}", listener.local_addr()?);
        out.push(tokio::net::TcpListener::from_std(listener)?);
    }
    loaded.responder.refill(limits.steer_tokens())?;
    // Each source's share of the steering: what the responder would answer
    // it anyway (its per-source budget); the socket lookup resets the rest
    // without spending the tokens every source shares.
    loaded.responder.set_share(limits.per_source_rate, limits.per_source_burst)?;
    Ok(out)
}
