//! The Debian package under test, as the package tests drive it: where it is
//! (`LIMITER_DEB`, and `LIMITER_DEB_UPGRADE`, a newer build of it), what it
//! installs where, dpkg run unattended, and a guard that owns the installed
//! package and purges it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::Need;

/// What the package installs where.
pub const UNIT: &str = "/lib/systemd/system/limiter.service";
pub const CONFFILE: &str = "/etc/limiter/limiter.toml";
pub const STATE_DIR: &str = "/var/lib/limiter";
/// Where a daemon with the defaults (the unit's) pins, and its socket: what the
/// prerm unloads and the purge removes.
pub const PIN_DIR: &str = "/sys/fs/bpf/limiter";
pub const SOCKET: &str = "/run/limiter/limiter.sock";

/// The .deb under test (`LIMITER_DEB`), a need for [`crate::require!`].
pub fn deb() -> Need<PathBuf> {
    deb_from("LIMITER_DEB", "`cargo xtask test` builds the package and sets it")
}

/// A newer build of the same tree (`LIMITER_DEB_UPGRADE`, version `0.1.0+test2`),
/// to upgrade to; a need for [`crate::require!`].
pub fn upgrade_deb() -> Need<PathBuf> {
    deb_from("LIMITER_DEB_UPGRADE", "`cargo xtask test --kernel` builds it and sets it in the guests")
}

fn deb_from(var: &str, who: &str) -> Need<PathBuf> {
    let Some(path) = std::env::var_os(var) else {
        return Err(format!("{var} is not set ({who})"));
    };
    let path = PathBuf::from(path);
    assert!(path.is_file(), "{var}={} is not a file", path.display());
    Ok(path)
}

/// Runs `cmd`; panics with its output unless it exits 0. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}{}", out.status, text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// Runs `cmd` to its end; panics only if it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Bytes a command printed, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What dpkg says about the package `limiter`: `None` when it has never been
/// installed (or was purged).
pub fn dpkg_status() -> Option<String> {
    let out = output(Command::new("dpkg-query").args(["--show", "--showformat=${db:Status-Abbrev}", "limiter"]));
    let status = text(&out.stdout).trim().to_owned();
    (out.status.success() && !status.is_empty() && !status.starts_with("un")).then_some(status)
}

/// Owns the installed package: purges it on drop (also when an assertion
/// failed) and puts back an empty state dir if there was one before.
pub struct Installed {
    purged: bool,
    state_dir_existed: bool,
}

impl Installed {
    /// Installs `deb`, refusing if anything of an install it did not make is
    /// there: the purge would delete it.
    pub fn install(deb: &Path) -> Self {
        if let Some(status) = dpkg_status() {
            panic!(
                "a limiter package is already installed (dpkg status '{status}'): this test installs and purges \
                 its own and will not touch an admin's; run it on a machine without one"
            );
        }
        for path in ["/usr/bin/limiter", CONFFILE] {
            assert!(!Path::new(path).exists(), "{path} exists but no package owns it: the purge would delete it");
        }
        assert!(
            !Path::new(PIN_DIR).exists(),
            "{PIN_DIR} exists (a limiter with the default pins enforces here): the removal would unload it"
        );
        assert!(
            std::os::unix::net::UnixStream::connect(SOCKET).is_err(),
            "a limiter daemon answers on {SOCKET}: this test will not remove its package"
        );
        let state = Path::new(STATE_DIR);
        let state_dir_existed = state.exists();
        if state_dir_existed {
            let entries = fs::read_dir(state).expect("read the state dir").count();
            assert_eq!(
                entries, 0,
                "{STATE_DIR} holds state (a daemon ran with the defaults): the purge would delete it"
            );
        }
        let guard = Self { purged: false, state_dir_existed };
        let out = dpkg(&["--install", &deb.display().to_string()]);
        assert!(out.status.success(), "dpkg --install failed:\n{}{}", text(&out.stdout), text(&out.stderr));
        guard
    }

    pub fn purge(&mut self) -> Output {
        self.purged = true;
        dpkg(&["--purge", "limiter"])
    }
}

/// `dpkg ARGS`, unattended.
pub fn dpkg(args: &[&str]) -> Output {
    output(Command::new("dpkg").args(args).env("DEBIAN_FRONTEND", "noninteractive"))
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.purged {
            let out = self.purge();
            if !out.status.success() {
                eprintln!("dpkg --purge limiter failed: {}{}", text(&out.stdout), text(&out.stderr));
            }
        }
        if self.state_dir_existed {
            let _ = fs::create_dir_all(STATE_DIR);
        }
    }
}

/// A program on `PATH`, a need for [`crate::require!`].
pub fn tool(name: &str) -> Need<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no {name} on PATH (cargo xtask setup installs it)"))
}

/// What a command printed, stdout then stderr.
pub fn said(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}
