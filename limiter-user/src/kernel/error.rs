//! The kernel layer's error: what can go wrong loading, attaching and
//! reading or writing the maps.

use aya::programs::ProgramError;
use limiter_common::maps::SERVICE_NAME_BYTES;

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
    #[error(
        "the lists would need {need} distinct prefixes; the kernel's list map has room for {room} (`[maps] \
         list_entries`; a new size takes effect after `limiter unload`)"
    )]
    TooManyEntries { need: usize, room: u32 },
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
    #[error("cannot duplicate the descriptor of map {name}")]
    Handle { name: &'static str, source: std::io::Error },
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
    /// The kernel lacks a feature: the line of `features::refusal`.
    #[error("{0}")]
    MissingFeature(String),
    #[error("cannot {what}")]
    Seed { what: String, source: std::io::Error },
    #[error(
        "cannot read the socket table (sock_diag) to count the connections open before the limiter first started; \
         the pinned programs go on counting and enforcing: start the daemon again once this is fixed"
    )]
    SeedTable(#[source] std::io::Error),
    #[error(transparent)]
    Ids(#[from] IdError),
    #[error("cannot count the possible CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("attaching sk_lookup to the network namespace {path} failed")]
    SkLookup { path: String, source: ProgramError },
    #[error("cannot mark the responder socket (SO_MARK)")]
    Responder(#[source] std::io::Error),
    #[error("another XDP program is attached to {iface}: {other}; {fix}")]
    XdpTaken { iface: String, other: String, fix: String },
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

/// Why a service cannot get a stable id (`kernel::ids`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "service name '{name}' is {len} bytes long: at most {SERVICE_NAME_BYTES} fit the pinned service table; \
         choose a shorter name"
    )]
    NameTooLong { name: String, len: usize },
    #[error(
        "no free service id for '{name}': {retired} ids belong to removed services whose connections are still \
         open; try again once they have closed (`limiter top` shows them), or keep fewer services"
    )]
    NoFreeId { name: String, retired: usize },
}
