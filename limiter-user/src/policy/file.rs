//! The config file as the admin wrote it ([`ConfigFile`]): where it is by
//! default, how large it may be, and reading its text: the TOML document
//! with the place of every key and value, each field converted on its own so
//! that every value that does not read is reported, not only the first.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use limiter_common::prefix::Prefix;
use toml_edit::{Item, TableLike, Value};

use crate::policy::{
    lists::{AllowEntry, Cidr, DenyEntry, ReserveEntry},
    model::{MapSizes, ResponderLimits, XdpMode},
    parse::{DURATION_FORM, parse_duration, parse_listen},
    report::{List, Origin, Problem, Report, join},
    respond::{Protocol, Reason, Texts, check_hostname},
    service::{Action, Rate},
};

/// Where `run` looks for a config when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/limiter/limiter.toml";

/// Largest config file read: a bigger one is refused before it is read
/// whole (a reload of a runaway file must not make the daemon hold it).
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path} is larger than {} MiB: refused unread (100,000 list entries take about 10 MiB)", MAX_CONFIG_BYTES >> 20)]
    TooLarge { path: String },
    /// The first problem (by line) of the config; `build::check` gives them all.
    #[error("{0}")]
    Invalid(Problem),
}

/// The config file as written by the admin.
#[derive(Debug, Default)]
pub struct ConfigFile {
    pub interfaces: Vec<String>,
    pub xdp_mode: Option<XdpMode>,
    pub ipv4_prefix: Option<u8>,
    pub ipv6_prefix: Option<u8>,
    /// Where `/metrics` is served (`metrics_listen`); none when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// The name refusal lines give as `{host}` (`hostname`); none: the caller's.
    pub hostname: Option<String>,
    /// `[[service]]` tables.
    pub services: Vec<ServiceFile>,
    /// The top-level `max_conn_per_source`: over all services together.
    pub max_conn_per_source: Option<u32>,
    pub maps: MapSizes,
    /// `[responder]`: the responder's budgets as written.
    pub responder: ResponderFile,
    pub allow: Vec<AllowEntry>,
    pub deny: Vec<DenyEntry>,
    pub reserve: Vec<ReserveEntry>,
    /// Where each value was written (empty for a `ConfigFile` made in code).
    pub origin: Origin,
}

/// A `[[service]]` table.
#[derive(Debug, Clone, Default)]
pub struct ServiceFile {
    pub name: String,
    pub ports: Vec<u16>,
    pub rate: Option<Rate>,
    pub burst: Option<u64>,
    pub action: Option<Action>,
    pub max_conn_per_source: Option<u32>,
    pub max_sessions: Option<u32>,
    pub reserved_sessions: Option<u32>,
    /// `dead_peer_timeout`; none: off.
    pub dead_peer_timeout: Option<Duration>,
    /// `protocol`; none: guessed from the name and ports.
    pub protocol: Option<Protocol>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `implicit_tls_ports`: where clients start with TLS; none: the
    /// well-known ones among `ports`.
    pub implicit_tls_ports: Option<Vec<u16>>,
    /// `[service.respond]`: the admin's refusal lines by reason, unchecked.
    pub texts: Texts,
}

/// The `[responder]` table as written; a value it does not give keeps its
/// default ([`ResponderLimits::default`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponderFile {
    pub rate: Option<u32>,
    pub burst: Option<u32>,
    pub per_source_rate: Option<u32>,
    pub per_source_burst: Option<u32>,
    pub max_connections: Option<u32>,
    pub deadline: Option<Duration>,
}

impl ResponderFile {
    /// The budgets: these values, the defaults for the rest (unchecked).
    #[must_use]
    pub fn limits(&self) -> ResponderLimits {
        let d = ResponderLimits::default();
        ResponderLimits {
            rate: self.rate.unwrap_or(d.rate),
            burst: self.burst.unwrap_or(d.burst),
            per_source_rate: self.per_source_rate.unwrap_or(d.per_source_rate),
            per_source_burst: self.per_source_burst.unwrap_or(d.per_source_burst),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            deadline: self.deadline.unwrap_or(d.deadline),
        }
    }
}

