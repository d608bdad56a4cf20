//! Loads the embedded kernel object, writes the policy into its maps,
//! attaches the XDP program to the interfaces and reads the counters back.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, ProgramError, SkLookup, SockOps, Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use limiter_common::maps::{MAX_SERVICES, flags, names};
use log::warn;
use serde::Serialize;

use crate::{
    failpoint,
    kernel::{
        error::LoadError,
        features,
        host::ifindex,
        ids::{self, ServiceTable},
        pins,
        reclaim::Reclaimer,
        responder::Responder,
        seed::Seeded,
        writer::PolicyWriter,
    },
    policy::model::{Policy, XdpMode},
};

/// Where the program is attached.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    pub name: String,
    pub ifindex: u32,
    /// `native` or `skb`.
    pub xdp_mode: &'static str,
}

/// The loaded object, where it is attached, and the owners of the maps the
/// daemon writes (each takes its maps once, here, and keeps them). The links
/// are pinned: dropping this leaves counting and enforcement running.
pub struct Loaded {
    /// The programs, and the maps for reading.
    pub ebpf: Ebpf,
    /// Forwards the kernel's debug log lines; holds the log map open.
    _logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub attachments: Vec<Attachment>,
    /// Writes every policy change into the maps.
    pub writer: PolicyWriter,
    /// Connections that predate the programs, still counted.
    pub seeded: Seeded,
    /// The pinned name -> id table of the services.
    pub services: ServiceTable,
    /// Deletes idle `CONNS` entries.
    pub reclaimer: Reclaimer,
    /// The `respond` action's maps: the responder socket, the steering tokens.
    pub responder: Responder,
}

/// Loads the object (maps and program, nothing attached yet) with the
/// policy written into its maps.
pub fn load(policy: &Policy) -> Result<Ebpf, LoadError> {
    load_pinned(&mut policy.clone(), None).map(|(ebpf, ..)| ebpf)
}

/// As [`load`], with every map pinned by name under `pin_dir` (an existing
/// pin is reused as it is), and the policy's writer. Pinned, the services
/// get their ids from the pinned table (`ids`), written before the policy
/// that uses them.
fn load_pinned(policy: &mut Policy, pin_dir: Option<&Path>) -> Result<(Ebpf, PolicyWriter, ServiceTable), LoadError> {
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
        .map_max_entries(names::PENDING, policy.maps.pending_slots)
        .map_max_entries(names::LISTS, 2 * policy.maps.list_entries)
        .map_max_entries(names::LIST_HOSTS, 2 * policy.maps.list_entries);
    let paths: Vec<(&str, PathBuf)> =
        pin_dir.map(|d| pins::maps().map(|m| (m, d.join(m))).collect()).unwrap_or_default();
    // A map with no pin yet is created by this load, empty: the writer
    // need not read it back (65,536 `PORTS` lookups at every fresh start).
    let created = |name: &str| !paths.iter().any(|(m, p)| *m == name && p.exists());
    // A bank's entries are split over the trie and the host hash: both new,
    // or both read back (one pinned alone may hold entries of another run).
    let (ports_new, lists_new, filter_new) =
        (created(names::PORTS), created(names::LISTS) && created(names::LIST_HOSTS), created(names::LIST_FILTER));
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(crate::EBPF_OBJECT)?;
    let mut services = ServiceTable::new(&ebpf)?;
    if pin_dir.is_some() {
        services.apply(&ebpf, policy)?;
    }
    let mut writer = PolicyWriter::new(&ebpf)?;
    writer.created(ports_new, lists_new);
    writer.start_filters(filter_new)?;
    writer.write(policy)?;
    let prog: &mut Xdp = program(&mut ebpf)?;
    prog.load().map_err(|source| LoadError::Program { name: names::XDP_PROGRAM, source })?;
    sock_ops_program(&mut ebpf)?
        .load()
        .map_err(|source| LoadError::Program { name: names::SOCK_OPS_PROGRAM, source })?;
    sk_lookup_program(&mut ebpf)?
        .load()
        .map_err(|source| LoadError::Program { name: names::SK_LOOKUP_PROGRAM, source })?;
    Ok((ebpf, writer, services))
}

