//! Loads the embedded kernel object, writes the policy into its maps,
//! attaches the XDP program to the interfaces and reads the counters back.

use std::{ffi::CString, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        CgroupAttachMode, ProgramError, SockOps, Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use limiter_common::{
    Globals, ServicePolicy, SourceKey, Verdict,
    lists::{KEY_BYTES, LIST_ENTRIES, ListEntry, key_data, key_len},
    maps::{MAX_SERVICES, PORT_ENTRIES, action, family, flags, names, policy_index},
    prefix::Prefix,
};
use log::warn;
use serde::Serialize;

use crate::{
    failpoint,
    kernel::{
        pins,
        seed::{self, Seeded},
    },
    policy::{
        model::{Policy, XdpMode},
        service::Action,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this limiter binary was built without its kernel object (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error(
        "the kernel object has no map {0}: this binary and its embedded kernel object do not match; rebuild with \
         `cargo xtask build`"
    )]
    MissingMap(&'static str),
    #[error(
        "the kernel object has no program {0}: this binary and its embedded kernel object do not match; rebuild \
         with `cargo xtask build`"
    )]
    MissingProgram(&'static str),
    #[error("the lists would need {0} entries; at most {LIST_ENTRIES} are supported")]
    TooManyEntries(usize),
    #[error("loading the kernel object failed")]
    Ebpf(#[from] aya::EbpfError),
    #[error("map {name}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("program {name}")]
    Program { name: &'static str, source: ProgramError },
    #[error("unknown interface '{0}'")]
    UnknownInterface(String),
    #[error("cannot create pin dir {path}")]
    PinDir { path: String, source: std::io::Error },
    #[error("cannot pin under {0}: it is not on bpffs (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(String),
    #[error("cannot reuse or pin the link {path}")]
    Relink { path: String, source: std::io::Error },
    #[error("cannot read the network namespace cookie")]
    NetnsCookie(#[source] std::io::Error),
    #[error("cannot open cgroup {path}")]
    Cgroup { path: String, source: std::io::Error },
    #[error(
        "no cgroup2 mount found in /proc/mounts: mount one (mount -t cgroup2 none /sys/fs/cgroup) or give --cgroup"
    )]
    NoCgroup2,
    #[error("attaching sock_ops to cgroup {path} failed")]
    SockOps { path: String, source: ProgramError },
    #[error("pinned maps are incompatible with this version ({0}); run `limiter unload` first")]
    Incompatible(String),
    #[error("cannot {what}")]
    Seed { what: String, source: std::io::Error },
    #[error(
        "cannot read the socket table (sock_diag) to count the connections open before the limiter first started; \
         the pinned programs go on counting and enforcing: start the daemon again once this is fixed"
    )]
    SeedTable(#[source] std::io::Error),
    #[error(transparent)]
    Ids(#[from] crate::kernel::ids::IdError),
    #[error("cannot count the possible CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("attaching XDP to {iface} in {mode} mode failed")]
    Attach { iface: String, mode: &'static str, source: ProgramError },
}

impl LoadError {
    /// Whether the error comes from the admin's input (exit code 2) rather
    /// than from the kernel.
    #[must_use]
    pub const fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::UnknownInterface(_) | Self::NoCgroup2 | Self::Cgroup { .. } | Self::NotBpffs(_) | Self::Ids(_)
        )
    }
}

pub(crate) fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> LoadError {
    move |source| LoadError::Map { name, source }
}

/// The interface index of `name` in the current network namespace.
pub fn ifindex(name: &str) -> Result<u32, LoadError> {
    let c = CString::new(name).map_err(|_| LoadError::UnknownInterface(name.to_owned()))?;
    // SAFETY: c is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(LoadError::UnknownInterface(name.to_owned())),
        i => Ok(i),
    }
}

/// Where the program is attached.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    pub name: String,
    pub ifindex: u32,
    /// `native` or `skb`.
    pub xdp_mode: &'static str,
}

