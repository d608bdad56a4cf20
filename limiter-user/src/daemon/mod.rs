//! `limiter run`: the composition root. Start-up (`start`) loads and
//! attaches the programs and binds the sockets; the main loop (`serve`)
//! answers control requests (`lists`, `reload`, `report`, `explain`), logs refusal lines
//! (`refusals`) and serves metrics (`metrics`) until SIGINT or SIGTERM, then
//! exits leaving the pins, so counting and enforcement continue.

pub mod explain;
pub mod lists;
pub mod metrics;
pub mod notify;
pub mod refusals;
pub mod reload;
pub mod report;
pub mod respond;
pub mod responder;
pub mod serve;
pub mod start;
pub mod state;
pub mod steered;
pub mod uncounted;

pub use state::{Paths, Source};

use crate::policy::model::Policy;

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(policy: Policy, source: Source, paths: &Paths) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let started = start::start(policy, source, paths).await?;
        serve::serve(started, paths).await
    })
}
