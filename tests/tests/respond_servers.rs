//! The respond action's acceptance with real servers behind the limiter:
//! Postfix (SMTP), Dovecot (IMAP, POP3) and vsftpd (FTP) in the server
//! namespace, Python's own mail and FTP clients in the client namespace. A
//! client holding its 2 connections gets the protocol's refusal line on its
//! third attempt, the server never sees that attempt, and with the daemon
//! killed the third attempt is reset and the server still sees only 2.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use limiter_tests::{
    dovecot::{self, Dovecot, Login, Ports},
    ftp::{self, Vsftpd},
    netns::{Daemon, Pair},
    postfix::{self, Postfix},
    privileged,
    pyclient::{self, Client, Held, Proto, Reply},
    require,
    tls::{self, Certs},
};

const LOG_WAIT: Duration = Duration::from_secs(20);

/// `limiter run` protecting `port` as `protocol`: 2 per source, respond.
fn responding(pair: &Pair, port: u16, protocol: &str) -> Daemon {
    let port = port.to_string();
    Daemon::start(
        &pair.server,
        &[
            "--iface",
            &pair.server_if,
            "--port",
            &port,
            "--max-conn-per-source",
            "2",
            "--action",
            "respond",
            "--protocol",
            protocol,
        ],
    )
}

/// Two held sessions of `client`, each greeted by the real server.
fn hold_two(pair: &Pair, client: &Client) -> Vec<Held> {
    (0..2).map(|_| client.hold(&pair.client)).collect()
}

/// The third attempt's reply: a refusal the client raised, with its line.
fn refused(pair: &Pair, client: &Client) -> Reply {
    let r = client.greet(&pair.client);
    assert!(!r.greeted(), "the third attempt must be refused, not greeted: {r:?}");
    r
}

#[test]
fn smtp_over_the_limit_gets_421_and_postfix_never_sees_it() {
    require!(privileged(), postfix::installed(), pyclient::installed());
    let pair = Pair::new();
    let src: IpAddr = pair.add_client_v4(2);
    let postfix = Postfix::start(&pair.server, 2525);
    let mut d = responding(&pair, 2525, "smtp");
    let smtp = Client::new(Proto::Smtp, SocketAddr::new(pair.server_v4(), 2525)).from(src);
    let held = hold_two(&pair, &smtp);
    let r = refused(&pair, &smtp);
    assert_eq!(r.error.as_deref(), Some("SMTPConnectError"), "{r:?}");
    assert!(
        r.line.starts_with("421 4.7.0 ") && r.line.ends_with(" Too many connections from your IP (2), try again later"),
        "{r:?}"
    );
    let connects = |log: &str| log.lines().filter(|l| l.contains(&format!(": connect from unknown[{src}]"))).count();
    let log = postfix.wait_log(2, LOG_WAIT, connects);
    assert_eq!(connects(&log), 2, "Postfix saw only the two held sessions:\n{log}");
    // With the daemon killed the third attempt is reset, not let through.
    d.kill();
    let r = smtp.greet(&pair.client);
    assert!(!r.greeted(), "{r:?}");
    assert!(r.line.contains("refused") || r.line.contains("reset"), "a reset, not a greeting: {r:?}");
    drop(held);
    assert_eq!(connects(&postfix.log()), 2, "still only two:\n{}", postfix.log());
}

#[test]
fn imap_and_pop3_over_the_limit_get_bye_and_err_and_dovecot_never_sees_them() {
    require!(privileged(), dovecot::installed(), pyclient::installed());
    let pair = Pair::new();
    let src: IpAddr = pair.add_client_v4(3);
    let dovecot =
        Dovecot::start(&pair.server, Ports { imap: Some(143), pop3: Some(110), imaps: None, pop3s: None }, None);
    let dst = pair.server_v4();
    for (port, protocol, proto, login, error, line) in [
        (143, "imap", Proto::Imap, Login::Imap, "error", "* BYE [UNAVAILABLE] Too many connections from your IP (2)"),
        (110, "pop3", Proto::Pop3, Login::Pop3, "error_proto", "-ERR [SYS/TEMP] Too many connections from your IP (2)"),
    ] {
        let d = responding(&pair, port, protocol);
        let client = Client::new(proto, SocketAddr::new(dst, port)).from(src);
        let held = hold_two(&pair, &client);
        let r = refused(&pair, &client);
        assert_eq!((r.error.as_deref(), r.line.as_str()), (Some(error), line), "{protocol}: {r:?}");
        // Dovecot logs a connection when it ends: close the held two first.
        drop(held);
        let seen = dovecot.wait_connections(login, Some(src), 2, LOG_WAIT);
        assert_eq!(seen, 2, "{protocol}: Dovecot saw only the held two:\n{}", dovecot.log());
        drop(d);
    }
}

#[test]
fn ftp_over_the_limit_gets_421_and_vsftpd_never_sees_it() {
    require!(privileged(), ftp::installed(), pyclient::installed());
    let pair = Pair::new();
    let src: IpAddr = pair.add_client_v4(4);
    let vsftpd = Vsftpd::start(&pair.server, 2121);
    let _d = responding(&pair, 2121, "ftp");
    let client = Client::new(Proto::Ftp, SocketAddr::new(pair.server_v4(), 2121)).from(src);
    let _held = hold_two(&pair, &client);
    let r = refused(&pair, &client);
    assert_eq!(
        (r.error.as_deref(), r.line.as_str()),
        (Some("error_temp"), "421 Too many connections (2) from this IP"),
        "{r:?}"
    );
    assert_eq!(vsftpd.wait_connections(Some(src), 2, LOG_WAIT), 2, "vsftpd saw only the held two:\n{}", vsftpd.log());
}

/// SMTPS (465) and POP3S (995) over the limit read their line inside TLS,
/// with the service's certificate (a throwaway CA the clients trust).
#[test]
fn smtps_and_pop3s_over_the_limit_read_their_line_inside_tls() {
    require!(privileged(), pyclient::installed(), tls::installed());
    let pair = Pair::new();
    let src: IpAddr = pair.add_client_v4(5);
    let certs = Certs::new("mx.test");
    let dst = pair.server_v4();
    for (port, name, proto, error, line) in [
        (
            465,
            "smtps",
            Proto::Smtps,
            "SMTPConnectError",
            "421 4.7.0 mx.test Too many connections from your IP (2), try again later",
        ),
        (995, "pop3s", Proto::Pop3s, "error_proto", "-ERR [SYS/TEMP] Too many connections from your IP (2)"),
    ] {
        let _server = pair.listen(port);
        let config = certs.dir().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "hostname = \"mx.test\"\ninterfaces = [\"{}\"]\n\n[[service]]\nname = \"{name}\"\nports = \
                 [{port}]\nmax_conn_per_source = 2\naction = \"respond\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                pair.server_if,
                certs.chain.display(),
                certs.key.display()
            ),
        )
        .expect("config");
        let d = Daemon::start(&pair.server, &["--config", config.to_str().expect("utf-8")]);
        // Two plain TCP connections hold the limit (the listener speaks no TLS).
        let _held = limiter_tests::netns::streams(pair.hold(src, port, 2, Duration::from_secs(5)));
        let client = Client::new(proto, SocketAddr::new(dst, port)).from(src).tls(&certs.ca, &certs.host);
        let r = refused(&pair, &client);
        assert_eq!((r.error.as_deref(), r.line.as_str()), (Some(error), line), "{name}: {r:?}");
        drop(d);
    }
}
