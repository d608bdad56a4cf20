//! `cargo xtask package`: the Debian package. It lays out the installed tree (the
//! release binary, the systemd unit, the conffile, man pages and completions the binary
//! generates from its own clap definitions, docs, fail2ban examples) under a scratch
//! `debian/limiter`, then lets debhelper do what it does for every Debian package: the
//! systemd maintainer-script snippets (`dh_installsystemd`), the changelog, conffiles,
//! shared-library dependencies, control, md5sums and the .deb itself, written to
//! `target/debian/limiter_VERSION_ARCH.deb`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup,
    util::{output, run},
    workspace_root,
};

/// The workspace version and license (xtask inherits both).
const VERSION: &str = env!("CARGO_PKG_VERSION");
const LICENSE: &str = env!("CARGO_PKG_LICENSE");

/// What the packaging steps run: debhelper (the dh_* tools, with dpkg-dev under
/// them), `strip` (binutils), `gzip`.
const TOOLS: &[&str] = &["debhelper", "dpkg-dev", "binutils", "gzip"];

/// Where the unit, the conffile and the Debian files (control, changelog, maintainer
/// scripts, lintian overrides) live in the repository.
const PACKAGING: &str = "packaging";

/// The maintainer scripts, with debhelper's `#DEBHELPER#` where its snippets go.
const SCRIPTS: &[&str] = &["preinst", "postinst", "prerm", "postrm"];

/// The line of `limiter.preinst` that becomes the new binary's map layout.
const LAYOUT_TOKEN: &str = "@LAYOUT@";

/// The debhelper steps after the tree is laid out, in `dh`'s order for a binary
/// package. The unit is neither enabled nor started on install (the admin picks the
/// interfaces first); an upgrade try-restarts it when it runs.
const DH_STEPS: &[&[&str]] = &[
    &["dh_installsystemd", "--no-enable", "--no-start", "--restart-after-upgrade"],
    &["dh_installchangelogs"],
    &["dh_lintian"],
    &["dh_compress"],
    &["dh_fixperms"],
    &["dh_installdeb"],
    &["dh_shlibdeps"],
    &["dh_gencontrol"],
    &["dh_md5sums"],
];

/// Builds the .deb from the release binary `bin` (as `crate::build` leaves it) and
/// returns its path. `version` replaces the changelog's (a newer build to upgrade to).
pub(crate) fn deb(bin: &Path, version: Option<&str>) -> Result<PathBuf> {
    setup::ensure_debian_packages(TOOLS)?;
    let src = workspace_root().join(PACKAGING);
    let debian_src = src.join("debian");
    check_changelog_version(&debian_src.join("changelog"))?;
    if let Some(v) = version {
        let newer = Command::new("dpkg").args(["--compare-versions", v, "gt", VERSION]).status()?;
        if !newer.success() {
            bail!("--version {v} does not sort after {VERSION} (dpkg --compare-versions)");
        }
    }
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_owned();
    let out_dir = workspace_root().join("target/debian");
    let build = out_dir.join("build");
    if build.exists() {
        fs::remove_dir_all(&build).with_context(|| format!("removing {}", build.display()))?;
    }
    let debian = build.join("debian");
    fs::create_dir_all(&debian)?;
    for file in ["control", "changelog"] {
        fs::copy(debian_src.join(file), debian.join(file)).with_context(|| format!("copying debian/{file}"))?;
    }
    fs::write(debian.join("copyright"), copyright())?;
    for script in SCRIPTS {
        let mut text = fs::read_to_string(debian_src.join(format!("limiter.{script}")))
            .with_context(|| format!("reading limiter.{script}"))?;
        if text.contains(LAYOUT_TOKEN) {
            let layout = output(Command::new(bin).args(["check-pins", "--print-layout"]))?;
            text = text.replace(LAYOUT_TOKEN, layout.trim_end());
        }
        fs::write(debian.join(format!("limiter.{script}")), text)?;
    }
    fs::copy(debian_src.join("limiter.lintian-overrides"), debian.join("limiter.lintian-overrides"))
        .context("copying limiter.lintian-overrides")?;

    let tree = Tree(debian.join("limiter"));
    let installed_bin = tree.copy(bin, "usr/bin/limiter", 0o755)?;
    run(Command::new("strip")
        .args(["--strip-unneeded", "--remove-section=.comment", "--remove-section=.note"])
        .arg(&installed_bin))?;
    tree.copy(&src.join("limiter.service"), "lib/systemd/system/limiter.service", 0o644)?;
    tree.copy(&src.join("limiter.toml"), "etc/limiter/limiter.toml", 0o644)?;
    man_pages(bin, &tree, &out_dir.join("man"))?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/limiter"),
        ("zsh", "usr/share/zsh/vendor-completions/_limiter"),
        ("fish", "usr/share/fish/vendor_completions.d/limiter.fish"),
    ] {
        let script = output(Command::new(bin).args(["completions", shell]))?;
        tree.write(path, 0o644, script.as_bytes())?;
    }
    docs(&tree)?;

    for step in DH_STEPS {
        let mut cmd = dh(&build, step);
        if let (Some(v), ["dh_gencontrol"]) = (version, step) {
            cmd.args(["--", &format!("-v{v}")]);
        }
        run(&mut cmd)?;
    }
    // Its "building package" line goes to stderr: stdout is for the path alone.
    let mut builddeb = dh(&build, &["dh_builddeb"]);
    builddeb.arg("--destdir").arg(&out_dir).stdout(Stdio::from(std::io::stderr()));
    run(&mut builddeb)?;
    let deb = out_dir.join(format!("limiter_{}_{arch}.deb", version.unwrap_or(VERSION)));
    deb.canonicalize().with_context(|| format!("dh_builddeb wrote no {}", deb.display()))
}

