//! `limiter run`: validate the policy, load and attach the XDP program,
//! serve the control socket, and detach cleanly on SIGINT/SIGTERM.

pub mod metrics;
pub mod refusals;

use std::{
    cell::RefCell,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    rc::Rc,
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use limiter_common::{
    SourceKey, Verdict,
    lists::{LIST_ENTRIES, ListEntry, entry},
    maps::{MAX_SERVICES, SockRecord, family, names},
    pool,
    prefix::Prefix,
};
use log::{debug, info, warn};
use sd_notify::NotifyState;
use tokio::{io::unix::AsyncFd, net::UnixListener, signal::unix::SignalKind};

use crate::{
    daemon::{
        metrics::{ServiceSnapshot, Snapshot},
        refusals::Bursts,
    },
    kernel::{
        counters,
        error::LoadError,
        events::{self, Budget, Event},
        loader::{self, Loaded},
        maps, pins,
    },
    policy::{
        file::ConfigFile,
        lists::{AllowEntry, Cidr, DenyEntry, Lists, ReserveEntry},
        model::{Overrides, Policy},
        service::Rate,
        state::RuntimeLists,
    },
    protocol::{
        self, AddedReply, Counters, Entry, Interface, ListCounts, ListName, ListReply, ListedEntry, Origin,
        RefusalLines, ReloadReply, RemovedReply, Reply, Request, ServiceStatus, StatusReply, TopReply, TopRow, Totals,
    },
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

/// Where the policy comes from, so `reload` can read it again.
#[derive(Debug, Clone)]
pub struct Source {
    /// The config file, if one was read at the start.
    pub config: Option<PathBuf>,
    /// The `run` flags, which override the file at every reload too.
    pub overrides: Overrides,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(policy: Policy, source: Source, paths: &Paths) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_async(policy, source, paths))
}

/// The running daemon's state, shared by the control handlers and the loop.
pub struct Daemon {
    pub loaded: Loaded,
    /// The config layer (its `lists` are the config file's).
    pub policy: Policy,
    /// Entries added at run time.
    pub runtime: RuntimeLists,
    pub source: Source,
    /// The kernel's event tokens and its count of unreported refusals.
    pub budget: Budget,
    /// Refusal log lines, rate-limited per source and reason burst.
    pub bursts: Bursts,
    /// Where the programs, links and maps are pinned (reported by `status`).
    pub pin_dir: PathBuf,
}

#[expect(clippy::too_many_lines, reason = "start-up, then one select loop")]
async fn run_async(policy: Policy, source: Source, paths: &Paths) -> anyhow::Result<()> {
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
    let socket_file = SocketFile(&paths.socket);
    // A failed first start leaves nothing behind; a failed restart leaves
    // the running enforcement of the previous start alone.
    let fresh = fs::read_dir(&paths.pin_dir).map_or(true, |mut d| d.next().is_none());
    let mut effective = in_force(&policy, &runtime.lists);
    let loaded = match loader::load_and_attach(&mut effective, &paths.cgroup, &paths.pin_dir, &paths.state_dir) {
        Ok(l) => l,
        Err(e) => {
            if fresh && pins::on_bpffs(&paths.pin_dir) {
                let _ = pins::unload(&paths.pin_dir);
            }
            return Err(e.into());
        }
    };
    // The ids the pinned table gave (stable by name), for the config layer too.
    let mut policy = policy;
    copy_ids(&mut policy, &effective);
    for a in &loaded.attachments {
        info!("attached to {} (ifindex {}) in {} mode", a.name, a.ifindex, a.xdp_mode);
    }
    let (ring, budget) = take_events(&loaded)?;
    let metrics_listener = match policy.metrics_listen {
        Some(addr) => match metrics::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => bail!("cannot serve metrics on {addr}: {e} (metrics_listen / --metrics-listen)"),
        },
        None => None,
    };
    log_policy(&effective);
    for (_, w) in effective.lists.footguns() {
        warn!("{w}");
    }
    info!("control socket {}", paths.socket.display());

    let bursts = Bursts::new(refusals::window());
    let state = Rc::new(RefCell::new(Daemon {
        loaded,
        policy,
        runtime,
        source,
        budget,
        bursts,
        pin_dir: paths.pin_dir.clone(),
    }));
    let handler = {
        let state = Rc::clone(&state);
        move |req: Request| {
            let d = &mut *state.borrow_mut();
            match req {
                Request::Status => status(d).map(|s| Reply::Status(Box::new(s))),
                Request::Top { service, limit } => top(d, service.as_deref(), limit).map(Reply::Top),
                Request::ListShow { list, service } => Ok(Reply::List(d.list_show(list, service.as_deref()))),
                Request::ListAdd {
                    list,
                    prefix,
                    service,
                    max_conn_per_source,
                    rate,
                    burst,
                    comment,
                    source_prefix,
                    force,
                } => {
                    let prefix = d.widen(&prefix, source_prefix)?;
                    d.list_add(list, &prefix, service.as_deref(), max_conn_per_source, rate, burst, comment)
                        .and_then(|(new, entry)| d.commit_added(list, &new, entry, force))
                        .map(Reply::Added)
                }
                Request::ListDel { list, prefix, service, source_prefix, missing_ok } => {
                    let prefix = d.widen(&prefix, source_prefix)?;
                    d.list_del(list, &prefix, service.as_deref(), missing_ok).map(Reply::Removed)
                }
                Request::Reload => d.reload().map(Reply::Reloaded),
            }
        }
    };
    let server = tokio::task::spawn_local(protocol::serve(listener, handler));
    let metrics_server = metrics_listener.map(|l| {
        let state = Rc::clone(&state);
        tokio::task::spawn_local(metrics::serve(l, move || snapshot(&state.borrow()).map(|s| metrics::render(&s))))
    });
    // Programs attached, control socket listening: tell systemd (Type=notify).
    crate::failpoint::hit("ready");
    notify(&[NotifyState::Ready, NotifyState::Status(&ready_status(&state.borrow()))]);
    let watchdog = sd_notify::watchdog_enabled();
    let mut watchdog_tick = tokio::time::interval(watchdog.map_or(std::time::Duration::from_hours(1), |d| d / 2));
    let mut ring = ring;
    let mut refill = tokio::time::interval(std::time::Duration::from_millis(limiter_common::events::REFILL_MS));
    refill.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(std::time::Duration::from_millis(250));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    // Connections that predate the programs have no close callback: look
    // for them in the socket table until they are all gone.
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Entries of sources that no longer hold connections are reclaimed.
    let mut reclaim = tokio::time::interval(reclaim_every());
    reclaim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = reclaim.tick() => {
                match state.borrow_mut().loaded.reclaimer.pass() {
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
                // Ids of removed services are freed once nothing is counted under them.
                let loaded = &mut state.borrow_mut().loaded;
                if let Err(e) = loaded.services.reclaim(&loaded.ebpf) {
                    warn!("{:#}", anyhow::Error::from(e));
                }
            }
            _ = term.recv() => { info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { info!("SIGINT: shutting down"); break }
            _ = hup.recv() => {
                match state.borrow_mut().reload() {
                    Ok(_) => info!("SIGHUP: config reloaded"),
                    Err(e) => warn!("SIGHUP: {e}"),
                }
            }
            guard = ring.readable_mut() => {
                let Ok(mut guard) = guard else { continue };
                let d = &mut *state.borrow_mut();
                let now = std::time::Instant::now();
                while let Some(item) = guard.get_inner_mut().next() {
                    if let Some(e) = Event::decode(&item) {
                        for out in d.refusal(&e, now) {
                            refusals::log(&out);
                        }
                    }
                }
                guard.clear_ready();
            }
            _ = refill.tick() => {
                if let Err(e) = state.borrow_mut().budget.refill() {
                    warn!("{:#}", anyhow::Error::from(e));
                }
            }
            _ = flush.tick() => {
                for out in state.borrow_mut().bursts.flush(std::time::Instant::now()) {
                    refusals::log(&out);
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
            _ = reconcile.tick(), if !state.borrow().loaded.seeded.is_empty() => {
                let loaded = &mut state.borrow_mut().loaded;
                match loaded.seeded.reconcile(&mut loaded.writer) {
                    Ok(0) => {}
                    Ok(n) => info!("{n} connections open before start have closed; {} remain", loaded.seeded.len()),
                    Err(e) => warn!("{:#}", anyhow::Error::from(e)),
                }
            }
        }
    }
    notify(&[NotifyState::Stopping]);
    server.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    for out in state.borrow_mut().bursts.flush(std::time::Instant::now() + refusals::window()) {
        refusals::log(&out);
    }
    drop(socket_file);
    info!(
        "daemon stopped; counting and enforcement continue from {} (`limiter unload` removes them)",
        paths.pin_dir.display()
    );
    Ok(())
}

/// The control socket's file: removed when dropped, so a failed start-up
/// and a stop leave no stale socket behind, whichever way they return.
struct SocketFile<'a>(&'a Path);

impl Drop for SocketFile<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
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

/// Tells systemd, when run by it (`NOTIFY_SOCKET`); nothing otherwise.
fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        debug!("sd_notify: {e}");
    }
}

