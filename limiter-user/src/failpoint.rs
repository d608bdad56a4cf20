//! Crash points for tests: `LIMITER_FAILPOINT=NAME` makes the daemon kill
//! itself with SIGKILL when it reaches the step `NAME`, so a test can prove
//! that every step of a start, of a seeded connection's release, of a list
//! change, of a reload and of a stop is either completed or redone by the
//! next start, and that what was acknowledged stays. Unset, a hit costs one
//! environment look-up, at steps that run once per start, release, change
//! or stop.

/// Every failpoint: a start's, in the order a first start reaches them;
/// then a running daemon's (`tests/tests/restart.rs` kills it at each).
pub const ALL: [&str; 17] = [
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
    // lists.json written to its temporary file, not yet renamed over the old.
    "lists-temp-written",
    // A list change stored in lists.json, not yet in the kernel.
    "list-stored",
    // A list change in the kernel, not yet acknowledged.
    "list-applied",
    // A reload's service id table written, its policy not yet.
    "reload-ids-written",
    // A reload in force, not yet acknowledged.
    "reload-applied",
    // SIGTERM received, the daemon on its way out.
    "stopping",
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
