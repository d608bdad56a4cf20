//! The module graph of a crate, read from its source text: which module
//! imports which (`use crate::…`, `use super::…` and paths written inline).
//! Enough of Rust's path rules for this workspace's code, which the layering
//! test (`tests/tests/layers.rs`) checks: a path it cannot resolve to a
//! module of the crate is ignored, so it errs on the side of fewer edges,
//! and the test checks that the edges it must see are seen.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// A module's path below the crate root: `["kernel", "writer"]`; the root is `[]`.
pub type Module = Vec<String>;

/// Every module of a crate with the modules it imports from.
#[derive(Debug, Default)]
pub struct Graph {
    pub edges: BTreeMap<Module, BTreeSet<Module>>,
}

/// The module a source file holds: `src/kernel/mod.rs` and
/// `src/kernel.rs` are `kernel`; `src/lib.rs` and `src/main.rs` the root.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib" || l == "main") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            // Binaries under src/bin are crates of their own.
            if path.file_name().is_some_and(|n| n != "bin") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments, string literals and unit-test
/// module (`#[cfg(test)] mod tests`, which may import anything it tests).
fn code_of(text: &str) -> String {
    let text = text.find("#[cfg(test)]\nmod tests").map_or(text, |i| &text[..i]);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '"' && !escaped {
                        break;
                    }
                    escaped = c == '\\' && !escaped;
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, self}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![path.strip_suffix("::self").unwrap_or(path).to_owned()];
    };
    let prefix = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| if p == "self" { prefix.to_owned() } else { format!("{prefix}::{p}") })
        .collect()
}

/// Every path a module's code names: from its `use` items and inline.
fn paths_in(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        paths.extend(expand(&rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")));
        rest = &rest[end..];
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        for (i, _) in code.match_indices(start) {
            if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':') {
                continue;
            }
            let len =
                code[i..].find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(code.len() - i);
            paths.push(code[i..i + len].trim_end_matches(':').to_owned());
        }
    }
    paths
}

/// The module of the crate a path from `from` names, if any: the longest
/// known module its segments start with (an item's path names its module).
fn resolve(path: &str, from: &Module, modules: &BTreeSet<Module>) -> Option<Module> {
    let mut segs = path.split("::").filter(|s| !s.is_empty());
    let mut base: Module = match segs.next()? {
        "crate" => Vec::new(),
        "super" => {
            let mut m = from.clone();
            m.pop();
            m
        }
        "self" => from.clone(),
        _ => return None,
    };
    let mut found = None;
    for seg in segs {
        if seg == "super" {
            base.pop();
            continue;
        }
        base.push(seg.to_owned());
        if modules.contains(&base) {
            found = Some(base.clone());
        } else {
            break;
        }
    }
    found
}

impl Graph {
    /// Reads every module under `src` (not `src/bin`).
    #[must_use]
    pub fn read(src: &Path) -> Self {
        let mut files = Vec::new();
        rust_files(src, &mut files);
        let modules: BTreeSet<Module> = files.iter().map(|f| module_of(src, f)).collect();
        let mut graph = Self::default();
        for file in &files {
            let from = module_of(src, file);
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let targets = graph.edges.entry(from.clone()).or_default();
            for path in paths_in(&code_of(&text)) {
                if let Some(to) = resolve(&path, &from, &modules)
                    && to != from
                    && !to.is_empty()
                {
                    targets.insert(to);
                }
            }
        }
        graph
    }

    /// A cycle among the modules, if there is one, as the modules along it.
    #[must_use]
    pub fn cycle(&self) -> Option<Vec<Module>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Open,
            Done,
        }
        fn visit(
            g: &Graph,
            m: &Module,
            marks: &mut BTreeMap<Module, Mark>,
            stack: &mut Vec<Module>,
        ) -> Option<Vec<Module>> {
            match marks.get(m) {
                Some(Mark::Done) => return None,
                Some(Mark::Open) => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                None => {}
            }
            marks.insert(m.clone(), Mark::Open);
            stack.push(m.clone());
            for to in g.edges.get(m).into_iter().flatten() {
                if let Some(c) = visit(g, to, marks, stack) {
                    return Some(c);
                }
            }
            stack.pop();
            marks.insert(m.clone(), Mark::Done);
            None
        }
        let mut marks = BTreeMap::new();
        self.edges.keys().find_map(|m| visit(self, m, &mut marks, &mut Vec::new()))
    }
}

/// A module path as Rust writes it: `kernel::writer`, `crate` for the root.
#[must_use]
pub fn show(m: &Module) -> String {
    if m.is_empty() { "crate".to_owned() } else { m.join("::") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand_to_paths() {
        assert_eq!(
            expand("crate::{a::{self, B}, c::d as e, f}"),
            ["crate::a", "crate::a::B", "crate::c::d", "crate::f"]
        );
    }

    #[test]
    fn paths_resolve_to_the_longest_known_module() {
        let modules: BTreeSet<Module> =
            [vec![], vec!["kernel".into()], vec!["kernel".into(), "maps".into()]].into_iter().collect();
        let from = vec!["kernel".to_owned(), "writer".to_owned()];
        assert_eq!(resolve("crate::kernel::maps::own", &from, &modules), Some(vec!["kernel".into(), "maps".into()]));
        assert_eq!(resolve("super::maps", &from, &modules), Some(vec!["kernel".into(), "maps".into()]));
        assert_eq!(resolve("std::fs", &from, &modules), None);
    }

    #[test]
    fn comments_and_strings_name_no_module() {
        let code = code_of("// use crate::a;\nlet s = \"crate::b\";\nuse crate::c;\n");
        let paths: BTreeSet<String> = paths_in(&code).into_iter().collect();
        assert_eq!(paths.into_iter().collect::<Vec<_>>(), ["crate::c"]);
    }
}
