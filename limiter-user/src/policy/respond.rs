//! What a `respond` service says to a refused client: its [`Protocol`] (from
//! the config or guessed from the service's name and ports), the refusal
//! [`Reason`]s, the default line per protocol and reason, the admin's
//! overrides ([`Texts`]), their checks, and [`render`], which fills the
//! placeholders into one CRLF-terminated line. The bottom of `policy/`: it
//! imports none of its siblings, and reads no file (the TLS files are paths).

use std::{fmt::Write as _, path::PathBuf};

use serde::{Deserialize, Serialize};

/// Longest line sent, CRLF included: SMTP's reply line limit (RFC 5321
/// 4.5.3.1.5), which the other protocols' clients read too.
pub const MAX_LINE: usize = 512;
/// Longest `{host}` filled in (a DNS name's limit); longer is cut.
pub const MAX_HOST: usize = 253;
/// Longest `{source}` filled in (an IPv6 address with an IPv4 tail and `/128`).
pub const MAX_SOURCE: usize = 49;
/// The placeholders a text may hold.
pub const PLACEHOLDERS: [&str; 4] = ["limit", "count", "source", "host"];

/// The well-known ports on which a client starts TLS before the protocol
/// speaks (SMTPS, IMAPS, POP3S, FTPS): a service's implicit-TLS ports when
/// its `implicit_tls_ports` is not set. There the refusal must be sent
/// inside TLS, so without `tls_cert` and `tls_key` they fall back to `reset`.
pub const IMPLICIT_TLS_PORTS: [u16; 4] = [465, 993, 995, 990];

/// The protocol a service speaks, which decides the refusal's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Smtp,
    Imap,
    Pop3,
    Ftp,
}

impl Protocol {
    pub const ALL: [Self; 4] = [Self::Smtp, Self::Imap, Self::Pop3, Self::Ftp];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Imap => "imap",
            Self::Pop3 => "pop3",
            Self::Ftp => "ftp",
        }
    }

    /// How every refusal line of the protocol starts: a temporary failure
    /// that closes (SMTP and FTP `421`, IMAP's untagged `BYE`, POP3's `-ERR`).
    #[must_use]
    pub const fn code(self) -> &'static str {
        match self {
            Self::Smtp | Self::Ftp => "421 ",
            Self::Imap => "* BYE ",
            Self::Pop3 => "-ERR ",
        }
    }

    /// The protocol of a service's usual name (`smtp`, `submission`,
    /// `imaps`, ...), or `None`.
    #[must_use]
    pub fn of_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "smtp" | "smtps" | "submission" | "submissions" => Some(Self::Smtp),
            "imap" | "imaps" => Some(Self::Imap),
            "pop3" | "pop3s" => Some(Self::Pop3),
            "ftp" | "ftps" => Some(Self::Ftp),
            _ => None,
        }
    }

    /// The protocol of a well-known port, or `None`.
    #[must_use]
    pub const fn of_port(port: u16) -> Option<Self> {
        match port {
            25 | 465 | 587 => Some(Self::Smtp),
            143 | 993 => Some(Self::Imap),
            110 | 995 => Some(Self::Pop3),
            21 | 990 => Some(Self::Ftp),
            _ => None,
        }
    }

    /// The default for a service without `protocol`: its name's, else the one
    /// protocol its well-known ports agree on; `None` when neither says
    /// (then the service cannot `respond`).
    #[must_use]
    pub fn guess(name: &str, ports: &[u16]) -> Option<Self> {
        if let Some(p) = Self::of_name(name) {
            return Some(p);
        }
        let mut known = ports.iter().filter_map(|&p| Self::of_port(p));
        let first = known.next()?;
        known.all(|p| p == first).then_some(first)
    }
}

/// Why an attempt was refused: the decision's rules, each with its own text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The source holds its limit of connections.
    Connections,
    /// The source has no token left.
    Rate,
    /// The service holds `max_sessions`.
    SessionsFull,
    /// The sessions left are reserved for the reserve list.
    SessionsReserved,
    /// The source is on the deny list.
    Deny,
}

