//! The code's structure stays as `docs/design.md` draws it: no module of
//! any crate imports, directly or around a cycle, a module that imports it
//! back, and in `limiter-user` every import points down the layers
//! cli -> daemon -> protocol -> kernel -> policy (-> limiter-common), and the
//! kernel crate's stages (parse, classify, decide, act) import no other stage.
//! Plain source reading: no privileges, no kernel.

#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::path::{Path, PathBuf};

use limiter_tests::modules::{Graph, Module, show};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The layer of a `limiter-user` module, lowest first; `None` for a module
/// every layer may use (the crate root's embedded object, the failpoints).
fn layer(m: &Module) -> Option<(usize, &'static str)> {
    const LAYERS: [&str; 5] = ["policy", "kernel", "protocol", "daemon", "cli"];
    let top = m.first()?;
    LAYERS.iter().position(|l| l == top).map(|i| (i, LAYERS[i]))
}

fn upward_imports(g: &Graph) -> Vec<String> {
    let mut bad = Vec::new();
    for (from, tos) in &g.edges {
        for to in tos {
            if let (Some((a, la)), Some((b, lb))) = (layer(from), layer(to))
                && b > a
            {
                bad.push(format!("{} ({la}) imports {} ({lb}), a layer above it", show(from), show(to)));
            }
        }
    }
    bad
}

#[test]
fn limiter_user_imports_only_downwards() {
    let g = Graph::read(&root().join("limiter-user/src"));
    // The reader must see the imports it judges: these exist by design.
    let edge = |a: &[&str], b: &[&str]| {
        let (a, b): (Module, Module) =
            (a.iter().map(ToString::to_string).collect(), b.iter().map(ToString::to_string).collect());
        g.edges.get(&a).is_some_and(|t| t.contains(&b))
    };
    assert!(edge(&["kernel", "writer"], &["policy", "model"]), "the reader misses kernel::writer -> policy");
    assert!(edge(&["cli"], &["protocol"]), "the reader misses cli -> protocol");
    for m in g.edges.keys() {
        assert!(m.is_empty() || layer(m).is_some() || m == &["failpoint"], "module {} is in no layer", show(m));
    }
    let bad = upward_imports(&g);
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn the_policy_layer_neither_loads_programs_nor_looks_at_the_host() {
    let dir = root().join("limiter-user/src/policy");
    for entry in std::fs::read_dir(&dir).expect("policy dir").flatten() {
        let text = std::fs::read_to_string(entry.path()).expect("read");
        for word in ["aya::", "if_nametoindex", "/proc/", "/sys/"] {
            assert!(!text.contains(word), "{} uses {word}", entry.path().display());
        }
    }
}

#[test]
fn no_crate_has_an_import_cycle() {
    for krate in ["limiter-common/src", "limiter-user/src", "xtask/src", "tests/src", "limiter-ebpf/src"] {
        let g = Graph::read(&root().join(krate));
        assert!(g.edges.len() > 1 || krate == "limiter-common/src", "{krate}: no modules read");
        if let Some(cycle) = g.cycle() {
            panic!("{krate}: import cycle {}", cycle.iter().map(show).collect::<Vec<_>>().join(" -> "));
        }
    }
}

#[test]
fn the_packet_path_stages_import_no_other_stage() {
    const STAGES: [&str; 4] = ["parse", "classify", "decide", "act"];
    let g = Graph::read(&root().join("limiter-ebpf/src"));
    let xdp: Module = vec!["xdp".to_owned()];
    for stage in STAGES {
        let from: Module = vec![stage.to_owned()];
        let tos = g.edges.get(&from).unwrap_or_else(|| panic!("no module {stage} in limiter-ebpf"));
        for to in tos {
            assert!(!STAGES.iter().any(|s| to == &[*s]), "{stage} imports the stage {}", show(to));
        }
        // The reader must see the orchestrator's imports of every stage.
        assert!(g.edges.get(&xdp).is_some_and(|t| t.contains(&from)), "xdp does not import {stage}");
    }
}
