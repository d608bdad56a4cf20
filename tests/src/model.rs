//! A host-side model of the XDP packet path's decision, written apart from
//! the kernel program so that it can check it: the parse (Ethernet, up to two
//! VLAN tags, IPv4 without fragments, IPv6 with at most five skipped
//! extension headers), the classification (a SYN to a service port), and the
//! decision for one SYN in a world whose outcome does not depend on timing:
//! a set of sources holds a fixed count of connections (`CONNS`) in every
//! service and over all services, every other source holds none, and every
//! limit is either at or under the held count, or far above anything a run
//! can reach with handshakes in flight; services' sessions (`SESSIONS`) are
//! likewise held at a fixed count. The rules: the deny list, exempt allow
//! entries, allow entries with limits of their own (per service and over
//! all services), the sessions rule with reserve lists, the service's
//! connection limit and the source-wide budget, in the spec's order, with
//! `limiter_common::lists::admission` over an entry the model builds from
//! the lists itself and `limiter_common::pool::check` for the sessions.
//!
//! `tests/tests/frames_model.rs` runs random and mutated frames through
//! `BPF_PROG_TEST_RUN` and compares every verdict, counter and reply with
//! [`expect`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use limiter_common::{
    ServicePolicy, Verdict,
    lists::{Admission, ListEntry, admission, entry},
    maps::{action, family},
    pool,
    prefix::{mask_v4, mask_v6},
};

/// XDP return codes.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

const IPPROTO_TCP: u8 = 6;

/// One service of the model's world.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelService {
    pub id: u32,
    /// `limiter_common::maps::action`: drop, reset or log.
    pub action: u8,
    /// Connections per source; 0 = none.
    pub limit: u32,
    /// The sessions rule: `max_sessions` (0 = none), the part open to
    /// sources on no reserve list, and the sessions in use (established,
    /// as the test holds them; handshakes in flight never cross a threshold).
    pub max_sessions: u32,
    pub open_sessions: u32,
    pub sessions_in_use: u64,
}

/// The state the model decides in.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub ports: BTreeMap<u16, ModelService>,
    pub deny: Vec<(IpAddr, u8)>,
    /// Allow entries without limits (exempt).
    pub exempt: Vec<(IpAddr, u8)>,
    /// Allow entries with limits: (prefix, per source per service, per
    /// source over all services), 0 = none. Disjoint from the other lists.
    pub allow_limits: Vec<((IpAddr, u8), u32, u32)>,
    /// Reserve entries: (prefix, service id). Disjoint from the other lists.
    pub reserve: Vec<((IpAddr, u8), u32)>,
    /// The source-wide budget (top-level `max_conn_per_source`); 0 = none.
    pub all_limit: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Source prefixes (masked to the world's prefix lengths) that hold
    /// [`World::held_per_service`] connections in every service and
    /// [`World::held_all`] over all services; every other source holds none.
    pub held: BTreeSet<[u8; 16]>,
    pub held_per_service: u64,
    pub held_all: u64,
}

/// What the program must do with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub action: u32,
    /// The one counter the frame moves: (service row, verdict).
    pub counter: (u32, Verdict),
    /// Observe mode's "would have refused" counter, if it moves.
    pub observed: Option<(u32, Verdict)>,
    /// For `XDP_TX`, the reply with both checksum fields zero.
    pub reply: Option<Vec<u8>>,
}

