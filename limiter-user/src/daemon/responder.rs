//! The responder: the daemon's own listening socket, to which the kernel
//! steers over-limit SYNs of `action = "respond"` services (`sk_lookup` and a
//! SOCKMAP). It completes the handshake, writes the service's refusal line
//! (inside TLS on implicit-TLS ports) and closes. The mail server never sees
//! these connections.
//!
//! Bounded and fail-safe: a per-source and a total budget of answers per
//! second, a cap on connections in progress, and deadlines for the TLS
//! handshake and the write. Beyond any of them the connection is reset
//! (`SO_LINGER` 0), as the kernel resets when no responder is there.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    path::Path,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;

use crate::policy::model::ResponderLimits;

/// The responder's bounds (the policy's `[responder]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Answers per second to one source (address), and its burst.
    pub per_source: u32,
    pub per_source_burst: u32,
    /// Answers per second in total, and the burst.
    pub total: u32,
    pub total_burst: u32,
    /// Connections being answered at once.
    pub concurrent: usize,
    /// How long the TLS handshake and the write of the line may take.
    pub deadline: Duration,
}

impl From<ResponderLimits> for Limits {
    fn from(l: ResponderLimits) -> Self {
        Self {
            per_source: l.per_source_rate,
            per_source_burst: l.per_source_burst,
            total: l.rate,
            total_burst: l.burst,
            concurrent: usize::try_from(l.max_connections).unwrap_or(usize::MAX),
            deadline: l.deadline,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        ResponderLimits::default().into()
    }
}

/// Sources tracked at once by the per-source budget; past it, the oldest
/// idle buckets are dropped (a full bucket is the same as none).
const MAX_SOURCES: usize = 16_384;

/// A token bucket: `rate` tokens a second, at most `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self { tokens: f64::from(burst), at: now }
    }

    /// Refills for the time since the last call and takes a token if there is one.
    fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The answer budgets: one bucket per source and one for all.
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    total: Bucket,
    sources: HashMap<IpAddr, Bucket>,
}

impl Budget {
    #[must_use]
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self { limits, total: Bucket::full(limits.total_burst, now), sources: HashMap::new() }
    }

    /// Takes new limits (a reload): the buckets are kept, and refill at the
    /// new rates up to the new bursts from now on.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Whether `source` may get an answer now (taking a token from its
    /// bucket and the total one if so).
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let l = self.limits;
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&source) {
            self.evict(now);
        }
        let bucket = self.sources.entry(source).or_insert_with(|| Bucket::full(l.per_source_burst, now));
        let mut probe = *bucket;
        if !probe.take(l.per_source, l.per_source_burst, now) {
            *bucket = probe;
            return false;
        }
        if !self.total.take(l.total, l.total_burst, now) {
            return false;
        }
        *bucket = probe;
        true
    }

    /// Drops buckets that have refilled to full (forgetting them changes
    /// nothing), or if none has, the oldest half.
    fn evict(&mut self, now: Instant) {
        let l = self.limits;
        let full_after = Duration::from_secs_f64(f64::from(l.per_source_burst) / f64::from(l.per_source.max(1)));
        self.sources.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
        if self.sources.len() >= MAX_SOURCES {
            let mut ages: Vec<Instant> = self.sources.values().map(|b| b.at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.sources.retain(|_, b| b.at > cut);
        }
    }

    /// Sources tracked now.
    #[must_use]
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

/// What to do with one steered connection.
pub enum Reply {
    /// Write this line (CRLF included), in TLS with the acceptor if any, then close.
    Line { line: Vec<u8>, tls: Option<TlsAcceptor> },
    /// Reset it: no budget, no text for it, or TLS without certificates.
    Reset,
}

/// How one answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Responded,
    /// Reset by choice ([`Reply::Reset`]) or over a budget.
    Reset,
    /// The client did not finish the TLS handshake or read the line in time,
    /// or the connection broke.
    Failed,
}

/// Answers one connection within `deadline`.
pub async fn answer(stream: TcpStream, reply: Reply, deadline: Duration) -> Outcome {
    let (line, tls) = match reply {
        Reply::Reset => {
            reset(&stream);
            return Outcome::Reset;
        }
        Reply::Line { line, tls } => (line, tls),
    };
    let work = async move {
        match tls {
            None => {
                let mut s = stream;
                s.write_all(&line).await?;
                s.shutdown().await
            }
            Some(acceptor) => {
                let mut s = acceptor.accept(stream).await?;
                s.write_all(&line).await?;
                s.shutdown().await
            }
        }
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(Ok(())) => Outcome::Responded,
        Ok(Err(_)) | Err(_) => Outcome::Failed,
    }
}

