//! The two kernel objects hold exactly the maps and programs that
//! `limiter_common::maps` names: the map names are string literals in the
//! kernel crate (`#[map(name = "...")]`) and in `maps::MAPS`, and these tests
//! keep the two from drifting apart.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::collections::BTreeSet;

use aya::Ebpf;
use limiter_common::maps::{BENCH_MAPS, MAPS, Writer, names};
use limiter_tests::{privileged, require};
use limiter_user::{BENCH_OBJECT, EBPF_OBJECT, kernel::pins};

/// Calls to the compiler's memory builtins in `object`, as (caller section,
/// builtin) pairs.
fn builtin_calls(object: &[u8]) -> Vec<(String, String)> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};
    let file = object::File::parse(object).expect("parse the kernel object");
    let mut calls = Vec::new();
    for section in file.sections() {
        for (_, reloc) in section.relocations() {
            let RelocationTarget::Symbol(index) = reloc.target() else { continue };
            let Ok(symbol) = file.symbol_by_index(index) else { continue };
            let name = symbol.name().unwrap_or_default();
            if ["memset", "memcpy", "memmove", "memcmp", "bcmp"].contains(&name) {
                calls.push((section.name().unwrap_or_default().to_owned(), name.to_owned()));
            }
        }
    }
    calls
}

/// No program calls `memset`, `memcpy` and the like. The compiler emits
/// them for byte arrays it cannot set with a few stores, and each is a
/// BPF-to-BPF call with a frame of its own: Linux 6.1 rounds every frame of
/// a call chain up to 32 bytes, and one `memset` under `xdp::steer` took
/// `limiter_xdp` to 544 of its 512 bytes (newer kernels round to 16 and
/// loaded it). The 6.1 guest run is the real check; this one names the call.
#[test]
fn no_program_calls_a_memory_builtin() {
    for (what, object) in [("production", EBPF_OBJECT), ("bench", BENCH_OBJECT)] {
        assert!(!object.is_empty(), "the {what} object is empty (built with AYA_BUILD_SKIP)");
        assert_eq!(builtin_calls(object), Vec::<(String, String)>::new(), "the {what} object's calls to builtins");
    }
}

fn maps(ebpf: &Ebpf) -> BTreeSet<&str> {
    ebpf.maps().map(|(name, _)| name).collect()
}

fn programs(ebpf: &Ebpf) -> BTreeSet<&str> {
    ebpf.programs().map(|(name, _)| name).collect()
}

fn set<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
    names.into_iter().collect()
}

/// Loading creates the maps (so it needs root); no program is loaded.
#[test]
fn the_production_object_has_the_listed_maps_and_no_bench_program() {
    require!(privileged());
    let ebpf = Ebpf::load(EBPF_OBJECT).expect("load the production object");
    assert_eq!(maps(&ebpf), set(MAPS.iter().map(|m| m.name)), "the object's maps and maps::MAPS differ");
    assert_eq!(
        programs(&ebpf),
        set([names::XDP_PROGRAM, names::SOCK_OPS_PROGRAM, names::SK_LOOKUP_PROGRAM, names::PROBE_PROGRAM]),
        "the production object's programs"
    );
}

/// The bench object carries the packet path and so defines the production
/// maps too (the bench loads it on the production object's); beyond those,
/// only `BENCH_MAPS`.
#[test]
fn the_bench_object_has_only_bench_programs_and_maps() {
    require!(privileged());
    let ebpf = Ebpf::load(BENCH_OBJECT).expect("load the bench object");
    let have = maps(&ebpf);
    let own: BTreeSet<&str> = have.iter().copied().filter(|n| MAPS.iter().all(|m| m.name != *n)).collect();
    assert_eq!(own, set(BENCH_MAPS.iter().copied()), "the bench object's maps beyond maps::MAPS");
    assert_eq!(
        programs(&ebpf),
        set([names::FLOOR_PASS, names::FLOOR_DROP, names::BENCH_FLOOD, names::FLOOR_FLOOD_DROP, names::BENCH_SINK]),
        "the bench object's programs"
    );
}

/// The bench's copy of the packet path passes the verifier too: it is
/// inlined into another program, with a frame of its own, and a change that
/// fits `limiter_xdp`'s 512 bytes of stack may not fit there. It runs the
/// path without the reset's code (`xdp::run_with`), which keeps its frame
/// well under `limiter_xdp`'s, so it loads on every kernel, Linux 6.1 (which
/// rounds each frame of a call chain up to 32 bytes) included; the
/// production program is loaded here too.
#[test]
fn the_bench_packet_path_verifies() {
    require!(privileged());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let mut ebpf = Ebpf::load(BENCH_OBJECT).expect("load the bench object");
    let prog: &mut aya::programs::Xdp =
        ebpf.program_mut(names::BENCH_FLOOD).expect("bench_flood").try_into().expect("an XDP program");
    prog.load().unwrap_or_else(|e| panic!("bench_flood does not verify on {}: {e:?}", release.trim()));
    let mut production = Ebpf::load(EBPF_OBJECT).expect("load the production object");
    let prog: &mut aya::programs::Xdp =
        production.program_mut(names::XDP_PROGRAM).expect("limiter_xdp").try_into().expect("XDP");
    prog.load().unwrap_or_else(|e| panic!("limiter_xdp does not verify on {}: {e:?}", release.trim()));
}

/// Each map the daemon writes has one writing module, which takes its
/// handle (`kernel::maps::own`) and is the one `maps::MAPS` names; no other
/// module of the daemon takes a writable handle on it.
#[test]
fn each_map_has_the_one_daemon_writer_the_table_names() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../limiter-user/src/kernel");
    let mut owners: std::collections::BTreeMap<String, BTreeSet<String>> = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("kernel dir").flatten() {
        let text = std::fs::read_to_string(entry.path()).expect("read");
        let module = format!("kernel::{}", entry.path().file_stem().expect("stem").to_string_lossy());
        for (i, _) in text.match_indices("own(ebpf, names::") {
            let name: String = text[i + 17..].chars().take_while(|c| c.is_ascii_uppercase() || *c == '_').collect();
            owners.entry(name).or_default().insert(module.clone());
        }
    }
    assert!(owners.len() >= 8, "the reader found the owners of only {owners:?}");
    for m in MAPS {
        let listed: BTreeSet<String> = m
            .writers
            .iter()
            .filter_map(|w| match w {
                Writer::Daemon(module) => Some((*module).to_owned()),
                _ => None,
            })
            .collect();
        assert!(listed.len() <= 1, "{} has more than one daemon writer in maps::MAPS: {listed:?}", m.name);
        let constant = names_const(m.name);
        let found = owners.remove(&constant).unwrap_or_default();
        assert_eq!(
            found, listed,
            "{}: the modules that take a writable handle, and the writer maps::MAPS names",
            m.name
        );
    }
    assert!(owners.is_empty(), "writable handles on maps maps::MAPS does not list: {owners:?}");
}

/// The `names::` constant of a map (its name, upper case).
fn names_const(name: &str) -> String {
    name.to_ascii_uppercase()
}

/// What the daemon pins is what the table marks as pinned.
#[test]
fn the_pinned_maps_are_the_ones_the_table_marks() {
    let marked = set(MAPS.iter().filter(|m| m.pinned).map(|m| m.name));
    assert_eq!(set(pins::maps()), marked, "pins::maps() and the maps maps::MAPS marks as pinned differ");
}
