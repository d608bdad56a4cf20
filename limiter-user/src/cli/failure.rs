//! `Failure`, the one-line error every subcommand returns, and its exit
//! code: 1 a failure of the system, 2 bad input from the admin, 3 the
//! daemon is not running (as `systemctl status` says of a stopped unit), 4
//! not permitted (the control socket is root's).

use crate::policy::file::ConfigError;

/// Exit code: the daemon is not running (no socket, or nothing listening).
pub(super) const NOT_RUNNING: u8 = 3;
/// Exit code: not permitted to use the control socket.
pub(super) const NOT_PERMITTED: u8 = 4;

/// A one-line error and the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    pub(super) fn bad_input(e: impl std::fmt::Display) -> Self {
        Self { message: e.to_string(), code: 2 }
    }
    pub(super) fn system(e: impl std::fmt::Display) -> Self {
        Self { message: e.to_string(), code: 1 }
    }
    pub(super) fn not_running(e: impl std::fmt::Display) -> Self {
        Self { message: e.to_string(), code: NOT_RUNNING }
    }
    pub(super) fn not_permitted(e: impl std::fmt::Display) -> Self {
        Self { message: e.to_string(), code: NOT_PERMITTED }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::bad_input(e)
    }
}

/// clap's rendered error as one line: its first paragraph ("unrecognized
/// subcommand 'stauts'"), with its tips kept ("a similar subcommand exists:
/// 'status'"), without the usage lines that follow.
#[must_use]
pub fn clap_line(rendered: &str) -> String {
    let first: Vec<&str> = rendered.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let line = first.join(" ");
    let line = line.trim_start_matches("error: ");
    let tips: Vec<&str> = rendered.lines().filter_map(|l| l.trim().strip_prefix("tip: ")).collect();
    match (line.is_empty(), tips.is_empty()) {
        (true, _) => "bad arguments".to_owned(),
        (false, true) => line.to_owned(),
        (false, false) => format!("{line} ({})", tips.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::args::Cli;

    fn line(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).expect_err("an error");
        clap_line(&e.render().to_string())
    }

    #[test]
    fn clap_errors_are_one_line_with_their_suggestions() {
        assert_eq!(
            line(&["limiter", "stauts"]),
            "unrecognized subcommand 'stauts' (a similar subcommand exists: 'status')"
        );
        let flag = line(&["limiter", "run", "--ifac", "eth0"]);
        assert!(flag.starts_with("unexpected argument '--ifac' found (") && flag.contains("'--iface'"), "{flag}");
        let missing = line(&["limiter", "reserve", "add", "198.51.100.1"]);
        assert!(missing.contains("--service"), "{missing}");
        for l in [flag, missing] {
            assert!(!l.contains('\n') && !l.contains("Usage"), "{l}");
        }
    }
}
