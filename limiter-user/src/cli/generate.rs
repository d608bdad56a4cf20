//! `limiter completions` and `limiter generate-man`: shell completions and
//! man pages generated from the clap definitions in `args`.

use std::{fmt::Write as _, path::Path};

use clap::CommandFactory as _;

use super::{
    args::{Cli, Shell},
    failure::Failure,
};

/// `limiter completions SHELL`: the script for the clap definitions in `args`,
/// without the hidden subcommands (`clap_complete` would offer them).
pub(super) fn print_completions(shell: Shell) {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let full = Cli::command();
    // clap cannot remove a subcommand: rebuild the top level from the visible ones.
    let mut cmd = clap::Command::new("limiter")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    clap_complete::generate(shell, &mut cmd, "limiter", &mut std::io::stdout());
}

/// The config file's page, limiter.toml(5), written by hand in roff: what
/// the keys mean is prose that no parser knows. A unit test checks that it
/// names every key the parser accepts.
pub(crate) const CONFIG_PAGE: &str = include_str!("../../../packaging/limiter.toml.5");

/// `limiter generate-man --out DIR`: a page per (visible) command, named
/// after its path: limiter.1, limiter-run.1, limiter-allow-add.1, ...
/// with the version on every page, not only on limiter.1, and the sections
/// clap has no notion of (EXIT STATUS, FILES, EXAMPLES, SEE ALSO) before
/// VERSION; and limiter.toml.5.
pub(super) fn generate_man(out: &Path) -> Result<(), Failure> {
    fn pages(cmd: &clap::Command, out: &Path) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub, out)?;
        }
        let man = clap_mangen::Man::new(cmd.clone()).source(concat!("limiter ", env!("CARGO_PKG_VERSION")));
        let mut page = Vec::new();
        man.render(&mut page)?;
        let page = String::from_utf8_lossy(&page);
        let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
        std::fs::write(out.join(man.get_filename()), with_sections(&page, name))
    }
    let fail = |e: std::io::Error| Failure::system(format!("writing man pages to {}: {e}", out.display()));
    std::fs::create_dir_all(out).map_err(fail)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Names the subcommands' pages "limiter-run" and so on.
    cmd.build();
    pages(&cmd, out).map_err(fail)?;
    std::fs::write(out.join("limiter.toml.5"), CONFIG_PAGE).map_err(fail)
}

/// `page` with the sections of [`sections`] put before its VERSION section
/// (at the end if it has none).
fn with_sections(page: &str, name: &str) -> String {
    let extra = sections(name);
    match page.find("\n.SH VERSION") {
        Some(at) => format!("{}\n{}{}", &page[..at], extra, &page[at + 1..]),
        None => format!("{page}{extra}"),
    }
}

