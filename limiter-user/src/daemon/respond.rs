//! What the responder writes to a connection the kernel steered to it: the
//! refusal line of the service's protocol for the reason the kernel gave,
//! with the numbers filled in, inside TLS on implicit-TLS ports, or a reset
//! when there is nothing right to say (the service no longer responds, has
//! no protocol, or an implicit-TLS port has no certificate).

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use limiter_common::{SourceKey, Verdict};
use log::warn;
use tokio_rustls::TlsAcceptor;

use crate::{
    daemon::responder::{self, Reply},
    policy::{
        model::Policy,
        respond::{self, Reason, Values},
        service::{Action, Service},
    },
};

/// The refusal reason of a kernel verdict; `None` for a verdict that is not a refusal.
#[must_use]
pub const fn reason_of(v: Verdict) -> Option<Reason> {
    match v {
        Verdict::RefusedConcurrency => Some(Reason::Connections),
        Verdict::RefusedRate => Some(Reason::Rate),
        Verdict::RefusedSessions => Some(Reason::SessionsFull),
        Verdict::RefusedReserve => Some(Reason::SessionsReserved),
        Verdict::RefusedDeny => Some(Reason::Deny),
        _ => None,
    }
}

/// What the kernel noted of a steered SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steered {
    pub service: u32,
    pub verdict: Verdict,
    /// The connection limit in force, 0 when the refusal was not by it.
    pub limit: u32,
    /// Established connections the decision counted.
    pub count: u32,
}

/// `{limit}` and `{count}` for a refusal: what the source or the service reached.
fn numbers(s: &Service, st: &Steered, reason: Reason) -> (u64, u64) {
    let sessions = u64::from(s.max_sessions.unwrap_or(0));
    match reason {
        Reason::Connections => {
            let limit = if st.limit == 0 { s.max_conn_per_source.unwrap_or(0) } else { st.limit };
            (u64::from(limit), u64::from(st.count))
        }
        Reason::Rate => (s.rate.map_or(0, |r| r.count), 0),
        Reason::SessionsFull => (sessions, sessions),
        Reason::SessionsReserved => {
            let open = sessions.saturating_sub(u64::from(s.reserved_sessions));
            (open, open)
        }
        Reason::Deny => (0, 0),
    }
}

/// The TLS acceptors of the responding services and the name to greet with.
pub struct Answers {
    host: String,
    tls: HashMap<String, TlsAcceptor>,
}

impl Answers {
    /// Reads the certificates of every service that responds on an
    /// implicit-TLS port. A certificate that cannot be used is logged and
    /// its ports reset, as without one.
    #[must_use]
    pub fn new(policy: &Policy) -> Self {
        let mut tls = HashMap::new();
        for s in policy.services.iter().filter(|s| s.action == Action::Respond) {
            let Some(files) = &s.respond.tls else { continue };
            match responder::tls_acceptor(&files.cert, &files.key) {
                Ok(a) => {
                    tls.insert(s.name.clone(), a);
                }
                Err(e) => warn!("service {}: {e}; its implicit-TLS ports are reset instead of answered", s.name),
            }
        }
        Self { host: policy.hostname.clone().unwrap_or_else(host_name), tls }
    }

    /// What to answer a connection from `source` to `local_port` that the
    /// kernel steered for `st`.
    #[must_use]
    pub fn reply(&self, policy: &Policy, st: &Steered, source: IpAddr, local_port: u16) -> Reply {
        let Some(s) = policy.services.iter().find(|s| s.id == st.service) else { return Reply::Reset };
        let Some(reason) = reason_of(st.verdict) else { return Reply::Reset };
        if s.action != Action::Respond {
            return Reply::Reset;
        }
        let Some(template) = s.respond.template(reason) else { return Reply::Reset };
        let tls = if s.respond.is_implicit_tls(local_port) {
            match self.tls.get(&s.name) {
                Some(a) => Some(a.clone()),
                None => return Reply::Reset,
            }
        } else {
            None
        };
        let (limit, count) = numbers(s, st, reason);
        let source = source.to_string();
        let line = respond::render(template, &Values { limit, count, source: &source, host: &self.host });
        Reply::Line { line: line.into_bytes(), tls }
    }
}

/// Sources the responder answered recently: each completed a TCP handshake
/// with this host (with the responder), so its address is real, and its
/// refusal lines are written as verified (`refused`, which fail2ban reads).
#[derive(Debug, Default)]
pub struct Answered {
    at: HashMap<SourceKey, Instant>,
}

impl Answered {
    /// How long an answer proves a source.
    pub const FOR: Duration = Duration::from_mins(1);
    /// Sources remembered at once; past it the expired ones are dropped,
    /// then the oldest half.
    const MAX: usize = 8_192;

    pub fn mark(&mut self, key: SourceKey, now: Instant) {
        if self.at.len() >= Self::MAX && !self.at.contains_key(&key) {
            self.at.retain(|_, t| now.saturating_duration_since(*t) < Self::FOR);
            if self.at.len() >= Self::MAX {
                let mut ages: Vec<Instant> = self.at.values().copied().collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                self.at.retain(|_, t| *t > cut);
            }
        }
        self.at.insert(key, now);
    }

