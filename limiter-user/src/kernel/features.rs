//! The kernel features the programs use, the Linux version that brought
//! each, and a probe for those a probe can see. `run` refuses at start on a
//! missing one, naming it (the verifier's own error would be a page of
//! assembly); `doctor` lists them all.

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

/// The oldest kernel the programs and the daemon can work on: the newest
/// feature in [`FEATURES`] and [`UNPROBED`].
pub const MIN_KERNEL: (u32, u32) = (5, 15);

/// The kernels the whole privileged suite passes on (`cargo xtask test
/// --kernel 6.1,6.12` in Debian guests, and the build host's own). The
/// oldest is the oldest the limiter is known to work on.
pub const TESTED_KERNELS: &[&str] = &["6.1 (Debian 12)", "6.12 (Debian 12 backports, Debian 13)", "6.18"];

/// The oldest tested kernel, `(major, minor)`.
pub const OLDEST_TESTED: (u32, u32) = (6, 1);

/// How a feature is probed.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    Program(ProgramType),
    Map(MapType),
    Helper(ProgramType, BpfHelper),
}

/// One feature: what it is called, the Linux version that added it, and
/// what the limiter needs it for.
#[derive(Debug, Clone, Copy)]
pub struct Feature {
    pub name: &'static str,
    pub since: (u32, u32),
    pub needed_for: &'static str,
    pub probe: Probe,
}

/// Every probed feature; all are needed by `run`.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "XDP programs",
        since: (4, 8),
        needed_for: "refusing SYNs",
        probe: Probe::Program(ProgramType::Xdp),
    },
    Feature {
        name: "sock_ops programs",
        since: (4, 13),
        needed_for: "counting connections",
        probe: Probe::Program(ProgramType::SockOps),
    },
    Feature { name: "hash map", since: (4, 1), needed_for: "the connection counts", probe: Probe::Map(MapType::Hash) },
    Feature { name: "array map", since: (4, 1), needed_for: "the policy", probe: Probe::Map(MapType::Array) },
    Feature {
        name: "per-CPU array",
        since: (4, 6),
        needed_for: "the counters",
        probe: Probe::Map(MapType::PerCpuArray),
    },
    Feature {
        name: "LPM trie",
        since: (4, 11),
        needed_for: "allow and deny lists",
        probe: Probe::Map(MapType::LpmTrie),
    },
    Feature { name: "LRU hash", since: (4, 10), needed_for: "the respond action", probe: Probe::Map(MapType::LruHash) },
    Feature { name: "sockmap", since: (4, 14), needed_for: "the respond action", probe: Probe::Map(MapType::SockMap) },
    Feature { name: "ring buffer", since: (5, 8), needed_for: "refusal lines", probe: Probe::Map(MapType::RingBuf) },
    Feature {
        name: "bpf_ringbuf_output in XDP",
        since: (5, 8),
        needed_for: "refusal lines",
        probe: Probe::Helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_ringbuf_output),
    },
    Feature {
        name: "bpf_xdp_adjust_tail",
        since: (4, 18),
        needed_for: "answering a SYN with a reset",
        probe: Probe::Helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_xdp_adjust_tail),
    },
    Feature {
        name: "sk_lookup programs",
        since: (5, 9),
        needed_for: "the respond action",
        probe: Probe::Program(ProgramType::SkLookup),
    },
    Feature {
        name: "bpf_sk_assign in sk_lookup",
        since: (5, 9),
        needed_for: "the respond action",
        probe: Probe::Helper(ProgramType::SkLookup, BpfHelper::BPF_FUNC_sk_assign),
    },
    Feature {
        name: "bpf_ktime_get_coarse_ns in XDP",
        since: (5, 11),
        needed_for: "rates and handshake ages",
        probe: Probe::Helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_ktime_get_coarse_ns),
    },
    Feature {
        name: "bpf_get_netns_cookie in sock_ops",
        since: (5, 15),
        needed_for: "counting only the daemon's network namespace",
        probe: Probe::Helper(ProgramType::SockOps, BpfHelper::BPF_FUNC_get_netns_cookie),
    },
];

/// Needed too, seen only by loading or attaching (the test load in `doctor`
/// and `run` itself): name, since, what for.
pub const UNPROBED: &[(&str, (u32, u32), &str)] = &[
    ("BPF links for XDP", (5, 9), "enforcement that outlives the daemon (the link is pinned)"),
    ("BPF memory charged to the cgroup", (5, 11), "maps without raising RLIMIT_MEMLOCK"),
    ("atomic compare-and-exchange and fetch-add", (5, 12), "exact counts under bursts"),
    ("SO_NETNS_COOKIE", (5, 14), "the daemon's side of the namespace comparison"),
];

impl Feature {
    /// Whether the running kernel has it; `Err` if it could not be probed
    /// (no privilege).
    pub fn probe(&self) -> Result<bool, String> {
        match self.probe {
            Probe::Program(t) => is_program_supported(t).map_err(|e| e.to_string()),
            Probe::Map(t) => is_map_supported(t).map_err(|e| e.to_string()),
            Probe::Helper(t, h) => is_helper_supported(t, h).map_err(|e| e.to_string()),
        }
    }
}

/// The first feature the kernel lacks, probed in the order of [`FEATURES`]
/// (the older first); probes that could not run are left to the load.
#[must_use]
pub fn first_missing() -> Option<&'static Feature> {
    FEATURES.iter().find(|f| f.probe() == Ok(false))
}

/// The running kernel's release (`uname -r`), empty if unreadable.
#[must_use]
pub fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct we own.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&raw mut u) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr()).to_string_lossy().into_owned()
    }
}

/// The one-line refusal for a kernel that lacks `feature`.
#[must_use]
pub fn refusal(feature: &Feature, release: &str) -> String {
    format!(
        "this kernel ({release}) lacks {} (Linux {}.{}), needed for {}: the limiter needs Linux {}.{} or later and is \
         tested on {}; `limiter doctor` lists every feature",
        feature.name,
        feature.since.0,
        feature.since.1,
        feature.needed_for,
        MIN_KERNEL.0,
        MIN_KERNEL.1,
        TESTED_KERNELS.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_is_the_newest_feature() {
        let newest = FEATURES.iter().map(|f| f.since).chain(UNPROBED.iter().map(|u| u.1)).max();
        assert_eq!(newest, Some(MIN_KERNEL));
        assert!(OLDEST_TESTED >= MIN_KERNEL);
        assert!(TESTED_KERNELS[0].starts_with(&format!("{}.{} ", OLDEST_TESTED.0, OLDEST_TESTED.1)));
    }

    #[test]
    fn the_refusal_names_the_feature_and_its_kernel() {
        let cookie = FEATURES.iter().find(|f| f.name.contains("netns_cookie")).expect("listed");
        let line = refusal(cookie, "5.10.0-28-amd64");
        assert_eq!(line.lines().count(), 1);
        for part in ["5.10.0-28-amd64", "bpf_get_netns_cookie in sock_ops", "(Linux 5.15)", "5.15 or later", "6.1"] {
            assert!(line.contains(part), "{part} missing from: {line}");
        }
    }
}
