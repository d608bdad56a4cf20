//! Admin input to a validated [`model::Policy`]: the config file's types
//! and TOML reading with spans, validation, the allow, deny and reserve lists
//! and their merge, and the run-time list state kept in `lists.json`.
//!
//! Pure logic and files: nothing here touches aya or looks at the host.
//!
//! Each module imports only modules listed before it here:
//! - `respond`: protocols, refusal reasons, their texts and checks (none);
//! - `service`: rates, actions, one service's limits and kernel id
//!   (`respond`);
//! - `report`: where each value was written, and the problems (none);
//! - `lists`: the allow, deny and reserve lists and their merge (`service`);
//! - `state`: the run-time lists in `lists.json` (`lists`);
//! - `model`: the whole `Policy`, XDP mode, map sizes, the responder's
//!   budgets, the `run` flags (`respond`, `service`, `lists`);
//! - `force`: the policy in force (config and run-time layers) kept between
//!   list changes (`lists`, `model`);
//! - `parse`: the `run` flags' value parsers (`service`);
//! - `file`: the config file as written and its TOML reader (`respond`,
//!   `service`, `report`, `lists`, `model`, `parse`);
//! - `validate`: the rules a `Policy` must pass (`respond`, `service`,
//!   `report`, `lists`, `model`, `file`);
//! - `build`: `Policy::build` and `check` (all but `state`).

pub mod build;
pub mod file;
pub mod force;
pub mod lists;
pub mod model;
pub mod parse;
pub mod report;
pub mod respond;
pub mod service;
pub mod state;
mod validate;
