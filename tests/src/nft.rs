//! nftables as a reference enforcer for differential tests: a `ct count`
//! ruleset that mirrors `limiter run --max-conn-per-source N --action reset`
//! with limiter's default prefixes (IPv4 /32, IPv6 /64), and the server's own
//! view of its connections (`ss`), which neither enforcer controls.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use crate::netns::Netns;

/// The table the ruleset creates (deleted with its namespace).
pub const TABLE: &str = "limiter_diff";

/// The `nft` binary: `LIMITER_NFT` if set, else `nft` from `PATH`.
#[must_use]
pub fn nft_bin() -> String {
    std::env::var("LIMITER_NFT").unwrap_or_else(|_| "nft".to_owned())
}

/// Whether `nft` runs here (a need for [`crate::require!`]).
pub fn available() -> crate::Need {
    match Command::new(nft_bin()).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("`{} --version` failed: {}", nft_bin(), String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Err(format!("cannot run `{}`: {e}", nft_bin())),
    }
}

/// The ruleset: new TCP connections to `port` are refused with a TCP RST
/// when their source already has more than `limit` conntrack entries
/// (`ct count over`), keyed per IPv4 address and per IPv6 /64 in two
/// dynamic sets. Each reject rule has a counter (see [`rejected`]).
#[must_use]
pub fn ct_count_ruleset(port: u16, limit: u32) -> String {
    ct_count_ruleset_with(port, limit, "reject with tcp reset")
}

/// [`ct_count_ruleset`] with another verdict for the refused attempts
/// (`"drop"`, `"reject with tcp reset"`).
#[must_use]
pub fn ct_count_ruleset_with(port: u16, limit: u32, verdict: &str) -> String {
    format!(
        "table inet {TABLE} {{
    set per_v4 {{ type ipv4_addr; size 65535; flags dynamic; }}
    set per_v6_64 {{ type ipv6_addr; size 65535; flags dynamic; }}
    chain input {{
        type filter hook input priority filter; policy accept;
        tcp dport {port} ct state new add @per_v4 {{ ip saddr ct count over {limit} }} counter {verdict}
        tcp dport {port} ct state new add @per_v6_64 {{ ip6 saddr and ffff:ffff:ffff:ffff:: ct count over {limit} }} \
         counter {verdict}
    }}
}}
"
    )
}

/// Loads `ruleset` (`nft -f -`) in the network namespace `ns`.
pub fn install(ns: &Netns, ruleset: &str) {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args([nft_bin().as_str(), "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn nft: {e}"));
    child.stdin.take().expect("nft stdin").write_all(ruleset.as_bytes()).expect("write ruleset to nft");
    let out = child.wait_with_output().expect("wait for nft");
    assert!(out.status.success(), "nft -f failed: {}\n{ruleset}", String::from_utf8_lossy(&out.stderr));
}

/// Deletes [`TABLE`] from `ns` again; for `Drop` guards, so it never panics
/// (conntrack entries stay until they time out, but nothing counts them).
pub fn uninstall(ns: &Netns) {
    delete_table(ns, TABLE);
}

/// Deletes the `inet` table `table` from `ns`; for `Drop` guards, so it
/// never panics.
pub fn delete_table(ns: &Netns, table: &str) {
    let _ = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args([nft_bin().as_str(), "delete", "table", "inet", table])
        .output();
}

/// Packets refused by the ruleset's rules so far (sum of the counters in
/// [`TABLE`]).
#[must_use]
pub fn rejected(ns: &Netns) -> u64 {
    counted(ns, TABLE)
}

/// The sum of every rule counter's packets in the `inet` table `table` of `ns`.
#[must_use]
pub fn counted(ns: &Netns, table: &str) -> u64 {
    let out = ns.exec(&[nft_bin().as_str(), "-j", "list", "table", "inet", table]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("nft -j output: {e}: {out}"));
    v["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

/// TCP sockets on local `port` in `ns` other than listeners (established,
/// in their handshake, or closing): what the server really holds, from `ss`.
#[must_use]
pub fn server_sockets(ns: &Netns, port: u16) -> usize {
    let sport = format!(":{port}");
    ns.exec(&["ss", "-Htn", "state", "connected", "sport", "=", &sport])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}
