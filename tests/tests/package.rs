//! The Debian package `cargo xtask package` builds (its path in `LIMITER_DEB`, set by
//! `cargo xtask test`): what it holds, then installed with dpkg (the binary, a conffile
//! `check-config` accepts, man pages, completions, a unit `systemd-analyze verify`
//! accepts) and purged, leaving nothing behind. It refuses to touch a limiter that is
//! already installed.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use limiter_tests::{Need, require, root};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const UNIT: &str = "/lib/systemd/system/limiter.service";
const CONFFILE: &str = "/etc/limiter/limiter.toml";
const STATE_DIR: &str = "/var/lib/limiter";

/// Files the package must install (besides every man page and fail2ban example).
const FILES: &[&str] = &[
    "/usr/bin/limiter",
    UNIT,
    CONFFILE,
    "/usr/share/man/man1/limiter.1.gz",
    "/usr/share/man/man1/limiter-run.1.gz",
    "/usr/share/man/man1/limiter-status.1.gz",
    "/usr/share/man/man1/limiter-allow-add.1.gz",
    "/usr/share/bash-completion/completions/limiter",
    "/usr/share/zsh/vendor-completions/_limiter",
    "/usr/share/fish/vendor_completions.d/limiter.fish",
    "/usr/share/doc/limiter/copyright",
    "/usr/share/doc/limiter/README.md.gz",
];

/// The .deb under test (`LIMITER_DEB`), a need for [`require!`].
fn deb() -> Need<PathBuf> {
    let Some(path) = std::env::var_os("LIMITER_DEB") else {
        return Err("LIMITER_DEB is not set (`cargo xtask test` builds the package and sets it)".into());
    };
    let path = PathBuf::from(path);
    assert!(path.is_file(), "LIMITER_DEB={} is not a file", path.display());
    Ok(path)
}

/// Runs `cmd`; panics with its output unless it exits 0. Returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}{}", out.status, text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The repository's fail2ban examples, relative to packaging/fail2ban (none before they land).
fn fail2ban_examples() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).expect("read packaging/fail2ban") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                out.push(path.strip_prefix(base).expect("below base").display().to_string());
            }
        }
    }
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/fail2ban");
    let mut files = Vec::new();
    if base.is_dir() {
        walk(&base, &base, &mut files);
    }
    files
}

#[test]
fn deb_holds_the_binary_unit_conffile_docs_and_scripts() {
    let deb = require!(deb());
    // "-rwxr-xr-x root/root 5678 2026-01-01 00:00 ./usr/bin/limiter"
    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let mut paths = BTreeSet::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.get(1), Some(&"root/root"), "not owned by root: {line}");
        let path = fields.last().expect("a path").trim_start_matches('.').trim_end_matches('/');
        paths.insert(path.to_owned());
    }
    for f in FILES {
        assert!(paths.contains(*f), "{f} is not in the package:\n{listing}");
    }
    for f in fail2ban_examples() {
        let want = format!("/usr/share/doc/limiter/examples/fail2ban/{f}");
        assert!(paths.contains(&want), "{want} is not in the package:\n{listing}");
    }
    assert!(listing.contains("-rwxr-xr-x root/root"), "no executable:\n{listing}");
    assert!(
        !paths.iter().any(|p| p.contains("generate-man")),
        "a page for the hidden generate-man subcommand:\n{listing}"
    );

    let field = |name: &str| run(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name)).trim().to_owned();
    assert_eq!(field("Package"), "limiter");
    assert_eq!(field("Version"), VERSION);
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Architecture"), arch.trim());
    assert!(field("Depends").contains("libc6 (>= "), "Depends: {}", field("Depends"));
    assert_eq!(field("Section"), "net");

    let conffiles = run(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles"));
    assert_eq!(conffiles.lines().collect::<Vec<_>>(), [CONFFILE]);
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for script in ["postinst", "prerm", "postrm"] {
        // " 512 bytes,  17 lines   *  postinst   #!/bin/sh"
        let listed = info.lines().any(|l| l.split_whitespace().any(|w| w == script) && l.contains("#!/bin/sh"));
        assert!(listed, "no {script} shell script in the package:\n{info}");
    }
}

/// What dpkg says about the package `limiter`: `None` when it has never been
/// installed (or was purged).
fn dpkg_status() -> Option<String> {
    let out = output(Command::new("dpkg-query").args(["--show", "--showformat=${db:Status-Abbrev}", "limiter"]));
    let status = text(&out.stdout).trim().to_owned();
    (out.status.success() && !status.is_empty() && !status.starts_with("un")).then_some(status)
}

