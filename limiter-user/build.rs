//! Builds the kernel crate for the BPF target and leaves the object in
//! `OUT_DIR` for `include_bytes_aligned!`.
//!
//! This is aya-build's `build_ebpf` with one difference: the kernel crate
//! needs `-C target-cpu=v3` (it uses the old value of atomic fetch-add and
//! compare-and-swap, which CPU v1 cannot encode; docs/kernel-notes.md, "Atomics"),
//! and aya-build replaces `RUSTFLAGS` wholesale.
//!
//! `AYA_BUILD_SKIP=1` skips the build (clippy/check without bpf-linker); the
//! binary then embeds an empty object and says so when asked to run.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow, bail};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=LIMITER_BPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out.join("limiter");
    // A stale object must not survive a skipped or failed build.
    let _ = fs::remove_file(&object);
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:warning=AYA_BUILD_SKIP set: embedding an empty kernel object");
        fs::write(&object, b"")?;
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
    let built = target_dir.join("bpfel-unknown-none/release/limiter");
    fs::copy(&built, &object).map_err(|e| anyhow!("copying {}: {e}", built.display()))?;
    Ok(())
}
