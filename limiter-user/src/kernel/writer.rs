//! The one writer of the policy maps: `GLOBALS`, `PORTS`, `POLICY`, `LISTS`,
//! `LIST_HOSTS` and `LIST_FILTER` (in two banks, flipped by one `GLOBALS`
//! write). The seeding flags
//! in `GLOBALS` are written here too, on the seeding's behalf.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd as _, OwnedFd},
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use limiter_common::{
    Globals, ServicePolicy, filter,
    lists::{KEY_BYTES, ListEntry, key_data, key_len},
    maps::{MAX_SERVICES, PORT_ENTRIES, action, family, flags, host_len, layout, names, policy_index},
    prefix::Prefix,
};
use log::warn;

use crate::{
    kernel::{
        batch,
        error::LoadError,
        host::netns_cookie,
        maps::{batch_err, map_err, map_size, own, own_fd},
    },
    policy::{
        force::{has_family, under},
        model::Policy,
        service::{Action, Service},
    },
};

/// Writes the policy with a writer that knows nothing yet of what the maps
/// hold (it reads them first): for tests and one-off tools. The daemon
/// keeps one [`PolicyWriter`] for its whole run.
pub fn write_policy(ebpf: &Ebpf, policy: &Policy) -> Result<(), LoadError> {
    PolicyWriter::new(ebpf)?.write(policy)
}

/// Sets or clears bits of `Globals::flags` with a writer of its own: for
/// tests and one-off tools.
pub fn set_flags(ebpf: &Ebpf, set: u8, clear: u8) -> Result<(), LoadError> {
    PolicyWriter::new(ebpf)?.set_flags(set, clear)
}

/// What the writer last wrote or read: `PORTS` and each `LISTS` bank.
#[derive(Debug, Default)]
struct Written {
    ports: Option<Vec<u32>>,
    banks: [Option<BTreeMap<Prefix, ListEntry>>; 2],
    /// The prefixes whose entries differ between the two banks, when both
    /// are known: what a bank must catch up on besides a change's own.
    differs: Option<BTreeSet<Prefix>>,
    /// Each bank's `LIST_FILTER` (header, words) as last written, when known.
    filters: [Option<(u64, Vec<u64>)>; 2],
}

/// The writer of the policy maps (`POLICY`, `LISTS`, `GLOBALS`, `PORTS`).
/// It remembers what it last wrote to each, so a change costs map writes
/// in proportion to what changed: one `allow add` is a handful of `bpf()`
/// calls whatever the size of the lists, where reading the whole trie and
/// port table back cost tens of thousands.
pub struct PolicyWriter {
    globals: Array<MapData, Globals>,
    ports: Array<MapData, u32>,
    policy: Array<MapData, ServicePolicy>,
    lists: ListMaps,
    filter: Array<MapData, u64>,
    /// `LIST_FILTER` again, for batched reads.
    filter_fd: OwnedFd,
    /// Sizes the maps were created with (a pinned map keeps its own).
    conns_size: u32,
    pending_slots: u32,
    /// Entries of one `LISTS` bank: half the trie's.
    list_room: u32,
    written: Written,
}

impl PolicyWriter {
    /// Takes the writer's handles on its maps.
    pub fn new(ebpf: &Ebpf) -> Result<Self, LoadError> {
        // The slot hash must use the real slot count.
        let pending_slots = map_size(ebpf, names::PENDING)?;
        if !pending_slots.is_power_of_two() || pending_slots < 2 {
            return Err(LoadError::Incompatible(format!("{} has {pending_slots} slots", names::PENDING)));
        }
        Ok(Self {
            globals: own(ebpf, names::GLOBALS)?,
            ports: own(ebpf, names::PORTS)?,
            policy: own(ebpf, names::POLICY)?,
            lists: ListMaps {
                trie: own(ebpf, names::LISTS)?,
                hosts: own(ebpf, names::LIST_HOSTS)?,
                hosts_fd: own_fd(ebpf, names::LIST_HOSTS)?,
            },
            filter: own(ebpf, names::LIST_FILTER)?,
            filter_fd: own_fd(ebpf, names::LIST_FILTER)?,
            conns_size: map_size(ebpf, names::CONNS)?,
            pending_slots,
            list_room: map_size(ebpf, names::LISTS)? / 2,
            written: Written::default(),
        })
    }

