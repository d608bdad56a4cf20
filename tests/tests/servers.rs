//! The real servers and clients the respond action's tests stand on
//! (issue 15), proved without the limiter: in a fresh namespace pair, a
//! private Postfix greets smtplib and logs each connection, and Python's
//! clients report each protocol's refusal line exactly.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::Duration,
};

use limiter_tests::{
    netns::Pair,
    postfix::{self, Postfix},
    privileged,
    pyclient::{self, Client, Proto, Reply},
    require,
};

/// How long a server's log may lag behind a connection's end.
const LOG_WAIT: Duration = Duration::from_secs(10);

fn greeted(reply: &Reply) -> &str {
    assert!(reply.greeted(), "not greeted: {reply:?}");
    &reply.line
}

/// `n` greetings from `client`, one after the other, each session closed
/// politely; returns the lines.
fn greet_n(pair: &Pair, client: &Client, n: usize) -> Vec<String> {
    (0..n).map(|_| greeted(&client.greet(&pair.client)).to_owned()).collect()
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