/// The one-line status `systemctl status` shows.
fn ready_status(d: &Daemon) -> String {
    let ifaces: Vec<String> = d.loaded.attachments.iter().map(|a| format!("{} ({})", a.name, a.xdp_mode)).collect();
    format!("enforcing {} services on {}", d.policy.services.len(), ifaces.join(", "))
}

fn log_policy(policy: &Policy) {
    for s in &policy.services {
        let rate = s.rate.map_or_else(|| "unlimited".to_owned(), |r| r.to_string());
        let sessions = s
            .max_sessions
            .map_or_else(|| "unlimited".to_owned(), |m| format!("{m} ({} reserved)", s.reserved_sessions));
        info!(
            "service {} ports {:?}: rate {rate} burst {} action {} sessions {sessions}",
            s.name,
            s.ports,
            s.burst,
            s.action.as_str()
        );
    }
    let l = &policy.lists;
    if !l.is_empty() {
        info!("lists: {} allow, {} deny, {} reserve entries", l.allow.len(), l.deny.len(), l.reserve.len());
    }
}

/// The policy in force: the config's, with the run-time entries layered on
/// (run-time reserve entries of services the config lacks are left out).
fn in_force(policy: &Policy, runtime: &Lists) -> Policy {
    let mut runtime = runtime.clone();
    runtime.reserve.retain(|r| policy.services.iter().any(|s| s.name == r.service));
    let mut p = policy.clone();
    p.lists = policy.lists.layered(&runtime);
    p
}