    /// Tells the writer which of its maps this load created, so empty: it
    /// records them as such instead of reading them back on the first write.
    pub fn created(&mut self, ports: bool, lists: bool) {
        if ports {
            self.written.ports = Some(vec![0; PORT_ENTRIES as usize]);
        }
        if lists {
            self.written.banks = [Some(BTreeMap::new()), Some(BTreeMap::new())];
            self.written.differs = Some(BTreeSet::new());
        }
    }

    /// Readies `LIST_FILTER` at a start. Created by this load, it is known
    /// (zero, both headers invalid). Pinned, it may be a filter another
    /// build left (a downgrade that did not know it, then an upgrade): both
    /// headers are cleared, which sends every source to the trie (slower,
    /// never wrong) until the writer has written a bank's filter whole. Its
    /// words are then read back in a few batched calls, so that writing a
    /// bank's filter costs one `bpf()` call per word that differs, not one
    /// per word (65,536 at a restart).
    pub fn start_filters(&mut self, created: bool) -> Result<(), LoadError> {
        if created {
            self.written.filters =
                [Some((0, vec![0; filter::WORDS as usize])), Some((0, vec![0; filter::WORDS as usize]))];
            return Ok(());
        }
        let name = names::LIST_FILTER;
        for bank in [0, 1] {
            self.filter.set(filter::header_index(bank), 0, 0).map_err(map_err(name))?;
        }
        self.written.filters = [None, None];
        // Without batched lookups (before Linux 5.6) the first write of each
        // bank writes every word.
        let Some(all) = batch::map_entries::<u32, u64>(self.filter_fd.as_fd()).map_err(batch_err(name))? else {
            return Ok(());
        };
        let mut words = [vec![0u64; filter::WORDS as usize], vec![0u64; filter::WORDS as usize]];
        let mut seen = 0;
        for (i, w) in all {
            for bank in [0u8, 1] {
                let first = filter::header_index(bank) + 1;
                if (first..first + filter::WORDS).contains(&i) {
                    words[usize::from(bank)][(i - first) as usize] = w;
                    seen += 1;
                }
            }
        }
        // An array's batch lists every index; anything less is not a read to trust.
        if seen == 2 * filter::WORDS {
            let [w0, w1] = words;
            self.written.filters = [Some((0, w0)), Some((0, w1))];
        }
        Ok(())
    }

    /// `GLOBALS` as the programs read it.
    pub fn globals(&self) -> Result<Globals, LoadError> {
        self.globals.get(&0, 0).map_err(map_err(names::GLOBALS))
    }

    /// Sets or clears bits of `Globals::flags` (the seeding's flags).
    pub fn set_flags(&mut self, set: u8, clear: u8) -> Result<(), LoadError> {
        let mut g = self.globals()?;
        g.flags = (g.flags | set) & !clear;
        self.globals.set(0, g, 0).map_err(map_err(names::GLOBALS))
    }

    /// Writes the policy: the service policies and the merged lists into the
    /// bank not in force, then flips `GLOBALS` to it in one write (a SYN sees
    /// the old policy or the new one, never a mix), then the port table (each
    /// port switches in one write). `policy.lists` must be the lists in force:
    /// the config's with the run-time entries layered on.
    ///
    /// Only the entries that differ from what the maps hold are written. If a
    /// write fails midway the writer forgets what it knew and reads the maps
    /// again next time.
    pub fn write(&mut self, policy: &Policy) -> Result<(), LoadError> {
        self.write_merged(policy, &policy.lists.merge(&policy.services), None)
    }

