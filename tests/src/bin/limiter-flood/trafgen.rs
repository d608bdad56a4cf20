//! The SYN floods: their frames as trafgen configuration, checked offline to come only from the test ranges, and
//! a running trafgen that reports what it sent.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use limiter_tests::netns::Netns;

use crate::{PORT, Result, SEED, SPOOFED_V4, SPOOFED_V6};

/// The frames of a flood, as trafgen configuration: every byte is fixed except the ones `drnd`/`dinc` vary at run
/// time (source address bits below the allowed prefix, source port, IP id, sequence number), and trafgen
/// recomputes the checksums of every packet.
pub(crate) struct FloodFrames {
    pub(crate) dst_mac: [u8; 6],
    pub(crate) src_mac: [u8; 6],
    pub(crate) server_v4: Ipv4Addr,
    pub(crate) server_v6: Ipv6Addr,
}

impl FloodFrames {
    fn bytes(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:#04x}")).collect::<Vec<_>>().join(", ")
    }

    fn eth(&self, ethertype: u16) -> String {
        format!("{}, {}, c16({ethertype:#06x})", Self::bytes(&self.dst_mac), Self::bytes(&self.src_mac))
    }

    /// A TCP SYN with an MSS option (as real clients send), after an IP header starting at `ip`.
    fn syn(csum: &str) -> String {
        format!(
            "drnd(2), c16({PORT}), drnd(4), c32(0), c16((6 << 12) | 0x02), c16(64240), {csum}, c16(0), 2, 4, c16(1400)"
        )
    }

    /// IPv4 SYNs; `src` is four trafgen byte expressions.
    fn v4(&self, src: &str) -> String {
        format!(
            "{{\n  {},\n  0x45, 0, c16(44), drnd(2), 0x40, 0, 64, 6, csumip(14, 33),\n  {src},\n  {},\n  {}\n}}\n",
            self.eth(0x0800),
            Self::bytes(&self.server_v4.octets()),
            Self::syn("csumtcp(14, 34)")
        )
    }

    /// IPv6 SYNs; `src` is sixteen trafgen byte expressions.
    fn v6(&self, src: &str) -> String {
        format!(
            "{{\n  {},\n  0x60, 0, 0, 0, c16(24), 6, 64,\n  {src},\n  {},\n  {}\n}}\n",
            self.eth(0x86dd),
            Self::bytes(&self.server_v6.octets()),
            Self::syn("csumtcp6(14, 54)")
        )
    }

    /// SYNs from the abusive source's own address.
    pub(crate) fn abuser(&self, src: Ipv4Addr) -> String {
        format!("# SYNs from one abusive source\n{}", self.v4(&Self::bytes(&src.octets())))
    }

    /// SYNs from 198.19.0.0/16 and `2001:db8:8000::/33`, alternating: the first 16 (33) bits are constants.
    pub(crate) fn spoofed(&self) -> String {
        format!(
            "# SYNs from {SPOOFED_V4}\n{}# SYNs from {SPOOFED_V6}\n{}",
            self.v4("198, 19, drnd(2)"),
            self.v6("0x20, 0x01, 0x0d, 0xb8, dinc(0x80, 0xff), drnd(11)")
        )
    }
}

/// Common trafgen arguments: one process (the other CPU stays for the server), no changes to the host's socket
/// memory sysctls or IRQ affinities, a fixed seed.
fn trafgen_args(cfg: &Path) -> Vec<String> {
    ["--in", &cfg.display().to_string(), "--cpus", "1", "--no-sock-mem", "--notouch-irq", "--seed", &SEED.to_string()]
        .map(String::from)
        .to_vec()
}

/// The client veth's queue. A veth whose peer runs XDP in native mode hands it frames through a 256-slot ring;
/// with the veth's default `noqueue` a full ring drops the frame, so a flood sent from the same CPU that drains
/// the ring loses legitimate frames too, an effect of the test rig that a NIC does not have (without XDP the peer
/// takes frames into the 1000-frame backlog instead). With a queue on the sending side, recent kernels (6.18 here)
/// hold the frames back while the ring is full instead of dropping them, and trafgen sends through that queue
/// (`--qdisc-path`): every configuration then gets every frame, behind the same depth of queue. On a kernel that
/// still drops, the "lost frames" column shows it.
pub(crate) const CLIENT_QDISC: [&str; 3] = ["pfifo", "limit", "1000"];