/// The loaded object and where it is attached. The links are pinned:
/// dropping this leaves counting and enforcement running.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// Forwards the kernel's debug log lines; holds the log map open.
    _logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub attachments: Vec<Attachment>,
    /// Connections that predate the programs, still counted.
    pub seeded: Seeded,
    /// Writes every policy change into the maps.
    pub writer: PolicyWriter,
}

/// Loads the object (maps and program, nothing attached yet) with the
/// policy written into its maps.
pub fn load(policy: &Policy) -> Result<Ebpf, LoadError> {
    load_pinned(&mut policy.clone(), None, &mut PolicyWriter::default())
}

/// As [`load`], with every map pinned by name under `pin_dir` (an existing
/// pin is reused as it is). Pinned, the services get their ids from the
/// pinned table (`ids`), written before the policy that uses them.
fn load_pinned(policy: &mut Policy, pin_dir: Option<&Path>, writer: &mut PolicyWriter) -> Result<Ebpf, LoadError> {
    if crate::EBPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    if let Some(dir) = pin_dir {
        pins::check_layouts(dir).map_err(LoadError::Incompatible)?;
    }
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(names::CONNS, policy.maps.connections)
        .map_max_entries(names::SEEDED, policy.maps.connections)
        .map_max_entries(names::PENDING, policy.maps.pending_slots);
    let paths: Vec<(&str, std::path::PathBuf)> =
        pin_dir.map(|d| pins::MAPS.iter().map(|m| (*m, d.join(m))).collect()).unwrap_or_default();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(crate::EBPF_OBJECT)?;
    if pin_dir.is_some() {
        crate::kernel::ids::apply(&mut ebpf, policy)?;
    }
    writer.write(&mut ebpf, policy)?;
    let prog: &mut Xdp = program(&mut ebpf)?;
    prog.load().map_err(|source| LoadError::Program { name: names::XDP_PROGRAM, source })?;
    sock_ops_program(&mut ebpf)?
        .load()
        .map_err(|source| LoadError::Program { name: names::SOCK_OPS_PROGRAM, source })?;
    Ok(ebpf)
}

fn sock_ops_program(ebpf: &mut Ebpf) -> Result<&mut SockOps, LoadError> {
    let p = ebpf.program_mut(names::SOCK_OPS_PROGRAM).ok_or(LoadError::MissingProgram(names::SOCK_OPS_PROGRAM))?;
    p.try_into().map_err(|source| LoadError::Program { name: names::SOCK_OPS_PROGRAM, source })
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    let p = ebpf
        .program_mut(names::XDP_PROGRAM)
        .ok_or(LoadError::Program { name: names::XDP_PROGRAM, source: ProgramError::NotLoaded })?;
    p.try_into().map_err(|source| LoadError::Program { name: names::XDP_PROGRAM, source })
}

/// Writes the policy with a writer that knows nothing yet of what the maps
/// hold (it reads them first): for tests and one-off tools. The daemon
/// keeps one [`PolicyWriter`] for its whole run.
pub fn write_policy(ebpf: &mut Ebpf, policy: &Policy) -> Result<(), LoadError> {
    PolicyWriter::default().write(ebpf, policy)
}

type ListId = (u32, [u8; KEY_BYTES]);

/// The writer of the policy maps (`POLICY`, `LISTS`, `GLOBALS`, `PORTS`).
/// It remembers what it last wrote to each, so a change costs map writes
/// in proportion to what changed: one `allow add` is a handful of `bpf()`
/// calls whatever the size of the lists, where reading the whole trie and
/// port table back cost tens of thousands.
#[derive(Debug, Default)]
pub struct PolicyWriter {
    /// `PORTS` as this writer last wrote or read it.
    ports: Option<Vec<u32>>,
    /// Each `LISTS` bank as this writer last wrote or read it.
    banks: [Option<std::collections::HashMap<ListId, ListEntry>>; 2],
}

