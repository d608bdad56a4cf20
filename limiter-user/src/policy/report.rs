//! Where a config's values were written and what is wrong with them: the
//! place of every key and value ([`Origin`]), the problems found so far
//! (`Report`), and each one with its line ([`Problem`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use toml_edit::{Item, Key, TableLike, Value};

/// One problem of a config, with the line it was written on. Displays as
/// `PATH:LINE: message`, `PATH: message` when it has no line (a value that
/// is missing, or comes from a flag), or the bare message without a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file; empty when the policy came from flags alone.
    pub path: String,
    /// 1-based.
    pub line: Option<usize>,
    /// One line that names the offending value and says what is expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.is_empty(), self.line) {
            (true, _) => f.write_str(&self.message),
            (false, Some(line)) => write!(f, "{}:{line}: {}", self.path, self.message),
            (false, None) => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Which list an entry belongs to.
#[derive(Debug, Clone, Copy)]
pub(super) enum List {
    Allow = 0,
    Deny = 1,
    Reserve = 2,
}

impl List {
    pub(super) const fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Reserve => "reserve",
        }
    }
}

/// Where the values of a config file were written: the byte offset of each
/// key and array element, by its place in the document (`interfaces[0]`,
/// `service[1].ports[0]`, `allow[3].prefix`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    path: String,
    line_starts: Vec<usize>,
    offsets: BTreeMap<String, usize>,
    /// For each entry kept in `allow`, `deny` and `reserve`, its index in
    /// the file (an entry whose prefix did not read is left out).
    pub(super) kept: [Vec<usize>; 3],
}

impl Origin {
    pub(super) fn new(path: &str, text: &str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { path: path.to_owned(), line_starts, ..Self::default() }
    }

    /// The config file (empty for a `ConfigFile` made in code).
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The 1-based line of a byte offset.
    pub(super) fn line_at(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    /// The line of `place`, or of the nearest enclosing one written in the
    /// file (a missing field: its table's header).
    #[must_use]
    pub fn line(&self, place: &str) -> Option<usize> {
        let mut place = place;
        loop {
            if let Some(&offset) = self.offsets.get(place) {
                return Some(self.line_at(offset));
            }
            place = &place[..place.rfind(['.', '['])?];
        }
    }

    /// The place of entry `i` of a list in the file.
    pub(super) fn entry(&self, list: List, i: usize) -> String {
        format!("{}[{}]", list.name(), self.kept[list as usize].get(i).copied().unwrap_or(i))
    }

    /// Notes where every key and array element under `table` was written.
    pub(super) fn record(&mut self, place: &str, table: &dyn TableLike) {
        for (key, item) in table.iter() {
            let here = join(place, key);
            if let Some(span) = table.key(key).and_then(Key::span).or_else(|| item.span()) {
                self.offsets.insert(here.clone(), span.start);
            }
            match item {
                Item::Table(t) => self.record(&here, t),
                Item::Value(Value::InlineTable(t)) => self.record(&here, t),
                Item::ArrayOfTables(a) => {
                    for (i, t) in a.iter().enumerate() {
                        let at = format!("{here}[{i}]");
                        if let Some(span) = t.span() {
                            self.offsets.insert(at.clone(), span.start);
                        }
                        self.record(&at, t);
                    }
                }
                Item::Value(Value::Array(a)) => {
                    for (i, v) in a.iter().enumerate() {
                        let at = format!("{here}[{i}]");
                        if let Some(span) = v.span() {
                            self.offsets.insert(at.clone(), span.start);
                        }
                        if let Some(t) = v.as_inline_table() {
                            self.record(&at, t);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

pub(super) fn join(place: &str, key: &str) -> String {
    if place.is_empty() { key.to_owned() } else { format!("{place}.{key}") }
}

/// Problems found so far, each at its place in the document (empty: it
/// has none). One problem per place: a value that did not read is not
/// judged again.
#[derive(Debug, Default)]
pub(super) struct Report {
    found: Vec<(String, String)>,
    places: BTreeSet<String>,
}

impl Report {
    /// Records a problem unless its place, or a place inside it, already
    /// has one (`ports` is empty because `ports[0]` did not read).
    pub(super) fn push(&mut self, place: impl Into<String>, message: impl Into<String>) {
        let place = place.into();
        if !place.is_empty() {
            let inside = |sep: char| {
                let start = format!("{place}{sep}");
                self.places.range(start.clone()..).next().is_some_and(|p| p.starts_with(&start))
            };
            if self.places.contains(&place) || inside('.') || inside('[') {
                return;
            }
            self.places.insert(place.clone());
        }
        self.found.push((place, message.into()));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The problems with their lines, sorted by line (those without one
    /// first, in the order found).
    pub(super) fn problems(self, origin: &Origin) -> Vec<Problem> {
        let mut out: Vec<Problem> = self
            .found
            .into_iter()
            .map(|(place, message)| Problem { path: origin.path.clone(), line: origin.line(&place), message })
            .collect();
        out.sort_by_key(|p| p.line);
        out
    }
}
