//! Throwaway TLS material made with `openssl`: a test CA and a server
//! certificate for one host name, as PEM files in a scratch dir that is
//! removed with them. Servers (Dovecot, later the limiter's responder) take
//! the chain and key, clients trust the CA.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::scratch::Scratch;

const OPENSSL: &str = "/usr/bin/openssl";

/// Whether `openssl` is installed (a need for [`crate::require!`]).
pub fn installed() -> crate::Need {
    if Path::new(OPENSSL).exists() { Ok(()) } else { Err(format!("{OPENSSL} not installed")) }
}

/// A CA and a server certificate signed by it, valid for two days.
pub struct Certs {
    /// The host name the server certificate is for (its CN and only DNS SAN).
    pub host: String,
    /// The CA certificate, for clients to trust.
    pub ca: PathBuf,
    /// The server's chain as a server sends it: the leaf (the CA signs it
    /// directly and clients already hold the CA).
    pub chain: PathBuf,
    /// The server's private key (PKCS#8, P-256), unencrypted.
    pub key: PathBuf,
    dir: Scratch,
}

impl Certs {
    /// Makes a fresh CA and a certificate for `host` (P-256 keys: quick to
    /// make on a slow machine, and every client and server here takes them).
    #[must_use]
    pub fn new(host: &str) -> Self {
        let dir = Scratch::new();
        let p = |name: &str| dir.0.join(name);
        let (ca_key, ca, key, csr, chain) =
            (p("ca.key"), p("ca.pem"), p("server.key"), p("server.csr"), p("server.pem"));
        let ext = dir.write(
            "server.ext",
            &format!(
                "basicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature\n\
                 extendedKeyUsage = serverAuth\n\
                 subjectAltName = DNS:{host}\n"
            ),
        );
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &[&["req", "-x509"], &ec[..], &["-days", "2", "-subj", "/CN=limiter test CA"]].concat(),
            &[("-keyout", &ca_key), ("-out", &ca)],
        );
        openssl(
            &[&["req"], &ec[..], &["-subj", &format!("/CN={host}")]].concat(),
            &[("-keyout", &key), ("-out", &csr)],
        );
        openssl(
            &["x509", "-req", "-days", "2", "-set_serial", "2"],
            &[("-in", &csr), ("-CA", &ca), ("-CAkey", &ca_key), ("-extfile", &ext), ("-out", &chain)],
        );
        Self { host: host.to_owned(), ca, chain, key, dir }
    }

    /// The scratch dir that holds the files.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

/// Runs `openssl ARGS` with path options; panics with its output on failure.
fn openssl(args: &[&str], paths: &[(&str, &PathBuf)]) {
    let mut cmd = Command::new(OPENSSL);
    cmd.args(args);
    for (opt, path) in paths {
        cmd.arg(opt).arg(path);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
