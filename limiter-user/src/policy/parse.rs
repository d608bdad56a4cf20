//! The `run` flags' values as clap's value parsers read them; each error
//! says what was expected. The file reader shares [`parse_listen`] and
//! [`parse_duration`].

use std::{net::SocketAddr, time::Duration};

use crate::policy::service::MAX_BURST;

/// Parses a `--port` value: 1..=65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) => Err("port 0 is not a valid port".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("bad port '{s}': expected 1..65535")),
    }
}

/// Parses a `--max-conn-per-source` value: >= 1.
pub fn parse_max_conn(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("max-conn-per-source must be at least 1 (omit it for no limit)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("bad max-conn-per-source '{s}': expected a whole number >= 1")),
    }
}

/// Parses a `--burst` value: >= 1.
pub fn parse_burst(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("burst must be at least 1".into()),
        Ok(b) if b <= MAX_BURST => Ok(b),
        _ => Err(format!("bad burst '{s}': expected 1..={MAX_BURST}")),
    }
}

/// An `ADDR:PORT` to listen on (`--metrics-listen`, `metrics_listen`).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("'{s}' is not ADDR:PORT (e.g. 127.0.0.1:9464 or [::1]:9464)"))
}

/// A duration as the config writes it: a whole number of milliseconds or
/// seconds, `"500ms"` or `"2s"` (no fractions, no other units: the config's
/// durations are sub-minute bounds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration '{s}': expected a whole number of ms or s, e.g. \"500ms\" or \"2s\"");
    let t = s.trim();
    let (n, unit) = t.find(|c: char| !c.is_ascii_digit()).map_or((t, ""), |i| t.split_at(i));
    let n: u64 = n.parse().map_err(|_| bad())?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 30 s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO), "bounds are the caller's");
        for bad in ["", "2", "s", "1.5s", "-1s", "2m", "2 sec", "ms5", "99999999999999999999ms"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains("expected a whole number of ms or s"), "{bad}: {e}");
        }
    }
}
