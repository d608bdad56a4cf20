//! A check's finding and the report of all of them: the types `--json`
//! prints, and the text lines and closing summary.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    /// The word the text output starts the line with.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One check's finding, and for `warn`/`FAIL` what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend(
    "if" = { "properties": { "status": { "enum": ["warn", "fail"] } } },
    "then" = { "properties": { "fix": { "type": "string" } } }
))]
pub struct Check {
    /// kernel, btf, privileges, bpffs, cgroup2, bpf features, programs, config, daemon, pins, or xdp IF (one per interface).
    pub name: String,
    pub status: Status,
    pub finding: String,
    /// What to do; null when the status is ok.
    pub fix: Option<String>,
}

/// `limiter doctor --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "limiter doctor --json",
    description = "The checks of `limiter doctor`, in the order it ran them. healthy is false when any check \
                   failed (exit code 1). Fields are only ever added: every object allows properties not listed \
                   here."
)]
pub struct Report {
    #[schemars(length(min = 1))]
    pub checks: Vec<Check>,
    /// No check failed.
    pub healthy: bool,
}

impl Check {
    pub(super) fn ok(name: impl Into<String>, finding: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Ok, finding: finding.into(), fix: None }
    }

    pub(super) fn warn(name: impl Into<String>, finding: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Warn, finding: finding.into(), fix: Some(fix.into()) }
    }

    pub(super) fn fail(name: impl Into<String>, finding: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Fail, finding: finding.into(), fix: Some(fix.into()) }
    }
}

/// A check as text: `ok|warn|FAIL  name: finding`, and `fix: ...` indented
/// below it for a warning or a failure.
#[must_use]
pub fn format_check(c: &Check) -> String {
    let mut s = format!("{:<4}  {}: {}\n", c.status.label(), c.name, c.finding);
    if let Some(fix) = &c.fix {
        let _ = writeln!(s, "      fix: {fix}");
    }
    s
}

/// The closing line of the text report.
#[must_use]
pub fn summary(checks: &[Check]) -> String {
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    let (fails, warns) = (count(Status::Fail), count(Status::Warn));
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    if fails == 0 {
        format!("healthy: {}, {}", plural(checks.len(), "check"), plural(warns, "warning"))
    } else {
        format!("NOT healthy: {}, {}", plural(fails, "failure"), plural(warns, "warning"))
    }
}

/// The checks and whether the host is healthy.
#[must_use]
pub fn report(checks: &[Check]) -> Report {
    Report { checks: checks.to_vec(), healthy: healthy(checks) }
}

/// No check failed.
#[must_use]
pub fn healthy(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol;

    #[test]
    fn lines_and_json() {
        let ok = Check::ok("kernel", "6.18.0");
        let warn = Check::warn("daemon", "not running", "systemctl start limiter");
        let fail = Check::fail("privileges", "uid 65534 lacks CAP_BPF", "run as root");
        assert_eq!(format_check(&ok), "ok    kernel: 6.18.0\n");
        assert_eq!(format_check(&warn), "warn  daemon: not running\n      fix: systemctl start limiter\n");
        assert_eq!(format_check(&fail), "FAIL  privileges: uid 65534 lacks CAP_BPF\n      fix: run as root\n");
        assert_eq!(summary(&[ok.clone(), warn.clone()]), "healthy: 2 checks, 1 warning");
        assert_eq!(summary(std::slice::from_ref(&ok)), "healthy: 1 check, 0 warnings");
        assert_eq!(summary(&[ok.clone(), warn.clone(), fail.clone()]), "NOT healthy: 1 failure, 1 warning");
        let r = report(&[ok.clone(), fail.clone()]);
        assert_eq!(r, Report { checks: vec![ok.clone(), fail], healthy: false });
        assert!(report(&[ok, warn]).healthy);
    }
    #[test]
    fn json_text_as_before() {
        // `doctor --json` as `report_json` printed it with `json!` before
        // the report had a type: keys in alphabetical order.
        let before = r#"{
  "checks": [
    {
      "finding": "6.1.0 (ok)",
      "fix": null,
      "name": "kernel",
      "status": "ok"
    },
    {
      "finding": "not running",
      "fix": "start it",
      "name": "daemon",
      "status": "warn"
    },
    {
      "finding": "no \"iface\"",
      "fix": "check",
      "name": "xdp eth0",
      "status": "fail"
    }
  ],
  "healthy": false
}"#;
        let checks = [
            Check::ok("kernel", "6.1.0 (ok)"),
            Check::warn("daemon", "not running", "start it"),
            Check::fail("xdp eth0", "no \"iface\"", "check"),
        ];
        let r = report(&checks);
        assert_eq!(protocol::json_text(&r, true).expect("json"), before);
        assert_eq!(serde_json::from_str::<Report>(before).expect("parse"), r);
    }
}