impl Reason {
    pub const ALL: [Self; 5] = [Self::Connections, Self::Rate, Self::SessionsFull, Self::SessionsReserved, Self::Deny];

    /// The key of its text in a `[service.respond]` table.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Rate => "rate",
            Self::SessionsFull => "sessions_full",
            Self::SessionsReserved => "sessions_reserved",
            Self::Deny => "deny",
        }
    }

    /// The reason of a `[service.respond]` key.
    #[must_use]
    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == key)
    }
}

/// The built-in line of a protocol and reason, with its placeholders. All
/// are temporary: a client retries later or elsewhere, none gives up.
#[must_use]
pub const fn default_text(protocol: Protocol, reason: Reason) -> &'static str {
    use Protocol::{Ftp, Imap, Pop3, Smtp};
    use Reason::{Connections, Deny, Rate, SessionsFull, SessionsReserved};
    match (protocol, reason) {
        (Smtp, Connections) => "421 4.7.0 {host} Too many connections from your IP ({limit}), try again later",
        (Smtp, Rate) => "421 4.7.0 {host} Too many connection attempts from your IP, try again later",
        (Smtp, SessionsFull) => "421 4.3.2 {host} Too many sessions, try again later",
        (Smtp, SessionsReserved) => "421 4.3.2 {host} Too many sessions, the rest are reserved, try again later",
        (Smtp, Deny) => "421 4.7.0 {host} Access from your IP is temporarily refused",
        (Imap, Connections) => "* BYE [UNAVAILABLE] Too many connections from your IP ({limit})",
        (Imap, Rate) => "* BYE [UNAVAILABLE] Too many connection attempts from your IP, try again later",
        (Imap, SessionsFull) => "* BYE [UNAVAILABLE] Too many sessions, try again later",
        (Imap, SessionsReserved) => "* BYE [UNAVAILABLE] Too many sessions, the rest are reserved, try again later",
        (Imap, Deny) => "* BYE [UNAVAILABLE] Access from your IP is temporarily refused",
        (Pop3, Connections) => "-ERR [SYS/TEMP] Too many connections from your IP ({limit})",
        (Pop3, Rate) => "-ERR [SYS/TEMP] Too many connection attempts from your IP, try again later",
        (Pop3, SessionsFull) => "-ERR [SYS/TEMP] Too many sessions, try again later",
        (Pop3, SessionsReserved) => "-ERR [SYS/TEMP] Too many sessions, the rest are reserved, try again later",
        (Pop3, Deny) => "-ERR [SYS/TEMP] Access from your IP is temporarily refused",
        (Ftp, Connections) => "421 Too many connections ({limit}) from this IP",
        (Ftp, Rate) => "421 Too many connection attempts from your IP, try again later",
        (Ftp, SessionsFull) => "421 Too many sessions, try again later",
        (Ftp, SessionsReserved) => "421 Too many sessions, the rest are reserved, try again later",
        (Ftp, Deny) => "421 Access from your IP is temporarily refused",
    }
}

/// The admin's texts of one service, by reason (`[service.respond]`); a
/// reason without one says its [`default_text`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Texts {
    overrides: [Option<String>; 5],
}

impl Texts {
    /// Sets the text of `reason`, unchecked ([`check_text`] judges it).
    pub fn set(&mut self, reason: Reason, text: String) {
        self.overrides[reason as usize] = Some(text);
    }

    /// The admin's text of `reason`, if any.
    #[must_use]
    pub fn get(&self, reason: Reason) -> Option<&str> {
        self.overrides[reason as usize].as_deref()
    }

    /// The admin's texts, by reason.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, &str)> {
        Reason::ALL.into_iter().filter_map(|r| self.get(r).map(|t| (r, t)))
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.overrides.iter().all(Option::is_none)
    }

    /// The line `reason` is answered with in `protocol`: the admin's, else
    /// the default.
    #[must_use]
    pub fn template(&self, protocol: Protocol, reason: Reason) -> &str {
        self.get(reason).unwrap_or_else(|| default_text(protocol, reason))
    }
}

