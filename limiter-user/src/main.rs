//! The `limiter` binary: `run` starts the daemon, every other subcommand
//! talks to it over the control socket.

#![expect(unused_crate_dependencies, reason = "a thin shell over the library, which uses them")]

use std::process::ExitCode;

use clap::Parser as _;
use limiter_user::cli::{self, Cli};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limiter: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