impl ConfigFile {
    /// Reads a config's text. The error is the first problem (by line) of
    /// the syntax, the field names or the values' types and forms; the
    /// values' meaning is judged by `Policy::build` (and all problems at
    /// once by `build::check`).
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let (file, r) = self::text(text, path).map_err(ConfigError::Invalid)?;
        match r.problems(&file.origin).into_iter().next() {
            Some(p) => Err(ConfigError::Invalid(p)),
            None => Ok(file),
        }
    }

    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }
}

/// A config file's text, refused above [`MAX_CONFIG_BYTES`] without reading
/// more than that (a file that grows while read, or a pipe, included).
///
/// # Errors
/// When it cannot be read, is not UTF-8 or is too large.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let p = path.display().to_string();
    let read = |source| ConfigError::Read { path: p.clone(), source };
    let f = std::fs::File::open(path).map_err(read)?;
    if f.metadata().map_err(read)?.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge { path: p });
    }
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text).map_err(read)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge { path: p });
    }
    Ok(text)
}

/// The config file as far as it reads, and what did not read in the
/// report; a TOML syntax error stops it.
pub(super) fn text(text: &str, path: &str) -> Result<(ConfigFile, Report), Problem> {
    let mut origin = Origin::new(path, text);
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        let line = e.span().map(|s| origin.line_at(s.start));
        Problem { path: path.to_owned(), line, message: format!("TOML syntax: {message}") }
    })?;
    origin.record("", doc.as_table());
    let mut r = Report::default();
    let (mut file, kept) = document(&Fields::new(text, doc.as_table(), String::new(), String::new()), &mut r);
    origin.kept = kept;
    file.origin = origin;
    Ok((file, r))
}

/// One table of the document being read: its place and the words that
/// start its problems (`service 'smtp': `). Each field is read on its own,
/// so that every bad value is reported.
struct Fields<'a> {
    text: &'a str,
    table: &'a dyn TableLike,
    place: String,
    who: String,
    /// Written before a key in problems (`maps.`).
    dotted: String,
}

impl<'a> Fields<'a> {
    fn new(text: &'a str, table: &'a dyn TableLike, place: String, who: String) -> Self {
        Self { text, table, place, who, dotted: String::new() }
    }

    fn at(&self, key: &str) -> String {
        join(&self.place, key)
    }

    fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// `key = value` as written, to name the offending value.
    fn shown(&self, key: &str, item: &Item) -> String {
        let key = format!("{}{key}", self.dotted);
        match item {
            Item::Value(v) => {
                let text = v.span().and_then(|s| self.text.get(s)).map_or_else(|| v.type_name(), str::trim);
                format!("{key} = {text}")
            }
            Item::Table(_) => format!("[{key}] is a table"),
            Item::ArrayOfTables(_) => format!("[[{key}]] are tables"),
            Item::None => key,
        }
    }

    fn unknown(&self, r: &mut Report, known: &[&str]) {
        for (key, _) in self.table.iter() {
            if !known.contains(&key) {
                r.push(
                    self.at(key),
                    format!("{}unknown field '{}{key}': expected one of {}", self.who, self.dotted, known.join(", ")),
                );
            }
        }
    }

    /// The value of `key`, if present and `read` takes it.
    fn value<T>(&self, r: &mut Report, key: &str, read: impl FnOnce(&Value) -> Result<T, String>) -> Option<T> {
        let item = self.table.get(key)?;
        let got = item.as_value().map_or_else(|| Err("expected a value".to_owned()), read);
        got.map_err(|e| r.push(self.at(key), format!("{}{}: {e}", self.who, self.shown(key, item)))).ok()
    }

