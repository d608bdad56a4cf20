//! The package's life under a real systemd (PID 1), as an admin goes through it: the
//! qemu guests of `cargo xtask test --kernel` boot one; on the host, xtask skips this
//! binary by name (its tests are in `mod systemd`). Installed with dpkg, the unit is
//! enabled and started (`active` only once the limit is enforced), reloaded with a
//! good and a broken config, left alone past its watchdog, killed with SIGKILL (the
//! pinned programs enforce through the gap, systemd restarts it, the counts survive),
//! restarted, upgraded to a newer build (try-restarted, counts intact), read back
//! from the journal by field, watched by fail2ban with `backend = systemd` banning
//! through `limiter deny`, scored by `systemd-analyze security` while it runs, and
//! purged, leaving nothing. The daemon runs in the root network namespace, as the
//! unit runs it; its clients come from a namespace at the other end of a veth.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

mod systemd {
    use std::{
        collections::HashMap,
        fs,
        net::{IpAddr, SocketAddr, TcpStream},
        path::Path,
        process::Command,
        thread,
        time::{Duration, Instant},
    };

    use limiter_tests::{
        Need,
        cli::{Scratch, limiter_at},
        fail2ban::Fail2ban,
        netns::{Attempt, Listener, Netns, attach_pass, connect, listen_here, sh, streams, tally, unique},
        package::{CONFFILE, Installed, PIN_DIR, SOCKET, UNIT, deb, dpkg, output, run, said, text, tool, upgrade_deb},
        patience, privileged, require,
    };

    /// The port the unit's daemon guards here (the smtp service of the config).
    const PORT: u16 = 25;
    /// The veth's addresses: the host end in the root namespace, the clients at the other.
    const NET: &str = "198.18.222";
    /// The highest `systemd-analyze security` exposure the unit may have (issue 16).
    const MAX_EXPOSURE: f64 = 2.5;
    /// Where the package ships the fail2ban files.
    const EXAMPLES: &str = "/usr/share/doc/limiter/examples/fail2ban";

    /// systemd as PID 1 (what this test is about), a need for [`require!`].
    fn systemd_is_pid1() -> Need {
        if Path::new("/run/systemd/system").is_dir() {
            Ok(())
        } else {
            Err("PID 1 is not systemd (no /run/systemd/system): this test runs in the guests of `cargo xtask \
                 test` (Debian 12's 6.1; or --kernel 6.12)"
                .into())
        }
    }

    /// A veth from the root namespace (where the unit's daemon attaches) to a client
    /// namespace of the test's own; removed with the namespace on drop.
    struct Link {
        /// The client end's pass-through XDP program (a veth hands `XDP_TX` frames, the
        /// resets, only to a peer that runs XDP).
        _peer_xdp: aya::Ebpf,
        client: Netns,
        host_if: String,
        client_if: String,
    }

    impl Link {
        fn new() -> Self {
            let client = Netns::new("ltsd");
            let host_if = unique("vsd");
            let client_if = unique("vsc");
            sh(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &client_if, "netns", &client.name]);
            sh(&["ip", "addr", "add", &format!("{NET}.1/24"), "dev", &host_if]);
            sh(&["ip", "link", "set", &host_if, "up"]);
            client.exec(&["ip", "link", "set", &client_if, "up"]);
            let peer_xdp = attach_pass(&client, &client_if);
            Self { _peer_xdp: peer_xdp, client, host_if, client_if }
        }

        fn add_client(&self, host: u8) -> IpAddr {
            self.client.exec(&["ip", "addr", "add", &format!("{NET}.{host}/24"), "dev", &self.client_if]);
            format!("{NET}.{host}").parse().expect("an address")
        }

        /// `n` attempts from `src` to the host end's port 25, one after the other.
        fn attempts(&self, src: IpAddr, n: usize) -> Vec<Attempt> {
            let dst = SocketAddr::new(format!("{NET}.1").parse().expect("an address"), PORT);
            let wait = patience(Duration::from_secs(3));
            self.client.run(move || (0..n).map(|_| connect(src, dst, wait)).collect())
        }

        /// `n` connections from `src` that must all get in, to hold.
        fn hold(&self, src: IpAddr, n: usize) -> Vec<TcpStream> {
            let a = self.attempts(src, n);
            assert_eq!(tally(&a).connected, n, "holding {n} from {src}: {a:?}");
            streams(a)
        }