/// Closes with a RST: `SO_LINGER` with a zero timeout, then drop.
pub fn reset(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a plain setsockopt on a descriptor the stream owns, with a
    // value of the size given.
    let _ = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            libc::socklen_t::try_from(size_of::<libc::linger>()).unwrap_or(8),
        )
    };
}

/// What the responder did, since the start (for `status` and metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Lines written (and the connection closed).
    pub responded: u64,
    /// Connections reset: over a budget, over the concurrency cap, or no
    /// text for them (the fallback the kernel also takes).
    pub reset: u64,
    /// Clients that did not finish the TLS handshake or take the line in time.
    pub failed: u64,
}

/// Accepts on `l`; never returns without one.
async fn accept(l: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// One of the connections being answered; gives its place back when dropped.
struct Slot(Rc<Cell<usize>>);

impl Slot {
    fn take(in_flight: &Rc<Cell<usize>>, cap: usize) -> Option<Self> {
        (in_flight.get() < cap).then(|| {
            in_flight.set(in_flight.get() + 1);
            Self(Rc::clone(in_flight))
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Accepts steered connections on `listeners` (at most two: one per
/// address family) until the task is dropped. `limits` gives the bounds in
/// force, read at every connection (a reload changes them). `decide` is
/// called for every connection accepted, with whether the budgets and the
/// cap allow an answer, and says what to answer the connection from `peer`
/// to `local` (the client's original destination); `None`, or a connection
/// not allowed, is reset.
pub async fn serve(
    listeners: Vec<TcpListener>,
    limits: impl Fn() -> Limits + 'static,
    decide: impl Fn(SocketAddr, SocketAddr, bool) -> Option<Reply> + 'static,
    stats: Rc<RefCell<Stats>>,
) {
    let in_flight = Rc::new(Cell::new(0usize));
    let mut budget = Budget::new(limits(), Instant::now());
    let (first, second) = {
        let mut l = listeners.into_iter();
        (l.next(), l.next())
    };
    loop {
        let accepted = tokio::select! {
            r = accept(first.as_ref()) => r,
            r = accept(second.as_ref()) => r,
        };
        let Ok((stream, peer)) = accepted else {
            // EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let limits = limits();
        budget.set_limits(limits);
        let slot = Slot::take(&in_flight, limits.concurrent);
        let allowed = slot.is_some() && budget.allow(peer.ip(), Instant::now());
        let reply = stream.local_addr().ok().and_then(|local| decide(peer, local, allowed));
        let (Some(reply), Some(slot), true) = (reply, slot, allowed) else {
            reset(&stream);
            stats.borrow_mut().reset += 1;
            continue;
        };
        let stats = Rc::clone(&stats);
        tokio::task::spawn_local(async move {
            let outcome = answer(stream, reply, limits.deadline).await;
            drop(slot);
            let mut s = stats.borrow_mut();
            match outcome {
                Outcome::Responded => s.responded += 1,
                Outcome::Reset => s.reset += 1,
                Outcome::Failed => s.failed += 1,
            }
        });
    }
}

/// Why the TLS certificate and key of a service cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate {path}: {source}")]
    Cert { path: String, source: rustls_pki_types::pem::Error },
    #[error("{path} holds no certificate")]
    NoCert { path: String },
    #[error("cannot read the private key {path}: {source}")]
    Key { path: String, source: rustls_pki_types::pem::Error },
    #[error("the certificate {cert} and the key {key} do not make a TLS server: {source}")]
    Config { cert: String, key: String, source: rustls::Error },
}

/// A TLS acceptor for the PEM certificate chain and key the mail server uses.
#[expect(
    deprecated,
    reason = "ring's provider lacks post-quantum key exchange, which one refusal line does not need; aws-lc-rs \
              would need cmake and a C toolchain at build time"
)]
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|source| TlsError::Cert { path: cert_s.clone(), source })?
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Cert { path: cert_s.clone(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert { path: cert_s });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key { path: key_s.clone(), source })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
        .map_err(|source| TlsError::Config { cert: cert_s, key: key_s, source })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn src(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, last))
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(Limits::default(), t0);
        let got = (0..10).filter(|_| b.allow(src(1), t0)).count();
        assert_eq!(got, 4, "the burst");
        assert!(!b.allow(src(1), t0 + Duration::from_millis(100)), "no token 100 ms later at 2/s");
        assert!(b.allow(src(1), t0 + Duration::from_millis(600)), "one token back after 500 ms");
        assert!(b.allow(src(2), t0), "another source has its own bucket");
    }

    #[test]
    fn the_total_budget_caps_all_sources_together() {
        let t0 = Instant::now();
        let limits = Limits { total: 10, total_burst: 5, ..Limits::default() };
        let mut b = Budget::new(limits, t0);
        let got = (0..50u8).filter(|&i| b.allow(src(i), t0)).count();
        assert_eq!(got, 5, "the total burst, whatever the number of sources");
        assert!(b.allow(src(200), t0 + Duration::from_millis(100)), "one token after 100 ms at 10/s");
    }

    #[test]
    fn a_refusal_by_the_total_does_not_spend_the_sources_token() {
        let t0 = Instant::now();
        let limits = Limits { total: 1, total_burst: 1, ..Limits::default() };
        let mut b = Budget::new(limits, t0);
        assert!(b.allow(src(1), t0));
        for _ in 0..10 {
            assert!(!b.allow(src(2), t0), "the total is spent");
        }
        assert!(b.allow(src(2), t0 + Duration::from_secs(1)), "src 2 kept its burst while the total refused it");
    }

    #[test]
    fn new_limits_keep_the_buckets() {
        let t0 = Instant::now();
        let mut b = Budget::new(Limits::default(), t0);
        assert_eq!((0..10).filter(|_| b.allow(src(1), t0)).count(), 4, "the default burst");
        let more = Limits { per_source: 100, per_source_burst: 50, ..Limits::default() };
        b.set_limits(more);
        assert!(!b.allow(src(1), t0), "the spent bucket is kept, not refilled by the change");
        let got = (0..10).filter(|_| b.allow(src(1), t0 + Duration::from_millis(50))).count();
        assert_eq!(got, 5, "then it refills at the new rate: 50 ms at 100/s");
        assert_eq!((0..60).filter(|_| b.allow(src(2), t0)).count(), 50, "a new source gets the new burst");
        b.set_limits(Limits { per_source_burst: 1, ..more });
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!((0..10).filter(|_| b.allow(src(2), t1)).count(), 1, "a lower burst caps what was saved");
    }

    #[test]
    fn the_policys_limits_are_the_responders() {
        let l = Limits::from(ResponderLimits {
            rate: 10,
            burst: 20,
            per_source_rate: 3,
            per_source_burst: 5,
            max_connections: 7,
            deadline: Duration::from_millis(300),
        });
        assert_eq!(
            l,
            Limits {
                per_source: 3,
                per_source_burst: 5,
                total: 10,
                total_burst: 20,
                concurrent: 7,
                deadline: Duration::from_millis(300)
            }
        );
        let d = Limits::default();
        assert_eq!((d.per_source, d.per_source_burst, d.total, d.total_burst), (2, 4, 1_000, 2_000));
        assert_eq!((d.concurrent, d.deadline), (256, Duration::from_secs(2)));
    }

    #[test]
    fn connections_in_progress_are_capped_and_give_their_place_back() {
        let in_flight = Rc::new(Cell::new(0));
        let a = Slot::take(&in_flight, 2).expect("first");
        let b = Slot::take(&in_flight, 2).expect("second");
        assert!(Slot::take(&in_flight, 2).is_none(), "the cap");
        drop(a);
        assert!(Slot::take(&in_flight, 2).is_some(), "a place came back");
        drop(b);
        assert_eq!(in_flight.get(), 0);
    }

    #[test]
    fn the_source_table_is_bounded() {
        let t0 = Instant::now();
        let mut b = Budget::new(Limits { total: 1_000_000, total_burst: 1_000_000, ..Limits::default() }, t0);
        for i in 0..u32::try_from(MAX_SOURCES + 1_000).expect("small") {
            let a = IpAddr::V4(Ipv4Addr::from(0xc612_0000 | i));
            b.allow(a, t0 + Duration::from_micros(u64::from(i)));
        }
        assert!(b.sources() <= MAX_SOURCES, "{} sources tracked", b.sources());
    }
}
