//! `limiter doctor` on a host where the limiter runs, where it has stopped
//! and for a user without privileges, and the `--json` outputs of `status`,
//! `top`, the lists, `explain` and `doctor` validated against their schemas in
//! docs/schemas (a missing required field fails the test).
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use limiter_tests::{
    cli::{ok, unload},
    netns::{Attempt, Daemon, Netns, Pair, limiter_bin},
    privileged, require,
};
use serde_json::Value;

const PORT: u16 = 2525;
const WAIT: Duration = Duration::from_secs(2);

/// What a `limiter doctor` run printed and its exit code.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The line of check `name`, which must have `status` (`ok`, `warn`,
    /// `FAIL`); returns it with the `fix:` line after it, if any.
    fn line(&self, status: &str, name: &str) -> (String, Option<String>) {
        let lines: Vec<&str> = self.stdout.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("{status:<4}  {name}: ")))
            .unwrap_or_else(|| panic!("no `{status}  {name}:` line in:\n{}", self.stdout));
        let fix = lines.get(at + 1).filter(|l| l.starts_with("      fix: ")).map(|l| (*l).to_owned());
        (lines[at].to_owned(), fix)
    }
}

/// `limiter doctor ARGS` in `ns` (network namespace only), as `prefix`
/// (e.g. `setpriv ...`) if given.
fn doctor(ns: Option<&Netns>, prefix: &[&str], args: &[&str]) -> Run {
    let mut cmd: Vec<String> = Vec::new();
    if let Some(ns) = ns {
        cmd.extend(["nsenter".to_owned(), format!("--net={}", ns.path().display())]);
    }
    cmd.extend(prefix.iter().map(|s| (*s).to_owned()));
    cmd.push(limiter_bin().display().to_string());
    cmd.push("doctor".to_owned());
    cmd.extend(args.iter().map(|s| (*s).to_owned()));
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .env_remove("LIMITER_SOCKET")
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "{cmd:?}: {run:?}");
    run
}

