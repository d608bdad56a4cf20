//! The `run` flags' values as clap's value parsers read them; each error
//! says what was expected. The file reader shares [`parse_listen`].

use std::net::SocketAddr;

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
