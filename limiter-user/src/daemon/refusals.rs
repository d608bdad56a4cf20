//! Refusal log lines: the kernel reports refused SYNs through the `EVENTS`
//! ring buffer (`limiter_common::events`); the daemon logs one line per
//! source, service, reason and proof burst, and at the end of the burst one
//! line with the count of what it did not log:
//!
//! ```text
//! refused 198.51.100.7 smtp:25 too many connections (8 established, limit 8), reset
//! refused 198.51.100.7 smtp:25 too many connections (8 established, limit 8), reset: 41 more in 10s
//! unverified 198.18.0.99 smtp:25 too many connections (0 established + 8 in handshake, limit 8), reset
//! refused 198.51.100.7 smtp:25 too many connections (8 established, limit 8), responded: 9 more in 10s (2 responded, 7 fallback reset)
//! ```
//!
//! The last word says what answered the client ([`Answer`]). Under
//! `respond`, a steered SYN's line waits for the responder
//! (`daemon::steered`), so it says whether the text went out, and a source
//! that completed the handshake with the responder is verified on its first
//! line.
//!
//! A line starts with `refused` only when the source proved its address:
//! its established connections were at the limit (connections exist only
//! after a completed handshake, which a forged source address cannot do),
//! or, for other reasons, it completed a handshake with this host recently
//! (it has an entry in `CONNS`). Every other refusal, above all those of
//! SYNs with forged source addresses, is logged as `unverified`. The
//! fail2ban filter (`packaging/fail2ban`) matches only the first form of a
//! `refused` line; the second ends with the count, so a filter anchored on
//! the closing parenthesis counts one failure per burst.

use std::{
    collections::HashMap,
    fmt::{self, Write as _},
    net::IpAddr,
    time::{Duration, Instant},
};

use limiter_common::{
    SourceKey, Verdict,
    events::{answer, basis},
    prefix::Prefix,
};
use log::info;

use crate::{
    kernel::events::Event,
    policy::{
        lists::{AllowEntry, DenyEntry},
        model::Policy,
        service::Service,
    },
};

/// How long a burst lasts: refusals of the same source, service and reason
/// within this of the burst's first line are counted, not logged.
/// `LIMITER_EVENT_WINDOW_MS` overrides it (the tests use it).
#[must_use]
pub fn window() -> Duration {
    let ms = std::env::var("LIMITER_EVENT_WINDOW_MS").ok().and_then(|v| v.parse().ok()).filter(|&ms: &u64| ms >= 100);
    Duration::from_millis(ms.unwrap_or(10_000))
}

/// New bursts logged per second at most; beyond, refusals are summed up in
/// one line at the end of the window (a spoofed flood has a new source on
/// every SYN).
pub const LINES_PER_SECOND: u32 = 50;

/// Bursts tracked at once; refusals of sources beyond are summed up too.
pub const MAX_BURSTS: usize = 8_192;

/// What answered a refused SYN, as the line's last words say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    /// A TCP RST from XDP (`action = "reset"`).
    Reset,
    /// Dropped (`action = "drop"`).
    Dropped,
    /// The responder wrote the service's refusal text (`action = "respond"`).
    Responded,
    /// `respond`, reset instead: no steering token, the source over its
    /// share, no responder socket, or over the responder's budget.
    Fallback,
    /// Steered to the responder, whose listener answered the SYN, but the
    /// client never completed the handshake (a forged source, or one gone).
    NoHandshake,
    /// Steered, and nothing more is known (its note was gone).
    Steered,
    /// Not said (a kernel program older than the field).
    Unknown,
    /// Nothing: observe mode (`action = "log"`) let the SYN through; the
    /// line starts with `would refuse`.
    Observed,
}

impl Answer {
    pub const ALL: [Self; 8] = [
        Self::Reset,
        Self::Dropped,
        Self::Responded,
        Self::Fallback,
        Self::NoHandshake,
        Self::Steered,
        Self::Unknown,
        Self::Observed,
    ];

    /// What the kernel's event says; a steered one is resolved later.
    #[must_use]
    pub const fn of_event(a: u8) -> Self {
        match a {
            answer::RESET => Self::Reset,
            answer::DROPPED => Self::Dropped,
            answer::STEERED => Self::Steered,
            answer::FALLBACK => Self::Fallback,
            answer::OBSERVED => Self::Observed,
            _ => Self::Unknown,
        }
    }

