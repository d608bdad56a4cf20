//! Refusals the kernel steered to the responder (`action = "respond"`),
//! waiting for what became of them before their line is written: the
//! responder accepting the connection (a completed handshake, so a real
//! address) and writing the text or resetting it, or, if it never does, what
//! the socket lookup noted (`steer::fate`). The kernel's event and the
//! responder's accept race each other; whichever comes first waits here for
//! the other, matched by the flow (client address and port, local port).
//!
//! Pure: time is given by the caller, and the socket lookup's note is read
//! through a function.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use limiter_common::{events::answer, steer::fate};

use crate::{
    daemon::refusals::{Answer, Resolved},
    kernel::events::Event,
};

/// How long a steered refusal waits for the responder: a client completes
/// its handshake within a round trip, so a second is plenty; one that has
/// not by then is not going to (or had its SYN reset).
pub const WAIT: Duration = Duration::from_secs(1);

/// Refusals (and early outcomes) waiting at once; past it a steered
/// refusal is logged at once as `steered`, and early outcomes are dropped.
pub const MAX_WAITING: usize = 4_096;

/// A steered connection: the client's address (IPv4-mapped addresses as
/// IPv4) and port, and the local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub client: IpAddr,
    pub client_port: u16,
    pub local_port: u16,
}

impl Flow {
    #[must_use]
    pub fn of(e: &Event) -> Self {
        Self { client: e.addr.to_canonical(), client_port: e.client_port, local_port: e.port }
    }
}

/// What the responder did with a connection it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// It writes the service's text.
    Responding,
    /// It resets it: over its budget, or nothing right to say.
    Reset,
}

/// Steered refusals and responder outcomes waiting for each other.
#[derive(Debug, Default)]
pub struct Awaiting {
    events: HashMap<Flow, (Event, Instant)>,
    outcomes: HashMap<Flow, (Accepted, Instant)>,
}

impl Awaiting {
    /// A refusal the kernel reported: returned at once with what is known
    /// unless it was steered and has to wait for the responder.
    pub fn event(&mut self, e: Event, now: Instant) -> Option<(Event, Resolved)> {
        if e.answer != answer::STEERED {
            return Some((e, Resolved::reported(&e)));
        }
        let flow = Flow::of(&e);
        if let Some((a, _)) = self.outcomes.remove(&flow) {
            return Some((e, accepted(a)));
        }
        if self.events.len() >= MAX_WAITING {
            return Some((e, Resolved::reported(&e)));
        }
        self.events.insert(flow, (e, now));
        None
    }

    /// The responder accepted a connection: the refusal waiting for it, if
    /// its event came first.
    pub fn accepted(&mut self, flow: Flow, a: Accepted, now: Instant) -> Option<(Event, Resolved)> {
        if let Some((e, _)) = self.events.remove(&flow) {
            return Some((e, accepted(a)));
        }
        if self.outcomes.len() < MAX_WAITING {
            self.outcomes.insert(flow, (a, now));
        }
        None
    }

    /// The refusals that waited [`WAIT`] with no accept, resolved by what
    /// the socket lookup noted of their flow (`noted`: its `steer::fate`,
    /// `None` if the note is gone); early outcomes whose event never came
    /// (an event the kernel did not report) are forgotten.
    pub fn expire(&mut self, now: Instant, noted: impl Fn(&Flow) -> Option<u8>) -> Vec<(Event, Resolved)> {
        let over = |at: &Instant| now.saturating_duration_since(*at) >= WAIT;
        self.outcomes.retain(|_, (_, at)| !over(at));
        let gone: Vec<Flow> = self.events.iter().filter(|(_, (_, at))| over(at)).map(|(f, _)| *f).collect();
        let mut out = Vec::with_capacity(gone.len());
        for flow in gone {
            if let Some((e, _)) = self.events.remove(&flow) {
                let answer = match noted(&flow) {
                    Some(fate::REDIRECTED) => Answer::NoHandshake,
                    Some(fate::NO_RESPONDER | fate::OVER_SHARE) => Answer::Fallback,
                    _ => Answer::Steered,
                };
                out.push((e, Resolved { answer, handshake: false }));
            }
        }
        out
    }

