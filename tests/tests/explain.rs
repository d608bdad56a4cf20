//! `limiter explain` against a running daemon: for sources covered by nested
//! allow, deny and reserve entries (some from the config file, some added at
//! run time), it names the entry that decides, its origin and the limit;
//! it counts what a source holds; and the verdict it predicts is the one
//! the next real SYN gets. Bad input: one line, the documented exit code.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    net::{IpAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::{Scratch, limiter, limiter_at, ok, path_str},
    netns::{Attempt, Daemon, Pair, streams},
    patience,
    policy::{PORT, WAIT, assert_bad_input, listen_echo, smtp_config},
    privileged, require,
};
use serde_json::Value;

/// `limiter explain ADDR --service smtp --json`.
fn explain(d: &Daemon, addr: IpAddr) -> Value {
    d.client_json(&["explain", &addr.to_string(), "--service", "smtp", "--json"])
}

/// The smtp row of an explain reply.
fn smtp(v: &Value) -> &Value {
    let rows = v["services"].as_array().unwrap_or_else(|| panic!("services: {v}"));
    assert_eq!(rows.len(), 1, "--service smtp gives one row: {v}");
    &rows[0]
}

/// Waits until `addr`'s smtp row shows `n` connections and none in flight
/// (a handshake the client saw complete reaches the server's count a moment
/// later); returns the reply.
fn settled(d: &Daemon, addr: IpAddr, n: u64) -> Value {
    let limit = patience(Duration::from_secs(3));
    let start = Instant::now();
    loop {
        let v = explain(d, addr);
        let row = smtp(&v);
        if row["connections"] == n && row["in_flight"] == 0 {
            return v;
        }
        assert!(start.elapsed() < limit, "{addr}: want {n} connections and none in flight within {limit:?}: {v:#}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The next real SYN from `src`: connected (kept open) or refused at once.
fn next_syn(pair: &Pair, src: IpAddr) -> Option<TcpStream> {
    match pair.connect_parallel(src, PORT, 1, WAIT).pop() {
        Some(Attempt::Connected(s)) => Some(s),
        Some(Attempt::Refused(_)) => None,
        other => panic!("{src}: neither connected nor refused: {other:?}"),
    }
}

/// The verdict `explain` predicts for `src`, then the next real SYN's: they
/// must agree, and be `want`. Returns the connection if it got in.
fn predicted_then_real(d: &Daemon, pair: &Pair, src: IpAddr, want: &str) -> Option<TcpStream> {
    let v = explain(d, src);
    let predicted = smtp(&v)["verdict"].as_str().unwrap_or_else(|| panic!("verdict: {v}")).to_owned();
    assert_eq!(predicted, want, "{src}: {v:#}");
    let got = next_syn(pair, src);
    assert_eq!(got.is_some(), predicted == "accepted", "{src}: explain predicted {predicted}, the SYN got the other");
    got
}

/// The 1-based line of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> u64 {
    let i = text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle} not in {text}"));
    u64::try_from(i).expect("small") + 1
}

/// The entries of `v` as (list, prefix, origin, used).
fn entries(v: &Value) -> Vec<(String, String, String, bool)> {
    let all = v["entries"].as_array().unwrap_or_else(|| panic!("entries: {v}"));
    all.iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_else(|| panic!("{k}: {e}")).to_owned();
            (s("list"), s("prefix"), s("origin"), e["used"].as_bool().unwrap_or_else(|| panic!("used: {e}")))
        })
        .collect()
}

fn entry(list: &str, prefix: &str, origin: &str, used: bool) -> (String, String, String, bool) {
    (list.to_owned(), prefix.to_owned(), origin.to_owned(), used)
}

