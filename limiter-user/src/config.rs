//! The policy: the TOML config file, the `run` flags that override it, and
//! the validated [`Policy`] the loader applies. Everything is checked here,
//! before anything touches the kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::Path,
    str::FromStr,
};

use limiter_common::{
    Bucket,
    maps::{DEFAULT_CONN_ENTRIES, MAX_SERVICES},
    pending,
};
use serde::{Deserialize, Serialize};

/// Where `run` looks for a config when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/limiter/limiter.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

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
    Drop,
    #[default]
    Reset,
}

impl Action {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Reset => "reset",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (skb) mode with a warning.
    #[default]
    Auto,
    Native,
    Skb,
}

/// The config file as written by the admin.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub interfaces: Vec<String>,
    pub xdp_mode: Option<XdpMode>,
    pub ipv4_prefix: Option<u8>,
    pub ipv6_prefix: Option<u8>,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceFile>,
    #[serde(default)]
    pub maps: MapSizes,
    #[serde(default)]
    pub allow: Vec<crate::lists::AllowEntry>,
    #[serde(default)]
    pub deny: Vec<crate::lists::DenyEntry>,
    #[serde(default)]
    pub reserve: Vec<crate::lists::ReserveEntry>,
}

/// Sizes of the kernel maps (`[maps]` in the config). They are fixed when
/// the maps are created, at the first start; changing them takes effect
/// after `limiter unload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapSizes {
    /// Sources that may hold connections at once (`CONNS`, `SEEDED`);
    /// when full, a new source's connections go uncounted (fail open).
    pub connections: u32,
    /// Source slots (`PENDING`: handshakes in flight, hints and rate
    /// buckets of recent sources), a power of two; direct-mapped, so a new
    /// source may take over an idle slot.
    pub pending_slots: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self { connections: DEFAULT_CONN_ENTRIES, pending_slots: pending::DEFAULT_SLOTS }
    }
}

impl MapSizes {
    /// Most entries a map may be given (16 Mi).
    pub const MAX: u32 = 1 << 24;
    /// Fewest.
    pub const MIN: u32 = 1024;

    fn validate(self) -> Result<(), ConfigError> {
        for (name, v) in [("connections", self.connections), ("pending_slots", self.pending_slots)] {
            if !(Self::MIN..=Self::MAX).contains(&v) {
                return Err(invalid(format!("maps.{name} = {v} out of range {}..={}", Self::MIN, Self::MAX)));
            }
        }
        if !self.pending_slots.is_power_of_two() {
            return Err(invalid(format!("maps.pending_slots = {} must be a power of two", self.pending_slots)));
        }
        Ok(())
    }

    /// Approximate kernel memory, in bytes, of the maps these sizes govern
    /// (hash entries: key, value and about 50 bytes of element overhead;
    /// 32 bytes per source slot).
    #[must_use]
    pub fn memory_bytes(self) -> u64 {
        let hash = |n: u32| u64::from(n) * (20 + 8 + 50);
        2 * hash(self.connections) + u64::from(self.pending_slots) * 32
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub name: String,
    pub ports: Vec<u16>,
    pub rate: Option<Rate>,
    pub burst: Option<u64>,
    pub action: Option<Action>,
    pub max_conn_per_source: Option<u32>,
    pub max_sessions: Option<u32>,
    pub reserved_sessions: Option<u32>,
}

impl ConfigFile {
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().lines().collect::<Vec<_>>().join(" ").replace("  ", " "),
        })
    }

    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        Self::parse(&text, &p)
    }
}

/// `run` flags that override or replace parts of the config file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub interfaces: Vec<String>,
    pub ports: Vec<u16>,
    pub rate: Option<Rate>,
    pub burst: Option<u64>,
    pub action: Option<Action>,
    pub max_conn_per_source: Option<u32>,
    pub ipv4_prefix: Option<u8>,
    pub ipv6_prefix: Option<u8>,
    pub xdp_mode: Option<XdpMode>,
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
}

