//! `action = "respond"` end to end in namespaces: an over-limit client gets
//! the protocol's refusal line from the limiter's responder instead of a
//! RST, the server behind never sees that connection, and with the daemon
//! killed the same attempt is reset.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::{Scratch, path_str},
    netns::{Attempt, Daemon, Pair, Spawn, connect, sh, streams},
    privileged, require,
};

const PORT: u16 = 2525;
const WAIT: Duration = Duration::from_secs(5);

/// `limiter run` in the pair's server namespace: SMTP on [`PORT`], two
/// connections per source, over-limit attempts answered.
fn responding(pair: &Pair) -> Daemon {
    responding_with(pair, Spawn::default())
}

/// Bursts of refusal lines of a second, so their summaries come within a test.
fn short_bursts() -> Spawn {
    Spawn { env: vec![("LIMITER_EVENT_WINDOW_MS".to_owned(), "1000".to_owned())], ..Spawn::default() }
}

/// [`responding`], started as `spawn` says.
fn responding_with(pair: &Pair, spawn: Spawn) -> Daemon {
    Daemon::start_with(
        &pair.server,
        &[
            "--iface",
            &pair.server_if,
            "--port",
            "2525",
            "--max-conn-per-source",
            "2",
            "--action",
            "respond",
            "--protocol",
            "smtp",
        ],
        spawn,
    )
}

/// What a connection from `src` to the server's `dst` reads before the
/// server closes it: `Ok(text)`, or the attempt that did not connect.
fn first_words(pair: &Pair, src: IpAddr, dst: IpAddr) -> Result<String, String> {
    first_words_on(pair, src, dst, PORT)
}

/// [`first_words`] on another port.
fn first_words_on(pair: &Pair, src: IpAddr, dst: IpAddr, port: u16) -> Result<String, String> {
    pair.client.run(move || match connect(src, SocketAddr::new(dst, port), WAIT) {
        Attempt::Connected(s) => {
            let mut s: TcpStream = s;
            s.set_read_timeout(Some(WAIT)).expect("read timeout");
            let mut text = String::new();
            match s.read_to_string(&mut text) {
                Ok(_) => Ok(text),
                Err(e) => Err(format!("read after connect: {e} (read {text:?})")),
            }
        }
        other => Err(format!("{other:?}")),
    })
}

fn over_the_limit_gets_the_line(v6: bool) {
    require!(privileged());
    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let (src, dst) =
        if v6 { (pair.add_client_v6(1, 7), pair.server_v6()) } else { (pair.add_client_v4(7), pair.server_v4()) };
    let d = responding(&pair);
    let held = streams(pair.hold(src, PORT, 2, WAIT));
    let text = first_words(&pair, src, dst).expect("the third attempt connects to the responder");
    assert!(
        text.starts_with("421 4.7.0 ") && text.ends_with(" Too many connections from your IP (2), try again later\r\n"),
        "the SMTP refusal line, CRLF, then the close: {text:?}"
    );
    assert_eq!(text.matches("\r\n").count(), 1, "one line: {text:?}");
    let s = d.status_json().expect("status");
    assert_eq!(s["services"][0]["counters"]["refused_concurrency"], 1, "{s}");
    assert_eq!(s["services"][0]["action"], "respond", "{s}");
    let r = &s["responder"];
    assert_eq!((&r["steered"], &r["redirected"], &r["responded"]), (&1.into(), &1.into(), &1.into()), "{s}");
    assert_eq!((&r["reset"], &r["fallback_no_token"], &r["fallback_no_responder"]), (&0.into(), &0.into(), &0.into()));
    // Its line says the responder answered it, once the accept is seen.
    let line = format!("refused {src} default:2525 too many connections (2 established, limit 2), responded");
    d.wait_log("the refusal line", |log| log.contains(&line));
    let s = d.status_json().expect("status");
    assert_eq!(s["services"][0]["answers"], serde_json::json!({ "responded": 1 }), "{s}");
    let text = limiter_tests::cli::ok(&d, &["status"]).stdout;
    assert!(text.contains("respond: 1 answered, 0 reset, 0 failed;"), "{text}");
    assert!(text.contains("refusals answered (reported since start): default 1 responded"), "{text}");
    // The responder's connection is not one of the source's: closing one
    // held connection lets exactly one in.
    drop(held);
    d.wait_connections(0, WAIT);
    let again = pair.hold(src, PORT, 2, WAIT);
    assert_eq!(again.len(), 2);
}

