//! `cargo xtask bench`: placeholder filled in below.
use anyhow::Result;
use clap::Args;
use crate::setup::BpfToolchain;

#[derive(Args)]
pub(crate) struct BenchArgs {}

pub(crate) fn bench(_tc: &BpfToolchain, _args: &BenchArgs) -> Result<()> {
    Ok(())
}
