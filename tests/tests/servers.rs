//! The real servers and clients the respond action's tests stand on
//! (issue 15), proved without the limiter: in a fresh namespace pair, a
//! private Dovecot greets Python's imaplib and poplib (and IMAPS/POP3S with
//! the test CA), a private vsftpd greets ftplib, a private Postfix greets
//! smtplib, each server's log counts exactly the connections made, and
//! Python's clients report each protocol's refusal line exactly.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::Duration,
};

use limiter_tests::{
    dovecot::{self, Dovecot, Login, Ports},
    ftp::{self, Vsftpd},
    netns::Pair,
    postfix::{self, Postfix},
    privileged,
    pyclient::{self, Client, Proto, Reply},
    require,
    tls::{self, Certs},
};

/// How long a server's log may lag behind a connection's end.
const LOG_WAIT: Duration = Duration::from_secs(10);
/// How long to watch for lines that should not come.
const SETTLE: Duration = Duration::from_millis(500);
const HOST: &str = "mail.limiter-test.example";

/// The plain ports and the implicit TLS ports, as on a real mail host (the
/// namespace is private, so the well-known ports are free).
const PLAIN: Ports = Ports { imap: Some(143), pop3: Some(110), imaps: None, pop3s: None };
const ALL: Ports = Ports { imap: Some(143), pop3: Some(110), imaps: Some(993), pop3s: Some(995) };

fn greeted(reply: &Reply) -> &str {
    assert!(reply.greeted(), "not greeted: {reply:?}");
    &reply.line
}

/// `n` greetings from `client`, one after the other, each session closed
/// politely; returns the lines.
fn greet_n(pair: &Pair, client: &Client, n: usize) -> Vec<String> {
    (0..n).map(|_| greeted(&client.greet(&pair.client)).to_owned()).collect()
}

/// Asserts that `count` reaches exactly `want` and stays there.
fn exactly(what: &str, want: usize, count: impl Fn(Duration) -> usize) {
    assert_eq!(count(LOG_WAIT), want, "{what}: not {want} connections logged");
    thread::sleep(SETTLE);
    assert_eq!(count(Duration::ZERO), want, "{what}: more than {want} connections logged");
}

#[test]
fn dovecot_greets_imap_and_pop3_and_logs_each_connection() {
    require!(privileged(), dovecot::installed(), pyclient::installed());
    let pair = Pair::new();
    let src = pair.add_client_v4(2);
    let dovecot = Dovecot::start(&pair.server, PLAIN, None);
    let server = pair.server_v4();

    let imap = Client::new(Proto::Imap, SocketAddr::new(server, 143)).from(src);
    for line in greet_n(&pair, &imap, 3) {
        assert!(line.starts_with("* OK [CAPABILITY IMAP4rev1 "), "IMAP greeting {line:?}");
        assert!(line.ends_with("] Dovecot (Debian) ready."), "IMAP greeting {line:?}");
    }
    let pop3 = Client::new(Proto::Pop3, SocketAddr::new(server, 110)).from(src);
    assert_eq!(greet_n(&pair, &pop3, 3), vec!["+OK Dovecot (Debian) ready."; 3]);

    exactly("imap-login", 3, |t| dovecot.wait_connections(Login::Imap, Some(src), 3, t));
    exactly("pop3-login", 3, |t| dovecot.wait_connections(Login::Pop3, Some(src), 3, t));

    // Over IPv6 too, and counted per source.
    let src6 = pair.add_client_v6(1, 0x10);
    let imap6 = Client::new(Proto::Imap, SocketAddr::new(pair.server_v6(), 143)).from(src6);
    greet_n(&pair, &imap6, 1);
    exactly("imap-login over IPv6", 1, |t| dovecot.wait_connections(Login::Imap, Some(src6), 1, t));
    assert_eq!(dovecot.connections(Login::Imap), 4, "{}", dovecot.log());
}

#[test]
fn dovecot_logs_a_held_session_when_it_ends() {
    require!(privileged(), dovecot::installed(), pyclient::installed());
    let pair = Pair::new();
    let src = pair.add_client_v4(2);
    let dovecot = Dovecot::start(&pair.server, PLAIN, None);
    let imap = Client::new(Proto::Imap, SocketAddr::new(pair.server_v4(), 143)).from(src);

    let mut held: Vec<_> = (0..2).map(|_| imap.hold(&pair.client)).collect();
    for h in &held {
        assert!(h.reply.line.starts_with("* OK "), "{:?}", h.reply);
    }
    // Open sessions are not logged yet (see dovecot.rs); a third comes and goes.
    greet_n(&pair, &imap, 1);
    exactly("imap-login, 2 held", 1, |t| dovecot.wait_connections(Login::Imap, Some(src), 1, t));
    held.iter_mut().for_each(pyclient::Held::release);
    exactly("imap-login, all closed", 3, |t| dovecot.wait_connections(Login::Imap, Some(src), 3, t));
}