/// `limiter explain` of the office at its limit, as an admin reads it: the
/// source, no deny entry, the deciding allow entry and the shadowed config
/// one with its line, then the service's counts and verdict.
fn assert_office_view(d: &Daemon, text: &str, office: IpAddr, office_net: &str, net24: &str) {
    let out = ok(d, &["explain", &office.to_string()]);
    let text_out = out.stdout;
    let lines: Vec<&str> = text_out.lines().collect();
    assert_eq!(lines[0], format!("{office} is a source of its own (ipv4_prefix 32)"), "{text_out}");
    assert_eq!(lines[1], "  deny: none", "{text_out}");
    assert_eq!(lines[2], format!("  allow {office_net} max_conn 2 (run time, \"office\")"), "{text_out}");
    assert_eq!(
        lines[3],
        format!(
            "  allow {net24} max_conn 5 (config line {}, \"partner\"), shadowed by a longer prefix",
            line_of(text, &format!("prefix = \"{net24}\""))
        ),
        "{text_out}"
    );
    let smtp_line = lines.iter().find(|l| l.trim_start().starts_with("smtp:")).unwrap_or_else(|| panic!("{text_out}"));
    assert_eq!(
        smtp_line.split_whitespace().collect::<Vec<_>>().join(" "),
        format!(
            "smtp:{PORT} 2/2 connections, 0 in flight, no rate limit -> next SYN: refused (reset): at its connection limit"
        ),
        "{text_out}"
    );
}

