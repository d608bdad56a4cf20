//! `allow`, `deny` and `reserve`: adding, removing and showing run-time
//! list entries. A change is stored in `lists.json`, then applied; if applying
//! fails the stored file is put back (`Daemon::commit`).

use limiter_common::maps::family;
use log::{info, warn};

use crate::{
    daemon::state::Daemon,
    policy::{
        lists::{AllowEntry, Cidr, DenyEntry, Lists, ReserveEntry},
        service::Rate,
    },
    protocol::{AddedReply, Entry, ListName, ListReply, ListedEntry, Origin, RemovedReply},
};

impl Daemon {
    pub(crate) fn service_exists(&self, service: Option<&str>) -> Result<String, String> {
        let name = service.ok_or("reserve entries need --service S")?;
        if self.policy.services.iter().any(|s| s.name == name) {
            Ok(name.to_owned())
        } else {
            let names: Vec<&str> = self.policy.services.iter().map(|s| s.name.as_str()).collect();
            Err(format!("unknown service {} (services: {})", crate::policy::lists::shown(name), names.join(", ")))
        }
    }

    #[expect(clippy::too_many_arguments, reason = "the fields of one request")]
    pub(crate) fn list_add(
        &mut self,
        list: ListName,
        prefix: &str,
        service: Option<&str>,
        (max_conn_per_source, max_conn_all_services): (Option<u32>, Option<u32>),
        rate: Option<Rate>,
        burst: Option<u64>,
        comment: Option<String>,
    ) -> Result<(Lists, Entry), String> {
        let prefix: Cidr = prefix.parse()?;
        if let Some(c) = &comment {
            crate::policy::lists::check_comment(c)?;
        }
        let limited = max_conn_per_source.is_some() || max_conn_all_services.is_some();
        if list != ListName::Allow && (limited || rate.is_some() || burst.is_some()) {
            return Err(format!("limits belong to allow entries, not {} entries", list.as_str()));
        }
        if list != ListName::Reserve && service.is_some() {
            return Err("--service belongs to reserve entries".into());
        }
        let mut new = self.runtime.lists.clone();
        let entry = match list {
            ListName::Allow => {
                let e = AllowEntry { prefix, max_conn_per_source, max_conn_all_services, rate, burst, comment };
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
    pub(crate) fn commit_added(
        &mut self,
        list: ListName,
        new: &Lists,
        entry: Entry,
        force: bool,
    ) -> Result<AddedReply, String> {
        // A change touches one prefix: so do the footguns it can make.
        let change = self.force.change(&self.policy, new, entry.prefix.0);
        let before = self.force.footguns_of(&entry.prefix.0);
        let created: Vec<String> = change.footguns.iter().filter(|w| !before.contains(w)).cloned().collect();
        let what = format!("{} add {}", list.as_str(), entry.prefix);
        if !created.is_empty() && !force {
            return Err(format!(
                "{what} refused: {}; `--force` applies it anyway; nothing changed",
                created.join("; ")
            ));
        }
        self.commit(new, change)?;
        info!("{what}");
        for w in &created {
            warn!("{what} (forced): {w}");
        }
        Ok(AddedReply { list, added: entry, warnings: self.force.warnings() })
    }

    /// `prefix` widened to the source the kernel counts (`--source-prefix`):
    /// a ban of one IPv6 address covers the /64 its host controls.
    pub(crate) fn widen(&self, prefix: &str, source_prefix: bool) -> Result<String, String> {
        if !source_prefix {
            return Ok(prefix.to_owned());
        }
        let p: Cidr = prefix.parse()?;
        let len = if p.0.family == family::V4 { self.policy.ipv4_prefix } else { self.policy.ipv6_prefix };
        Ok(Cidr(p.0.truncate(len)).to_string())
    }

    pub(crate) fn list_del(
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
        let change = self.force.change(&self.policy, &new, prefix.0);
        self.commit(&new, change)?;
        info!("{} del {prefix}", list.as_str());
        Ok(RemovedReply { list, removed: Some(prefix), absent: None, still_in_config: in_config })
    }

    pub(crate) fn list_show(&self, list: ListName, service: Option<&str>) -> ListReply {
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
}