fn sock_ops_program(ebpf: &mut Ebpf) -> Result<&mut SockOps, LoadError> {
    let p = ebpf.program_mut(names::SOCK_OPS_PROGRAM).ok_or(LoadError::MissingProgram(names::SOCK_OPS_PROGRAM))?;
    p.try_into().map_err(|source| LoadError::Program { name: names::SOCK_OPS_PROGRAM, source })
}

fn sk_lookup_program(ebpf: &mut Ebpf) -> Result<&mut SkLookup, LoadError> {
    let p = ebpf.program_mut(names::SK_LOOKUP_PROGRAM).ok_or(LoadError::MissingProgram(names::SK_LOOKUP_PROGRAM))?;
    p.try_into().map_err(|source| LoadError::Program { name: names::SK_LOOKUP_PROGRAM, source })
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    let p = ebpf
        .program_mut(names::XDP_PROGRAM)
        .ok_or(LoadError::Program { name: names::XDP_PROGRAM, source: ProgramError::NotLoaded })?;
    p.try_into().map_err(|source| LoadError::Program { name: names::XDP_PROGRAM, source })
}

/// Kernel service id of the `i`th configured service (ids are 1-based).
#[must_use]
pub fn service_id(i: usize) -> u32 {
    debug_assert!(i < MAX_SERVICES as usize);
    u32::try_from(i).map_or(0, |i| i + 1)
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
    ids::check_names(policy.services.iter().map(|s| s.name.as_str()))?;
    // A kernel without a feature is named before anything is created: the
    // verifier's refusal would be a page of assembly.
    if let Some(feature) = features::first_missing() {
        return Err(LoadError::MissingFeature(features::refusal(feature, &features::kernel_release())));
    }
    let dir_str = pin_dir.display().to_string();
    std::fs::create_dir_all(pin_dir).map_err(|source| LoadError::PinDir { path: dir_str.clone(), source })?;
    if !pins::on_bpffs(pin_dir) {
        return Err(LoadError::NotBpffs(dir_str));
    }
    let (mut ebpf, mut writer, services) = load_pinned(policy, Some(pin_dir))?;
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
    attach_sock_ops(&mut ebpf, &mut writer, cgroup, pin_dir)?;
    // Counting runs. A seeding that did not finish, or seeded sockets a
    // previous run left, are rebuilt from the socket table.
    let mut seeded = Seeded::new(&ebpf)?;
    seeded.rebuild(&ebpf, &mut writer, policy, state_dir)?;
    // Steering before enforcement: a SYN the new XDP program steers finds
    // the new socket lookup (and `STEER` is pinned, so one the old program
    // steered finds it too).
    attach_sk_lookup(&mut ebpf, pin_dir)?;
    let mut attachments = Vec::new();
    for (name, index) in ifaces {
        let mode = attach_xdp(&mut ebpf, &name, index, policy.xdp_mode, pin_dir, state_dir)?;
        attachments.push(Attachment { name, ifindex: index, xdp_mode: mode });
    }
    for old in pins::xdp_link_ifaces(pin_dir) {
        if !policy.interfaces.contains(&old) {
            log::info!("detaching from {old}: no longer configured");
            let _ = std::fs::remove_file(pins::xdp_link(pin_dir, &old));
        }
    }
    let reclaimer = Reclaimer::new(&ebpf)?;
    let responder = Responder::new(&ebpf)?;
    Ok(Loaded { ebpf, _logger: logger, attachments, writer, seeded, services, reclaimer, responder })
}

