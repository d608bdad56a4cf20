//! `cargo xtask bench`: runs `limiter-bench` (tests/src/bin/limiter-bench), which times the XDP program's paths,
//! empty-program floors and the netfilter and SYN-cookie peers with `BPF_PROG_TEST_RUN` in live-frames mode (what
//! a program passes goes through a private server namespace's real stack) on one pinned CPU, and reports
//! ns/packet, ratios and the target ratios; with `--flood`, runs `limiter-flood` instead: a real Postfix,
//! a legitimate SMTP client and bounded SYN floods, with no protection, with nftables `ct count` and with the
//! limiter daemon, reported as the client's success rate and latency; with `--refusals`, `limiter-refusals`: the
//! CPU a 421 costs the responder and Postfix, and the 421s each answers per second on one pinned CPU; with
//! `--control`, `limiter-control`: start-up, list changes, reload and memory with the defaults and with 100,000
//! list entries.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{setup::BpfToolchain, util::run};

#[derive(Args)]
#[expect(clippy::struct_excessive_bools, reason = "one field per flag of the command line")]
pub(crate) struct BenchArgs {
    /// The service-level figure (`limiter-flood`, about 4 minutes): a legitimate SMTP client's success rate and
    /// latency under floods, with no protection, nftables `ct count` and limiter.
    #[arg(long)]
    flood: bool,
    /// Who pays for a refusal that says why (`limiter-refusals`, about 2 minutes): 421s answered by limiter's
    /// responder vs by Postfix's own `smtpd_client_connection_count_limit`, each side's CPU per answer at a fixed
    /// load, and the 421s each answers per second on one CPU (taskset) with clients driving as fast as they can.
    #[arg(long, conflicts_with_all = ["flood", "repeat", "runs", "json"])]
    refusals: bool,
    /// The control plane (`limiter-control`, about 3 minutes): start-up to READY, `allow`/`deny` changes (p50, p99
    /// over 200) and `reload`, with the default policy and with 100,000 list entries; the kernel maps' memory and
    /// the daemon's RSS at the default sizes and at 1,000,000 sources.
    #[arg(long, conflicts_with_all = ["flood", "refusals", "repeat", "runs"])]
    control: bool,
    /// Smoke test: 100000 packets per run and 3 runs; with --flood, 2-second phases (under a minute).
    #[arg(long)]
    quick: bool,
    /// Packets of each case per run (default 1000000).
    #[arg(long, value_name = "N", conflicts_with = "flood")]
    repeat: Option<u32>,
    /// Runs per case; the median is reported (default 5).
    #[arg(long, value_name = "N", conflicts_with = "flood")]
    runs: Option<usize>,
    /// With --flood: seconds each phase measures the legitimate client (default 15).
    #[arg(long, value_name = "S", requires = "flood")]
    seconds: Option<u32>,
    /// With --flood: SYNs per second trafgen sends in the flood phases (default 50000).
    #[arg(long, value_name = "N", requires = "flood")]
    pps: Option<u32>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The `--quick` runs `cargo xtask test` makes so the harnesses cannot rot: the program bench fails if a case took
/// another path (verdict, rule and stack counters) or a checksum broke, the flood bench checks that each
/// configuration served legitimate sessions without a flood, that every flood sent packets and that the enforcers
/// refused the abuser; the control-plane bench that every start, change and reload with 100,000 list entries
/// succeeded; none checks timings or success rates under a flood.
pub(crate) fn smoke(tc: &BpfToolchain, limiter: &Path) -> Result<()> {
    let quick = |flood, control| BenchArgs {
        flood,
        refusals: false,
        control,
        quick: true,
        repeat: None,
        runs: None,
        seconds: None,
        pps: None,
        json: None,
    };
    bench(tc, &quick(false, false), limiter)?;
    eprintln!("xtask: flood benchmark smoke run (--flood --quick)");
    bench(tc, &quick(true, false), limiter)?;
    eprintln!("xtask: control-plane benchmark smoke run (--control --quick)");
    bench(tc, &quick(false, true), limiter)
}

pub(crate) fn bench(tc: &BpfToolchain, args: &BenchArgs, limiter: &Path) -> Result<()> {
    let mut cmd = crate::cargo(tc);
    let bin = if args.flood {
        "limiter-flood"
    } else if args.refusals {
        "limiter-refusals"
    } else if args.control {
        "limiter-control"
    } else {
        "limiter-bench"
    };
    cmd.args(["run", "--release", "--quiet", "-p", "limiter-tests", "--bin", bin, "--"]);
    // limiter-flood and limiter-refusals start this daemon binary.
    cmd.env("LIMITER_BIN", limiter);
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(n) = args.repeat {
        cmd.args(["--repeat", &n.to_string()]);
    }
    if let Some(n) = args.runs {
        cmd.args(["--runs", &n.to_string()]);
    }
    if let Some(n) = args.seconds {
        cmd.args(["--seconds", &n.to_string()]);
    }
    if let Some(n) = args.pps {
        cmd.args(["--pps", &n.to_string()]);
    }
    if let Some(path) = &args.json {
        // cargo runs in the workspace root: resolve the path against the caller's directory.
        let path = std::path::absolute(path).with_context(|| format!("bad path {}", path.display()))?;
        cmd.arg("--json").arg(path);
    }
    run(&mut cmd)
}