/// Nested entries, from the config and from run time, and four sources in
/// them: the entry that decides and its limit, the counts, and for each the
/// verdict predicted and the one the next SYN gets (accepted, refused by
/// connections, denied, exempt).
#[test]
fn explain_names_the_deciding_entry_and_predicts_the_next_syn() {
    // Long on purpose: one scenario, read top to bottom.
    require!(privileged());
    let pair = Pair::new();
    let _echo = listen_echo(&pair, PORT);
    let net = pair.net;
    let (partner, office, backup, banned) =
        (pair.add_client_v4(10), pair.add_client_v4(70), pair.add_client_v4(85), pair.add_client_v4(201));
    let scratch = Scratch::new();
    let text = smtp_config(
        &pair.server_if,
        "max_conn_per_source = 3\n",
        &format!(
            "[[allow]]\nprefix = \"198.18.{net}.0/24\"\nmax_conn_per_source = 5\ncomment = \"partner\"\n\n\
             [[deny]]\nprefix = \"198.18.{net}.200/29\"\ncomment = \"abuse\"\n\n\
             [[reserve]]\nservice = \"smtp\"\nprefix = \"198.18.{net}.0/24\"\n"
        ),
    );
    let config = scratch.write("limiter.toml", &text);
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    let office_net = format!("198.18.{net}.64/26");
    let backup_net = format!("198.18.{net}.80/28");
    ok(&d, &["allow", "add", &office_net, "--max-conn-per-source", "2", "--comment", "office"]);
    ok(&d, &["allow", "add", &backup_net, "--comment", "backup mx"]);
    ok(&d, &["reserve", "add", &office_net, "--service", "smtp", "--comment", "relay"]);

    // The office: the run-time /26 decides (limit 2), the config's /24 is
    // shadowed; both reserve entries count.
    let v = explain(&d, office);
    assert_eq!(v["source"], office.to_string(), "/32 sources: {v}");
    assert_eq!(v["source_prefix"], 32, "{v}");
    let net24 = format!("198.18.{net}.0/24");
    assert_eq!(
        entries(&v),
        [
            entry("allow", &office_net, "runtime", true),
            entry("reserve", &office_net, "runtime", true),
            entry("allow", &net24, "config", false),
            entry("reserve", &net24, "config", true),
        ],
        "{v:#}"
    );
    let config_allow = &v["entries"][2];
    assert_eq!(config_allow["line"], line_of(&text, &format!("prefix = \"{net24}\"")), "{v:#}");
    assert_eq!(config_allow["comment"], "partner", "{v:#}");
    assert_eq!(v["entries"][0]["comment"], "office", "{v:#}");
    assert_eq!(v["kernel_entry"]["prefix"], office_net, "the trie's longest match: {v:#}");
    assert_eq!(v["kernel_entry"]["allow"], "limits", "{v:#}");
    assert_eq!(v["kernel_entry"]["reserve"], serde_json::json!(["smtp"]), "{v:#}");
    let row = smtp(&v);
    assert_eq!(
        (&row["limits_from"], &row["max_conn_per_source"], &row["connections"], &row["on_reserve_list"]),
        (&"allow".into(), &2.into(), &0.into(), &true.into()),
        "{v:#}"
    );
    assert_eq!(row["tokens"], Value::Null, "the allow entry has no rate, and replaces the service's: {v:#}");

    // Accepted, then at its limit: refused by the connections rule.
    let mut held = streams(pair.connect_many(office, PORT, 1, WAIT));
    assert_eq!(held.len(), 1);
    settled(&d, office, 1);
    held.extend(predicted_then_real(&d, &pair, office, "accepted"));
    assert_eq!(held.len(), 2);
    let v = settled(&d, office, 2);
    assert_eq!(smtp(&v)["connections"], 2, "a source holding 2 shows 2: {v:#}");
    assert!(predicted_then_real(&d, &pair, office, "refused_concurrency").is_none());

    // The partner: only the config's /24 covers it, limit 5, with its line.
    let v = explain(&d, partner);
    assert_eq!(
        entries(&v),
        [entry("allow", &net24, "config", true), entry("reserve", &net24, "config", true)],
        "{v:#}"
    );
    assert_eq!(smtp(&v)["max_conn_per_source"], 5, "{v:#}");
    held.extend(predicted_then_real(&d, &pair, partner, "accepted"));
    assert_eq!(held.len(), 3);

    // The backup MX: the exempt /28 decides; it holds more than any limit
    // and its next SYN still gets in.
    let mut backup_held = streams(pair.connect_many(backup, PORT, 6, WAIT));
    assert_eq!(backup_held.len(), 6, "exempt: every attempt gets in");
    let v = settled(&d, backup, 6);
    assert_eq!(v["entries"][0]["prefix"], backup_net, "{v:#}");
    assert_eq!(v["entries"][0]["used"], true, "{v:#}");
    assert_eq!(v["kernel_entry"]["allow"], "exempt", "{v:#}");
    assert_eq!(smtp(&v)["limits_from"], "exempt", "{v:#}");
    assert_eq!(smtp(&v)["max_conn_per_source"], Value::Null, "{v:#}");
    backup_held.extend(predicted_then_real(&d, &pair, backup, "accepted"));
    assert_eq!(backup_held.len(), 7);

    // The banned host: the config's deny /29 decides over the /24 allow.
    let v = explain(&d, banned);
    let deny = v["entries"].as_array().and_then(|e| e.iter().find(|e| e["list"] == "deny")).cloned();
    let deny = deny.unwrap_or_else(|| panic!("no deny entry: {v:#}"));
    assert_eq!(deny["prefix"], format!("198.18.{net}.200/29"), "{v:#}");
    assert_eq!(deny["line"], line_of(&text, &format!("prefix = \"198.18.{net}.200/29\"")), "{v:#}");
    assert_eq!((&deny["used"], &deny["comment"]), (&true.into(), &"abuse".into()), "{v:#}");
    assert_eq!(smtp(&v)["limits_from"], "deny", "{v:#}");
    assert!(predicted_then_real(&d, &pair, banned, "refused_deny").is_none());

    // Denied at run time as a host, as fail2ban bans: the entry lives in
    // `LIST_HOSTS`, not the trie, and explain reads it there; it decides,
    // the config's /29 is shadowed.
    let host = format!("{banned}/32");
    ok(&d, &["deny", "add", &banned.to_string(), "--comment", "fail2ban"]);
    let v = explain(&d, banned);
    let denies: Vec<_> = entries(&v).into_iter().filter(|e| e.0 == "deny").collect();
    assert_eq!(
        denies,
        [entry("deny", &host, "runtime", true), entry("deny", &format!("198.18.{net}.200/29"), "config", false)],
        "{v:#}"
    );
    assert_eq!((&v["kernel_entry"]["prefix"], &v["kernel_entry"]["deny"]), (&host.into(), &true.into()), "{v:#}");
    assert!(predicted_then_real(&d, &pair, banned, "refused_deny").is_none());

    // What an admin reads.
    assert_office_view(&d, &text, office, &office_net, &net24);
}

