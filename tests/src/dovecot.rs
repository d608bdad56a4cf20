//! A private Dovecot (the Debian packages `dovecot-imapd`, `dovecot-pop3d`)
//! in a test namespace: IMAP and POP3 on chosen ports, optionally IMAPS and
//! POP3S with a test certificate, one passwd-file user, its config, state,
//! mail and log under a scratch dir, stopped in `Drop` (also on panic).
//!
//! What it logs per connection: at the default level the login process
//! (`imap-login`, `pop3-login`) writes exactly one line when a connection
//! ends before or at login: `Info: Disconnected: ...` (no login, closed,
//! reset, TLS failure) or `Info: Login: user=<...>`, each with
//! `rip=SOURCE`. Nothing is logged when a connection opens (no log filter
//! of 2.3 logs per connection then), so count after the clients closed.

use std::{
    fs::File,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    netns::{Netns, unique},
    scratch::Scratch,
    tls::Certs,
};

const DOVECOT: &str = "/usr/sbin/dovecot";
const IMAP_LOGIN: &str = "/usr/lib/dovecot/imap-login";
const POP3_LOGIN: &str = "/usr/lib/dovecot/pop3-login";
/// The one user of every instance, and its password.
pub const USER: &str = "test";
pub const PASSWORD: &str = "secret";
/// The uid and gid mail is stored as (`nobody`: no system user needed).
const MAIL_UID: u32 = 65534;

/// Whether Dovecot with IMAP and POP3 is installed (a need for
/// [`crate::require!`], after [`crate::privileged`]).
pub fn installed() -> crate::Need {
    let missing: Vec<&str> = [DOVECOT, IMAP_LOGIN, POP3_LOGIN].into_iter().filter(|p| !Path::new(p).exists()).collect();
    if missing.is_empty() { Ok(()) } else { Err(format!("{missing:?} not installed")) }
}

/// The ports an instance listens on (all addresses, IPv4 and IPv6).
/// `None` leaves a listener out; the TLS ones need [`Certs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub imap: Option<u16>,
    pub pop3: Option<u16>,
    pub imaps: Option<u16>,
    pub pop3s: Option<u16>,
}

/// Which login service a connection reached (IMAPS counts as IMAP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    Imap,
    Pop3,
}

impl Login {
    const fn service(self) -> &'static str {
        match self {
            Self::Imap => "imap-login",
            Self::Pop3 => "pop3-login",
        }
    }
}

/// A running Dovecot in a namespace.
pub struct Dovecot {
    pub ports: Ports,
    conf: PathBuf,
    log: PathBuf,
    pid: Option<libc::pid_t>,
    /// Removed after the instance stopped (fields drop after `drop`).
    dir: Scratch,
}

impl Dovecot {
    /// Writes a private configuration, starts Dovecot in `ns` and waits
    /// until every listener of `ports` is up. `certs` is needed for the
    /// TLS ports and also offers STARTTLS on the plain ones.
    #[must_use]
    pub fn start(ns: &Netns, ports: Ports, certs: Option<&Certs>) -> Self {
        assert!(certs.is_some() || (ports.imaps.is_none() && ports.pop3s.is_none()), "IMAPS/POP3S need a certificate");
        let dir = Scratch::new();
        let home = dir.0.join("mail").join(USER);
        std::fs::create_dir_all(&home).expect("dovecot mail home");
        std::fs::create_dir_all(dir.0.join("base")).expect("dovecot base_dir");
        std::fs::create_dir_all(dir.0.join("state")).expect("dovecot state_dir");
        // SAFETY: a path we just made; chown has no other preconditions.
        let c = std::ffi::CString::new(home.to_str().expect("utf-8 temp path")).expect("no NUL");
        assert_eq!(unsafe { libc::chown(c.as_ptr(), MAIL_UID, MAIL_UID) }, 0, "chown {}", home.display());
        dir.write("users", &format!("{USER}:{{PLAIN}}{PASSWORD}:{MAIL_UID}:{MAIL_UID}::{}\n", home.display()));
        let conf = dir.write("dovecot.conf", &config(&dir.0, ports, certs));
        let log = dir.0.join("dovecot.log");
        let mut d = Self { ports, conf, log, pid: None, dir };
        // The master forks into the background and its children keep the
        // start's stdout and stderr: a file, not a pipe nobody would close.
        let out = d.dir.0.join("start.out");
        let file = || File::options().create(true).append(true).open(&out).expect("dovecot output file");
        let status = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(DOVECOT)
            .arg("-c")
            .arg(&d.conf)
            .stdin(Stdio::null())
            .stdout(file())
            .stderr(file())
            .status()
            .expect("run dovecot");
        // From here `Drop` stops it.
        d.pid = d.master_pid();
        assert!(
            status.success(),
            "dovecot -c {} failed ({status}): {}\n{}",
            d.conf.display(),
            std::fs::read_to_string(&out).unwrap_or_default(),
            d.log()
        );
        for port in [ports.imap, ports.pop3, ports.imaps, ports.pop3s].into_iter().flatten() {
            assert!(
                ns.wait_listening(port, crate::patience(Duration::from_secs(15))),
                "dovecot does not listen on {port}: {}",
                d.log()
            );
        }
        d.pid = d.master_pid();
        d
    }

