//! The main loop: control requests, refusal events, timers (event tokens,
//! burst flushes, reclaim, seeded connections' release, the watchdog) and
//! signals, until SIGINT or SIGTERM.

use std::{cell::RefCell, net::SocketAddr, rc::Rc};

use aya::maps::{MapData, RingBuf};
use limiter_common::Verdict;
use log::{debug, info, warn};
use sd_notify::NotifyState;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    daemon::{
        explain, metrics,
        notify::notify,
        refusals,
        report::{sessions_in_use, snapshot, status, top},
        respond::Steered,
        responder::{self, Limits},
        start::Started,
        state::{Daemon, Paths},
        steered::{Accepted, Flow},
        uncounted,
    },
    kernel::{self, counters, events::Event},
    protocol::{self, Reply, Request},
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

/// The one-line status `systemctl status` shows.
fn ready_status(d: &Daemon) -> String {
    let ifaces: Vec<String> = d.loaded.attachments.iter().map(|a| format!("{} ({})", a.name, a.xdp_mode)).collect();
    format!("enforcing {} services on {}", d.policy.services.len(), ifaces.join(", "))
}

/// Serves until SIGINT or SIGTERM, then shuts down: the pins stay, so
/// counting and enforcement continue.
pub async fn serve(started: Started, paths: &Paths) -> anyhow::Result<()> {
    let Started { daemon, listener, ring, metrics, socket_file, responder } = started;
    // Before READY: a SIGTERM (`systemctl stop`) or SIGHUP sent as soon as
    // the start returns is handled, not fatal by default action.
    let signals = Signals::new()?;
    let state = Rc::new(RefCell::new(daemon));
    let responder_task = {
        let counts = Rc::clone(&state.borrow().responder);
        let state = Rc::clone(&state);
        let limits = {
            let state = Rc::clone(&state);
            move || Limits::from(state.borrow().policy.responder)
        };
        let answer = move |peer, local, allowed| steered_reply(&mut state.borrow_mut(), peer, local, allowed);
        tokio::task::spawn_local(responder::serve(responder, limits, answer, counts))
    };
    let handler = {
        let state = Rc::clone(&state);
        move |req: Request| handle(&mut state.borrow_mut(), req)
    };
    let server = tokio::task::spawn_local(protocol::serve(listener, handler));
    let metrics_server = metrics.map(|l| {
        let state = Rc::clone(&state);
        tokio::task::spawn_local(metrics::serve(l, move || snapshot(&state.borrow()).map(|s| metrics::render(&s))))
    });
    // Programs attached, control socket listening: tell systemd (Type=notify).
    crate::failpoint::hit("ready");
    notify(&[NotifyState::Ready, NotifyState::Status(&ready_status(&state.borrow()))]);
    main_loop(&state, ring, signals).await?;
    crate::failpoint::hit("stopping");
    notify(&[NotifyState::Stopping]);
    server.abort();
    responder_task.abort();
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

/// What the responder answers a connection the kernel steered to it: the
/// line for the reason XDP noted (`STEER`), or a reset when the note is gone
/// or `allowed` is false (over the responder's budget or cap). The steered
/// refusal waiting for this accept is logged with what it got.
fn steered_reply(d: &mut Daemon, peer: SocketAddr, local: SocketAddr, allowed: bool) -> Option<responder::Reply> {
    let noted = d.loaded.responder.steer_entry(peer, local);
    if let Err(e) = d.loaded.responder.forget(peer, local) {
        debug!("{:#}", anyhow::Error::from(e));
    }
    let now = std::time::Instant::now();
    let noted = noted.ok().flatten();
    let steered = noted.and_then(|v| {
        let verdict = *Verdict::ALL.get(usize::from(v.verdict))?;
        Some(Steered { service: u32::from(v.service), verdict, limit: v.limit, count: v.count })
    });
    if let Some(st) = steered {
        // The handshake completed: the source's address is real.
        let e = Event {
            addr: peer.ip().to_canonical(),
            service: st.service,
            port: local.port(),
            verdict: st.verdict,
            basis: 0,
            pending: 0,
            established: 0,
            answer: 0,
            client_port: peer.port(),
        };
        d.answered.mark(e.key(&d.policy), now);
    }
    let reply = steered
        .filter(|_| allowed)
        .map(|st| d.answers.reply(&d.policy, &st, peer.ip(), local.port()))
        .filter(|r| matches!(r, responder::Reply::Line { .. }));
    let flow = Flow { client: peer.ip().to_canonical(), client_port: peer.port(), local_port: local.port() };
    let accepted = if reply.is_some() { Accepted::Responding } else { Accepted::Reset };
    if let Some((e, r)) = d.awaiting.accepted(flow, accepted, now) {
        for out in d.refusal(&e, r, now) {
            refusals::log(&out);
        }
    }
    reply
}

/// Answers one control request.
fn handle(d: &mut Daemon, req: Request) -> Result<Reply, String> {
    match req {
        Request::Status => status(d).map(|s| Reply::Status(Box::new(s))),
        Request::Top { service, limit } => top(d, service.as_deref(), limit).map(Reply::Top),
        Request::ListShow { list, service } => Ok(Reply::List(d.list_show(list, service.as_deref()))),
        Request::ListAdd {
            list,
            prefix,
            service,
            max_conn_per_source,
            max_conn_all_services,
            rate,
            burst,
            comment,
            source_prefix,
            force,
        } => {
            let prefix = d.widen(&prefix, source_prefix)?;
            let limits = (max_conn_per_source, max_conn_all_services);
            d.list_add(list, &prefix, service.as_deref(), limits, rate, burst, comment)
                .and_then(|(new, entry)| d.commit_added(list, &new, entry, force))
                .map(Reply::Added)
        }
        Request::ListDel { list, prefix, service, source_prefix, missing_ok } => {
            let prefix = d.widen(&prefix, source_prefix)?;
            d.list_del(list, &prefix, service.as_deref(), missing_ok).map(Reply::Removed)
        }
        Request::Reload => d.reload().map(Reply::Reloaded),
        Request::Explain { address, service } => {
            explain::explain(d, address, service.as_deref()).map(|r| Reply::Explain(Box::new(r)))
        }
    }
}

/// A timer that skips the ticks it missed rather than bursting.
fn every(period: std::time::Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// The signals the daemon handles.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::signal;
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Runs until SIGINT or SIGTERM.
async fn main_loop(
    state: &Rc<RefCell<Daemon>>,
    mut ring: AsyncFd<RingBuf<MapData>>,
    signals: Signals,
) -> anyhow::Result<()> {
    let Signals { mut term, mut int, mut hup } = signals;
    let watchdog = sd_notify::watchdog_enabled();
    let mut watchdog_tick = tokio::time::interval(watchdog.map_or(std::time::Duration::from_hours(1), |d| d / 2));
    let mut refill = every(std::time::Duration::from_millis(limiter_common::events::REFILL_MS));
    let mut flush = every(std::time::Duration::from_millis(250));
    // Connections that predate the programs have no close callback: look
    // for them in the socket table until they are all gone.
    let mut reconcile = every(RECONCILE_EVERY);
    // Entries of sources that no longer hold connections are reclaimed.
    let mut reclaim = every(reclaim_every());
    // A full table is told at once, not at the next reclaim pass.
    let mut uncounted_tick = every(uncounted::EVERY);
    let mut uncounted = {
        let ebpf = &state.borrow().loaded.ebpf;
        uncounted::Watch::new(kernel::maps::map_size(ebpf, limiter_common::maps::names::CONNS).unwrap_or_default())
    };
    loop {
        tokio::select! {
            _ = reclaim.tick() => reclaim_pass(&mut state.borrow_mut()),
            _ = uncounted_tick.tick() => watch_uncounted(&state.borrow(), &mut uncounted),
            _ = term.recv() => { info!("SIGTERM: shutting down"); return Ok(()) }
            _ = int.recv() => { info!("SIGINT: shutting down"); return Ok(()) }
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
                    // A steered refusal waits for the responder's accept.
                    if let Some((e, r)) = Event::decode(&item).and_then(|e| d.awaiting.event(e, now)) {
                        for out in d.refusal(&e, r, now) {
                            refusals::log(&out);
                        }
                    }
                }
                guard.clear_ready();
            }
            _ = refill.tick() => {
                let d = &mut *state.borrow_mut();
                let tokens = d.policy.responder.steer_tokens();
                if let Err(e) = d.budget.refill().and_then(|()| d.loaded.responder.refill(tokens)) {
                    warn!("{:#}", anyhow::Error::from(e));
                }
            }
            _ = flush.tick() => {
                let d = &mut *state.borrow_mut();
                let now = std::time::Instant::now();
                let loaded = &d.loaded;
                let noted = |f: &Flow| {
                    let key = kernel::responder::steer_key(f.client, f.client_port, f.local_port);
                    loaded.responder.fate(&loaded.ebpf, &key).ok().flatten()
                };
                for (e, r) in d.awaiting.expire(now, noted) {
                    for out in d.refusal(&e, r, now) {
                        refusals::log(&out);
                    }
                }
                for out in d.bursts.flush(now) {
                    refusals::log(&out);
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
            _ = reconcile.tick(), if !state.borrow().loaded.seeded.is_empty() => release_seeded(&mut state.borrow_mut()),
        }
    }
}

/// Deletes idle `CONNS` entries and frees the ids of removed services once
/// nothing is counted under them; warns when the table nears full.
fn reclaim_pass(d: &mut Daemon) {
    match d.loaded.reclaimer.pass() {
        Ok(p) => {
            if p.deleted > 0 {
                debug!("reclaimed {} idle source entries; {} in use of {}", p.deleted, p.entries, p.capacity);
            }
            if p.entries * 10 > p.capacity as usize * 9 {
                warn!(
                    "the connection table holds {} entries of {}: when it is full, new sources go uncounted; raise \
                     [maps] connections",
                    p.entries, p.capacity
                );
            }
        }
        Err(e) => warn!("{:#}", anyhow::Error::from(e)),
    }
    let loaded = &mut d.loaded;
    if let Err(e) = loaded.services.reclaim(&loaded.ebpf) {
        warn!("{:#}", anyhow::Error::from(e));
    }
}

/// Warns when `sock_ops` found the connection table full (`uncounted`).
fn watch_uncounted(d: &Daemon, watch: &mut uncounted::Watch) {
    let ebpf = &d.loaded.ebpf;
    match counters::read_uncounted(ebpf) {
        Ok(total) => {
            if let Some(line) = watch.observe(total, std::time::Instant::now()) {
                warn!("{line}");
            }
        }
        Err(e) => debug!("{:#}", anyhow::Error::from(e)),
    }
}

/// Releases the seeded connections that have closed.
fn release_seeded(d: &mut Daemon) {
    let loaded = &mut d.loaded;
    match loaded.seeded.reconcile(&mut loaded.writer) {
        Ok(0) => {}
        Ok(n) => info!("{n} connections open before start have closed; {} remain", loaded.seeded.len()),
        Err(e) => warn!("{:#}", anyhow::Error::from(e)),
    }
}

impl Daemon {
    /// A refusal the kernel reported, answered as `r` says: what to log of it.
    fn refusal(&mut self, e: &Event, r: refusals::Resolved, now: std::time::Instant) -> Vec<refusals::Emit> {
        self.answer_counts.count(&self.policy, e.service, r.answer);
        self.recent.note(e.key(&self.policy), r.answer, now, refusals::window());
        let (loaded, force, answered) = (&self.loaded, &self.force.policy, &self.answered);
        self.bursts.event(e, r, now, || {
            let sessions = counters::read_sessions(&loaded.ebpf).unwrap_or_default();
            // A source the responder answered completed a handshake with
            // this host as surely as one in `CONNS`.
            let held = |key: &_| {
                counters::connections_of(&loaded.ebpf, key).or_else(|| answered.contains(key, now).then_some(0))
            };
            let cx =
                refusals::Context { policy: force, connections: &held, sessions: &|id| sessions_in_use(&sessions, id) };
            refusals::describe(e, r, &cx)
        })
    }
}