    /// Whether `key` was answered within [`Self::FOR`] of `now`.
    #[must_use]
    pub fn contains(&self, key: &SourceKey, now: Instant) -> bool {
        self.at.get(key).is_some_and(|t| now.saturating_duration_since(*t) < Self::FOR)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.at.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

/// This host's name (`gethostname`), or `localhost` if it has none.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the name is NUL-terminated
    // when it fits, which the length one short of the buffer ensures.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_owned(),
        _ => "localhost".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::policy::{file::ConfigFile, model::Overrides};

    fn policy(text: &str) -> Policy {
        Policy::build(ConfigFile::parse(text, "test").expect("config"), &Overrides::default()).expect("policy")
    }

    const CONFIG: &str = r#"
hostname = "mx.example.org"
interfaces = ["eth0"]

[[service]]
name = "smtp"
ports = [2525, 465]
max_conn_per_source = 2
max_sessions = 10
reserved_sessions = 4
action = "respond"

[[service]]
name = "imap"
ports = [143]
max_conn_per_source = 3
action = "reset"
"#;

    fn line(r: Reply) -> Option<String> {
        match r {
            Reply::Line { line, tls } => {
                assert!(tls.is_none(), "no TLS configured");
                Some(String::from_utf8(line).expect("utf-8"))
            }
            Reply::Reset => None,
        }
    }

    fn steered(p: &Policy, name: &str, verdict: Verdict, limit: u32, count: u32) -> Steered {
        let service = p.services.iter().find(|s| s.name == name).expect("service").id;
        Steered { service, verdict, limit, count }
    }

    #[test]
    fn each_reason_gets_its_line_with_the_numbers() {
        let p = policy(CONFIG);
        let a = Answers::new(&p);
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7));
        let cases = [
            (
                Verdict::RefusedConcurrency,
                2,
                2,
                "421 4.7.0 mx.example.org Too many connections from your IP (2), try again later\r\n",
            ),
            (Verdict::RefusedSessions, 0, 0, "421 4.3.2 mx.example.org Too many sessions, try again later\r\n"),
            (Verdict::RefusedDeny, 0, 0, "421 4.7.0 mx.example.org Access from your IP is temporarily refused\r\n"),
        ];
        for (verdict, limit, count, want) in cases {
            let got = line(a.reply(&p, &steered(&p, "smtp", verdict, limit, count), src, 2525));
            assert_eq!(got.as_deref(), Some(want), "{verdict:?}");
        }
    }

    #[test]
    fn the_limit_comes_from_the_service_when_the_kernel_gave_none() {
        let p = policy(CONFIG);
        let a = Answers::new(&p);
        let st = steered(&p, "smtp", Verdict::RefusedConcurrency, 0, 0);
        let got = line(a.reply(&p, &st, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7)), 2525)).expect("a line");
        assert!(got.contains("(2)"), "{got}");
    }

    #[test]
    fn an_answer_proves_a_source_for_a_minute_and_the_set_is_bounded() {
        let t0 = Instant::now();
        let key = |i: u32| {
            let mut k = SourceKey { addr: [0; 16], service: 1, family: limiter_common::maps::family::V4, pad: [0; 2] };
            k.addr[..4].copy_from_slice(&i.to_be_bytes());
            k
        };
        let mut a = Answered::default();
        a.mark(key(1), t0);
        assert!(a.contains(&key(1), t0 + Duration::from_secs(59)));
        assert!(!a.contains(&key(1), t0 + Answered::FOR), "expired");
        assert!(!a.contains(&key(2), t0), "never answered");
        for i in 0..u32::try_from(Answered::MAX + 100).expect("small") {
            a.mark(key(i), t0 + Duration::from_micros(u64::from(i)));
        }
        assert!(a.len() <= Answered::MAX, "{} remembered", a.len());
    }

    #[test]
    fn resets_where_there_is_nothing_right_to_say() {
        let p = policy(CONFIG);
        let a = Answers::new(&p);
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7));
        let smtp = steered(&p, "smtp", Verdict::RefusedConcurrency, 2, 2);
        assert!(line(a.reply(&p, &smtp, src, 465)).is_none(), "an implicit-TLS port without a certificate");
        let imap = steered(&p, "imap", Verdict::RefusedConcurrency, 3, 3);
        assert!(line(a.reply(&p, &imap, src, 143)).is_none(), "a service that does not respond (any more)");
        let gone = Steered { service: 15, ..smtp };
        assert!(line(a.reply(&p, &gone, src, 2525)).is_none(), "a service id the policy no longer has");
        let accepted = Steered { verdict: Verdict::Accepted, ..smtp };
        assert!(line(a.reply(&p, &accepted, src, 2525)).is_none(), "not a refusal");
    }

    #[test]
    fn implicit_tls_ports_are_the_services_own() {
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7));
        // 2525 said to start with TLS, 465 not: without a certificate 2525 is
        // reset and 465 gets the line in the clear.
        let p = policy(&CONFIG.replace("action = \"respond\"", "action = \"respond\"\nimplicit_tls_ports = [2525]"));
        let a = Answers::new(&p);
        let st = steered(&p, "smtp", Verdict::RefusedConcurrency, 2, 2);
        assert!(line(a.reply(&p, &st, src, 2525)).is_none(), "implicit TLS without a certificate: reset");
        let got = line(a.reply(&p, &st, src, 465)).expect("465 is not implicit TLS for this service");
        assert!(got.starts_with("421 4.7.0 "), "{got}");
        // None at all: every port answers in the clear.
        let p = policy(&CONFIG.replace("action = \"respond\"", "action = \"respond\"\nimplicit_tls_ports = []"));
        let a = Answers::new(&p);
        assert!(line(a.reply(&p, &st, src, 465)).is_some(), "implicit_tls_ports = [] turns the default off");
    }
}