/// Runs trafgen on `cfg` into a pcap file (no network) and checks every frame it made: a TCP SYN to the server's
/// `PORT` from an allowed source. This is the proof that the flood only uses the test ranges.
pub(crate) fn check_frames(
    dir: &Path,
    name: &str,
    cfg: &Path,
    server: &[IpAddr],
    allowed: &dyn Fn(IpAddr) -> bool,
) -> Result<()> {
    const FRAMES: usize = 4096;
    let pcap = dir.join(format!("{name}.pcap"));
    let out = Command::new("trafgen")
        .args(trafgen_args(cfg))
        .arg("--out")
        .arg(&pcap)
        .args(["--num", &FRAMES.to_string()])
        .output()
        .map_err(|e| format!("cannot run trafgen: {e}"))?;
    if !out.status.success() {
        return Err(format!("trafgen rejected the {name} flood: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let data = std::fs::read(&pcap).map_err(|e| format!("{}: {e}", pcap.display()))?;
    let mut at = 24; // the pcap file header
    let mut seen = 0;
    while at + 16 <= data.len() {
        let len = u32::from_le_bytes(data[at + 8..at + 12].try_into()?) as usize;
        let f = data.get(at + 16..at + 16 + len).ok_or("truncated pcap record")?;
        at += 16 + len;
        let (src, dst, ip_end) = match u16::from_be_bytes([f[12], f[13]]) {
            0x0800 if f[23] == 6 => {
                (IpAddr::from(<[u8; 4]>::try_from(&f[26..30])?), IpAddr::from(<[u8; 4]>::try_from(&f[30..34])?), 34)
            }
            0x86dd if f[20] == 6 => {
                (IpAddr::from(<[u8; 16]>::try_from(&f[22..38])?), IpAddr::from(<[u8; 16]>::try_from(&f[38..54])?), 54)
            }
            t => return Err(format!("{name} flood: frame {seen} is not TCP over IP (ethertype {t:#06x})").into()),
        };
        let dport = u16::from_be_bytes([f[ip_end + 2], f[ip_end + 3]]);
        let flags = f[ip_end + 13];
        if !allowed(src) || !server.contains(&dst) || dport != PORT || flags != 0x02 {
            return Err(format!("{name} flood: frame {seen} is {src} -> {dst}:{dport} flags {flags:#04x}").into());
        }
        seen += 1;
    }
    if seen != FRAMES {
        return Err(format!("{name} flood: trafgen wrote {seen} frames, expected {FRAMES}").into());
    }
    Ok(())
}

/// A running trafgen in the client namespace, in a process group of its own, stopped on drop.
pub(crate) struct Trafgen {
    child: Option<Child>,
    log: PathBuf,
    started: Instant,
}

impl Trafgen {
    /// Sends the frames of `cfg` on `iface` in `ns` at about `pps`, at most `count` packets.
    pub(crate) fn start(ns: &Netns, iface: &str, cfg: &Path, log: PathBuf, pps: u32, count: u64) -> Result<Self> {
        let out = std::fs::File::create(&log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("trafgen")
            .args(trafgen_args(cfg))
            .args(["--out", iface, "--qdisc-path", "--rate", &format!("{pps}pps"), "--num", &count.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // trafgen sends from a forked worker that ignores a SIGINT to its parent: signal the group.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start trafgen: {e}"))?;
        Ok(Self { child: Some(child), log, started: Instant::now() })
    }

    /// Stops it; returns the packets it sent and for how long it sent them, as trafgen reports them
    /// ("  1 sec, 496340 usec on CPU0 (100000 packets)"; the wall time since its start if it does not).
    pub(crate) fn finish(mut self) -> Result<(u64, Duration)> {
        let elapsed = self.started.elapsed();
        self.stop();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let sent = log
            .lines()
            .find_map(|l| l.trim().strip_suffix(" packets outgoing").and_then(|n| n.trim().parse::<u64>().ok()))
            .ok_or_else(|| format!("trafgen reported no packet count: {log}"))?;
        let took = log
            .lines()
            .filter_map(|l| {
                let (secs, rest) = l.trim().split_once(" sec, ")?;
                let (usecs, _) = rest.split_once(" usec on CPU")?;
                Some(Duration::from_secs(secs.parse().ok()?) + Duration::from_micros(usecs.parse().ok()?))
            })
            .max()
            .unwrap_or(elapsed);
        Ok((sent, took))
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let group = libc::pid_t::try_from(child.id()).ok();
        // SAFETY: signalling the process group of our own child (nsenter execs trafgen, which forks its worker into
        // the same group); SIGINT makes trafgen stop and print its totals.
        let signal = |sig| group.map(|g| unsafe { libc::kill(-g, sig) });
        signal(libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                // The worker prints after the parent may have gone; give it a moment.
                thread::sleep(Duration::from_millis(100));
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        signal(libc::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Source checks for the flood frames (see [`check_frames`]).
pub(crate) fn is_spoofed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.octets()[..2] == [198, 19],
        IpAddr::V6(a) => a.segments()[..2] == [0x2001, 0xdb8] && a.segments()[2] & 0x8000 != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_sources_stay_in_their_ranges() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        for yes in ["198.19.0.0", "198.19.255.255", "2001:db8:8000::", "2001:db8:ffff:ffff::1"] {
            assert!(is_spoofed(ip(yes)), "{yes}");
        }
        for no in ["198.18.3.10", "198.20.0.1", "2001:db8:7fff::1", "2001:db8:3:1::a", "2001:db9:8000::1"] {
            assert!(!is_spoofed(ip(no)), "{no}");
        }
    }
}
