//! Admin input to a validated [`config::Policy`]: the config file's types
//! and TOML reading with spans, validation, the allow, deny and reserve lists
//! and their merge, and the run-time list state kept in `lists.json`.
//!
//! Pure logic and files: nothing here touches aya or looks at the host.

pub mod config;
pub mod file;
pub mod lists;
pub mod model;
pub mod parse;
pub mod report;
pub mod service;
pub mod state;