#[test]
fn over_the_limit_gets_the_smtp_line_v4() {
    over_the_limit_gets_the_line(false);
}

#[test]
fn over_the_limit_gets_the_smtp_line_v6() {
    over_the_limit_gets_the_line(true);
}

#[test]
fn with_the_daemon_killed_over_the_limit_is_reset() {
    require!(privileged());
    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let src = pair.add_client_v4(8);
    let dst = pair.server_v4();
    let mut d = responding(&pair);
    let _held = streams(pair.hold(src, PORT, 2, WAIT));
    assert!(first_words(&pair, src, dst).is_ok_and(|t| t.starts_with("421 ")), "answered while the daemon runs");
    d.kill();
    let after = first_words(&pair, src, dst);
    assert!(
        after.as_ref().is_err_and(|e| e.starts_with("Refused")),
        "with no responder the attempt is reset, not let through: {after:?}"
    );
}

/// A throwaway self-signed certificate for `mx.test` and its key (PEM) in `dir`.
fn certificate(dir: &Scratch) -> (String, String) {
    let (cert, key) = (dir.0.join("mx.pem"), dir.0.join("mx.key"));
    let (cert, key) = (path_str(&cert).to_owned(), path_str(&key).to_owned());
    sh(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=mx.test",
        "-addext",
        "subjectAltName=DNS:mx.test",
        "-keyout",
        &key,
        "-out",
        &cert,
    ]);
    (cert, key)
}

/// The first bytes an IMAPS client from `src` reads after its TLS handshake
/// with `dst:port`, trusting `ca`: Python's `ssl`, as mail clients do it.
fn tls_first_words(pair: &Pair, src: IpAddr, dst: IpAddr, port: u16, ca: &str) -> String {
    let script = format!(
        "import socket, ssl\n\
         s = socket.create_connection(('{dst}', {port}), timeout=5, source_address=('{src}', 0))\n\
         c = ssl.create_default_context(cafile='{ca}')\n\
         t = c.wrap_socket(s, server_hostname='mx.test')\n\
         data = b''\n\
         while True:\n\
         \x20   b = t.recv(1024)\n\
         \x20   if not b: break\n\
         \x20   data += b\n\
         print(repr(data.decode()))\n"
    );
    pair.client.exec(&["python3", "-c", &script]).trim().to_owned()
}

/// `limiter run` with IMAPS on 993 (two per source, respond), with the
/// certificate and key if given.
fn imaps(pair: &Pair, dir: &Scratch, tls: Option<(&str, &str)>) -> Daemon {
    let config = imaps_config(pair, dir, 993, tls, "");
    Daemon::start(&pair.server, &["--config", path_str(&config)])
}

/// The config of one `respond` service `name` on `port` (two per source),
/// with `tail` after it (more of the service's keys, or tables), written in `dir`.
fn respond_config(pair: &Pair, dir: &Scratch, name: &str, port: u16, tail: &str) -> std::path::PathBuf {
    dir.write(
        "limiter.toml",
        &format!(
            "interfaces = [\"{}\"]\n\n[[service]]\nname = \"{name}\"\nports = [{port}]\nmax_conn_per_source = 2\n\
             action = \"respond\"\n{tail}",
            pair.server_if
        ),
    )
}

