//! The Debian package `cargo xtask package` builds (its path in `LIMITER_DEB`, set by
//! `cargo xtask test`): what it holds and what lintian says of it; installed with dpkg
//! (the binary, a conffile `check-config` accepts, man pages, completions, a unit
//! `systemd-analyze verify` accepts) and purged, leaving nothing behind; its life with
//! a daemon running from it (an upgrade keeps the pins, one whose maps do not fit is
//! refused before anything changes, removal unloads the programs, purge removes the
//! pins); and the unit's hardening (its `systemd-analyze security` exposure, every
//! system call the daemon makes allowed by its filter, the daemon enforcing under its
//! file-system, /proc and capability restrictions). It refuses to touch a limiter
//! that is already installed. The life-cycle steps that need systemd as PID 1
//! (enable, reload, try-restart on upgrade, stop on purge, the unit's sandbox for
//! real) are tests/tests/systemd.rs's, in the guests.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::{
    collections::BTreeSet,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use limiter_tests::{
    cli::Scratch,
    netns::{Daemon, Pair, Spawn, streams, tally},
    package::{
        CONFFILE, Installed, PIN_DIR, SOCKET, STATE_DIR, UNIT, deb, dpkg, dpkg_status, output, run, said, text, tool,
    },
    privileged, require, root,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The unit in the repository (the package installs it as it is).
const UNIT_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/limiter.service");
/// The highest `systemd-analyze security` exposure the unit may have (issue 16).
const MAX_EXPOSURE: f64 = 2.5;
/// The service port of the life-cycle tests.
const PORT: u16 = 2525;
/// Connect timeout: refusals are RSTs and come back at once.
const WAIT: Duration = Duration::from_secs(3);

/// Files the package must install (besides every man page and fail2ban example).
const FILES: &[&str] = &[
    "/usr/bin/limiter",
    UNIT,
    CONFFILE,
    "/usr/share/man/man1/limiter.1.gz",
    "/usr/share/man/man1/limiter-run.1.gz",
    "/usr/share/man/man1/limiter-status.1.gz",
    "/usr/share/man/man1/limiter-allow-add.1.gz",
    "/usr/share/man/man5/limiter.toml.5.gz",
    "/usr/share/bash-completion/completions/limiter",
    "/usr/share/zsh/vendor-completions/_limiter",
    "/usr/share/fish/vendor_completions.d/limiter.fish",
    "/usr/share/doc/limiter/copyright",
    "/usr/share/doc/limiter/README.md.gz",
    // Native package: the Debian changelog is the changelog (lintian's name for it).
    "/usr/share/doc/limiter/changelog.gz",
    "/usr/share/lintian/overrides/limiter",
];

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

    let maintainer = field("Maintainer");
    assert!(!maintainer.contains("localhost") && maintainer.contains('@'), "Maintainer: {maintainer}");

    let conffiles = run(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles"));
    assert_eq!(conffiles.lines().collect::<Vec<_>>(), [CONFFILE]);
    // dpkg --verify checks the installed files against these.
    let md5sums = run(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("md5sums"));
    assert!(md5sums.lines().any(|l| l.ends_with(" usr/bin/limiter")), "no md5sum of the binary:\n{md5sums}");
    // The preinst carries the layout of the binary it comes with, to check the pins against.
    let preinst = run(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("preinst"));
    let bin = limiter_tests::netns::limiter_bin();
    let layout = run(Command::new(&bin).args(["check-pins", "--print-layout"]));
    assert!(preinst.contains(&layout), "the preinst does not carry the layout of {}:\n{preinst}", bin.display());
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        // " 512 bytes,  17 lines   *  postinst   #!/bin/sh"
        let listed = info.lines().any(|l| l.split_whitespace().any(|w| w == script) && l.contains("#!/bin/sh"));
        assert!(listed, "no {script} shell script in the package:\n{info}");
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
    // Every page renders without a groff warning, and has the sections an
    // admin looks for.
    let mut pages: Vec<String> = ["/usr/share/man/man1", "/usr/share/man/man5"]
        .iter()
        .flat_map(|d| fs::read_dir(d).expect("man dir").map(|e| e.expect("entry").path()))
        .map(|p| p.display().to_string())
        .filter(|p| p.contains("/limiter"))
        .collect();
    pages.sort();
    assert!(pages.len() > 20, "{pages:?}");
    for page in &pages {
        let out = Command::new("man").args(["--warnings", "-l", page]).env("MANWIDTH", "80").output().expect("man");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "man -l {page}: {stderr}");
        let text = String::from_utf8_lossy(&out.stdout);
        for section in ["EXIT STATUS", "FILES", "SEE ALSO"] {
            assert!(page.ends_with(".5.gz") || text.contains(section), "{page} has no {section}:\n{text}");
        }
    }
    let config = run(Command::new("man").args(["-l", "/usr/share/man/man5/limiter.toml.5.gz"]).env("MANWIDTH", "80"));
    for part in ["max_conn_per_source", "reserved_sessions", "EXAMPLES", "per_source_rate"] {
        assert!(config.contains(part), "limiter.toml(5) lacks {part}:\n{config}");
    }
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

#[test]
fn lintian_finds_no_errors_or_warnings() {
    let deb = require!(deb());
    let lintian = require!(tool("lintian"));
    // Overridden tags (each override says why) are shown as O: lines.
    let out =
        output(Command::new(lintian).args(["--pedantic", "--display-experimental", "--show-overrides"]).arg(&deb));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    println!("lintian --pedantic --display-experimental --show-overrides {}:\n{said}", deb.display());
    let flagged: Vec<&str> = said.lines().filter(|l| l.starts_with("E: ") || l.starts_with("W: ")).collect();
    assert!(flagged.is_empty(), "lintian reports errors or warnings:\n{}", flagged.join("\n"));
    assert!(out.status.success(), "lintian failed ({}):\n{said}", out.status);
}

#[test]
fn unit_exposure_is_at_most_2_5() {
    let analyze = require!(tool("systemd-analyze"));
    // --offline: the unit file alone, no systemd PID 1 needed.
    let out = output(Command::new(analyze).args(["security", "--offline=true", "--no-pager", UNIT_SRC]));
    let said = text(&out.stdout);
    // "→ Overall exposure level for limiter.service: 1.9 OK 🙂"
    let score = said
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for limiter.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or_else(|| {
            panic!("no exposure level in systemd-analyze security's output:\n{said}{}", text(&out.stderr))
        });
    let open: Vec<&str> = said.lines().filter(|l| l.starts_with('✗')).collect();
    println!("systemd-analyze security limiter.service: exposure {score} (at most {MAX_EXPOSURE}); still open:");
    for l in &open {
        println!("  {}", l.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    assert!(score <= MAX_EXPOSURE, "exposure {score} > {MAX_EXPOSURE}:\n{said}");
}

/// The system calls the unit's `SystemCallFilter=` allows, its groups expanded by
/// `systemd-analyze syscall-filter`.
fn allowed_syscalls(unit: &str) -> BTreeSet<String> {
    fn expand(item: &str, out: &mut BTreeSet<String>) {
        if !item.starts_with('@') {
            out.insert(item.to_owned());
            return;
        }
        let listing = run(Command::new("systemd-analyze").args(["syscall-filter", "--no-pager", item]));
        // "@system-service", then one indented name or @group a line, "# ..." comments.
        for line in listing.lines().skip(1) {
            let name = line.trim();
            if !name.is_empty() && !name.starts_with('#') {
                expand(name, out);
            }
        }
    }
    let mut allowed = BTreeSet::new();
    for value in unit.lines().filter_map(|l| l.strip_prefix("SystemCallFilter=")) {
        assert!(!value.starts_with('~'), "a deny list in the unit; this test reads allow lists only: {value}");
        for item in value.split_whitespace() {
            expand(item, &mut allowed);
        }
    }
    assert!(allowed.contains("read") && allowed.contains("bpf"), "the unit's filter allows {allowed:?}");
    allowed
}

/// The names of the system calls in an `strace -f` log, from the daemon's `execve` on.
fn traced_syscalls(log: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut started = false;
    for line in log.lines() {
        // "1234  bpf(BPF_MAP_CREATE, ...) = 3"; "<... read resumed>", "+++ exited", "--- SIGTERM" are not calls.
        let call = line.split_once(char::is_whitespace).map_or("", |(_, rest)| rest.trim_start());
        let name: String = call.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if name.is_empty() || !call[name.len()..].starts_with('(') {
            continue;
        }
        started |= name == "execve" && call.contains("limiter");
        if started {
            seen.insert(name);
        }
    }
    seen
}

/// The pid of the one child of `pid` (the daemon strace runs), waiting for it.
fn only_child(pid: u32) -> libc::pid_t {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let deadline = Instant::now() + limiter_tests::patience(Duration::from_secs(10));
    loop {
        let children = fs::read_to_string(&path).unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().unwrap_or_else(|_| panic!("{path}: {children}"));
        }
        assert!(Instant::now() < deadline, "{pid} started no child");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to a minute (a traced or sandboxed start is slower), scaled by
/// `LIMITER_TEST_TIME_FACTOR`, for `d` to answer.
fn wait_answering(d: &mut Daemon) {
    let limit = limiter_tests::patience(Duration::from_mins(1));
    let deadline = Instant::now() + limit;
    while d.status_json().is_none() {
        if let Some(Ok(Some(status))) = d.child.as_mut().map(std::process::Child::try_wait) {
            panic!("the daemon exited ({status}): {}", d.log_text());
        }
        assert!(Instant::now() < deadline, "the daemon did not answer within {limit:?}: {}", d.log_text());
        thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /metrics` from inside `pair`'s server namespace.
fn scrape(pair: &Pair, addr: &'static str) -> String {
    pair.server.run(move || {
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(WAIT)).expect("read timeout");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send the request");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    })
}

/// A config for `pair`: one service on [`PORT`], one connection a source, refused
/// with `action`, and the metrics endpoint on the server namespace's loopback.
fn config(dir: &Scratch, pair: &Pair, action: &str) -> PathBuf {
    dir.write(
        "limiter.toml",
        &format!(
            "interfaces = [\"{}\"]\nmetrics_listen = \"127.0.0.1:9464\"\n\n[[service]]\nname = \"smtp\"\nports = \
             [{PORT}]\nmax_conn_per_source = 1\naction = \"{action}\"\n{}",
            pair.server_if,
            if action == "respond" { "protocol = \"smtp\"\n" } else { "" },
        ),
    )
}

/// What an admin does with a running daemon, so that it makes its system calls:
/// status, top, list changes, a reload, a held connection and a refused one (answered
/// by the responder when the action is respond), a metrics scrape.
fn exercise(pair: &Pair, d: &Daemon, src: std::net::IpAddr) {
    let _ = d.client_json(&["status", "--json"]);
    let _ = d.client_json(&["top", "--json"]);
    for args in [
        &["allow", "add", "198.51.100.7", "--comment", "syscalls"][..],
        &["deny", "add", "203.0.113.0/24"],
        &["allow", "list"],
        &["reload"],
    ] {
        let out = output(Command::new(limiter_tests::netns::limiter_bin()).args(args).env("LIMITER_SOCKET", &d.socket));
        assert!(out.status.success(), "limiter {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
    }
    let held = streams(pair.hold(src, PORT, 1, WAIT));
    let over = pair.connect_many(src, PORT, 1, WAIT);
    drop(over);
    drop(held);
    let metrics = scrape(pair, "127.0.0.1:9464");
    assert!(metrics.contains("limiter_"), "no limiter metrics: {metrics}");
}

#[test]
fn the_unit_filter_allows_every_system_call_the_daemon_makes() {
    require!(privileged());
    let strace = require!(tool("strace"));
    require!(tool("systemd-analyze"));
    let allowed = allowed_syscalls(&fs::read_to_string(UNIT_SRC).expect("the unit"));

    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let src = pair.add_client_v4(7);
    let dir = Scratch::new();
    let trace = dir.0.join("strace.log");
    let cfg = config(&dir, &pair, "respond");
    let wrap = ["-f", "-qq", "-o", trace.to_str().expect("utf-8 path"), "--"];
    let spawn = Spawn {
        env: Vec::new(),
        wrap: std::iter::once(strace.display().to_string()).chain(wrap.iter().map(|s| (*s).to_owned())).collect(),
    };
    let mut d = spawn_wrapped(&pair.server, spawn, &cfg, "strace");
    let tracer = d.child.as_ref().expect("spawned").id();
    wait_answering(&mut d);
    exercise(&pair, &d, src);

    // SIGTERM to the daemon itself (strace would only detach), which then shuts down.
    let daemon = only_child(tracer);
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(daemon, libc::SIGTERM) };
    let status = d.child.take().map(|mut c| c.wait().expect("wait for strace"));
    assert!(
        status.is_some_and(|s| s.success()),
        "the traced daemon did not stop cleanly ({status:?}): {}",
        d.log_text()
    );

    let used = traced_syscalls(&fs::read_to_string(&trace).expect("the strace log"));
    assert!(used.contains("bpf") && used.contains("accept4"), "strace saw only {used:?}");
    let refused: Vec<&String> = used.difference(&allowed).collect();
    println!("the daemon made {} distinct system calls; the unit's filter allows {}", used.len(), allowed.len());
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter= refuses (EPERM) system calls the daemon made: {refused:?}"
    );
}

#[test]
fn the_daemon_enforces_under_the_units_restrictions() {
    require!(privileged());
    require!(tool("setpriv"));
    require!(tool("unshare"));
    let unit = fs::read_to_string(UNIT_SRC).expect("the unit");
    // The unit's capabilities, as setpriv names them: "-all,+bpf,+net_admin,+perfmon".
    let caps: String = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet= in the unit")
        .split_whitespace()
        .flat_map(|c| [",+".to_owned(), c.trim_start_matches("CAP_").to_lowercase()])
        .collect();
    for line in [
        "ProtectKernelTunables=yes",
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "PrivateMounts=yes",
        "ExecStartPre=+/bin/mkdir -p /sys/fs/bpf/limiter",
        "ReadWritePaths=-/sys/fs/bpf/limiter",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line} in the unit: this test approximates it");
    }

    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let src = pair.add_client_v4(7);
    let dir = Scratch::new();
    let cfg = config(&dir, &pair, "reset");
    // What systemd sets up for the unit, as far as it matters to the daemon: a mount
    // namespace of its own (PrivateMounts) where /sys, the cgroup mounts and bpffs are
    // read-only (ProtectKernelTunables, ProtectControlGroups) but the pin directory,
    // made first (ExecStartPre=+mkdir, ReadWritePaths=-/sys/fs/bpf/limiter; here the
    // test's --pin-dir), /proc shows only its own process and its files
    // (ProtectProc=invisible, ProcSubset=pid); then only the unit's capabilities, no
    // new privileges.
    let sandbox = format!(
        "set -e; \
         pin=; prev=; for a in \"$@\"; do [ \"$prev\" = --pin-dir ] && pin=$a; prev=$a; done; \
         mkdir -p \"$pin\"; \
         for m in $(awk '$2 ~ \"^/sys\" {{print $2}}' /proc/self/mounts | sort -u); do \
           mount -o remount,bind,ro \"$m\"; done; \
         mount --bind \"$pin\" \"$pin\"; mount -o remount,bind,rw \"$pin\"; \
         mount -t proc -o hidepid=invisible,subset=pid proc /proc; \
         exec setpriv --bounding-set=-all{caps} --inh-caps=-all --no-new-privs \"$@\""
    );
    let spawn = Spawn {
        env: Vec::new(),
        wrap: ["unshare", "--mount", "sh", "-c", &sandbox, "sh"].iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut d = spawn_wrapped(&pair.server, spawn, &cfg, "the sandboxed daemon");
    wait_answering(&mut d);

    // It counts and enforces: one connection held, the next reset.
    let held = streams(pair.hold(src, PORT, 1, WAIT));
    let t = tally(&pair.connect_many(src, PORT, 2, WAIT));
    assert_eq!((t.connected, t.refused), (0, 2), "over the limit under the sandbox: {t:?}: {}", d.log_text());
    let s = d.status_json().expect("status");
    assert_eq!(s["services"][0]["connections"], 1, "{s}");
    let metrics = scrape(&pair, "127.0.0.1:9464");
    assert!(metrics.contains("limiter_"), "no limiter metrics: {metrics}");
    drop(held);
    let status = d.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "the sandboxed daemon did not stop cleanly ({status:?}): {}",
        d.log_text()
    );
}

/// A daemon run from the installed package's binary with the unit's pins and socket,
/// in `pair`'s server namespace, as the unit would run it (with the test's config).
fn packaged_daemon(pair: &Pair, cfg: &Path) -> Daemon {
    let wrap = ["sh", "-c", "shift; exec /usr/bin/limiter \"$@\"", "sh"];
    let mut d = Daemon::unstarted(Spawn { env: Vec::new(), wrap: wrap.iter().map(|s| (*s).to_owned()).collect() });
    d.pin_dir = PathBuf::from(PIN_DIR);
    d.socket = PathBuf::from(SOCKET);
    d.restart(&pair.server, &["--config", cfg.to_str().expect("utf-8 path")]);
    d
}

/// Whether the next attempt from `src` (which holds its one connection) is refused.
fn refused(pair: &Pair, src: std::net::IpAddr) -> bool {
    let t = tally(&pair.connect_many(src, PORT, 1, WAIT));
    assert_eq!(t.connected + t.refused, 1, "an attempt neither connected nor refused: {t:?}");
    t.refused == 1
}

#[test]
fn removal_stops_enforcement_and_purge_removes_the_pins() {
    let deb = require!(deb());
    require!(privileged());
    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let src = pair.add_client_v4(7);
    let dir = Scratch::new();
    let cfg = config(&dir, &pair, "reset");
    let mut installed = Installed::install(&deb);
    let mut d = packaged_daemon(&pair, &cfg);
    let _held = streams(pair.hold(src, PORT, 1, WAIT));
    assert!(refused(&pair, src), "the packaged daemon does not enforce: {}", d.log_text());

    // No systemd here stops a daemon started by hand: the removal is refused before
    // anything changes (under systemd the prerm stops the unit first).
    let out = dpkg(&["--remove", "limiter"]);
    assert!(!out.status.success(), "dpkg --remove went through with a daemon running:\n{}", said(&out));
    assert!(said(&out).contains("stop the running limiter daemon"), "{}", said(&out));
    // "ri": the removal was asked for, the package is still installed.
    let installed_still = dpkg_status().is_some_and(|s| s.as_bytes().get(1) == Some(&b'i'));
    assert!(installed_still, "status {:?} after a refused removal", dpkg_status());
    assert!(Path::new("/usr/bin/limiter").exists() && d.status_json().is_some(), "the refused removal changed things");

    // Stopped, as `systemctl stop` leaves it: the pinned programs go on enforcing...
    assert!(d.stop().is_some_and(|s| s.success()), "{}", d.log_text());
    assert!(Path::new(PIN_DIR).is_dir() && refused(&pair, src), "enforcement stopped with the daemon");
    // ... until the package goes, and with it the programs.
    let out = dpkg(&["--remove", "limiter"]);
    assert!(out.status.success(), "dpkg --remove failed:\n{}", said(&out));
    println!("dpkg --remove limiter:\n{}", said(&out));
    assert!(!Path::new(PIN_DIR).exists(), "{PIN_DIR} is left after the removal");
    assert!(!refused(&pair, src), "still enforcing after the package was removed");
    assert!(dpkg_status().is_some_and(|s| s.starts_with("rc")), "status {:?} after the removal", dpkg_status());
    assert!(Path::new(CONFFILE).exists(), "the removal (not a purge) took the conffile");

    // Pins made after the removal (a daemon run from elsewhere) are the purge's.
    drop(d);
    let mut stray = Daemon::unstarted(Spawn::default());
    stray.pin_dir = PathBuf::from(PIN_DIR);
    stray.restart(&pair.server, &["--config", cfg.to_str().expect("utf-8 path")]);
    assert!(stray.stop().is_some_and(|s| s.success()), "{}", stray.log_text());
    assert!(refused(&pair, src), "the stray daemon's pins do not enforce");
    let out = installed.purge();
    assert!(out.status.success(), "dpkg --purge failed:\n{}", said(&out));
    assert!(!Path::new(PIN_DIR).exists(), "{PIN_DIR} is left after the purge");
    assert!(!refused(&pair, src), "still enforcing after the purge");
    for f in ["/etc/limiter", STATE_DIR, "/run/limiter"] {
        assert!(!Path::new(f).exists(), "{f} is left after the purge");
    }
}

#[test]
fn an_upgrade_keeps_the_pins_and_is_refused_when_they_do_not_fit() {
    let deb = require!(deb());
    require!(privileged());
    let bpftool = require!(tool("bpftool"));
    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let src = pair.add_client_v4(7);
    let dir = Scratch::new();
    let cfg = config(&dir, &pair, "reset");
    let deb_arg = deb.display().to_string();
    let _installed = Installed::install(&deb);
    let mut d = packaged_daemon(&pair, &cfg);
    let held = streams(pair.hold(src, PORT, 1, WAIT));
    assert!(refused(&pair, src), "the packaged daemon does not enforce: {}", d.log_text());

    // The same build again goes through dpkg's upgrade path (preinst upgrade,
    // postinst configure with the old version). The pins fit: it goes through and
    // nothing stops enforcing (under systemd the postinst try-restarts the unit).
    let out = dpkg(&["--install", &deb_arg]);
    assert!(out.status.success(), "the upgrade failed:\n{}", said(&out));
    assert!(d.status_json().is_some(), "the daemon stopped answering during the upgrade");
    assert!(refused(&pair, src), "not enforcing after the upgrade");
    let s = d.status_json().expect("status");
    assert_eq!(s["services"][0]["connections"], 1, "the count did not survive the upgrade: {s}");

    // A pinned map of another layout (what a version with other maps would have
    // left): the preinst refuses before anything is unpacked.
    drop(held);
    assert!(d.stop().is_some_and(|s| s.success()), "{}", d.log_text());
    run(Command::new("/usr/bin/limiter").args(["unload", "--socket", SOCKET]));
    fs::create_dir_all(PIN_DIR).expect("the pin dir");
    let globals = format!("{PIN_DIR}/GLOBALS");
    run(Command::new(&bpftool)
        .args(["map", "create", &globals, "type", "array", "key", "4", "value", "8"])
        .args(["entries", "1", "name", "GLOBALS"]));
    let before = fs::metadata("/usr/bin/limiter").expect("the binary");
    let out = dpkg(&["--install", &deb_arg]);
    let text = said(&out);
    assert!(!out.status.success(), "an upgrade over pins that do not fit went through:\n{text}");
    println!("dpkg --install over a GLOBALS of another layout:\n{text}");
    assert!(text.contains("GLOBALS") && text.contains("cannot reuse the maps pinned"), "{text}");
    assert!(dpkg_status().is_some_and(|s| s.starts_with("ii")), "status {:?} after a refused upgrade", dpkg_status());
    let after = fs::metadata("/usr/bin/limiter").expect("the binary");
    assert_eq!((before.ino(), before.mtime()), (after.ino(), after.mtime()), "the refused upgrade replaced the binary");
    assert!(Path::new(&globals).exists(), "the refused upgrade touched the pins");

    // Once they are gone (`limiter unload`), it goes through.
    run(Command::new("/usr/bin/limiter").args(["unload", "--socket", SOCKET]));
    let out = dpkg(&["--install", &deb_arg]);
    assert!(out.status.success(), "the upgrade failed after the unload:\n{}", said(&out));
}

/// A cgroup of its own under the cgroup2 mount, for a daemon, with a `cgroup_skb`
/// ingress program that drops every packet once [`Self::filter`] attached it: what
/// systemd's `IPAddressDeny=any` does to a remote client's packets. Removed on drop.
struct FilteredCgroup {
    dir: PathBuf,
    prog: Option<std::os::fd::OwnedFd>,
}

impl FilteredCgroup {
    fn new() -> Self {
        let mount = limiter_user::kernel::host::cgroup2_mount().expect("a cgroup2 mount");
        let dir = mount.join(format!("limiter-test-ipfilter-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self { dir, prog: None }
    }

    /// `sh -c` that moves itself into the cgroup, then runs the daemon.
    fn spawn(&self) -> Spawn {
        let script = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", self.dir.display());
        Spawn { env: Vec::new(), wrap: vec!["sh".into(), "-c".into(), script, "sh".into()] }
    }

    /// Loads `r0 = 0; exit` as a `cgroup_skb` program and attaches it to the
    /// cgroup's ingress (raw bpf(2): no object file needed).
    fn filter(&mut self) {
        use std::os::fd::{AsRawFd as _, FromRawFd as _};
        #[repr(C, align(8))]
        struct Attr([u8; 128]);
        fn bpf(cmd: libc::c_long, attr: &mut Attr) -> libc::c_long {
            // SAFETY: a zero-padded bpf_attr of the size given.
            unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), size_of::<Attr>()) }
        }
        // mov64 r0, 0 (drop); exit
        let insns: [u64; 2] = [0xb7, 0x95];
        let license = c"GPL";
        let mut attr = Attr([0; 128]);
        attr.0[..4].copy_from_slice(&8u32.to_ne_bytes()); // BPF_PROG_TYPE_CGROUP_SKB
        attr.0[4..8].copy_from_slice(&2u32.to_ne_bytes());
        attr.0[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr.0[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        let fd = bpf(5, &mut attr); // BPF_PROG_LOAD
        assert!(fd >= 0, "loading a cgroup_skb program: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor the kernel gave us.
        let prog = unsafe { std::os::fd::OwnedFd::from_raw_fd(i32::try_from(fd).expect("an fd")) };
        let cg = fs::File::open(&self.dir).expect("the cgroup");
        let mut attr = Attr([0; 128]);
        let (target, prog_fd) = (cg.as_raw_fd().cast_unsigned(), prog.as_raw_fd().cast_unsigned());
        attr.0[..4].copy_from_slice(&target.to_ne_bytes());
        attr.0[4..8].copy_from_slice(&prog_fd.to_ne_bytes());
        // attach type BPF_CGROUP_INET_INGRESS (0), no flags
        assert_eq!(bpf(8, &mut attr), 0, "attaching to {}: {}", self.dir.display(), std::io::Error::last_os_error());
        self.prog = Some(prog);
    }
}

impl Drop for FilteredCgroup {
    fn drop(&mut self) {
        // Empty once its daemon is gone; removing it detaches the program.
        let _ = fs::remove_dir(&self.dir);
    }
}

#[test]
fn respond_under_an_ip_filter_is_warned_about() {
    require!(privileged());
    let mut cgroup = FilteredCgroup::new();
    let pair = Pair::new();
    let _server = pair.listen(PORT);
    let src = pair.add_client_v4(7);
    let dst = std::net::SocketAddr::new(pair.server_v4(), PORT);
    let dir = Scratch::new();
    let cfg = config(&dir, &pair, "respond");
    let args = ["--config", cfg.to_str().expect("utf-8 path")];
    let over_the_limit = || {
        let _held = streams(pair.hold(src, PORT, 1, WAIT));
        let got = pair.client.run(move || match limiter_tests::netns::connect(src, dst, WAIT) {
            limiter_tests::netns::Attempt::Connected(mut s) => {
                s.set_read_timeout(Some(WAIT)).expect("read timeout");
                let mut line = String::new();
                let _ = s.read_to_string(&mut line);
                line
            }
            other => format!("{other:?}"),
        });
        println!("over the limit: {got:?}");
        got
    };

    // No filter: the responder answers, and nothing is said.
    {
        let d = Daemon::start_with(&pair.server, &args, cgroup.spawn());
        assert!(over_the_limit().starts_with("421 "), "the responder did not answer: {}", d.log_text());
        assert!(!d.log_text().contains("IPAddressDeny"), "a warning with no filter: {}", d.log_text());
    }
    // A filter that drops what remote addresses send (IPAddressDeny=any): the
    // responder's clients time out, and the daemon says so at start.
    cgroup.filter();
    let d = Daemon::start_with(&pair.server, &args, cgroup.spawn());
    let log = d.wait_log("the filter warning", |l| l.contains("IPAddressAllow=any"));
    assert!(log.contains("service smtp answers with respond"), "{log}");
    assert_eq!(over_the_limit(), "TimedOut", "a client got through the filter: {}", d.log_text());
}

/// The daemon with `--config cfg` in `server`, run through `spawn`'s wrapper
/// (`what` names it in a failure), its log in the daemon's log file; not
/// waited for.
fn spawn_wrapped(server: &limiter_tests::netns::Netns, spawn: Spawn, cfg: &Path, what: &str) -> Daemon {
    let mut d = Daemon::unstarted(spawn);
    let log = fs::File::create(&d.log).expect("log file");
    let child = d
        .command(server, &["--config", cfg.to_str().expect("utf-8 path")])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    d.child = Some(child);
    d
}
