//! The allow, deny and reserve lists: entries as the admin writes them (in
//! the config file or at run time with `limiter allow|deny|reserve`), and
//! their merge into the one trie the kernel reads
//! (`limiter_common::lists`). Also the bounds on the text those entries carry
//! (comments, the service a reserve entry names) and how such text is shown.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
};

use limiter_common::{
    lists::{ListEntry, entry},
    prefix::Prefix,
};
use serde::{Deserialize, Serialize};

use crate::policy::service::{DEFAULT_BURST, MAX_BURST, Rate, Service};

/// Most entries the lists may ever hold: the largest `[maps] list_entries`
/// (`MapSizes::MAX`).
pub const MAX_ENTRIES: usize = 1 << 24;

/// Longest comment of a list entry, in bytes.
pub const MAX_COMMENT: usize = 200;

/// A comment is one line of at most [`MAX_COMMENT`] bytes without control
/// characters: it is printed to terminals and written into log lines.
///
/// # Errors
/// The reason, naming the comment as [`shown`] prints it.
pub fn check_comment(c: &str) -> Result<(), String> {
    if c.len() > MAX_COMMENT {
        return Err(format!("comment {}: expected at most {MAX_COMMENT} bytes", shown(c)));
    }
    if c.chars().any(char::is_control) {
        return Err(format!("comment {} has a control character: expected printable text on one line", shown(c)));
    }
    Ok(())
}

/// Longest service name, in bytes.
pub const MAX_SERVICE_NAME: usize = 32;

/// A service name is 1 to 32 bytes of letters, digits, '.', '-' and '_':
/// it is in every refusal line, metric label and table row.
///
/// # Errors
/// The reason, naming the name as [`shown`] prints it.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_SERVICE_NAME
        || !name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "service name {}: expected 1 to {MAX_SERVICE_NAME} letters, digits, '.', '-' and '_'",
            shown(name)
        ));
    }
    Ok(())
}

