//! `limiter run`: validate the policy, load and attach the XDP program,
//! serve the control socket, and detach cleanly on SIGINT/SIGTERM.

use std::{
    cell::RefCell,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    rc::Rc,
};

use anyhow::{Context as _, bail};
use limiter_common::Verdict;
use log::{debug, info, warn};
use serde_json::{Value, json};
use tokio::{net::UnixListener, signal::unix::SignalKind};

use crate::{
    config::Policy,
    control::{self, Request},
    loader::{self, Loaded},
    pins,
};

/// How often the seeded connections are looked up in the socket table
/// (a release is seen within this, well inside the one-second promise).
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// How often idle `CONNS` entries are looked for; an entry is deleted when
/// it was at zero in two passes in a row. `LIMITER_RECLAIM_MS` overrides it
/// (the tests use it).
fn reclaim_every() -> std::time::Duration {
    let ms = std::env::var("LIMITER_RECLAIM_MS").ok().and_then(|v| v.parse().ok()).filter(|&ms: &u64| ms >= 10);
    std::time::Duration::from_millis(ms.unwrap_or(30_000))
}

/// Paths the daemon owns.
#[derive(Debug, Clone)]
pub struct Paths {
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// cgroup v2 directory the `sock_ops` program is attached to.
    pub cgroup: PathBuf,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(policy: Policy, paths: &Paths) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_async(policy, paths))
}

async fn run_async(policy: Policy, paths: &Paths) -> anyhow::Result<()> {
    fs::create_dir_all(&paths.state_dir)
        .with_context(|| format!("cannot create state dir {}", paths.state_dir.display()))?;
    let listener = bind_socket(&paths.socket)?;
    // A failed first start leaves nothing behind; a failed restart leaves
    // the running enforcement of the previous start alone.
    let fresh = fs::read_dir(&paths.pin_dir).map_or(true, |mut d| d.next().is_none());
    let loaded = match loader::load_and_attach(&policy, &paths.cgroup, &paths.pin_dir, &paths.state_dir) {
        Ok(l) => l,
        Err(e) => {
            if fresh && pins::on_bpffs(&paths.pin_dir) {
                let _ = pins::unload(&paths.pin_dir);
            }
            let _ = fs::remove_file(&paths.socket);
            return Err(e.into());
        }
    };
    for a in &loaded.attachments {
        info!("attached to {} (ifindex {}) in {} mode", a.name, a.ifindex, a.xdp_mode);
    }
    for s in &policy.services {
        let rate = s.rate.map_or_else(|| "unlimited".to_owned(), |r| r.to_string());
        info!("service {} ports {:?}: rate {rate} burst {} action {}", s.name, s.ports, s.burst, s.action.as_str());
    }
    info!("control socket {}", paths.socket.display());

    let state = Rc::new(RefCell::new(loaded));
    let policy = Rc::new(policy);
    let handler = {
        let state = Rc::clone(&state);
        let policy = Rc::clone(&policy);
        move |req: Request| match req {
            Request::Status => status(&state.borrow(), &policy),
            Request::Top { service, limit } => top(&state.borrow(), &policy, service.as_deref(), limit),
        }
    };
    let server = tokio::task::spawn_local(control::serve(listener, handler));

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    // Connections that predate the programs have no close callback: look
    // for them in the socket table until they are all gone.
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Entries of sources that no longer hold connections are reclaimed.
    let mut reclaim = tokio::time::interval(reclaim_every());
    reclaim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reclaimer = loader::Reclaimer::default();
    loop {
        tokio::select! {
            _ = reclaim.tick() => {
                match reclaimer.pass(&mut state.borrow_mut().ebpf) {
                    Ok(p) => {
                        if p.deleted > 0 {
                            debug!("reclaimed {} idle source entries; {} in use of {}", p.deleted, p.entries, p.capacity);
                        }
                        if p.entries * 10 > p.capacity as usize * 9 {
                            warn!(
                                "the connection table holds {} sources of {}: when it is full, new sources go \
                                 uncounted; raise [maps] connections",
                                p.entries, p.capacity
                            );
                        }
                    }
                    Err(e) => warn!("{:#}", anyhow::Error::from(e)),
                }
            }
            _ = term.recv() => { info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { info!("SIGINT: shutting down"); break }
            _ = reconcile.tick(), if !state.borrow().seeded.is_empty() => {
                let loaded = &mut *state.borrow_mut();
                match loaded.seeded.reconcile(&mut loaded.ebpf) {
                    Ok(0) => {}
                    Ok(n) => info!("{n} connections open before start have closed; {} remain", loaded.seeded.len()),
                    Err(e) => warn!("{:#}", anyhow::Error::from(e)),
                }
            }
        }
    }
    server.abort();
    let _ = fs::remove_file(&paths.socket);
    info!(
        "daemon stopped; counting and enforcement continue from {} (`limiter unload` removes them)",
        paths.pin_dir.display()
    );
    Ok(())
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

fn counters_json(row: &[u64]) -> Value {
    let mut m = serde_json::Map::new();
    for v in Verdict::ALL {
        if v != Verdict::PassedOther {
            m.insert(v.name().to_owned(), json!(row[v as usize]));
        }
    }
    Value::Object(m)
}

/// The `top` response: sources with connections, most first (docs/status.md).
fn top(loaded: &Loaded, policy: &Policy, service: Option<&str>, limit: usize) -> Result<Value, String> {
    let wanted = match service {
        Some(name) => Some(
            policy
                .services
                .iter()
                .position(|s| s.name == name)
                .map(loader::service_id)
                .ok_or_else(|| format!("unknown service '{name}'"))?,
        ),
        None => None,
    };
    let mut rows = loader::sources(&loaded.ebpf).map_err(|e| e.to_string())?;
    rows.retain(|(key, count)| *count > 0 && wanted.is_none_or(|id| u32::from(key.service) == id));
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.addr.cmp(&b.0.addr)));
    let sources: Vec<Value> = rows
        .iter()
        .take(limit)
        .filter_map(|(key, count)| {
            let s = policy.services.get(usize::from(key.service).checked_sub(1)?)?;
            Some(json!({
                "source": loader::source_string(key, policy),
                "service": s.name,
                "connections": count,
                "limit": s.max_conn_per_source,
            }))
        })
        .collect();
    Ok(json!({ "sources": sources }))
}

/// The `status` response (documented in docs/status.md).
fn status(loaded: &Loaded, policy: &Policy) -> Result<Value, String> {
    let rows = loader::read_counters(&loaded.ebpf).map_err(|e| e.to_string())?;
    let conns = loader::connections_by_service(&loaded.ebpf).map_err(|e| e.to_string())?;
    let mut totals = [0u64; Verdict::COUNT as usize];
    let services: Vec<Value> = policy
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let row = &rows[loader::service_id(i) as usize];
            for (t, c) in totals.iter_mut().zip(row) {
                *t += c;
            }
            json!({
                "name": s.name,
                "ports": s.ports,
                "rate": s.rate.map(|r| r.to_string()),
                "burst": s.burst,
                "action": s.action.as_str(),
                "max_conn_per_source": s.max_conn_per_source,
                "connections": conns[loader::service_id(i) as usize],
                "counters": counters_json(row),
            })
        })
        .collect();
    let mut total = counters_json(&totals);
    if let Value::Object(m) = &mut total {
        m.insert("passed_other".into(), json!(rows[0][Verdict::PassedOther as usize]));
    }
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "interfaces": loaded.attachments,
        "ipv4_prefix": policy.ipv4_prefix,
        "ipv6_prefix": policy.ipv6_prefix,
        "services": services,
        "totals": total,
    }))
}
