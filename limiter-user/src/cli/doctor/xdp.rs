//! XDP on each interface: what is attached there (`ip -j link`), the
//! driver, and whether native mode works.

use std::{path::Path, process::Command};

use aya::Ebpf;
use serde::Deserialize;

use super::{kernel::probe_native, report::Check};
use crate::{
    kernel::{host, pins},
    protocol::StatusReply,
};

/// A link as `ip -j link show` reports it: only what the XDP check reads.
#[derive(Debug, Default, Deserialize)]
pub struct IpLink {
    #[serde(default)]
    xdp: IpXdp,
}

/// `xdp` of a link: one program (`mode`, `prog`), or several (`attached`).
#[derive(Debug, Default, Deserialize)]
struct IpXdp {
    mode: Option<u64>,
    #[serde(default)]
    prog: IpProg,
    attached: Option<Vec<IpXdp>>,
}

#[derive(Debug, Default, Deserialize)]
struct IpProg {
    id: Option<u64>,
    /// Without privileges `ip` shows the id only.
    name: Option<String>,
}

/// XDP programs attached to an interface, as `ip -j link show` reports them:
/// `(mode, program name, program id)`; mode is `native`, `skb` or `hw`.
#[must_use]
pub fn xdp_attached(links: &[IpLink]) -> Vec<(&'static str, String, u64)> {
    fn mode(n: u64) -> &'static str {
        match n {
            1 => "native",
            2 => "skb",
            3 => "hw",
            _ => "unknown",
        }
    }
    fn prog(x: &IpXdp) -> Option<(&'static str, String, u64)> {
        let name = x.prog.name.clone().unwrap_or_default();
        Some((mode(x.mode?), name, x.prog.id.unwrap_or(0)))
    }
    let Some(link) = links.first() else { return Vec::new() };
    match &link.xdp.attached {
        Some(all) => all.iter().filter_map(prog).collect(),
        None => prog(&link.xdp).into_iter().collect(),
    }
}

/// `ip -j link show dev IF`, parsed; `None` if `ip` cannot tell.
fn ip_link(iface: &str) -> Option<Vec<IpLink>> {
    let out = Command::new("ip").args(["-j", "link", "show", "dev", iface]).output().ok()?;
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// The interface's driver (`ETHTOOL_GDRVINFO`, in this network namespace:
/// sysfs would show the host's devices under `nsenter --net`).
fn driver(iface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 160] };
    // SAFETY: a socket we own and close; ifreq points at info, which
    // outlives the ioctl and is large enough for struct ethtool_drvinfo.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
            *d = libc::c_char::from_ne_bytes([*s]);
        }
        ifr.ifr_ifru.ifru_data = (&raw mut info).cast();
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &raw mut ifr);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned()).filter(|d| !d.is_empty())
}

/// Drivers with native XDP in mainline kernels since 5.15 (as ethtool names
/// them). A guess from the name; `--probe-xdp` finds out.
const NATIVE_XDP_DRIVERS: &[&str] = &[
    "veth",
    "virtio_net",
    "tun",
    "mlx4_en",
    "mlx5_core",
    "i40e",
    "ice",
    "ixgbe",
    "ixgbevf",
    "igb",
    "igc",
    "bnxt_en",
    "nfp",
    "qede",
    "ena",
    "hv_netvsc",
    "sfc",
    "atlantic",
    "gve",
    "bonding",
];