/// The certificate chain and key (PEM, the mail server's own) with which
/// the responder completes TLS on implicit-TLS ports. Paths only: policy
/// does not read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a service needs to `respond`, beside its action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Respond {
    /// `None`: neither configured nor guessable; such a service cannot respond.
    pub protocol: Option<Protocol>,
    /// `None`: implicit-TLS ports fall back to `reset`.
    pub tls: Option<TlsFiles>,
    pub texts: Texts,
    /// The service's ports where the client starts with TLS: its
    /// `implicit_tls_ports`, else those of its ports in [`IMPLICIT_TLS_PORTS`].
    pub implicit_tls_ports: Vec<u16>,
}

impl Respond {
    /// The line `reason` is answered with, if the service has a protocol.
    #[must_use]
    pub fn template(&self, reason: Reason) -> Option<&str> {
        self.protocol.map(|p| self.texts.template(p, reason))
    }

    /// Whether a client of `port` starts with TLS (the refusal is sent inside it).
    #[must_use]
    pub fn is_implicit_tls(&self, port: u16) -> bool {
        self.implicit_tls_ports.contains(&port)
    }
}

/// The ports of a service that are implicit TLS by default: the well-known ones.
pub fn implicit_tls(ports: &[u16]) -> impl Iterator<Item = u16> + '_ {
    ports.iter().copied().filter(|p| IMPLICIT_TLS_PORTS.contains(p))
}

/// The values filled into a text's placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Values<'a> {
    /// `{limit}`: the limit the source reached (connections, sessions).
    pub limit: u64,
    /// `{count}`: how many it holds (or how many the service holds).
    pub count: u64,
    /// `{source}`: the client's address or prefix as shown in logs.
    pub source: &'a str,
    /// `{host}`: the name the server greets with (`hostname`, else the host's).
    pub host: &'a str,
}

impl Values<'_> {
    /// The longest values: what [`check_text`] renders a text with.
    pub const LONGEST: Values<'static> = Values {
        limit: u64::MAX,
        count: u64::MAX,
        source: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128",
        host: concat!(
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        ),
    };
}

/// One piece of a text: literal or a placeholder.
enum Piece<'a> {
    Literal(&'a str),
    Placeholder(&'a str),
}

/// The pieces of a text, or why it does not split: a `{` that opens no
/// known placeholder.
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Piece::Literal(&rest[..open]));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("has a '{{' at byte {} without its '}}'", text.len() - rest.len() + open))?;
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            let shown: String = name.chars().take(20).collect();
            return Err(format!(
                "holds an unknown placeholder '{{{shown}}}': expected {{limit}}, {{count}}, {{source}} or {{host}}"
            ));
        }
        out.push(Piece::Placeholder(name));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Literal(rest));
    }
    Ok(out)
}

/// `s` with every byte outside printable ASCII as `?`, at most `max` bytes.
fn printable(s: &str, max: usize) -> impl Iterator<Item = char> + '_ {
    s.chars().map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' }).take(max)
}

/// The line sent for `template` with `v` filled in, CRLF-terminated: one
/// line of printable ASCII, at most [`MAX_LINE`] bytes whatever the values
/// (control characters in them become `?`, overlong ones are cut). A
/// placeholder the template misspells stays as written; [`check_text`]
/// refuses such templates before they get here.
#[must_use]
pub fn render(template: &str, v: &Values<'_>) -> String {
    let mut line = String::with_capacity(MAX_LINE);
    match pieces(template) {
        Ok(pieces) => {
            for piece in pieces {
                match piece {
                    Piece::Literal(s) => line.extend(printable(s, usize::MAX)),
                    Piece::Placeholder("limit") => {
                        let _ = write!(line, "{}", v.limit);
                    }
                    Piece::Placeholder("count") => {
                        let _ = write!(line, "{}", v.count);
                    }
                    Piece::Placeholder("source") => line.extend(printable(v.source, MAX_SOURCE)),
                    Piece::Placeholder(_) => line.extend(printable(v.host, MAX_HOST)),
                }
            }
        }
        Err(_) => line.extend(printable(template, usize::MAX)),
    }
    // Printable ASCII: every byte is a char boundary.
    line.truncate(MAX_LINE - 2);
    line.push_str("\r\n");
    line
}

