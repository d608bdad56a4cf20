//! The policy in force: the config's with the run-time entries layered on,
//! its lists merged as the kernel's `LISTS` bank holds them, and the
//! footguns it has. Built whole at the start and on a reload. A list change
//! touches one prefix, and recomputes only what lies under it: its cost
//! follows the entries related to that prefix, not the size of the lists
//! (with 100,000 entries, a whole merge took a hundred milliseconds).

use std::collections::BTreeMap;

use limiter_common::{lists::ListEntry, maps::family, prefix::Prefix};

use crate::policy::{lists::Lists, model::Policy};

/// `config` with `runtime` layered on: a run-time allow entry replaces the
/// config's of its prefix, a run-time deny or reserve entry the config has
/// already adds nothing, and run-time reserve entries of services the config
/// lacks are left out.
#[must_use]
pub fn layered(config: &Policy, runtime: &Lists) -> Policy {
    let mut runtime = runtime.clone();
    runtime.reserve.retain(|r| config.services.iter().any(|s| s.name == r.service));
    config.with_lists(config.lists.layered(&runtime))
}

/// The policy in force, kept between list changes.
#[derive(Debug, Clone)]
pub struct Force {
    /// The config's policy with the run-time entries layered on.
    pub policy: Policy,
    /// `policy.lists` merged (`Lists::merge`).
    pub merged: BTreeMap<Prefix, ListEntry>,
    /// The footguns of each prefix that has one (`Lists::footguns`).
    footguns: BTreeMap<Prefix, Vec<String>>,
}

/// The entries of one prefix, in force after a list change, and what
/// follows from them: made by [`Force::change`], put in force by
/// [`Force::apply`] (which gives back the change that undoes it).
#[derive(Debug, Clone)]
pub struct Change {
    /// The prefix whose entries changed.
    pub prefix: Prefix,
    /// Its entries in force (only entries of `prefix`).
    lists: Lists,
    /// The merged entries under `prefix`.
    merged: BTreeMap<Prefix, ListEntry>,
    /// The footguns of `prefix`.
    pub footguns: Vec<String>,
}

impl Force {
    /// The policy in force for `config` and `runtime`, built whole.
    #[must_use]
    pub fn new(config: &Policy, runtime: &Lists) -> Self {
        Self::of(layered(config, runtime))
    }

    /// `policy` as the policy in force (its lists already layered).
    #[must_use]
    pub fn of(policy: Policy) -> Self {
        let merged = policy.lists.merge(&policy.services);
        let mut footguns: BTreeMap<Prefix, Vec<String>> = BTreeMap::new();
        for (i, w) in policy.lists.footguns() {
            footguns.entry(policy.lists.deny[i].prefix.0).or_default().push(w);
        }
        Self { policy, merged, footguns }
    }

    /// Every footgun in force, by prefix.
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        self.footguns.values().flatten().cloned().collect()
    }

    /// The footguns of `prefix` now.
    #[must_use]
    pub fn footguns_of(&self, prefix: &Prefix) -> &[String] {
        self.footguns.get(prefix).map_or(&[], Vec::as_slice)
    }

    /// What changes when the run-time entries become `runtime`, which
    /// differs from the run-time entries in force only in entries of
    /// `prefix` (one `allow`, `deny` or `reserve` add or del). `config` is
    /// the config layer this policy was built from.
    #[must_use]
    pub fn change(&self, config: &Policy, runtime: &Lists, prefix: Prefix) -> Change {
        let of = |p: Prefix| p == prefix;
        let config_p = Lists {
            allow: config.lists.allow.iter().filter(|e| of(e.prefix.0)).cloned().collect(),
            deny: config.lists.deny.iter().filter(|e| of(e.prefix.0)).cloned().collect(),
            reserve: config.lists.reserve.iter().filter(|e| of(e.prefix.0)).cloned().collect(),
        };
        let mut runtime_p = Lists {
            allow: runtime.allow.iter().filter(|e| of(e.prefix.0)).cloned().collect(),
            deny: runtime.deny.iter().filter(|e| of(e.prefix.0)).cloned().collect(),
            reserve: runtime.reserve.iter().filter(|e| of(e.prefix.0)).cloned().collect(),
        };
        runtime_p.reserve.retain(|r| config.services.iter().any(|s| s.name == r.service));
        let lists = config_p.layered(&runtime_p);
        let footguns = lists.footguns().into_iter().map(|(_, w)| w).collect();

        // Every entry covering a prefix under `prefix` either covers
        // `prefix` or lies under it: those entries decide the merge there.
        let related = |p: &Prefix| p != &prefix && (p.covers(&prefix) || prefix.covers(p));
        let l = &self.policy.lists;
        let mut around = Lists {
            allow: l.allow.iter().filter(|e| related(&e.prefix.0)).cloned().collect(),
            deny: l.deny.iter().filter(|e| related(&e.prefix.0)).cloned().collect(),
            reserve: l.reserve.iter().filter(|e| related(&e.prefix.0)).cloned().collect(),
        };
        around.allow.extend(lists.allow.iter().cloned());
        around.deny.extend(lists.deny.iter().cloned());
        around.reserve.extend(lists.reserve.iter().cloned());
        let mut merged = around.merge(&self.policy.services);
        merged.retain(|p, _| prefix.covers(p));
        Change { prefix, lists, merged, footguns }
    }

    /// Puts `change` in force; returns the change that puts back what was.
    pub fn apply(&mut self, change: Change) -> Change {
        let Change { prefix, lists, merged, footguns } = change;
        let l = &mut self.policy.lists;
        let mut old = Lists::default();
        let of = |p: Prefix| p == prefix;
        // Each list in force has its entries of `prefix` taken out and the
        // new ones put at its end (the order `Lists::layered` gives may
        // differ; nothing reads the order).
        let (allow, deny, reserve) =
            (std::mem::take(&mut l.allow), std::mem::take(&mut l.deny), std::mem::take(&mut l.reserve));
        (old.allow, l.allow) = allow.into_iter().partition(|e| of(e.prefix.0));
        (old.deny, l.deny) = deny.into_iter().partition(|e| of(e.prefix.0));
        (old.reserve, l.reserve) = reserve.into_iter().partition(|e| of(e.prefix.0));
        l.allow.extend(lists.allow);
        l.deny.extend(lists.deny);
        l.reserve.extend(lists.reserve);

        let under: Vec<Prefix> = under(&self.merged, &prefix).map(|(p, _)| *p).collect();
        let mut old_merged = BTreeMap::new();
        for p in under {
            if let Some(e) = self.merged.remove(&p) {
                old_merged.insert(p, e);
            }
        }
        self.merged.extend(merged);

        let old_footguns =
            if footguns.is_empty() { self.footguns.remove(&prefix) } else { self.footguns.insert(prefix, footguns) };
        Change { prefix, lists: old, merged: old_merged, footguns: old_footguns.unwrap_or_default() }
    }
}

