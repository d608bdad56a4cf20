//! Builds the kernel crate for the BPF target and leaves its two objects in
//! `OUT_DIR` for `include_bytes_aligned!`: `limiter` (the programs the daemon
//! runs) and `limiter-bench` (the bench's floors and flood programs, which
//! only the bench and the tests embed).
//!
//! This is aya-build's `build_ebpf` with one difference: the kernel crate
//! needs `-C target-cpu=v3` (it uses the old value of atomic fetch-add and
//! compare-and-swap, which CPU v1 cannot encode; docs/kernel-notes.md, "Atomics"),
//! and aya-build replaces `RUSTFLAGS` wholesale.
//!
//! `AYA_BUILD_SKIP=1` skips the build (clippy/check without bpf-linker); the
//! binary then embeds empty objects and says so when asked to run.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow, bail};

/// The kernel crate's binaries: each is one object, copied under its name.
const OBJECTS: [&str; 2] = ["limiter", "limiter-bench"];

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=LIMITER_BPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    // A stale object must not survive a skipped or failed build.
    for name in OBJECTS {
        let _ = fs::remove_file(out.join(name));
    }
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:warning=AYA_BUILD_SKIP set: embedding empty kernel objects");
        for name in OBJECTS {
            fs::write(out.join(name), b"")?;
        }
        return Ok(());
    }

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let ebpf_dir = manifest.join("../limiter-ebpf");
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-changed={}", manifest.join("../limiter-common/src").display());

    let toolchain = env::var("LIMITER_BPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    let target_dir = out.join("ebpf-target");
    let rustflags =
        ["--cfg=bpf_target_arch=\"x86_64\"", "-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"].join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &toolchain, "cargo", "build", "--package", "limiter-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(manifest.join(".."))
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS");
    let status = cmd.status().with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("building the kernel crate failed ({status}); run `cargo xtask setup` for bpf-linker and rust-src");
    }
    for name in OBJECTS {
        let built = target_dir.join("bpfel-unknown-none/release").join(name);
        fs::copy(&built, out.join(name)).map_err(|e| anyhow!("copying {}: {e}", built.display()))?;
    }
    Ok(())
}