    /// [`Self::write`] with the lists already merged: `merged` is
    /// `policy.lists.merge(..)`. With a `region`, `merged` differs from what
    /// the writer last wrote only in prefixes the region covers (one list
    /// change): the bank is brought up to date there and where it lagged
    /// the other, not compared whole.
    pub fn write_merged(
        &mut self,
        policy: &Policy,
        merged: &BTreeMap<Prefix, ListEntry>,
        region: Option<Prefix>,
    ) -> Result<(), LoadError> {
        // Checked before anything is written: the policy in force stays whole.
        if merged.len() > self.list_room as usize {
            return Err(LoadError::TooManyEntries { need: merged.len(), room: self.list_room });
        }
        let r = self.write_inner(policy, merged, region);
        if r.is_err() {
            self.written = Written::default();
        }
        r
    }

    fn write_inner(
        &mut self,
        policy: &Policy,
        merged: &BTreeMap<Prefix, ListEntry>,
        region: Option<Prefix>,
    ) -> Result<(), LoadError> {
        for (name, have, want) in [
            (names::CONNS, self.conns_size, policy.maps.connections),
            (names::PENDING, self.pending_slots, policy.maps.pending_slots),
            (names::LISTS, self.list_room, policy.maps.list_entries),
        ] {
            if have != want {
                warn!(
                    "map {name} is pinned with {have} entries; the configured {want} takes effect after `limiter \
                     unload`"
                );
            }
        }
        let old = self.globals()?;
        let to_b = old.flags & flags::BANK_B == 0;
        let target = u8::from(to_b);
        // A SYN that read the bank bit just before the last flip may still be
        // reading this bank: programs run for microseconds, give them far more.
        settle_after_flip();

        // Entry 0 of a bank, no service's: the source-wide budget.
        let all =
            ServicePolicy { max_conn_per_source: policy.max_conn_all_services.unwrap_or(0), ..Default::default() };
        self.policy.set(policy_index(target, 0), all, 0).map_err(map_err(names::POLICY))?;
        for id in 1..=MAX_SERVICES {
            let sp = policy.services.iter().find(|s| s.id == id).map(service_policy).unwrap_or_default();
            self.policy.set(policy_index(target, id), sp, 0).map_err(map_err(names::POLICY))?;
        }
        match region {
            Some(region) if self.written.differs.is_some() => self.write_region(target, merged, &region)?,
            _ => self.write_lists(target, merged)?,
        }
        self.write_filter(target, merged)?;

        // The seeding flags belong to the seeding (which may outlive a restart):
        // keep them. A new generation invalidates every "at its limit" hint.
        let mut flags_new = old.flags & !(flags::BANK_B | flags::LISTS | flags::LISTS_V6);
        if to_b {
            flags_new |= flags::BANK_B;
        }
        if has_family(merged, family::V4) {
            flags_new |= flags::LISTS;
        }
        if has_family(merged, family::V6) {
            flags_new |= flags::LISTS_V6;
        }
        self.globals
            .set(
                0,
                Globals {
                    netns_cookie: netns_cookie()?,
                    pending_mask: self.pending_slots - 1,
                    ipv4_prefix: policy.ipv4_prefix,
                    ipv6_prefix: policy.ipv6_prefix,
                    flags: flags_new,
                    layout: layout::HOSTS,
                    generation: old.generation.wrapping_add(1),
                    pad2: [0; 2],
                },
                0,
            )
            .map_err(map_err(names::GLOBALS))?;
        *LAST_FLIP.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now());
        self.write_ports(port_table(policy))?;
        if region.is_none() {
            self.catch_up(1 - target, merged);
        }
        Ok(())
    }

    /// After a whole write (start, reload), brings the bank no longer in
    /// force up to the one in force, so that the next list change writes only
    /// what it changes: after a start with 100,000 entries the other bank is
    /// empty, and the first `allow add` would otherwise write all of them
    /// (200 ms). The policy is in force already: a failure here only makes
    /// the writer read the maps again next time.
    fn catch_up(&mut self, bank: u8, merged: &BTreeMap<Prefix, ListEntry>) {
        if self.written.differs.as_ref().is_some_and(BTreeSet::is_empty) {
            return;
        }
        settle_after_flip();
        if let Err(e) = self.write_lists(bank, merged).and_then(|()| self.write_filter(bank, merged)) {
            warn!("the policy is in force; bringing the other bank up to it failed ({e}): the next change writes it");
            self.written = Written::default();
        }
    }

    /// Makes `bank`'s `LIST_FILTER` the filter of `merged` (the bank is not
    /// in force): its words first, then its header. Only the words that
    /// differ from what the bank holds are written; the first time a bank is
    /// written in this run, every word (a pin may hold an older filter).
    /// Empty lists leave the filter alone: XDP does not look them up.
    fn write_filter(&mut self, bank: u8, merged: &BTreeMap<Prefix, ListEntry>) -> Result<(), LoadError> {
        if merged.is_empty() {
            return Ok(());
        }
        let (header, words) = filter_of(merged);
        let name = names::LIST_FILTER;
        let at = filter::header_index(bank);
        let have = self.written.filters[usize::from(bank)].take();
        let old_words = have.as_ref().map(|(_, w)| w.as_slice());
        for (i, &w) in (0u32..).zip(&words) {
            if old_words.is_none_or(|old| old[i as usize] != w) {
                self.filter.set(at + 1 + i, w, 0).map_err(map_err(name))?;
            }
        }
        if have.as_ref().is_none_or(|(h, _)| *h != header) {
            self.filter.set(at, header, 0).map_err(map_err(name))?;
        }
        self.written.filters[usize::from(bank)] = Some((header, words));
        Ok(())
    }

    /// Makes `PORTS` hold `table`. The map may be a pin from an earlier run,
    /// so the first call reads it whole; a port dropped from the policy is
    /// unprotected again.
    fn write_ports(&mut self, table: Vec<u32>) -> Result<(), LoadError> {
        let have = match self.written.ports.take() {
            Some(have) => have,
            None => self.ports.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(names::PORTS))?,
        };
        for ((port, &id), &old) in (0u32..).zip(&table).zip(&have) {
            if id != old {
                self.ports.set(port, id, 0).map_err(map_err(names::PORTS))?;
            }
        }
        self.written.ports = Some(table);
        Ok(())
    }

    /// Makes `bank` of the `LISTS` trie hold exactly `merged`, touching only
    /// what differs: a walk of the two sorted maps (what the bank holds and
    /// what it should), no hashing of every entry. The first call for a bank
    /// reads it whole, unless this load created the trie.
    fn write_lists(&mut self, bank: u8, merged: &BTreeMap<Prefix, ListEntry>) -> Result<(), LoadError> {
        let maps = &mut self.lists;
        let have = match self.written.banks[usize::from(bank)].take() {
            Some(have) => have,
            None => maps.read(bank)?,
        };
        let (mut old, mut new) = (have.iter().peekable(), merged.iter().peekable());
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some((p, _)), None) => {
                    maps.put(bank, p, None)?;
                    old.next();
                }
                (None, Some((p, e))) => {
                    maps.put(bank, p, Some(e))?;
                    new.next();
                }
                (Some((po, eo)), Some((pn, en))) => match po.cmp(pn) {
                    std::cmp::Ordering::Less => {
                        maps.put(bank, po, None)?;
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        maps.put(bank, pn, Some(en))?;
                        new.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if eo != en {
                            maps.put(bank, pn, Some(en))?;
                        }
                        old.next();
                        new.next();
                    }
                },
            }
        }
        let b = usize::from(bank);
        self.written.banks[b] = Some(merged.clone());
        // The other bank is the one in force until the flip.
        self.written.differs = self.written.banks[1 - b].as_ref().map(|other| differing(other, merged));
        Ok(())
    }

    /// Makes `bank` hold `merged`, which differs from the other bank (in
    /// force) only in prefixes `region` covers: the bank is written where
    /// it lagged the other bank and under the region, nowhere else.
    fn write_region(
        &mut self,
        bank: u8,
        merged: &BTreeMap<Prefix, ListEntry>,
        region: &Prefix,
    ) -> Result<(), LoadError> {
        let b = usize::from(bank);
        let (Some(differs), [Some(_), Some(_)]) = (self.written.differs.take(), &self.written.banks) else {
            return self.write_lists(bank, merged);
        };
        let [bank0, bank1] = &mut self.written.banks;
        let (Some(this), Some(other)) = (if b == 0 { (bank0, bank1) } else { (bank1, bank0) }) else {
            unreachable!("both banks are known: checked above");
        };
        let mut touched = differs;
        touched.extend(under(other, region).map(|(p, _)| *p));
        touched.extend(under(merged, region).map(|(p, _)| *p));
        let mut differs = BTreeSet::new();
        for p in touched {
            let want = merged.get(&p);
            if want != this.get(&p) {
                self.lists.put(bank, &p, want)?;
                if let Some(e) = want {
                    this.insert(p, *e);
                } else {
                    this.remove(&p);
                }
            }
            if want != other.get(&p) {
                differs.insert(p);
            }
        }
        self.written.differs = Some(differs);
        Ok(())
    }
}

