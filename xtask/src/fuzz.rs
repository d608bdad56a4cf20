//! `cargo xtask fuzz`: the `cargo fuzz` targets of `fuzz/` (the parsers of
//! what outsiders and admins write), installed and run with the toolchain
//! the kernel object builds with; and the short run of each that `cargo
//! xtask test` makes.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{setup::BpfToolchain, util::run, workspace_root};

/// The targets, with what each reads.
pub(crate) const TARGETS: &[(&str, &str)] = &[
    ("config", "a config file's text, as check-config and run read it"),
    ("request", "one control request, as a client writes it to the socket"),
    ("lists_json", "the state file's lists, as the daemon reads them at start"),
    ("prefix", "prefix text (CIDR, bare addresses, wildcards)"),
];

/// The cargo-fuzz release `setup` installs.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds each target runs in `cargo xtask test`.
pub(crate) const SMOKE_SECONDS: u64 = 15;

/// Installs cargo-fuzz if this version is not there (about 45 s).
fn install() -> Result<()> {
    let bin = crate::setup::cargo_bin_dir().join("cargo-fuzz");
    if Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION))
    {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    run(Command::new("cargo")
        .args(["install", "cargo-fuzz", "--force", "--locked", "--version", CARGO_FUZZ_VERSION])
        .env_remove("RUSTUP_TOOLCHAIN"))
}

/// `cargo fuzz` under the kernel object's toolchain (nightly, or stable
/// with `RUSTC_BOOTSTRAP=1`: the sanitizer flags are unstable), in `fuzz/`,
/// without building the kernel object (the parsers do not need it).
fn cargo_fuzz(tc: &BpfToolchain) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &tc.name, "cargo", "fuzz"]);
    cmd.current_dir(workspace_root().join("fuzz"));
    cmd.env("AYA_BUILD_SKIP", "1");
    if tc.bootstrap {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![crate::setup::cargo_bin_dir()];
    paths.extend(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(paths) {
        cmd.env("PATH", joined);
    }
    cmd
}

/// Where a run keeps the inputs it finds (not committed; `--merge` adds
/// them to the committed corpus, minimized).
fn scratch(target: &str) -> PathBuf {
    workspace_root().join("target/fuzz-corpus").join(target)
}

fn committed(target: &str) -> PathBuf {
    workspace_root().join("fuzz/corpus").join(target)
}

/// Runs `target` for `time` from the committed corpus: fails on any crash,
/// panic, leak or timeout, naming the input libFuzzer saved.
pub(crate) fn fuzz(tc: &BpfToolchain, target: &str, time: Duration, merge: bool) -> Result<()> {
    if !TARGETS.iter().any(|(t, _)| *t == target) {
        let names: Vec<_> = TARGETS.iter().map(|(t, _)| *t).collect();
        bail!("no fuzz target '{target}': expected one of {}", names.join(", "));
    }
    install()?;
    let scratch = scratch(target);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let started = Instant::now();
    let status = cargo_fuzz(tc)
        .args(["run", "--release", target])
        .arg(&scratch)
        .arg(committed(target))
        .arg("--")
        .arg(format!("-max_total_time={}", time.as_secs().max(1)))
        .args(["-max_len=65536", "-timeout=10", "-print_final_stats=1"])
        .status()
        .context("starting cargo fuzz")?;
    if !status.success() {
        bail!(
            "fuzz target {target} failed after {:.0} s: the input is in fuzz/artifacts/{target}/ (make it a unit test of \
             the parser, then fix)",
            started.elapsed().as_secs_f64()
        );
    }
    if merge {
        // Keep only what adds coverage, into the committed corpus.
        run(cargo_fuzz(tc)
            .args(["run", "--release", target])
            .arg(committed(target))
            .arg(&scratch)
            .args(["--", "-merge=1"]))?;
    }
    Ok(())
}

/// `cargo xtask test`'s part: every target for [`SMOKE_SECONDS`] (after a
/// build of about four minutes the first time).
pub(crate) fn smoke(tc: &BpfToolchain) -> Result<()> {
    for (target, what) in TARGETS {
        eprintln!("xtask: fuzzing {target} ({what}) for {SMOKE_SECONDS} s");
        fuzz(tc, target, Duration::from_secs(SMOKE_SECONDS), false)?;
    }
    Ok(())
}

/// `10m`, `30s`, `1h`, or plain seconds.
pub(crate) fn parse_time(s: &str) -> Result<Duration, String> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n.parse().map_err(|_| format!("'{s}': expected a time such as 30s, 10m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("'{s}': expected a time such as 30s, 10m or 1h")),
    };
    if secs == 0 {
        return Err(format!("'{s}': expected a time above zero"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("10m"), Ok(Duration::from_mins(10)));
        assert_eq!(parse_time("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_time("2h"), Ok(Duration::from_hours(2)));
        assert!(parse_time("0s").is_err());
        assert!(parse_time("10 minutes").is_err());
        assert!(parse_time("").is_err());
    }

    #[test]
    fn every_target_has_a_file_and_a_corpus() {
        let root = workspace_root();
        for (t, _) in TARGETS {
            assert!(root.join("fuzz/fuzz_targets").join(format!("{t}.rs")).is_file(), "{t}");
            let seeds = std::fs::read_dir(committed(t)).map_or(0, Iterator::count);
            assert!(seeds > 0, "fuzz/corpus/{t} is empty");
        }
    }
}
