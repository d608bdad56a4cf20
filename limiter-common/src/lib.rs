//! Types shared by the kernel programs and the daemon (`#[repr(C)]` map keys
//! and values), and the pure decision arithmetic both sides rely on: the
//! token bucket, prefix masking and the checksums of the RST reply.
#![no_std]

pub mod bucket;
pub mod checksum;
pub mod events;
pub mod filter;
pub mod handshake;
pub mod keepalive;
pub mod lists;
pub mod maps;
pub mod pending;
pub mod pool;
pub mod predict;
pub mod prefix;
pub mod steer;

pub use bucket::Bucket;
pub use maps::{Globals, ServicePolicy, SourceKey, Verdict};