        /// Whether the next attempt from `src` is refused (reset) rather than let in.
        fn refused(&self, src: IpAddr) -> bool {
            let t = tally(&self.attempts(src, 1));
            assert_eq!(t.connected + t.refused, 1, "an attempt neither connected nor refused: {t:?}");
            t.refused == 1
        }
    }

    /// The admin's config: the veth's host end, smtp on port 25 with `limit` connections a
    /// source (`limit` as written: a broken config passes a word).
    fn write_config(host_if: &str, limit: &str) {
        fs::write(
            CONFFILE,
            format!(
                "interfaces = [\"{host_if}\"]\n\n[[service]]\nname = \"smtp\"\nports = [{PORT}]\n\
                 max_conn_per_source = {limit}\naction = \"reset\"\n"
            ),
        )
        .expect("write the config");
    }

    /// `systemctl ARGS` and its output; the exit status is the caller's to judge.
    fn systemctl(args: &[&str]) -> std::process::Output {
        output(Command::new("systemctl").args(args))
    }

    /// The unit's properties (`systemctl show`).
    fn show() -> HashMap<String, String> {
        let props = "ActiveState,SubState,MainPID,NRestarts,WatchdogUSec,WatchdogTimestampMonotonic,LoadState";
        run(Command::new("systemctl").args(["show", "limiter.service", "-p", props]))
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn prop(name: &str) -> String {
        show().get(name).cloned().unwrap_or_default()
    }

    /// `systemctl ARGS` must succeed and leave the unit active; returns how long it took.
    fn systemctl_ok(args: &[&str]) -> Duration {
        let t = Instant::now();
        let out = systemctl(args);
        let took = t.elapsed();
        assert!(out.status.success(), "systemctl {args:?} failed:\n{}\n{}", said(&out), journal(&[]));
        let s = show();
        assert_eq!((s["ActiveState"].as_str(), s["SubState"].as_str()), ("active", "running"), "after {args:?}: {s:?}");
        println!("systemctl {} took {:.1} s", args.join(" "), took.as_secs_f64());
        took
    }

    /// Polls the unit's properties until `f` holds, up to `limit` (scaled).
    fn wait_unit(what: &str, limit: Duration, f: impl Fn(&HashMap<String, String>) -> bool) -> HashMap<String, String> {
        let limit = patience(limit);
        let start = Instant::now();
        loop {
            let s = show();
            if f(&s) {
                return s;
            }
            assert!(start.elapsed() < limit, "{what} within {limit:?}: {s:?}\n{}", journal(&[]));
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `journalctl -u limiter MATCHES`, messages only.
    fn journal(matches: &[&str]) -> String {
        run(Command::new("journalctl").args(["--no-pager", "-o", "cat", "-u", "limiter"]).args(matches))
    }

    /// `limiter ARGS` against the unit's daemon (its socket), which must answer.
    fn client_json(args: &[&str]) -> serde_json::Value {
        let out = limiter_at(Path::new(SOCKET), args);
        assert_eq!(out.code, Some(0), "limiter {args:?}: {out:?}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("limiter {args:?}: {e}: {}", out.stdout))
    }

    /// The smtp service's established connections, as `limiter status --json` counts them.
    fn connections() -> u64 {
        let s = client_json(&["status", "--json"]);
        s["services"][0]["connections"].as_u64().unwrap_or_else(|| panic!("no connections in {s}"))
    }

    /// The run-time deny entries: (prefix, comment).
    fn denied() -> Vec<(String, String)> {
        limiter_tests::fail2ban::denied_entries(&client_json(&["deny", "list", "--json"]))
    }

    fn main_pid() -> u32 {
        prop("MainPID").parse().expect("a MainPID")
    }

    /// After a restart of any kind: a new daemon, active, still counting the
    /// `held` connections (once each), and refusing the next one from `src`.
    fn check_survived(what: &str, link: &Link, src: IpAddr, old_pid: u32, held: u64) -> u32 {
        let pid = main_pid();
        assert!(pid != 0 && pid != old_pid, "{what}: MainPID {old_pid} -> {pid}");
        assert_eq!(connections(), held, "{what}: the held connections are not counted once each");
        assert!(link.refused(src), "{what}: the next attempt got in\n{}", journal(&[]));
        pid
    }

    /// Installed, enabled and started: `systemctl enable --now` returns once the daemon
    /// said READY=1, and the limit (3) holds at that moment. Returns the 3 held
    /// connections and the daemon's pid.
    fn install_and_enable(link: &Link, src: IpAddr) -> (Vec<TcpStream>, u32) {
        // Neither enabled nor started until the admin has set the interfaces.
        let s = show();
        assert_eq!((s["LoadState"].as_str(), s["ActiveState"].as_str()), ("loaded", "inactive"), "{s:?}");
        assert_eq!(text(&systemctl(&["is-enabled", "limiter"]).stdout).trim(), "disabled", "after dpkg -i");
        write_config(&link.host_if, "3");
        systemctl_ok(&["enable", "--now", "limiter"]);
        let held = link.hold(src, 3);
        assert!(link.refused(src), "the 4th connection got in right after enable --now\n{}", journal(&[]));
        assert_eq!(connections(), 3);
        assert_eq!(text(&systemctl(&["is-enabled", "limiter"]).stdout).trim(), "enabled");
        (held, main_pid())
    }

    /// A good reload (limit 4: one more gets in, the next does not) and a broken one
    /// (systemctl fails, the unit stays up with limit 4, the journal has the problem on
    /// one line); the same process all along.
    fn reloads(link: &Link, src: IpAddr, pid: u32, held: &mut Vec<TcpStream>) {
        write_config(&link.host_if, "4");
        systemctl_ok(&["reload", "limiter"]);
        held.extend(link.hold(src, 1));
        assert!(link.refused(src), "over the reloaded limit of 4");
        assert_eq!((main_pid(), connections()), (pid, 4));

        write_config(&link.host_if, "\"four\"");
        let out = systemctl(&["reload", "limiter"]);
        assert!(!out.status.success(), "systemctl reload with a broken config succeeded:\n{}", said(&out));
        let s = show();
        assert_eq!((s["ActiveState"].as_str(), main_pid()), ("active", pid), "after the broken reload: {s:?}");
        assert!(link.refused(src), "the old limit (4) is not enforced after the broken reload");
        assert_eq!(connections(), 4);
        let log = journal(&[]);
        let problem = log.lines().find(|l| l.contains("max_conn_per_source = \"four\""));
        assert!(
            problem.is_some_and(|l| l.contains(CONFFILE)),
            "no one-line problem naming the file in the journal:\n{log}"
        );
        println!("the broken reload, in the journal: {}", problem.unwrap_or_default());
        write_config(&link.host_if, "4");
    }

    /// Past `WatchdogSec=` the daemon still runs, not restarted, and its pings arrived.
    fn watchdog(pid: u32) {
        let before = show();
        // "30s": systemctl shows it as a time span.
        let watchdog = before["WatchdogUSec"]
            .strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .map_or_else(|| panic!("WatchdogUSec in {before:?}"), Duration::from_secs);
        assert!(watchdog >= Duration::from_secs(10), "WatchdogUSec {before:?}");
        thread::sleep(watchdog + Duration::from_secs(5));
        let after = show();
        assert_eq!(
            (after["ActiveState"].as_str(), after["NRestarts"].as_str(), main_pid()),
            ("active", "0", pid),
            "past the watchdog: {after:?}\n{}",
            journal(&[])
        );
        let ping = |s: &HashMap<String, String>| s["WatchdogTimestampMonotonic"].parse::<u64>().unwrap_or(0);
        assert!(ping(&after) > ping(&before), "no watchdog ping in {watchdog:?}: {before:?} -> {after:?}");
    }

    /// `kill -9` of the daemon: the pinned programs refuse through the gap, systemd
    /// restarts it (`Restart=on-failure`), the counts survive. Returns the new pid.
    fn kill_9(link: &Link, src: IpAddr, pid: u32) -> u32 {
        // SAFETY: signalling the unit's main process.
        assert_eq!(unsafe { libc::kill(libc::pid_t::try_from(pid).expect("a pid"), libc::SIGKILL) }, 0);
        wait_unit("the unit waiting to restart", Duration::from_secs(5), |s| s["SubState"] == "auto-restart");
        assert!(link.refused(src), "an over-limit attempt got in while the daemon was dead");
        let gap = show();
        assert_eq!(gap["SubState"], "auto-restart", "the attempt was not made in the gap: {gap:?}");
        wait_unit("the restart after kill -9", Duration::from_mins(1), |s| {
            s["ActiveState"] == "active" && s["NRestarts"] == "1"
        });
        check_survived("after kill -9", link, src, pid, 4)
    }

    /// An upgrade to a newer build: the postinst try-restarts the running unit.
    fn upgrade(link: &Link, src: IpAddr, pid: u32, deb: &Path) -> u32 {
        let out = dpkg(&["--install", &deb.display().to_string()]);
        assert!(out.status.success(), "the upgrade failed:\n{}", said(&out));
        let version = run(Command::new("dpkg-query").args(["--show", "--showformat=${Version}", "limiter"]));
        assert_eq!(version, "0.1.0+test2");
        wait_unit("active after the upgrade", Duration::from_secs(30), |s| s["ActiveState"] == "active");
        check_survived("after the upgrade", link, src, pid, 4)
    }

    /// `journalctl -u limiter SERVICE=smtp`: the refusals of `src` under both limits, and
    /// nothing without the field.
    fn journal_by_field(src: IpAddr) {
        let smtp = journal(&["SERVICE=smtp"]);
        for limit in [3, 4] {
            let want =
                format!("refused {src} smtp:{PORT} too many connections ({limit} established, limit {limit}), reset");
            assert!(
                smtp.lines().any(|l| l.starts_with(&want)),
                "no {want:?} in journalctl -u limiter SERVICE=smtp:\n{smtp}"
            );
        }
        assert!(smtp.lines().all(|l| l.contains(" smtp:25 ")), "lines of other services matched:\n{smtp}");
        assert!(!smtp.contains("attached to"), "SERVICE=smtp matched lines without the field:\n{smtp}");
    }

    /// fail2ban with the package's filter, action and jail, the jail enabled as its
    /// comment says, reading the journal (`backend = systemd`): `src`'s refusals so far
    /// and those of a second abuser (`abuser`, which holds 4 and keeps trying) ban both
    /// through `limiter deny`, and a banned source is refused by the deny list.
    fn fail2ban_bans(link: &Link, src: IpAddr, abuser: IpAddr) {
        let scratch = Scratch::new();
        let f2b = Fail2ban::start(&scratch.0, Path::new(EXAMPLES), "[limiter]\nenabled = true\nmaxretry = 2\n");
        let limit = patience(Duration::from_mins(1));
        let start = Instant::now();
        let banned = |a: IpAddr| denied().iter().any(|(p, c)| *p == format!("{a}/32") && c == "fail2ban limiter");
        while !(banned(src) && banned(abuser)) {
            assert!(
                start.elapsed() < limit,
                "not both banned within {limit:?}: {:?}\nfail2ban log:\n{}\njournal:\n{}",
                denied(),
                f2b.log(),
                journal(&[])
            );
            // The journal gets one line per source and 10 s burst, which fail2ban counts once.
            if !banned(abuser) {
                let _ = link.attempts(abuser, 1);
            }
            thread::sleep(Duration::from_secs(2));
        }
        let log = f2b.log();
        assert!(log.contains(&format!("[limiter] Ban {abuser}")), "fail2ban's log:\n{log}");
        let refused_deny = || client_json(&["status", "--json"])["totals"]["refused_deny"].as_u64().unwrap_or(0);
        let before = refused_deny();
        assert!(link.refused(abuser), "a banned source got in");
        assert!(refused_deny() > before, "the banned source was not refused by the deny list");
    }

    /// `systemd-analyze security` of the unit with the daemon running under it.
    fn exposure(pid: u32) {
        let out = output(Command::new("systemd-analyze").args(["security", "--no-pager", "limiter.service"]));
        let report = text(&out.stdout);
        let score = report
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for limiter.service: "))
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{report}{}", text(&out.stderr)));
        println!("systemd-analyze security limiter.service (running): {score} (at most {MAX_EXPOSURE})");
        assert!(score <= MAX_EXPOSURE, "exposure {score} > {MAX_EXPOSURE}:\n{report}");
        assert_eq!(main_pid(), pid, "the daemon changed while it was scored");
    }

    #[test]
    fn the_admins_life_with_the_unit() {
        require!(systemd_is_pid1(), privileged());
        let deb = require!(deb());
        let upgrade_to = require!(upgrade_deb());
        require!(tool("fail2ban-server"), tool("systemd-analyze"));
        let started = Instant::now();
        let link = Link::new();
        let _server: Listener = listen_here(SocketAddr::new(format!("{NET}.1").parse().expect("addr"), PORT));
        let src = link.add_client(7);
        let abuser = link.add_client(9);
        let mut installed = Installed::install(&deb);

        let (mut held, pid) = install_and_enable(&link, src);
        reloads(&link, src, pid, &mut held);
        watchdog(pid);
        let pid = kill_9(&link, src, pid);
        systemctl_ok(&["restart", "limiter"]);
        let pid = check_survived("after systemctl restart", &link, src, pid, 4);
        let pid = upgrade(&link, src, pid, &upgrade_to);
        journal_by_field(src);
        let abuser_held = link.hold(abuser, 4);
        fail2ban_bans(&link, src, abuser);
        exposure(pid);

        // Purged: the daemon stopped (the prerm's), no unit, no pins, no binary, no enforcement.
        drop(held);
        let out = installed.purge();
        assert!(out.status.success(), "dpkg --purge failed:\n{}", said(&out));
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the daemon ({pid}) still runs after the purge");
        assert_eq!(prop("LoadState"), "not-found", "the unit is still known after the purge");
        for f in [UNIT, PIN_DIR, "/usr/bin/limiter", "/etc/systemd/system/multi-user.target.wants/limiter.service"] {
            assert!(!Path::new(f).exists(), "{f} is left after the purge");
        }
        let t = tally(&link.attempts(abuser, 1));
        assert_eq!(t.connected, 1, "the banned abuser is still refused after the purge: {t:?}");
        drop(abuser_held);
        println!("the admin's life under systemd took {:.0} s", started.elapsed().as_secs_f64());
    }
}