/// The config of an IMAPS service on `port` (two per source, respond), with
/// the certificate and key if given and `extra` lines, written in `dir`.
fn imaps_config(pair: &Pair, dir: &Scratch, port: u16, tls: Option<(&str, &str)>, extra: &str) -> std::path::PathBuf {
    let tls = tls.map_or_else(String::new, |(cert, key)| format!("tls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"));
    respond_config(pair, dir, "imaps", port, &format!("{tls}{extra}"))
}

#[test]
fn imaps_over_the_limit_reads_the_bye_inside_tls() {
    require!(privileged());
    let pair = Pair::new();
    let _server = pair.listen(993);
    let src = pair.add_client_v4(9);
    let dst = pair.server_v4();
    let dir = Scratch::new();
    let (cert, key) = certificate(&dir);
    let _d = imaps(&pair, &dir, Some((&cert, &key)));
    let _held = streams(pair.hold(src, 993, 2, WAIT));
    let got = tls_first_words(&pair, src, dst, 993, &cert);
    assert_eq!(got, "'* BYE [UNAVAILABLE] Too many connections from your IP (2)\\r\\n'", "inside TLS");
}

/// IMAPS on a port that is not a well-known one: listed in
/// `implicit_tls_ports`, the client over the limit reads the BYE inside
/// TLS; reloaded without the setting, the same port gets the plain line.
#[test]
fn implicit_tls_ports_put_a_non_standard_port_inside_tls() {
    const ALT: u16 = 10_993;
    require!(privileged());
    let pair = Pair::new();
    let _server = pair.listen(ALT);
    let src = pair.add_client_v4(14);
    let dst = pair.server_v4();
    let dir = Scratch::new();
    let (cert, key) = certificate(&dir);
    let tls = Some((cert.as_str(), key.as_str()));
    let config = imaps_config(&pair, &dir, ALT, tls, &format!("implicit_tls_ports = [{ALT}]\n"));
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    let _held = streams(pair.hold(src, ALT, 2, WAIT));
    let got = tls_first_words(&pair, src, dst, ALT, &cert);
    assert_eq!(got, "'* BYE [UNAVAILABLE] Too many connections from your IP (2)\\r\\n'", "inside TLS");

    imaps_config(&pair, &dir, ALT, tls, "");
    limiter_tests::cli::ok(&d, &["reload"]);
    let got = first_words_on(&pair, src, dst, ALT).expect("answered in the clear");
    assert_eq!(got, "* BYE [UNAVAILABLE] Too many connections from your IP (2)\r\n", "without the setting");
    let s = d.status_json().expect("status");
    assert_eq!(s["responder"]["responded"], 2, "{s}");
}

#[test]
fn imaps_without_a_certificate_is_reset() {
    require!(privileged());
    let pair = Pair::new();
    let _server = pair.listen(993);
    let src = pair.add_client_v4(10);
    let dst = pair.server_v4();
    let dir = Scratch::new();
    let d = imaps(&pair, &dir, None);
    let _held = streams(pair.hold(src, 993, 2, WAIT));
    let got = first_words_on(&pair, src, dst, 993);
    assert!(
        got.as_ref().is_err_and(|e| e.contains("reset") || e.starts_with("Refused")),
        "no text in the clear where the client expects TLS, a reset: {got:?}"
    );
    let s = d.status_json().expect("status");
    assert_eq!(s["responder"]["responded"], 0, "{s}");
}