/// The entries of `map` whose prefix `region` covers, in order.
pub fn under<'a, V>(map: &'a BTreeMap<Prefix, V>, region: &'a Prefix) -> impl Iterator<Item = (&'a Prefix, &'a V)> {
    let first = Prefix { len: 0, ..*region };
    let last = Prefix { addr: last_address(region), len: u8::MAX, ..*region };
    map.range(first..=last).filter(move |(p, _)| region.covers(p))
}

/// The last address of `p` (its host bits set).
fn last_address(p: &Prefix) -> [u8; 16] {
    let bits = if p.family == family::V4 { 32 } else { 128 };
    let mut addr = p.addr;
    for bit in usize::from(p.len)..bits {
        addr[bit / 8] |= 0x80 >> (bit % 8);
    }
    addr
}

/// True when `map` has a prefix of `family`.
#[must_use]
pub fn has_family<V>(map: &BTreeMap<Prefix, V>, family: u8) -> bool {
    map.range(Prefix { family, addr: [0; 16], len: 0 }..).next().is_some_and(|(p, _)| p.family == family)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::policy::{
        build::builtin_services,
        file::ConfigFile,
        lists::{AllowEntry, Cidr, DenyEntry, ReserveEntry},
        model::Overrides,
    };

    fn config(lists: Lists) -> Policy {
        let file = ConfigFile { interfaces: vec!["eth0".into()], services: builtin_services(), ..Default::default() };
        let mut p = Policy::build(file, &Overrides::default()).expect("valid");
        for (i, s) in p.services.iter_mut().enumerate() {
            s.id = u32::try_from(i).expect("few") + 1;
        }
        p.with_lists(lists)
    }

    fn sorted(l: &Lists) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut a: Vec<String> = l.allow.iter().map(|e| format!("{e:?}")).collect();
        let mut d: Vec<String> = l.deny.iter().map(|e| format!("{e:?}")).collect();
        let mut r: Vec<String> = l.reserve.iter().map(|e| format!("{e:?}")).collect();
        a.sort();
        d.sort();
        r.sort();
        (a, d, r)
    }

    fn assert_same(got: &Force, want: &Force) {
        assert_eq!(sorted(&got.policy.lists), sorted(&want.policy.lists), "lists in force");
        assert_eq!(got.merged, want.merged, "merged");
        let (mut g, mut w) = (got.warnings(), want.warnings());
        g.sort();
        w.sort();
        assert_eq!(g, w, "footguns");
    }

    #[test]
    fn under_finds_the_prefixes_a_region_covers() {
        let p = |s: &str| Prefix::parse(s).expect("prefix");
        let map: BTreeMap<Prefix, u8> = [
            "198.18.0.0/15",
            "198.18.0.0/16",
            "198.18.0.0/24",
            "198.18.255.255",
            "198.19.0.0/16",
            "2001:db8::/32",
            "0.0.0.0/0",
        ]
        .into_iter()
        .map(|s| (p(s), 0))
        .collect();
        let got: Vec<String> = under(&map, &p("198.18.0.0/16")).map(|(k, _)| k.to_string()).collect();
        assert_eq!(got, ["198.18.0.0/16", "198.18.0.0/24", "198.18.255.255/32"]);
        assert_eq!(under(&map, &p("0.0.0.0/0")).count(), 6);
        assert_eq!(under(&map, &p("::/0")).count(), 1);
        assert!(has_family(&map, family::V4) && has_family(&map, family::V6));
        let v6: BTreeMap<Prefix, u8> = [(p("2001:db8::/32"), 0)].into();
        assert!(!has_family(&v6, family::V4) && has_family(&v6, family::V6));
    }

    fn prefix() -> impl Strategy<Value = Prefix> {
        // A small space so that entries nest and repeat.
        prop_oneof![
            (0u8..4, any::<u8>(), prop_oneof![Just(0u8), Just(15), Just(16), Just(24), Just(30), Just(32)])
                .prop_map(|(c, d, len)| Prefix::new(std::net::IpAddr::from([198, 18 + (c & 1), c, d]), len)),
            (any::<u8>(), prop_oneof![Just(0u8), Just(32), Just(48), Just(64), Just(128)]).prop_map(|(d, len)| {
                Prefix::new(std::net::IpAddr::from([0x2001, 0xdb8, 0, u16::from(d & 3), 0, 0, 0, u16::from(d)]), len)
            }),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allow(Prefix, Option<u32>),
        Deny(Prefix),
        Reserve(Prefix, &'static str),
        DelAllow(Prefix),
        DelDeny(Prefix),
        DelReserve(Prefix, &'static str),
    }

    fn op() -> impl Strategy<Value = Op> {
        let service = prop_oneof![Just("smtp"), Just("imap"), Just("gone")];
        prop_oneof![
            (prefix(), proptest::option::of(1u32..9)).prop_map(|(p, m)| Op::Allow(p, m)),
            prefix().prop_map(Op::Deny),
            (prefix(), service.clone()).prop_map(|(p, s)| Op::Reserve(p, s)),
            prefix().prop_map(Op::DelAllow),
            prefix().prop_map(Op::DelDeny),
            (prefix(), service).prop_map(|(p, s)| Op::DelReserve(p, s)),
        ]
    }

    fn allow(p: Prefix, max: Option<u32>) -> AllowEntry {
        AllowEntry {
            prefix: Cidr(p),
            max_conn_per_source: max,
            max_conn_all_services: None,
            rate: None,
            burst: None,
            comment: None,
        }
    }

    /// `runtime` after `op`, as the daemon's `allow|deny|reserve add|del` make it.
    fn run(runtime: &mut Lists, op: &Op) -> Prefix {
        match op.clone() {
            Op::Allow(p, m) => {
                runtime.allow.retain(|e| e.prefix.0 != p);
                runtime.allow.push(allow(p, m));
                p
            }
            Op::Deny(p) => {
                runtime.deny.retain(|e| e.prefix.0 != p);
                runtime.deny.push(DenyEntry { prefix: Cidr(p), comment: None });
                p
            }
            Op::Reserve(p, s) => {
                runtime.reserve.retain(|e| e.prefix.0 != p || e.service != s);
                runtime.reserve.push(ReserveEntry { service: s.into(), prefix: Cidr(p), comment: None });
                p
            }
            Op::DelAllow(p) => {
                runtime.allow.retain(|e| e.prefix.0 != p);
                p
            }
            Op::DelDeny(p) => {
                runtime.deny.retain(|e| e.prefix.0 != p);
                p
            }
            Op::DelReserve(p, s) => {
                runtime.reserve.retain(|e| e.prefix.0 != p || e.service != s);
                p
            }
        }
    }

    proptest! {
        /// After any sequence of list changes, the policy in force kept
        /// one prefix at a time is the one built whole; each change's undo
        /// puts back the policy before it.
        #[test]
        fn a_change_at_a_time_is_the_whole_build(
            config_ops in proptest::collection::vec(op(), 0..12),
            ops in proptest::collection::vec(op(), 1..12),
        ) {
            let mut config_lists = Lists::default();
            for o in &config_ops {
                if !matches!(o, Op::Reserve(_, "gone")) {
                    run(&mut config_lists, o);
                }
            }
            let config = config(config_lists);
            let mut runtime = Lists::default();
            let mut force = Force::new(&config, &runtime);
            for o in &ops {
                let before = force.clone();
                let p = run(&mut runtime, o);
                let change = force.change(&config, &runtime, p);
                let undo = force.apply(change);
                assert_same(&force, &Force::new(&config, &runtime));
                let mut back = force.clone();
                back.apply(undo);
                assert_same(&back, &before);
            }
        }
    }
}