    /// The elements of the array `key` that `read` takes (`noun` names one
    /// in problems); `None` when absent.
    fn array<T>(
        &self,
        r: &mut Report,
        key: &str,
        noun: &str,
        expected: &str,
        read: impl Fn(&Value) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let item = self.table.get(key)?;
        let Some(array) = item.as_array() else {
            r.push(self.at(key), format!("{}{}: expected {expected}", self.who, self.shown(key, item)));
            return None;
        };
        let mut out = Vec::with_capacity(array.len());
        for (i, v) in array.iter().enumerate() {
            match read(v) {
                Ok(x) => out.push(x),
                Err(e) => {
                    let text = v.span().and_then(|s| self.text.get(s)).map_or_else(|| v.type_name(), str::trim);
                    r.push(format!("{}[{i}]", self.at(key)), format!("{}{noun} {text}: {e}", self.who));
                }
            }
        }
        Some(out)
    }

    /// The table `key` (`[key]` or an inline table).
    fn table(&self, r: &mut Report, key: &str) -> Option<Self> {
        let item = self.table.get(key)?;
        if let Some(t) = item.as_table_like() {
            return Some(Self { dotted: format!("{key}."), ..Self::new(self.text, t, self.at(key), String::new()) });
        }
        r.push(self.at(key), format!("{}{}: expected a [{key}] table", self.who, self.shown(key, item)));
        None
    }

    /// The tables of the array `key` (`[[key]]` or inline tables).
    fn tables(&self, r: &mut Report, key: &str) -> Vec<Self> {
        let Some(item) = self.table.get(key) else { return Vec::new() };
        let at = |i: usize| format!("{}[{i}]", self.at(key));
        match item {
            Item::ArrayOfTables(a) => {
                a.iter().enumerate().map(|(i, t)| Self::new(self.text, t, at(i), String::new())).collect()
            }
            Item::Value(Value::Array(a)) if a.iter().all(Value::is_inline_table) => a
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.as_inline_table().map(|t| Self::new(self.text, t, at(i), String::new())))
                .collect(),
            _ => {
                r.push(
                    self.at(key),
                    format!("{}{}: expected [[{key}]] tables, one per entry", self.who, self.shown(key, item)),
                );
                Vec::new()
            }
        }
    }
}

fn string(v: &Value) -> Result<String, String> {
    v.as_str().map(str::to_owned).ok_or_else(|| "expected a string in quotes".to_owned())
}

/// A whole number that fits `T`; `range` says which ones make sense.
fn whole<T: TryFrom<i64>>(range: &'static str) -> impl Fn(&Value) -> Result<T, String> {
    move |v| v.as_integer().and_then(|n| T::try_from(n).ok()).ok_or_else(|| format!("expected a whole number {range}"))
}

