//! A private Postfix (the Debian package) in a test namespace, and a small
//! SMTP client to drive it. The instance has its own config, queue and log
//! under the temp dir, accepts and discards all mail, and is stopped and
//! removed in `Drop`, also on panic.

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::netns::{Netns, sh, unique};

const POSTFIX: &str = "/usr/sbin/postfix";
const POSTCONF: &str = "/usr/sbin/postconf";
/// `postfix` prints its errors only to a terminal; `script` gives it one.
const SCRIPT: &str = "/usr/bin/script";
/// Our config dirs all start with this; stale entries for missing dirs
/// (from a run that was killed) are pruned from the default main.cf.
const DIR_PREFIX: &str = "limiter-postfix-";
/// Serializes edits of the default main.cf between tests and processes
/// (a file in the temp dir).
const MAIN_CF_LOCK: &str = "limiter-postfix-main-cf.lock";

/// Whether Postfix is installed (a need for [`crate::require!`], after
/// [`crate::privileged`]).
pub fn installed() -> crate::Need {
    let missing: Vec<&str> = [POSTFIX, POSTCONF, SCRIPT].into_iter().filter(|p| !Path::new(p).exists()).collect();
    if missing.is_empty() { Ok(()) } else { Err(format!("{missing:?} not installed")) }
}

/// A running Postfix instance listening on `port` in a namespace.
pub struct Postfix {
    pub dir: PathBuf,
    pub port: u16,
    ns: PathBuf,
    registered: bool,
    started: bool,
}

impl Postfix {
    /// Writes a private configuration, registers it in the default
    /// main.cf, starts Postfix in `ns` and waits until it listens.
    #[must_use]
    pub fn start(ns: &Netns, port: u16) -> Self {
        let dir = std::env::temp_dir().join(unique(DIR_PREFIX));
        let mut p = Self { dir, port, ns: ns.path(), registered: false, started: false };
        std::fs::create_dir_all(p.dir.join("queue")).expect("postfix queue dir");
        std::fs::create_dir_all(p.dir.join("data")).expect("postfix data dir");
        sh(&["chown", "postfix:", &p.path("data")]);
        std::fs::write(p.dir.join("main.cf"), p.main_cf()).expect("write main.cf");
        std::fs::write(p.dir.join("master.cf"), p.master_cf()).expect("write master.cf");
        register(&p.dir, true).unwrap_or_else(|e| panic!("register {} in the default main.cf: {e}", p.dir.display()));
        p.registered = true;
        p.postfix(ns, "set-permissions");
        p.started = true;
        p.postfix(ns, "start");
        p.wait_listening(ns);
        p
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("utf-8 temp path").to_owned()
    }

    fn main_cf(&self) -> String {
        let d = self.dir.display();
        format!(
            "# Written by limiter's tests: accept everything from the test nets, discard it.
compatibility_level = 3.6
myhostname = limiter-test.example
queue_directory = {d}/queue
data_directory = {d}/data
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
inet_interfaces = all
inet_protocols = all
mynetworks = 127.0.0.0/8 [::1]/128 198.18.0.0/15 [2001:db8::]/32
mydestination =
relay_domains =
local_recipient_maps =
default_transport = discard:
local_transport = discard:
relay_transport = discard:
biff = no
# No resolver in a test namespace: never wait for DNS.
smtpd_peername_lookup = no
# Postfix's own per-client limits would blur what the limiter does.
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
"
        )
    }

    /// Only the services an SMTP server that discards needs, none chrooted
    /// (a chroot would need copies of /etc files in the queue dir).
    fn master_cf(&self) -> String {
        format!(
            "{port:<9} inet  n       -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
",
            port = self.port
        )
    }

    /// `postfix -c DIR CMD` in the namespace, through a terminal so that a
    /// failure shows Postfix's own message.
    fn postfix(&self, ns: &Netns, cmd: &str) {
        let line = format!("{POSTFIX} -c {} {cmd}", self.path(""));
        assert!(!line.contains(['\'', '"', '$', '`']), "unsafe shell line {line}");
        ns.exec(&[SCRIPT, "-qec", &line, "/dev/null"]);
    }

