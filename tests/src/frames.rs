//! Builds test frames byte by byte: Ethernet with optional VLAN tags, IPv4
//! with options or IPv6 with extension headers, and TCP, with correct
//! checksums. Used by the `BPF_PROG_TEST_RUN` tests and the benchmark.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const RST: u8 = 0x04;

/// A TCP segment to wrap in a frame.
#[derive(Debug, Clone)]
pub struct Tcp {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// TCP options (padded to 4 bytes).
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Tcp {
    /// A SYN from `src` to `dst:dport` with an MSS option, like a real client's.
    #[must_use]
    pub fn syn(src: IpAddr, dst: IpAddr, dport: u16) -> Self {
        Self {
            src,
            dst,
            sport: 40_000,
            dport,
            seq: 0x1234_5678,
            ack: 0,
            flags: SYN,
            options: vec![2, 4, 5, 0xb4],
            payload: vec![],
        }
    }
}

/// How the frame around the segment looks.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// 802.1Q/802.1ad tags, outermost first: (TPID, VLAN id).
    pub vlans: Vec<(u16, u16)>,
    /// IPv4 options (padded to 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv6 extension headers before TCP: (next-header number of this
    /// header, total length in bytes, a multiple of 8).
    pub ipv6_ext: Vec<(u8, usize)>,
    /// IPv4 fragment field (flags and offset).
    pub frag: u16,
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !u16::try_from(s).unwrap_or(0)
}

fn pad4(mut v: Vec<u8>) -> Vec<u8> {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

fn len16(n: usize) -> [u8; 2] {
    u16::try_from(n).expect("length fits in 16 bits").to_be_bytes()
}

/// The TCP header and payload with its checksum for the given pseudo-header sum.
fn tcp_bytes(t: &Tcp) -> Vec<u8> {
    let opts = pad4(t.options.clone());
    let mut h = Vec::new();
    h.extend_from_slice(&t.sport.to_be_bytes());
    h.extend_from_slice(&t.dport.to_be_bytes());
    h.extend_from_slice(&t.seq.to_be_bytes());
    h.extend_from_slice(&t.ack.to_be_bytes());
    h.push(u8::try_from((20 + opts.len()) / 4).expect("doff") << 4);
    h.push(t.flags);
    h.extend_from_slice(&64240u16.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h.extend_from_slice(&opts);
    h.extend_from_slice(&t.payload);
    let pseudo = match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum16(&s.octets()) + sum16(&d.octets()) + 6 + u32::try_from(h.len()).unwrap_or(0)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum16(&s.octets()) + sum16(&d.octets()) + 6 + u32::try_from(h.len()).unwrap_or(0)
        }
        _ => panic!("mixed address families"),
    };
    let c = fold(pseudo + sum16(&h));
    h[16..18].copy_from_slice(&c.to_be_bytes());
    h
}

/// Destination and source MAC and the VLAN tags of `shape`, ready for the
/// `EtherType`.
#[must_use]
pub fn ethernet(dst: [u8; 6], src: [u8; 6], shape: &Shape) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, id) in &shape.vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
    }
    f
}

/// A complete Ethernet frame carrying `t`.
#[must_use]
#[expect(clippy::many_single_char_names, reason = "header fields named as in the RFCs")]
pub fn frame(t: &Tcp, shape: &Shape) -> Vec<u8> {
    let mut f = ethernet(SERVER_MAC, CLIENT_MAC, shape);
    let tcp = tcp_bytes(t);
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let opts = pad4(shape.ip_options.clone());
            let ihl = u8::try_from((20 + opts.len()) / 4).expect("ihl");
            let mut ip = vec![0x40 | ihl, 0];
            ip.extend_from_slice(&len16(20 + opts.len() + tcp.len()));
            ip.extend_from_slice(&[0x12, 0x34]);
            ip.extend_from_slice(&shape.frag.to_be_bytes());
            ip.extend_from_slice(&[64, 6, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            ip.extend_from_slice(&opts);
            let c = fold(sum16(&ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let ext_len: usize = shape.ipv6_ext.iter().map(|e| e.1).sum();
            let first = shape.ipv6_ext.first().map_or(6, |e| e.0);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&len16(ext_len + tcp.len()));
            f.push(first);
            f.push(64);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            for (i, (_, len)) in shape.ipv6_ext.iter().enumerate() {
                let next = shape.ipv6_ext.get(i + 1).map_or(6, |e| e.0);
                let mut e = vec![0u8; *len];
                e[0] = next;
                // AH counts 4-byte units minus 2; the others 8-byte units minus 1.
                let units = if shape.ipv6_ext[i].0 == 51 { len / 4 - 2 } else { len / 8 - 1 };
                e[1] = u8::try_from(units).expect("ext len");
                f.extend_from_slice(&e);
            }
        }
        _ => panic!("mixed address families"),
    }
    f.extend_from_slice(&tcp);
    f
}

/// A plain SYN frame.
#[must_use]
pub fn syn(src: IpAddr, dst: IpAddr, dport: u16) -> Vec<u8> {
    frame(&Tcp::syn(src, dst, dport), &Shape::default())
}

/// Test hosts in the benchmarking range and the documentation prefix.
#[must_use]
pub fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, last))
}

#[must_use]
pub fn v6(group4: u16, last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, group4, 0, 0, 0, last))
}

/// Verifies the IPv4 header checksum and the TCP checksum of a frame
/// (no VLAN, no options): true when both sum to zero.
#[must_use]
pub fn checksums_ok(f: &[u8], l3: usize) -> bool {
    match f[l3] >> 4 {
        4 => {
            let ihl = usize::from(f[l3] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]));
            let ip_ok = fold(sum16(&f[l3..l3 + ihl])) == 0;
            let tcp = &f[l3 + ihl..l3 + total];
            let pseudo = sum16(&f[l3 + 12..l3 + 20]) + 6 + u32::try_from(tcp.len()).unwrap_or(0);
            ip_ok && fold(pseudo + sum16(tcp)) == 0
        }
        6 => {
            let plen = usize::from(u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]));
            let tcp = &f[l3 + 40..l3 + 40 + plen];
            let pseudo = sum16(&f[l3 + 8..l3 + 40]) + 6 + u32::try_from(tcp.len()).unwrap_or(0);
            fold(pseudo + sum16(tcp)) == 0
        }
        _ => false,
    }
}