    /// The words at the end of a line.
    #[must_use]
    pub const fn words(self) -> &'static str {
        match self {
            Self::Reset => "reset",
            Self::Dropped => "dropped",
            Self::Responded => "responded",
            Self::Fallback => "fallback reset",
            Self::NoHandshake => "no handshake",
            Self::Steered => "steered",
            Self::Unknown => "answer unknown",
            Self::Observed => "let through (action log)",
        }
    }

    /// The name in the journal field `ANSWER`, `status --json` and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Reset => "reset",
            Self::Dropped => "dropped",
            Self::Responded => "responded",
            Self::Fallback => "fallback",
            Self::NoHandshake => "no_handshake",
            Self::Steered => "steered",
            Self::Unknown => "unknown",
            Self::Observed => "observed",
        }
    }
}

/// Refusals reported by the kernel, by service name and what answered them,
/// since the daemon started (for `status` and the metrics).
#[derive(Debug, Default, Clone)]
pub struct AnswerCounts {
    by_service: HashMap<String, [u64; Answer::ALL.len()]>,
}

impl AnswerCounts {
    /// One refusal of service `id` in `policy`, answered by `a`.
    pub fn count(&mut self, policy: &Policy, id: u32, a: Answer) {
        let name =
            policy.services.iter().find(|s| s.id == id).map_or_else(|| format!("service{id}"), |s| s.name.clone());
        self.by_service.entry(name).or_default()[slot(a)] += 1;
    }

    /// A service's counts, non-zero ones only, in [`Answer::ALL`] order.
    #[must_use]
    pub fn of(&self, service: &str) -> Vec<(Answer, u64)> {
        self.by_service.get(service).map_or_else(Vec::new, |c| {
            Answer::ALL.iter().zip(c).filter(|(_, n)| **n > 0).map(|(a, n)| (*a, *n)).collect()
        })
    }
}

/// Each source's refusals of the last [`window`], and what answered the
/// last one (for `limiter top`). Bounded like the bursts.
#[derive(Debug, Default)]
pub struct Recent {
    by_source: HashMap<SourceKey, (Instant, u64, Answer)>,
}

impl Recent {
    /// One refusal of the source `key` at `now`, answered by `a`.
    pub fn note(&mut self, key: SourceKey, a: Answer, now: Instant, window: Duration) {
        if self.by_source.len() >= MAX_BURSTS && !self.by_source.contains_key(&key) {
            self.by_source.retain(|_, (at, _, _)| now.saturating_duration_since(*at) < window);
            if self.by_source.len() >= MAX_BURSTS {
                let mut ages: Vec<Instant> = self.by_source.values().map(|(at, _, _)| *at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                self.by_source.retain(|_, (at, _, _)| *at > cut);
            }
        }
        let e = self.by_source.entry(key).or_insert((now, 0, a));
        if now.saturating_duration_since(e.0) >= window {
            *e = (now, 0, a);
        }
        e.1 += 1;
        e.2 = a;
    }

    /// The source's refusals since its window started (if within `window`
    /// of `now`) and the last one's answer.
    #[must_use]
    pub fn of(&self, key: &SourceKey, now: Instant, window: Duration) -> Option<(u64, Answer)> {
        self.by_source
            .get(key)
            .filter(|(at, _, _)| now.saturating_duration_since(*at) < window)
            .map(|(_, n, a)| (*n, *a))
    }
}

/// A refusal line: `refused SOURCE SERVICE:PORT REASON (DETAIL), ANSWER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub source: IpAddr,
    pub service: String,
    pub port: u16,
    pub verdict: Verdict,
    /// The limit that refused it (connections, sessions, attempts per period).
    pub limit: Option<u64>,
    /// What was in use against that limit when the line was written.
    pub count: Option<u64>,
    /// The reason in words, with what it was based on:
    /// `too many connections (8 established, limit 8)`.
    pub reason: String,
    /// The source proved its address (see the module header): only then
    /// does the line start with `refused`, the word fail2ban looks for.
    pub verified: bool,
    /// What answered the client.
    pub answer: Answer,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Observe mode's lines never start with `refused`: fail2ban must not
        // ban for what was not refused.
        let word = if self.answer == Answer::Observed {
            "would refuse"
        } else if self.verified {
            "refused"
        } else {
            "unverified"
        };
        write!(f, "{word} {} {}:{} {}, {}", self.source, self.service, self.port, self.reason, self.answer.words())
    }
}

