//! The replies to the list requests (`list_show`, `list_add`, `list_del`)
//! and to `reload`. An entry has only the fields it was given: no `null`s
//! (the schema of such a field, `with = T`, is that of a present value).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{
    lists::{AllowEntry, Cidr, DenyEntry, ReserveEntry},
    service::Rate,
};

/// The three prefix lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListName {
    Allow,
    Deny,
    Reserve,
}

impl ListName {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Reserve => "reserve",
        }
    }
}

/// An entry of any of the three lists, as shown and as added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Entry {
    pub prefix: Cidr,
    /// Reserve entries: the service whose reserved sessions the prefix may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub service: Option<String>,
    /// Allow entries: own per-source limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u32", range(min = 1))]
    pub max_conn_per_source: Option<u32>,
    /// Allow entries: own limit over all services together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u32", range(min = 1))]
    pub max_conn_all_services: Option<u32>,
    /// Allow entries: own attempt rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Rate")]
    pub rate: Option<Rate>,
    /// Allow entries: own burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64", range(min = 1))]
    pub burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub comment: Option<String>,
}

impl From<&AllowEntry> for Entry {
    fn from(e: &AllowEntry) -> Self {
        Self {
            prefix: e.prefix,
            service: None,
            max_conn_per_source: e.max_conn_per_source,
            max_conn_all_services: e.max_conn_all_services,
            rate: e.rate,
            burst: e.burst,
            comment: e.comment.clone(),
        }
    }
}

impl From<&DenyEntry> for Entry {
    fn from(e: &DenyEntry) -> Self {
        Self::plain(e.prefix, None, e.comment.clone())
    }
}

impl From<&ReserveEntry> for Entry {
    fn from(e: &ReserveEntry) -> Self {
        Self::plain(e.prefix, Some(e.service.clone()), e.comment.clone())
    }
}

impl Entry {
    const fn plain(prefix: Cidr, service: Option<String>, comment: Option<String>) -> Self {
        Self {
            prefix,
            service,
            max_conn_per_source: None,
            max_conn_all_services: None,
            rate: None,
            burst: None,
            comment,
        }
    }
}

/// Where an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The config file (changed there, then `limiter reload`).
    Config,
    /// Added at run time (`limiter allow|deny|reserve add`).
    Runtime,
}

impl Origin {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Runtime => "runtime",
        }
    }
}

/// An entry and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ListedEntry {
    #[serde(flatten)]
    pub entry: Entry,
    pub origin: Origin,
}

/// The entries of one list: the config file's, then the run-time ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "limiter allow|deny|reserve list --json",
    description = "The entries of one list, from the config file and from run time (docs/status.md). Fields \
                   are only ever added: every object allows properties not listed here. A property an entry \
                   does not have is absent, not null.",
    extend("allOf" = [{
        "if": { "properties": { "list": { "const": "reserve" } } },
        "then": { "properties": { "entries": { "items": { "required": ["service"] } } } }
    }])
)]
pub struct ListReply {
    pub list: ListName,
    pub entries: Vec<ListedEntry>,
}

/// A run-time entry added, and every warning of the lists now in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AddedReply {
    pub list: ListName,
    pub added: Entry,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A run-time entry removed, or (with `missing_ok`) found absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RemovedReply {
    pub list: ListName,
    /// The prefix removed; null when it was not there.
    pub removed: Option<Cidr>,
    /// The prefix that was not there (only with `missing_ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Cidr")]
    pub absent: Option<Cidr>,
    /// The config file has the same entry, which stays in force.
    pub still_in_config: bool,
}

/// The config re-read and applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReloadReply {
    /// The config file, or "the run flags".
    pub reloaded: String,
    /// Services now in force.
    pub services: usize,
    #[serde(default)]
    pub warnings: Vec<String>,
}
