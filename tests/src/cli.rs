//! Driving `limiter` as an admin does: a scratch directory for config and
//! state files, and client commands run against a daemon's socket, with
//! what they printed and their exit code. Every client command of the
//! tests goes through [`limiter_at`].

use std::{path::Path, process::Command};

use crate::netns::{Daemon, limiter_bin};
pub use crate::scratch::Scratch;

/// A path as the `&str` a command line takes.
#[must_use]
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// What one `limiter` command did.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<&std::process::Output> for Output {
    fn from(out: &std::process::Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `limiter ARGS` against the daemon's socket (through `LIMITER_SOCKET`).
#[must_use]
pub fn limiter_at(socket: &Path, args: &[&str]) -> Output {
    let out = Command::new(limiter_bin())
        .args(args)
        .env("LIMITER_SOCKET", socket)
        .output()
        .unwrap_or_else(|e| panic!("limiter {args:?}: {e}"));
    Output::from(&out)
}

/// Runs `limiter ARGS` against `d`'s socket.
#[must_use]
pub fn limiter(d: &Daemon, args: &[&str]) -> Output {
    limiter_at(&d.socket, args)
}

/// Runs `limiter ARGS` against `d`'s socket; panics unless it succeeds.
pub fn ok(d: &Daemon, args: &[&str]) -> Output {
    let out = limiter(d, args);
    assert_eq!(out.code, Some(0), "limiter {args:?} must succeed: {out:?}");
    out
}

/// `limiter unload` of `d`'s pins, as an admin cleans up after a stopped
/// daemon; panics unless it succeeds.
pub fn unload(d: &Daemon) {
    let out = limiter(d, &["unload", "--pin-dir", path_str(&d.pin_dir)]);
    assert_eq!(out.code, Some(0), "limiter unload: {out:?}");
}