/// What the daemon knows when it writes a line: the policy in force (its
/// lists with the run-time entries) and the counts in the kernel now.
pub struct Context<'a> {
    pub policy: &'a Policy,
    /// Established connections of a source (`CONNS` + `SEEDED`), or `None`
    /// when neither holds an entry for it: it has not completed a handshake
    /// with this host recently.
    pub connections: &'a dyn Fn(&SourceKey) -> Option<u64>,
    /// Sessions in use of a service id.
    pub sessions: &'a dyn Fn(u32) -> u64,
}

/// What the daemon learnt of a refusal after the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub answer: Answer,
    /// The client completed a TCP handshake for it (with the responder).
    pub handshake: bool,
}

impl Resolved {
    /// As the kernel reported it, nothing learnt since.
    #[must_use]
    pub const fn reported(e: &Event) -> Self {
        Self { answer: Answer::of_event(e.answer), handshake: false }
    }
}

/// Builds the line for `e`, answered as `r` says, naming the limit that
/// refused it and what the refusal was based on.
#[must_use]
pub fn describe(e: &Event, r: Resolved, cx: &Context<'_>) -> Line {
    let service = cx.policy.services.iter().find(|s| s.id == e.service);
    let name = service.map_or_else(|| format!("service{}", e.service), |s| s.name.clone());
    let host = Prefix::new(e.addr, if e.addr.is_ipv4() { 32 } else { 128 });
    let allow = longest(&cx.policy.lists.allow, &host, |a: &AllowEntry| a.prefix.0);
    // An allow entry with limits replaces the service's per-source limits.
    let own = allow.filter(|a| !a.is_exempt());
    // Completed a handshake recently: an entry in CONNS or SEEDED.
    let held = (cx.connections)(&e.key(cx.policy));
    let (mut limit, mut count, reason) = (None, None, String::new());
    let mut verified = held.is_some();
    let reason = match (e.verdict, service) {
        (Verdict::RefusedDeny, _) => {
            let deny = longest(&cx.policy.lists.deny, &host, |d: &DenyEntry| d.prefix.0);
            deny.map_or_else(|| "on the deny list".to_owned(), |d| format!("on the deny list ({})", d.prefix))
        }
        (Verdict::RefusedConcurrency, Some(_))
            if e.basis == basis::ALL_ESTABLISHED || e.basis == basis::ALL_IN_FLIGHT =>
        {
            // The source-wide budget: an allow entry with limits replaces it too.
            let max =
                allow.filter(|a| !a.is_exempt()).map_or(cx.policy.max_conn_all_services, |a| a.max_conn_all_services);
            limit = max.map(u64::from);
            count = Some(u64::from(e.established));
            verified = e.basis == basis::ALL_ESTABLISHED;
            let limit = limit.map_or_else(String::new, |l| format!(", limit {l}"));
            if verified {
                format!("too many connections over all services ({} established{limit})", e.established)
            } else {
                format!(
                    "too many connections over all services ({} established + {} in handshake{limit})",
                    e.established, e.pending
                )
            }
        }
        (Verdict::RefusedConcurrency, Some(s)) => {
            let max = own.map_or(s.max_conn_per_source, |a| a.max_conn_per_source);
            limit = max.map(u64::from);
            count = Some(u64::from(e.established));
            // Only established connections at the limit prove the address:
            // handshakes in flight may be forged SYNs.
            verified = e.basis == basis::ESTABLISHED;
            let limit = limit.map_or_else(String::new, |l| format!(", limit {l}"));
            if verified {
                format!("too many connections ({} established{limit})", e.established)
            } else {
                format!("too many connections ({} established + {} in handshake{limit})", e.established, e.pending)
            }
        }
        (Verdict::RefusedRate, Some(s)) => {
            let (rate, burst) = own.map_or((s.rate, Some(s.burst)), |a| (a.rate, a.burst));
            limit = rate.map(|r| r.count);
            count = held;
            let proof = match held {
                Some(n) if n > 0 => format!("{n} established"),
                Some(_) => "handshake completed recently".to_owned(),
                None => "no completed handshake".to_owned(),
            };
            match (rate, burst) {
                (Some(r), Some(b)) => format!("too many attempts (rate {r}, burst {b}; {proof})"),
                (Some(r), None) => format!("too many attempts (rate {r}; {proof})"),
                _ => format!("too many attempts ({proof})"),
            }
        }
        (Verdict::RefusedSessions | Verdict::RefusedReserve, Some(s)) => {
            sessions_reason(e, s, cx, &mut limit, &mut count)
        }
        _ => reason,
    };
    // A connection the responder accepted (whether it wrote the text or
    // reset it, over its budget) completed a handshake: the address is real.
    let verified = verified || r.handshake;
    Line {
        source: e.addr,
        service: name,
        port: e.port,
        verdict: e.verdict,
        limit,
        count,
        reason,
        verified,
        answer: r.answer,
    }
}