/// The maps that hold a bank's merged lists between them: host entries in
/// `LIST_HOSTS`, the rest in the `LISTS` trie (`maps::host_len`).
struct ListMaps {
    trie: LpmTrie<MapData, [u8; KEY_BYTES], ListEntry>,
    hosts: HashMap<MapData, [u8; KEY_BYTES], ListEntry>,
    /// `LIST_HOSTS` again, for batched reads.
    hosts_fd: OwnedFd,
}

impl ListMaps {
    /// Writes `p`'s entry of `bank` (`None` removes it) in the map that keeps it.
    fn put(&mut self, bank: u8, p: &Prefix, e: Option<&ListEntry>) -> Result<(), LoadError> {
        let data = key_data(bank, p.family, &p.addr);
        if p.len == host_len(p.family) {
            let name = names::LIST_HOSTS;
            match e {
                Some(e) => self.hosts.insert(data, *e, 0).map_err(map_err(name)),
                None => self.hosts.remove(&data).map_err(map_err(name)),
            }
        } else {
            let (name, key) = (names::LISTS, Key::new(key_len(p.len), data));
            match e {
                Some(e) => self.trie.insert(&key, *e, 0).map_err(map_err(name)),
                None => self.trie.remove(&key).map_err(map_err(name)),
            }
        }
    }

