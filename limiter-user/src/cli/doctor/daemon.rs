//! The running daemon, asked over its control socket, and the pins it (or
//! a daemon before it) left under the pin dir.

use std::{fmt::Write as _, path::Path};

use super::report::Check;
use crate::{
    kernel::pins,
    protocol::{self, Request, StatusReply},
};

/// What the control socket said.
pub(super) struct Daemon {
    pub(super) status: Option<StatusReply>,
    error: Option<protocol::ClientError>,
}

impl Daemon {
    pub(super) fn query(socket: &Path) -> Self {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let error = protocol::ClientError::Io { path: socket.display().to_string(), source: e };
                return Self { status: None, error: Some(error) };
            }
        };
        match rt.block_on(protocol::request(socket, &Request::Status)) {
            Ok(v) => Self { status: Some(v), error: None },
            Err(e) => Self { status: None, error: Some(e) },
        }
    }

    pub(super) fn interfaces(&self) -> Vec<String> {
        let Some(s) = &self.status else { return Vec::new() };
        s.interfaces.iter().map(|i| i.name.clone()).collect()
    }

    /// A stopped daemon is a warning, not a failure, also with pins present:
    /// the kernel goes on counting and enforcing without it (that is what
    /// the pins are for), so the host is protected; only reporting, list
    /// changes and reloads wait for it. Failures are kept for what stops
    /// the limiter from working on this host.
    pub(super) fn check(&self, socket: &Path, pin_flag: Option<&Path>, daemon_pins: Option<&Path>) -> Check {
        let name = "daemon";
        let shown = socket.display();
        if let Some(s) = &self.status {
            let version = &s.version;
            let services = s.services.len();
            let plural = if services == 1 { "" } else { "s" };
            let finding = format!("limiter {version} answers on {shown} ({services} service{plural})");
            if version != env!("CARGO_PKG_VERSION") {
                return Check::warn(
                    name,
                    format!("{finding}; this binary is {}", env!("CARGO_PKG_VERSION")),
                    "restart the daemon after an upgrade (`systemctl restart limiter`): the new programs replace the \
                     old ones without a gap",
                );
            }
            if let (Some(flag), Some(theirs)) = (pin_flag, daemon_pins)
                && flag != theirs
            {
                return Check::warn(
                    name,
                    format!("{finding}, pinned under {}, not --pin-dir {}", theirs.display(), flag.display()),
                    format!("check --pin-dir {}", theirs.display()),
                );
            }
            return Check::ok(name, finding);
        }
        let start = "start it (`systemctl start limiter`, or `limiter run ...`)";
        let io_kind = match &self.error {
            Some(protocol::ClientError::Connect { source, .. }) => Some(source.kind()),
            _ => None,
        };
        match io_kind {
            Some(std::io::ErrorKind::NotFound) => {
                Check::warn(name, format!("not running (no control socket {shown})"), start)
            }
            Some(std::io::ErrorKind::ConnectionRefused) => {
                Check::warn(name, format!("not running: {shown} is left from a daemon that is gone"), start)
            }
            Some(std::io::ErrorKind::PermissionDenied) => Check::warn(
                name,
                format!("cannot connect to {shown}: permission denied"),
                "run as root or as a member of the socket's group",
            ),
            _ => Check::warn(
                name,
                self.error.as_ref().map_or_else(|| "no answer".to_owned(), ToString::to_string),
                format!("check the daemon's log; {start}"),
            ),
        }
    }
}

/// What a pin dir holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PinsFound {
    pub maps: Vec<String>,
    pub sock_ops_link: bool,
    pub xdp_links: Vec<String>,
}

/// Reads the names under `dir` (`None` when it does not exist).
fn pins_found(dir: &Path) -> std::io::Result<Option<PinsFound>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut found = PinsFound::default();
    for e in entries.filter_map(Result::ok) {
        let n = e.file_name().to_string_lossy().into_owned();
        if pins::maps().any(|m| m == n.as_str()) {
            found.maps.push(n);
        }
    }
    found.maps.sort();
    found.sock_ops_link = pins::sock_ops_link(dir).exists();
    found.xdp_links = pins::xdp_link_ifaces(dir);
    found.xdp_links.sort();
    Ok(Some(found))
}