/// Why an admin's text for `protocol` would not be a valid refusal line:
/// it must start with the protocol's code, hold only known placeholders,
/// be one line of printable ASCII, and fit [`MAX_LINE`] with the longest
/// values filled in.
///
/// # Errors
/// One line saying what is wrong and what is expected.
pub fn check_text(protocol: Protocol, text: &str) -> Result<(), String> {
    if let Some(c) = text.chars().find(|&c| c != ' ' && !c.is_ascii_graphic()) {
        let what = if matches!(c, '\r' | '\n') { "a line break" } else { "a character outside printable ASCII" };
        return Err(format!("holds {what} ({c:?}): expected one line of printable ASCII"));
    }
    let code = protocol.code();
    if !text.starts_with(code) {
        return Err(format!(
            "does not start with '{code}': expected {}'s temporary refusal, e.g. \"{}\"",
            protocol.as_str(),
            default_text(protocol, Reason::Connections)
        ));
    }
    pieces(text)?;
    let longest = longest_len(text);
    if longest > MAX_LINE {
        return Err(format!(
            "is {longest} bytes with the longest values filled in and CRLF: expected at most {MAX_LINE}"
        ));
    }
    Ok(())
}

/// The length of `text` rendered with [`Values::LONGEST`] and CRLF, uncut.
fn longest_len(text: &str) -> usize {
    let v = Values::LONGEST;
    let pieces = pieces(text).unwrap_or_default();
    let len = pieces
        .iter()
        .map(|p| match p {
            Piece::Literal(s) => s.len(),
            Piece::Placeholder("limit") => v.limit.to_string().len(),
            Piece::Placeholder("count") => v.count.to_string().len(),
            Piece::Placeholder("source") => v.source.len().min(MAX_SOURCE),
            Piece::Placeholder(_) => v.host.len().min(MAX_HOST),
        })
        .sum::<usize>();
    len + 2
}

