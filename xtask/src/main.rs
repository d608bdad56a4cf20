//! Developer commands for limiter: `setup`, `build`, `run`, `test`, `bench` (and `bench --flood`),
//! `package` (the Debian package: binary, systemd unit, config, man pages, completions), `schemas`
//! (docs/schemas, generated from the types that print the `--json` outputs).
//! Every command installs what it needs first, so a fresh machine needs
//! nothing but this repository and rustup.

mod bench;
mod fuzz;
mod guest;
mod package;
mod setup;
mod util;

use std::{env, fmt::Write as _, path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::{setup::BpfToolchain, util::run};

#[derive(Parser)]
#[command(about = "limiter developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the BPF toolchain and the Debian packages the tests use (idempotent).
    Setup,
    /// Build everything in release mode; the binary lands in target/release/limiter.
    Build,
    /// Set up, build, then run `limiter run ARGS` (as root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run every test: unit, property, `BPF_PROG_TEST_RUN` and namespace tests, and
    /// the Debian package's (built first, as `package` does): lintian, its life from install to purge, the
    /// unit's hardening; in the guests also its life under systemd (enable, reload, watchdog, restarts,
    /// upgrade, the journal, fail2ban).
    Test {
        /// Where the suite runs, comma-separated: `host` (this machine's kernel) and Debian kernels
        /// booted under qemu (`6.1`, `6.12`; the guest image is built once and cached). Default:
        /// `host,6.1`, the whole suite: this machine and Debian 12's own kernel.
        #[arg(long, value_delimiter = ',', env = "LIMITER_TEST_KERNELS")]
        kernel: Vec<String>,
        /// Extra arguments passed to the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Time the XDP program on live frames against empty-program floors and netfilter/listener peers; with
    /// `--flood`, measure a legitimate SMTP client under floods with no protection, nftables and limiter.
    Bench(bench::BenchArgs),
    /// Build the release binary and the Debian package around it (systemd unit, default config as a
    /// conffile, man pages, completions, docs): `target/debian/limiter_VERSION_ARCH.deb`, path on stdout.
    Package {
        /// The package's version instead of the changelog's, for a newer build to upgrade to in a test
        /// (e.g. `0.1.0+test2`); it must sort after the changelog's version.
        #[arg(long, value_name = "VERSION")]
        version: Option<String>,
    },
    /// Run random and mutated frames through the XDP program (`BPF_PROG_TEST_RUN`) and compare each verdict,
    /// counter and reply with the host-side model (`tests/tests/frames_model.rs`). `cargo xtask test` runs
    /// 1,000,000 with a fixed seed; this runs as many as asked with a new seed (printed) or the one given.
    Frames {
        /// The generator's seed; a new one (printed) when absent. A mismatch names the seed that finds it.
        #[arg(long)]
        seed: Option<u64>,
        /// How many frames.
        #[arg(long, default_value_t = 10_000_000)]
        count: u64,
    },
    /// The soak (`tests/tests/soak.rs`) for `--minutes`: churn in every close style, bursts, spoofed floods,
    /// list changes, reloads, stops and `kill -9` at once; then every count back to 0, every limit exact, and
    /// the daemon's memory and descriptors over time. `cargo xtask test` runs it for 2 minutes.
    Soak {
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
    },
    /// Fuzz one parser (`fuzz/`: config, request, `lists_json`, prefix) with `cargo fuzz` for `--time`, from
    /// the committed corpus; a crash fails with the input saved under `fuzz/artifacts/`. `cargo xtask test`
    /// runs each for 15 s.
    Fuzz {
        target: String,
        /// How long: 30s, 10m, 1h.
        #[arg(long, default_value = "10m", value_parser = fuzz::parse_time)]
        time: std::time::Duration,
        /// Afterwards, add what the run found that adds coverage to the committed corpus (`fuzz/corpus`).
        #[arg(long)]
        merge: bool,
    },
    /// Write docs/schemas/*.schema.json from the types that print the `--json` outputs (`limiter
    /// generate-schemas`); with `--check`, write nothing and fail if a committed schema differs.
    Schemas {
        #[arg(long)]
        check: bool,
    },
}

fn workspace_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// `cargo` with the environment the kernel object build (limiter-user's
/// build.rs through aya-build) needs.
pub(crate) fn cargo(tc: &BpfToolchain) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd.env("LIMITER_BPF_TOOLCHAIN", &tc.name);
    if tc.bootstrap {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    // bpf-linker lives in cargo's bin dir, which a fresh root shell may lack.
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![setup::cargo_bin_dir()];
    paths.extend(env::split_paths(&path));
    if let Ok(joined) = env::join_paths(paths) {
        cmd.env("PATH", joined);
    }
    cmd
}

pub(crate) fn build(tc: &BpfToolchain) -> Result<PathBuf> {
    run(cargo(tc).args(["build", "--release", "--package", "limiter-user", "--bin", "limiter"]))?;
    let bin = workspace_root().join("target/release/limiter");
    bin.canonicalize().with_context(|| format!("{} was not built", bin.display()))
}

/// Test binaries that do not run in the guests, with the reason printed on every guest run. (The
/// benchmark smoke run is not a test binary: it runs on the host only, since timing an emulated CPU
/// measures the emulator.)
const HOST_ONLY: &[(&str, &str)] = &[];

/// Test binaries that run only in the guests, where systemd is PID 1, with the reason printed on
/// every host run. Their tests sit in a module named after the binary, so that the host run can
/// skip them by that name (`--skip NAME::`) and show them as filtered out, not as passed.
const GUEST_ONLY: &[(&str, &str)] = &[(
    "systemd",
    "needs systemd as PID 1 (enable, reload, the watchdog, restarts by the unit, the journal); the 6.1 guest of \
     `cargo xtask test` runs it (and `--kernel 6.12`)",
)];

/// The test binaries the guests run by default, each with what of it depends on the kernel. Under
/// software emulation the whole suite takes over 50 minutes on one guest; these are the binaries whose
/// outcome can differ between kernels (the verifier, helpers, atomics, pins, socket options, systemd as
/// PID 1). The rest drive the daemon's user-space side, which the host run covers; `LIMITER_GUEST_TESTS=all`
/// runs them in the guests too.
const KERNEL_SET: &[(&str, &str)] = &[
    ("objects", "every program and map loads and the verifier accepts them"),
    ("xdp_test_run", "the packet path's verdicts on crafted frames, and the verifier's headroom"),
    ("frames_model", "random and mutated frames against the model: this kernel's verifier, helpers and test run"),
    ("namespaces", "XDP and sock_ops on real traffic"),
    ("concurrency", "exact counts under parallel SYNs with this kernel's atomics; seeding from its sockets"),
    ("budget", "the source-wide reservation by compare-and-swap across CPUs"),
    ("observe", "the log action's branch of the packet path and reload on live counts"),
    ("respond", "the responder: sk_lookup, sockmap and the reset from XDP"),
    ("dead_peers", "keepalive and TCP_USER_TIMEOUT set from sock_ops"),
    ("restart", "pinned maps and links outliving the daemon, re-attach and seeding"),
    ("systemd", "the package under systemd as PID 1"),
];

/// The name prefixes of the test binaries the guests run (empty: all). `LIMITER_GUEST_TESTS=a,b` runs only the
/// binaries named so (e.g. `xdp_test_run`), `all` every one; unset, the kernel set.
fn guest_selection() -> Vec<String> {
    match env::var("LIMITER_GUEST_TESTS") {
        Ok(v) if v.trim() == "all" => Vec::new(),
        Ok(v) => v.split(',').map(|s| format!("{}-", s.trim())).collect(),
        Err(_) => {
            for (name, why) in KERNEL_SET {
                eprintln!("xtask: in the guests: {name}: {why}");
            }
            eprintln!(
                "xtask: the other test binaries test the daemon, not the kernel, and run on the host only \
                 (LIMITER_GUEST_TESTS=all runs every one in the guests)"
            );
            KERNEL_SET.iter().map(|(name, _)| format!("{name}-")).collect()
        }
    }
}

/// The newer build of the package the guests upgrade to (tests/tests/systemd.rs).
const UPGRADE_VERSION: &str = "0.1.0+test2";

/// `cargo xtask test`: the suite on the host and/or in guests, then one line per place it ran.
fn test(mut places: Vec<String>, args: &[String]) -> Result<()> {
    // The whole suite: this machine's kernel and Debian 12's, the oldest
    // the limiter is tested on (`--kernel host` for the quick run).
    if places.is_empty() {
        places.extend(["host".into(), "6.1".into()]);
    }
    let kernels = places.iter().filter(|p| *p != "host").map(|p| guest::kernel(p)).collect::<Result<Vec<_>>>()?;
    let tc = setup::setup(true)?;
    let bin = build(&tc)?;
    // tests/tests/package.rs installs and purges it.
    let deb = package::deb(&bin, None)?;
    eprintln!("xtask: built {}", deb.display());
    let mut lines = Vec::new();
    let mut ok = true;
    if places.iter().any(|p| p == "host") {
        let started = Instant::now();
        let mut skip = Vec::new();
        for (name, why) in GUEST_ONLY {
            eprintln!("xtask: guest-only, not run on the host: {name}: {why}");
            skip.extend(["--skip".to_owned(), format!("{name}::")]);
        }
        // Privileged tests share kernel state (namespaces, bpffs), so
        // every test binary runs its tests one at a time.
        let host = util::run_counting_tests(
            cargo(&tc)
                .args(["test", "--release", "--no-fail-fast", "--"])
                .arg("--test-threads=1")
                .args(&skip)
                .args(args)
                .env("LIMITER_BIN", &bin)
                .env("LIMITER_DEB", &deb),
        );
        eprintln!("xtask: benchmark smoke run (--quick)");
        let bench = bench::smoke(&tc, &bin);
        let fuzzed = fuzz::smoke(&tc);
        let smoke = bench.and(fuzzed);
        let took = util::minutes(started.elapsed());
        if let (Ok((passed, failed)), Ok(())) = (&host, &smoke) {
            lines.push(format!("host: {passed} passed, {failed} failed in {took}"));
        } else {
            ok = false;
            for e in [host.err(), smoke.err()].into_iter().flatten() {
                lines.push(format!("host: FAILED in {took}: {e}"));
            }
        }
    }
    if !kernels.is_empty() {
        let started = Instant::now();
        // tests/tests/systemd.rs upgrades to it under systemd.
        let upgrade = package::deb(&bin, Some(UPGRADE_VERSION))?;
        eprintln!("xtask: built {}", upgrade.display());
        let image = guest::image()?;
        let bins = guest::test_binaries(&mut cargo(&tc))?;
        let only = guest_selection();
        let bins: Vec<_> = bins
            .into_iter()
            .filter(|b| only.is_empty() || only.iter().any(|o| b.name.starts_with(o)))
            .filter(|b| match HOST_ONLY.iter().find(|(name, _)| b.name.starts_with(&format!("{name}-"))) {
                Some((name, why)) => {
                    eprintln!("xtask: host-only, not run in the guests: {name}: {why}");
                    false
                }
                None => true,
            })
            .collect();
        eprintln!("xtask: guest image and test binaries ready after {}", util::minutes(started.elapsed()));
        for k in kernels {
            match guest::run_kernel(&image, k, &bins, args, [&deb, &upgrade]) {
                Ok(r) => {
                    ok &= r.ok();
                    let mut line = format!(
                        "{} ({}): {} passed, {} failed in {} (boot {:.0} s)",
                        k.series,
                        r.kernel,
                        r.passed,
                        r.failed,
                        util::minutes(r.total),
                        r.boot.as_secs_f64()
                    );
                    if !r.ok() {
                        if !r.broken.is_empty() {
                            write!(line, "; failing binaries: {}", r.broken.join(", "))?;
                        }
                        write!(line, "; console: {}", r.console.display())?;
                    }
                    lines.push(line);
                }
                Err(e) => {
                    ok = false;
                    lines.push(format!("{}: FAILED: {e:#}", k.series));
                }
            }
        }
    }
    // One closing line per place for CI and people.
    for line in &lines {
        println!("{line}");
    }
    if !ok {
        bail!("tests failed");
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => {
            setup::setup(true)?;
        }
        Cmd::Build => {
            let tc = setup::setup(false)?;
            let bin = build(&tc)?;
            eprintln!("xtask: built {}", bin.display());
        }
        Cmd::Run { args } => {
            let tc = setup::setup(false)?;
            let bin = build(&tc)?;
            let status = Command::new(bin).arg("run").args(args).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test { kernel, args } => test(kernel, &args)?,
        Cmd::Bench(args) => {
            let tc = setup::setup(true)?;
            let bin = build(&tc)?;
            bench::bench(&tc, &args, &bin)?;
        }
        Cmd::Frames { seed, count } => {
            let tc = setup::setup(false)?;
            build(&tc)?;
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()) << 32)
            });
            eprintln!("xtask: {count} frames, seed {seed} (again: cargo xtask frames --seed {seed} --count {count})");
            run(cargo(&tc)
                .args(["test", "--release", "--package", "limiter-tests", "--test", "frames_model", "--"])
                .args(["--nocapture", "--test-threads=1"])
                .env("LIMITER_FRAMES", count.to_string())
                .env("LIMITER_FRAMES_SEED", seed.to_string())
                .env("LIMITER_REQUIRE_PRIVILEGED_TESTS", "1"))?;
        }
        Cmd::Soak { minutes } => {
            if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
                bail!("--minutes {minutes}: expected more than 0 and at most a day");
            }
            let tc = setup::setup(true)?;
            let bin = build(&tc)?;
            eprintln!("xtask: soak for {minutes} minutes");
            run(cargo(&tc)
                .args(["test", "--release", "--package", "limiter-tests", "--test", "soak", "--"])
                .args(["--nocapture", "--test-threads=1"])
                .env("LIMITER_SOAK_MINUTES", minutes.to_string())
                .env("LIMITER_BIN", &bin)
                .env("LIMITER_REQUIRE_PRIVILEGED_TESTS", "1"))?;
        }
        Cmd::Fuzz { target, time, merge } => {
            let tc = setup::setup(false)?;
            fuzz::fuzz(&tc, &target, time, merge)?;
        }
        Cmd::Schemas { check } => {
            let tc = setup::setup(false)?;
            let bin = build(&tc)?;
            let out = workspace_root().join("docs/schemas");
            let mut cmd = Command::new(bin);
            cmd.arg("generate-schemas").arg("--out").arg(&out);
            if check {
                cmd.arg("--check");
            }
            run(&mut cmd)?;
            if !check {
                eprintln!("xtask: wrote {}", out.display());
            }
        }
        Cmd::Package { version } => {
            let tc = setup::setup(false)?;
            let bin = build(&tc)?;
            let deb = package::deb(&bin, version.as_deref())?;
            println!("{}", deb.display());
        }
    }
    Ok(())
}
