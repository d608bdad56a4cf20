//! `reload` and SIGHUP: read the config again, refuse what needs a restart,
//! keep the services' ids by name, and apply the new policy or nothing.

use log::{info, warn};
use sd_notify::NotifyState;

use crate::{
    daemon::{
        notify::notify,
        respond::Answers,
        state::{Daemon, log_policy},
    },
    policy::{file::ConfigFile, model::Policy},
    protocol::ReloadReply,
};

impl Daemon {
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

    pub(crate) fn reload_config(&mut self) -> Result<ReloadReply, String> {
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
        crate::failpoint::hit("reload-ids-written");
        let runtime = self.runtime.lists.clone();
        if let Err(e) = self.apply(&new, &runtime) {
            // The old policy stays in force: so does its table.
            if let Err(w) = self.loaded.services.write(&table) {
                warn!("cannot put the service id table back: {w}");
            }
            return Err(e);
        }
        crate::failpoint::hit("reload-applied");
        self.policy = new;
        self.answers = Answers::new(&self.policy);
        let r = self.policy.responder;
        if let Err(e) = self.loaded.responder.set_share(r.per_source_rate, r.per_source_burst) {
            warn!("reload: the sources' share of the steering keeps its old pace: {e}");
        }
        let from = self.source.config.as_ref().map_or_else(|| "the run flags".to_owned(), |p| p.display().to_string());
        info!("reloaded the policy from {from}");
        log_policy(&self.force.policy);
        let warnings = self.force.warnings();
        for w in &warnings {
            warn!("reload: {w}");
        }
        Ok(ReloadReply { reloaded: from, services: self.policy.services.len(), warnings })
    }
}
