//! The two kernel objects the bench loads: the production object the daemon embeds (`limiter_xdp` and every map)
//! and the bench's own (the floors, the flood pair, the client's sink, `BENCH_SEQ`). The bench object is loaded on
//! the production object's maps, pinned for the moment it takes: `bench_flood` decides on, and counts in, the same
//! maps as `limiter_xdp`.

use std::path::PathBuf;

use aya::{Ebpf, EbpfLoader, programs::Xdp};
use limiter_common::maps::{BENCH_MAPS, names};
use limiter_user::{BENCH_OBJECT, EBPF_OBJECT, policy::model::MapSizes};

use crate::Result;

pub(crate) struct Objects {
    /// The production object.
    pub(crate) limiter: Ebpf,
    /// The bench object, on `limiter`'s maps (but `BENCH_SEQ`, its own).
    pub(crate) bench: Ebpf,
}

/// A directory of pins on bpffs, removed with its pins when dropped.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Objects {
    /// Loads the production object, lets `prepare` write its maps, then loads the bench object on them.
    /// The maps are sized as the daemon's loader sizes them for `sizes`.
    pub(crate) fn load(sizes: &MapSizes, prepare: impl FnOnce(&mut Ebpf) -> Result<()>) -> Result<Self> {
        if EBPF_OBJECT.is_empty() || BENCH_OBJECT.is_empty() {
            return Err("built without the kernel objects (AYA_BUILD_SKIP): build with `cargo xtask bench`".into());
        }
        let mut limiter = EbpfLoader::new()
            .map_max_entries(names::CONNS, sizes.connections)
            .map_max_entries(names::SEEDED, sizes.connections)
            .map_max_entries(names::PENDING, sizes.pending_slots)
            .map_max_entries(names::LISTS, 2 * sizes.list_entries)
            .map_max_entries(names::LIST_HOSTS, 2 * sizes.list_entries)
            .load(EBPF_OBJECT)?;
        prepare(&mut limiter)?;

        let dir = PinDir(PathBuf::from(format!("/sys/fs/bpf/limiter-bench-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).map_err(|e| format!("creating {}: {e}", dir.0.display()))?;
        for (name, map) in limiter.maps() {
            map.pin(dir.0.join(name)).map_err(|e| {
                format!("pinning {name} under {}: {e} (is bpffs mounted on /sys/fs/bpf?)", dir.0.display())
            })?;
        }
        // Every map of the bench object but its own must be one of the production object's: a name that is not
        // would be created afresh, and `bench_flood` would decide on empty maps.
        let shared: Vec<(String, PathBuf)> =
            limiter.maps().map(|(name, _)| (name.to_owned(), dir.0.join(name))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &shared {
            loader.map_pin_path(name, path.as_path());
        }
        let bench = loader.load(BENCH_OBJECT)?;
        if let Some((name, _)) =
            bench.maps().find(|(n, _)| !BENCH_MAPS.contains(n) && !shared.iter().any(|(s, _)| s == n))
        {
            return Err(format!("the bench object's map {name} is not in the production object").into());
        }
        Ok(Self { limiter, bench })
    }

    /// The XDP program `name`: `limiter_xdp` from the production object, the others from the bench object.
    pub(crate) fn xdp(&mut self, name: &str) -> Result<&mut Xdp> {
        let ebpf = if name == names::XDP_PROGRAM { &mut self.limiter } else { &mut self.bench };
        let prog = ebpf.program_mut(name).ok_or_else(|| format!("program {name} is not in its kernel object"))?;
        Ok(prog.try_into()?)
    }
}
