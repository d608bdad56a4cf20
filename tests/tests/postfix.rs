//! A real Postfix behind `limiter run --max-conn-per-source 8 --action reset`,
//! driven by real SMTP sessions from another namespace: eight sessions from
//! one source deliver mail while held open, a ninth is refused before Postfix
//! sees it (its log has no "connect from" for it), and closing one lets the
//! next in.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    netns::{Attempt, Daemon, Pair},
    postfix::{self, Postfix, Smtp},
    privileged, require,
};

const PORT: u16 = 2525;
const WAIT: Duration = Duration::from_secs(2);
/// How long Postfix's log may lag behind what smtpd did.
const LOG_WAIT: Duration = Duration::from_secs(5);

/// smtpd's "connect from unknown[SRC]" lines (not "disconnect from").
fn connects(log: &str, src: IpAddr) -> usize {
    let tail = format!(": connect from unknown[{src}]");
    log.lines().filter(|l| l.contains(&tail)).count()
}

fn disconnects(log: &str, src: IpAddr) -> usize {
    let tail = format!(": disconnect from unknown[{src}]");
    log.lines().filter(|l| l.contains(&tail)).count()
}

/// The discard transport's "ID: to=<...> ... status=sent" line for `id`.
fn delivered(log: &str, id: &str) -> bool {
    let head = format!(": {id}: to=<");
    log.lines().any(|l| l.contains("postfix/discard[") && l.contains(&head) && l.contains("status=sent"))
}

/// `n` simultaneous connections from `src`, each greeted with 220, then a
/// full mail dialogue on every one at once when `mail` is set. The
/// sessions stay open; the queue ids are in session order.
fn open_sessions(pair: &Pair, src: IpAddr, n: usize, mail: bool) -> (Vec<Smtp>, Vec<String>) {
    let threads: Vec<_> = pair
        .connect_parallel(src, PORT, n, WAIT)
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let Attempt::Connected(stream) = a else { panic!("session {i} from {src}: {a:?}") };
            thread::spawn(move || {
                let mut s = Smtp::greet(stream);
                let id = mail.then(|| {
                    let id = s.send_mail(&format!("s{i}"));
                    // The session goes on: it is held, not finished.
                    s.cmd("RSET", 250);
                    id
                });
                (s, id)
            })
        })
        .collect();
    let (sessions, ids): (Vec<Smtp>, Vec<Option<String>>) =
        threads.into_iter().map(|t| t.join().expect("session thread")).unzip();
    (sessions, ids.into_iter().flatten().collect())
}

fn eight_sessions_ninth_refused_before_postfix(test: &str, v6: bool) {
    let started = Instant::now();
    let pair = Pair::new();
    let src = if v6 { pair.add_client_v6(1, 0x10) } else { pair.add_client_v4(2) };
    let postfix = Postfix::start(&pair.server, PORT);

    // Control: without the limiter, Postfix takes a ninth concurrent session
    // from this source (its own count limit is off).
    let (control, _) = open_sessions(&pair, src, 9, false);
    assert_eq!(control.len(), 9);
    control.into_iter().for_each(Smtp::quit);
    let log = postfix.wait_log(9, LOG_WAIT, |l| disconnects(l, src));
    assert_eq!((connects(&log, src), disconnects(&log, src)), (9, 9), "control run: {log}");
    let before = 9;

    let d = Daemon::start(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "8", "--action", "reset"],
    );
    d.wait_connections(0, WAIT);

    // Eight concurrent sessions each deliver a message and stay open.
    let (mut sessions, mut ids) = open_sessions(&pair, src, 8, true);
    assert_eq!(ids.len(), 8);
    d.wait_connections(8, WAIT);
    let log = postfix.wait_log(8, LOG_WAIT, |l| ids.iter().filter(|id| delivered(l, id)).count());
    for id in &ids {
        assert!(delivered(&log, id), "{id} not delivered: {log}");
    }

    // The ninth: an RST from XDP at once, and Postfix never hears of it.
    let ninth = pair.connect_many(src, PORT, 1, WAIT);
    assert!(matches!(ninth[..], [Attempt::Refused(t)] if t < Duration::from_millis(500)), "ninth: {ninth:?}");
    let s = d.status_json().expect("status");
    assert_eq!(s["services"][0]["counters"]["refused_concurrency"], 1, "{s}");
    assert_eq!(s["services"][0]["connections"], 8, "{s}");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(connects(&postfix.log(), src), before + 8, "Postfix saw the ninth: {}", postfix.log());

    // Closing one session frees its slot, and a new session delivers.
    sessions.pop().expect("a session").quit();
    let took = d.wait_connections(7, WAIT);
    eprintln!("QUIT released the slot in {took:?}");
    let again = pair.connect_many(src, PORT, 1, WAIT);
    let [Attempt::Connected(stream)] = <[Attempt; 1]>::try_from(again).expect("one attempt") else {
        panic!("after a QUIT the next session must get in")
    };
    let mut next = Smtp::greet(stream);
    ids.push(next.send_mail("s8"));
    sessions.push(next);
    d.wait_connections(8, WAIT);

    // Postfix saw exactly the nine sessions the limiter let in.
    let log = postfix.wait_log(9, LOG_WAIT, |l| ids.iter().filter(|id| delivered(l, id)).count());
    assert_eq!(connects(&log, src), before + 9, "{log}");
    for id in &ids {
        assert!(delivered(&log, id), "{id} not delivered: {log}");
    }

    sessions.into_iter().for_each(Smtp::quit);
    d.wait_connections(0, WAIT);
    let s = d.status_json().expect("status");
    let c = &s["services"][0]["counters"];
    assert_eq!((c["accepted"].as_u64(), c["refused_concurrency"].as_u64()), (Some(9), Some(1)), "{s}");
    eprintln!("{test}: {:?}", started.elapsed());
}

#[test]
fn postfix_eight_sessions_ninth_refused_ipv4() {
    require!(privileged(), postfix::installed());
    eight_sessions_ninth_refused_before_postfix(limiter_tests::test_name!(), false);
}

#[test]
fn postfix_eight_sessions_ninth_refused_ipv6() {
    require!(privileged(), postfix::installed());
    eight_sessions_ninth_refused_before_postfix(limiter_tests::test_name!(), true);
}