fn sessions_reason(
    e: &Event,
    s: &Service,
    cx: &Context<'_>,
    limit: &mut Option<u64>,
    count: &mut Option<u64>,
) -> String {
    let max = s.max_sessions.map_or(0, u64::from);
    let in_use = (cx.sessions)(s.id);
    *count = Some(in_use);
    if e.verdict == Verdict::RefusedSessions {
        *limit = Some(max);
        format!("service full ({in_use}/{max} sessions)")
    } else {
        let open = max.saturating_sub(u64::from(s.reserved_sessions));
        *limit = Some(open);
        format!("sessions reserved ({in_use}/{max} sessions, {} kept for the reserve list)", s.reserved_sessions)
    }
}

/// The longest entry of a list covering `host`.
fn longest<'a, T>(list: &'a [T], host: &Prefix, prefix: impl Fn(&T) -> Prefix) -> Option<&'a T> {
    list.iter().filter(|e| prefix(e).covers(host)).max_by_key(|e| prefix(e).len)
}

/// What ends up in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    /// The first refusal of a burst.
    Refused(Line),
    /// The end of a burst with refusals not logged, and what answered
    /// them (non-zero counts, in [`Answer::ALL`] order).
    Repeated { line: Line, more: u64, window: Duration, answers: Vec<(Answer, u64)> },
    /// Refusals of bursts not logged at all (the line rate or the burst
    /// table was at its limit): how many, from how many sources at least.
    Unlogged { refusals: u64, sources: u64, window: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    addr: IpAddr,
    service: u32,
    verdict: Verdict,
    /// Refusals on established connections and on handshakes in flight are
    /// separate bursts, so forged SYNs in a source's name can neither hide
    /// its proved refusals nor ride on their line.
    basis: u8,
    /// Likewise refusals the client completed a handshake for (with the
    /// responder) and those it did not.
    handshake: bool,
}

struct Burst {
    started: Instant,
    /// The line logged for it; `None` when it was not logged.
    line: Option<Line>,
    suppressed: u64,
    /// What answered the suppressed ones, by [`Answer::ALL`] index.
    answers: [u64; Answer::ALL.len()],
}

impl Burst {
    fn answers(&self) -> Vec<(Answer, u64)> {
        Answer::ALL.iter().zip(self.answers).filter(|(_, n)| *n > 0).map(|(a, n)| (*a, n)).collect()
    }
}

fn slot(a: Answer) -> usize {
    Answer::ALL.iter().position(|x| *x == a).unwrap_or(0)
}

/// Turns refusals into log lines: one per burst, rate-limited, with the
/// count of the rest. Pure: time is given by the caller.
pub struct Bursts {
    window: Duration,
    open: HashMap<Key, Burst>,
    second: Option<Instant>,
    lines_this_second: u32,
    /// Refusals of sources not tracked (the table was full).
    overflow: u64,
    /// Refusals not logged on a line of their own, ever.
    pub suppressed_total: u64,
    /// Lines of the `Refused` form written, ever.
    pub logged_total: u64,
}