/// Where the model's parse found the TCP header.
#[derive(Debug, Clone, Copy)]
struct Parsed {
    l3: usize,
    l4: usize,
    l4_len: usize,
    v4: bool,
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

/// The parse, by the rules of `limiter-ebpf/src/parse.rs`: `None` is
/// "not understood" (the frame passes, counted as other).
fn parse(f: &[u8]) -> Option<Parsed> {
    let mut l3 = 14;
    let mut ether_type = be16(f, 12)?;
    for _ in 0..2 {
        if ether_type != 0x8100 && ether_type != 0x88a8 {
            break;
        }
        ether_type = be16(f, l3 + 2)?;
        l3 += 4;
    }
    match ether_type {
        0x0800 => {
            let h = f.get(l3..l3 + 20)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if h[0] >> 4 != 4 || ihl < 20 || h[9] != IPPROTO_TCP {
                return None;
            }
            if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            Some(Parsed { l3, l4: l3 + ihl, l4_len: total.checked_sub(ihl)?, v4: true })
        }
        0x86dd => {
            let h = f.get(l3..l3 + 40)?;
            if h[0] >> 4 != 6 {
                return None;
            }
            let mut next = h[6];
            let mut payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let mut off = l3 + 40;
            // At most five extension headers are skipped: the sixth header
            // seen must be TCP.
            for _ in 0..6 {
                if next == IPPROTO_TCP {
                    return Some(Parsed { l3, l4: off, l4_len: payload, v4: false });
                }
                let e = f.get(off..off + 2)?;
                let len = match next {
                    0 | 43 | 60 => (usize::from(e[1]) + 1) * 8,
                    51 => (usize::from(e[1]) + 2) * 4,
                    _ => return None,
                };
                next = e[0];
                off += len;
                payload = payload.checked_sub(len)?;
            }
            None
        }
        _ => None,
    }
}

fn covers(prefix: &(IpAddr, u8), addr: &[u8; 16], v4: bool) -> bool {
    let (net, len) = prefix;
    let (net, bits): ([u8; 16], usize) = match (net, v4) {
        (IpAddr::V4(n), true) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&n.octets());
            (b, 32)
        }
        (IpAddr::V6(n), false) => (n.octets(), 128),
        _ => return false,
    };
    let len = usize::from(*len).min(bits);
    (0..len).all(|i| (net[i / 8] >> (7 - i % 8)) & 1 == (addr[i / 8] >> (7 - i % 8)) & 1)
}

impl World {
    /// The source prefix of `addr` (what `CONNS` is keyed by, less the service).
    #[must_use]
    pub fn source_prefix(&self, addr: &[u8; 16], v4: bool) -> [u8; 16] {
        if v4 {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&mask_v4([addr[0], addr[1], addr[2], addr[3]], self.ipv4_prefix));
            k
        } else {
            mask_v6(*addr, self.ipv6_prefix)
        }
    }

    /// The merged list entry the daemon would store for `addr`: deny if any
    /// deny entry covers it, else exempt if any allow entry does; else the
    /// limits of the allow entry with limits, or the services of the reserve
    /// entries, that cover it (those two are disjoint from the rest).
    fn list_entry(&self, addr: &[u8; 16], v4: bool) -> Option<ListEntry> {
        if self.deny.iter().any(|p| covers(p, addr, v4)) {
            return Some(ListEntry { flags: entry::DENY, ..ListEntry::default() });
        }
        if self.exempt.iter().any(|p| covers(p, addr, v4)) {
            return Some(ListEntry { flags: entry::ALLOW | entry::EXEMPT, ..ListEntry::default() });
        }
        if let Some((_, per, all)) = self.allow_limits.iter().find(|(p, _, _)| covers(p, addr, v4)) {
            return Some(ListEntry {
                flags: entry::ALLOW,
                max_conn_per_source: *per,
                max_conn_all: *all,
                ..ListEntry::default()
            });
        }
        let reserve = self.reserve.iter().filter(|(p, _)| covers(p, addr, v4)).fold(0, |m, (_, id)| m | 1 << id);
        (reserve != 0).then_some(ListEntry { reserve, ..ListEntry::default() })
    }
}

