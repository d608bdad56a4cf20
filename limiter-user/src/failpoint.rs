//! Crash points for tests: `LIMITER_FAILPOINT=NAME` makes the daemon kill
//! itself with SIGKILL when it reaches the step `NAME`, so a test can prove
//! that every step of a start (and of a seeded connection's release) is
//! either completed or redone by the next start. Unset, a hit costs one
//! environment look-up, at steps that run once per start or per release.

/// Every failpoint, in the order a first start reaches them.
pub const ALL: [&str; 11] = [
    "seeding-flags",
    "sock-ops-attached",
    "sock-ops-pinned",
    "seed-table-read",
    "seed-partial",
    "seed-written",
    "seed-done",
    "xdp-attached",
    "xdp-pinned",
    "ready",
    "reconcile",
];

/// Dies here (SIGKILL, no clean-up at all) if `LIMITER_FAILPOINT` names `name`.
pub fn hit(name: &str) {
    debug_assert!(ALL.contains(&name), "unknown failpoint {name}");
    if std::env::var_os("LIMITER_FAILPOINT").is_some_and(|v| v == name) {
        log::warn!("failpoint {name}: killing the daemon (LIMITER_FAILPOINT)");
        // SAFETY: signals this process; SIGKILL cannot be caught.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
