//! What lives under `--pin-dir` on bpffs, so that enforcement and counting
//! outlive the daemon: every map by name, one XDP link per interface
//! (`link_xdp_IF`), the `sock_ops` link (`link_sock_ops`) and the
//! `sk_lookup` link of the daemon's network namespace (`link_sk_lookup`). A restart reuses
//! them; `limiter unload` removes them, which detaches everything.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapType};
use limiter_common::{
    Globals, ServicePolicy, SourceKey, filter,
    handshake::{self, Handshake},
    lists::{KEY_BYTES, ListEntry},
    maps::{MAPS, MAX_SERVICES, POLICY_ENTRIES, ServiceRecord, SockRecord, names, seed_state},
    pending::Slot,
    pool,
    steer::{SteerKey, SteerValue},
};

/// Maps pinned by name (the policy, the counters and the connection
/// state): those `limiter_common::maps::MAPS` marks as pinned.
pub fn maps() -> impl Iterator<Item = &'static str> {
    MAPS.iter().filter(|m| m.pinned).map(|m| m.name)
}

/// The type, key size and value size this version's programs expect of each
/// pinned map. A pin left by a version with another layout would be reused
/// as it is and misread; [`check_layouts`] refuses it instead.
#[expect(clippy::cast_possible_truncation, reason = "small types")]
const LAYOUTS: [(&str, MapType, u32, u32, u32); 17] = {
    const fn size<T>() -> u32 {
        size_of::<T>() as u32
    }
    [
        (names::GLOBALS, MapType::Array, 4, size::<Globals>(), 0),
        (names::PORTS, MapType::Array, 4, 4, 0),
        (names::POLICY, MapType::Array, 4, size::<ServicePolicy>(), POLICY_ENTRIES),
        // Sized by `[maps] list_entries` (before it, 2 x 65536).
        (names::LISTS, MapType::LpmTrie, 4 + KEY_BYTES as u32, size::<ListEntry>(), 0),
        (names::LIST_FILTER, MapType::Array, 4, 8, filter::ENTRIES),
        // Sized with `LISTS`.
        (names::LIST_HOSTS, MapType::Hash, KEY_BYTES as u32, size::<ListEntry>(), 0),
        (names::SESSIONS, MapType::Array, 4, 8, pool::ENTRIES),
        (names::SOCKS, MapType::Hash, 8, size::<SockRecord>(), 0),
        (names::COUNTERS, MapType::PerCpuArray, 4, 8, 0),
        (names::CONNS, MapType::Hash, size::<SourceKey>(), 8, 0),
        (names::PENDING, MapType::Array, 4, size::<Slot>(), 0),
        // Indexed by a hash masked to exactly this size.
        (names::HANDSHAKES, MapType::Array, 4, size::<Handshake>(), handshake::ENTRIES),
        (names::SEEDED, MapType::Hash, size::<SourceKey>(), 8, 0),
        (names::SEED_SKIP, MapType::Hash, 8, 1, 0),
        (names::SERVICES, MapType::Array, 4, size::<ServiceRecord>(), MAX_SERVICES + 1),
        (names::SEED_STATE, MapType::Array, 4, 8, seed_state::ENTRIES),
        (names::STEER, MapType::LruHash, size::<SteerKey>(), size::<SteerValue>(), 0),
    ]
};

/// What a pinned map must be for a version's programs to reuse it: its
/// kernel map type (`bpf_map_type`), key and value sizes, and entries (0: any,
/// the size comes from the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLayout {
    pub name: String,
    pub kind: u32,
    pub key: u32,
    pub value: u32,
    pub entries: u32,
}

/// This version's layout of every pinned map.
#[must_use]
pub fn layouts() -> Vec<MapLayout> {
    LAYOUTS
        .iter()
        .map(|&(name, kind, key, value, entries)| MapLayout {
            name: name.to_owned(),
            kind: kind as u32,
            key,
            value,
            entries,
        })
        .collect()
}

/// `layouts` as text, one map a line: `NAME TYPE KEY VALUE ENTRIES` (numbers
/// in decimal, TYPE the kernel's). The package's preinst carries the new
/// version's text, so that the installed binary can tell, before anything is
/// unpacked, whether the new programs could reuse the pins (`check-pins`).
#[must_use]
pub fn layout_text(layouts: &[MapLayout]) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for l in layouts {
        let _ = writeln!(text, "{} {} {} {} {}", l.name, l.kind, l.key, l.value, l.entries);
    }
    text
}

/// Reads what [`layout_text`] writes; blank lines and `#` comments are skipped.
pub fn parse_layout(text: &str) -> Result<Vec<MapLayout>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("layout line {}: expected NAME TYPE KEY VALUE ENTRIES, got '{line}'", i + 1);
        let [name, rest @ ..] = fields.as_slice() else { return Err(bad()) };
        let nums: Vec<u32> = rest.iter().map(|f| f.parse::<u32>()).collect::<Result<_, _>>().map_err(|_| bad())?;
        let [kind, key, value, entries] = nums.as_slice() else { return Err(bad()) };
        if name.contains(['/', '.']) {
            return Err(bad());
        }
        out.push(MapLayout { name: (*name).to_owned(), kind: *kind, key: *key, value: *value, entries: *entries });
    }
    Ok(out)
}

/// Checks every map pinned in `dir` against the layout this version uses.
/// `Err` names the first that differs.
pub fn check_layouts(dir: &Path) -> Result<(), String> {
    check_against(dir, &layouts())
}