/// The pins check from what the dir holds, whether its maps have this
/// version's layout, and whether a daemon answers.
/// `layouts` is `None` when they could not be checked (no privileges).
#[must_use]
pub fn pins_from(dir: &Path, found: Option<&PinsFound>, layouts: Option<Result<(), String>>, daemon: bool) -> Check {
    let name = "pins";
    let shown = dir.display();
    let unload = format!(
        "stop the daemon, `limiter unload --pin-dir {shown}` (counts start over from the open sockets), start it again"
    );
    let Some(found) = found.filter(|f| !f.maps.is_empty() || f.sock_ops_link || !f.xdp_links.is_empty()) else {
        return Check::ok(name, format!("not loaded (nothing pinned under {shown})"));
    };
    let mut what = format!("{} of {} maps", found.maps.len(), pins::maps().count());
    if found.sock_ops_link {
        what.push_str(", sock_ops link");
    }
    if !found.xdp_links.is_empty() {
        let _ = write!(what, ", XDP links: {}", found.xdp_links.join(" "));
    }
    if layouts.is_none() {
        what.push_str(" (map layouts not checked: needs privileges)");
    }
    if let Some(Err(e)) = layouts {
        return Check::warn(name, format!("{what} under {shown} from an incompatible version: {e}"), unload);
    }
    let missing: Vec<&str> = pins::maps().filter(|m| !found.maps.iter().any(|f| f == m)).collect();
    if !missing.is_empty() {
        return Check::warn(
            name,
            format!(
                "{what} under {shown}; missing {} (an older layout, or a start that failed half-way)",
                missing.join(", ")
            ),
            unload,
        );
    }
    if !daemon {
        return Check::warn(
            name,
            format!(
                "{what} under {shown}, and no daemon answers: enforcement continues without a daemon (stopped unit?)"
            ),
            format!(
                "`systemctl start limiter` to manage it again, or `limiter unload --pin-dir {shown}` to stop enforcing"
            ),
        );
    }
    Check::ok(name, format!("present: {what} under {shown}, in use by the daemon"))
}

pub(super) fn pins_check(dir: &Path, daemon: bool, privileged: bool) -> Check {
    match pins_found(dir) {
        Ok(found) => {
            // Opening a pinned map needs the privileges to use it.
            let layouts = if !privileged {
                None
            } else if found.as_ref().is_some_and(|f| !f.maps.is_empty()) {
                Some(pins::check_layouts(dir))
            } else {
                Some(Ok(()))
            };
            pins_from(dir, found.as_ref(), layouts, daemon)
        }
        Err(e) => Check::warn("pins", format!("cannot read {}: {e}", dir.display()), "run `limiter doctor` as root"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::doctor::report::Status;

    #[test]
    fn pin_verdicts() {
        let dir = Path::new("/sys/fs/bpf/limiter");
        assert_eq!(pins_from(dir, None, Some(Ok(())), false).status, Status::Ok);
        assert!(pins_from(dir, None, Some(Ok(())), false).finding.starts_with("not loaded"));
        let all = PinsFound {
            maps: pins::maps().map(str::to_owned).collect(),
            sock_ops_link: true,
            xdp_links: vec!["eth0".into()],
        };
        let running = pins_from(dir, Some(&all), Some(Ok(())), true);
        assert_eq!(running.status, Status::Ok, "{running:?}");
        let n = pins::maps().count();
        let want = format!("present: {n} of {n} maps, sock_ops link, XDP links: eth0");
        assert!(running.finding.starts_with(&want), "{running:?}");
        let orphan = pins_from(dir, Some(&all), Some(Ok(())), false);
        assert_eq!(orphan.status, Status::Warn);
        assert!(orphan.finding.contains("enforcement continues without a daemon"), "{orphan:?}");
        assert!(
            orphan
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("systemctl start limiter") && f.contains("limiter unload"))
        );
        let stale = pins_from(dir, Some(&all), Some(Err("pinned map CONNS is Hash with 16-byte keys".into())), true);
        assert_eq!(stale.status, Status::Warn);
        assert!(stale.finding.contains("incompatible version"), "{stale:?}");
        let partial = PinsFound { maps: vec!["CONNS".into(), "COUNTERS".into()], ..PinsFound::default() };
        let old = pins_from(dir, Some(&partial), Some(Ok(())), true);
        assert_eq!(old.status, Status::Warn);
        assert!(old.finding.contains("missing") && old.finding.contains("LISTS"), "{old:?}");
    }
}