/// Sources are counted by prefix: two IPv6 addresses of one /64 are one
/// source, and `explain` of either shows what the other holds.
#[test]
fn explain_shows_the_source_an_address_falls_in() {
    require!(privileged());
    let pair = Pair::new();
    let _echo = listen_echo(&pair, PORT);
    let (a, b) = (pair.add_client_v6(5, 1), pair.add_client_v6(5, 2));
    let scratch = Scratch::new();
    let config = scratch.write("limiter.toml", &smtp_config(&pair.server_if, "max_conn_per_source = 3\n", ""));
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    let held = streams(pair.connect_many(a, PORT, 2, WAIT));
    assert_eq!(held.len(), 2);
    let v = settled(&d, b, 2);
    let source = format!("2001:db8:{:x}:5::/64", pair.net);
    assert_eq!((&v["source"], &v["source_prefix"]), (&source.clone().into(), &64.into()), "{v:#}");
    assert_eq!(v["kernel_entry"], Value::Null, "no list entries: {v:#}");
    assert_eq!(smtp(&v)["limits_from"], "service", "{v:#}");
    assert_eq!(smtp(&v)["max_conn_per_source"], 3, "{v:#}");
    let out = ok(&d, &["explain", &b.to_string()]);
    assert!(out.stdout.starts_with(&format!("{b} falls in {source} (ipv6_prefix 64)\n")), "{}", out.stdout);
    // b's SYN is the source's third of 3: accepted; then a's is refused.
    let third = predicted_then_real(&d, &pair, b, "accepted");
    assert!(third.is_some());
    settled(&d, a, 3);
    assert!(predicted_then_real(&d, &pair, a, "refused_concurrency").is_none());
    drop(held);
}

/// The rate and sessions rules: `explain` shows the tokens a source has
/// left and the service's sessions, and predicts a refusal by each, in the
/// spec's order (a full pool refuses before an empty bucket).
#[test]
fn explain_predicts_the_rate_and_sessions_rules() {
    require!(privileged());
    let pair = Pair::new();
    let _echo = listen_echo(&pair, PORT);
    let (eager, other, late) = (pair.add_client_v4(2), pair.add_client_v4(3), pair.add_client_v4(4));
    let scratch = Scratch::new();
    // Two attempts a minute, both at once: nothing refills while the test runs.
    let config = scratch
        .write("limiter.toml", &smtp_config(&pair.server_if, "rate = \"2/m\"\nburst = 2\nmax_sessions = 3\n", ""));
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    let tokens = |src| smtp(&explain(&d, src))["tokens"].clone();
    assert_eq!(tokens(eager), 2, "a full bucket");
    let mut held: Vec<TcpStream> = predicted_then_real(&d, &pair, eager, "accepted").into_iter().collect();
    assert_eq!(tokens(eager), 1);
    held.extend(predicted_then_real(&d, &pair, eager, "accepted"));
    let v = settled(&d, eager, 2);
    let row = smtp(&v);
    assert_eq!(
        (&row["tokens"], &row["burst"], &row["token_every_ms"]),
        (&0.into(), &2.into(), &30_000.into()),
        "{v:#}"
    );
    assert_eq!((&row["sessions"], &row["max_sessions"]), (&2.into(), &3.into()), "{v:#}");
    assert_eq!(held.len(), 2);
    assert!(predicted_then_real(&d, &pair, eager, "refused_rate").is_none());
    // Another source takes the third session: the pool is full for everyone
    // now, and the eager source (its bucket empty too) meets the sessions
    // rule first.
    held.extend(predicted_then_real(&d, &pair, other, "accepted"));
    settled(&d, other, 1);
    assert_eq!(smtp(&explain(&d, late))["sessions"], 3);
    assert!(predicted_then_real(&d, &pair, late, "refused_sessions").is_none());
    assert!(predicted_then_real(&d, &pair, eager, "refused_sessions").is_none());
}

/// Not an address, an unknown service, no daemon: one line, exit 2, 2, 3.
#[test]
fn explain_refuses_bad_input_in_one_line() {
    require!(privileged());
    let pair = Pair::new();
    let d = Daemon::start(&pair.server, &["--iface", &pair.server_if, "--port", "2525"]);
    let out = limiter(&d, &["explain", "198.51.100.300"]);
    assert_bad_input(&out, "not an address", "198.51.100.300");
    let out = limiter(&d, &["explain", "198.51.100.0/24"]);
    assert_bad_input(&out, "a prefix", "expected a client address");
    let out = limiter(&d, &["explain", "198.51.100.7", "--service", "smtpx"]);
    assert_bad_input(&out, "unknown service", "unknown service 'smtpx'");
    assert!(out.stderr.contains("default"), "names the services there are: {out:?}");
    let gone = Scratch::new();
    let out = limiter_at(&gone.0.join("nothing.sock"), &["explain", "198.51.100.7"]);
    assert_eq!(out.code, Some(3), "daemon not running: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("not running"), "{out:?}");
}