impl PolicyWriter {
    /// Writes the policy: the service policies and the merged lists into the
    /// bank not in force, then flips `GLOBALS` to it in one write (a SYN sees
    /// the old policy or the new one, never a mix), then the port table (each
    /// port switches in one write). `policy.lists` must be the lists in force:
    /// the config's with the run-time entries layered on.
    ///
    /// Only the entries that differ from what the maps hold are written. If a
    /// write fails midway the writer forgets what it knew and reads the maps
    /// again next time.
    pub fn write(&mut self, ebpf: &mut Ebpf, policy: &Policy) -> Result<(), LoadError> {
        // Checked before anything is written: the policy in force stays whole.
        let merged = policy.lists.merge(&policy.services);
        if merged.len() > LIST_ENTRIES as usize {
            return Err(LoadError::TooManyEntries(merged.len()));
        }
        let r = self.write_inner(ebpf, policy, &merged);
        if r.is_err() {
            *self = Self::default();
        }
        r
    }

    fn write_inner(
        &mut self,
        ebpf: &mut Ebpf,
        policy: &Policy,
        merged: &std::collections::BTreeMap<Prefix, ListEntry>,
    ) -> Result<(), LoadError> {
        // A pinned map keeps the size it was created with: the slot hash must
        // use the real slot count.
        let pending_slots = map_size(ebpf, names::PENDING)?;
        if !pending_slots.is_power_of_two() || pending_slots < 2 {
            return Err(LoadError::Incompatible(format!("{} has {pending_slots} slots", names::PENDING)));
        }
        for (name, want) in [(names::CONNS, policy.maps.connections), (names::PENDING, policy.maps.pending_slots)] {
            let have = map_size(ebpf, name)?;
            if have != want {
                warn!(
                    "map {name} is pinned with {have} entries; the configured {want} takes effect after `limiter \
                     unload`"
                );
            }
        }
        let old = {
            let globals: Array<_, Globals> =
                Array::try_from(ebpf.map(names::GLOBALS).ok_or(LoadError::MissingMap(names::GLOBALS))?)
                    .map_err(map_err(names::GLOBALS))?;
            globals.get(&0, 0).map_err(map_err(names::GLOBALS))?
        };
        let to_b = old.flags & flags::BANK_B == 0;
        let target = u8::from(to_b);
        // A SYN that read the bank bit just before the last flip may still be
        // reading this bank: programs run for microseconds, give them far more.
        settle_after_flip();

        let mut bank: Array<_, ServicePolicy> =
            Array::try_from(ebpf.map_mut(names::POLICY).ok_or(LoadError::MissingMap(names::POLICY))?)
                .map_err(map_err(names::POLICY))?;
        for id in 1..=MAX_SERVICES {
            let sp = policy.services.iter().find(|s| s.id == id).map(service_policy).unwrap_or_default();
            bank.set(policy_index(target, id), sp, 0).map_err(map_err(names::POLICY))?;
        }
        self.write_lists(ebpf, target, merged)?;

        let mut globals: Array<_, Globals> =
            Array::try_from(ebpf.map_mut(names::GLOBALS).ok_or(LoadError::MissingMap(names::GLOBALS))?)
                .map_err(map_err(names::GLOBALS))?;
        // The seeding flags belong to the seeding (which may outlive a restart):
        // keep them. A new generation invalidates every "at its limit" hint.
        let mut flags_new = old.flags & !(flags::BANK_B | flags::LISTS | flags::LISTS_V6);
        if to_b {
            flags_new |= flags::BANK_B;
        }
        if merged.keys().any(|p| p.family == family::V4) {
            flags_new |= flags::LISTS;
        }
        if merged.keys().any(|p| p.family == family::V6) {
            flags_new |= flags::LISTS_V6;
        }
        globals
            .set(
                0,
                Globals {
                    netns_cookie: netns_cookie()?,
                    pending_mask: pending_slots - 1,
                    ipv4_prefix: policy.ipv4_prefix,
                    ipv6_prefix: policy.ipv6_prefix,
                    flags: flags_new,
                    pad: 0,
                    generation: old.generation.wrapping_add(1),
                    pad2: [0; 2],
                },
                0,
            )
            .map_err(map_err(names::GLOBALS))?;
        *LAST_FLIP.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now());
        self.write_ports(ebpf, port_table(policy))
    }

    /// Makes `PORTS` hold `table`. The map may be a pin from an earlier run,
    /// so the first call reads it whole; a port dropped from the policy is
    /// unprotected again.
    fn write_ports(&mut self, ebpf: &mut Ebpf, table: Vec<u32>) -> Result<(), LoadError> {
        let mut ports: Array<_, u32> =
            Array::try_from(ebpf.map_mut(names::PORTS).ok_or(LoadError::MissingMap(names::PORTS))?)
                .map_err(map_err(names::PORTS))?;
        let have = match self.ports.take() {
            Some(have) => have,
            None => ports.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(names::PORTS))?,
        };
        for ((port, &id), &old) in (0u32..).zip(&table).zip(&have) {
            if id != old {
                ports.set(port, id, 0).map_err(map_err(names::PORTS))?;
            }
        }
        self.ports = Some(table);
        Ok(())
    }

    /// Makes `bank` of the `LISTS` trie hold exactly `merged`, touching only
    /// what differs. The first call for a bank reads it whole.
    fn write_lists(
        &mut self,
        ebpf: &mut Ebpf,
        bank: u8,
        merged: &std::collections::BTreeMap<Prefix, ListEntry>,
    ) -> Result<(), LoadError> {
        let name = names::LISTS;
        let mut trie: LpmTrie<_, [u8; KEY_BYTES], ListEntry> =
            LpmTrie::try_from(ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?).map_err(map_err(name))?;
        let want: std::collections::HashMap<ListId, ListEntry> =
            merged.iter().map(|(p, e)| ((key_len(p.len), key_data(bank, p.family, &p.addr)), *e)).collect();
        let have = match self.banks[usize::from(bank)].take() {
            Some(have) => have,
            None => trie
                .iter()
                .filter_map(Result::ok)
                .map(|(k, e)| ((k.prefix_len(), k.data()), e))
                .filter(|((_, data), _)| data[0] == bank)
                .collect(),
        };
        for id in have.keys() {
            if !want.contains_key(id) {
                trie.remove(&Key::new(id.0, id.1)).map_err(map_err(name))?;
            }
        }
        for (id, e) in &want {
            if have.get(id) != Some(e) {
                trie.insert(&Key::new(id.0, id.1), e, 0).map_err(map_err(name))?;
            }
        }
        self.banks[usize::from(bank)] = Some(want);
        Ok(())
    }
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
fn service_policy(s: &crate::policy::service::Service) -> ServicePolicy {
    let b = s.bucket();
    let max_sessions = s.max_sessions.unwrap_or(0);
    ServicePolicy {
        rate_interval_ns: b.interval_ns,
        rate_tolerance_ns: b.tolerance_ns,
        action: match s.action {
            Action::Drop => action::DROP,
            Action::Reset => action::RESET,
        },
        max_conn_per_source: s.max_conn_per_source.unwrap_or(0),
        pad: [0; 3],
        max_sessions,
        open_sessions: max_sessions.saturating_sub(s.reserved_sessions),
    }
}