/// Gives `to`'s services the ids `from` gives services of the same name
/// (the same services, one layer with the ids the pinned table gave).
fn copy_ids(to: &mut Policy, from: &Policy) {
    for s in &mut to.services {
        if let Some(f) = from.services.iter().find(|f| f.name == s.name) {
            s.id = f.id;
        }
    }
}

impl Daemon {
    /// Writes `policy` with `runtime` layered on into the kernel.
    fn apply(&mut self, policy: &Policy, runtime: &Lists) -> Result<(), String> {
        let effective = in_force(policy, runtime);
        let loaded = &mut self.loaded;
        loaded.writer.write(&effective).map_err(|e| format!("{:#}", anyhow::Error::from(e)))
    }

    /// Makes `new` the run-time entries: persisted first, then applied; a
    /// failure to apply puts the old file back.
    fn commit(&mut self, new: &Lists) -> Result<(), String> {
        let old = self.runtime.lists.clone();
        self.runtime.store(new.clone()).map_err(|e| e.to_string())?;
        let policy = self.policy.clone();
        if let Err(e) = self.apply(&policy, new) {
            // The flip is the last step of a policy write: the old bank is
            // still in force. Put the old entries back on disk.
            let _ = self.runtime.store(old);
            return Err(e);
        }
        Ok(())
    }