/// A flood of over-limit SYNs from one address (forged here: it never
/// completes a handshake) is held to that source's share of the steering:
/// the socket lookup resets all but its burst and gives the tokens back, so
/// a real client over its limit, refused during the flood, still gets its
/// line.
#[test]
fn a_flood_from_one_address_is_held_to_its_share() {
    require!(privileged());
    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let d = responding_with(&pair, short_bursts());
    let src = pair.add_client_v4(11);
    let _held = streams(pair.hold(src, PORT, 2, WAIT));
    let forged: IpAddr = "198.19.77.7".parse().expect("addr");
    let started = Instant::now();
    // The flood runs (bounded: at most 100 rounds of 2,000) while the client
    // tries four times, within its own share (a burst of 4).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (answered, rounds) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            let mut rounds = 0u64;
            while rounds < 100 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                pair.forge_syns(forged, PORT, 2_000);
                rounds += 1;
            }
            rounds
        });
        std::thread::sleep(Duration::from_millis(50));
        let mut lines = Vec::new();
        for _ in 0..4 {
            lines.push((first_words(&pair, src, pair.server_v4()), flood.is_finished()));
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (lines, flood.join().expect("flood"))
    });
    assert!(answered.iter().all(|(_, over)| !over), "each attempt was made during the flood: {answered:?}");
    let answered: Vec<Result<String, String>> = answered.into_iter().map(|(a, _)| a).collect();
    let secs = started.elapsed().as_secs() + 1;
    for got in &answered {
        assert!(got.as_ref().is_ok_and(|t| t.starts_with("421 4.7.0 ")), "answered during the flood: {answered:?}");
    }
    let s = d.status_json().expect("status");
    let r = &s["responder"];
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k}: {s}"));
    let refused = s["services"][0]["counters"]["refused_concurrency"].as_u64().expect("refused");
    let accepted = s["services"][0]["counters"]["accepted"].as_u64().expect("accepted");
    // Every SYN has its verdict: the flood's (each round reuses its ports, so
    // its first two in flight are retransmissions of accepted ones), the
    // client's two held connections and its four attempts.
    assert_eq!(refused + accepted, rounds * 2_000 + 2 + 4, "{s}");
    assert!(refused >= rounds * 1_990, "nearly all over the limit: {s}");
    assert_eq!(n("steered") + n("fallback_no_token"), refused, "each refusal steered or reset in XDP: {s}");
    // The forged source's share: a burst of 4, then 2 a second.
    let client = u64::try_from(answered.len()).expect("small");
    assert!(n("redirected") <= client + 4 + 2 * secs, "the forged source held to its share: {s}");
    assert!(n("fallback_over_share") >= refused - client - 4 - 2 * secs - n("fallback_no_token"), "{s}");
    assert_eq!(n("responded"), client, "only the real client completes handshakes: {s}");
    // The forged source's lines: its first steered SYN never completed
    // the handshake; the summary counts the resets past its share.
    let log = d.wait_log("the forged source's summary", |log| {
        log.lines().any(|l| l.contains("unverified 198.19.77.7 ") && l.contains(" fallback reset"))
    });
    assert!(!log.contains("refused 198.19.77.7 "), "a forged source is never verified:\n{log}");
    eprintln!(
        "one-source flood: {refused} refused, {} over its share, {} out of tokens, {client} answered",
        n("fallback_over_share"),
        n("fallback_no_token")
    );
}

