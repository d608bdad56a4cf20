//! `cargo xtask bench`: runs `limiter-bench` (tests/src/bin/limiter-bench), which times the XDP program's paths,
//! empty-program floors and the netfilter and SYN-cookie peers with `BPF_PROG_TEST_RUN` in live-frames mode (what
//! a program passes goes through a private server namespace's real stack) on one pinned CPU, and reports
//! ns/packet, ratios and the target ratios.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{setup::BpfToolchain, util::run};

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Smoke test: 100000 packets per run and 3 runs.
    #[arg(long)]
    quick: bool,
    /// Packets of each case per run (default 1000000).
    #[arg(long, value_name = "N")]
    repeat: Option<u32>,
    /// Runs per case; the median is reported (default 5).
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The `--quick` run `cargo xtask test` makes so the harness cannot rot; it
/// fails if a case took another path (verdict, rule and stack counters) or
/// a checksum broke, never on a timing.
pub(crate) fn smoke(tc: &BpfToolchain) -> Result<()> {
    bench(tc, &BenchArgs { quick: true, repeat: None, runs: None, json: None })
}

pub(crate) fn bench(tc: &BpfToolchain, args: &BenchArgs) -> Result<()> {
    let mut cmd = crate::cargo(tc);
    cmd.args(["run", "--release", "--quiet", "-p", "limiter-tests", "--bin", "limiter-bench", "--"]);
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(n) = args.repeat {
        cmd.args(["--repeat", &n.to_string()]);
    }
    if let Some(n) = args.runs {
        cmd.args(["--runs", &n.to_string()]);
    }
    if let Some(path) = &args.json {
        // cargo runs in the workspace root: resolve the path against the caller's directory.
        let path = std::path::absolute(path).with_context(|| format!("bad path {}", path.display()))?;
        cmd.arg("--json").arg(path);
    }
    run(&mut cmd)
}