    fn service_exists(&self, service: Option<&str>) -> Result<String, String> {
        let name = service.ok_or("reserve entries need --service S")?;
        if self.policy.services.iter().any(|s| s.name == name) {
            Ok(name.to_owned())
        } else {
            let names: Vec<&str> = self.policy.services.iter().map(|s| s.name.as_str()).collect();
            Err(format!("unknown service {} (services: {})", crate::policy::lists::shown(name), names.join(", ")))
        }
    }

    #[expect(clippy::too_many_arguments, reason = "the fields of one request")]
    fn list_add(
        &mut self,
        list: ListName,
        prefix: &str,
        service: Option<&str>,
        max_conn_per_source: Option<u32>,
        rate: Option<Rate>,
        burst: Option<u64>,
        comment: Option<String>,
    ) -> Result<(Lists, Entry), String> {
        let prefix: Cidr = prefix.parse()?;
        if let Some(c) = &comment {
            crate::policy::lists::check_comment(c)?;
        }
        if list != ListName::Allow && (max_conn_per_source.is_some() || rate.is_some() || burst.is_some()) {
            return Err(format!("limits belong to allow entries, not {} entries", list.as_str()));
        }
        if list != ListName::Reserve && service.is_some() {
            return Err("--service belongs to reserve entries".into());
        }
        let mut new = self.runtime.lists.clone();
        let entry = match list {
            ListName::Allow => {
                let e = AllowEntry { prefix, max_conn_per_source, rate, burst, comment };
                if let Some((_, problem)) = e.problems().into_iter().next() {
                    return Err(problem);
                }
                new.allow.retain(|a| a.prefix != prefix);
                new.allow.push(e.clone());
                Entry::from(&e)
            }
            ListName::Deny => {
                let e = DenyEntry { prefix, comment };
                new.deny.retain(|d| d.prefix != prefix);
                new.deny.push(e.clone());
                Entry::from(&e)
            }
            ListName::Reserve => {
                let service = self.service_exists(service)?;
                let e = ReserveEntry { service, prefix, comment };
                new.reserve.retain(|r| r.prefix != prefix || r.service != e.service);
                new.reserve.push(e.clone());
                Entry::from(&e)
            }
        };
        Ok((new, entry))
    }

    /// Commits the run-time entries `new` that `list add` made, unless they
    /// create a footgun (`Lists::footguns`) the policy in force does not
    /// already have and `force` is not given. The warnings of what is
    /// applied are in the response.
    fn commit_added(&mut self, list: ListName, new: &Lists, entry: Entry, force: bool) -> Result<AddedReply, String> {
        let before = in_force(&self.policy, &self.runtime.lists).lists.footguns();
        let after = in_force(&self.policy, new).lists.footguns();
        let created: Vec<&String> =
            after.iter().map(|(_, w)| w).filter(|w| !before.iter().any(|(_, b)| b == *w)).collect();
        let what = format!("{} add {}", list.as_str(), entry.prefix);
        if !created.is_empty() && !force {
            let reasons: Vec<&str> = created.iter().map(|w| w.as_str()).collect();
            return Err(format!(
                "{what} refused: {}; `--force` applies it anyway; nothing changed",
                reasons.join("; ")
            ));
        }
        self.commit(new)?;
        info!("{what}");
        for w in &created {
            warn!("{what} (forced): {w}");
        }
        let warnings = after.into_iter().map(|(_, w)| w).collect();
        Ok(AddedReply { list, added: entry, warnings })
    }

