//! What the policy tests (`tests/tests/policy_*.rs`) share: `limiter run`
//! in a namespace with a one-service config, real TCP clients from several
//! source addresses of another namespace against an echo server, and the
//! lists and the service as `limiter` reports them. Counts are exact: every
//! test says how many attempts get in and how many are refused.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cli::Output,
    netns::{Attempt, Daemon, Pair, streams, tally},
};

pub const PORT: u16 = 2525;

/// Connect timeout: a refused attempt returns at once (RST), so only a
/// dropped SYN would take this long.
pub const WAIT: Duration = Duration::from_secs(2);

/// The contract's prompt release: a closed connection frees its slot within 1 s.
pub const RELEASE: Duration = Duration::from_secs(1);

/// Checks the contract for bad input: exit 2, exactly one line on stderr
/// that starts with `limiter: ` and names `want`, no panic.
pub fn assert_bad_input(out: &Output, what: &str, want: &str) {
    assert_eq!(out.code, Some(2), "{what}: exit code: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{what}: exactly one line on stderr: {out:?}");
    assert!(out.stderr.starts_with("limiter: "), "{what}: stderr starts with 'limiter: ': {out:?}");
    assert!(out.stderr.contains(want), "{what}: stderr does not name {want:?}: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{what}: {out:?}");
}

/// `limiter LIST list --json`.
pub fn list(d: &Daemon, which: &str) -> Value {
    let v = d.client_json(&[which, "list", "--json"]);
    assert_eq!(v["list"], which, "list names itself: {v}");
    assert!(v["entries"].is_array(), "entries array: {v}");
    v
}

/// The entries of a list, sorted by prefix (then service) so that
/// comparisons do not depend on the order the daemon prints.
pub fn entries(d: &Daemon, which: &str) -> Vec<Value> {
    let mut e = list(d, which)["entries"].as_array().cloned().unwrap_or_default();
    e.sort_by_key(|v| (v["prefix"].as_str().unwrap_or("").to_owned(), v["service"].as_str().unwrap_or("").to_owned()));
    e
}

/// All three lists, for before/after comparisons.
pub fn all_lists(d: &Daemon) -> [Value; 3] {
    [list(d, "allow"), list(d, "deny"), list(d, "reserve")]
}

/// The first service of `status --json`.
pub fn service(d: &Daemon) -> Value {
    let s = d.status_json().expect("status --json");
    s["services"][0].clone()
}

pub fn counter(d: &Daemon, name: &str) -> u64 {
    let s = service(d);
    s["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {s}"))
}

/// `sessions` of the first service: its connections in use (established or
/// in their handshake) from non-exempt sources.
pub fn sessions(d: &Daemon) -> u64 {
    let s = service(d);
    s["sessions"].as_u64().unwrap_or_else(|| panic!("no sessions in {s}"))
}

/// Waits up to `limit` for the first service's sessions to be `want`.
pub fn wait_sessions(d: &Daemon, want: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = sessions(d);
        if got == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "sessions stayed at {got}, want {want} within {limit:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// `n` simultaneous attempts from `src`: exactly `want` must connect and
/// the rest be refused at once (RST, no time-outs, no other errors).
/// Returns the connected streams, to be held open.
pub fn attempt(pair: &Pair, src: IpAddr, n: usize, want: usize, what: &str) -> Vec<TcpStream> {
    let attempts = pair.connect_parallel(src, PORT, n, WAIT);
    let t = tally(&attempts);
    assert_eq!(
        (t.connected, t.refused, t.timed_out, t.other),
        (want, n - want, 0, 0),
        "{what}: {n} attempts from {src}, want {want} connected and the rest refused: {attempts:?}"
    );
    for a in &attempts {
        if let Attempt::Refused(took) = a {
            assert!(*took < Duration::from_millis(500), "{what}: a refusal took {took:?}");
        }
    }
    streams(attempts)
}

/// Every stream is still open end to end: a line sent on it comes back
/// from the echo server.
pub fn assert_open(streams: &mut [TcpStream], what: &str) {
    for (i, s) in streams.iter_mut().enumerate() {
        let msg = format!("NOOP {i}\r\n");
        s.write_all(msg.as_bytes()).unwrap_or_else(|e| panic!("{what}: connection {i} not writable: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap_or_else(|e| panic!("{what}: connection {i} gave no echo: {e}"));
        assert_eq!(back, msg.as_bytes(), "{what}: connection {i} echo");
    }
}

/// A dual-stack echo server on `[::]:port` in the server namespace: it
/// accepts forever, keeps every connection open and sends back what it
/// reads; closes when the client does. Stops accepting on drop.
pub struct Echo {
    listener: TcpListener,
}

impl Drop for Echo {
    fn drop(&mut self) {
        // Wakes the accept thread (accept fails on a shut-down socket), so
        // no thread keeps the namespace alive after the test.
        // SAFETY: shutting down a socket we own.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

pub fn listen_echo(pair: &Pair, port: u16) -> Echo {
    let listener = pair.bind_dual_stack(port);
    let accepter = listener.try_clone().expect("clone listener");
    thread::spawn(move || {
        while let Ok((mut s, _)) = accepter.accept() {
            thread::spawn(move || {
                let mut buf = [0u8; 512];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Echo { listener }
}

/// A config with one service `smtp` on [`PORT`] protecting `iface`;
/// `service` adds lines to the service table, `rest` adds tables after it.
pub fn smtp_config(iface: &str, service: &str, rest: &str) -> String {
    format!(
        "interfaces = [\"{iface}\"]\n\n[[service]]\nname = \"smtp\"\nports = [{PORT}]\naction = \"reset\"\n{service}\n{rest}"
    )
}