    /// What `bank` (not in force) holds, read whole. Host entries a version
    /// before `LIST_HOSTS` left in the trie are removed from it as they are
    /// found, and so not counted: the bank's write puts them where this
    /// layout keeps them.
    fn read(&mut self, bank: u8) -> Result<BTreeMap<Prefix, ListEntry>, LoadError> {
        let mut have = BTreeMap::new();
        let mut strays = Vec::new();
        for (k, e) in self.trie.iter().filter_map(Result::ok).filter(|(k, _)| k.data()[0] == bank) {
            let p = prefix_of(k.prefix_len(), &k.data());
            if p.len == host_len(p.family) {
                strays.push(k);
            } else {
                have.insert(p, e);
            }
        }
        for k in &strays {
            self.trie.remove(k).map_err(map_err(names::LISTS))?;
        }
        let name = names::LIST_HOSTS;
        let hosts = match batch::map_entries::<[u8; KEY_BYTES], ListEntry>(self.hosts_fd.as_fd()) {
            Ok(Some(all)) => all,
            Ok(None) => self.hosts.iter().collect::<Result<_, _>>().map_err(map_err(name))?,
            Err(e) => return Err(batch_err(name)(e)),
        };
        for (data, e) in hosts.into_iter().filter(|(d, _)| d[0] == bank) {
            have.insert(prefix_of(key_len(host_len(data[1])), &data), e);
        }
        Ok(have)
    }
}

