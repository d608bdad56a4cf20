//! The only modules that touch aya maps and programs: loading the object,
//! attaching and pinning, writing the policy (with the bank flip), seeding,
//! reclaim, the event ring, the responder's steering maps, and reading
//! counters into typed snapshots (and one address's view, `inspect`).

pub mod batch;
pub mod counters;
pub mod error;
pub mod events;
pub mod features;
pub mod host;
pub mod ids;
pub mod inspect;
pub mod loader;
pub mod maps;
pub mod pins;
pub mod reclaim;
pub mod responder;
pub mod seed;
pub mod sockdiag;
pub mod writer;
