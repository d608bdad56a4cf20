//! Real mail and FTP clients, the Python standard library's, run in a test
//! namespace: `smtplib`, `imaplib`, `poplib`, `ftplib` (and their implicit
//! TLS variants trusting a test CA) connect, and the reply the client saw
//! comes back to Rust for exact assertions: the server's greeting, or the
//! exception the client raised with the server's line in it. Every client
//! is bounded by a socket timeout and the process by a deadline.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::netns::Netns;

const PYTHON: &str = "/usr/bin/python3";

/// Whether Debian's `python3` is installed (a need for [`crate::require!`]).
pub fn installed() -> crate::Need {
    if Path::new(PYTHON).exists() { Ok(()) } else { Err(format!("{PYTHON} not installed")) }
}

/// Which client, and whether it speaks TLS from the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Smtp,
    /// `smtplib.SMTP_SSL` (port 465).
    Smtps,
    Imap,
    /// `imaplib.IMAP4_SSL` (port 993).
    Imaps,
    Pop3,
    /// `poplib.POP3_SSL` (port 995).
    Pop3s,
    Ftp,
}

impl Proto {
    const fn name(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Smtps => "smtps",
            Self::Imap => "imap",
            Self::Imaps => "imaps",
            Self::Pop3 => "pop3",
            Self::Pop3s => "pop3s",
            Self::Ftp => "ftp",
        }
    }
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The Python exception the client raised (`SMTPConnectError`,
    /// `error` for imaplib's, `error_proto`, `error_temp`,
    /// `ConnectionResetError`, `TimeoutError`, `SSLError`...), `None` if
    /// it was greeted.
    pub error: Option<String>,
    /// The server's line as the client reported it, without CRLF: the
    /// greeting (`* OK ...`, `+OK ...`, `220 ...`; SMTP as `CODE TEXT`),
    /// or the refusal in the exception (`421 4.7.0 ...`, `* BYE ...`,
    /// `-ERR ...`, `421 ...`); for other errors the exception's text.
    pub line: String,
}

impl Reply {
    /// Whether the client was greeted (no exception).
    #[must_use]
    pub const fn greeted(&self) -> bool {
        self.error.is_none()
    }
}

/// Where and how a client connects.
#[derive(Debug, Clone)]
pub struct Client {
    pub proto: Proto,
    /// The server's address.
    pub dst: SocketAddr,
    /// The source address to bind (one the test added to the client side).
    pub src: Option<IpAddr>,
    /// The CA the TLS variants trust; without it only the system's CAs,
    /// so a test server's certificate fails.
    pub ca: Option<PathBuf>,
    /// The name the client uses for the server (SMTP, SNI and the
    /// certificate check); it still connects to `dst`. Defaults to `dst`'s
    /// address.
    pub host: Option<String>,
    /// Bounds connecting and every read (Python's socket timeout).
    pub timeout: Duration,
}

impl Client {
    #[must_use]
    pub const fn new(proto: Proto, dst: SocketAddr) -> Self {
        Self { proto, dst, src: None, ca: None, host: None, timeout: Duration::from_secs(5) }
    }

    #[must_use]
    pub const fn from(mut self, src: IpAddr) -> Self {
        self.src = Some(src);
        self
    }

    /// Trusts `ca` and checks the server's certificate for `host`.
    #[must_use]
    pub fn tls(mut self, ca: &Path, host: &str) -> Self {
        self.ca = Some(ca.to_owned());
        self.host = Some(host.to_owned());
        self
    }

    #[must_use]
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects in `ns`, reads the greeting (or the refusal), says goodbye
    /// politely if greeted, and returns what it saw.
    #[must_use]
    pub fn greet(&self, ns: &Netns) -> Reply {
        let mut held = self.hold(ns);
        let reply = held.reply.clone();
        held.release();
        reply
    }