/// What the program must do with `frame` in `world`. `None` for a frame
/// `BPF_PROG_TEST_RUN` does not take (shorter than an Ethernet header).
#[must_use]
pub fn expect(world: &World, frame: &[u8]) -> Option<Expect> {
    if frame.len() < 14 {
        return None;
    }
    let pass = |counter| Expect { action: XDP_PASS, counter, observed: None, reply: None };
    let other = (0, Verdict::PassedOther);
    let Some(p) = parse(frame) else {
        return Some(pass(other));
    };
    let Some(tcp) = frame.get(p.l4..p.l4 + 20) else {
        return Some(pass(other));
    };
    let port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let Some(service) = world.ports.get(&port) else {
        return Some(pass(other));
    };
    if tcp[13] & 0x12 != 0x02 {
        return Some(pass((service.id, Verdict::PassedNonSyn)));
    }
    let mut addr = [0u8; 16];
    if p.v4 {
        addr[..4].copy_from_slice(&frame[p.l3 + 12..p.l3 + 16]);
    } else {
        addr.copy_from_slice(&frame[p.l3 + 8..p.l3 + 24]);
    }
    let policy = ServicePolicy {
        max_conn_per_source: service.limit,
        action: service.action,
        max_sessions: service.max_sessions,
        open_sessions: service.open_sessions,
        ..ServicePolicy::default()
    };
    let entry = world.list_entry(&addr, p.v4);
    let verdict = match admission(entry.as_ref(), service.id, &policy, world.all_limit) {
        Admission::Decided(v) => v,
        Admission::Limits { max_conn, max_conn_all, reserved, .. } => {
            let held = world.held.contains(&world.source_prefix(&addr, p.v4));
            let (count, count_all) = if held { (world.held_per_service, world.held_all) } else { (0, 0) };
            // The sessions rule before the connections rules: a SYN both
            // refuse is refused by sessions. The source-wide budget last.
            let sessions =
                (service.max_sessions != 0).then(|| pool::check(service.sessions_in_use, &policy, reserved)).flatten();
            if let Some(v) = sessions {
                v
            } else if (max_conn != 0 && count >= u64::from(max_conn))
                || (max_conn_all != 0 && count_all >= u64::from(max_conn_all))
            {
                Verdict::RefusedConcurrency
            } else {
                Verdict::Accepted
            }
        }
    };
    if verdict == Verdict::Accepted {
        return Some(pass((service.id, Verdict::Accepted)));
    }
    Some(match service.action {
        action::LOG => Expect {
            action: XDP_PASS,
            counter: (service.id, Verdict::Accepted),
            observed: Some((service.id, verdict)),
            reply: None,
        },
        action::RESET => match rst(frame, &p) {
            Some(reply) => {
                Expect { action: XDP_TX, counter: (service.id, verdict), observed: None, reply: Some(reply) }
            }
            None => Expect { action: XDP_DROP, counter: (service.id, verdict), observed: None, reply: None },
        },
        _ => Expect { action: XDP_DROP, counter: (service.id, verdict), observed: None, reply: None },
    })
}

/// The RST+ACK answering the SYN, checksums zero: addresses, ports and MACs
/// swapped, the tags kept, no IP options or extension headers, ACK = the
/// ISN plus one plus the SYN's payload. `None` when the TCP header claims more bytes than
/// the IP header gives it (the program then drops).
fn rst(frame: &[u8], p: &Parsed) -> Option<Vec<u8>> {
    let tcp = &frame[p.l4..p.l4 + 20];
    let payload = p.l4_len.checked_sub(usize::from(tcp[12] >> 4) * 4)?;
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    #[expect(clippy::cast_possible_truncation, reason = "sequence arithmetic is modulo 2^32")]
    let ack = seq.wrapping_add(1).wrapping_add(payload as u32);
    let mut out = Vec::with_capacity(p.l3 + 60);
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&frame[12..p.l3]);
    if p.v4 {
        out.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        out.extend_from_slice(&frame[p.l3 + 16..p.l3 + 20]);
        out.extend_from_slice(&frame[p.l3 + 12..p.l3 + 16]);
    } else {
        out.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
        out.extend_from_slice(&frame[p.l3 + 24..p.l3 + 40]);
        out.extend_from_slice(&frame[p.l3 + 8..p.l3 + 24]);
    }
    out.extend_from_slice(&tcp[2..4]);
    out.extend_from_slice(&tcp[0..2]);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&ack.to_be_bytes());
    out.extend_from_slice(&[0x50, 0x14, 0, 0, 0, 0, 0, 0]);
    Some(out)
}

/// The offsets of the checksum fields of a reply the model built (IPv4
/// header, TCP), to zero in the program's reply before comparing.
#[must_use]
pub fn reply_checksums(reply: &[u8]) -> (Option<usize>, usize, usize) {
    let mut l3 = 14;
    while matches!(be16(reply, l3 - 2), Some(0x8100 | 0x88a8)) {
        l3 += 4;
    }
    if reply[l3] >> 4 == 4 { (Some(l3 + 10), l3 + 36, l3) } else { (None, l3 + 56, l3) }
}

