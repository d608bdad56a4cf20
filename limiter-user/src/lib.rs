//! The limiter daemon and its client commands, as a library so the
//! integration tests can load the same kernel object the binary embeds.

/// The compiled kernel object (empty when built with `AYA_BUILD_SKIP=1`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/limiter"));
