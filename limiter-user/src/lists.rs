//! The allow, deny and reserve lists: entries as the admin writes them (in
//! the config file or at run time with `limiter allow|deny|reserve`), and
//! their merge into the one trie the kernel reads
//! (`limiter_common::lists`).

use std::collections::BTreeMap;

use limiter_common::{
    lists::{ListEntry, entry},
    prefix::Prefix,
};
use serde::{Deserialize, Serialize};

use crate::config::{Rate, Service};

/// A prefix that serializes as its normalized CIDR text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(pub Prefix);

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Prefix::parse(s).map(Self).map_err(|e| format!("bad prefix '{s}': {e}"))
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// An allow entry: exempt (no limits given) or its own per-source limits,
/// which replace the service's (a limit not given is no limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    pub prefix: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_conn_per_source: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl AllowEntry {
    /// No limit given: the source is exempt (accepted, not counted against
    /// `max_sessions`).
    #[must_use]
    pub const fn is_exempt(&self) -> bool {
        self.max_conn_per_source.is_none() && self.rate.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyEntry {
    pub prefix: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveEntry {
    pub service: String,
    pub prefix: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// The three lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lists {
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
    #[serde(default)]
    pub deny: Vec<DenyEntry>,
    #[serde(default)]
    pub reserve: Vec<ReserveEntry>,
}

/// Burst of an allow entry with a rate but no burst: as for services.
fn allow_bucket(e: &AllowEntry) -> limiter_common::Bucket {
    e.rate.map_or(limiter_common::Bucket::UNLIMITED, |r| {
        let burst = e.burst.unwrap_or_else(|| r.count.min(crate::config::DEFAULT_BURST));
        limiter_common::Bucket::new(r.count, r.per_secs * 1_000_000_000, burst)
    })
}

impl Lists {
    /// True when no list has an entry (XDP then skips the lookup).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty() && self.reserve.is_empty()
    }

    /// `self` with `over`'s entries added; an allow entry of `over` replaces
    /// one of `self` with the same prefix (run-time entries win over the
    /// config file's).
    #[must_use]
    pub fn layered(&self, over: &Self) -> Self {
        let mut out = self.clone();
        for a in &over.allow {
            out.allow.retain(|b| b.prefix != a.prefix);
            out.allow.push(a.clone());
        }
        for d in &over.deny {
            if !out.deny.iter().any(|e| e.prefix == d.prefix) {
                out.deny.push(d.clone());
            }
        }
        for r in &over.reserve {
            if !out.reserve.iter().any(|e| e.prefix == r.prefix && e.service == r.service) {
                out.reserve.push(r.clone());
            }
        }
        out
    }

    /// The merged trie: one entry per distinct prefix of any list, holding
    /// what every list says about it (see `limiter_common::lists`).
    /// `services` gives the ids reserve entries name.
    #[must_use]
    pub fn merge(&self, services: &[Service]) -> BTreeMap<Prefix, ListEntry> {
        let mut prefixes: Vec<Prefix> = self
            .allow
            .iter()
            .map(|e| e.prefix.0)
            .chain(self.deny.iter().map(|e| e.prefix.0))
            .chain(self.reserve.iter().map(|e| e.prefix.0))
            .collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        let mut out = BTreeMap::new();
        for p in prefixes {
            let mut e = ListEntry::default();
            if self.deny.iter().any(|d| d.prefix.0.covers(&p)) {
                e.flags |= entry::DENY;
            }
            if let Some(a) = self.allow.iter().filter(|a| a.prefix.0.covers(&p)).max_by_key(|a| a.prefix.0.len) {
                e.flags |= entry::ALLOW;
                if a.is_exempt() {
                    e.flags |= entry::EXEMPT;
                } else {
                    let b = allow_bucket(a);
                    e.max_conn_per_source = a.max_conn_per_source.unwrap_or(0);
                    e.rate_interval_ns = b.interval_ns;
                    e.rate_tolerance_ns = b.tolerance_ns;
                }
            }
            for r in self.reserve.iter().filter(|r| r.prefix.0.covers(&p)) {
                if let Some(s) = services.iter().find(|s| s.name == r.service) {
                    e.reserve |= 1 << s.id;
                }
            }
            out.insert(p, e);
        }
        out
    }
}

/// The entry the kernel's longest-prefix match finds for `addr` in a merged
/// trie (user-space reference for tests and seeding).
#[must_use]
pub fn longest_match(merged: &BTreeMap<Prefix, ListEntry>, addr: &Prefix) -> Option<ListEntry> {
    merged.iter().filter(|(p, _)| p.covers(addr)).max_by_key(|(p, _)| p.len).map(|(_, e)| *e)
}
