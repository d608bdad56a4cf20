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