/// Checks every map pinned in `dir` against `layouts` (a map that is not
/// pinned is fine: it is created). `Err` names the first that differs.
pub fn check_against(dir: &Path, layouts: &[MapLayout]) -> Result<(), String> {
    for want in layouts {
        let path = dir.join(&want.name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map_err(|e| format!("cannot read pinned map {}: {e}", path.display()))?;
        let kind = info.map_type().ok().map(|t| t as u32);
        let have = (kind, info.key_size(), info.value_size());
        if have != (Some(want.kind), want.key, want.value) || (want.entries != 0 && info.max_entries() != want.entries)
        {
            return Err(format!(
                "pinned map {} is {} with {}-byte keys, {}-byte values and {} entries; the programs need {} with \
                 {}-byte keys, {}-byte values{}",
                path.display(),
                type_name(kind),
                have.1,
                have.2,
                info.max_entries(),
                type_name(Some(want.kind)),
                want.key,
                want.value,
                if want.entries == 0 { String::new() } else { format!(" and {} entries", want.entries) },
            ));
        }
    }
    Ok(())
}

/// A kernel map type by the name aya gives it, or its number.
fn type_name(kind: Option<u32>) -> String {
    let Some(kind) = kind else { return "of an unknown type".to_owned() };
    LAYOUTS.iter().find(|l| l.1 as u32 == kind).map_or_else(|| format!("map type {kind}"), |l| format!("{:?}", l.1))
}

const SOCK_OPS_LINK: &str = "link_sock_ops";
const SK_LOOKUP_LINK: &str = "link_sk_lookup";
const XDP_LINK_PREFIX: &str = "link_xdp_";

#[must_use]
pub fn sock_ops_link(dir: &Path) -> PathBuf {
    dir.join(SOCK_OPS_LINK)
}

#[must_use]
pub fn sk_lookup_link(dir: &Path) -> PathBuf {
    dir.join(SK_LOOKUP_LINK)
}

#[must_use]
pub fn xdp_link(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{XDP_LINK_PREFIX}{iface}"))
}

/// Interfaces with a pinned XDP link in `dir`.
#[must_use]
pub fn xdp_link_ifaces(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(XDP_LINK_PREFIX).map(str::to_owned))
        .collect()
}

/// Whether `dir` is on bpffs (pins elsewhere fail, or vanish with a mount
/// namespace).
#[must_use]
pub fn on_bpffs(dir: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &raw mut st) == 0 && st.f_type == BPF_FS_MAGIC
    }
}

/// Removes every pin in `dir` (detaching the programs their links hold) and
/// the directory itself. Returns what was removed.
pub fn unload(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    // Links first, so no program runs against half-removed maps.
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort_by_key(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("link_")));
    for p in paths {
        std::fs::remove_file(&p)?;
        removed.push(p);
    }
    std::fs::remove_dir(dir)?;
    Ok(removed)
}

/// `bpf(2)` attribute block, large enough for the commands used here.
#[repr(C, align(8))]
pub(crate) struct Attr(pub(crate) [u8; 128]);

/// `bpf(2)` with `attr` (zero-padded), for the commands aya has no call for.
pub(crate) fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the given size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, (&raw mut attr.0).cast::<u8>(), size_of::<Attr>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// `BPF_OBJ_GET`: opens a pinned object.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = Attr([0; 128]);
    attr.0[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bad fd"))?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_UPDATE`: atomically replaces the program a link runs, so an
/// upgrade never leaves a gap in counting or enforcement.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    const BPF_LINK_UPDATE: libc::c_long = 29;
    let mut attr = Attr([0; 128]);
    let (l, p) = (link.as_raw_fd(), prog.as_raw_fd());
    attr.0[..4].copy_from_slice(&u32::try_from(l).map_err(|_| io::Error::other("bad fd"))?.to_ne_bytes());
    attr.0[4..8].copy_from_slice(&u32::try_from(p).map_err(|_| io::Error::other("bad fd"))?.to_ne_bytes());
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Replaces the program of the link pinned at `path` with `prog`.
pub fn update_pinned_link(path: &Path, prog: impl AsFd) -> io::Result<()> {
    let link = obj_get(path)?;
    link_update(link.as_fd(), prog.as_fd())
}

/// `BPF_PROG_QUERY` with `BPF_F_QUERY_EFFECTIVE`: the ids of the programs that run
/// for `attach_type` on the cgroup `target` (its own and those inherited), at most 64.
pub fn effective_prog_ids(target: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_F_QUERY_EFFECTIVE: u32 = 1;
    let mut ids = [0u32; 64];
    let mut attr = Attr([0; 128]);
    let fd = u32::try_from(target.as_raw_fd()).map_err(|_| io::Error::other("bad fd"))?;
    attr.0[..4].copy_from_slice(&fd.to_ne_bytes());
    attr.0[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    attr.0[8..12].copy_from_slice(&BPF_F_QUERY_EFFECTIVE.to_ne_bytes());
    attr.0[16..24].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
    #[expect(clippy::cast_possible_truncation, reason = "64")]
    attr.0[24..28].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = u32::from_ne_bytes([attr.0[24], attr.0[25], attr.0[26], attr.0[27]]) as usize;
    Ok(ids[..count.min(ids.len())].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_text_reads_back() {
        let text = layout_text(&layouts());
        assert_eq!(text.lines().count(), LAYOUTS.len());
        assert_eq!(parse_layout(&text).expect("parses"), layouts());
        assert_eq!(parse_layout("# comment\n\nCONNS 1 20 8 0\n").expect("parses").len(), 1);
    }

    #[test]
    fn malformed_layouts_are_refused() {
        for bad in ["CONNS 1 20 8", "CONNS 1 20 8 0 9", "CONNS one 20 8 0", "../x 1 4 4 0", "CONNS -1 4 4 0"] {
            let e = parse_layout(bad).expect_err(bad);
            assert!(e.contains("line 1"), "{bad}: {e}");
        }
    }
}
