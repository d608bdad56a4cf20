//! The two kernel objects hold exactly the maps and programs that
//! `limiter_common::maps` names: the map names are string literals in the
//! kernel crate (`#[map(name = "...")]`) and in `maps::MAPS`, and these tests
//! keep the two from drifting apart.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::collections::BTreeSet;

use aya::Ebpf;
use limiter_common::maps::{BENCH_MAPS, MAPS, names};
use limiter_tests::{privileged, require};
use limiter_user::{BENCH_OBJECT, EBPF_OBJECT, kernel::pins};

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
        set([names::XDP_PROGRAM, names::SOCK_OPS_PROGRAM, names::PROBE_PROGRAM]),
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

/// What the daemon pins is what the table marks as pinned.
#[test]
fn the_pinned_maps_are_the_ones_the_table_marks() {
    let marked = set(MAPS.iter().filter(|m| m.pinned).map(|m| m.name));
    assert_eq!(set(pins::MAPS), marked, "pins::MAPS and the maps maps::MAPS marks as pinned differ");
}