    fn wait_listening(&self, ns: &Netns) {
        let deadline = Instant::now() + crate::patience(Duration::from_secs(10));
        let filter = format!("sport = :{}", self.port);
        loop {
            if !ns.exec(&["ss", "-Hltn", &filter]).trim().is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "postfix does not listen on {}: {}", self.port, self.log());
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The instance's log (`maillog_file`).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Waits up to `limit` until `count(log)` is at least `want`; returns
    /// the last log read.
    pub fn wait_log(&self, want: usize, limit: Duration, count: impl Fn(&str) -> usize) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if count(&log) >= want || Instant::now() >= deadline {
                return log;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn master_pid(&self) -> Option<libc::pid_t> {
        std::fs::read_to_string(self.dir.join("queue/pid/master.pid")).ok()?.trim().parse().ok()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.started {
            let pid = self.master_pid();
            let line = format!("{POSTFIX} -c {} stop", self.path(""));
            let _ = Command::new("nsenter")
                .arg(format!("--net={}", self.ns.display()))
                .args([SCRIPT, "-qec", &line, "/dev/null"])
                .output();
            if let Some(pid) = pid {
                // The master stops its children; make sure it is gone.
                crate::scratch::reap(pid, Duration::from_secs(5));
            }
        }
        if self.registered
            && let Err(e) = register(&self.dir, false)
        {
            eprintln!("unregister {} from the default main.cf: {e}", self.dir.display());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Adds `dir` to (or removes it from) `alternate_config_directories` in the
/// default main.cf, without which `postfix -c DIR` refuses the directory.
/// Postfix keeps only the last definition of a parameter, so the list is
/// edited as one value, under a lock; entries of ours whose directory is
/// gone (a killed run) are dropped on the way.
fn register(dir: &Path, add: bool) -> Result<(), String> {
    let lock = File::create(std::env::temp_dir().join(MAIN_CF_LOCK)).map_err(|e| format!("lock file: {e}"))?;
    lock.lock().map_err(|e| format!("lock: {e}"))?;
    let current = postconf(&["-h", "alternate_config_directories"])?;
    let me = dir.to_str().ok_or("non-UTF-8 temp path")?;
    let ours_and_gone = |d: &str| {
        Path::new(d).file_name().is_some_and(|n| n.to_string_lossy().starts_with(DIR_PREFIX)) && !Path::new(d).exists()
    };
    let mut dirs: Vec<&str> = current
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|d| !d.is_empty() && *d != me && !ours_and_gone(d))
        .collect();
    if add {
        dirs.push(me);
    }
    if dirs.is_empty() {
        postconf(&["-X", "alternate_config_directories"]).map(drop)
    } else {
        postconf(&["-e", &format!("alternate_config_directories = {}", dirs.join(", "))]).map(drop)
    }
}

/// Runs `postconf ARGS` on the default main.cf; returns its output.
fn postconf(args: &[&str]) -> Result<String, String> {
    let out = Command::new(POSTCONF).args(args).output().map_err(|e| format!("postconf {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("postconf {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One SMTP session over a connected stream, every read and write bounded.
/// The `try_` methods return errors (for the flood benchmark, where failures
/// are data); the others panic with the same message (for tests).
pub struct Smtp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

/// A reply other than the one expected, as an `io::Error` like the
/// transport's own failures (a timeout shows as `WouldBlock`).
fn smtp_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Smtp {
    /// Takes a connected stream and reads the 220 greeting.
    #[must_use]
    pub fn greet(stream: TcpStream) -> Self {
        Self::try_greet(stream, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Takes a connected stream and reads the 220 greeting; `timeout` bounds
    /// every later read and write.
    pub fn try_greet(stream: TcpStream, timeout: Duration) -> io::Result<Self> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut s = Self { stream, reader };
        s.expect(220)?;
        Ok(s)
    }

    /// Reads one (possibly multi-line) reply and returns its last line.
    fn reply(&mut self) -> io::Result<String> {
        loop {
            let mut line = String::new();
            let n =
                self.reader.read_line(&mut line).map_err(|e| io::Error::new(e.kind(), format!("SMTP read: {e}")))?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "SMTP server closed the connection"));
            }
            // "250-..." continues, "250 ..." ends the reply.
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.trim_end().to_owned());
            }
        }
    }

    fn expect(&mut self, code: u16) -> io::Result<String> {
        let line = self.reply()?;
        if line.starts_with(&format!("{code} ")) {
            Ok(line)
        } else {
            Err(smtp_error(format!("want {code}, got {line:?}")))
        }
    }

    /// Sends one command line and expects the reply `code`.
    pub fn cmd(&mut self, line: &str, code: u16) -> String {
        self.try_cmd(line, code).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends one command line and expects the reply `code`.
    pub fn try_cmd(&mut self, line: &str, code: u16) -> io::Result<String> {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| io::Error::new(e.kind(), format!("SMTP {line}: {e}")))?;
        self.expect(code)
    }

    /// EHLO, MAIL, RCPT, DATA; returns the queue id from the 250 reply.
    pub fn send_mail(&mut self, tag: &str) -> String {
        self.try_send_mail(tag).unwrap_or_else(|e| panic!("{e}"))
    }

    /// EHLO, MAIL, RCPT, DATA; returns the queue id from the 250 reply.
    pub fn try_send_mail(&mut self, tag: &str) -> io::Result<String> {
        self.try_cmd("EHLO client.limiter-test.example", 250)?;
        self.try_cmd("MAIL FROM:<sender@limiter-test.example>", 250)?;
        self.try_cmd(&format!("RCPT TO:<{tag}@example.net>"), 250)?;
        self.try_cmd("DATA", 354)?;
        let body = format!("Subject: limiter test {tag}\r\n\r\nSession {tag}.\r\n.");
        let done = self.try_cmd(&body, 250)?;
        let (_, id) = done.rsplit_once("queued as ").ok_or_else(|| smtp_error(format!("no queue id in {done:?}")))?;
        Ok(id.trim().to_owned())
    }

    /// QUIT, 221, then close.
    pub fn quit(self) {
        self.try_quit().unwrap_or_else(|e| panic!("{e}"));
    }

    /// QUIT, 221, then close.
    pub fn try_quit(mut self) -> io::Result<()> {
        self.try_cmd("QUIT", 221).map(drop)
    }
}
