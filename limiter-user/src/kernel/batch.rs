//! Reading a whole hash map or array in a few `bpf(2)` calls
//! (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6) rather than one or two per entry,
//! which is what aya's iterators and `get` do. With a million sources in
//! `CONNS` the walk took seconds of the daemon's only thread; `status`,
//! `top` and the metrics read the maps through here, and the policy writer
//! reads back the pinned `LIST_HOSTS` and `LIST_FILTER` at a restart.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use crate::kernel::pins::{Attr, bpf};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `ENOTSUPP`, the kernel's own "not supported" (not in libc).
const ENOTSUPP: i32 = 524;
/// Entries asked for per call: 8,192 keys and values of `CONNS` are 229 KiB.
const CHUNK: usize = 8_192;

/// Every entry of the (non-per-CPU) hash map or array `fd`, whose keys are
/// `K` and values `V` exactly (their sizes are the map's; an array's keys
/// are `u32` indices). `Ok(None)` if this kernel
/// has no batch lookup for the map: the caller walks it key by key.
///
/// Like any walk of a map that programs update, it is not a snapshot: an
/// entry added or deleted meanwhile may be seen or not; one that stays is
/// seen once (the kernel walks bucket by bucket, and keys do not move).
pub(crate) fn map_entries<K: Copy + Default, V: Copy + Default>(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<(K, V)>>> {
    let mut chunk = CHUNK;
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // The position between calls: a bucket index for hash maps (`u32`),
    // given room for any map's.
    let (mut from, mut to) = ([0u64; 4], [0u64; 4]);
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let mut attr = Attr([0; 128]);
        let ptr = |p: *const u8| p as u64;
        let in_batch = if first { 0 } else { ptr(from.as_ptr().cast()) };
        attr.0[0..8].copy_from_slice(&in_batch.to_ne_bytes());
        attr.0[8..16].copy_from_slice(&ptr(to.as_mut_ptr().cast_const().cast()).to_ne_bytes());
        attr.0[16..24].copy_from_slice(&ptr(keys.as_mut_ptr().cast_const().cast()).to_ne_bytes());
        attr.0[24..32].copy_from_slice(&ptr(values.as_mut_ptr().cast_const().cast()).to_ne_bytes());
        let count = u32::try_from(chunk).map_err(|_| io::Error::other("batch too large"))?;
        attr.0[32..36].copy_from_slice(&count.to_ne_bytes());
        let map = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("bad fd"))?;
        attr.0[36..40].copy_from_slice(&map.to_ne_bytes());
        let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => false,
            // The end of the map: `count` says what this last call copied.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // A bucket holds more entries than `chunk`: ask for more at once.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < (1 << 20) => {
                chunk *= 2;
                keys.resize(chunk, K::default());
                values.resize(chunk, V::default());
                continue;
            }
            Err(e) if first && matches!(e.raw_os_error(), Some(libc::EINVAL | ENOTSUPP)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let copied = u32::from_ne_bytes([attr.0[32], attr.0[33], attr.0[34], attr.0[35]]) as usize;
        let copied = copied.min(chunk);
        out.extend(keys[..copied].iter().copied().zip(values[..copied].iter().copied()));
        if done {
            return Ok(Some(out));
        }
        from = to;
        first = false;
    }
}
