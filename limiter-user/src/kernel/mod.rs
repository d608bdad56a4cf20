//! The only modules that touch aya maps and programs: loading the object,
//! attaching and pinning, writing the policy (with the bank flip), seeding,
//! reclaim, the event ring, and reading counters into typed snapshots.

pub mod ids;
pub mod loader;
pub mod pins;
pub mod seed;
pub mod sockdiag;
