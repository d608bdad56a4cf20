//! `Failure`, the one-line error every subcommand returns: bad input from
//! the admin exits with code 2, a failure of the system with code 1.

use crate::policy::file::ConfigError;

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
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::bad_input(e)
    }
}