/// `text` quoted for a one-line message to a terminal: control characters
/// escaped, and cut after 40 characters with its length (a 10 MB name must
/// not make a 10 MB error line).
#[must_use]
pub fn shown(text: &str) -> String {
    const KEEP: usize = 40;
    let mut out = String::from("'");
    for (i, c) in text.chars().enumerate() {
        if i == KEEP {
            let _ = write!(out, "...' ({} bytes)", text.len());
            return out;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// `text` with control characters escaped, for printing a value that came
/// from a daemon (which may be older than these checks) to a terminal.
#[must_use]
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

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
    /// Connections over all services together (replaces the config's
    /// top-level `max_conn_per_source` for the entry's sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_conn_all_services: Option<u32>,
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
        self.max_conn_per_source.is_none() && self.max_conn_all_services.is_none() && self.rate.is_none()
    }
}

impl AllowEntry {
    /// What is wrong with the entry's values, as (field, message): the rules
    /// the config, the command line and `lists.json` share.
    #[must_use]
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let who = format!("allow {}: ", self.prefix);
        let mut out = Vec::new();
        if self.max_conn_per_source == Some(0) {
            out.push((
                "max_conn_per_source",
                format!(
                    "{who}max_conn_per_source = 0 would refuse the source: \
                     expected >= 1, or omit every limit to exempt it"
                ),
            ));
        }
        if self.max_conn_all_services == Some(0) {
            out.push((
                "max_conn_all_services",
                format!(
                    "{who}max_conn_all_services = 0 would refuse the source: \
                     expected >= 1, or omit it for no source-wide limit"
                ),
            ));
        }
        match (self.burst, self.rate) {
            (Some(b), None) => out.push((
                "burst",
                format!("{who}burst = {b} without rate: expected rate = \"N/s\" or \"N/m\" too, or no burst"),
            )),
            (Some(b), Some(_)) if b == 0 || b > MAX_BURST => {
                out.push(("burst", format!("{who}burst = {b}: expected 1..={MAX_BURST}")));
            }
            _ => {}
        }
        if let Some(Err(e)) = self.comment.as_deref().map(check_comment) {
            out.push(("comment", format!("{who}{e}")));
        }
        out
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

/// The config file's line of each entry of its [`Lists`], by list and
/// index (the line of the entry's `prefix`); `None` past the end, or for an
/// entry not read from a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListLines {
    pub allow: Vec<Option<usize>>,
    pub deny: Vec<Option<usize>>,
    pub reserve: Vec<Option<usize>>,
}

/// Burst of an allow entry with a rate but no burst: as for services.
fn allow_bucket(e: &AllowEntry) -> limiter_common::Bucket {
    e.rate.map_or(limiter_common::Bucket::UNLIMITED, |r| {
        let burst = e.burst.unwrap_or_else(|| r.count.min(DEFAULT_BURST));
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
        let replaced: HashSet<Cidr> = over.allow.iter().map(|a| a.prefix).collect();
        out.allow.retain(|b| !replaced.contains(&b.prefix));
        out.allow.extend(over.allow.iter().cloned());
        let mut deny: HashSet<Cidr> = out.deny.iter().map(|e| e.prefix).collect();
        out.deny.extend(over.deny.iter().filter(|d| deny.insert(d.prefix)).cloned());
        let mut reserve: HashSet<(Cidr, String)> = out.reserve.iter().map(|e| (e.prefix, e.service.clone())).collect();
        out.reserve.extend(over.reserve.iter().filter(|r| reserve.insert((r.prefix, r.service.clone()))).cloned());
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
        let deny = Covering::new(&self.deny, |d| d.prefix.0);
        let allow = Covering::new(&self.allow, |a| a.prefix.0);
        let reserve = Covering::new(&self.reserve, |r| r.prefix.0);
        // `prefixes` is sorted: the map is built from it in one pass, not
        // by an insert per entry.
        let entry = |p: Prefix| {
            let mut e = ListEntry::default();
            if deny.covering(&p).next().is_some() {
                e.flags |= entry::DENY;
            }
            // The longest allow entry covering p (the last of equal ones).
            if let Some(a) = allow.covering(&p).next().and_then(|entries| entries.last()) {
                e.flags |= entry::ALLOW;
                if a.is_exempt() {
                    e.flags |= entry::EXEMPT;
                } else {
                    let b = allow_bucket(a);
                    e.max_conn_per_source = a.max_conn_per_source.unwrap_or(0);
                    e.max_conn_all = a.max_conn_all_services.unwrap_or(0);
                    e.rate_interval_ns = b.interval_ns;
                    e.rate_tolerance_ns = b.tolerance_ns;
                }
            }
            for r in reserve.covering(&p).flatten() {
                if let Some(s) = services.iter().find(|s| s.name == r.service) {
                    e.reserve |= 1 << s.id;
                }
            }
            (p, e)
        };
        prefixes.into_iter().map(entry).collect()
    }
}

/// The entries of one list by prefix, with the prefix lengths in use, so
/// the entries covering a prefix take one look-up per length in use rather
/// than a scan of the list (60,000 deny entries merged in milliseconds, not
/// the minutes a scan per prefix took).
struct Covering<'a, T> {
    by_prefix: HashMap<Prefix, Vec<&'a T>>,
    /// (family, length) of the prefixes present, longest first per family.
    lens: Vec<(u8, u8)>,
}

impl<'a, T> Covering<'a, T> {
    fn new(items: &'a [T], prefix: impl Fn(&T) -> Prefix) -> Self {
        let mut by_prefix: HashMap<Prefix, Vec<&'a T>> = HashMap::new();
        for item in items {
            by_prefix.entry(prefix(item)).or_default().push(item);
        }
        let mut lens: Vec<(u8, u8)> = by_prefix.keys().map(|p| (p.family, p.len)).collect();
        lens.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        lens.dedup();
        Self { by_prefix, lens }
    }

    /// The entries of each prefix covering `p`, longest prefix first.
    fn covering<'s>(&'s self, p: &'s Prefix) -> impl Iterator<Item = &'s Vec<&'a T>> + 's {
        self.lens
            .iter()
            .filter(move |(family, len)| *family == p.family && *len <= p.len)
            .filter_map(move |(_, len)| self.by_prefix.get(&p.truncate(*len)))
    }
}

impl Lists {
    /// Entries that are legal but almost surely a mistake, as (index in
    /// `deny`, warning): a deny entry that covers every address of its
    /// family (`0.0.0.0/0`, `::/0`, `*`), and a deny entry with the same
    /// prefix as an allow entry (deny wins; the allow entry does nothing).
    #[must_use]
    pub fn footguns(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let allowed: HashSet<Cidr> = self.allow.iter().map(|a| a.prefix).collect();
        for (i, d) in self.deny.iter().enumerate() {
            if d.prefix.0.len == 0 {
                let family = if d.prefix.0.family == limiter_common::maps::family::V4 { "IPv4" } else { "IPv6" };
                out.push((
                    i,
                    format!(
                        "deny {} covers every {family} source: every connection to every service is refused",
                        d.prefix
                    ),
                ));
            }
            if allowed.contains(&d.prefix) {
                out.push((
                    i,
                    format!(
                        "{} is in both the allow and the deny list: deny wins, the allow entry has no effect",
                        d.prefix
                    ),
                ));
            }
        }
        out
    }

    /// Every problem of run-time entries read back from `lists.json`, one
    /// line each naming the entry: the rules the config file and the
    /// commands apply (services are checked against the config later).
    #[must_use]
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let total = self.allow.len() + self.deny.len() + self.reserve.len();
        // The kernel's room (`[maps] list_entries`) is checked when the
        // lists are written; this bounds what is read at all.
        if total > MAX_ENTRIES {
            out.push(format!("{total} entries: expected at most {MAX_ENTRIES} in all"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, e) in self.allow.iter().enumerate() {
            out.extend(e.problems().into_iter().map(|(field, m)| format!("allow[{i}].{field}: {m}")));
            if !seen.insert(e.prefix) {
                out.push(format!("allow[{i}]: allow {} listed twice: expected one entry per prefix", e.prefix));
            }
        }
        seen.clear();
        for (i, e) in self.deny.iter().enumerate() {
            if let Some(Err(m)) = e.comment.as_deref().map(check_comment) {
                out.push(format!("deny[{i}].comment: deny {}: {m}", e.prefix));
            }
            if !seen.insert(e.prefix) {
                out.push(format!("deny[{i}]: deny {} listed twice: expected one entry per prefix", e.prefix));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, e) in self.reserve.iter().enumerate() {
            if let Err(m) = check_service_name(&e.service) {
                out.push(format!("reserve[{i}].service: reserve {}: {m}", e.prefix));
            }
            if let Some(Err(m)) = e.comment.as_deref().map(check_comment) {
                out.push(format!("reserve[{i}].comment: reserve {}: {m}", e.prefix));
            }
            if !seen.insert((e.service.as_str(), e.prefix)) {
                out.push(format!(
                    "reserve[{i}]: reserve {} for {} listed twice: expected one entry per prefix and service",
                    e.prefix,
                    shown(&e.service)
                ));
            }
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

#[cfg(test)]
mod tests {
    use limiter_common::maps::family;
    use proptest::prelude::*;

    use super::*;
    use crate::policy::{
        respond::Respond,
        service::{Action, Service},
    };

    fn service(id: u32, name: &str) -> Service {
        Service {
            id,
            name: name.into(),
            ports: vec![25],
            rate: None,
            burst: 1,
            action: Action::Reset,
            max_conn_per_source: None,
            max_sessions: Some(10),
            reserved_sessions: 5,
            dead_peer_timeout: None,
            respond: Respond::default(),
        }
    }

    fn v4(a: [u8; 4], len: u8) -> Cidr {
        Cidr(Prefix::new(std::net::IpAddr::from(a), len))
    }

    #[test]
    fn merged_entries_answer_every_list() {
        let lists = Lists {
            allow: vec![
                AllowEntry {
                    prefix: v4([198, 18, 0, 0], 24),
                    max_conn_per_source: None,
                    max_conn_all_services: None,
                    rate: None,
                    burst: None,
                    comment: None,
                },
                AllowEntry {
                    prefix: v4([198, 18, 0, 32], 28),
                    max_conn_per_source: Some(3),
                    max_conn_all_services: None,
                    rate: None,
                    burst: None,
                    comment: None,
                },
            ],
            deny: vec![DenyEntry { prefix: v4([198, 18, 0, 66], 32), comment: None }],
            reserve: vec![ReserveEntry { service: "smtp".into(), prefix: v4([198, 18, 0, 0], 16), comment: None }],
        };
        let m = lists.merge(&[service(1, "smtp")]);
        let at = |a: [u8; 4]| longest_match(&m, &Prefix::new(std::net::IpAddr::from(a), 32)).expect("covered");
        assert_eq!(at([198, 18, 0, 66]).flags, entry::DENY | entry::ALLOW | entry::EXEMPT);
        assert_eq!(at([198, 18, 0, 40]).max_conn_per_source, 3);
        assert_eq!(at([198, 18, 0, 40]).flags, entry::ALLOW);
        assert_eq!(at([198, 18, 0, 40]).reserve, 1 << 1, "the /16 reserve entry reaches into the /28");
        assert_eq!(at([198, 18, 5, 1]).flags, 0, "only the reserve entry covers it");
        assert_eq!(longest_match(&m, &Prefix::new(std::net::IpAddr::from([10, 0, 0, 1]), 32)), None);
    }

    #[test]
    fn footguns_are_deny_everything_and_one_prefix_on_allow_and_deny() {
        let deny = |p: &str| DenyEntry { prefix: p.parse().expect("cidr"), comment: None };
        let allow = |p: &str| AllowEntry {
            prefix: p.parse().expect("cidr"),
            max_conn_per_source: None,
            max_conn_all_services: None,
            rate: None,
            burst: None,
            comment: None,
        };
        let l = Lists {
            allow: vec![allow("10.0.0.0/8"), allow("192.0.2.1")],
            deny: vec![deny("*"), deny("::/0"), deny("10.*"), deny("192.0.2.0/24"), deny("2001:db8::/32")],
            reserve: vec![],
        };
        let got: Vec<(usize, String)> = l.footguns();
        let idx: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, [0, 1, 2], "{got:?}");
        assert!(got[0].1.contains("0.0.0.0/0 covers every IPv4 source"), "{got:?}");
        assert!(got[1].1.contains("::/0 covers every IPv6 source"), "{got:?}");
        assert!(got[2].1.contains("10.0.0.0/8 is in both"), "{got:?}");
        // A layered view finds config + run-time pairs too.
        let config = Lists { allow: vec![allow("198.51.100.7")], ..Lists::default() };
        let runtime = Lists { deny: vec![deny("198.51.100.7/32")], ..Lists::default() };
        assert_eq!(config.layered(&runtime).footguns().len(), 1);
    }

    #[test]
    fn shown_is_short_and_printable() {
        assert_eq!(shown("smtp"), "'smtp'");
        assert_eq!(shown("a\u{1b}[2J"), "'a\\u{1b}[2J'");
        let s = shown(&"x".repeat(10 << 20));
        assert!(s.len() < 80 && s.ends_with("(10485760 bytes)"), "{s}");
        assert_eq!(printable("ok"), "ok");
        assert_eq!(printable("a\nb"), "a\\nb");
        assert!(check_comment(&"c".repeat(200)).is_ok());
        assert!(check_comment(&"c".repeat(201)).is_err());
        assert!(check_comment("tab\there").is_err());
    }

    fn prefix_strategy() -> impl Strategy<Value = Prefix> {
        // A small space (198.18.x.y, short and long prefixes) so entries overlap.
        (0u8..4, any::<u8>(), prop_oneof![Just(16u8), Just(22), Just(24), Just(28), Just(32)])
            .prop_map(|(c, d, len)| Prefix::new(std::net::IpAddr::from([198, 18, c, d]), len))
    }

    proptest! {
        /// The one-lookup merge answers each list as that list's own
        /// longest match would: deny if any deny entry covers the address,
        /// the longest covering allow entry's limits, every covering reserve
        /// entry's service.
        #[test]
        fn merge_agrees_with_each_list(
            allow in proptest::collection::vec((prefix_strategy(), proptest::option::of(1u32..50)), 0..6),
            deny in proptest::collection::vec(prefix_strategy(), 0..4),
            reserve in proptest::collection::vec((prefix_strategy(), 1u32..3), 0..4),
            addr in (0u8..4, any::<u8>()),
        ) {
            let services = [service(1, "smtp"), service(2, "imap")];
            let mut allow_entries: Vec<AllowEntry> = Vec::new();
            for (p, max) in allow {
                allow_entries.retain(|a| a.prefix.0 != p);
                allow_entries.push(AllowEntry { prefix: Cidr(p), max_conn_per_source: max, max_conn_all_services: None, rate: None, burst: None, comment: None });
            }
            let lists = Lists {
                allow: allow_entries,
                deny: deny.iter().map(|p| DenyEntry { prefix: Cidr(*p), comment: None }).collect(),
                reserve: reserve.iter().map(|(p, s)| ReserveEntry {
                    service: if *s == 1 { "smtp".into() } else { "imap".into() }, prefix: Cidr(*p), comment: None,
                }).collect(),
            };
            let a = Prefix::new(std::net::IpAddr::from([198, 18, addr.0, addr.1]), 32);
            prop_assert_eq!(a.family, family::V4);
            let got = longest_match(&lists.merge(&services), &a).unwrap_or_default();

            let denied = lists.deny.iter().any(|d| d.prefix.0.covers(&a));
            prop_assert_eq!(got.flags & entry::DENY != 0, denied);
            let allow = lists.allow.iter().filter(|e| e.prefix.0.covers(&a)).max_by_key(|e| e.prefix.0.len);
            prop_assert_eq!(got.flags & entry::ALLOW != 0, allow.is_some());
            if let Some(e) = allow {
                prop_assert_eq!(got.flags & entry::EXEMPT != 0, e.is_exempt());
                prop_assert_eq!(got.max_conn_per_source, e.max_conn_per_source.unwrap_or(0));
            }
            let mut want = 0u32;
            for r in lists.reserve.iter().filter(|r| r.prefix.0.covers(&a)) {
                want |= 1 << if r.service == "smtp" { 1 } else { 2 };
            }
            prop_assert_eq!(got.reserve, want);
        }
    }
}