/// The `max_entries` a map was created with (a pinned one keeps its own).
pub(crate) fn map_size(ebpf: &Ebpf, name: &'static str) -> Result<u32, LoadError> {
    let map = ebpf.map(name).ok_or(LoadError::MissingMap(name))?;
    let (aya::maps::Map::Array(data)
    | aya::maps::Map::HashMap(data)
    | aya::maps::Map::LruHashMap(data)
    | aya::maps::Map::LpmTrie(data)) = map
    else {
        return Err(LoadError::Incompatible(format!("{name} has an unexpected map type")));
    };
    data.info().map(|i| i.max_entries()).map_err(map_err(name))
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

/// Loads the programs with their maps pinned under `pin_dir` (reusing
/// pins a previous run left: counts survive), then makes sure counting and
/// enforcement run from this binary's programs through pinned links:
/// an existing link gets the new program atomically, a missing one is
/// created and pinned. Links of interfaces no longer configured are removed.
/// `policy`'s service ids are set from the pinned id table.
pub fn load_and_attach(
    policy: &mut Policy,
    cgroup: &Path,
    pin_dir: &Path,
    state_dir: &Path,
) -> Result<Loaded, LoadError> {
    // Resolve every interface before loading anything: a typo is bad input.
    let ifaces =
        policy.interfaces.iter().map(|name| ifindex(name).map(|i| (name.clone(), i))).collect::<Result<Vec<_>, _>>()?;
    crate::kernel::ids::check_names(policy.services.iter().map(|s| s.name.as_str()))?;
    let dir_str = pin_dir.display().to_string();
    std::fs::create_dir_all(pin_dir).map_err(|source| LoadError::PinDir { path: dir_str.clone(), source })?;
    if !pins::on_bpffs(pin_dir) {
        return Err(LoadError::NotBpffs(dir_str));
    }
    let mut writer = PolicyWriter::default();
    let mut ebpf = load_pinned(policy, Some(pin_dir), &mut writer)?;
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(l) => Some(l),
        Err(e) => {
            // The kernel side logs only at debug level; nothing is lost.
            log::debug!("kernel logger not initialised: {e}");
            None
        }
    };

    // Count connections first, then enforce: a SYN admitted from now on
    // completes into a counted connection.
    let sock_pin = pins::sock_ops_link(pin_dir);
    let sock_ops = sock_ops_program(&mut ebpf)?;
    let cg_path = cgroup.display().to_string();
    if sock_pin.exists() {
        let fd = sock_ops.fd().map_err(|source| LoadError::Program { name: names::SOCK_OPS_PROGRAM, source })?;
        pins::update_pinned_link(&sock_pin, fd)
            .map_err(|source| LoadError::Relink { path: sock_pin.display().to_string(), source })?;
    } else {
        let cg = std::fs::File::open(cgroup).map_err(|source| LoadError::Cgroup { path: cg_path.clone(), source })?;
        // From the attach on, sock_ops notes what it counts so that the
        // seeding below cannot count a connection twice (see `seed`).
        seed::set_flags(&mut ebpf, flags::SEEDING | flags::SEEDED, 0)?;
        failpoint::hit("seeding-flags");
        let sock_ops = sock_ops_program(&mut ebpf)?;
        let id = sock_ops
            .attach(cg, CgroupAttachMode::Single)
            .map_err(|source| LoadError::SockOps { path: cg_path.clone(), source })?;
        failpoint::hit("sock-ops-attached");
        let link = sock_ops.take_link(id).map_err(|source| LoadError::SockOps { path: cg_path.clone(), source })?;
        pin_link(FdLink::try_from(link), &sock_pin)?;
        failpoint::hit("sock-ops-pinned");
    }
    // Counting runs. A seeding that did not finish, or seeded sockets a
    // previous run left, are rebuilt from the socket table.
    let seeded = Seeded::rebuild(&mut ebpf, policy, state_dir)?;

    let prog = program(&mut ebpf)?;
    let mut attachments = Vec::new();
    for (name, index) in ifaces {
        let pin = pins::xdp_link(pin_dir, &name);
        let mode_file = state_dir.join(format!("xdp-mode.{name}"));
        let mode = if pin.exists() {
            let relink = |e: &dyn std::fmt::Display| LoadError::Relink {
                path: pin.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            };
            let link = PinnedLink::from_pin(&pin).map_err(|e| relink(&e))?;
            let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| relink(&e))?;
            let id = prog.attach_to_link(link).map_err(|e| relink(&e))?;
            // Dropping our handle only closes an fd: the pin keeps the link.
            drop(prog.take_link(id));
            failpoint::hit("xdp-attached");
            mode_label(&std::fs::read_to_string(&mode_file).unwrap_or_default())
        } else {
            let (id, mode) = attach(prog, &name, index, policy.xdp_mode)?;
            failpoint::hit("xdp-attached");
            let link = prog.take_link(id).map_err(|source| LoadError::Attach { iface: name.clone(), mode, source })?;
            pin_link(FdLink::try_from(link), &pin)?;
            failpoint::hit("xdp-pinned");
            let _ = std::fs::write(&mode_file, mode);
            mode
        };
        attachments.push(Attachment { name, ifindex: index, xdp_mode: mode });
    }
    for old in pins::xdp_link_ifaces(pin_dir) {
        if !policy.interfaces.contains(&old) {
            log::info!("detaching from {old}: no longer configured");
            let _ = std::fs::remove_file(pins::xdp_link(pin_dir, &old));
        }
    }
    Ok(Loaded { ebpf, _logger: logger, attachments, seeded, writer })
}