#[test]
fn dovecot_speaks_imaps_and_pop3s_with_the_test_ca() {
    require!(privileged(), dovecot::installed(), pyclient::installed(), tls::installed());
    let pair = Pair::new();
    let src = pair.add_client_v4(2);
    let certs = Certs::new(HOST);
    let dovecot = Dovecot::start(&pair.server, ALL, Some(&certs));
    let server = pair.server_v4();

    let imaps = Client::new(Proto::Imaps, SocketAddr::new(server, 993)).from(src).tls(&certs.ca, HOST);
    for line in greet_n(&pair, &imaps, 3) {
        assert!(line.starts_with("* OK [CAPABILITY IMAP4rev1 ") && line.ends_with(" ready."), "IMAPS {line:?}");
    }
    let pop3s = Client::new(Proto::Pop3s, SocketAddr::new(server, 995)).from(src).tls(&certs.ca, HOST);
    assert_eq!(greet_n(&pair, &pop3s, 1), vec!["+OK Dovecot (Debian) ready."]);

    // The certificate is really checked: without the CA, or for another
    // name, the client refuses the server.
    let untrusted = Client::new(Proto::Imaps, SocketAddr::new(server, 993)).from(src);
    let r = untrusted.greet(&pair.client);
    assert_eq!(r.error.as_deref(), Some("SSLCertVerificationError"), "{r:?}");
    let wrong_name = imaps.clone().tls(&certs.ca, "other.limiter-test.example");
    let r = wrong_name.greet(&pair.client);
    assert_eq!(r.error.as_deref(), Some("SSLCertVerificationError"), "{r:?}");
    assert!(r.line.contains("Hostname mismatch"), "{r:?}");

    // Failed handshakes are connections the server saw, too.
    exactly("imap-login over TLS", 5, |t| dovecot.wait_connections(Login::Imap, Some(src), 5, t));
    exactly("pop3-login over TLS", 1, |t| dovecot.wait_connections(Login::Pop3, Some(src), 1, t));
}

#[test]
fn vsftpd_greets_ftp_and_logs_each_connection_at_once() {
    require!(privileged(), ftp::installed(), pyclient::installed());
    let pair = Pair::new();
    let src = pair.add_client_v4(2);
    let vsftpd = Vsftpd::start(&pair.server, 21);
    let ftp = Client::new(Proto::Ftp, SocketAddr::new(pair.server_v4(), 21)).from(src);

    assert_eq!(greet_n(&pair, &ftp, 3), vec!["220 (vsFTPd 3.0.3)"; 3]);
    exactly("vsftpd CONNECT", 3, |t| vsftpd.wait_connections(Some(src), 3, t));

    // A held session is logged when it opens, not when it ends.
    let held = ftp.hold(&pair.client);
    assert_eq!(held.reply.line, "220 (vsFTPd 3.0.3)");
    exactly("vsftpd CONNECT, one held", 4, |t| vsftpd.wait_connections(Some(src), 4, t));
    drop(held);

    let src6 = pair.add_client_v6(1, 0x10);
    let ftp6 = Client::new(Proto::Ftp, SocketAddr::new(pair.server_v6(), 21)).from(src6);
    greet_n(&pair, &ftp6, 1);
    exactly("vsftpd CONNECT over IPv6", 1, |t| vsftpd.wait_connections(Some(src6), 1, t));
    assert_eq!(vsftpd.connections(), 5, "{}", vsftpd.log());
}

#[test]
fn postfix_greets_smtplib() {
    require!(privileged(), postfix::installed(), pyclient::installed());
    let pair = Pair::new();
    let src: IpAddr = pair.add_client_v4(2);
    let postfix = Postfix::start(&pair.server, 25);
    let smtp = Client::new(Proto::Smtp, SocketAddr::new(pair.server_v4(), 25)).from(src);

    assert_eq!(greet_n(&pair, &smtp, 3), vec!["220 limiter-test.example ESMTP Postfix"; 3]);
    let connects = |log: &str| log.lines().filter(|l| l.contains(&format!(": connect from unknown[{src}]"))).count();
    let log = postfix.wait_log(3, LOG_WAIT, connects);
    assert_eq!(connects(&log), 3, "{log}");
}

/// What each client reports when the server refuses at the greeting (the
/// lines issue 15's responder will send), from a bare listener that writes
/// the line and closes.
#[test]
fn pyclient_reports_each_protocols_refusal_line() {
    require!(privileged(), pyclient::installed());
    let pair = Pair::new();
    let src = pair.add_client_v4(2);
    let cases = [
        (
            Proto::Smtp,
            "SMTPConnectError",
            "421 4.7.0 mx.example.org Too many connections from your IP (8), try again later",
        ),
        (Proto::Imap, "error", "* BYE [UNAVAILABLE] Too many connections from your IP (8)"),
        (Proto::Pop3, "error_proto", "-ERR [SYS/TEMP] Too many connections from your IP (8)"),
        (Proto::Ftp, "error_temp", "421 Too many connections (8) from this IP"),
    ];
    let listener = pair.bind_dual_stack(2525);
    let port = listener.local_addr().expect("local addr").port();
    let lines: Vec<&'static str> = cases.iter().map(|c| c.2).collect();
    let server = thread::spawn(move || {
        for line in lines {
            let (mut s, _) = listener.accept().expect("accept");
            std::io::Write::write_all(&mut s, format!("{line}\r\n").as_bytes()).expect("write refusal");
        }
    });
    for (proto, error, line) in cases {
        let reply = Client::new(proto, SocketAddr::new(pair.server_v4(), port)).from(src).greet(&pair.client);
        assert_eq!(reply, Reply { error: Some(error.to_owned()), line: line.to_owned() }, "{proto:?}");
    }
    server.join().expect("refusing server");
}