/// Native XDP on `iface`. With a daemon attached there, its mode; with an
/// XDP program attached already (the limiter's pinned link, or another
/// tool's), that program's mode, never touched; otherwise the driver, and
/// with `--probe-xdp` a real attach. The probe is opt-in because attaching
/// in native mode makes drivers such as mlx5, i40e, ixgbe and ice rebuild
/// their rings, which drops the link for a moment on a live mail host.
pub(super) fn xdp_check(iface: &str, daemon: Option<&StatusReply>, pin_dir: &Path, probe: Option<&mut Ebpf>) -> Check {
    // Over 80 lines on purpose: one ladder read top to bottom (daemon,
    // attached program, no `ip`, probe, driver guess), whose order decides
    // which finding wins; split up, that order would be in no one place.
    let name = format!("xdp {iface}");
    let skb_fix = "the driver has no native XDP: skb (generic) mode works but costs more per packet; use a NIC whose \
                   driver has native XDP for floods";
    if let Some(a) = daemon.and_then(|s| s.interfaces.iter().find(|i| i.name == iface)) {
        let mode = a.xdp_mode.as_str();
        return match mode {
            "native" => Check::ok(name, "native (driver) mode, attached by the running daemon"),
            _ => Check::warn(name, format!("{mode} mode, attached by the running daemon"), skb_fix),
        };
    }
    let Ok(ifindex) = host::ifindex(iface) else {
        return Check::fail(
            name,
            format!("no interface '{iface}' in this network namespace: `limiter run` would refuse it"),
            "check the name (`ip link`), or run `limiter doctor` in the daemon's network namespace",
        );
    };
    let drv = driver(iface);
    let drv_text = drv.as_deref().map_or_else(|| "driver unknown".to_owned(), |d| format!("driver {d}"));
    let ip = ip_link(iface);
    let attached = ip.as_deref().map(xdp_attached).unwrap_or_default();
    let ours = pins::xdp_link(pin_dir, iface).exists();
    if let Some((mode, prog, id)) = attached.first() {
        let prog = if prog.is_empty() { format!("prog id {id}") } else { format!("{prog}, prog id {id}") };
        let whose = if ours {
            format!("the limiter's pinned link ({prog}), no daemon managing it")
        } else {
            format!("another program ({prog})")
        };
        return match (*mode, ours) {
            ("native", true) => Check::ok(name, format!("native (driver) mode: {whose}")),
            (_, true) => Check::warn(name, format!("{mode} mode: {whose}"), skb_fix),
            (_, false) => Check::warn(
                name,
                format!("{mode} mode, {whose}; {drv_text}: `limiter run` cannot attach next to it"),
                format!("find its owner (`bpftool net show dev {iface}`) and detach it, or protect another interface"),
            ),
        };
    }
    if ip.is_none() {
        // Without `ip` we cannot tell whether a program is attached: do not probe.
        return Check::warn(
            name,
            format!("{drv_text}; cannot tell whether an XDP program is attached (`ip -j link` failed)"),
            "install iproute2 for this check",
        );
    }
    if let Some(ebpf) = probe {
        return match probe_native(ebpf, ifindex) {
            Ok(true) => Check::ok(
                name,
                format!("native XDP works ({drv_text}; probed: attached and detached a pass-all program)"),
            ),
            Ok(false) => Check::warn(
                name,
                format!("{drv_text} has no native XDP (probed): `--xdp-mode auto` falls back to skb (generic)"),
                skb_fix,
            ),
            Err(e) => Check::warn(
                name,
                format!("{drv_text}; the native XDP probe failed: {e}"),
                "see the error; `limiter run --xdp-mode auto` still falls back to skb",
            ),
        };
    }
    match drv.as_deref() {
        Some(d) if NATIVE_XDP_DRIVERS.contains(&d) => Check::ok(
            name,
            format!("{drv_text} has native XDP (known driver, not probed; --probe-xdp attaches a test program)"),
        ),
        _ => Check::warn(
            name,
            format!("{drv_text}: native XDP support unknown, probably skb (generic) mode"),
            format!(
                "`limiter doctor --probe-xdp --iface {iface}` finds out (it attaches a pass-all program for a moment; \
                 some drivers reset the link); `--xdp-mode auto` falls back to skb by itself"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_from_ip_json() {
        let links = |text: &str| serde_json::from_str::<Vec<IpLink>>(text).expect("ip -j link");
        let none = links(r#"[{ "ifname": "eth0", "flags": ["UP"] }]"#);
        assert!(xdp_attached(&none).is_empty());
        assert!(xdp_attached(&[]).is_empty());
        let drv = links(
            r#"[{ "ifname": "v", "xdp": { "mode": 1, "prog": { "id": 42, "name": "limiter_xdp", "tag": "x", "jited": 1 } } }]"#,
        );
        assert_eq!(xdp_attached(&drv), vec![("native", "limiter_xdp".to_owned(), 42)]);
        let multi = links(
            r#"[{ "xdp": { "mode": 4, "attached": [
            { "mode": 2, "prog": { "id": 7, "name": "a" } },
            { "mode": 1, "prog": { "id": 8, "name": "b" } } ] } }]"#,
        );
        assert_eq!(xdp_attached(&multi), vec![("skb", "a".to_owned(), 7), ("native", "b".to_owned(), 8)]);
        // Without privileges: the id only.
        let unprivileged = links(r#"[{ "xdp": { "mode": 2, "prog": { "id": 9 } } }]"#);
        assert_eq!(xdp_attached(&unprivileged), vec![("skb", String::new(), 9)]);
    }
}