fn mode_label(s: &str) -> &'static str {
    match s.trim() {
        "native" => "native",
        "skb" => "skb",
        _ => "unknown",
    }
}

fn pin_link(link: Result<FdLink, aya::programs::links::LinkError>, path: &Path) -> Result<(), LoadError> {
    let p = path.display().to_string();
    let link = link.map_err(|e| LoadError::Relink { path: p.clone(), source: std::io::Error::other(e.to_string()) })?;
    // Dropping the returned handle closes our fd; the pin keeps the link.
    link.pin(path).map(drop).map_err(|e| LoadError::Relink { path: p, source: std::io::Error::other(e.to_string()) })
}

fn attach(prog: &mut Xdp, name: &str, index: u32, mode: XdpMode) -> Result<(XdpLinkId, &'static str), LoadError> {
    match mode {
        XdpMode::Native => prog_attach(prog, name, index, aya::programs::XdpMode::Driver, "native"),
        XdpMode::Skb => prog_attach(prog, name, index, aya::programs::XdpMode::Skb, "skb"),
        XdpMode::Auto => match prog_attach(prog, name, index, aya::programs::XdpMode::Driver, "native") {
            Ok(r) => Ok(r),
            Err(e) => {
                warn!("{e}; falling back to skb (generic) mode, which is slower");
                prog_attach(prog, name, index, aya::programs::XdpMode::Skb, "skb")
            }
        },
    }
}