/// The doctor flags that point it at `d` and `iface`.
fn at(d: &Daemon, iface: &str) -> Vec<String> {
    vec![
        "--iface".into(),
        iface.into(),
        "--pin-dir".into(),
        d.pin_dir.display().to_string(),
        "--socket".into(),
        d.socket.display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn doctor_with_the_daemon_running_then_stopped() {
    require!(privileged());
    let pair = Pair::new();
    let mut d = Daemon::start(&pair.server, &["--iface", &pair.server_if, "--port", "2525"]);
    let flags = at(&d, &pair.server_if);

    // (1) Running: exit 0, the host checks and the daemon ok, and the
    // interface's mode as `status --json` reports it.
    let run = doctor(Some(&pair.server), &[], &strs(&flags));
    assert_eq!(run.code, Some(0), "{run:?}");
    for name in ["kernel", "btf", "bpffs", "cgroup2", "bpf features", "programs", "daemon", "pins"] {
        let (line, fix) = run.line("ok", name);
        assert!(fix.is_none(), "an ok line has no fix: {line}");
    }
    let status = d.status_json().expect("status --json");
    let mode = status["interfaces"][0]["xdp_mode"].as_str().expect("xdp_mode").to_owned();
    let (line, _) = run.line(if mode == "native" { "ok" } else { "warn" }, &format!("xdp {}", pair.server_if));
    assert!(line.contains(&format!(": {mode} ")), "doctor's mode is status's ({mode}): {line}");
    assert!(run.stdout.lines().last().is_some_and(|l| l.starts_with("healthy: ")), "{run:?}");
    let json = doctor(Some(&pair.server), &[], &[strs(&flags), vec!["--json"]].concat());
    assert_eq!(json.code, Some(0), "{json:?}");
    let v: Value = serde_json::from_str(&json.stdout).expect("doctor --json");
    assert_eq!(v["healthy"], true, "{v}");
    let xdp = v["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == format!("xdp {}", pair.server_if).as_str()))
        .unwrap_or_else(|| panic!("no xdp check: {v}"));
    assert!(xdp["finding"].as_str().is_some_and(|f| f.starts_with(&format!("{mode} "))), "{xdp}");

    // (2) Stopped (SIGTERM): the pins stay and enforce; doctor warns that
    // nothing manages them and says what to do, and still exits 0 (a
    // stopped daemon is a warning: the kernel goes on enforcing).
    assert!(d.stop().is_some_and(|s| s.success()), "daemon stops cleanly: {}", d.log_text());
    let run = doctor(Some(&pair.server), &[], &strs(&flags));
    assert_eq!(run.code, Some(0), "{run:?}");
    let (line, fix) = run.line("warn", "pins");
    assert!(line.contains("enforcement continues without a daemon"), "{line}");
    let fix = fix.unwrap_or_else(|| panic!("no fix after {line}"));
    assert!(fix.contains("systemctl start limiter") && fix.contains("limiter unload --pin-dir"), "{fix}");
    let (line, fix) = run.line("warn", "daemon");
    assert!(line.contains("not running") && fix.is_some(), "{line}");
    // The interface still has the limiter's program, through its pinned link.
    let (line, _) = run.line(if mode == "native" { "ok" } else { "warn" }, &format!("xdp {}", pair.server_if));
    assert!(line.contains("pinned link"), "{line}");

    // Clean up as an admin would; doctor then finds nothing loaded.
    unload(&d);
    let run = doctor(Some(&pair.server), &[], &strs(&flags));
    let (line, _) = run.line("ok", "pins");
    assert!(line.contains("not loaded"), "{line}");
}

#[test]
fn doctor_without_capabilities_fails_with_a_fix() {
    require!(privileged());
    // uid/gid nobody, no groups, no capabilities at all.
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"];
    let run = doctor(None, &nobody, &["--iface", "lo", "--socket", "/nonexistent/limiter.sock"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let (line, fix) = run.line("FAIL", "privileges");
    assert!(line.contains("uid 65534 lacks CAP_BPF"), "{line}");
    let fix = fix.unwrap_or_else(|| panic!("no fix after {line}"));
    assert!(fix.contains("root") && fix.contains("CAP_BPF"), "{fix}");
    assert!(run.stdout.lines().last().is_some_and(|l| l.starts_with("NOT healthy: 1 failure")), "{run:?}");
    assert!(run.stderr.contains("1 check failed"), "{run:?}");
    // What cannot be checked without privileges is a warning, not a failure.
    for name in ["bpf features", "programs"] {
        let (line, _) = run.line("warn", name);
        assert!(line.contains("privileges"), "{line}");
    }
    // The same as JSON: healthy false, the check failed with a fix, exit 1.
    let json = doctor(None, &nobody, &["--json", "--iface", "lo", "--socket", "/nonexistent/limiter.sock"]);
    assert_eq!(json.code, Some(1), "{json:?}");
    let v: Value = serde_json::from_str(&json.stdout).expect("doctor --json");
    assert_eq!(v["healthy"], false);
    let c = v["checks"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "privileges")).expect("privileges");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["fix"].is_string(), "{c}");
    validate("doctor", &v);
}

#[test]
fn doctor_bad_input_exits_2() {
    require!(privileged());
    let run = doctor(None, &[], &["--config", "/nonexistent/limiter.toml"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.starts_with("limiter: cannot read config /nonexistent/limiter.toml"), "{run:?}");
    let run = doctor(None, &[], &["--no-such-flag"]);
    assert_eq!(run.code, Some(2), "{run:?}");
}

// ---------------------------------------------------------------------------
// Schemas

fn schema_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../docs/schemas/{name}.schema.json"))
}

/// The validator of `docs/schemas/NAME.schema.json`, as draft 2020-12.
fn validator(name: &str) -> jsonschema::Validator {
    let path = schema_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{} is not a valid schema: {e}", path.display()))
}

/// The problems of `v` against schema `name`, one line each.
fn problems(name: &str, v: &Value) -> Vec<String> {
    validator(name).iter_errors(v).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

/// Panics with every problem if `v` does not match schema `name`.
fn validate(name: &str, v: &Value) {
    let p = problems(name, v);
    assert!(p.is_empty(), "{name} output does not match docs/schemas/{name}.schema.json:\n{}\n{v:#}", p.join("\n"));
}

/// `v` with the field at `path` (object keys and array indexes) removed.
fn without(v: &Value, path: &[&str]) -> Value {
    let mut copy = v.clone();
    let (last, parents) = path.split_last().expect("a path");
    let mut at = &mut copy;
    for key in parents {
        at = match key.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[*key],
        };
    }
    let removed = at.as_object_mut().and_then(|m| m.remove(*last));
    assert!(removed.is_some(), "{path:?} not in {v}");
    copy
}

/// Removing a required field, or giving it the wrong type, must fail: the
/// schemas would otherwise pass anything.
fn assert_required(name: &str, v: &Value, path: &[&str]) {
    let p = problems(name, &without(v, path));
    assert!(!p.is_empty(), "{name} without {path:?} still validates");
}

#[test]
fn json_outputs_match_their_schemas() {
    // Long on purpose: every --json output against its schema, one after another.
    require!(privileged());
    let pair = Pair::new();
    let _listener = pair.listen(PORT);
    let client = pair.add_client_v4(2);
    let d = Daemon::start(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "3", "--rate", "30/m"],
    );
    let net = pair.net;
    for args in [
        vec![
            "allow".to_owned(),
            "add".into(),
            format!("198.18.{net}.64/26"),
            "--max-conn-per-source".into(),
            "4".into(),
        ],
        vec!["allow".into(), "add".into(), format!("198.18.{net}.128/25"), "--comment".into(), "office".into()],
        vec!["deny".into(), "add".into(), "2001:db8:f066::/48".into()],
        vec!["reserve".into(), "add".into(), format!("198.18.{net}.9"), "--service".into(), "default".into()],
    ] {
        ok(&d, &strs(&args));
    }
    // Two connections held, so `top` has a row; a third and a fourth
    // attempt: one more accepted, one refused at the limit.
    let held = pair.connect_many(client, PORT, 4, WAIT);
    assert_eq!(held.iter().filter(|a| a.is_connected()).count(), 3, "{held:?}");
    // One source with an allow entry's own limit, one exempt.
    let limited = pair.add_client_v4(70);
    let exempt = pair.add_client_v4(130);
    let more = [pair.connect_many(limited, PORT, 1, WAIT), pair.connect_many(exempt, PORT, 1, WAIT)];
    assert!(more.iter().flatten().all(Attempt::is_connected), "{more:?}");
    d.wait_connections(5, Duration::from_secs(2));

    let status = d.client_json(&["status", "--json"]);
    validate("status", &status);
    assert_eq!(status["services"][0]["counters"]["refused_concurrency"], 1, "{status}");
    let top = d.client_json(&["top", "--json"]);
    validate("top", &top);
    // Each source's limit is the one that applies to it.
    let limit = |src: std::net::IpAddr| {
        let rows = top["sources"].as_array().unwrap_or_else(|| panic!("sources: {top}"));
        let row = rows.iter().find(|r| r["source"] == src.to_string().as_str());
        row.unwrap_or_else(|| panic!("{src} not in {top}"))["limit"].clone()
    };
    assert_eq!(limit(client), 3, "the service's: {top}");
    assert_eq!(limit(limited), 4, "the allow entry's: {top}");
    assert_eq!(limit(exempt), Value::Null, "exempt: {top}");
    assert_eq!(top["total_sources"], 3, "{top}");
    assert_eq!(top["total_connections"], 5, "{top}");
    // explain: an allow entry's limit, an exempt source, a denied one.
    let explained: Vec<Value> = [limited.to_string(), exempt.to_string(), "2001:db8:f066::7".to_owned()]
        .iter()
        .map(|a| d.client_json(&["explain", a, "--json"]))
        .collect();
    for v in &explained {
        validate("explain", v);
    }
    let row = |v: &Value, k: &str| v["services"][0][k].clone();
    assert_eq!((row(&explained[0], "max_conn_per_source"), row(&explained[0], "connections")), (4.into(), 1.into()));
    assert_eq!(row(&explained[1], "limits_from"), "exempt", "{}", explained[1]);
    assert_eq!(row(&explained[2], "verdict"), "refused_deny", "{}", explained[2]);
    let lists: Vec<Value> =
        ["allow", "deny", "reserve"].iter().map(|l| d.client_json(&[l, "list", "--json"])).collect();
    for l in &lists {
        assert!(l["entries"].as_array().is_some_and(|e| !e.is_empty()), "{l}");
        validate("list", l);
    }
    let run = doctor(Some(&pair.server), &[], &[strs(&at(&d, &pair.server_if)), vec!["--json"]].concat());
    let doc: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("doctor --json: {e}: {run:?}"));
    validate("doctor", &doc);

    // The schemas catch a missing field, nested ones included.
    assert_required("status", &status, &["services"]);
    assert_required("status", &status, &["pin_dir"]);
    assert_required("status", &status, &["interfaces", "0", "xdp_mode"]);
    assert_required("status", &status, &["services", "0", "max_sessions"]);
    assert_required("status", &status, &["services", "0", "counters", "refused_deny"]);
    assert_required("status", &status, &["totals", "passed_other"]);
    assert_required("status", &status, &["totals", "accepted"]);
    assert_required("status", &status, &["lists", "reserve"]);
    assert_required("top", &top, &["sources", "0", "limit"]);
    assert_required("top", &top, &["total_sources"]);
    assert_required("explain", &explained[0], &["kernel_entry"]);
    assert_required("explain", &explained[0], &["entries", "0", "used"]);
    assert_required("explain", &explained[0], &["services", "0", "verdict"]);
    assert_required("explain", &explained[0], &["services", "0", "tokens"]);
    assert_required("list", &lists[0], &["entries", "0", "origin"]);
    assert_required("list", &lists[2], &["entries", "0", "service"]);
    assert_required("doctor", &doc, &["healthy"]);
    assert_required("doctor", &doc, &["checks", "0", "fix"]);
    // ... and a wrong type or value.
    let mut bad = status.clone();
    bad["services"][0]["max_conn_per_source"] = Value::from("3");
    assert!(!problems("status", &bad).is_empty(), "a string limit validates");
    let mut bad = doc.clone();
    bad["checks"][0]["status"] = Value::from("FAIL");
    assert!(!problems("doctor", &bad).is_empty(), "status FAIL (text form) validates in JSON");
    // Fields are only ever added: an unknown one is fine.
    let mut more = status.clone();
    more["metrics_listen"] = Value::from("127.0.0.1:9100");
    more["services"][0]["counters"]["refused_new_rule"] = Value::from(0);
    validate("status", &more);
    drop((held, more));
}
