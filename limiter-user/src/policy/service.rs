//! One service's limits: the connection-attempt [`Rate`], what a refusal
//! does ([`Action`]), their defaults, and the validated [`Service`] with its
//! kernel id, with what it says when it responds (`respond`, below it).

use std::{fmt, str::FromStr, time::Duration};

use limiter_common::{Bucket, maps::MAX_SERVICES};
use serde::{Deserialize, Serialize};

use crate::policy::respond::Respond;

/// Largest `burst`: more would let a source open that many connections at
/// once whatever its rate.
pub const MAX_BURST: u64 = 1_000_000;

/// Default rate of the built-in policy and of `--port` services without `--rate`.
pub const DEFAULT_RATE: Rate = Rate { count: 30, per_secs: 60 };
/// Default burst when none is given: the rate's count, at most this.
pub const DEFAULT_BURST: u64 = 10;
/// Concurrent connections per source in the built-in policy (Dovecot's
/// `mail_max_userip_connections` default).
pub const DEFAULT_MAX_CONN: u32 = 10;

/// A connection-attempt rate: `N/s` or `N/m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    /// Period in seconds: 1 or 60.
    pub per_secs: u64,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("bad rate '{s}': expected N/s or N/m with N >= 1, e.g. 30/m");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        let per_secs = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            _ => return Err(bad()),
        };
        if count == 0 || count > 1_000_000_000 {
            return Err(bad());
        }
        Ok(Self { count, per_secs })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.per_secs == 60 { "m" } else { "s" };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    // Plain comments, not doc comments: those would become `--action`'s help.
    // XDP_DROP: the client retransmits and times out.
    Drop,
    // A TCP RST from XDP: the client sees "connection refused" at once.
    #[default]
    Reset,
    // The protocol's refusal line (`421`, `* BYE`, `-ERR`) from the daemon's
    // responder, the mail server never seeing the attempt.
    Respond,
    // Observe mode: nothing is refused; what would have been is counted
    // and logged as `would refuse`.
    Log,
}

impl Action {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Reset => "reset",
            Self::Respond => "respond",
            Self::Log => "log",
        }
    }
}

/// One validated service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Kernel id (1-based, `SourceKey::service`).
    pub id: u32,
    pub name: String,
    pub ports: Vec<u16>,
    /// `None`: no rate limit.
    pub rate: Option<Rate>,
    pub burst: u64,
    pub action: Action,
    /// Connections a source may hold at once; `None`: no limit.
    pub max_conn_per_source: Option<u32>,
    /// Connections the service may hold at once; `None`: no cap.
    pub max_sessions: Option<u32>,
    /// Of `max_sessions`, how many only reserve-list sources may use.
    pub reserved_sessions: u32,
    /// Keepalive for the service's connections, so vanished clients are
    /// found out within about this (`dead_peer_timeout`); `None`: off.
    pub dead_peer_timeout: Option<Duration>,
    /// Protocol, TLS files and texts for `Action::Respond` (kept whatever
    /// the action, so that a reload to `respond` needs nothing else).
    pub respond: Respond,
}

impl Service {
    /// The kernel form of the rate limit.
    #[must_use]
    pub fn bucket(&self) -> Bucket {
        self.rate.map_or(Bucket::UNLIMITED, |r| Bucket::new(r.count, r.per_secs * 1_000_000_000, self.burst))
    }
}

/// Kernel service id of the `i`th configured service (ids are 1-based).
#[must_use]
pub fn service_id(i: usize) -> u32 {
    debug_assert!(i < MAX_SERVICES as usize);
    u32::try_from(i).map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!("5/s".parse::<Rate>(), Ok(Rate { count: 5, per_secs: 1 }));
        assert_eq!("30/m".parse::<Rate>(), Ok(Rate { count: 30, per_secs: 60 }));
        for bad in ["", "5", "0/s", "5/h", "x/s", "-1/s", "5/"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} accepted");
        }
        assert_eq!("30/m".parse::<Rate>().map(|r| r.to_string()), Ok("30/m".into()));
    }
}