/// The family byte of a `limiter_common` source key for an address family.
#[must_use]
pub const fn family_of(v4: bool) -> u8 {
    if v4 { family::V4 } else { family::V6 }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::frames::{self, Shape, Tcp};

    fn world() -> World {
        let mut w = World { ipv4_prefix: 24, ipv6_prefix: 56, ..World::default() };
        let plain = ModelService { id: 1, action: action::RESET, limit: 4, ..ModelService::default() };
        w.ports.insert(25, plain);
        w.ports.insert(587, ModelService { id: 2, action: action::DROP, limit: 0, ..plain });
        w.ports.insert(993, ModelService { id: 3, max_sessions: 10, open_sessions: 6, sessions_in_use: 6, ..plain });
        w.reserve.push(((v4(30, 0), 24), 3));
        w.allow_limits.push(((v4(10, 0), 23), 9, 0));
        w.all_limit = 5;
        w.held_per_service = 4;
        w.held_all = 5;
        w.deny.push((IpAddr::V4(Ipv4Addr::new(198, 18, 200, 0)), 24));
        w.exempt.push((IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xa11, 0, 0, 0, 0, 0)), 48));
        for held in [[198, 18, 10, 77], [198, 18, 20, 1], [198, 18, 30, 1]] {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&held);
            let p = w.source_prefix(&a, true);
            w.held.insert(p);
        }
        w
    }

    fn v4(a: u8, b: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, a, b))
    }

    #[test]
    fn decides_by_the_rules() {
        let w = world();
        let server = v4(0, 1);
        let at = |src, port| expect(&w, &frames::syn(src, server, port)).expect("a frame");
        assert_eq!(at(v4(1, 1), 25).counter, (1, Verdict::Accepted));
        let held = at(v4(20, 5), 25);
        assert_eq!((held.action, held.counter), (XDP_TX, (1, Verdict::RefusedConcurrency)));
        assert_eq!(at(v4(20, 5), 587).counter, (2, Verdict::RefusedConcurrency), "no limit on 587, but the budget");
        // An allow entry's limits replace the service's and the budget.
        assert_eq!(at(v4(10, 5), 25).counter, (1, Verdict::Accepted), "4 held, 9 allowed, no budget");
        // Sessions: 6 of 10 in use, 6 open: only the reserve list gets in, and
        // a source both rules refuse is refused by sessions.
        assert_eq!(at(v4(1, 1), 993).counter, (3, Verdict::RefusedReserve));
        assert_eq!(at(v4(20, 5), 993).counter, (3, Verdict::RefusedReserve), "sessions first");
        assert_eq!(at(v4(30, 7), 993).counter, (3, Verdict::RefusedConcurrency), "reserved, but held");
        let mut unheld = w.clone();
        unheld.held.clear();
        let at_unheld = |src| expect(&unheld, &frames::syn(src, server, 993)).expect("a frame").counter;
        assert_eq!(at_unheld(v4(30, 7)), (3, Verdict::Accepted), "reserved");
        assert_eq!(at(v4(200, 9), 587).action, XDP_DROP, "denied");
        assert_eq!(at(v4(1, 1), 26).counter, (0, Verdict::PassedOther));
        let exempt = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xa11, 5, 0, 0, 0, 1));
        let s6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        assert_eq!(expect(&w, &frames::syn(exempt, s6, 25)).expect("frame").counter, (1, Verdict::Accepted));
    }

    #[test]
    fn parses_as_the_program_does() {
        let w = world();
        let (src, dst) = (v4(20, 5), v4(0, 1));
        let syn = Tcp::syn(src, dst, 25);
        // Three tags, a fragment, six extension headers: passed as other.
        let three = Shape { vlans: vec![(0x8100, 1); 3], ..Shape::default() };
        assert_eq!(expect(&w, &frames::frame(&syn, &three)).expect("frame").counter, (0, Verdict::PassedOther));
        let frag = Shape { frag: 0x2000, ..Shape::default() };
        assert_eq!(expect(&w, &frames::frame(&syn, &frag)).expect("frame").counter, (0, Verdict::PassedOther));
        let s6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        let c6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2));
        let five = Shape { ipv6_ext: vec![(60, 8); 5], ..Shape::default() };
        let six = Shape { ipv6_ext: vec![(60, 8); 6], ..Shape::default() };
        let syn6 = Tcp::syn(c6, s6, 25);
        assert_eq!(expect(&w, &frames::frame(&syn6, &five)).expect("frame").counter, (1, Verdict::Accepted));
        assert_eq!(expect(&w, &frames::frame(&syn6, &six)).expect("frame").counter, (0, Verdict::PassedOther));
        // The reply of a refused SYN with two tags keeps them.
        let two = Shape { vlans: vec![(0x88a8, 3), (0x8100, 4)], ..Shape::default() };
        let e = expect(&w, &frames::frame(&syn, &two)).expect("frame");
        let reply = e.reply.expect("a reply");
        assert_eq!(reply.len(), 22 + 40);
        assert_eq!(&reply[12..22], &[0x88, 0xa8, 0, 3, 0x81, 0, 0, 4, 0x08, 0]);
        assert_eq!(reply_checksums(&reply), (Some(32), 58, 22));
        // Shorter than Ethernet: not a frame the kernel takes.
        assert_eq!(expect(&w, &[0u8; 13]), None);
    }
}