    /// Like [`Self::greet`], but the session stays open (the client waits)
    /// until the returned [`Held`] is released or dropped: for tests that
    /// hold N sessions and try one more.
    #[must_use]
    pub fn hold(&self, ns: &Netns) -> Held {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(PYTHON)
            .args(["-I", "-c", SCRIPT])
            .arg(self.proto.name())
            .arg(self.host.clone().unwrap_or_else(|| self.dst.ip().to_string()))
            .arg(self.dst.ip().to_string())
            .arg(self.dst.port().to_string())
            .arg(self.src.map(|s| s.to_string()).unwrap_or_default())
            .arg(self.ca.as_ref().map(|p| p.display().to_string()).unwrap_or_default())
            .arg(self.timeout.as_secs_f64().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("python stdout");
        // The connect and the greeting are bounded by the socket timeout;
        // the deadline covers Python's start on a slow machine too.
        let limit = self.timeout * 2 + Duration::from_secs(10);
        let mut held = Held { child, stdin, limit, reply: Reply { error: None, line: String::new() } };
        let Some(line) = first_line(stdout, limit) else {
            let err = held.finish();
            panic!("{self:?}: no reply within {limit:?}: {err}");
        };
        held.reply = parse(&line).unwrap_or_else(|| panic!("{self:?}: bad output {line:?}"));
        held
    }
}

/// A client session left open; released (QUIT/LOGOUT, then the process
/// ends) by [`Held::release`] or on drop.
pub struct Held {
    pub reply: Reply,
    child: Child,
    stdin: Option<ChildStdin>,
    limit: Duration,
}

impl Held {
    /// Ends the session politely and waits for the client to exit.
    pub fn release(&mut self) {
        let err = self.finish();
        assert!(err.is_empty() || std::thread::panicking(), "client failed: {err}");
    }

    /// Closes stdin (the client's cue), waits up to the limit, kills
    /// after; returns what the client wrote to stderr.
    fn finish(&mut self) -> String {
        drop(self.stdin.take());
        let deadline = Instant::now() + self.limit;
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return format!("killed after {:?}", self.limit);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// The first line of the client's output, or `None` after `limit`.
fn first_line(stdout: ChildStdout, limit: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(limit).ok().filter(|l| !l.is_empty())
}

/// The client's one JSON line: `{"error": null | "Name", "line": "..."}`.
fn parse(line: &str) -> Option<Reply> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(Reply { error: v["error"].as_str().map(str::to_owned), line: v["line"].as_str()?.to_owned() })
}

/// argv: proto host ip port src ca timeout. Prints one JSON line, then, if
/// greeted, waits for stdin to close and says goodbye.
const SCRIPT: &str = r#"
import ftplib, imaplib, json, poplib, smtplib, socket, ssl, sys
proto, host, ip, port, src, ca, timeout = sys.argv[1:8]
port, timeout = int(port), float(timeout)
real = socket.create_connection
def create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **kw):
    # The client names `host`; the test's address is where it connects.
    h, p = address[0], address[1]
    if h == host:
        h = ip
    return real((h, p), timeout, (src, 0) if src else source_address, **kw)
socket.create_connection = create_connection
# Without a test CA only the system's CAs are trusted: a test server fails.
ctx = ssl.create_default_context(cafile=ca or None) if proto.endswith("s") else None
def text(x):
    return (x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)).rstrip("\r\n")
def greet():
    if proto in ("smtp", "smtps"):
        c = smtplib.SMTP(timeout=timeout) if proto == "smtp" else smtplib.SMTP_SSL(timeout=timeout, context=ctx)
        # SMTP_SSL takes the TLS server name from the host given to its
        # constructor, which would also connect; name it for connect().
        c._host = host
        code, msg = c.connect(host, port)
        if code != 220:  # what smtplib.SMTP(host, port) does
            c.close()
            raise smtplib.SMTPConnectError(code, msg)
        return c, f"{code} {text(msg)}", c.quit
    if proto in ("imap", "imaps"):
        c = imaplib.IMAP4(host, port, timeout=timeout) if proto == "imap" else imaplib.IMAP4_SSL(host, port, ssl_context=ctx, timeout=timeout)
        return c, text(c.welcome), c.logout
    if proto in ("pop3", "pop3s"):
        c = poplib.POP3(host, port, timeout=timeout) if proto == "pop3" else poplib.POP3_SSL(host, port, timeout=timeout, context=ctx)
        return c, text(c.getwelcome()), c.quit
    if proto == "ftp":
        c = ftplib.FTP(timeout=timeout)
        return c, text(c.connect(host, port)), c.quit
    raise SystemExit(f"unknown protocol {proto}")
def refusal(e):
    if isinstance(e, smtplib.SMTPResponseException):
        return f"{e.smtp_code} {text(e.smtp_error)}"
    if isinstance(e, (imaplib.IMAP4.error, poplib.error_proto, ftplib.Error)) and e.args:
        return text(e.args[0])
    return text(e)
try:
    c, line, bye = greet()
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "line": refusal(e)}), flush=True)
    sys.exit(0)
print(json.dumps({"error": None, "line": line}), flush=True)
sys.stdin.read()
try:
    bye()
except Exception as e:
    print(f"goodbye failed: {type(e).__name__}: {e}", file=sys.stderr)
"#;