/// A flood of over-limit SYNs from many forged addresses: each within its
/// share, together past the steering tokens. The kernel steers at most its
/// token budget and resets the rest.
#[test]
fn a_flood_from_many_addresses_is_bounded_by_the_steering_budget() {
    require!(privileged());
    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let d = responding_with(&pair, short_bursts());
    let forged: Vec<IpAddr> = (0..300u16)
        .map(|i| IpAddr::from([198, 19, 70 + u8::from(i >= 250), u8::try_from(i % 250).expect("< 250") + 1]))
        .collect();
    let started = Instant::now();
    pair.forge_syns_from(&forged, PORT, 10);
    let tenths = u64::try_from(started.elapsed().as_millis() / 100).expect("small") + 1;
    let s = d.status_json().expect("status");
    let r = &s["responder"];
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k}: {s}"));
    let refused = s["services"][0]["counters"]["refused_concurrency"].as_u64().expect("refused");
    assert_eq!(refused, 300 * 8, "each source's first two are in flight, the rest over the limit: {s}");
    assert_eq!(n("steered") + n("fallback_no_token"), refused, "each refusal steered or reset in XDP: {s}");
    assert!(n("fallback_no_token") > 0, "the tokens ran out: {s}");
    let cpus = u64::try_from(std::thread::available_parallelism().map_or(2, std::num::NonZero::get)).expect("cpus");
    // The tokens per CPU per refill (100 ms; 100 at the default rate of
    // 1,000 a second), and each one an over-share refusal gives back may be
    // spent again.
    let tokens = limiter_common::steer::TOKENS_PER_REFILL;
    assert!(n("steered") - n("fallback_over_share") <= tokens * cpus * (tenths + 1), "within the budget: {s}");
    assert_eq!(n("responded"), 0, "a forged source completes no handshake: {s}");
    // Their lines say what answered them: steered SYNs whose handshake
    // never completed (the event budget, 64 per CPU per 100 ms like the
    // tokens, is spent on those first); none is verified.
    let log = d.wait_log("lines of steered forged SYNs", |log| {
        log.lines().any(|l| l.contains("unverified 198.19.") && l.ends_with(", no handshake"))
    });
    assert!(!log.contains("refused 198.19."), "a forged source is never verified:\n{log}");
    eprintln!(
        "many-source flood in {tenths} tenths: {refused} refused, {} steered, {} out of tokens, {} over share",
        n("steered"),
        n("fallback_no_token"),
        n("fallback_over_share")
    );
}

/// The config of SMTP on [`PORT`] (two per source, respond) with the
/// `[responder]` table `responder`, written in `dir`.
fn with_budgets(pair: &Pair, dir: &Scratch, responder: &str) -> std::path::PathBuf {
    respond_config(pair, dir, "smtp", PORT, &format!("\n[responder]\n{responder}"))
}

/// The responder's budgets are the config's `[responder]`, and a reload
/// changes them for the next connection, keeping what each source spent:
/// at one answer a second in all, another source's attempt 150 ms after an
/// answer (a steering token is back by then, and that source is within its
/// own share of them) is reset by the responder; reloaded to 100 a second
/// per source, the first source is answered again.
#[test]
fn the_responders_budgets_come_from_the_config_and_change_on_reload() {
    require!(privileged());
    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let (src, other) = (pair.add_client_v4(13), pair.add_client_v4(14));
    let dst = pair.server_v4();
    let dir = Scratch::new();
    let config = with_budgets(&pair, &dir, "rate = 1\nburst = 1\nper_source_rate = 1\nper_source_burst = 1\n");
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    let _held = streams(pair.hold(src, PORT, 2, WAIT));
    let _held_other = streams(pair.hold(other, PORT, 2, WAIT));
    let first = first_words(&pair, src, dst);
    assert!(first.as_ref().is_ok_and(|t| t.starts_with("421 ")), "the budget's one answer: {first:?}");
    std::thread::sleep(Duration::from_millis(150));
    let second = first_words(&pair, other, dst);
    assert!(second.is_err(), "over the responder's budget: reset, {second:?}");
    let s = d.status_json().expect("status");
    let r = &s["responder"];
    assert_eq!(
        (&r["responded"], &r["reset"], &r["fallback_no_token"], &r["fallback_over_share"]),
        (&1.into(), &1.into(), &0.into(), &0.into()),
        "{s}"
    );

    with_budgets(&pair, &dir, "per_source_rate = 100\nper_source_burst = 100\n");
    limiter_tests::cli::ok(&d, &["reload"]);
    // The spent buckets are kept and refill at the new rates: 20 answers in 200 ms.
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..3 {
        let text = first_words(&pair, src, dst);
        assert!(text.as_ref().is_ok_and(|t| t.starts_with("421 ")), "attempt {i} after the reload: {text:?}");
    }
    let s = d.status_json().expect("status");
    assert_eq!((&s["responder"]["responded"], &s["responder"]["reset"]), (&4.into(), &1.into()), "{s}");
    let log = d.log_text();
    assert!(log.contains("responder: 1 answers/s (burst 1) in all, 1/s (burst 1) per source"), "{log}");
    assert!(log.contains("responder: 1000 answers/s (burst 2000) in all, 100/s (burst 100) per source"), "{log}");
}