    /// `prefix` widened to the source the kernel counts (`--source-prefix`):
    /// a ban of one IPv6 address covers the /64 its host controls.
    fn widen(&self, prefix: &str, source_prefix: bool) -> Result<String, String> {
        if !source_prefix {
            return Ok(prefix.to_owned());
        }
        let p: Cidr = prefix.parse()?;
        let len = if p.0.family == family::V4 { self.policy.ipv4_prefix } else { self.policy.ipv6_prefix };
        Ok(Cidr(p.0.truncate(len)).to_string())
    }

    fn list_del(
        &mut self,
        list: ListName,
        prefix: &str,
        service: Option<&str>,
        missing_ok: bool,
    ) -> Result<RemovedReply, String> {
        let prefix: Cidr = prefix.parse()?;
        let service = if list == ListName::Reserve { Some(self.service_exists(service)?) } else { None };
        let mut new = self.runtime.lists.clone();
        let (before, in_config) = match list {
            ListName::Allow => {
                let n = new.allow.len();
                new.allow.retain(|a| a.prefix != prefix);
                (n - new.allow.len(), self.policy.lists.allow.iter().any(|a| a.prefix == prefix))
            }
            ListName::Deny => {
                let n = new.deny.len();
                new.deny.retain(|d| d.prefix != prefix);
                (n - new.deny.len(), self.policy.lists.deny.iter().any(|d| d.prefix == prefix))
            }
            ListName::Reserve => {
                let n = new.reserve.len();
                new.reserve.retain(|r| r.prefix != prefix || Some(&r.service) != service.as_ref());
                (
                    n - new.reserve.len(),
                    self.policy
                        .lists
                        .reserve
                        .iter()
                        .any(|r| r.prefix == prefix && Some(&r.service) == service.as_ref()),
                )
            }
        };
        if before == 0 && missing_ok {
            return Ok(RemovedReply { list, removed: None, absent: Some(prefix), still_in_config: in_config });
        }
        if before == 0 {
            let what = service.map_or_else(String::new, |s| format!(" of service '{s}'"));
            return Err(if in_config {
                format!(
                    "{prefix} is in the config file's {} list{what}: remove it there and run `limiter reload`",
                    list.as_str()
                )
            } else {
                format!("{prefix} is not in the {} list{what}", list.as_str())
            });
        }
        self.commit(&new)?;
        info!("{} del {prefix}", list.as_str());
        Ok(RemovedReply { list, removed: Some(prefix), absent: None, still_in_config: in_config })
    }

    fn list_show(&self, list: ListName, service: Option<&str>) -> ListReply {
        fn tagged<'a, T: 'a>(origin: Origin) -> impl Fn(&'a T) -> ListedEntry
        where
            Entry: From<&'a T>,
        {
            move |e| ListedEntry { entry: Entry::from(e), origin }
        }
        let mut entries = Vec::new();
        for (lists, origin) in [(&self.policy.lists, Origin::Config), (&self.runtime.lists, Origin::Runtime)] {
            match list {
                ListName::Allow => entries.extend(lists.allow.iter().map(tagged(origin))),
                ListName::Deny => entries.extend(lists.deny.iter().map(tagged(origin))),
                ListName::Reserve => entries.extend(
                    lists.reserve.iter().filter(|e| service.is_none_or(|s| s == e.service)).map(tagged(origin)),
                ),
            }
        }
        ListReply { list, entries }
    }

    /// Re-reads the config and applies it whole, or changes nothing.
    /// `reload` with systemd told (`RELOADING=1`, then `READY=1`).
    pub fn reload(&mut self) -> Result<ReloadReply, String> {
        let mut state = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            state.push(now);
        }
        notify(&state);
        let r = self.reload_config();
        if r.is_err() {
            // A refused config may have been large: give the memory its
            // text and parse took back to the system now.
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
        }
        notify(&[NotifyState::Ready]);
        r
    }

