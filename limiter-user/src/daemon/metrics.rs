//! `--metrics-listen ADDR:PORT`: Prometheus (`OpenMetrics` text) at
//! `/metrics`, encoded by the `prometheus-client` crate from a snapshot of
//! the kernel's counters taken at each scrape.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use limiter_common::Verdict;
use log::{debug, info};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::protocol::ResponderStatus;

/// What one scrape reports.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub version: &'static str,
    pub services: Vec<ServiceSnapshot>,
    /// Frames for no service (other ports and protocols, unparsed frames).
    pub passed_other: u64,
    /// Sources with an entry in `CONNS` (with connections or not yet reclaimed).
    pub sources_tracked: u64,
    /// Sources holding at least one connection now.
    pub sources_connected: u64,
    /// `(map, entries in use, capacity)`.
    pub maps: Vec<(&'static str, u64, u64)>,
    /// `(interface, xdp mode)`.
    pub attachments: Vec<(String, &'static str)>,
    /// Refusals the kernel did not report for want of an event token or ring space.
    pub events_unreported: u64,
    /// Established connections not counted because `CONNS` was full.
    pub connections_uncounted: u64,
    /// Refusals reported but not logged on a line of their own.
    pub log_suppressed: u64,
    /// Refusal lines logged.
    pub log_lines: u64,
    /// The source-wide budget, if one is set.
    pub all_services: Option<crate::protocol::AllServicesStatus>,
    /// What the `respond` action did.
    pub responder: ResponderStatus,
}

#[derive(Debug, Default, Clone)]
pub struct ServiceSnapshot {
    pub name: String,
    /// Packets by verdict, indexed by `Verdict as usize`.
    pub counters: [u64; Verdict::COUNT as usize],
    /// What observe mode would have refused, by verdict.
    pub observed: [u64; Verdict::COUNT as usize],
    pub connections: u64,
    pub sessions: u64,
    pub max_sessions: Option<u32>,
    pub max_conn_per_source: Option<u32>,
    /// Refusals reported, by what answered them (`refusals::Answer::name`).
    pub answers: Vec<(&'static str, u64)>,
}

type Labels2 = [(&'static str, String); 2];
type Labels1 = [(&'static str, String); 1];

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The `respond` action: SYNs steered, how they were answered, fallbacks.
fn register_responder(r: &mut Registry, s: &ResponderStatus) {
    let answers = Family::<Labels1, Counter>::default();
    r.register(
        "respond_answers",
        "Over-limit SYNs of respond services, by how they were answered (responded, reset, failed, fallback_*)",
        answers.clone(),
    );
    for (outcome, n) in [
        ("responded", s.responded),
        ("reset", s.reset),
        ("failed", s.failed),
        ("fallback_no_token", s.fallback_no_token),
        ("fallback_no_responder", s.fallback_no_responder),
        ("fallback_over_share", s.fallback_over_share),
    ] {
        answers.get_or_create(&[("outcome", outcome.to_owned())]).inc_by(n);
    }
    let steered = Counter::<u64>::default();
    steered.inc_by(s.steered);
    r.register("respond_steered", "Over-limit SYNs XDP steered to the responder", steered);
}

/// The `OpenMetrics` text of a snapshot. Families appear in the order
/// they are registered here.
#[must_use]
pub fn render(s: &Snapshot) -> String {
    let mut r = Registry::with_prefix("limiter");
    register_packets(&mut r, s);
    register_services(&mut r, s);
    register_tables(&mut r, s);
    register_events(&mut r, s);
    register_responder(&mut r, &s.responder);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

/// `packets`: what the XDP program saw, by service and verdict.
fn register_packets(r: &mut Registry, s: &Snapshot) {
    let packets = Family::<Labels2, Counter>::default();
    r.register(
        "packets",
        "Packets the XDP program saw, by service and verdict (accepted and refused_* are SYNs)",
        packets.clone(),
    );
    for svc in &s.services {
        for v in Verdict::ALL {
            if v != Verdict::PassedOther {
                packets
                    .get_or_create(&[("service", svc.name.clone()), ("verdict", v.name().to_owned())])
                    .inc_by(svc.counters[v as usize]);
            }
        }
    }
    packets
        .get_or_create(&[("service", String::new()), ("verdict", Verdict::PassedOther.name().to_owned())])
        .inc_by(s.passed_other);
    let would = Family::<Labels2, Counter>::default();
    r.register(
        "would_refuse",
        "SYNs of services in observe mode (action log) that would have been refused, by verdict, and were let through",
        would.clone(),
    );
    for svc in &s.services {
        for v in Verdict::ALL {
            if svc.observed[v as usize] > 0 {
                would
                    .get_or_create(&[("service", svc.name.clone()), ("verdict", v.name().to_owned())])
                    .inc_by(svc.observed[v as usize]);
            }
        }
    }
}

/// The per-service gauges: connections, sessions and the limits.
fn register_services(r: &mut Registry, s: &Snapshot) {
    let per_service = |r: &mut Registry, name: &str, help: &str, value: &dyn Fn(&ServiceSnapshot) -> Option<u64>| {
        let f = Family::<Labels1, Gauge>::default();
        r.register(name, help, f.clone());
        for svc in &s.services {
            if let Some(v) = value(svc) {
                f.get_or_create(&[("service", svc.name.clone())]).set(gauge(v));
            }
        }
    };
    per_service(r, "connections", "Established connections of the service now, all sources", &|s| Some(s.connections));
    per_service(r, "sessions", "Sessions of the service in use now (services with max_sessions)", &|s| {
        s.max_sessions.map(|_| s.sessions)
    });
    per_service(r, "sessions_max", "max_sessions of the service", &|s| s.max_sessions.map(u64::from));
    per_service(r, "max_conn_per_source", "Connections a source may hold at once", &|s| {
        s.max_conn_per_source.map(u64::from)
    });
}

/// The tables: sources tracked and connected, map fill, attachments.
fn register_tables(r: &mut Registry, s: &Snapshot) {
    let tracked = Gauge::<i64>::default();
    tracked.set(gauge(s.sources_tracked));
    r.register("sources_tracked", "Sources with an entry in the connection table", tracked);
    let connected = Gauge::<i64>::default();
    connected.set(gauge(s.sources_connected));
    r.register("sources_connected", "Sources holding at least one connection now", connected);
    if let Some(a) = &s.all_services {
        let g = Gauge::<i64>::default();
        g.set(gauge(u64::from(a.max_conn_per_source)));
        r.register("max_conn_all_services", "Connections a source may hold over all services together", g);
        let g = Gauge::<i64>::default();
        g.set(gauge(a.at_limit));
        r.register("sources_at_all_services_limit", "Sources at their limit over all services now", g);
    }

    let entries = Family::<Labels1, Gauge>::default();
    r.register("map_entries", "Entries in use in a kernel map", entries.clone());
    let capacity = Family::<Labels1, Gauge>::default();
    r.register("map_capacity", "Entries a kernel map can hold", capacity.clone());
    for (map, used, max) in &s.maps {
        entries.get_or_create(&[("map", (*map).to_owned())]).set(gauge(*used));
        capacity.get_or_create(&[("map", (*map).to_owned())]).set(gauge(*max));
    }

    let attached = Family::<Labels2, Gauge>::default();
    r.register("xdp_attached", "1 for each interface the XDP program is attached to, with its mode", attached.clone());
    for (iface, mode) in &s.attachments {
        attached.get_or_create(&[("interface", iface.clone()), ("mode", (*mode).to_owned())]).set(1);
    }
}

/// The refusal events and lines, and the build.
fn register_events(r: &mut Registry, s: &Snapshot) {
    let counter = |r: &mut Registry, name: &str, help: &str, v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        r.register(name, help, c);
    };
    counter(
        r,
        "refusal_events_unreported",
        "Refusals the kernel did not report to the daemon (event budget or ring full)",
        s.events_unreported,
    );
    counter(
        r,
        "connections_uncounted",
        "Established connections not counted because the connection table was full (their limits not enforced)",
        s.connections_uncounted,
    );
    counter(r, "refusal_lines", "Refusal lines logged (one per source, service and reason burst)", s.log_lines);
    counter(r, "refusal_lines_suppressed", "Refusals reported but not logged on a line of their own", s.log_suppressed);
    let answers = Family::<Labels2, Counter>::default();
    r.register(
        "refusal_answers",
        "Refusals reported to the daemon, by service and what answered them (reset, dropped, responded, fallback, \
         no_handshake, steered)",
        answers.clone(),
    );
    for svc in &s.services {
        for (answer, n) in &svc.answers {
            answers.get_or_create(&[("service", svc.name.clone()), ("answer", (*answer).to_owned())]).inc_by(*n);
        }
    }

    let info = Family::<Labels1, Gauge>::default();
    r.register("build_info", "The running limiter's version", info.clone());
    info.get_or_create(&[("version", s.version.to_owned())]).set(1);
}

/// Binds the metrics listener; a bind failure stops the start-up.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr).await?;
    info!("metrics at http://{addr}/metrics");
    Ok(l)
}

/// Serves `GET /metrics` with `scrape()`'s text until the task is dropped.
pub async fn serve(listener: TcpListener, scrape: impl Fn() -> Result<String, String> + 'static) {
    let scrape = std::rc::Rc::new(scrape);
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let scrape = std::rc::Rc::clone(&scrape);
        tokio::task::spawn_local(async move {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(5), answer(stream, &*scrape)).await {
                debug!("metrics client {peer}: {e}");
            }
        });
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format (0.0.4), for every client that does
/// not ask for `OpenMetrics`: `curl`, `promtool`, older scrapers.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the request's `Accept` header prefers `OpenMetrics` to the
/// classic text format (Prometheus itself asks for `OpenMetrics` first);
/// with no `Accept`, or `*/*` alone, the classic format.
fn wants_openmetrics(head: &str) -> bool {
    let Some(accept) = head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("accept").then_some(value)
    }) else {
        return false;
    };
    let (mut om, mut text) = (None::<f32>, None::<f32>);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts.find_map(|p| p.strip_prefix("q=").and_then(|v| v.parse::<f32>().ok())).unwrap_or(1.0);
        let best = |b: &mut Option<f32>| *b = Some(b.map_or(q, |x| x.max(q)));
        match media.as_str() {
            "application/openmetrics-text" => best(&mut om),
            "text/plain" => best(&mut text),
            _ => {}
        }
    }
    om.is_some_and(|o| o > 0.0 && text.is_none_or(|t| o >= t))
}

/// The classic text format of an `OpenMetrics` exposition: a counter
/// family takes its samples' `_total` name in `# HELP` and `# TYPE`, an
/// info family becomes a gauge named `_info`, and `# UNIT` and `# EOF`
/// go (the classic format has neither).
#[must_use]
pub fn classic(openmetrics: &str) -> String {
    let mut kinds = std::collections::HashMap::new();
    for l in openmetrics.lines() {
        if let Some((name, kind)) = l.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            kinds.insert(name, kind);
        }
    }
    let renamed = |name: &str| match kinds.get(name) {
        Some(&"counter") => format!("{name}_total"),
        Some(&"info") => format!("{name}_info"),
        _ => name.to_owned(),
    };
    let mut out = String::with_capacity(openmetrics.len());
    for l in openmetrics.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        if let Some((name, help)) = l.strip_prefix("# HELP ").and_then(|r| r.split_once(' ')) {
            let _ = writeln!(out, "# HELP {} {help}", renamed(name));
        } else if let Some((name, kind)) = l.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                "info" => "gauge",
                _ => "untyped",
            };
            let _ = writeln!(out, "# TYPE {} {kind}", renamed(name));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// One request, one response, then the connection closes.
async fn answer(mut stream: TcpStream, scrape: &dyn Fn() -> Result<String, String>) {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    // Read the request head (the body, if any, is ignored).
    while len < buf.len() {
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || buf[..len].windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => match scrape() {
            Ok(text) if wants_openmetrics(&head) => ("200 OK", OPENMETRICS, text),
            Ok(text) => ("200 OK", PROMETHEUS_TEXT, classic(&text)),
            Err(e) => ("500 Internal Server Error", "text/plain; charset=utf-8", format!("{e}\n")),
        },
        ("GET" | "HEAD", "/") => ("200 OK", "text/plain; charset=utf-8", "limiter: metrics at /metrics\n".to_owned()),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found; try /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n".to_owned()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let mut counters = [0; Verdict::COUNT as usize];
        counters[Verdict::Accepted as usize] = 12;
        counters[Verdict::RefusedConcurrency as usize] = 3;
        Snapshot {
            version: "0.1.0",
            services: vec![ServiceSnapshot {
                name: "smtp".into(),
                counters,
                observed: [0; Verdict::COUNT as usize],
                connections: 3,
                sessions: 3,
                max_sessions: Some(50),
                max_conn_per_source: Some(3),
                answers: vec![("responded", 4), ("fallback", 2)],
            }],
            passed_other: 99,
            sources_tracked: 2,
            sources_connected: 1,
            maps: vec![("CONNS", 2, 65_536)],
            attachments: vec![("eth0".into(), "native")],
            events_unreported: 4,
            connections_uncounted: 7,
            responder: ResponderStatus { responded: 5, fallback_no_responder: 1, ..ResponderStatus::default() },
            log_suppressed: 2,
            log_lines: 1,
            all_services: None,
        }
    }

    #[test]
    fn families_and_values_are_there() {
        let text = render(&snapshot());
        for want in [
            "# TYPE limiter_packets counter",
            "limiter_packets_total{service=\"smtp\",verdict=\"refused_concurrency\"} 3",
            "limiter_packets_total{service=\"smtp\",verdict=\"accepted\"} 12",
            "limiter_packets_total{service=\"smtp\",verdict=\"refused_deny\"} 0",
            "limiter_packets_total{service=\"\",verdict=\"passed_other\"} 99",
            "# TYPE limiter_sessions gauge",
            "limiter_sessions{service=\"smtp\"} 3",
            "limiter_sessions_max{service=\"smtp\"} 50",
            "limiter_connections{service=\"smtp\"} 3",
            "limiter_sources_tracked 2",
            "limiter_map_entries{map=\"CONNS\"} 2",
            "limiter_map_capacity{map=\"CONNS\"} 65536",
            "limiter_xdp_attached{interface=\"eth0\",mode=\"native\"} 1",
            "limiter_refusal_events_unreported_total 4",
            "limiter_connections_uncounted_total 7",
            "limiter_build_info{version=\"0.1.0\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(text.contains("limiter_respond_answers_total{outcome=\"responded\"} 5"), "{text}");
        assert!(text.contains("limiter_refusal_answers_total{service=\"smtp\",answer=\"fallback\"} 2"), "{text}");
        assert!(text.contains("limiter_respond_answers_total{outcome=\"fallback_no_responder\"} 1"), "{text}");
    }

    #[test]
    fn a_service_without_sessions_has_no_sessions_sample() {
        let mut s = snapshot();
        s.services[0].max_sessions = None;
        let text = render(&s);
        assert!(!text.contains("limiter_sessions{"), "{text}");
        assert!(text.contains("limiter_connections{service=\"smtp\"} 3"));
    }

    #[test]
    fn the_classic_format_unless_openmetrics_is_asked_for() {
        let req = |accept: &str| format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n\r\n");
        assert!(!wants_openmetrics(&req("")), "no Accept");
        assert!(!wants_openmetrics(&req("Accept: */*")), "curl");
        assert!(!wants_openmetrics(&req("accept: text/plain;version=0.0.4")));
        // What Prometheus sends.
        assert!(wants_openmetrics(&req(
            "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
             text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(&req("Accept: application/openmetrics-text;q=0.2, text/plain;q=0.9")));
        assert!(!wants_openmetrics(&req("Accept: application/openmetrics-text;q=0")));
    }

    #[test]
    fn the_classic_text_names_counters_by_their_samples() {
        let om = render(&snapshot());
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = classic(&om);
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        assert!(text.contains("# TYPE limiter_packets_total counter\n"), "{text}");
        assert!(text.contains("# HELP limiter_packets_total Packets the XDP program saw"), "{text}");
        assert!(text.contains("limiter_packets_total{service=\"smtp\",verdict=\"accepted\"} 12\n"), "{text}");
        assert!(text.contains("# TYPE limiter_connections gauge\n"), "{text}");
        // Every sample line is the same in both.
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(samples(&om), samples(&text));
        let info = classic("# HELP x_build Build.\n# TYPE x_build info\nx_build_info{v=\"1\"} 1\n# EOF\n");
        assert_eq!(info, "# HELP x_build_info Build.\n# TYPE x_build_info gauge\nx_build_info{v=\"1\"} 1\n");
    }
}