impl Bursts {
    #[must_use]
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            open: HashMap::new(),
            second: None,
            lines_this_second: 0,
            overflow: 0,
            suppressed_total: 0,
            logged_total: 0,
        }
    }

    /// One refusal at `now`, answered as `r` says; `line` describes it if
    /// it is to be logged.
    pub fn event(&mut self, e: &Event, r: Resolved, now: Instant, line: impl FnOnce() -> Line) -> Vec<Emit> {
        let key = Key { addr: e.addr, service: e.service, verdict: e.verdict, basis: e.basis, handshake: r.handshake };
        let mut out = Vec::new();
        let full = self.open.len() >= MAX_BURSTS;
        match self.open.get_mut(&key) {
            Some(b) if now.duration_since(b.started) < self.window => {
                b.suppressed += 1;
                b.answers[slot(r.answer)] += 1;
                self.suppressed_total += 1;
                return out;
            }
            Some(_) => {
                // Its window is over and not flushed yet: close it first.
                if let Some(b) = self.open.remove(&key) {
                    out.extend(self.close(b, &mut 0, &mut 0));
                }
            }
            None if full => {
                self.overflow += 1;
                self.suppressed_total += 1;
                return out;
            }
            None => {}
        }
        if self.second.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1)) {
            self.second = Some(now);
            self.lines_this_second = 0;
        }
        let logged = if self.lines_this_second < LINES_PER_SECOND {
            self.lines_this_second += 1;
            self.logged_total += 1;
            let l = line();
            out.push(Emit::Refused(l.clone()));
            Some(l)
        } else {
            self.suppressed_total += 1;
            None
        };
        self.open.insert(key, Burst { started: now, line: logged, suppressed: 0, answers: [0; Answer::ALL.len()] });
        out
    }

    /// Closes the bursts whose window is over at `now`.
    pub fn flush(&mut self, now: Instant) -> Vec<Emit> {
        let window = self.window;
        let over: Vec<Key> =
            self.open.iter().filter(|(_, b)| now.duration_since(b.started) >= window).map(|(k, _)| *k).collect();
        let (mut refusals, mut sources) = (std::mem::take(&mut self.overflow), 0u64);
        let mut out = Vec::new();
        for k in over {
            if let Some(b) = self.open.remove(&k) {
                out.extend(self.close(b, &mut refusals, &mut sources));
            }
        }
        if refusals > 0 {
            out.push(Emit::Unlogged { refusals, sources: sources.max(1), window });
        }
        out
    }

    /// What a closed burst leaves to log; an unlogged one adds to the sums.
    fn close(&self, b: Burst, refusals: &mut u64, sources: &mut u64) -> Option<Emit> {
        let answers = b.answers();
        match b.line {
            Some(line) if b.suppressed > 0 => {
                Some(Emit::Repeated { line, more: b.suppressed, window: self.window, answers })
            }
            Some(_) => None,
            None => {
                *refusals += 1 + b.suppressed;
                *sources += 1;
                None
            }
        }
    }
}

/// `: 41 more in 10s`, with what answered them when that is not all the
/// line's own answer: `: 9 more in 10s (2 responded, 7 fallback reset)`.
#[must_use]
pub fn repeated(line: &Line, more: u64, window: Duration, answers: &[(Answer, u64)]) -> String {
    let mut out = format!("{line}: {more} more in {}s", window.as_secs());
    if answers.iter().any(|(a, _)| *a != line.answer) {
        let parts: Vec<String> = answers.iter().map(|(a, n)| format!("{n} {}", a.words())).collect();
        let _ = write!(out, " ({})", parts.join(", "));
    }
    out
}

