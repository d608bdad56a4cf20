//! The maps of the XDP program. The daemon writes `GLOBALS`, `PORTS` and
//! `SERVICES` (policy); the program owns `BUCKETS` (short-lived, evictable
//! per-source token buckets) and `COUNTERS` (per-CPU verdict counters).

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use limiter_common::{
    Globals, ServicePolicy, SourceKey,
    maps::{COUNTER_ENTRIES, DEFAULT_BUCKET_ENTRIES, MAX_SERVICES, PORT_ENTRIES},
};

#[map(name = "GLOBALS")]
pub(crate) static GLOBALS: Array<Globals> = Array::with_max_entries(1, 0);

/// Service id (1-based) of each local TCP port, indexed in host order; 0 = none.
#[map(name = "PORTS")]
pub(crate) static PORTS: Array<u32> = Array::with_max_entries(PORT_ENTRIES, 0);

#[map(name = "SERVICES")]
pub(crate) static SERVICES: Array<ServicePolicy> = Array::with_max_entries(MAX_SERVICES + 1, 0);

/// Token bucket state (GCRA theoretical arrival time) per source and service.
/// An LRU: eviction only forgets a bucket, which then starts full again.
#[map(name = "BUCKETS")]
pub(crate) static BUCKETS: LruHashMap<SourceKey, u64> = LruHashMap::with_max_entries(DEFAULT_BUCKET_ENTRIES, 0);

#[map(name = "COUNTERS")]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *c += 1 };
    }
}

/// Load of a u64 shared across CPUs. An aligned 8-byte load is single-copy
/// atomic on BPF; the backend cannot select an atomic-load node before CPU v4,
/// so a volatile read stands in (the compare-and-swap validates it anyway).
#[inline(always)]
pub(crate) unsafe fn load(ptr: *const u64) -> u64 {
    unsafe { core::ptr::read_volatile(ptr) }
}

/// Compare-and-swap; true if `ptr` held `old` and now holds `new`.
/// `SeqCst`: weaker orderings may compile to instructions that do not return
/// the old value on this target (see `KERNEL_NOTES`).
#[inline(always)]
pub(crate) unsafe fn compare_swap(ptr: *mut u64, old: u64, new: u64) -> bool {
    let (_, ok) = unsafe { atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(ptr, old, new) };
    ok
}