    /// The instance's log (`log_path`: errors and info lines).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Connections to `login` that ended, from any source (see the module
    /// doc: one line per connection, written when it ends).
    #[must_use]
    pub fn connections(&self, login: Login) -> usize {
        count(&self.log(), login, None)
    }

    /// [`Self::connections`] from one source address.
    #[must_use]
    pub fn connections_from(&self, login: Login, src: IpAddr) -> usize {
        count(&self.log(), login, Some(src))
    }

    /// Waits up to `limit` until [`Self::connections_from`] (or, without a
    /// source, [`Self::connections`]) reaches `want`, and returns the count
    /// then (lines are written a moment after a connection ends).
    pub fn wait_connections(&self, login: Login, src: Option<IpAddr>, want: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let n = count(&self.log(), login, src);
            if n >= want || Instant::now() >= deadline {
                return n;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The scratch dir that holds the config, state, mail and log.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    fn master_pid(&self) -> Option<libc::pid_t> {
        std::fs::read_to_string(self.dir.0.join("base/master.pid")).ok()?.trim().parse().ok()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let Some(pid) = self.pid.or_else(|| self.master_pid()) else { return };
        // `dovecot stop` signals the master, which stops its children
        // (shutdown_clients) and removes its sockets.
        let _ = Command::new(DOVECOT)
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        crate::scratch::reap(pid, Duration::from_secs(5));
    }
}

/// The lines of `login` that end a connection, from `src` if given.
fn count(log: &str, login: Login, src: Option<IpAddr>) -> usize {
    let svc = login.service();
    let (ended, logged_in) = (format!(" {svc}: Info: Disconnected"), format!(" {svc}: Info: Login: "));
    let rip = src.map(|s| format!(" rip={s},"));
    log.lines()
        .filter(|l| l.contains(&ended) || l.contains(&logged_in))
        .filter(|l| rip.as_ref().is_none_or(|r| l.contains(r.as_str())))
        .count()
}

/// The whole configuration: nothing is read from /etc/dovecot.
fn config(dir: &Path, ports: Ports, certs: Option<&Certs>) -> String {
    let d = dir.display();
    let port = |p: Option<u16>| p.unwrap_or(0);
    let ssl = certs.map_or_else(
        || "ssl = no\n".to_owned(),
        |c| format!("ssl = yes\nssl_cert = <{}\nssl_key = <{}\n", c.chain.display(), c.key.display()),
    );
    let name = unique("limiter-dovecot-");
    format!(
        "# Written by limiter's tests: a private instance, one user, no system files.
instance_name = {name}
base_dir = {d}/base
state_dir = {d}/state
log_path = {d}/dovecot.log
listen = *, ::
protocols = imap pop3
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
",
        imap = port(ports.imap),
        imaps = port(ports.imaps),
        pop3 = port(ports.pop3),
        pop3s = port(ports.pop3s),
    )
}
