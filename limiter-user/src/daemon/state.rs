//! The running daemon's state, shared by the control handlers and the main
//! loop, and the one way a policy reaches the kernel: [`Daemon::apply`].
use std::{cell::RefCell, path::PathBuf, rc::Rc};

use limiter_common::prefix::Prefix;
use log::info;

use crate::{
    daemon::{
        refusals::{AnswerCounts, Bursts, Recent},
        respond::{Answered, Answers},
        responder,
        steered::Awaiting,
    },
    kernel::{events::Budget, loader::Loaded, writer::PolicyWriter},
    policy::{
        force::{Change, Force},
        lists::Lists,
        model::{Overrides, Policy},
        service::Action,
        state::RuntimeLists,
    },
};

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
    /// What the responder answers (`respond` services' texts and TLS).
    pub answers: Answers,
    /// What the responder did.
    pub responder: Rc<RefCell<responder::Stats>>,
    /// Sources the responder answered: proved, for their refusal lines.
    pub answered: Answered,
    /// Steered refusals waiting for the responder's accept.
    pub awaiting: Awaiting,
    /// Refusals reported, by service and what answered them.
    pub answer_counts: AnswerCounts,
    /// Each source's recent refusals, for `top`.
    pub recent: Recent,
    /// The policy in force: `policy` with `runtime` layered on, merged.
    pub force: Force,
}

/// Writes the policy in force `force` into the kernel; with a `region`,
/// only what lies under it changed since the last write.
fn write_force(writer: &mut PolicyWriter, force: &Force, region: Option<Prefix>) -> Result<(), String> {
    writer.write_merged(&force.policy, &force.merged, region).map_err(|e| format!("{:#}", anyhow::Error::from(e)))
}

/// Gives `to`'s services the ids `from` gives services of the same name
/// (the same services, one layer with the ids the pinned table gave).
pub(crate) fn copy_ids(to: &mut Policy, from: &Policy) {
    for s in &mut to.services {
        if let Some(f) = from.services.iter().find(|f| f.name == s.name) {
            s.id = f.id;
        }
    }
}

impl Daemon {
    /// Writes `policy` with `runtime` layered on into the kernel, built
    /// whole (start and reload); on success it is the policy in force.
    pub(crate) fn apply(&mut self, policy: &Policy, runtime: &Lists) -> Result<(), String> {
        let force = Force::new(policy, runtime);
        write_force(&mut self.loaded.writer, &force, None)?;
        self.force = force;
        Ok(())
    }

    /// Makes `new` the run-time entries, which differ from those in force
    /// only as `change` (made by `Force::change` from `new`) says: persisted
    /// first, then applied; a failure to apply puts the old file back.
    pub(crate) fn commit(&mut self, new: &Lists, change: Change) -> Result<(), String> {
        let old = self.runtime.lists.clone();
        self.runtime.store(new.clone()).map_err(|e| e.to_string())?;
        crate::failpoint::hit("list-stored");
        let region = change.prefix;
        let undo = self.force.apply(change);
        if let Err(e) = write_force(&mut self.loaded.writer, &self.force, Some(region)) {
            // The flip is the last step of a policy write: the old bank is
            // still in force. Put the old entries back, on disk too.
            self.force.apply(undo);
            let _ = self.runtime.store(old);
            return Err(e);
        }
        crate::failpoint::hit("list-applied");
        Ok(())
    }
}

pub(crate) fn log_policy(policy: &Policy) {
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
    if policy.services.iter().any(|s| s.action == Action::Respond) {
        let r = policy.responder;
        info!(
            "responder: {} answers/s (burst {}) in all, {}/s (burst {}) per source, {} at once, deadline {:?}; the \
             kernel steers up to {} SYNs per CPU per {} ms",
            r.rate,
            r.burst,
            r.per_source_rate,
            r.per_source_burst,
            r.max_connections,
            r.deadline,
            r.steer_tokens(),
            limiter_common::events::REFILL_MS
        );
    }
    let l = &policy.lists;
    if !l.is_empty() {
        info!("lists: {} allow, {} deny, {} reserve entries", l.allow.len(), l.deny.len(), l.reserve.len());
    }
}