/// The kernel's steering tokens follow `[responder] rate`: at 10 a second,
/// one per CPU per 100 ms, so a burst of over-limit SYNs is steered a
/// handful of times and reset otherwise; reloaded to 1,000 a second, 100 per
/// CPU per 100 ms, and the same burst is steered at least 100 times.
#[test]
fn the_kernels_steering_tokens_follow_the_responders_rate() {
    require!(privileged());
    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let dir = Scratch::new();
    let config = with_budgets(&pair, &dir, "rate = 10\n");
    let d = Daemon::start(&pair.server, &["--config", path_str(&config)]);
    let forged: IpAddr = "198.19.77.8".parse().expect("addr");
    let steered = || {
        let s = d.status_json().expect("status");
        (s["responder"]["steered"].as_u64().expect("steered"), s["responder"]["fallback_no_token"].as_u64().expect("n"))
    };
    let cpus = u64::try_from(std::thread::available_parallelism().map_or(2, std::num::NonZero::get)).expect("cpus");
    let started = std::time::Instant::now();
    pair.forge_syns(forged, PORT, 1_000);
    let (slow, reset) = steered();
    let refills = u64::try_from(started.elapsed().as_millis() / 100).expect("ms") + 2;
    eprintln!("rate 10: {slow} steered, {reset} reset for want of a token, over {refills} refills");
    assert!(slow <= cpus * refills, "one token per CPU per refill: {slow} steered over {refills} refills");
    assert!(reset >= 900, "the rest reset: {reset}");

    with_budgets(&pair, &dir, "rate = 1000\n");
    limiter_tests::cli::ok(&d, &["reload"]);
    std::thread::sleep(Duration::from_millis(250));
    pair.forge_syns(forged, PORT, 1_000);
    let (fast, _) = steered();
    eprintln!("rate 1000: {} steered", fast - slow);
    assert!(fast - slow >= 100, "a CPU's 100 tokens at least: {} steered", fast - slow);
}

/// A source the responder answered completed a handshake with this host,
/// so its refusal lines are verified (`refused`, which fail2ban reads), even
/// one that never held a connection: here a deny-listed client.
#[test]
fn an_answered_source_gets_verified_lines() {
    require!(privileged());
    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let src = pair.add_client_v4(12);
    let dst = pair.server_v4();
    // Short bursts: each attempt below starts its own line.
    let spawn = Spawn { env: vec![("LIMITER_EVENT_WINDOW_MS".to_owned(), "100".to_owned())], ..Spawn::default() };
    let args = ["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "2", "--action", "respond"];
    let d = Daemon::start_with(&pair.server, &[&args[..], &["--protocol", "smtp"]].concat(), spawn);
    limiter_tests::cli::ok(&d, &["deny", "add", &src.to_string()]);
    let first = first_words(&pair, src, dst).expect("answered");
    assert!(first.starts_with("421 4.7.0 ") && first.contains("temporarily refused"), "{first:?}");
    std::thread::sleep(Duration::from_millis(400));
    let _ = first_words(&pair, src, dst).expect("answered again");
    // The first line is verified too: it waits for the responder's accept
    // (the handshake) instead of racing it.
    let log = d.wait_log("two lines for the answered source", |log| {
        log.lines().filter(|l| l.contains(&format!(" {src} default:2525 on the deny list"))).count() >= 2
    });
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&format!(" {src} default:2525 "))).collect();
    for l in &lines {
        assert!(
            l.contains(&format!("refused {src} default:2525 on the deny list (")) && l.ends_with("), responded"),
            "every line verified and answered: {lines:?}"
        );
    }
}