impl Service {
    /// The kernel form of the rate limit.
    #[must_use]
    pub fn bucket(&self) -> Bucket {
        self.rate.map_or(Bucket::UNLIMITED, |r| Bucket::new(r.count, r.per_secs * 1_000_000_000, self.burst))
    }
}

/// The whole validated policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub services: Vec<Service>,
    pub maps: MapSizes,
    /// The config file's lists (run-time entries are layered on by the daemon).
    pub lists: crate::lists::Lists,
}

/// Default rate of the built-in policy and of `--port` services without `--rate`.
pub const DEFAULT_RATE: Rate = Rate { count: 30, per_secs: 60 };
/// Default burst when none is given: the rate's count, at most this.
pub const DEFAULT_BURST: u64 = 10;
/// Concurrent connections per source in the built-in policy (Dovecot's
/// `mail_max_userip_connections` default).
pub const DEFAULT_MAX_CONN: u32 = 10;

/// The built-in policy: the standard mail ports, at most 10 connections per
/// source, 30 attempts a minute with bursts of 10, refused with a reset.
#[must_use]
pub fn builtin_services() -> Vec<ServiceFile> {
    [("smtp", vec![25, 465, 587]), ("imap", vec![143, 993]), ("pop3", vec![110, 995]), ("ftp", vec![21])]
        .into_iter()
        .map(|(name, ports)| ServiceFile {
            name: name.to_owned(),
            ports,
            rate: Some(DEFAULT_RATE),
            burst: Some(DEFAULT_BURST),
            action: Some(Action::Reset),
            max_conn_per_source: Some(DEFAULT_MAX_CONN),
            max_sessions: None,
            reserved_sessions: None,
        })
        .collect()
}

