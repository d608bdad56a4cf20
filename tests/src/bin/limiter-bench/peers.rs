//! The netfilter peers the limiter is compared with: rules installed in the server namespace for one timed run
//! and removed right after (a guard removes them on error too), and their own counters, which prove the path was
//! taken.

use std::{path::PathBuf, process::Command};

use limiter_tests::{netns::Netns, nft};

use crate::Result;

/// Connections the client holds: the limit every peer enforces, and the limiter's `max_conn_per_source`.
pub(crate) const LIMIT: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// nftables `ct count over 8` in a dynamic set keyed by `ip saddr`, drop (`nft::ct_count_ruleset_with`).
    NftCtCount,
    /// iptables `connlimit --connlimit-above 8`, `REJECT --reject-with tcp-reset`.
    ConnlimitReset,
    /// iptables `connlimit --connlimit-above 8`, `DROP`.
    ConnlimitDrop,
    /// iptables `hashlimit` by source, above 1/min with a burst of 1, `DROP`.
    Hashlimit,
}

impl Peer {
    /// Whether the peer counts connections (through conntrack): `ct count` and `connlimit` count only the
    /// connections whose SYN went through their rule.
    pub(crate) const fn counts_connections(self) -> bool {
        !matches!(self, Self::Hashlimit)
    }

    fn iptables_args(self, port: u16) -> Vec<String> {
        let (port, limit) = (port.to_string(), LIMIT.to_string());
        let connlimit = ["-m", "connlimit", "--connlimit-above", &limit, "--connlimit-mask", "32"];
        let mut a = vec!["-p", "tcp", "--syn", "--dport", &port];
        match self {
            Self::NftCtCount => {}
            Self::ConnlimitReset => {
                a.extend(connlimit);
                a.extend(["-j", "REJECT", "--reject-with", "tcp-reset"]);
            }
            Self::ConnlimitDrop => {
                a.extend(connlimit);
                a.extend(["-j", "DROP"]);
            }
            Self::Hashlimit => a.extend([
                "-m",
                "hashlimit",
                "--hashlimit-mode",
                "srcip",
                "--hashlimit-above",
                "1/min",
                "--hashlimit-burst",
                "1",
                "--hashlimit-name",
                "limiterbench",
                "-j",
                "DROP",
            ]),
        }
        a.into_iter().map(str::to_owned).collect()
    }

    /// Installs the peer's rules in `ns` for traffic to `port`.
    pub(crate) fn install(self, ns: &Netns, port: u16) -> Rules {
        let rules = Rules { ns: ns.path(), peer: self, port };
        if self == Self::NftCtCount {
            nft::install(ns, &nft::ct_count_ruleset_with(port, LIMIT, "drop"));
        } else {
            let mut args = vec!["iptables", "-w", "-A", "INPUT"];
            let spec = self.iptables_args(port);
            args.extend(spec.iter().map(String::as_str));
            ns.exec(&args);
        }
        rules
    }
}

/// Installed rules; removed on drop.
pub(crate) struct Rules {
    /// The namespace they are in (`/run/netns/NAME`).
    ns: PathBuf,
    peer: Peer,
    port: u16,
}

impl Rules {
    /// Packets the rules in `ns` (where they were installed) refused so far.
    pub(crate) fn hits(&self, ns: &Netns) -> Result<u64> {
        debug_assert_eq!(ns.path(), self.ns);
        if self.peer == Peer::NftCtCount {
            return Ok(nft::rejected(ns));
        }
        // `-nvxL`: exact packet counts, first column, after two header lines.
        let out = ns.exec(&["iptables", "-w", "-nvxL", "INPUT"]);
        out.lines()
            .skip(2)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u64>().ok())
                    .ok_or_else(|| format!("unexpected iptables output: {out}").into())
            })
            .sum()
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        let net = format!("--net={}", self.ns.display());
        let run = |args: &[&str]| Command::new("nsenter").arg(&net).args(args).output().map(|o| o.status.success());
        if self.peer == Peer::NftCtCount {
            let _ = run(&["nft", "delete", "table", "inet", nft::TABLE]);
            return;
        }
        let mut args = vec!["iptables", "-w", "-D", "INPUT"];
        let spec = self.peer.iptables_args(self.port);
        args.extend(spec.iter().map(String::as_str));
        let _ = run(&args);
        // iptables-nft leaves its (now empty) table and base chains behind, and a base chain costs every later
        // packet a hook: remove the table, so the next case runs on the bare stack again. (iptables-legacy keeps
        // its hooks for the namespace's life whatever is done here.)
        if iptables_is_nft() {
            let _ = run(&["nft", "delete", "table", "ip", "filter"]);
        }
    }
}

/// Whether `iptables` is the `nf_tables` variant (`iptables -V` says so in parentheses).
pub(crate) fn iptables_is_nft() -> bool {
    Command::new("iptables").arg("-V").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("nf_tables"))
}

/// `iptables -V`, for the report.
pub(crate) fn iptables_version() -> String {
    Command::new("iptables")
        .arg("-V")
        .output()
        .map_or_else(|e| format!("? ({e})"), |o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}