    /// A refusal the kernel reported: what to log of it.
    fn refusal(&mut self, e: &Event, now: std::time::Instant) -> Vec<refusals::Emit> {
        let (loaded, policy, runtime) = (&self.loaded, &self.policy, &self.runtime);
        self.bursts.event(e, now, || {
            let force = in_force(policy, &runtime.lists);
            let sessions = counters::read_sessions(&loaded.ebpf).unwrap_or_default();
            let cx = refusals::Context {
                policy: &force,
                connections: &|key| counters::connections_of(&loaded.ebpf, key),
                sessions: &|id| sessions_in_use(&sessions, id),
            };
            refusals::describe(e, &cx)
        })
    }

    fn reload_config(&mut self) -> Result<ReloadReply, String> {
        let file = match &self.source.config {
            Some(p) => ConfigFile::read(p).map_err(|e| e.to_string())?,
            None => ConfigFile::default(),
        };
        let mut new = Policy::build(file, &self.source.overrides).map_err(|e| e.to_string())?;
        let fixed = [
            ("interfaces", new.interfaces != self.policy.interfaces),
            ("xdp_mode", new.xdp_mode != self.policy.xdp_mode),
            ("ipv4_prefix", new.ipv4_prefix != self.policy.ipv4_prefix),
            ("ipv6_prefix", new.ipv6_prefix != self.policy.ipv6_prefix),
            ("[maps]", new.maps != self.policy.maps),
            ("metrics_listen", new.metrics_listen != self.policy.metrics_listen),
        ];
        if let Some((what, _)) = fixed.iter().find(|(_, changed)| *changed) {
            return Err(format!(
                "{what} cannot change on reload (counts are keyed and sized by it): restart the daemon to apply it; \
                 nothing changed"
            ));
        }
        for r in &self.runtime.lists.reserve {
            if !new.services.iter().any(|s| s.name == r.service) {
                return Err(format!(
                    "the run-time reserve entry {} names service '{}', which the new config does not define: \
                     `limiter reserve del {} --service {}` first; nothing changed",
                    r.prefix, r.service, r.prefix, r.service
                ));
            }
        }
        // Ids come from the pinned table (a removed service's id is retired,
        // not handed to a new one), recorded before the policy uses them.
        let table = self.loaded.services.apply(&self.loaded.ebpf, &mut new).map_err(|e| e.to_string())?;
        let runtime = self.runtime.lists.clone();
        if let Err(e) = self.apply(&new, &runtime) {
            // The old policy stays in force: so does its table.
            if let Err(w) = self.loaded.services.write(&table) {
                warn!("cannot put the service id table back: {w}");
            }
            return Err(e);
        }
        self.policy = new;
        let from = self.source.config.as_ref().map_or_else(|| "the run flags".to_owned(), |p| p.display().to_string());
        info!("reloaded the policy from {from}");
        let effective = in_force(&self.policy, &self.runtime.lists);
        log_policy(&effective);
        let warnings: Vec<String> = effective.lists.footguns().into_iter().map(|(_, w)| w).collect();
        for w in &warnings {
            warn!("reload: {w}");
        }
        Ok(ReloadReply { reloaded: from, services: self.policy.services.len(), warnings })
    }
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

/// A service's row of `COUNTERS` (or the sum of them), without
/// `passed_other`, which only row 0 counts.
fn counters(row: &[u64]) -> Counters {
    let at = |v: Verdict| Some(row[v as usize]);
    Counters {
        accepted: at(Verdict::Accepted),
        refused_deny: at(Verdict::RefusedDeny),
        refused_sessions: at(Verdict::RefusedSessions),
        refused_reserve: at(Verdict::RefusedReserve),
        refused_concurrency: at(Verdict::RefusedConcurrency),
        refused_rate: at(Verdict::RefusedRate),
        passed_non_syn: at(Verdict::PassedNonSyn),
    }
}

/// The `top` response: sources with connections, most first (docs/status.md).
fn top(d: &Daemon, service: Option<&str>, limit: usize) -> Result<TopReply, String> {
    let policy = &d.policy;
    let wanted = match service {
        Some(name) => Some(
            policy
                .services
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.id)
                .ok_or_else(|| format!("unknown service {}", crate::policy::lists::shown(name)))?,
        ),
        None => None,
    };
    let mut rows = counters::sources(&d.loaded.ebpf).map_err(|e| e.to_string())?;
    rows.retain(|(key, count)| *count > 0 && wanted.is_none_or(|id| u32::from(key.service) == id));
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.addr.cmp(&b.0.addr)));
    let total_connections: u64 = rows.iter().map(|(_, n)| n).sum();
    let merged = in_force(policy, &d.runtime.lists).lists.merge(&policy.services);
    let sources = rows
        .iter()
        .take(limit)
        .filter_map(|(key, count)| {
            let s = policy.services.iter().find(|s| s.id == u32::from(key.service))?;
            Some(TopRow {
                source: counters::source_string(key, policy),
                service: s.name.clone(),
                connections: *count,
                limit: source_limit(&merged, key, policy, s),
            })
        })
        .collect();
    Ok(TopReply { sources, total_sources: Some(rows.len()), total_connections: Some(total_connections) })
}

