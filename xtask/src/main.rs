//! Developer commands for limiter: `setup`, `build`, `run`, `test`, `bench` (and `bench --flood`),
//! `package` (the Debian package: binary, systemd unit, config, man pages, completions), `schemas`
//! (docs/schemas, generated from the types that print the `--json` outputs).
//! Every command installs what it needs first, so a fresh machine needs
//! nothing but this repository and rustup.

mod bench;
mod package;
mod setup;
mod util;

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};
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
    /// unit's hardening.
    Test {
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
    /// Write docs/schemas/*.schema.json from the types that print the `--json` outputs (`limiter
    /// generate-schemas`); with `--check`, write nothing and fail if a committed schema differs.
    Schemas {
        #[arg(long)]
        check: bool,
    },
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
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
        Cmd::Test { args } => {
            let tc = setup::setup(true)?;
            let bin = build(&tc)?;
            // tests/tests/package.rs installs and purges it.
            let deb = package::deb(&bin, None)?;
            eprintln!("xtask: built {}", deb.display());
            // Privileged tests share kernel state (namespaces, bpffs), so
            // every test binary runs its tests one at a time.
            let (passed, failed) = util::run_counting_tests(
                cargo(&tc)
                    .args(["test", "--release", "--no-fail-fast", "--"])
                    .arg("--test-threads=1")
                    .args(&args)
                    .env("LIMITER_BIN", &bin)
                    .env("LIMITER_DEB", &deb),
            )?;
            eprintln!("xtask: benchmark smoke run (--quick)");
            bench::smoke(&tc, &bin)?;
            // One closing line for CI and people: the totals of every test binary.
            println!("{passed} passed, {failed} failed");
        }
        Cmd::Bench(args) => {
            let tc = setup::setup(true)?;
            let bin = build(&tc)?;
            bench::bench(&tc, &args, &bin)?;
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