/// Writes an emitted line to the log, with journal fields under systemd
/// (`SOURCE`, `SERVICE`, `PORT`, `REASON`, `LIMIT`, `COUNT`, `SUPPRESSED`,
/// `VERIFIED`, `ANSWER`).
pub fn log(e: &Emit) {
    match e {
        Emit::Refused(l) => info!(
            target: "limiter::refused",
            source = l.source.to_string().as_str(), service = l.service.as_str(), port = l.port,
            reason = l.verdict.name(), limit = l.limit, count = l.count, suppressed = 0u64, verified = l.verified,
            answer = l.answer.name();
            "{l}"
        ),
        Emit::Repeated { line: l, more, window, answers } => info!(
            target: "limiter::refused",
            source = l.source.to_string().as_str(), service = l.service.as_str(), port = l.port,
            reason = l.verdict.name(), limit = l.limit, count = l.count, suppressed = *more, verified = l.verified,
            answer = l.answer.name();
            "{}", repeated(l, *more, *window, answers)
        ),
        Emit::Unlogged { refusals, sources, window } => info!(
            target: "limiter::refused", suppressed = *refusals;
            "{refusals} refusals from {sources} or more sources not logged in {}s (log rate limit)",
            window.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ev(last: u8, verdict: Verdict) -> Event {
        Event {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)),
            service: 1,
            port: 25,
            verdict,
            basis: basis::ESTABLISHED,
            pending: 0,
            established: 8,
            answer: answer::RESET,
            client_port: 40_000,
        }
    }

    /// As the kernel reported it.
    fn r(e: &Event) -> Resolved {
        Resolved::reported(e)
    }

    fn line(e: &Event) -> Line {
        Line {
            source: e.addr,
            service: "smtp".into(),
            port: e.port,
            verdict: e.verdict,
            limit: Some(8),
            count: Some(8),
            reason: "too many connections (8 established, limit 8)".into(),
            verified: true,
            answer: Answer::Reset,
        }
    }

    /// A policy with one service `smtp` (id 1) on port 25: 8 connections per
    /// source, 30 attempts a minute with bursts of 10.
    fn smtp_policy() -> Policy {
        let file = crate::policy::file::ConfigFile::parse(
            "interfaces = [\"eth0\"]\n[[service]]\nname = \"smtp\"\nports = [25]\nmax_conn_per_source = 8\nrate = \"30/m\"\nburst = 10\n",
            "test.toml",
        )
        .expect("config");
        Policy::build(file, &crate::policy::model::Overrides::default()).expect("policy")
    }

    /// `describe` with `held` as the source's entry in `CONNS`.
    fn describe_with(e: &Event, held: Option<u64>) -> Line {
        let policy = smtp_policy();
        let cx = Context { policy: &policy, connections: &|_| held, sessions: &|_| 0 };
        describe(e, Resolved::reported(e), &cx)
    }

    /// Observe mode's lines say "would refuse", never "refused" (which the
    /// fail2ban filter matches), whatever the reason.
    #[test]
    fn observed_refusals_read_would_refuse() {
        let e = Event { answer: answer::OBSERVED, ..ev(7, Verdict::RefusedConcurrency) };
        let text = describe_with(&e, Some(8)).to_string();
        assert_eq!(
            text,
            "would refuse 198.18.0.7 smtp:25 too many connections (8 established, limit 8), let through (action log)"
        );
        let e = Event { answer: answer::OBSERVED, basis: basis::NONE, ..ev(7, Verdict::RefusedRate) };
        assert!(
            describe_with(&e, Some(2)).to_string().starts_with("would refuse 198.18.0.7 smtp:25 too many attempts")
        );
    }

    /// A refusal by the source-wide budget names it, with the budget's limit
    /// (not the service's), verified only on established connections.
    #[test]
    fn source_wide_refusals_name_the_budget() {
        let file = crate::policy::file::ConfigFile::parse(
            "interfaces = [\"eth0\"]\nmax_conn_per_source = 5\n[[service]]\nname = \"smtp\"\nports = [25]\n\
             max_conn_per_source = 4\n",
            "test.toml",
        )
        .expect("config");
        let policy = Policy::build(file, &crate::policy::model::Overrides::default()).expect("policy");
        let cx = Context { policy: &policy, connections: &|_| Some(1), sessions: &|_| 0 };
        let e = Event { basis: basis::ALL_ESTABLISHED, established: 5, ..ev(7, Verdict::RefusedConcurrency) };
        assert_eq!(
            describe(&e, Resolved::reported(&e), &cx).to_string(),
            "refused 198.18.0.7 smtp:25 too many connections over all services (5 established, limit 5), reset"
        );
        let e = Event { basis: basis::ALL_IN_FLIGHT, established: 3, pending: 2, ..e };
        assert_eq!(
            describe(&e, Resolved::reported(&e), &cx).to_string(),
            "unverified 198.18.0.7 smtp:25 too many connections over all services (3 established + 2 in handshake, \
             limit 5), reset"
        );
    }

    #[test]
    fn the_line_reads_as_documented() {
        let e = ev(7, Verdict::RefusedConcurrency);
        assert_eq!(
            describe_with(&e, Some(8)).to_string(),
            "refused 198.18.0.7 smtp:25 too many connections (8 established, limit 8), reset"
        );
    }

    /// A source that never completed a handshake (a forged address) refused
    /// on handshakes in flight: an `unverified` line, which says what it was
    /// based on and never claims "too many connections (0/8)".
    #[test]
    fn forged_sources_get_unverified_lines() {
        let e = Event { basis: basis::IN_FLIGHT, established: 0, pending: 8, ..ev(99, Verdict::RefusedConcurrency) };
        let l = describe_with(&e, None);
        assert!(!l.verified);
        assert_eq!(
            l.to_string(),
            "unverified 198.18.0.99 smtp:25 too many connections (0 established + 8 in handshake, limit 8), reset"
        );
        // In flight, even for a source that holds some: unverified.
        let e = Event { basis: basis::IN_FLIGHT, established: 7, pending: 1, ..e };
        assert!(!describe_with(&e, Some(7)).verified);
        // Rate refusals prove nothing by themselves: a source with no entry
        // in CONNS is unverified, one that completed handshakes is not.
        let e = Event { basis: basis::NONE, established: 0, pending: 0, ..ev(99, Verdict::RefusedRate) };
        assert_eq!(
            describe_with(&e, None).to_string(),
            "unverified 198.18.0.99 smtp:25 too many attempts (rate 30/m, burst 10; no completed handshake), reset"
        );
        assert_eq!(
            describe_with(&e, Some(2)).to_string(),
            "refused 198.18.0.99 smtp:25 too many attempts (rate 30/m, burst 10; 2 established), reset"
        );
        assert!(
            describe_with(&e, Some(0))
                .to_string()
                .ends_with("(rate 30/m, burst 10; handshake completed recently), reset")
        );
    }

    /// Forged refusals in a proved source's name are a burst of their own:
    /// they neither suppress its proved line nor add to it.
    #[test]
    fn proved_and_unproved_refusals_are_separate_bursts() {
        let mut b = Bursts::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let forged =
            Event { basis: basis::IN_FLIGHT, established: 0, pending: 8, ..ev(5, Verdict::RefusedConcurrency) };
        let real = ev(5, Verdict::RefusedConcurrency);
        assert_eq!(b.event(&forged, r(&forged), t0, || describe_with(&forged, None)).len(), 1);
        let out = b.event(&real, r(&real), t0, || describe_with(&real, Some(8)));
        assert!(matches!(&out[..], [Emit::Refused(l)] if l.verified), "{out:?}");
    }

    #[test]
    fn one_line_per_burst_then_the_count() {
        let w = Duration::from_secs(10);
        let mut b = Bursts::new(w);
        let t0 = Instant::now();
        let e = ev(7, Verdict::RefusedConcurrency);
        let first = b.event(&e, r(&e), t0, || line(&e));
        assert_eq!(first, vec![Emit::Refused(line(&e))]);
        for i in 1..=41 {
            assert!(b.event(&e, r(&e), t0 + Duration::from_millis(i * 100), || line(&e)).is_empty());
        }
        // Another reason of the same source is a burst of its own.
        let rate = ev(7, Verdict::RefusedRate);
        assert_eq!(b.event(&rate, r(&rate), t0 + Duration::from_secs(1), || line(&rate)).len(), 1);
        assert!(b.flush(t0 + Duration::from_secs(9)).is_empty(), "nothing ends before the window");
        let end = b.flush(t0 + w);
        assert_eq!(
            end,
            vec![Emit::Repeated { line: line(&e), more: 41, window: w, answers: vec![(Answer::Reset, 41)] }]
        );
        assert_eq!((b.logged_total, b.suppressed_total), (2, 41));
        // A new burst after the window logs again.
        assert_eq!(b.event(&e, r(&e), t0 + w + Duration::from_secs(1), || line(&e)).len(), 1);
    }

    #[test]
    fn a_burst_past_its_window_is_closed_by_the_next_refusal() {
        let w = Duration::from_secs(10);
        let mut b = Bursts::new(w);
        let t0 = Instant::now();
        let e = ev(7, Verdict::RefusedConcurrency);
        b.event(&e, r(&e), t0, || line(&e));
        b.event(&e, r(&e), t0 + Duration::from_secs(1), || line(&e));
        let out = b.event(&e, r(&e), t0 + Duration::from_secs(11), || line(&e));
        assert_eq!(
            out,
            vec![
                Emit::Repeated { line: line(&e), more: 1, window: w, answers: vec![(Answer::Reset, 1)] },
                Emit::Refused(line(&e))
            ]
        );
    }

    #[test]
    fn a_flood_of_sources_is_capped_and_summed_up() {
        let w = Duration::from_secs(10);
        let mut b = Bursts::new(w);
        let t0 = Instant::now();
        let mut lines = 0;
        for i in 0..200u8 {
            let e = ev(i, Verdict::RefusedSessions);
            lines += b.event(&e, r(&e), t0, || line(&e)).len();
            // each source twice
            assert!(b.event(&e, r(&e), t0, || line(&e)).is_empty());
        }
        assert_eq!(lines, LINES_PER_SECOND as usize);
        let end = b.flush(t0 + w);
        let unlogged = 200 - u64::from(LINES_PER_SECOND);
        assert!(end.contains(&Emit::Unlogged { refusals: 2 * unlogged, sources: unlogged, window: w }), "{end:?}");
        // the logged ones report their repeat
        assert_eq!(end.iter().filter(|e| matches!(e, Emit::Repeated { more: 1, .. })).count(), 50);
        assert_eq!(b.suppressed_total, 200 + unlogged);
    }

    #[test]
    fn the_burst_table_is_bounded() {
        let mut b = Bursts::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..(MAX_BURSTS + 100) {
            let a = u32::try_from(i).expect("small");
            let e = Event { addr: IpAddr::V4(Ipv4Addr::from(0xc612_0000 | a)), ..ev(0, Verdict::RefusedSessions) };
            b.event(&e, r(&e), t0, || line(&e));
        }
        assert_eq!(b.open.len(), MAX_BURSTS);
        let end = b.flush(t0 + Duration::from_secs(20));
        let Some(Emit::Unlogged { refusals, sources, .. }) = end.last() else { panic!("no summary: {end:?}") };
        let unlogged = MAX_BURSTS + 100 - LINES_PER_SECOND as usize;
        assert_eq!((*refusals, *sources), (unlogged as u64, (MAX_BURSTS - LINES_PER_SECOND as usize) as u64));
        assert!(b.open.is_empty());
    }

    /// Each answer reads as documented at the end of the line, and a
    /// responder's accept proves the address on the first line.
    #[test]
    fn the_line_ends_with_what_answered() {
        let policy = smtp_policy();
        let cx = Context { policy: &policy, connections: &|_| None, sessions: &|_| 0 };
        let e = Event { basis: basis::IN_FLIGHT, established: 0, pending: 8, ..ev(9, Verdict::RefusedConcurrency) };
        let head = "198.18.0.9 smtp:25 too many connections (0 established + 8 in handshake, limit 8)";
        for (answer, handshake, want) in [
            (Answer::Reset, false, format!("unverified {head}, reset")),
            (Answer::Dropped, false, format!("unverified {head}, dropped")),
            (Answer::Fallback, false, format!("unverified {head}, fallback reset")),
            (Answer::NoHandshake, false, format!("unverified {head}, no handshake")),
            (Answer::Responded, true, format!("refused {head}, responded")),
            (Answer::Fallback, true, format!("refused {head}, fallback reset")),
        ] {
            assert_eq!(describe(&e, Resolved { answer, handshake }, &cx).to_string(), want);
        }
    }

    /// A burst's summary says what answered the refusals it did not log
    /// when that is not all the line's own answer.
    #[test]
    fn the_summary_counts_the_answers() {
        let w = Duration::from_secs(10);
        let mut b = Bursts::new(w);
        let t0 = Instant::now();
        let e = ev(7, Verdict::RefusedConcurrency);
        let proved = |answer| Resolved { answer, handshake: true };
        let first = Line { answer: Answer::Responded, verified: true, ..line(&e) };
        assert_eq!(b.event(&e, proved(Answer::Responded), t0, || first.clone()).len(), 1);
        for a in [Answer::Responded, Answer::Responded, Answer::Fallback] {
            assert!(b.event(&e, proved(a), t0, || first.clone()).is_empty());
        }
        // Unproved refusals in its name are a burst of their own.
        assert_eq!(b.event(&e, r(&e), t0, || line(&e)).len(), 1);
        let end = b.flush(t0 + w);
        let Some(Emit::Repeated { line: l, more, window, answers }) =
            end.iter().find(|x| matches!(x, Emit::Repeated { line, .. } if line.answer == Answer::Responded))
        else {
            panic!("no summary: {end:?}");
        };
        assert_eq!(
            repeated(l, *more, *window, answers),
            "refused 198.18.0.7 smtp:25 too many connections (8 established, limit 8), responded: 3 more in 10s (2 \
             responded, 1 fallback reset)"
        );
        let same = repeated(l, 2, w, &[(Answer::Responded, 2)]);
        assert!(same.ends_with(", responded: 2 more in 10s"), "{same}");
    }

    #[test]
    fn answers_are_counted_by_service() {
        let policy = smtp_policy();
        let mut c = AnswerCounts::default();
        c.count(&policy, 1, Answer::Responded);
        c.count(&policy, 1, Answer::Responded);
        c.count(&policy, 1, Answer::Fallback);
        assert_eq!(c.of("smtp"), vec![(Answer::Responded, 2), (Answer::Fallback, 1)]);
        assert!(c.of("imap").is_empty());
    }

    #[test]
    fn recent_refusals_are_per_source_and_window() {
        let policy = smtp_policy();
        let w = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut r = Recent::default();
        let key = ev(7, Verdict::RefusedConcurrency).key(&policy);
        r.note(key, Answer::Responded, t0, w);
        r.note(key, Answer::Fallback, t0 + Duration::from_secs(1), w);
        assert_eq!(r.of(&key, t0 + Duration::from_secs(2), w), Some((2, Answer::Fallback)));
        assert_eq!(r.of(&key, t0 + w, w), None, "its window is over");
        r.note(key, Answer::Reset, t0 + w, w);
        assert_eq!(r.of(&key, t0 + w, w), Some((1, Answer::Reset)), "a new window");
        let other = ev(8, Verdict::RefusedConcurrency).key(&policy);
        assert_eq!(r.of(&other, t0, w), None);
    }
}