/// Owns the installed package: purges it on drop (also when an assertion
/// failed) and puts back an empty state dir if there was one before.
struct Installed {
    purged: bool,
    state_dir_existed: bool,
}

impl Installed {
    /// Installs `deb`, refusing if anything of an install it did not make is
    /// there: the purge would delete it.
    fn install(deb: &Path) -> Self {
        if let Some(status) = dpkg_status() {
            panic!(
                "a limiter package is already installed (dpkg status '{status}'): this test installs and purges \
                 its own and will not touch an admin's; run it on a machine without one"
            );
        }
        for path in ["/usr/bin/limiter", CONFFILE] {
            assert!(!Path::new(path).exists(), "{path} exists but no package owns it: the purge would delete it");
        }
        let state = Path::new(STATE_DIR);
        let state_dir_existed = state.exists();
        if state_dir_existed {
            let entries = fs::read_dir(state).expect("read the state dir").count();
            assert_eq!(
                entries, 0,
                "{STATE_DIR} holds state (a daemon ran with the defaults): the purge would delete it"
            );
        }
        let guard = Self { purged: false, state_dir_existed };
        run(Command::new("dpkg").arg("--install").arg(deb).env("DEBIAN_FRONTEND", "noninteractive"));
        guard
    }

    fn purge(&mut self) -> Output {
        self.purged = true;
        output(Command::new("dpkg").args(["--purge", "limiter"]).env("DEBIAN_FRONTEND", "noninteractive"))
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.purged {
            let out = self.purge();
            if !out.status.success() {
                eprintln!("dpkg --purge limiter failed: {}{}", text(&out.stdout), text(&out.stderr));
            }
        }
        if self.state_dir_existed {
            let _ = fs::create_dir_all(STATE_DIR);
        }
    }
}

#[test]
fn install_check_and_purge() {
    let deb = require!(deb());
    require!(root().map_err(|why| format!("{why} (dpkg --install)")));
    let mut installed = Installed::install(&deb);

    for f in FILES {
        assert!(Path::new(f).is_file(), "{f} was not installed");
    }
    let version = run(Command::new("/usr/bin/limiter").arg("--version"));
    assert_eq!(version.trim(), format!("limiter {VERSION}"));

    let page = run(Command::new("zcat").arg("/usr/share/man/man1/limiter.1.gz"));
    assert!(page.contains(".TH limiter 1"), "limiter.1 is not a man page:\n{page}");
    let page = run(Command::new("zcat").arg("/usr/share/man/man1/limiter-run.1.gz"));
    assert!(page.contains("\\-\\-iface"), "limiter-run.1 does not document --iface:\n{page}");
    run(Command::new("bash").args(["-n", "/usr/share/bash-completion/completions/limiter"]));
    let bash = fs::read_to_string("/usr/share/bash-completion/completions/limiter").expect("bash completions");
    assert!(bash.contains("check-config") && !bash.contains("generate-man"), "bash completions:\n{bash}");

    // The shipped config works as it is (an interface missing here is only a warning).
    let checked = run(Command::new("/usr/bin/limiter").args(["check-config", CONFFILE]));
    assert!(checked.contains(": ok (4 services"), "check-config: {checked}");

    let unit = fs::read_to_string(UNIT).expect("the unit");
    for line in ["Type=notify", "ExecReload=/usr/bin/limiter reload", "CapabilityBoundingSet=CAP_"] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "no {line} in the unit:\n{unit}");
    }
    assert!(!unit.lines().any(|l| l.starts_with("CapabilityBoundingSet=") && l.contains("CAP_SYS_ADMIN")));
    if Path::new("/usr/bin/systemd-analyze").exists() {
        // Offline: it loads the unit file, checks every directive, that the
        // binary exists and that the Documentation= man pages open.
        let out = output(Command::new("systemd-analyze").args(["verify", UNIT]));
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "systemd-analyze verify {UNIT} failed ({}):\n{said}", out.status);
        assert!(!said.contains("limiter"), "systemd-analyze verify has something to say about the unit:\n{said}");
    } else {
        eprintln!("{}: no systemd-analyze, unit not verified", limiter_tests::test_name!());
    }

    // State a daemon would have left: the purge removes it.
    fs::create_dir_all(STATE_DIR).expect("state dir");
    fs::write(Path::new(STATE_DIR).join("lists.json"), "{}").expect("state file");
    let out = installed.purge();
    assert!(out.status.success(), "dpkg --purge limiter failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(dpkg_status(), None, "dpkg still knows limiter after the purge");
    for f in FILES.iter().chain(&["/etc/limiter", STATE_DIR, "/usr/share/doc/limiter"]) {
        assert!(!Path::new(f).exists(), "{f} is left after the purge");
    }
}
