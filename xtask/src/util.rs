//! Small process helpers shared by the xtask commands.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// Runs a command with inherited stdio and fails if it does not exit 0.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails if it does not exit 0.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cargo test`, echoing its output, and sums the `test result:` lines.
/// Fails if cargo fails; returns (passed, failed) otherwise.
pub(crate) fn run_counting_tests(cmd: &mut Command) -> Result<(u64, u64)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("failed to start {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = test_result_counts(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!("{passed} passed, {failed} failed");
        bail!("{cmd:?} failed: {status}");
    }
    Ok((passed, failed))
}

/// (passed, failed) of a libtest summary line
/// (`test result: ok. 16 passed; 0 failed; 0 ignored; ...`).
pub(crate) fn test_result_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let (mut passed, mut failed) = (0, 0);
    for part in rest.split([';', '.']) {
        let mut words = part.split_whitespace();
        if let (Some(n), Some(what)) = (words.next(), words.next()) {
            match (n.parse::<u64>(), what) {
                (Ok(n), "passed") => passed += n,
                (Ok(n), "failed") => failed += n,
                _ => {}
            }
        }
    }
    Some((passed, failed))
}

/// A duration as `12m05s`, the way CI logs and people compare run times.
pub(crate) fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}