/// Why a configured `hostname` is not a host name: 1 to 253 bytes of
/// dot-separated labels of 1 to 63 letters, digits and inner `-`.
///
/// # Errors
/// One line saying what is expected.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= MAX_HOST && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("expected a host name: at most 253 bytes of dot-separated labels of letters, digits and '-', e.g. \"mx.example.org\"".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const V: Values<'static> = Values { limit: 8, count: 9, source: "192.0.2.7", host: "mx.example.org" };

    #[test]
    fn default_texts_exactly() {
        let want: [(Protocol, [&str; 5]); 4] = [
            (
                Protocol::Smtp,
                [
                    "421 4.7.0 mx.example.org Too many connections from your IP (8), try again later",
                    "421 4.7.0 mx.example.org Too many connection attempts from your IP, try again later",
                    "421 4.3.2 mx.example.org Too many sessions, try again later",
                    "421 4.3.2 mx.example.org Too many sessions, the rest are reserved, try again later",
                    "421 4.7.0 mx.example.org Access from your IP is temporarily refused",
                ],
            ),
            (
                Protocol::Imap,
                [
                    "* BYE [UNAVAILABLE] Too many connections from your IP (8)",
                    "* BYE [UNAVAILABLE] Too many connection attempts from your IP, try again later",
                    "* BYE [UNAVAILABLE] Too many sessions, try again later",
                    "* BYE [UNAVAILABLE] Too many sessions, the rest are reserved, try again later",
                    "* BYE [UNAVAILABLE] Access from your IP is temporarily refused",
                ],
            ),
            (
                Protocol::Pop3,
                [
                    "-ERR [SYS/TEMP] Too many connections from your IP (8)",
                    "-ERR [SYS/TEMP] Too many connection attempts from your IP, try again later",
                    "-ERR [SYS/TEMP] Too many sessions, try again later",
                    "-ERR [SYS/TEMP] Too many sessions, the rest are reserved, try again later",
                    "-ERR [SYS/TEMP] Access from your IP is temporarily refused",
                ],
            ),
            (
                Protocol::Ftp,
                [
                    "421 Too many connections (8) from this IP",
                    "421 Too many connection attempts from your IP, try again later",
                    "421 Too many sessions, try again later",
                    "421 Too many sessions, the rest are reserved, try again later",
                    "421 Access from your IP is temporarily refused",
                ],
            ),
        ];
        for (protocol, lines) in want {
            for (reason, line) in Reason::ALL.into_iter().zip(lines) {
                let text = default_text(protocol, reason);
                assert_eq!(render(text, &V), format!("{line}\r\n"), "{protocol:?} {reason:?}");
                assert_eq!(check_text(protocol, text), Ok(()), "{protocol:?} {reason:?}");
                assert_eq!(Texts::default().template(protocol, reason), text);
            }
        }
    }

    #[test]
    fn placeholders_are_filled() {
        let t = "421 {host}: {source} holds {count} of {limit} ({limit})";
        assert_eq!(render(t, &V), "421 mx.example.org: 192.0.2.7 holds 9 of 8 (8)\r\n");
        assert_eq!(render("-ERR no placeholders", &V), "-ERR no placeholders\r\n");
        // Values cannot break the line.
        let evil = Values { source: "a\r\nQUIT", host: "h\u{7f}\u{e9}", ..V };
        assert_eq!(render("421 {source} {host}", &evil), "421 a??QUIT h??\r\n");
        // Overlong values are cut to their bound, the line to MAX_LINE.
        let long = "x".repeat(1000);
        let line = render("421 {host}", &Values { host: &long, ..V });
        assert_eq!(line.len(), 4 + MAX_HOST + 2);
        let line = render(&format!("421 {long}"), &V);
        assert_eq!((line.len(), line.ends_with("x\r\n")), (MAX_LINE, true));
    }

    #[test]
    fn bad_texts_are_refused_in_one_clear_line() {
        let cases: &[(Protocol, &str, &str)] = &[
            (Protocol::Smtp, "550 go away", "does not start with '421 ': expected smtp's temporary refusal"),
            (Protocol::Smtp, "421-multi", "does not start with '421 '"),
            (Protocol::Imap, "* OK hi", "does not start with '* BYE '"),
            (Protocol::Imap, "a1 BYE x", "does not start with '* BYE '"),
            (Protocol::Pop3, "+OK fine", "does not start with '-ERR '"),
            (Protocol::Ftp, "530 no", "does not start with '421 '"),
            (Protocol::Smtp, "421 a\r\n250 b", "holds a line break ('\\r'): expected one line of printable ASCII"),
            (Protocol::Smtp, "421 tab\there", "a character outside printable ASCII ('\\t')"),
            (Protocol::Smtp, "421 \u{e9}t\u{e9}", "a character outside printable ASCII ('é')"),
            (Protocol::Smtp, "421 {limits} max", "holds an unknown placeholder '{limits}': expected {limit}, {count}"),
            (Protocol::Smtp, "421 {host", "has a '{' at byte 4 without its '}'"),
            (Protocol::Smtp, "421 {}", "holds an unknown placeholder '{}'"),
        ];
        for (protocol, text, want) in cases {
            let e = check_text(*protocol, text).expect_err(text);
            assert!(e.contains(want), "{text:?}: {e:?} does not say {want:?}");
            assert!(!e.contains('\n') && !e.contains('\r'), "{e:?}");
        }
        // Long: fits before the placeholders, not with the longest values.
        let fits = format!("421 {}", "x".repeat(MAX_LINE - 6));
        assert_eq!(check_text(Protocol::Smtp, &fits), Ok(()));
        let e = check_text(Protocol::Smtp, &format!("421 {}", "x".repeat(MAX_LINE - 5))).expect_err("513");
        assert_eq!(e, "is 513 bytes with the longest values filled in and CRLF: expected at most 512");
        let e = check_text(Protocol::Smtp, &format!("421 {{host}} {}", "x".repeat(300))).expect_err("host");
        assert!(e.starts_with("is 560 bytes"), "{e}");
        // A closing brace alone is text.
        assert_eq!(check_text(Protocol::Smtp, "421 :-} bye"), Ok(()));
    }

    #[test]
    fn protocol_defaults_from_name_or_ports() {
        let cases: &[(&str, &[u16], Option<Protocol>)] = &[
            ("smtp", &[2525], Some(Protocol::Smtp)),
            ("submission", &[587], Some(Protocol::Smtp)),
            ("SMTPS", &[], Some(Protocol::Smtp)),
            ("imaps", &[993], Some(Protocol::Imap)),
            ("pop3s", &[995], Some(Protocol::Pop3)),
            ("ftp", &[2121], Some(Protocol::Ftp)),
            ("mail", &[25, 465, 587], Some(Protocol::Smtp)),
            ("default", &[143, 993], Some(Protocol::Imap)),
            ("default", &[110, 8110], Some(Protocol::Pop3)),
            ("default", &[21], Some(Protocol::Ftp)),
            ("default", &[2525], None),
            ("default", &[25, 143], None),
            ("web", &[80, 443], None),
            // The name wins over the ports.
            ("imap", &[25], Some(Protocol::Imap)),
        ];
        for (name, ports, want) in cases {
            assert_eq!(Protocol::guess(name, ports), *want, "{name} {ports:?}");
        }
        assert_eq!(implicit_tls(&[25, 465, 587, 993]).collect::<Vec<_>>(), [465, 993]);
    }

    #[test]
    fn texts_override_by_reason() {
        let mut t = Texts::default();
        assert!(t.is_empty());
        t.set(Reason::Rate, "421 slow down".into());
        assert_eq!(t.template(Protocol::Smtp, Reason::Rate), "421 slow down");
        assert_eq!(t.template(Protocol::Smtp, Reason::Deny), default_text(Protocol::Smtp, Reason::Deny));
        assert_eq!(t.iter().collect::<Vec<_>>(), [(Reason::Rate, "421 slow down")]);
        let r = Respond { protocol: None, tls: None, texts: t, implicit_tls_ports: Vec::new() };
        assert_eq!(r.template(Reason::Rate), None, "no protocol, no text");
        for reason in Reason::ALL {
            assert_eq!(Reason::from_key(reason.as_str()), Some(reason));
        }
        assert_eq!(Reason::from_key("concurrency"), None);
    }

    #[test]
    fn hostnames() {
        for good in ["mx.example.org", "localhost", "a-1.b2", &format!("{}.org", "a".repeat(63))] {
            assert_eq!(check_hostname(good), Ok(()), "{good}");
        }
        assert_eq!(check_hostname(Values::LONGEST.host), Ok(()));
        assert_eq!(Values::LONGEST.host.len(), MAX_HOST);
        assert_eq!(Values::LONGEST.source.len(), MAX_SOURCE);
        for bad in
            ["", "mx..org", "-mx.org", "mx-.org", "mx.org.", "mx org", "mx_1.org", &"a".repeat(64), &"a.".repeat(127)]
        {
            assert!(check_hostname(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// A valid text of `protocol`: its code, then literal runs and placeholders.
    fn text_of(protocol: Protocol) -> impl Strategy<Value = String> {
        let piece =
            prop_oneof!["[ -z|~]{0,40}", proptest::sample::select(&PLACEHOLDERS[..]).prop_map(|p| format!("{{{p}}}")),];
        proptest::collection::vec(piece, 0..8).prop_map(move |ps| format!("{}{}", protocol.code(), ps.concat()))
    }

    fn values() -> impl Strategy<Value = (u64, u64, String, String)> {
        (any::<u64>(), any::<u64>(), ".{0,80}", ".{0,300}")
    }

    proptest! {
        #[test]
        fn a_valid_text_renders_to_one_refusal_line(
            (protocol, text) in proptest::sample::select(&Protocol::ALL[..]).prop_flat_map(|p| (Just(p), text_of(p))),
            (limit, count, source, host) in values(),
        ) {
            prop_assume!(check_text(protocol, &text).is_ok());
            let line = render(&text, &Values { limit, count, source: &source, host: &host });
            prop_assert!(line.starts_with(protocol.code()), "{line:?}");
            prop_assert!(line.ends_with("\r\n"), "{line:?}");
            let body = &line[..line.len() - 2];
            prop_assert!(body.bytes().all(|b| b == b' ' || b.is_ascii_graphic()), "{line:?}");
            prop_assert!(line.len() <= MAX_LINE);
        }
    }
}
