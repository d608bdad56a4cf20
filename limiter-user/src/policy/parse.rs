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

/// A duration as the config writes it: a whole number of milliseconds,
/// seconds, minutes, hours or days, `"500ms"`, `"2s"`, `"2m"`, `"1h"`, `"1d"`
/// (no fractions, no other units). Bounds are the caller's.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration '{s}': expected {DURATION_FORM}");
    let t = s.trim();
    let (n, unit) = t.find(|c: char| !c.is_ascii_digit()).map_or((t, ""), |i| t.split_at(i));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = |per: u64| n.checked_mul(per).map(Duration::from_secs).ok_or_else(bad);
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3_600),
        "d" => secs(86_400),
        _ => Err(bad()),
    }
}

/// What [`parse_duration`] reads, for problems.
pub const DURATION_FORM: &str = "a whole number of ms, s, m, h or d, e.g. \"2m\", \"2s\" or \"500ms\"";

/// A duration as the config's problems show it: the largest unit that
/// writes it whole (`"2m"`, `"90s"`, `"500ms"`).
#[must_use]
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1_000) {
        return format!("{ms}ms");
    }
    let s = ms / 1_000;
    match s {
        0 => "0s".to_owned(),
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
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
        assert_eq!(parse_duration("2m"), Ok(Duration::from_mins(2)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_hours(1)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_hours(48)), "bounds are the caller's");
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO), "bounds are the caller's");
        for bad in [
            "",
            "2",
            "s",
            "1.5s",
            "-1s",
            "2 sec",
            "2min",
            "ms5",
            "abc",
            "99999999999999999999ms",
            "999999999999999999d",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains(DURATION_FORM), "{bad}: {e}");
        }
    }

    #[test]
    fn durations_show_as_written() {
        for text in ["500ms", "1500ms", "1s", "90s", "2m", "1h", "25h", "1d", "0s"] {
            assert_eq!(show_duration(parse_duration(text).expect(text)), text);
        }
    }
}