/// EXIT STATUS, FILES, EXAMPLES and SEE ALSO for the page of `name`
/// (`limiter`, `limiter-run`, `limiter-allow-add`, ...), in roff.
fn sections(name: &str) -> String {
    let sub = name.strip_prefix("limiter-").unwrap_or("");
    let group = sub.split('-').next().unwrap_or("");
    let mut roff = String::from(".SH \"EXIT STATUS\"\n");
    let codes: &[(&str, &str)] = match sub {
        "doctor" => &[("0", "no check failed (warnings allowed)"), ("1", "a check failed"), ("2", "bad input")],
        "check-config" => &[
            ("0", "the file is valid"),
            ("1", "it cannot be read"),
            ("2", "it has problems, each printed with its line"),
        ],
        "completions" => &[("0", "the script was printed"), ("2", "bad input")],
        "run" => &[
            ("0", "stopped by SIGINT or SIGTERM; the pinned programs go on enforcing"),
            ("1", "a failure of the system: the kernel refused a program or a map, a file could not be written"),
            ("2", "bad input: a flag, the config file, an unknown interface"),
            ("4", "not permitted: not root, and without CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"),
        ],
        "" => &[
            ("0", "success"),
            ("1", "a failure of the system (the kernel, a file)"),
            ("2", "bad input (a flag, the config file, an address)"),
            ("3", "the daemon is not running (commands that ask it)"),
            ("4", "not permitted to use the control socket (it is root's)"),
        ],
        _ => &[
            ("0", "success"),
            ("1", "a failure of the system"),
            ("2", "bad input, or a change the daemon refused; nothing was applied"),
            ("3", "the daemon is not running"),
            ("4", "not permitted to use the control socket (it is root's)"),
        ],
    };
    for (code, meaning) in codes {
        let _ = write!(roff, ".TP\n.B {code}\n{}\n", escape(meaning));
    }
    let client = !matches!(sub, "run" | "doctor" | "check-config" | "completions" | "unload");
    roff.push_str(".SH FILES\n");
    let mut files: Vec<(&str, &str)> = Vec::new();
    if matches!(sub, "" | "run" | "check-config" | "doctor" | "reload") {
        files.push(("/etc/limiter/limiter.toml", "the policy (limiter.toml(5))"));
    }
    if matches!(sub, "" | "run" | "unload" | "doctor") {
        files.push(("/sys/fs/bpf/limiter", "the pinned programs and maps; they enforce while no daemon runs"));
    }
    if matches!(sub, "" | "run") || matches!(group, "allow" | "deny" | "reserve") {
        files.push(("/var/lib/limiter", "run-time list entries and the daemon's state, kept across restarts"));
    }
    if client || matches!(sub, "" | "run" | "doctor" | "unload") {
        files.push(("/run/limiter/limiter.sock", "the control socket (LIMITER_SOCKET, --socket)"));
    }
    if sub == "completions" {
        files.push(("/usr/share/bash-completion/completions/limiter", "where the package installs the bash script"));
    }
    for (file, what) in files {
        let _ = write!(roff, ".TP\n.I {}\n{}\n", escape(file), escape(what));
    }
    let examples = examples(sub);
    if !examples.is_empty() {
        roff.push_str(".SH EXAMPLES\n");
        for (what, command) in examples {
            let _ = write!(roff, "{}\n.PP\n.RS\n.EX\n{}\n.EE\n.RE\n.PP\n", escape(what), escape(command));
        }
    }
    roff.push_str(".SH \"SEE ALSO\"\n");
    let mut see: Vec<String> = Vec::new();
    if !sub.is_empty() {
        see.push("limiter (1)".into());
    }
    if let Some((parent, _)) = sub.rsplit_once('-') {
        see.push(format!("limiter\\-{} (1)", escape(parent)));
    }
    see.push("limiter.toml (5)".into());
    if matches!(sub, "" | "run" | "reload") {
        see.push("systemctl (1)".into());
        see.push("journalctl (1)".into());
    }
    if matches!(sub, "" | "deny" | "deny-add") {
        see.push("fail2ban (1)".into());
    }
    let see: Vec<String> =
        see.iter().map(|s| s.split_once(' ').map_or_else(|| s.clone(), |(n, sec)| format!(".BR {n} {sec}"))).collect();
    roff.push_str(&see.join(",\n"));
    roff.push('\n');
    roff
}

/// What a page's EXAMPLES show: a sentence and a command.
fn examples(sub: &str) -> Vec<(&'static str, &'static str)> {
    match sub {
        "" | "run" => vec![
            ("Protect the mail ports of eth0 with the built-in policy:", "limiter run --iface eth0"),
            (
                "At most 8 connections per source to port 25, refused with a reset:",
                "limiter run --iface eth0 --port 25 --max-conn-per-source 8 --action reset",
            ),
            ("As the Debian package's unit runs it:", "systemctl enable --now limiter"),
        ],
        "status" => vec![
            ("The running daemon's services and counters:", "limiter status"),
            ("For a script:", "limiter status --json"),
        ],
        "top" => vec![(
            "The 10 busiest sources of smtp, redrawn every 2 seconds:",
            "limiter top --service smtp -n 10 --watch 2",
        )],
        "explain" => vec![
            ("Why is a client refused, or would it be?", "limiter explain 198.51.100.7"),
            ("One service, for a script:", "limiter explain 2001:db8::7 --service imap --json"),
        ],
        "allow" | "allow-add" => vec![
            ("Exempt a backup MX:", "limiter allow add 2001:db8:1::/48 --comment \"backup MX\""),
            ("Give an office its own limit:", "limiter allow add '192.168.1.*' --max-conn-per-source 100"),
        ],
        "allow-del" => vec![("Remove a run-time entry:", "limiter allow del 192.168.1.0/24")],
        "allow-list" | "deny-list" | "reserve-list" => {
            vec![("Config and run-time entries, with their origin:", "limiter allow list")]
        }
        "deny" | "deny-add" => vec![
            ("Refuse a network at once, on every service:", "limiter deny add 203.0.113.0/24 --comment abuse"),
            (
                "Ban the whole source an address counts in (its /64 for IPv6), as fail2ban's action does:",
                "limiter deny add 2001:db8::7 --source-prefix",
            ),
        ],
        "deny-del" => vec![("Lift a ban, even if it is gone already:", "limiter deny del 203.0.113.0/24 --missing-ok")],
        "reserve" | "reserve-add" => vec![(
            "Let the outbound relay use smtp's reserved sessions:",
            "limiter reserve add 198.51.100.10 --service smtp",
        )],
        "reserve-del" => vec![("Remove it:", "limiter reserve del 198.51.100.10 --service smtp")],
        "reload" => vec![(
            "Check the edited file, then apply it:",
            "limiter check-config /etc/limiter/limiter.toml && systemctl reload limiter",
        )],
        "check-config" => {
            vec![("Every problem of a file, with its line:", "limiter check-config /etc/limiter/limiter.toml")]
        }
        "doctor" => {
            vec![("Is this host ready, and is what runs healthy?", "limiter doctor --config /etc/limiter/limiter.toml")]
        }
        "unload" => {
            vec![("Stop enforcing for good (the unit stopped first):", "systemctl stop limiter && limiter unload")]
        }
        "completions" => vec![("For bash:", "limiter completions bash > /etc/bash_completion.d/limiter")],
        _ => Vec::new(),
    }
}