/// A debhelper tool run in the scratch source tree `build` (debhelper reads
/// `debian/` from its working directory). `DEB_BUILD_OPTIONS` from the caller's
/// shell (nostrip, nocheck, ...) is not for this build.
fn dh(build: &Path, step: &[&str]) -> Command {
    let mut cmd = Command::new(step[0]);
    cmd.args(&step[1..]).current_dir(build).env_remove("DEB_BUILD_OPTIONS");
    cmd
}

/// The changelog's newest entry must be the workspace's version: dpkg-gencontrol
/// takes the package's version from it.
fn check_changelog_version(changelog: &Path) -> Result<()> {
    let text = fs::read_to_string(changelog).with_context(|| format!("reading {}", changelog.display()))?;
    let first = text.lines().next().unwrap_or_default();
    let want = format!("limiter ({VERSION})");
    if !first.starts_with(&want) {
        bail!(
            "{} starts with '{first}', not '{want} ...': add an entry for {VERSION} (dch -v {VERSION})",
            changelog.display()
        );
    }
    Ok(())
}

/// `limiter.1` and a page per subcommand, gzipped as Debian wants them.
fn man_pages(bin: &Path, tree: &Tree, scratch: &Path) -> Result<()> {
    if scratch.exists() {
        fs::remove_dir_all(scratch)?;
    }
    run(Command::new(bin).arg("generate-man").arg("--out").arg(scratch))?;
    let mut pages = files_under(scratch)?;
    pages.sort();
    if !pages.iter().any(|p| p.ends_with("limiter.1")) {
        bail!("`limiter generate-man` wrote no limiter.1 into {}", scratch.display());
    }
    if !pages.iter().any(|p| p.ends_with("limiter.toml.5")) {
        bail!("`limiter generate-man` wrote no limiter.toml.5 into {}", scratch.display());
    }
    for page in pages {
        let file = page.file_name().context("a page without a name")?.to_string_lossy().into_owned();
        // limiter.1 into man1, limiter.toml.5 into man5.
        let section = file.rsplit('.').next().unwrap_or("1");
        gzip(&tree.copy(&page, &format!("usr/share/man/man{section}/{file}"), 0o644)?)?;
    }
    Ok(())
}

/// `/usr/share/doc/limiter`: copyright, README, and the fail2ban examples (every
/// file under packaging/fail2ban, when that exists).
fn docs(tree: &Tree) -> Result<()> {
    let doc = "usr/share/doc/limiter";
    tree.write(&format!("{doc}/copyright"), 0o644, copyright().as_bytes())?;
    gzip(&tree.copy(&workspace_root().join("README.md"), &format!("{doc}/README.md"), 0o644)?)?;
    let fail2ban = workspace_root().join(PACKAGING).join("fail2ban");
    if fail2ban.is_dir() {
        for file in files_under(&fail2ban)? {
            let rel = file.strip_prefix(&fail2ban)?.display().to_string();
            tree.copy(&file, &format!("{doc}/examples/fail2ban/{rel}"), 0o644)?;
        }
    }
    Ok(())
}

/// A machine-readable debian/copyright for the workspace's license.
fn copyright() -> String {
    let license = LICENSE.replace(" OR ", " or ");
    let mut text = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: limiter\n\n\
         Files: *\n\
         Copyright: 2026 the limiter contributors\n\
         License: {license}\n"
    );
    for name in LICENSE.split(" OR ") {
        text.push('\n');
        text.push_str(&license_text(name));
    }
    text
}

fn license_text(name: &str) -> String {
    match name {
        "Apache-2.0" => "License: Apache-2.0\n \
             On Debian systems, the complete text of the Apache License, Version 2.0\n \
             can be found in /usr/share/common-licenses/Apache-2.0.\n"
            .to_owned(),
        "MIT" => "License: MIT\n \
             Permission is hereby granted, free of charge, to any person obtaining a\n \
             copy of this software and associated documentation files (the \"Software\"),\n \
             to deal in the Software without restriction, including without limitation\n \
             the rights to use, copy, modify, merge, publish, distribute, sublicense,\n \
             and/or sell copies of the Software, and to permit persons to whom the\n \
             Software is furnished to do so, subject to the following conditions:\n \
             .\n \
             The above copyright notice and this permission notice shall be included\n \
             in all copies or substantial portions of the Software.\n \
             .\n \
             THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS\n \
             OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF\n \
             MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.\n \
             IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY\n \
             CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,\n \
             TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE\n \
             SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.\n"
            .to_owned(),
        other => format!("License: {other}\n See the license's text at https://spdx.org/licenses/{other}.html.\n"),
    }
}

/// Replaces `path` by `path.gz` (`-n`: no name or time stamp, so the same input
/// gives the same bytes).
fn gzip(path: &Path) -> Result<()> {
    run(Command::new("gzip").args(["-9n", "--force"]).arg(path))
}

/// Every file below `dir`, recursively.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(files_under(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// The package's root directory; paths are relative to it.
struct Tree(PathBuf);

impl Tree {
    fn write(&self, rel: &str, mode: u32, data: &[u8]) -> Result<PathBuf> {
        let path = self.0.join(rel);
        fs::create_dir_all(path.parent().context("a path without a parent")?)?;
        fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(path)
    }

    fn copy(&self, from: &Path, rel: &str, mode: u32) -> Result<PathBuf> {
        let data = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        self.write(rel, mode, &data)
    }
}