/// The per-source connection limit that applies to `key`: a covering allow
/// entry's own (none for an exempt source), else the service's.
fn source_limit(
    merged: &std::collections::BTreeMap<Prefix, ListEntry>,
    key: &SourceKey,
    policy: &Policy,
    service: &crate::policy::service::Service,
) -> Option<u32> {
    let len = if key.family == family::V4 { policy.ipv4_prefix } else { policy.ipv6_prefix };
    let source = Prefix { family: key.family, addr: key.addr, len };
    match crate::policy::lists::longest_match(merged, &source) {
        Some(e) if e.flags & entry::EXEMPT != 0 => None,
        Some(e) if e.flags & entry::ALLOW != 0 => (e.max_conn_per_source != 0).then_some(e.max_conn_per_source),
        _ => service.max_conn_per_source,
    }
}

/// Sessions of service `id` in use (established and seeded; handshakes in
/// flight are not shown), from `SESSIONS` as `read_sessions` returns it.
fn sessions_in_use(sessions: &[u64], id: u32) -> u64 {
    let at = |kind| sessions.get(pool::index(id, kind) as usize).copied().unwrap_or(0);
    at(pool::ESTABLISHED) + at(pool::SEEDED)
}

/// What a metrics scrape reports, read from the kernel now.
fn snapshot(d: &Daemon) -> Result<Snapshot, String> {
    let ebpf = &d.loaded.ebpf;
    let rows = counters::read_counters(ebpf).map_err(|e| e.to_string())?;
    let sessions = counters::read_sessions(ebpf).map_err(|e| e.to_string())?;
    let sources = counters::sources(ebpf).map_err(|e| e.to_string())?;
    let mut conns = vec![0u64; MAX_SERVICES as usize + 1];
    for (key, n) in &sources {
        if let Some(c) = conns.get_mut(usize::from(key.service)) {
            *c += n;
        }
    }
    let services = d
        .policy
        .services
        .iter()
        .map(|s| ServiceSnapshot {
            name: s.name.clone(),
            counters: rows[s.id as usize],
            connections: conns[s.id as usize],
            sessions: sessions_in_use(&sessions, s.id),
            max_sessions: s.max_sessions,
            max_conn_per_source: s.max_conn_per_source,
        })
        .collect();
    let mut maps = Vec::new();
    for name in [names::CONNS, names::SEEDED, names::SOCKS] {
        let used = if name == names::SOCKS {
            maps::map_entries::<u64, SockRecord>(ebpf, name)
        } else {
            maps::map_entries::<SourceKey, u64>(ebpf, name)
        };
        let max = maps::map_size(ebpf, name).map_err(|e| e.to_string())?;
        maps.push((name, used.map_err(|e| e.to_string())?, u64::from(max)));
    }
    let lists = in_force(&d.policy, &d.runtime.lists).lists.merge(&d.policy.services).len();
    maps.push((names::LISTS, lists as u64, u64::from(LIST_ENTRIES)));
    Ok(Snapshot {
        version: env!("CARGO_PKG_VERSION"),
        services,
        passed_other: rows[0][Verdict::PassedOther as usize],
        sources_tracked: maps[0].1,
        sources_connected: sources.iter().filter(|(_, n)| *n > 0).count() as u64,
        maps,
        attachments: d.loaded.attachments.iter().map(|a| (a.name.clone(), a.xdp_mode)).collect(),
        events_unreported: d.budget.unreported().map_err(|e| e.to_string())?,
        log_suppressed: d.bursts.suppressed_total,
        log_lines: d.bursts.logged_total,
    })
}