/// Text for roff: a leading '.' or '\'' would be a request, '-' a hyphen
/// (not a minus), '\' an escape.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') { format!("\\&{text}") } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        file::{ALLOW_FIELDS, DENY_FIELDS, MAPS_FIELDS, RESERVE_FIELDS, RESPONDER_FIELDS, SERVICE_FIELDS, TOP_FIELDS},
        respond::Reason,
    };

    /// limiter.toml(5) names every key the parser accepts, in bold where it
    /// is described (a key added to the parser and not to the page fails).
    #[test]
    fn the_config_page_names_every_key() {
        let tables =
            [TOP_FIELDS, SERVICE_FIELDS, MAPS_FIELDS, RESPONDER_FIELDS, ALLOW_FIELDS, DENY_FIELDS, RESERVE_FIELDS];
        let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let bold: Vec<&str> = CONFIG_PAGE
            .lines()
            .filter(|l| l.starts_with(".B ") || l.starts_with(".BR ") || l.starts_with(".SH "))
            .collect();
        for key in tables.iter().flat_map(|t| t.iter()).chain(reasons.iter()) {
            let named =
                bold.iter().any(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(|w| w == *key));
            assert!(named, "limiter.toml.5 does not describe '{key}'");
        }
        assert!(CONFIG_PAGE.starts_with(".TH LIMITER.TOML 5 "));
    }

    #[test]
    fn every_page_has_exit_status_files_and_see_also() {
        let dir = std::env::temp_dir().join(format!("limiter-man-{}", std::process::id()));
        generate_man(&dir).expect("generate");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(
            names.contains(&"limiter.toml.5".to_owned()) && names.contains(&"limiter-run.1".to_owned()),
            "{names:?}"
        );
        for name in names.iter().filter(|n| n.ends_with(".1")) {
            let page = std::fs::read_to_string(dir.join(name)).expect("page");
            let at = |s: &str| page.find(s).unwrap_or_else(|| panic!("{name} has no {s}"));
            // In the usual order, before VERSION.
            assert!(at(".SH \"EXIT STATUS\"") < at(".SH FILES"), "{name}");
            assert!(at(".SH FILES") < at(".SH \"SEE ALSO\""), "{name}");
            if let Some(version) = page.find(".SH VERSION") {
                assert!(at(".SH \"SEE ALSO\"") < version, "{name}");
            }
            assert!(page.contains(".BR limiter.toml (5)"), "{name} does not point to the config page");
        }
        let run = std::fs::read_to_string(dir.join("limiter-run.1")).expect("run page");
        assert!(run.contains(".SH EXAMPLES") && run.contains("limiter run \\-\\-iface eth0"), "{run}");
        assert!(run.contains(".I /sys/fs/bpf/limiter"), "{run}");
        let status = std::fs::read_to_string(dir.join("limiter-status.1")).expect("status page");
        assert!(status.contains(".B 3\nthe daemon is not running"), "{status}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn roff_escapes() {
        assert_eq!(escape("--iface"), "\\-\\-iface");
        assert_eq!(escape(".hidden"), "\\&.hidden");
        assert_eq!(escape("a\\b"), "a\\eb");
    }
}
