//! The `limiter` binary: `run` starts the daemon, every other subcommand
//! talks to it over the control socket.

#![expect(unused_crate_dependencies, reason = "a thin shell over the library, which uses them")]

use std::process::ExitCode;

use clap::{Parser as _, error::ErrorKind};
use limiter_user::cli::{self, Cli};

/// Logs to the journal, with fields, when systemd connected stderr to it
/// (`JOURNAL_STREAM`); else to stderr with a timestamp.
fn init_logging() {
    if systemd_journal_logger::connected_to_journal()
        && let Ok(journal) = systemd_journal_logger::JournalLog::new()
        && journal.with_syslog_identifier("limiter".to_owned()).install().is_ok()
    {
        let level = std::env::var("RUST_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(log::LevelFilter::Info);
        log::set_max_level(level);
        return;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).format_target(false).init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            // One line naming the problem, with clap's suggestion but not
            // its usage lines.
            eprintln!("limiter: {}", limiter_user::cli::failure::clap_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("limiter: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