fn choice<T: clap::ValueEnum>(v: &Value) -> Result<T, String> {
    v.as_str().and_then(|s| T::from_str(s, false).ok()).ok_or_else(|| {
        let names: Vec<String> =
            T::value_variants().iter().filter_map(T::to_possible_value).map(|p| p.get_name().to_owned()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

fn listen_addr(v: &Value) -> Result<std::net::SocketAddr, String> {
    v.as_str()
        .ok_or("expected \"ADDR:PORT\" in quotes")
        .and_then(|s| parse_listen(s).map_err(|_| "expected ADDR:PORT, e.g. \"127.0.0.1:9464\" or \"[::1]:9464\""))
        .map_err(str::to_owned)
}

fn hostname(v: &Value) -> Result<String, String> {
    let s = v.as_str().ok_or("expected a host name in quotes, e.g. \"mx.example.org\"")?;
    check_hostname(s).map(|()| s.to_owned())
}

/// A file's path: absolute, since the daemon's working directory is no
/// place to look for a key.
fn absolute_path(v: &Value) -> Result<PathBuf, String> {
    v.as_str()
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .ok_or_else(|| "expected an absolute path in quotes, e.g. \"/etc/ssl/private/mail.pem\"".to_owned())
}

fn duration(v: &Value) -> Result<Duration, String> {
    v.as_str()
        .ok_or_else(|| "expected a duration in quotes, e.g. \"2s\" or \"500ms\"".to_owned())
        .and_then(|s| parse_duration(s).map_err(|_| format!("expected {DURATION_FORM}")))
}

fn rate(v: &Value) -> Result<Rate, String> {
    v.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| "expected N/s or N/m with N >= 1, e.g. \"30/m\"".to_owned())
}

fn prefix(v: &Value) -> Result<Cidr, String> {
    let s = v.as_str().ok_or("expected an address, a CIDR or a wildcard in quotes")?;
    Prefix::parse(s).map(Cidr).map_err(|e| format!("{e}"))
}

pub(crate) const TOP_FIELDS: &[&str] = &[
    "interfaces",
    "xdp_mode",
    "ipv4_prefix",
    "ipv6_prefix",
    "metrics_listen",
    "hostname",
    "max_conn_per_source",
    "service",
    "maps",
    "responder",
    "allow",
    "deny",
    "reserve",
];
pub(crate) const SERVICE_FIELDS: &[&str] = &[
    "name",
    "ports",
    "rate",
    "burst",
    "action",
    "max_conn_per_source",
    "max_sessions",
    "reserved_sessions",
    "dead_peer_timeout",
    "protocol",
    "tls_cert",
    "tls_key",
    "implicit_tls_ports",
    "respond",
];
pub(crate) const MAPS_FIELDS: &[&str] = &["connections", "pending_slots", "list_entries"];
pub(crate) const RESPONDER_FIELDS: &[&str] =
    &["rate", "burst", "per_source_rate", "per_source_burst", "max_connections", "deadline"];
pub(crate) const ALLOW_FIELDS: &[&str] =
    &["prefix", "max_conn_per_source", "max_conn_all_services", "rate", "burst", "comment"];
pub(crate) const DENY_FIELDS: &[&str] = &["prefix", "comment"];
pub(crate) const RESERVE_FIELDS: &[&str] = &["service", "prefix", "comment"];

/// The config file as far as it reads; what did not read is in `r`.
fn document(f: &Fields<'_>, r: &mut Report) -> (ConfigFile, [Vec<usize>; 3]) {
    f.unknown(r, TOP_FIELDS);
    let mut kept: [Vec<usize>; 3] = Default::default();
    let allow = entries(f, r, List::Allow, &mut kept, allow_entry);
    let deny = entries(f, r, List::Deny, &mut kept, deny_entry);
    let reserve = entries(f, r, List::Reserve, &mut kept, reserve_entry);
    let file = ConfigFile {
        interfaces: f
            .array(r, "interfaces", "interface", "a list of names, e.g. [\"eth0\"]", string)
            .unwrap_or_default(),
        xdp_mode: f.value(r, "xdp_mode", choice),
        ipv4_prefix: f.value(r, "ipv4_prefix", whole("1..=32")),
        ipv6_prefix: f.value(r, "ipv6_prefix", whole("1..=128")),
        metrics_listen: f.value(r, "metrics_listen", listen_addr),
        hostname: f.value(r, "hostname", hostname),
        services: f.tables(r, "service").iter_mut().enumerate().map(|(i, t)| service(t, i, r)).collect(),
        max_conn_per_source: f.value(r, "max_conn_per_source", whole(">= 1")),
        maps: f.table(r, "maps").map_or_else(MapSizes::default, |t| maps(&t, r)),
        responder: f.table(r, "responder").map_or_else(ResponderFile::default, |t| responder(&t, r)),
        allow,
        deny,
        reserve,
        origin: Origin::default(),
    };
    (file, kept)
}

/// The entries of a list that read, noting their index in the file in `kept`.
fn entries<T>(
    f: &Fields<'_>,
    r: &mut Report,
    list: List,
    kept: &mut [Vec<usize>; 3],
    read: fn(&mut Fields<'_>, &mut Report) -> Option<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    for (i, t) in f.tables(r, list.name()).iter_mut().enumerate() {
        if let Some(e) = read(t, r) {
            out.push(e);
            kept[list as usize].push(i);
        }
    }
    out
}

fn service(t: &mut Fields<'_>, i: usize, r: &mut Report) -> ServiceFile {
    t.who = format!("service #{}: ", i + 1);
    let name = t.value(r, "name", string);
    if let Some(name) = &name {
        t.who = format!("service {}: ", crate::policy::lists::shown(name));
    } else if !t.has("name") {
        r.push(t.at("name"), format!("{}no name: expected name = \"...\" (letters, digits, '.', '-' and '_')", t.who));
    }
    t.unknown(r, SERVICE_FIELDS);
    ServiceFile {
        name: name.unwrap_or_default(),
        ports: t.array(r, "ports", "port", "a list of ports, e.g. [25, 587]", whole("1..=65535")).unwrap_or_default(),
        rate: t.value(r, "rate", rate),
        burst: t.value(r, "burst", whole("1..=1000000")),
        action: t.value(r, "action", choice),
        max_conn_per_source: t.value(r, "max_conn_per_source", whole(">= 1")),
        max_sessions: t.value(r, "max_sessions", whole(">= 1")),
        reserved_sessions: t.value(r, "reserved_sessions", whole("0..=max_sessions")),
        dead_peer_timeout: t.value(r, "dead_peer_timeout", duration),
        protocol: t.value(r, "protocol", choice),
        tls_cert: t.value(r, "tls_cert", absolute_path),
        tls_key: t.value(r, "tls_key", absolute_path),
        implicit_tls_ports: t.array(
            r,
            "implicit_tls_ports",
            "port",
            "a list of the service's ports, e.g. [993], or [] for none",
            whole("1..=65535"),
        ),
        texts: t.table(r, "respond").map_or_else(Texts::default, |mut texts| respond_texts(&mut texts, &t.who, r)),
    }
}

/// A `[service.respond]` table: a line per reason, read as strings; whether
/// they suit the protocol is `validate`'s to judge.
fn respond_texts(t: &mut Fields<'_>, who: &str, r: &mut Report) -> Texts {
    who.clone_into(&mut t.who);
    let keys: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    t.unknown(r, &keys);
    let mut texts = Texts::default();
    for reason in Reason::ALL {
        if let Some(text) = t.value(r, reason.as_str(), string) {
            texts.set(reason, text);
        }
    }
    texts
}

fn maps(t: &Fields<'_>, r: &mut Report) -> MapSizes {
    t.unknown(r, MAPS_FIELDS);
    let range = "1024..=16777216";
    let d = MapSizes::default();
    MapSizes {
        connections: t.value(r, "connections", whole(range)).unwrap_or(d.connections),
        pending_slots: t.value(r, "pending_slots", whole(range)).unwrap_or(d.pending_slots),
        list_entries: t.value(r, "list_entries", whole(range)).unwrap_or(d.list_entries),
    }
}

/// The `[responder]` table; whether the numbers make sense is `validate`'s
/// to judge.
fn responder(t: &Fields<'_>, r: &mut Report) -> ResponderFile {
    t.unknown(r, RESPONDER_FIELDS);
    let range = "1..=1000000";
    ResponderFile {
        rate: t.value(r, "rate", whole(range)),
        burst: t.value(r, "burst", whole(range)),
        per_source_rate: t.value(r, "per_source_rate", whole(range)),
        per_source_burst: t.value(r, "per_source_burst", whole(range)),
        max_connections: t.value(r, "max_connections", whole("1..=65536")),
        deadline: t.value(r, "deadline", duration),
    }
}

/// The prefix of a list entry, which then names the entry in problems.
fn list_prefix(t: &mut Fields<'_>, list: List, r: &mut Report) -> Option<Cidr> {
    t.who = format!("{}: ", list.name());
    let p = t.value(r, "prefix", prefix);
    if let Some(p) = p {
        t.who = format!("{} {p}: ", list.name());
    } else if !t.has("prefix") {
        r.push(
            t.at("prefix"),
            format!(
                "{}: no prefix: expected prefix = \"...\" (an address, a CIDR or a wildcard such as 192.168.1.*)",
                list.name()
            ),
        );
    }
    p
}

fn allow_entry(t: &mut Fields<'_>, r: &mut Report) -> Option<AllowEntry> {
    let p = list_prefix(t, List::Allow, r);
    t.unknown(r, ALLOW_FIELDS);
    // Every field is read (and reported) before a bad prefix drops the entry.
    let max_conn_per_source = t.value(r, "max_conn_per_source", whole(">= 1"));
    let max_conn_all_services = t.value(r, "max_conn_all_services", whole(">= 1"));
    let rate = t.value(r, "rate", rate);
    let burst = t.value(r, "burst", whole("1..=1000000"));
    let comment = t.value(r, "comment", string);
    Some(AllowEntry { prefix: p?, max_conn_per_source, max_conn_all_services, rate, burst, comment })
}

fn deny_entry(t: &mut Fields<'_>, r: &mut Report) -> Option<DenyEntry> {
    let p = list_prefix(t, List::Deny, r);
    t.unknown(r, DENY_FIELDS);
    let comment = t.value(r, "comment", string);
    Some(DenyEntry { prefix: p?, comment })
}

fn reserve_entry(t: &mut Fields<'_>, r: &mut Report) -> Option<ReserveEntry> {
    let p = list_prefix(t, List::Reserve, r);
    t.unknown(r, RESERVE_FIELDS);
    let service = t.value(r, "service", string);
    if !t.has("service") {
        r.push(t.at("service"), format!("{}no service: expected service = \"NAME\" of a [[service]]", t.who));
    }
    let comment = t.value(r, "comment", string);
    Some(ReserveEntry { prefix: p?, service: service?, comment })
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    #[test]
    fn oversized_config_is_refused_unread_and_100k_entries_fit() {
        let dir = std::env::temp_dir().join(format!("limiter-config-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let big = dir.join("big.toml");
        // Sparse: no 64 MiB written.
        std::fs::File::create(&big).and_then(|f| f.set_len(MAX_CONFIG_BYTES + 1)).expect("sparse file");
        let err = read_text(&big).expect_err("too large");
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("big.toml") && err.to_string().contains("64 MiB"), "{err}");
        assert!(matches!(ConfigFile::read(&big), Err(ConfigError::TooLarge { .. })));
        let _ = std::fs::remove_dir_all(&dir);

        let mut text = String::from("interfaces = [\"eth0\"]\n");
        for i in 0..100_000u32 {
            let _ = write!(
                text,
                "[[deny]]\nprefix = \"2001:db8:{:x}:{:x}::/64\"\ncomment = \"abuse report 2026-12-04 ticket {i}\"\n",
                i >> 16,
                i & 0xffff
            );
        }
        assert!((text.len() as u64) < MAX_CONFIG_BYTES / 4, "100,000 entries take {} bytes", text.len());
    }

    /// A config of exactly the cap is read and parsed; one byte more is
    /// refused unread.
    #[test]
    fn a_config_at_the_size_cap_is_read() {
        let dir = std::env::temp_dir().join(format!("limiter-config-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("cap.toml");
        let head = "interfaces = [\"eth0\"]\n# ";
        let cap = usize::try_from(MAX_CONFIG_BYTES).expect("fits");
        let mut text = String::with_capacity(cap + 1);
        text.push_str(head);
        text.extend(std::iter::repeat_n('x', cap - head.len() - 1));
        text.push('\n');
        assert_eq!(text.len(), cap);
        std::fs::write(&path, &text).expect("write");
        let file = ConfigFile::read(&path).expect("a config of exactly the cap is read");
        assert_eq!(file.interfaces, ["eth0"]);
        text.push('\n');
        std::fs::write(&path, &text).expect("write");
        assert!(matches!(ConfigFile::read(&path), Err(ConfigError::TooLarge { .. })), "one byte over the cap");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
