//! Refusal events: what XDP tells the daemon about each refused SYN, through
//! the `EVENTS` ring buffer, within a per-CPU budget the daemon refills.
//!
//! A flood must not turn into a flood of events: XDP spends one token of
//! `EVENT_BUDGET[TOKENS]` (per CPU) per event and, with none left, counts
//! the refusal in `EVENT_BUDGET[UNREPORTED]` instead. The daemon sets the
//! tokens back to [`TOKENS_PER_REFILL`] every [`REFILL_MS`], so at most
//! `TOKENS_PER_REFILL * 1000 / REFILL_MS` events per second and CPU reach the
//! ring; with no daemon running the tokens run out and XDP stops writing.

/// Bytes of the `EVENTS` ring buffer (a power of two, a multiple of the page
/// size): 8,192 events of 32 bytes with their headers.
pub const RING_BYTES: u32 = 256 * 1024;

/// Index of the tokens left in `EVENT_BUDGET`.
pub const TOKENS: u32 = 0;
/// Index of the refusals not reported for want of a token or of ring space.
pub const UNREPORTED: u32 = 1;
/// Entries of `EVENT_BUDGET`.
pub const BUDGET_ENTRIES: u32 = 2;

/// Tokens per CPU after each refill.
pub const TOKENS_PER_REFILL: u64 = 64;
/// How often the daemon refills the tokens.
pub const REFILL_MS: u64 = 100;

/// What a refusal of the source's connections was based on
/// ([`Refusal::basis`]): the daemon writes a line the fail2ban filter
/// matches only for [`ESTABLISHED`](basis::ESTABLISHED), a source whose
/// address completed handshakes with this host.
pub mod basis {
    /// Not a connection-limit refusal, or not known.
    pub const NONE: u8 = 0;
    /// The source's established connections alone were at its limit:
    /// connections that completed a handshake, which a forged source
    /// address cannot do.
    pub const ESTABLISHED: u8 = 1;
    /// Established connections plus handshakes in flight were at the limit,
    /// established alone below it: the handshakes may be forged SYNs.
    pub const IN_FLIGHT: u8 = 2;
    /// As [`ESTABLISHED`], of the source's connections over all services
    /// (the source-wide budget).
    pub const ALL_ESTABLISHED: u8 = 3;
    /// As [`IN_FLIGHT`], over all services.
    pub const ALL_IN_FLIGHT: u8 = 4;
}

/// What answered a refused SYN ([`Refusal::answer`]), as the refusal
/// lines, `status` and the metrics name it.
pub mod answer {
    /// Not known (a program older than the field).
    pub const UNKNOWN: u8 = 0;
    /// A TCP RST from XDP (`action = "reset"`).
    pub const RESET: u8 = 1;
    /// Dropped in XDP (`action = "drop"`, or a reset that could not be built).
    pub const DROPPED: u8 = 2;
    /// Steered to the daemon's responder (`action = "respond"`); the
    /// responder's own outcome tells what the client got.
    pub const STEERED: u8 = 3;
    /// `action = "respond"`, reset in XDP instead: no steering token left,
    /// or the source is over its share of them.
    pub const FALLBACK: u8 = 4;
    /// Observe mode (`action = "log"`): nothing was refused, the SYN passed.
    pub const OBSERVED: u8 = 5;
}

/// One refused SYN.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Refusal {
    /// The client address (IPv4 in the first four bytes), not masked.
    pub addr: [u8; 16],
    /// [`crate::maps::family`].
    pub family: u8,
    /// The [`crate::Verdict`] that refused it.
    pub verdict: u8,
    /// The service id.
    pub service: u8,
    /// [`basis`]: what a connection-limit refusal was based on.
    pub basis: u8,
    /// The destination port, host order.
    pub port: u16,
    /// Handshakes in flight the decision counted for the source (0 when it
    /// did not read them).
    pub pending: u16,
    /// Established connections the decision counted for the source
    /// (`CONNS` + `SEEDED`); on the "at its limit" hint path, which reads no
    /// count, the limit (a lower bound).
    pub established: u32,
    /// [`answer`]: what the client got.
    pub answer: u8,
    pub pad: u8,
    /// The client's port, host order (under `respond`, to match the event
    /// with the responder's connection; 0 otherwise).
    pub client_port: u16,
}
const _: () = assert!(core::mem::size_of::<Refusal>() == 32);