fn prog_attach(
    prog: &mut Xdp,
    name: &str,
    index: u32,
    mode: aya::programs::XdpMode,
    label: &'static str,
) -> Result<(XdpLinkId, &'static str), LoadError> {
    prog.attach_to_if_index(index, mode).map(|l| (l, label)).map_err(|source| LoadError::Attach {
        iface: name.to_owned(),
        mode: label,
        source,
    })
}

/// Per-service verdict counters summed over CPUs; row 0 is "no service".
pub fn read_counters(ebpf: &Ebpf) -> Result<Vec<[u64; Verdict::COUNT as usize]>, LoadError> {
    let map = ebpf.map(names::COUNTERS).ok_or(LoadError::MissingMap(names::COUNTERS))?;
    let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(map_err(names::COUNTERS))?;
    let mut rows = vec![[0u64; Verdict::COUNT as usize]; MAX_SERVICES as usize + 1];
    for (service, row) in rows.iter_mut().enumerate() {
        for v in Verdict::ALL {
            let idx = v.index(u32::try_from(service).unwrap_or(0));
            let per_cpu = counters.get(&idx, 0).map_err(map_err(names::COUNTERS))?;
            row[v as usize] = per_cpu.iter().sum();
        }
    }
    Ok(rows)
}

/// Every entry of `SESSIONS` (index with `pool::index`).
pub fn read_sessions(ebpf: &Ebpf) -> Result<Vec<u64>, LoadError> {
    let map = ebpf.map(names::SESSIONS).ok_or(LoadError::MissingMap(names::SESSIONS))?;
    let m: Array<&MapData, u64> = Array::try_from(map).map_err(map_err(names::SESSIONS))?;
    m.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(names::SESSIONS))
}

