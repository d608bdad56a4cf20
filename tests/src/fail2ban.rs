//! A `fail2ban-server` of a test's own: private config, socket, database and
//! log, with limiter's filter, action and jail as shipped, and the test's
//! overrides in `jail.local` (as an admin enables the jail).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// The fail2ban files as the repository has them (the package ships them as examples).
#[must_use]
pub fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/fail2ban")
}

/// Runs `fail2ban-regex` with the shipped filter on the log at `log`:
/// (the "Failregex:" line with the failures counted, the matched lines).
///
/// # Panics
/// If `fail2ban-regex` cannot run or fails.
#[must_use]
pub fn regex_matches(log: &Path) -> (String, String) {
    let out = Command::new("fail2ban-regex")
        .args(["--print-all-matched"])
        .arg(log)
        .arg(packaging().join("filter.d/limiter.conf"))
        .output()
        .expect("fail2ban-regex (Debian package fail2ban; cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "fail2ban-regex failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let total = text.lines().find(|l| l.starts_with("Failregex:")).unwrap_or("").to_owned();
    let hits = text.split("|- Matched line(s):").nth(1).unwrap_or("").to_owned();
    (total, hits)
}

/// A running `fail2ban-server -f`, killed on drop.
pub struct Fail2ban {
    child: Child,
    dir: PathBuf,
}

impl Fail2ban {
    /// Starts a server whose config, socket, pid file and log are in `dir`:
    /// `shipped`'s `filter.d`, `action.d` and `jail.d` files (limiter's), Debian's
    /// `common.conf` (the filter includes it), and `jail_local` as `jail.local`,
    /// which fail2ban reads after `jail.d/*.conf`.
    #[must_use]
    pub fn start(dir: &Path, shipped: &Path, jail_local: &str) -> Self {
        let conf = dir.join("f2b");
        for sub in ["filter.d", "action.d", "jail.d"] {
            std::fs::create_dir_all(conf.join(sub)).expect("fail2ban dirs");
        }
        std::fs::copy("/etc/fail2ban/filter.d/common.conf", conf.join("filter.d/common.conf"))
            .expect("/etc/fail2ban/filter.d/common.conf (Debian package fail2ban)");
        for f in ["filter.d/limiter.conf", "action.d/limiter.conf", "jail.d/limiter.conf"] {
            std::fs::copy(shipped.join(f), conf.join(f))
                .unwrap_or_else(|e| panic!("shipped fail2ban file {}: {e}", shipped.join(f).display()));
        }
        std::fs::write(conf.join("fail2ban.conf"), "[Definition]\nloglevel = INFO\ndbfile = :memory:\n")
            .expect("fail2ban.conf");
        std::fs::write(conf.join("jail.local"), jail_local).expect("jail.local");
        let child = Command::new("fail2ban-server")
            .arg("-f")
            .arg("-x")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(dir.join("f2b.sock"))
            .arg("-p")
            .arg(dir.join("f2b.pid"))
            .arg("--logtarget")
            .arg(dir.join("f2b.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fail2ban-server (Debian package fail2ban)");
        Self { child, dir: dir.to_owned() }
    }

    /// What the server logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("f2b.log")).unwrap_or_default()
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The run-time deny entries of a `limiter deny list --json` answer, as
/// (prefix, comment): what a ban added.
#[must_use]
pub fn denied_entries(list: &serde_json::Value) -> Vec<(String, String)> {
    list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (e["prefix"].as_str().unwrap_or("").to_owned(), e["comment"].as_str().unwrap_or("").to_owned()))
        .collect()
}
