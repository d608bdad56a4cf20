//! The abusive source: threads that each hold a silent connection as long as the server lets them, and connect
//! again when it does not, with totals of what they got.

use std::{
    io::{ErrorKind, Read as _},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use limiter_tests::netns::{self, Attempt, Pair};
use serde_json::{Value, json};

use crate::{ABUSER_RETRY, ABUSER_SLOTS, PORT};

#[derive(Default)]
struct AbuserStats {
    attempts: AtomicU64,
    connected: AtomicU64,
    refused: AtomicU64,
    /// Connected, and the first thing read was a `421` line, then the close: refused with a reason (by the
    /// limiter's responder, under `respond`). Not counted as held.
    answered: AtomicU64,
    timed_out: AtomicU64,
    held: AtomicU64,
    max_held: AtomicU64,
}

/// One abusive source: `ABUSER_SLOTS` threads, each connecting and holding the connection without a word (the way
/// a spam bot or a broken client ties up the server's processes) until the server closes it or the phase ends, then
/// connecting again.
pub(crate) struct Abuser {
    stop: Arc<AtomicBool>,
    stats: Arc<AbuserStats>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Abuser {
    pub(crate) fn start(pair: &Pair, src: IpAddr) -> Self {
        let (stop, stats) = (Arc::new(AtomicBool::new(false)), Arc::new(AbuserStats::default()));
        let dst = SocketAddr::new(pair.server_v4(), PORT);
        let threads = (0..ABUSER_SLOTS)
            .map(|_| {
                let (stop, stats, path) = (Arc::clone(&stop), Arc::clone(&stats), pair.client.path());
                thread::spawn(move || {
                    netns::enter(&path);
                    while !stop.load(Ordering::Relaxed) {
                        stats.attempts.fetch_add(1, Ordering::Relaxed);
                        match netns::connect(src, dst, Duration::from_secs(1)) {
                            Attempt::Connected(mut s) => {
                                stats.connected.fetch_add(1, Ordering::Relaxed);
                                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                                let mut buf = [0u8; 512];
                                // A refusal line comes at once (and the responder's reset over its budget): such
                                // a connection was never held. Wait a little, as after a reset: an MTA defers after
                                // a 421.
                                let closed = match s.read(&mut buf) {
                                    Ok(n) if buf[..n].starts_with(b"421") => Some(&stats.answered),
                                    Ok(0) => Some(&stats.refused),
                                    Ok(_) => None,
                                    Err(e) => (!matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
                                        .then_some(&stats.refused),
                                };
                                if let Some(counter) = closed {
                                    counter.fetch_add(1, Ordering::Relaxed);
                                    thread::sleep(ABUSER_RETRY);
                                    continue;
                                }
                                let held = stats.held.fetch_add(1, Ordering::Relaxed) + 1;
                                stats.max_held.fetch_max(held, Ordering::Relaxed);
                                while !stop.load(Ordering::Relaxed) {
                                    match s.read(&mut buf) {
                                        Ok(0) => break,
                                        Ok(_) => {}
                                        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock) => {}
                                        Err(_) => break,
                                    }
                                }
                                stats.held.fetch_sub(1, Ordering::Relaxed);
                            }
                            // Refused, or failed in another way (counted alike): wait a little, like a client that
                            // got "connection refused".
                            Attempt::Refused(_) | Attempt::Other(_) => {
                                stats.refused.fetch_add(1, Ordering::Relaxed);
                                thread::sleep(ABUSER_RETRY);
                            }
                            Attempt::TimedOut => {
                                stats.timed_out.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Self { stop, stats, threads }
    }

    /// Closes every connection and returns the totals.
    pub(crate) fn stop(self) -> Value {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("abuser thread");
        }
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        json!({
            "attempts": n(&s.attempts), "connected": n(&s.connected), "refused": n(&s.refused), "answered": n(&s.answered),
            "timed_out": n(&s.timed_out), "max_held": n(&s.max_held),
        })
    }
}