    /// Refusals waiting now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.events.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

const fn accepted(a: Accepted) -> Resolved {
    let answer = match a {
        Accepted::Responding => Answer::Responded,
        Accepted::Reset => Answer::Fallback,
    };
    Resolved { answer, handshake: true }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use limiter_common::{Verdict, events::basis};

    use super::*;

    fn ev(port: u16, answer: u8) -> Event {
        Event {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7)),
            service: 1,
            port: 2525,
            verdict: Verdict::RefusedConcurrency,
            basis: basis::ESTABLISHED,
            pending: 0,
            established: 2,
            answer,
            client_port: port,
        }
    }

    #[test]
    fn refusals_not_steered_pass_at_once() {
        let mut w = Awaiting::default();
        let t0 = Instant::now();
        for a in [answer::RESET, answer::DROPPED, answer::FALLBACK, answer::UNKNOWN] {
            let (_, r) = w.event(ev(1, a), t0).expect("at once");
            assert_eq!(r, Resolved { answer: Answer::of_event(a), handshake: false });
        }
        assert!(w.is_empty());
    }

    #[test]
    fn the_event_waits_for_the_accept_and_the_accept_for_the_event() {
        let mut w = Awaiting::default();
        let t0 = Instant::now();
        let e = ev(40_000, answer::STEERED);
        assert!(w.event(e, t0).is_none(), "waits");
        // Another flow's accept does not resolve it.
        assert!(w.accepted(Flow::of(&ev(40_001, 0)), Accepted::Responding, t0).is_none());
        let (got, r) = w.accepted(Flow::of(&e), Accepted::Responding, t0).expect("resolved");
        assert_eq!((got, r), (e, Resolved { answer: Answer::Responded, handshake: true }));
        // The other order: the responder first.
        let e2 = ev(40_001, answer::STEERED);
        let (_, r) = w.event(e2, t0).expect("its accept came first");
        assert_eq!(r, Resolved { answer: Answer::Responded, handshake: true });
        // Reset by the responder's budget: a fallback, but a real handshake.
        let e3 = ev(40_002, answer::STEERED);
        assert!(w.event(e3, t0).is_none());
        let (_, r) = w.accepted(Flow::of(&e3), Accepted::Reset, t0).expect("resolved");
        assert_eq!(r, Resolved { answer: Answer::Fallback, handshake: true });
        assert!(w.is_empty());
    }

    #[test]
    fn an_ipv4_mapped_client_matches_its_event() {
        let mut w = Awaiting::default();
        let t0 = Instant::now();
        let e = ev(40_000, answer::STEERED);
        assert!(w.event(e, t0).is_none());
        let mapped =
            Flow { client: "::ffff:198.18.0.7".parse::<IpAddr>().expect("addr").to_canonical(), ..Flow::of(&e) };
        assert!(w.accepted(mapped, Accepted::Responding, t0).is_some());
    }

    #[test]
    fn unanswered_refusals_expire_with_what_the_lookup_noted() {
        let mut w = Awaiting::default();
        let t0 = Instant::now();
        let fates = [
            (40_000, Some(fate::REDIRECTED), Answer::NoHandshake),
            (40_001, Some(fate::NO_RESPONDER), Answer::Fallback),
            (40_002, Some(fate::OVER_SHARE), Answer::Fallback),
            (40_003, Some(fate::NONE), Answer::Steered),
            (40_004, None, Answer::Steered),
        ];
        for (port, _, _) in fates {
            assert!(w.event(ev(port, answer::STEERED), t0).is_none());
        }
        let noted = |f: &Flow| fates.iter().find(|(p, _, _)| *p == f.client_port).and_then(|(_, n, _)| *n);
        assert!(w.expire(t0 + WAIT / 2, noted).is_empty(), "not yet");
        let mut out = w.expire(t0 + WAIT, noted);
        out.sort_by_key(|(e, _)| e.client_port);
        let got: Vec<(u16, Resolved)> = out.into_iter().map(|(e, r)| (e.client_port, r)).collect();
        let want: Vec<(u16, Resolved)> =
            fates.iter().map(|(p, _, a)| (*p, Resolved { answer: *a, handshake: false })).collect();
        assert_eq!(got, want);
        // An early outcome whose event never came is forgotten.
        assert!(w.accepted(Flow::of(&ev(1, 0)), Accepted::Responding, t0).is_none());
        w.expire(t0 + WAIT, |_| None);
        assert!(w.event(ev(1, answer::STEERED), t0 + WAIT).is_none(), "no stale outcome matched it");
    }

    #[test]
    fn waiting_is_bounded() {
        let mut w = Awaiting::default();
        let t0 = Instant::now();
        for i in 0..u16::try_from(MAX_WAITING).expect("small") {
            assert!(w.event(ev(i, answer::STEERED), t0).is_none());
        }
        let (_, r) = w.event(ev(u16::MAX, answer::STEERED), t0).expect("full: logged at once");
        assert_eq!(r.answer, Answer::Steered);
        assert_eq!(w.len(), MAX_WAITING);
    }
}
