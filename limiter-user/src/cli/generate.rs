//! `limiter completions` and `limiter generate-man`: shell completions and
//! man pages generated from the clap definitions in `args`.

use std::path::Path;

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

/// `limiter generate-man --out DIR`: a page per (visible) command, named
/// after its path: limiter.1, limiter-run.1, limiter-allow-add.1, ...
/// (`clap_mangen::generate_to`, with the version on every page, not only
/// on limiter.1).
pub(super) fn generate_man(out: &Path) -> Result<(), Failure> {
    fn pages(cmd: &clap::Command, out: &Path) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub, out)?;
        }
        clap_mangen::Man::new(cmd.clone()).source(concat!("limiter ", env!("CARGO_PKG_VERSION"))).generate_to(out)?;
        Ok(())
    }
    let fail = |e: std::io::Error| Failure::system(format!("writing man pages to {}: {e}", out.display()));
    std::fs::create_dir_all(out).map_err(fail)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Names the subcommands' pages "limiter-run" and so on.
    cmd.build();
    pages(&cmd, out).map_err(fail)
}
