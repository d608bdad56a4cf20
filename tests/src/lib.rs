//! Helpers for limiter's privileged tests: crafted frames, the one
//! skip-or-fail guard ([`require!`]), guards that own namespaces, veths and
//! daemons and clean them up, what the policy tests share, real servers to
//! put behind the limiter (private Postfix, Dovecot and vsftpd instances,
//! with test certificates), real clients (Python's) to assert what users
//! see, and nftables `ct count` as the reference the limiter is compared
//! with.

pub mod cli;
pub mod dovecot;
pub mod fail2ban;
pub mod frames;
pub mod ftp;
pub mod kernel;
pub mod model;
pub mod modules;
pub mod netns;
pub mod nft;
pub mod package;
pub mod policy;
pub mod postfix;
pub mod pyclient;
pub mod scratch;
pub mod tls;

// The schema and object tests' dev-dependencies, unused by the library's own unit tests.
#[cfg(test)]
use jsonschema as _;
#[cfg(test)]
use object as _;

/// What a test needs of the host: `Ok` with what was found, or why the
/// test cannot run here. Checked by [`require!`].
pub type Need<T = ()> = Result<T, String>;

/// Whether the environment demands that privileged tests run (CI sets it).
#[must_use]
pub fn privileged_required() -> bool {
    std::env::var("LIMITER_REQUIRE_PRIVILEGED_TESTS").is_ok_and(|v| v == "1")
}

/// How much slower than this project's machine the tests run:
/// `LIMITER_TEST_TIME_FACTOR` (the qemu guests of `cargo xtask test --kernel`
/// set it, 10 under software emulation), 1 when unset. Waits for a condition
/// scale their limit with it; a bound that a test asserts as a property
/// (e.g. "a status answer within 2 s") does not.
#[must_use]
pub fn time_factor() -> u32 {
    std::env::var("LIMITER_TEST_TIME_FACTOR").ok().and_then(|v| v.parse().ok()).filter(|&f| f >= 1).unwrap_or(1)
}

/// A wait limit `d`, scaled by [`time_factor`].
#[must_use]
pub fn patience(d: std::time::Duration) -> std::time::Duration {
    d * time_factor()
}

/// Root: what a test that changes the host needs.
pub fn root() -> Need {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 { Ok(()) } else { Err("not root".into()) }
}

/// Root and a build with the kernel object: what every kernel test needs.
pub fn privileged() -> Need {
    root()?;
    if limiter_user::EBPF_OBJECT.is_empty() {
        return Err("built without the kernel object (AYA_BUILD_SKIP)".into());
    }
    Ok(())
}

/// Prints why `test` is skipped, or panics instead when
/// `LIMITER_REQUIRE_PRIVILEGED_TESTS=1`. Called by [`require!`].
pub fn skip(test: &str, reason: &str) {
    assert!(!privileged_required(), "{test}: cannot run ({reason}) and LIMITER_REQUIRE_PRIVILEGED_TESTS=1");
    eprintln!("SKIPPED {test}: {reason}");
}

/// The name of the function it is written in (the test's, in a `#[test]`
/// function), so that no test has to spell its own name.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn here() {}
        let path = ::std::any::type_name_of_val(&here);
        let path = path.strip_suffix("::here").unwrap_or(path);
        path.rsplit("::").next().unwrap_or(path)
    }};
}

/// The one skip-or-fail guard of a test: checks each [`Need`] in order, and
/// at the first that does not hold returns from the test with the reason
/// printed ([`skip`]), or fails it when `LIMITER_REQUIRE_PRIVILEGED_TESTS=1`.
/// Evaluates to what the last need found.
///
/// ```text
/// require!(privileged(), nft::available());
/// let deb = require!(deb());
/// ```
#[macro_export]
macro_rules! require {
    ($need:expr $(,)?) => {
        match $need {
            Ok(found) => found,
            Err(reason) => {
                $crate::skip($crate::test_name!(), &reason);
                return;
            }
        }
    };
    ($need:expr, $($rest:expr),+ $(,)?) => {{
        $crate::require!($need);
        $crate::require!($($rest),+)
    }};
}
