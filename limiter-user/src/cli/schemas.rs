//! `limiter generate-schemas`: the JSON Schemas of the `--json` outputs,
//! generated from the types that print them, into docs/schemas (`cargo
//! xtask schemas`); `--check` fails when the files there differ.

use std::path::Path;

use crate::{
    cli::{doctor::Report, failure::Failure},
    protocol::{ExplainReply, ListReply, StatusReply, TopReply, schema},
};

/// `(name, text)` of each schema: `docs/schemas/NAME.schema.json`.
#[must_use]
pub fn all() -> [(&'static str, String); 5] {
    [
        ("status", schema::text::<StatusReply>()),
        ("top", schema::text::<TopReply>()),
        ("list", schema::text::<ListReply>()),
        ("doctor", schema::text::<Report>()),
        ("explain", schema::text::<ExplainReply>()),
    ]
}

/// The path of schema `name` under `dir`.
fn path(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}.schema.json"))
}

/// The schemas whose file under `dir` is missing or differs.
#[must_use]
pub fn stale(dir: &Path) -> Vec<String> {
    all()
        .into_iter()
        .filter(|(name, text)| std::fs::read_to_string(path(dir, name)).ok().as_ref() != Some(text))
        .map(|(name, _)| path(dir, name).display().to_string())
        .collect()
}

/// Writes every schema under `out`, or with `check` only compares.
pub fn main(out: &Path, check: bool) -> Result<(), Failure> {
    if check {
        let stale = stale(out);
        if stale.is_empty() {
            return Ok(());
        }
        return Err(Failure {
            message: format!("{} differ from the types: run `cargo xtask schemas`", stale.join(", ")),
            code: 1,
        });
    }
    std::fs::create_dir_all(out).map_err(|e| Failure { message: format!("{}: {e}", out.display()), code: 1 })?;
    for (name, text) in all() {
        let p = path(out, name);
        std::fs::write(&p, text).map_err(|e| Failure { message: format!("writing {}: {e}", p.display()), code: 1 })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_schemas_are_the_generated_ones() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas");
        let stale = stale(&dir);
        assert!(stale.is_empty(), "{} differ from the types: run `cargo xtask schemas`", stale.join(", "));
    }
}
