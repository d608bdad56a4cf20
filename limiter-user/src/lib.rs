//! The limiter daemon and its client commands, as a library so the
//! integration tests can load the same kernel object the binary embeds.

// The binary's logger; the library only uses the `log` facade.
use env_logger as _;
use systemd_journal_logger as _;

pub mod cli;
pub mod daemon;
pub mod failpoint;
pub mod kernel;
pub mod policy;
pub mod protocol;

/// The compiled kernel object (empty when built with `AYA_BUILD_SKIP=1`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/limiter"));

/// The bench's kernel object: the floors and flood programs of `cargo xtask
/// bench` (`limiter-ebpf/src/bench.rs`). Only the bench and the tests use
/// it; the daemon binary does not reference it, so it is not linked in.
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/limiter-bench"));
