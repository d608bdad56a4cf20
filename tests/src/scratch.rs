//! Scratch directories and unique names for what the tests create.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

/// Names handed out so far in this process.
static NAMES: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `{prefix}{pid}x{n}`.
#[must_use]
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id() % 100_000, NAMES.fetch_add(1, Ordering::Relaxed))
}

/// A private directory for config files, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    #[must_use]
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("limiter-scratch-"));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    /// Writes `text` to `name` in the directory (replacing it) and returns the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits up to `grace` for the server master `pid` (of an instance a test
/// started and has asked to stop) to exit, then kills it: a stuck server
/// must not outlive its test.
pub fn reap(pid: libc::pid_t, grace: std::time::Duration) {
    let deadline = std::time::Instant::now() + grace;
    // SAFETY: signal 0 only probes the process.
    let alive = || unsafe { libc::kill(pid, 0) } == 0;
    while alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if alive() {
        // SAFETY: the master of the test's own instance, stuck.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
