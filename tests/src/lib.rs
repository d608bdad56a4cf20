//! Helpers for limiter's privileged tests: crafted frames, the skip policy,
//! guards that own namespaces, veths and daemons and clean them up, a
//! private Postfix to put behind the limiter, and nftables `ct count` as the
//! reference the limiter is compared with.

pub mod cli;
pub mod frames;
pub mod kernel;
pub mod modules;
pub mod netns;
pub mod nft;
pub mod postfix;

// The schema tests' dev-dependency, unused by the library's own unit tests.
#[cfg(test)]
use jsonschema as _;

/// Whether the environment demands that privileged tests run (CI sets it).
#[must_use]
pub fn privileged_required() -> bool {
    std::env::var("LIMITER_REQUIRE_PRIVILEGED_TESTS").is_ok_and(|v| v == "1")
}

/// Returns true if the test may run. Otherwise prints why it is skipped,
/// and panics instead when `LIMITER_REQUIRE_PRIVILEGED_TESTS=1`.
#[must_use]
pub fn can_run_privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("not root")
    } else if limiter_user::EBPF_OBJECT.is_empty() {
        Some("built without the kernel object (AYA_BUILD_SKIP)")
    } else {
        None
    };
    reason.is_none_or(|r| skip(test, r))
}

/// Prints why `test` is skipped and returns false, or panics instead when
/// `LIMITER_REQUIRE_PRIVILEGED_TESTS=1`.
#[must_use]
pub fn skip(test: &str, reason: &str) -> bool {
    assert!(!privileged_required(), "{test}: cannot run ({reason}) and LIMITER_REQUIRE_PRIVILEGED_TESTS=1");
    eprintln!("SKIPPED {test}: {reason}");
    false
}