/// The `status` response (documented in docs/status.md).
fn status(d: &Daemon) -> Result<StatusReply, String> {
    let (loaded, policy) = (&d.loaded, &d.policy);
    let rows = counters::read_counters(&loaded.ebpf).map_err(|e| e.to_string())?;
    let conns = counters::connections_by_service(&loaded.ebpf).map_err(|e| e.to_string())?;
    let sessions = counters::read_sessions(&loaded.ebpf).map_err(|e| e.to_string())?;
    let mut totals = [0u64; Verdict::COUNT as usize];
    let services = policy
        .services
        .iter()
        .map(|s| {
            let id = s.id as usize;
            let row = &rows[id];
            for (t, c) in totals.iter_mut().zip(row) {
                *t += c;
            }
            ServiceStatus {
                name: s.name.clone(),
                ports: s.ports.clone(),
                rate: s.rate,
                burst: s.burst,
                action: s.action.as_str().to_owned(),
                max_conn_per_source: s.max_conn_per_source,
                max_sessions: s.max_sessions,
                reserved_sessions: s.reserved_sessions,
                sessions: Some(sessions_in_use(&sessions, s.id)),
                connections: conns[id],
                counters: counters(row),
            }
        })
        .collect();
    let totals = Totals { counters: counters(&totals), passed_other: rows[0][Verdict::PassedOther as usize] };
    let lists = in_force(policy, &d.runtime.lists).lists;
    let interfaces = loaded
        .attachments
        .iter()
        .map(|a| Interface { name: a.name.clone(), ifindex: a.ifindex, xdp_mode: a.xdp_mode.to_owned() })
        .collect();
    Ok(StatusReply {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pin_dir: Some(d.pin_dir.clone()),
        interfaces,
        ipv4_prefix: policy.ipv4_prefix,
        ipv6_prefix: policy.ipv6_prefix,
        services,
        lists: Some(ListCounts { allow: lists.allow.len(), deny: lists.deny.len(), reserve: lists.reserve.len() }),
        totals,
        metrics_listen: policy.metrics_listen.map(|a| a.to_string()),
        refusal_lines: Some(RefusalLines {
            logged: d.bursts.logged_total,
            suppressed: d.bursts.suppressed_total,
            unreported: d.budget.unreported().map_err(|e| e.to_string())?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_is_read_from_its_verdicts_row_index() {
        // Row index i holds i + 100: each field must show its verdict's.
        let row: Vec<u64> = (0..u64::from(Verdict::COUNT)).map(|i| i + 100).collect();
        let shown = serde_json::to_value(counters(&row)).expect("json");
        let Some(fields) = shown.as_object() else { panic!("{shown}") };
        for v in Verdict::ALL.into_iter().filter(|v| *v != Verdict::PassedOther) {
            assert_eq!(fields.get(v.name()), Some(&serde_json::Value::from(v as u64 + 100)), "{}", v.name());
        }
        assert_eq!(fields.len(), Verdict::ALL.len() - 1, "{shown}");
    }
}