/// Makes the pinned `sock_ops` link run this binary's program: the link a
/// previous run pinned gets it atomically; a first start attaches it to
/// `cgroup` and pins the link, opening the seeding window first.
fn attach_sock_ops(ebpf: &mut Ebpf, writer: &mut PolicyWriter, cgroup: &Path, pin_dir: &Path) -> Result<(), LoadError> {
    let sock_pin = pins::sock_ops_link(pin_dir);
    let sock_ops = sock_ops_program(ebpf)?;
    let cg_path = cgroup.display().to_string();
    if sock_pin.exists() {
        let fd = sock_ops.fd().map_err(|source| LoadError::Program { name: names::SOCK_OPS_PROGRAM, source })?;
        return pins::update_pinned_link(&sock_pin, fd)
            .map_err(|source| LoadError::Relink { path: sock_pin.display().to_string(), source });
    }
    let cg = std::fs::File::open(cgroup).map_err(|source| LoadError::Cgroup { path: cg_path.clone(), source })?;
    // From the attach on, sock_ops notes what it counts so that the
    // seeding cannot count a connection twice (see `seed`).
    writer.set_flags(flags::SEEDING | flags::SEEDED, 0)?;
    failpoint::hit("seeding-flags");
    let sock_ops = sock_ops_program(ebpf)?;
    let id = sock_ops
        .attach(cg, CgroupAttachMode::Single)
        .map_err(|source| LoadError::SockOps { path: cg_path.clone(), source })?;
    failpoint::hit("sock-ops-attached");
    let link = sock_ops.take_link(id).map_err(|source| LoadError::SockOps { path: cg_path, source })?;
    pin_link(FdLink::try_from(link), &sock_pin)?;
    failpoint::hit("sock-ops-pinned");
    Ok(())
}

/// The network namespace the daemon runs in, whose socket lookups the
/// `sk_lookup` program steers (the responder socket lives there too).
const OWN_NETNS: &str = "/proc/self/ns/net";

/// Makes the pinned `sk_lookup` link run this binary's program: the link a
/// previous run pinned gets it atomically; otherwise it is attached to the
/// daemon's network namespace and pinned.
fn attach_sk_lookup(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<(), LoadError> {
    let pin = pins::sk_lookup_link(pin_dir);
    let prog = sk_lookup_program(ebpf)?;
    if pin.exists() {
        let fd = prog.fd().map_err(|source| LoadError::Program { name: names::SK_LOOKUP_PROGRAM, source })?;
        return pins::update_pinned_link(&pin, fd)
            .map_err(|source| LoadError::Relink { path: pin.display().to_string(), source });
    }
    let netns = std::fs::File::open(OWN_NETNS)
        .map_err(|source| LoadError::SkLookup { path: OWN_NETNS.to_owned(), source: ProgramError::IOError(source) })?;
    let id = prog.attach(netns).map_err(|source| LoadError::SkLookup { path: OWN_NETNS.to_owned(), source })?;
    let link = prog.take_link(id).map_err(|source| LoadError::SkLookup { path: OWN_NETNS.to_owned(), source })?;
    pin_link(Ok(FdLink::from(link)), &pin)
}

/// Makes the pinned XDP link of interface `name` run this binary's program
/// (re-linking a pin a previous run left, or attaching and pinning a new
/// one); returns the mode it runs in.
fn attach_xdp(
    ebpf: &mut Ebpf,
    name: &str,
    index: u32,
    mode: XdpMode,
    pin_dir: &Path,
    state_dir: &Path,
) -> Result<&'static str, LoadError> {
    let prog = program(ebpf)?;
    let pin = pins::xdp_link(pin_dir, name);
    let mode_file = state_dir.join(format!("xdp-mode.{name}"));
    if pin.exists() {
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
        return Ok(mode_label(&std::fs::read_to_string(&mode_file).unwrap_or_default()));
    }
    // Another program on the interface (no pin of ours says it is ours):
    // attaching would fail with EEXIST in native mode and then in skb mode,
    // with a warning that native mode is not supported. Name it instead.
    if let Ok(Some(other)) = crate::kernel::host::xdp_attached(index) {
        let fix = if other.name.as_deref() == Some(names::XDP_PROGRAM) {
            // Pinned by another limiter (another --pin-dir): its link holds it.
            "another limiter's, pinned under another pin dir: `limiter unload --pin-dir DIR` removes it".to_owned()
        } else {
            format!(
                "detach it (`ip link set dev {name} xdp off`; `bpftool link detach id N` if a BPF link holds it) or \
                 protect another interface"
            )
        };
        return Err(LoadError::XdpTaken { iface: name.to_owned(), other: other.to_string(), fix });
    }
    let (id, mode) = attach(prog, name, index, mode)?;
    failpoint::hit("xdp-attached");
    let link = prog.take_link(id).map_err(|source| LoadError::Attach { iface: name.to_owned(), mode, source })?;
    pin_link(FdLink::try_from(link), &pin)?;
    failpoint::hit("xdp-pinned");
    let _ = std::fs::write(&mode_file, mode);
    Ok(mode)
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
