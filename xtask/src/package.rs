//! `cargo xtask package`: the Debian package, built the way cargo-deb would with
//! `dpkg-deb` alone. It lays out the installed tree (the release binary, the systemd
//! unit, the conffile, man pages and completions the binary generates from its own
//! clap definitions, docs, fail2ban examples) and writes
//! `target/debian/limiter_VERSION_ARCH.deb`.

use std::{
    env, fs,
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

/// What the packaging steps run: `dpkg-deb`, `dpkg-shlibdeps` (dpkg-dev), `strip`
/// (binutils), `gzip`.
const TOOLS: &[&str] = &["dpkg-dev", "binutils", "gzip"];

/// Where the unit, the conffile and the maintainer scripts live in the repository.
const PACKAGING: &str = "packaging";

/// Builds the .deb from the release binary `bin` (as `crate::build` leaves it) and
/// returns its path.
pub(crate) fn deb(bin: &Path) -> Result<PathBuf> {
    setup::ensure_debian_packages(TOOLS)?;
    let src = workspace_root().join(PACKAGING);
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_owned();
    let out_dir = workspace_root().join("target/debian");
    let name = format!("limiter_{VERSION}_{arch}");
    let tree = Tree(out_dir.join(&name));
    if tree.0.exists() {
        fs::remove_dir_all(&tree.0).with_context(|| format!("removing {}", tree.0.display()))?;
    }

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

    for script in ["postinst", "prerm", "postrm"] {
        tree.copy(&src.join("debian").join(script), &format!("DEBIAN/{script}"), 0o755)?;
    }
    tree.write("DEBIAN/conffiles", 0o644, b"/etc/limiter/limiter.toml\n")?;
    let control = control(&arch, &depends(&installed_bin, &out_dir)?, tree.installed_size_kib()?);
    tree.write("DEBIAN/control", 0o644, control.as_bytes())?;
    tree.fix_dir_modes()?;

    let deb = out_dir.join(format!("{name}.deb"));
    // Its "building package" line goes to stderr: stdout is for the path alone.
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&tree.0)
        .arg(&deb)
        .stdout(Stdio::from(std::io::stderr())))?;
    deb.canonicalize().with_context(|| format!("dpkg-deb wrote no {}", deb.display()))
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
    for page in pages {
        let file = page.file_name().context("a page without a name")?.to_string_lossy().into_owned();
        gzip(&tree.copy(&page, &format!("usr/share/man/man1/{file}"), 0o644)?)?;
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

/// The shared libraries the binary needs, as package relations (`libc6 (>= 2.34),
/// libgcc-s1 (>= 4.2)`), from the symbol versions it uses (dpkg-shlibdeps).
fn depends(bin: &Path, scratch: &Path) -> Result<String> {
    // dpkg-shlibdeps insists on a debian/control in its working directory.
    let dir = scratch.join("shlibdeps");
    fs::create_dir_all(dir.join("debian"))?;
    fs::write(dir.join("debian/control"), "Source: limiter\n\nPackage: limiter\nArchitecture: any\n")?;
    let out = output(Command::new("dpkg-shlibdeps").arg("-O").arg(bin).current_dir(&dir))?;
    let deps = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends for {}: {out}", bin.display()))?;
    Ok(deps.trim().to_owned())
}

fn control(arch: &str, depends: &str, installed_kib: u64) -> String {
    // The Debian tools' own variables for who builds a package.
    let name = env::var("DEBFULLNAME").unwrap_or_else(|_| "limiter maintainers".into());
    let email = env::var("DEBEMAIL").unwrap_or_else(|_| "root@localhost".into());
    format!(
        "Package: limiter\n\
         Version: {VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: {name} <{email}>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Description: per-source connection limits for mail hosts, enforced in XDP\n \
         limiter refuses abusive connection attempts to a mail host (SMTP, IMAP,\n \
         POP3, FTP) in the kernel, before a socket, a fork or a TLS handshake is\n \
         spent on them. An XDP program counts SYNs per client source and answers\n \
         over-limit attempts at the NIC with an RST or a drop; sock_ops counts each\n \
         source's established connections exactly. A small daemon loads the\n \
         programs, holds the policy (/etc/limiter/limiter.toml, allow, deny and\n \
         reserve lists) and reports counters.\n \
         .\n \
         The service is not enabled on installation: set the interfaces in\n \
         /etc/limiter/limiter.toml, then systemctl enable --now limiter.\n"
    )
}

/// A machine-readable debian/copyright for the workspace's license.
fn copyright() -> String {
    let license = LICENSE.replace(" OR ", " or ");
    let mut text = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: limiter\n\n\
         Files: *\n\
         Copyright: the limiter contributors\n\
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

    /// Installed-Size: the files outside DEBIAN, in KiB rounded up per file.
    fn installed_size_kib(&self) -> Result<u64> {
        let mut kib = 0;
        for file in files_under(&self.0)? {
            if !file.strip_prefix(&self.0)?.starts_with("DEBIAN") {
                kib += fs::metadata(&file)?.len().div_ceil(1024);
            }
        }
        Ok(kib)
    }

    /// Directories 0755 whatever the umask was.
    fn fix_dir_modes(&self) -> Result<()> {
        fn walk(dir: &Path) -> Result<()> {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
            for entry in fs::read_dir(dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    walk(&path)?;
                }
            }
            Ok(())
        }
        walk(&self.0)
    }
}