/// The filter of `merged` (`limiter_common::filter`): its header and words.
fn filter_of(merged: &BTreeMap<Prefix, ListEntry>) -> (u64, Vec<u64>) {
    let shortest = |fam| merged.keys().filter(|p| p.family == fam).map(|p| p.len).min().unwrap_or(0);
    let header = filter::header(
        filter::level_for(family::V4, shortest(family::V4)),
        filter::level_for(family::V6, shortest(family::V6)),
    );
    let mut words = vec![0u64; filter::WORDS as usize];
    for p in merged.keys() {
        let (w, bits) = filter::place(filter::hash(p.family, &p.addr, filter::level(header, p.family)));
        words[w as usize] |= bits;
    }
    (header, words)
}

/// The prefixes whose entries differ between `a` and `b`.
fn differing(a: &BTreeMap<Prefix, ListEntry>, b: &BTreeMap<Prefix, ListEntry>) -> BTreeSet<Prefix> {
    let mut out: BTreeSet<Prefix> = a.iter().filter(|(p, e)| b.get(p) != Some(e)).map(|(p, _)| *p).collect();
    out.extend(b.keys().filter(|p| !a.contains_key(p)));
    out
}

/// The prefix a `LISTS` key stands for (its bank byte aside).
fn prefix_of(key_len: u32, data: &[u8; KEY_BYTES]) -> Prefix {
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&data[2..]);
    #[expect(clippy::cast_possible_truncation, reason = "at most 16 + 128")]
    let len = key_len.saturating_sub(16) as u8;
    Prefix { family: data[1], addr, len }
}

/// When the bank bit last flipped.
static LAST_FLIP: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

/// Waits until the last flip is 10 ms old.
fn settle_after_flip() {
    const SETTLE: std::time::Duration = std::time::Duration::from_millis(10);
    let last = *LAST_FLIP.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(t) = last {
        std::thread::sleep(SETTLE.saturating_sub(t.elapsed()));
    }
}

/// The kernel form of a service's policy.
fn service_policy(s: &Service) -> ServicePolicy {
    let b = s.bucket();
    let max_sessions = s.max_sessions.unwrap_or(0);
    ServicePolicy {
        rate_interval_ns: b.interval_ns,
        rate_tolerance_ns: b.tolerance_ns,
        action: match s.action {
            Action::Drop => action::DROP,
            Action::Reset => action::RESET,
            Action::Respond => action::RESPOND,
            Action::Log => action::LOG,
        },
        max_conn_per_source: s.max_conn_per_source.unwrap_or(0),
        dead_peer: ServicePolicy::dead_peer_bytes(
            s.dead_peer_timeout.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        ),
        max_sessions,
        open_sessions: max_sessions.saturating_sub(s.reserved_sessions),
    }
}

/// The service id of every TCP port (0: not protected), as `PORTS` holds it.
#[must_use]
pub fn port_table(policy: &Policy) -> Vec<u32> {
    let mut table = vec![0u32; PORT_ENTRIES as usize];
    for s in &policy.services {
        for &p in &s.ports {
            table[usize::from(p)] = s.id;
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use limiter_common::keepalive::Keepalive;

    use super::*;
    use crate::policy::{build::builtin_services, model::Overrides};

    #[test]
    fn the_kernel_policy_carries_the_dead_peer_timeout() {
        let mut files = builtin_services();
        files.truncate(1);
        let file =
            crate::policy::file::ConfigFile { interfaces: vec!["eth0".into()], services: files, ..Default::default() };
        let mut policy = Policy::build(file, &Overrides::default()).expect("valid");
        let s = &mut policy.services[0];
        assert_eq!(service_policy(s).dead_peer_timeout_s(), 0, "off");
        s.dead_peer_timeout = Some(Duration::from_mins(2));
        let sp = service_policy(s);
        assert_eq!(sp.dead_peer_timeout_s(), 120);
        assert_eq!(Keepalive::of(sp.dead_peer_timeout_s()).map(|k| (k.idle_s, k.interval_s)), Some((60, 20)));
        s.dead_peer_timeout = Some(Duration::from_hours(24));
        assert_eq!(service_policy(s).dead_peer_timeout_s(), 86_400);
    }
}
