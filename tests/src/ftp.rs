//! A private vsftpd (the Debian package) in a test namespace: standalone on
//! a chosen port (IPv4 and IPv6), anonymous read-only, its config, empty
//! root and log under a scratch dir, stopped with all its session processes
//! in `Drop` (also on panic).
//!
//! What it logs per connection: `vsftpd_log_file` gets
//! `[pid N] CONNECT: Client "ADDR"` as soon as a connection is accepted,
//! before the 220 greeting, also for one closed at once. IPv4 clients show
//! as `::ffff:198.18.x.y` (one IPv6 socket serves both families).

use std::{
    fs::File,
    net::IpAddr,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use crate::{netns::Netns, scratch::Scratch};

const VSFTPD: &str = "/usr/sbin/vsftpd";

/// Whether vsftpd is installed (a need for [`crate::require!`], after
/// [`crate::privileged`]).
pub fn installed() -> crate::Need {
    if Path::new(VSFTPD).exists() { Ok(()) } else { Err(format!("{VSFTPD} not installed")) }
}

/// A running vsftpd listening on `port` in a namespace.
pub struct Vsftpd {
    pub port: u16,
    child: Child,
    log: PathBuf,
    /// Removed after the server stopped (fields drop after `drop`).
    dir: Scratch,
}

impl Vsftpd {
    /// Writes a private configuration, starts vsftpd in `ns` in the
    /// foreground (a child of the test, in a process group of its own) and
    /// waits until it listens.
    #[must_use]
    pub fn start(ns: &Netns, port: u16) -> Self {
        let dir = Scratch::new();
        // vsftpd refuses a root or chroot dir others can write to.
        for sub in ["root", "empty"] {
            let p = dir.0.join(sub);
            std::fs::create_dir_all(&p).expect("vsftpd dir");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o555)).expect("chmod vsftpd dir");
        }
        let conf = dir.write("vsftpd.conf", &config(&dir.0, port));
        let log = dir.0.join("vsftpd.log");
        // vsftpd writes its start-up errors ("500 OOPS: ...") to fd 0, the
        // control connection of inetd mode: give it a file there.
        let out = File::options().read(true).create(true).append(true).open(dir.0.join("output"));
        let out = out.expect("vsftpd output file");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(VSFTPD)
            .arg(&conf)
            .stdin(out.try_clone().expect("dup"))
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            // Its session processes stay in this group: `Drop` ends them all.
            .process_group(0)
            .spawn()
            .expect("spawn vsftpd");
        let mut f = Self { port, child, log, dir };
        let deadline = Instant::now() + crate::patience(Duration::from_secs(15));
        while !ns.wait_listening(port, Duration::ZERO) {
            if let Ok(Some(status)) = f.child.try_wait() {
                panic!("vsftpd exited ({status}): {}", f.output());
            }
            assert!(Instant::now() < deadline, "vsftpd does not listen on {port}: {}", f.output());
            thread::sleep(Duration::from_millis(50));
        }
        f
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("output")).unwrap_or_default()
    }

    /// The server's log (`vsftpd_log_file`, with the FTP dialogue).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Connections accepted so far, from any source (see the module doc).
    #[must_use]
    pub fn connections(&self) -> usize {
        count(&self.log(), None)
    }

    /// [`Self::connections`] from one source address.
    #[must_use]
    pub fn connections_from(&self, src: IpAddr) -> usize {
        count(&self.log(), Some(src))
    }

    /// Waits up to `limit` until the count (from `src`, or from any source)
    /// reaches `want`, and returns the count then.
    pub fn wait_connections(&self, src: Option<IpAddr>, want: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let n = count(&self.log(), src);
            if n >= want || Instant::now() >= deadline {
                return n;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        let Ok(pgid) = libc::pid_t::try_from(self.child.id()) else { return };
        // SAFETY: signalling the process group we made for this server.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(self.child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        // Sessions that outlived the listener, or a listener that hung.
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The `CONNECT` lines, from `src` if given.
fn count(log: &str, src: Option<IpAddr>) -> usize {
    let who: Vec<String> = match src {
        None => vec![String::new()],
        Some(IpAddr::V4(a)) => vec![format!("\"{a}\""), format!("\"::ffff:{a}\"")],
        Some(IpAddr::V6(a)) => vec![format!("\"{a}\"")],
    };
    log.lines()
        .filter_map(|l| l.split_once("] CONNECT: Client ").map(|(_, rest)| rest))
        .filter(|rest| who.iter().any(|w| rest.starts_with(w.as_str())))
        .count()
}

fn config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "# Written by limiter's tests: one private, anonymous, read-only server.
# One IPv6 socket serves IPv4 too; in the foreground, so the test owns it.
listen=NO
listen_ipv6=YES
listen_port={port}
background=NO
anonymous_enable=YES
anon_root={d}/root
no_anon_password=YES
local_enable=NO
write_enable=NO
secure_chroot_dir={d}/empty
# Every connection and the whole dialogue in our own log, none in syslog.
syslog_enable=NO
xferlog_enable=YES
xferlog_std_format=NO
dual_log_enable=NO
vsftpd_log_file={d}/vsftpd.log
log_ftp_protocol=YES
# vsftpd's own limits would blur what the limiter does.
max_clients=0
max_per_ip=0
# A network namespace per session costs milliseconds of kernel work each
# (more on a slow machine) and the tests' namespaces isolate it already.
isolate=NO
isolate_network=NO
# vsftpd 3.0.3's seccomp filter predates this kernel and C library; a
# session it killed would look like a refusal to the tests.
seccomp_sandbox=NO
"
    )
}