impl Policy {
    /// Combines the config file (if any) with the flags and validates the
    /// result. `--port` flags replace the file's services with one service
    /// named `default`; with neither, the built-in mail services apply.
    pub fn build(file: ConfigFile, o: &Overrides) -> Result<Self, ConfigError> {
        let interfaces = if o.interfaces.is_empty() { file.interfaces } else { o.interfaces.clone() };
        if interfaces.is_empty() {
            return Err(invalid("no interface to protect: give --iface IF or interfaces = [\"IF\"] in the config"));
        }
        let mut seen = BTreeSet::new();
        for i in &interfaces {
            if i.is_empty() || i.len() >= libc::IFNAMSIZ {
                return Err(invalid(format!("bad interface name '{i}'")));
            }
            if !seen.insert(i.clone()) {
                return Err(invalid(format!("interface '{i}' given twice")));
            }
        }
        let ipv4_prefix = o.ipv4_prefix.or(file.ipv4_prefix).unwrap_or(32);
        let ipv6_prefix = o.ipv6_prefix.or(file.ipv6_prefix).unwrap_or(64);
        if !(1..=32).contains(&ipv4_prefix) {
            return Err(invalid(format!("ipv4 prefix {ipv4_prefix} out of range 1..=32")));
        }
        if !(1..=128).contains(&ipv6_prefix) {
            return Err(invalid(format!("ipv6 prefix {ipv6_prefix} out of range 1..=128")));
        }

        let services_file = if !o.ports.is_empty() {
            vec![ServiceFile {
                name: "default".into(),
                ports: o.ports.clone(),
                rate: None,
                burst: None,
                action: None,
                max_conn_per_source: None,
                max_sessions: None,
                reserved_sessions: None,
            }]
        } else if file.services.is_empty() {
            builtin_services()
        } else {
            file.services
        };
        // Flags apply to every service: with --port there is only one.
        let services = services_file
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let max_conn_per_source = o.max_conn_per_source.or(s.max_conn_per_source);
                // A service with no limit at all gets the default rate.
                let rate = o.rate.or(s.rate).or(if max_conn_per_source.is_none() { Some(DEFAULT_RATE) } else { None });
                let burst =
                    o.burst.or(s.burst).unwrap_or_else(|| rate.map_or(DEFAULT_BURST, |r| r.count.min(DEFAULT_BURST)));
                Service {
                    id: crate::loader::service_id(i),
                    name: s.name,
                    ports: s.ports,
                    rate,
                    burst,
                    action: o.action.or(s.action).unwrap_or_default(),
                    max_conn_per_source,
                    max_sessions: s.max_sessions,
                    reserved_sessions: s.reserved_sessions.unwrap_or(0),
                }
            })
            .collect::<Vec<_>>();

        let policy = Self {
            interfaces,
            xdp_mode: o.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
            ipv4_prefix,
            ipv6_prefix,
            services,
            maps: file.maps,
            lists: crate::lists::Lists { allow: file.allow, deny: file.deny, reserve: file.reserve },
        };
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.maps.validate()?;
        if self.services.len() > MAX_SERVICES as usize {
            return Err(invalid(format!(
                "{} services configured; at most {MAX_SERVICES} are supported",
                self.services.len()
            )));
        }
        let mut port_owner: BTreeMap<u16, &str> = BTreeMap::new();
        let mut names = BTreeSet::new();
        for s in &self.services {
            if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(invalid(format!("bad service name '{}': use letters, digits, '-' and '_'", s.name)));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(format!("service '{}' defined twice", s.name)));
            }
            if s.ports.is_empty() {
                return Err(invalid(format!("service '{}' has no ports", s.name)));
            }
            for &p in &s.ports {
                if p == 0 {
                    return Err(invalid(format!("service '{}': port 0 is not a valid port", s.name)));
                }
                if let Some(other) = port_owner.insert(p, &s.name) {
                    return Err(invalid(format!("port {p} belongs to both '{other}' and '{}'", s.name)));
                }
            }
            if s.burst == 0 {
                return Err(invalid(format!("service '{}': burst must be at least 1", s.name)));
            }
            if s.max_conn_per_source == Some(0) {
                return Err(invalid(format!(
                    "service '{}': max_conn_per_source 0 would refuse everyone; omit it for no limit",
                    s.name
                )));
            }
            if s.burst > 1_000_000 {
                return Err(invalid(format!("service '{}': burst {} is above 1000000", s.name, s.burst)));
            }
        }
        Ok(())
    }
}

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
        Ok(b) if b <= 1_000_000 => Ok(b),
        _ => Err(format!("bad burst '{s}': expected 1..1000000")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ov(ifaces: &[&str]) -> Overrides {
        Overrides { interfaces: ifaces.iter().map(|s| (*s).to_owned()).collect(), ..Overrides::default() }
    }

    #[test]
    fn rates() {
        assert_eq!("5/s".parse::<Rate>(), Ok(Rate { count: 5, per_secs: 1 }));
        assert_eq!("30/m".parse::<Rate>(), Ok(Rate { count: 30, per_secs: 60 }));
        for bad in ["", "5", "0/s", "5/h", "x/s", "-1/s", "5/"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} accepted");
        }
        assert_eq!("30/m".parse::<Rate>().map(|r| r.to_string()), Ok("30/m".into()));
    }

    #[test]
    fn builtin_policy_protects_mail_ports() {
        let p = Policy::build(ConfigFile::default(), &ov(&["eth0"])).expect("valid");
        let ports: Vec<u16> = p.services.iter().flat_map(|s| s.ports.clone()).collect();
        for port in [25, 465, 587, 143, 993, 110, 995, 21] {
            assert!(ports.contains(&port), "{port} not protected");
        }
        assert_eq!((p.ipv4_prefix, p.ipv6_prefix), (32, 64));
    }

    #[test]
    fn port_flags_make_one_default_service() {
        let o = Overrides {
            ports: vec![2525],
            rate: Some(Rate { count: 5, per_secs: 1 }),
            burst: Some(5),
            action: Some(Action::Drop),
            ..ov(&["veth0"])
        };
        let p = Policy::build(ConfigFile::default(), &o).expect("valid");
        assert_eq!(p.services.len(), 1);
        let s = &p.services[0];
        assert_eq!((s.name.as_str(), s.ports.as_slice(), s.burst, s.action), ("default", &[2525][..], 5, Action::Drop));
        assert_eq!(s.bucket(), Bucket::new(5, 1_000_000_000, 5));
    }

    #[test]
    fn config_file_parses_and_flags_override() {
        let text = r#"
            interfaces = ["eth0"]
            xdp_mode = "skb"
            ipv6_prefix = 56
            [[service]]
            name = "smtp"
            ports = [25, 587]
            rate = "30/m"
            burst = 10
            action = "drop"
        "#;
        let f = ConfigFile::parse(text, "t.toml").expect("parses");
        let p = Policy::build(f, &Overrides { ipv4_prefix: Some(24), ..ov(&[]) }).expect("valid");
        assert_eq!(p.interfaces, ["eth0"]);
        assert_eq!((p.xdp_mode, p.ipv4_prefix, p.ipv6_prefix), (XdpMode::Skb, 24, 56));
        assert_eq!(p.services[0].action, Action::Drop);
    }

    #[test]
    fn map_sizes_default_and_from_config() {
        let p = Policy::build(ConfigFile::default(), &ov(&["eth0"])).expect("valid");
        assert_eq!(p.maps, MapSizes::default());
        assert_eq!((p.maps.connections, p.maps.pending_slots), (65_536, 65_536));
        // 2 x 65536 x 78 + 65536 x 32: about 12 MiB.
        assert_eq!(p.maps.memory_bytes(), 2 * 65_536 * 78 + 65_536 * 32);
        let f = ConfigFile::parse("interfaces = [\"eth0\"]\n[maps]\nconnections = 2048\n", "t.toml").expect("parse");
        let p = Policy::build(f, &ov(&[])).expect("valid");
        assert_eq!(p.maps, MapSizes { connections: 2048, ..MapSizes::default() }, "unnamed sizes keep their defaults");
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("interfaces = [\"eth0\"]\n[[service]]\nname = \"a\"\nports = [0]\n", "port 0"),
            (
                "interfaces = [\"eth0\"]\n[[service]]\nname = \"a\"\nports = [25]\n[[service]]\nname = \"b\"\nports = [25]\n",
                "port 25 belongs to both",
            ),
            ("interfaces = [\"eth0\"]\n[[service]]\nname = \"a\"\nports = [25]\nrate = \"0/s\"\n", "bad rate"),
            ("interfaces = [\"eth0\"]\n[[service]]\nname = \"a\"\nports = [25]\nburst = 0\n", "burst"),
            ("interfaces = [\"eth0\"]\nipv4_prefix = 33\n", "ipv4 prefix 33"),
            ("interfaces = [\"eth0\"]\nbogus = 1\n", "unknown field"),
            ("ipv4_prefix = 24\n", "no interface"),
            ("interfaces = [\"eth0\"]\n[maps]\npending_slots = 3000\n", "power of two"),
            ("interfaces = [\"eth0\"]\n[maps]\nconnections = 10\n", "maps.connections = 10 out of range"),
            ("interfaces = [\"eth0\"]\n[maps]\npending_slots = 33554432\n", "maps.pending_slots"),
            ("interfaces = [\"eth0\"]\n[maps]\nconns = 5000\n", "unknown field"),
        ];
        for (text, want) in cases {
            let err = ConfigFile::parse(text, "t.toml").and_then(|f| Policy::build(f, &ov(&[]))).expect_err(text);
            let msg = err.to_string();
            assert!(msg.contains(want), "{text:?}: error {msg:?} does not mention {want:?}");
            assert!(!msg.contains('\n'), "error is not one line: {msg:?}");
        }
        assert!(parse_port("0").is_err());
        assert!(parse_port("65536").is_err());
        assert!(parse_burst("0").is_err());
    }
}