/// Entries in a hash map now (one syscall per key: for metrics, not hot paths).
pub(crate) fn map_entries<K: aya::Pod, V: aya::Pod>(ebpf: &Ebpf, name: &'static str) -> Result<u64, LoadError> {
    let map = ebpf.map(name).ok_or(LoadError::MissingMap(name))?;
    let m: HashMap<&MapData, K, V> = HashMap::try_from(map).map_err(map_err(name))?;
    Ok(m.keys().flatten().count() as u64)
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`),
/// which `sock_ops` compares to count only this namespace's sockets.
pub fn netns_cookie() -> Result<u64, LoadError> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket calls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(LoadError::NetnsCookie(std::io::Error::last_os_error()));
        }
        let mut cookie = 0u64;
        let mut len = libc::socklen_t::try_from(size_of::<u64>()).unwrap_or(8);
        let rc = libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &raw mut len);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(LoadError::NetnsCookie(err));
        }
        Ok(cookie)
    }
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on a pure v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Result<std::path::PathBuf, LoadError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|_| LoadError::NoCgroup2)?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| std::path::PathBuf::from(dir))
        })
        .ok_or(LoadError::NoCgroup2)
}

/// Established connections per service id, summed over sources.
pub fn connections_by_service(ebpf: &Ebpf) -> Result<Vec<u64>, LoadError> {
    let mut per_service = vec![0u64; MAX_SERVICES as usize + 1];
    for (key, count) in sources(ebpf)? {
        if let Some(slot) = per_service.get_mut(usize::from(key.service)) {
            *slot += count;
        }
    }
    Ok(per_service)
}

/// Every source with established connections (counted by `sock_ops` in
/// `CONNS`, or seeded in `SEEDED`), with their number.
pub fn sources(ebpf: &Ebpf) -> Result<Vec<(SourceKey, u64)>, LoadError> {
    let mut all: std::collections::HashMap<SourceKey, u64> = std::collections::HashMap::new();
    for name in [names::CONNS, names::SEEDED] {
        let map = ebpf.map(name).ok_or(LoadError::MissingMap(name))?;
        let m: HashMap<&MapData, SourceKey, u64> = HashMap::try_from(map).map_err(map_err(name))?;
        for e in &m {
            let (key, n) = e.map_err(map_err(name))?;
            *all.entry(key).or_default() += n;
        }
    }
    Ok(all.into_iter().collect())
}

/// A source as an admin reads it: `198.51.100.7`, `2001:db8:1:2::/64`.
pub fn source_string(key: &SourceKey, policy: &Policy) -> String {
    if key.family == limiter_common::maps::family::V4 {
        let a = std::net::Ipv4Addr::new(key.addr[0], key.addr[1], key.addr[2], key.addr[3]);
        if policy.ipv4_prefix >= 32 { a.to_string() } else { format!("{a}/{}", policy.ipv4_prefix) }
    } else {
        let a = std::net::Ipv6Addr::from(key.addr);
        if policy.ipv6_prefix >= 128 { a.to_string() } else { format!("{a}/{}", policy.ipv6_prefix) }
    }
}

/// Reclaims `CONNS` entries that have stayed at zero for a whole pass
/// interval, so a busy host's table does not fill with sources that once
/// held a connection (a full table means new sources go uncounted).
/// `sock_ops` never deletes (that would race with its own increments); it
/// re-checks its entry after each increment, so a deletion that lands
/// between its lookup and its add is seen and the add redone.
#[derive(Debug, Default)]
pub struct Reclaimer {
    /// Entries at zero in the previous pass.
    idle: std::collections::HashSet<SourceKey>,
}

/// What one reclaim pass did and saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimPass {
    pub deleted: usize,
    /// Entries left, and the table's size.
    pub entries: usize,
    pub capacity: u32,
}

impl Reclaimer {
    pub fn pass(&mut self, ebpf: &mut Ebpf) -> Result<ReclaimPass, LoadError> {
        let capacity = map_size(ebpf, names::CONNS)?;
        let mut conns: HashMap<_, SourceKey, u64> =
            HashMap::try_from(ebpf.map_mut(names::CONNS).ok_or(LoadError::MissingMap(names::CONNS))?)
                .map_err(map_err(names::CONNS))?;
        let all: Vec<(SourceKey, u64)> = conns.iter().filter_map(Result::ok).collect();
        let mut idle = std::collections::HashSet::new();
        let mut deleted = 0;
        for (key, n) in &all {
            if *n != 0 {
                continue;
            }
            // Zero now and a pass ago; read once more right before deleting.
            if self.idle.contains(key) && conns.get(key, 0).is_ok_and(|n| n == 0) && conns.remove(key).is_ok() {
                deleted += 1;
            } else {
                idle.insert(*key);
            }
        }
        self.idle = idle;
        Ok(ReclaimPass { deleted, entries: all.len() - deleted, capacity })
    }
}
