//! The `respond` action under timing: the bench owns the steering maps, so it tops up every CPU's tokens before a
//! run (every SYN is steered, none falls back to a reset), stands in for the daemon's responder with a listening
//! socket in the server namespace, and attaches `limiter_sk_lookup` there only for the live steered runs (attached,
//! it runs on every SYN that reaches a listener, and would tax the other cases' stack paths).

use std::{fs::File, net::TcpListener};

use aya::{
    Ebpf,
    maps::{PerCpuArray, PerCpuValues, SockMap},
    programs::SkLookup,
};
use limiter_common::{
    maps::{family, names},
    steer::{budget, responder_slot},
};

use crate::{Result, objects::Objects, testbed::Testbed};

/// What the kernel counted in `STEER_BUDGET`, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) steered: u64,
    pub(crate) no_token: u64,
    pub(crate) redirected: u64,
    pub(crate) no_responder: u64,
}

impl Counts {
    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            steered: self.steered - before.steered,
            no_token: self.no_token - before.no_token,
            redirected: self.redirected - before.redirected,
            no_responder: self.no_responder - before.no_responder,
        }
    }
}

/// The bench's stand-in for the responder: its listening socket, in `RESPONDER`, and the server namespace the
/// socket lookup attaches to.
pub(crate) struct Steering {
    /// Kept open: the kernel removes a closed socket from `RESPONDER`.
    _responder: TcpListener,
    netns: std::path::PathBuf,
}

impl Steering {
    /// Loads `limiter_sk_lookup` and puts a listener on the server's address (an ephemeral port) in the IPv4 slot
    /// of `RESPONDER`. Its SYNs get SYN cookies like every listener's here (`tcp_syncookies=2`), and what it
    /// answers to the injected SYNs dies in `bench_sink`, so nothing ever completes a handshake with it.
    pub(crate) fn new(limiter: &mut Ebpf, bed: &Testbed) -> Result<Self> {
        let prog: &mut SkLookup = limiter
            .program_mut(names::SK_LOOKUP_PROGRAM)
            .ok_or("no limiter_sk_lookup program in the production object")?
            .try_into()?;
        prog.load().map_err(|e| format!("loading {}: {e}", names::SK_LOOKUP_PROGRAM))?;
        let responder = bed.server.run(|| TcpListener::bind((crate::testbed::SERVER, 0)))?;
        let mut sockets: SockMap<_> = SockMap::try_from(limiter.map_mut(names::RESPONDER).ok_or("no RESPONDER map")?)?;
        sockets.set(responder_slot(family::V4), &responder, 0)?;
        Ok(Self { _responder: responder, netns: bed.server.path() })
    }

    /// Runs `f` with `limiter_sk_lookup` attached to the server namespace, and detaches it after.
    pub(crate) fn attached<T>(&self, objs: &mut Objects, f: impl FnOnce(&mut Objects) -> Result<T>) -> Result<T> {
        let netns = File::open(&self.netns).map_err(|e| format!("open {}: {e}", self.netns.display()))?;
        let id = lookup(&mut objs.limiter)?
            .attach(netns)
            .map_err(|e| format!("attaching {}: {e}", names::SK_LOOKUP_PROGRAM))?;
        let r = f(objs);
        lookup(&mut objs.limiter)?.detach(id)?;
        r
    }
}

fn lookup(limiter: &mut Ebpf) -> Result<&mut SkLookup> {
    Ok(limiter.program_mut(names::SK_LOOKUP_PROGRAM).ok_or("no limiter_sk_lookup program")?.try_into()?)
}

/// Gives every CPU more steering tokens than any run spends (the daemon refills 64 per CPU every 100 ms; here the
/// bench owns the map and no daemon runs).
pub(crate) fn top_up(limiter: &mut Ebpf) -> Result<()> {
    let mut m: PerCpuArray<_, u64> =
        PerCpuArray::try_from(limiter.map_mut(names::STEER_BUDGET).ok_or("no STEER_BUDGET map")?)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    m.set(budget::TOKENS, PerCpuValues::try_from(vec![u64::MAX / 2; cpus])?, 0)?;
    Ok(())
}

pub(crate) fn counts(limiter: &Ebpf) -> Result<Counts> {
    let m: PerCpuArray<_, u64> = PerCpuArray::try_from(limiter.map(names::STEER_BUDGET).ok_or("no STEER_BUDGET map")?)?;
    let sum = |i: u32| -> Result<u64> { Ok(m.get(&i, 0)?.iter().sum()) };
    Ok(Counts {
        steered: sum(budget::STEERED)?,
        no_token: sum(budget::NO_TOKEN)?,
        redirected: sum(budget::REDIRECTED)?,
        no_responder: sum(budget::NO_RESPONDER)?,
    })
}
