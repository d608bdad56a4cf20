//! `cargo xtask test --kernel 6.1,6.12`: the privileged suite on Debian's own kernels. A bookworm
//! guest image (debootstrap, each kernel package with its modules, the packages the tests use) is
//! built once and cached; each kernel boots it under qemu and runs the host-built test binaries,
//! shared read-only over 9p at the same path, one binary at a time as on the host.

use std::{
    env,
    fmt::Write as _,
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup,
    util::{self, output, run},
};

/// A Debian kernel the suite runs on: the newest package of `series` whose
/// name matches `package` (an `apt-cache search` regex), from `suite`.
pub(crate) struct Kernel {
    pub(crate) series: &'static str,
    suite: &'static str,
    package: &'static str,
}

/// Debian 12's own kernel, and the 6.12 that Debian 12 hosts get from
/// backports (the kernel of Debian 13).
pub(crate) const KERNELS: &[Kernel] = &[
    Kernel { series: "6.1", suite: "bookworm", package: r"^linux-image-6\.1\.0-[0-9]+-amd64$" },
    Kernel { series: "6.12", suite: "bookworm-backports", package: r"^linux-image-6\.12\.[0-9]+\+(bpo|deb12)-amd64$" },
];

const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// Bumped by hand when the image recipe changes in a way the stamp cannot
/// see (the package lists and the files written into the image are in it).
const RECIPE: &str = "limiter guest image 1";

/// What boots the guest and hands over to the job: systemd as PID 1, as on
/// a mail host, and the tools the job script itself uses.
const BOOT_PACKAGES: &[&str] = &["systemd-sysv", "udev", "kmod", "initramfs-tools", "dbus", "ca-certificates"];

/// The modules the initramfs needs to find the root disk; everything else
/// loads from the root filesystem (MODULES=list keeps the initramfs small).
const INITRAMFS_MODULES: &str = "virtio_pci\nvirtio_blk\next4\n";

/// Runs the job once the system is up; the job powers the guest off.
const JOB_UNIT: &str = "[Unit]
Description=limiter test job (/mnt/ctl/job.sh)
After=multi-user.target mnt-ctl.mount
Requires=mnt-ctl.mount
[Service]
Type=oneshot
ExecStart=/bin/bash /mnt/ctl/job.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
";

/// Services the test packages install that must not run in the guest: the
/// tests start private instances in namespaces, and timers only cost time.
const DISABLED_UNITS: &[&str] = &[
    "postfix.service",
    "dovecot.service",
    "dovecot.socket",
    "vsftpd.service",
    "fail2ban.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "dpkg-db-backup.timer",
    "systemd-timesyncd.service",
];

/// The job, run by bash inside the guest. `/mnt/ctl/tests.list` holds one
/// test binary a line: name, executable, directory to run it in (cargo runs
/// a test binary in its package's directory). Each result is a line of
/// `/mnt/ctl/results.tsv`; each binary's output is also on the console.
const JOB_SCRIPT: &str = r#"#!/bin/bash
set -u
ctl=/mnt/ctl
echo "LIMITER-GUEST job start: kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s"
systemctl --failed --no-legend --plain 2>&1 | sed 's/^/failed unit: /'
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1
set -a; . $ctl/env; set +a
mapfile -t args < $ctl/args
mkdir -p $ctl/logs
: > $ctl/results.tsv
while IFS=$'\t' read -r name exe dir; do
  echo "LIMITER-GUEST run $name"
  s=$(date +%s)
  (cd "$dir" && timeout -k 10 "$PER_BINARY_TIMEOUT" "$exe" --test-threads=1 "${args[@]}") > "$ctl/logs/$name.log" 2>&1
  rc=$?
  cat "$ctl/logs/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - s ))" >> $ctl/results.tsv
  # What a failed test left behind must not break the next binary.
  ip -all netns delete 2>/dev/null
  for p in /sys/fs/bpf/limiter-test-*; do [ -e "$p" ] && "$LIMITER_BIN" unload --pin-dir "$p" >/dev/null 2>&1; rm -rf "$p"; done
done < $ctl/tests.list
echo "LIMITER-GUEST job done"
sync
systemctl poweroff --no-block
"#;

/// Where images and runs are kept: `LIMITER_GUEST_CACHE`, else the
/// checkout's own `target/guest` (each checkout builds its own image, so two
/// checkouts never rebuild one under each other).
fn cache_dir() -> PathBuf {
    env::var_os("LIMITER_GUEST_CACHE").map_or_else(|| crate::workspace_root().join("target/guest"), PathBuf::from)
}

fn secs_from_env(name: &str, default: u64) -> Duration {
    Duration::from_secs(env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

pub(crate) fn kernel(series: &str) -> Result<&'static Kernel> {
    KERNELS.iter().find(|k| k.series == series).with_context(|| {
        let known: Vec<_> = KERNELS.iter().map(|k| k.series).collect();
        format!("no guest kernel {series:?}: known are {} (and `host`)", known.join(", "))
    })
}

/// Everything that decides the image's content; a different stamp means a
/// rebuild.
fn stamp() -> String {
    let kernels: Vec<String> = KERNELS.iter().map(|k| format!("{} {} {}", k.series, k.suite, k.package)).collect();
    format!(
        "{RECIPE}\nmirror {MIRROR}\nboot {}\ntests {}\nkernels {}\ninitramfs {INITRAMFS_MODULES}\nunit {JOB_UNIT}\ndisabled {}\n",
        BOOT_PACKAGES.join(" "),
        setup::DEBIAN_PACKAGES.join(" "),
        kernels.join("; "),
        DISABLED_UNITS.join(" "),
    )
}

/// A built image: the root filesystem and, per kernel series, its vmlinuz
/// and initrd.
pub(crate) struct Image {
    dir: PathBuf,
}

impl Image {
    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs.img")
    }

    fn kernel_dir(&self, k: &Kernel) -> PathBuf {
        self.dir.join("kernels").join(k.series)
    }

    fn kernel_version(&self, k: &Kernel) -> Result<String> {
        let f = self.kernel_dir(k).join("version");
        Ok(fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?.trim().to_owned())
    }
}

/// The cached image if its stamp matches, else a new one (about ten
/// minutes, mostly downloads and package installs).
pub(crate) fn image() -> Result<Image> {
    let cache = cache_dir();
    let image = Image { dir: cache.join("image") };
    let want = stamp();
    if fs::read_to_string(image.dir.join("stamp")).is_ok_and(|s| s == want) && image.rootfs().exists() {
        eprintln!("xtask: reusing the guest image in {} (its inputs are unchanged)", image.dir.display());
        return Ok(image);
    }
    setup::ensure_debian_packages(&["debootstrap", "qemu-system-x86", "e2fsprogs"])?;
    let started = Instant::now();
    eprintln!("xtask: building the guest image in {} (bookworm, kernels, test packages)", image.dir.display());
    let build = cache.join("image.new");
    remove_tree(&build)?;
    fs::create_dir_all(&build)?;
    build_image(&build, &want)?;
    remove_tree(&image.dir)?;
    fs::rename(&build, &image.dir)?;
    eprintln!("xtask: guest image built in {}", util::minutes(started.elapsed()));
    Ok(image)
}

/// Removes a directory tree that may hold a half-built root filesystem:
/// whatever a killed build left mounted in it goes first, and `rm` never
/// crosses into another filesystem.
fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let dir = dir.canonicalize()?;
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut inside: Vec<&str> =
        mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| Path::new(m).starts_with(&dir)).collect();
    inside.sort_unstable_by_key(|m| std::cmp::Reverse(m.len()));
    for m in inside {
        run(Command::new("umount").arg("-l").arg(m))?;
    }
    run(Command::new("rm").arg("-rf").arg("--one-file-system").arg(&dir))
}

/// proc, sys and dev mounted in a chroot for as long as it lives.
struct ChrootMounts {
    mounted: Vec<PathBuf>,
}

impl ChrootMounts {
    fn new(root: &Path) -> Result<Self> {
        let mut m = Self { mounted: Vec::new() };
        for (args, dir) in [
            (&["-t", "proc", "proc"][..], "proc"),
            (&["-t", "sysfs", "sys"][..], "sys"),
            (&["--bind", "/dev"][..], "dev"),
            (&["--bind", "/dev/pts"][..], "dev/pts"),
        ] {
            let target = root.join(dir);
            run(Command::new("mount").args(args).arg(&target))?;
            m.mounted.push(target);
        }
        Ok(m)
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        for target in self.mounted.iter().rev() {
            if let Err(e) = run(Command::new("umount").arg("-l").arg(target)) {
                eprintln!("xtask: {e}");
            }
        }
    }
}

/// Runs a shell snippet inside the chroot, bounded in time.
fn in_root(root: &Path, limit: Duration, script: &str) -> Result<()> {
    run(Command::new("timeout")
        .args(["-k", "10", &limit.as_secs().to_string(), "chroot"])
        .arg(root)
        .args(["/bin/sh", "-ec", script])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8")
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"))
}

fn build_image(dir: &Path, stamp: &str) -> Result<()> {
    let root = dir.join("root");
    let t = Instant::now();
    run(Command::new("timeout")
        .args(["-k", "10", "1200", "debootstrap", "--variant=minbase"])
        .arg(format!("--include={}", BOOT_PACKAGES.join(",")))
        .arg("bookworm")
        .arg(&root)
        .arg(MIRROR))?;
    eprintln!("xtask: debootstrap took {}", util::minutes(t.elapsed()));
    fs::write(
        root.join("etc/apt/sources.list"),
        format!(
            "deb {MIRROR} bookworm main\ndeb {MIRROR} bookworm-updates main\n\
             deb {SECURITY_MIRROR} bookworm-security main\ndeb {MIRROR} bookworm-backports main\n"
        ),
    )?;
    fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))?;
    // No daemon may start inside the chroot.
    write_exec(&root.join("usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n")?;
    fs::write(root.join("etc/initramfs-tools/modules"), INITRAMFS_MODULES)?;
    let conf = root.join("etc/initramfs-tools/initramfs.conf");
    let text = fs::read_to_string(&conf)?;
    fs::write(&conf, text.replace("MODULES=most", "MODULES=list"))?;

    let t = Instant::now();
    let mounts = ChrootMounts::new(&root)?;
    in_root(
        &root,
        Duration::from_mins(30),
        &format!(
            "echo 'postfix postfix/main_mailer_type select Local only' | debconf-set-selections
             echo 'postfix postfix/mailname string limiter-guest' | debconf-set-selections
             apt-get update -q
             apt-get install -y -q --no-install-recommends {}",
            setup::DEBIAN_PACKAGES.join(" ")
        ),
    )?;
    eprintln!("xtask: test packages took {}", util::minutes(t.elapsed()));
    for k in KERNELS {
        let t = Instant::now();
        let pick = format!(
            "apt-cache search --names-only '{}' | cut -d' ' -f1 | grep -E '{}' | sort -V | tail -1",
            k.package, k.package
        );
        // The package, its modules and an initramfs by its own postinst.
        in_root(
            &root,
            Duration::from_mins(20),
            &format!(
                "p=$({pick}); [ -n \"$p\" ] || {{ echo 'no package matches {0}' >&2; exit 1; }}
                 apt-get install -y -q --no-install-recommends -t {1} \"$p\"
                 v=${{p#linux-image-}}; test -e /boot/initrd.img-$v
                 mkdir -p /boot/kernels/{2}; echo $v > /boot/kernels/{2}/version
                 cp /boot/vmlinuz-$v /boot/kernels/{2}/vmlinuz; cp /boot/initrd.img-$v /boot/kernels/{2}/initrd.img",
                k.package, k.suite, k.series
            ),
        )?;
        eprintln!("xtask: kernel {} took {}", k.series, util::minutes(t.elapsed()));
    }
    in_root(&root, Duration::from_mins(2), "apt-get clean; rm -rf /var/lib/apt/lists/*")?;
    let disable = DISABLED_UNITS.join(" ");
    in_root(
        &root,
        Duration::from_mins(2),
        &format!(
            "for u in {disable}; do systemctl disable $u 2>/dev/null || true; done
             systemctl mask getty@tty1.service serial-getty@ttyS0.service
             passwd -d root"
        ),
    )?;
    drop(mounts);
    fs::remove_file(root.join("usr/sbin/policy-rc.d"))?;
    configure(&root)?;
    in_root(&root, Duration::from_mins(1), "systemctl enable limiter-guest-job.service")?;
    fs::rename(root.join("boot/kernels"), dir.join("kernels"))?;

    // Packed without a loop device; opened with snapshot=on, so every boot
    // starts from this same clean disk.
    let t = Instant::now();
    let used_mb: u64 = output(Command::new("du").args(["-sm", "-x"]).arg(&root))?
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .context("du of the root filesystem")?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-d"])
        .arg(&root)
        .arg(dir.join("rootfs.img"))
        .arg(format!("{}M", used_mb + 2048)))?;
    eprintln!("xtask: mkfs.ext4 -d took {}", util::minutes(t.elapsed()));
    remove_tree(&root)?;
    fs::write(dir.join("stamp"), stamp)?;
    Ok(())
}

/// The guest's own files: mounts, the job unit, a quiet journal.
fn configure(root: &Path) -> Result<()> {
    let src = crate::workspace_root().canonicalize()?;
    fs::write(root.join("etc/hostname"), "limiter-guest\n")?;
    let hosts = fs::read_to_string(root.join("etc/hosts")).unwrap_or_default();
    fs::write(root.join("etc/hosts"), format!("127.0.0.1 localhost\n127.0.1.1 limiter-guest\n{hosts}"))?;
    fs::create_dir_all(root.join(src.strip_prefix("/")?))?;
    fs::create_dir_all(root.join("mnt/ctl"))?;
    // The checkout at the path it has on the host, read-only: test binaries
    // find their files through CARGO_MANIFEST_DIR.
    fs::write(
        root.join("etc/fstab"),
        format!(
            "/dev/vda / ext4 rw,errors=remount-ro 0 1\n\
             src {} 9p trans=virtio,version=9p2000.L,msize=524288,ro,cache=loose 0 0\n\
             ctl /mnt/ctl 9p trans=virtio,version=9p2000.L,msize=524288 0 0\n",
            src.display()
        ),
    )?;
    fs::write(root.join("etc/modules-load.d/9p.conf"), "9p\n9pnet_virtio\n")?;
    // The pc machine's legacy IDE: nothing is on it, probing it costs boot time.
    fs::write(
        root.join("etc/modprobe.d/limiter-guest.conf"),
        "blacklist ata_piix\nblacklist ata_generic\nblacklist pata_acpi\n",
    )?;
    fs::write(root.join("etc/systemd/system/limiter-guest-job.service"), JOB_UNIT)?;
    fs::create_dir_all(root.join("etc/systemd/journald.conf.d"))?;
    fs::write(
        root.join("etc/systemd/journald.conf.d/guest.conf"),
        "[Journal]\nStorage=volatile\nForwardToConsole=no\n",
    )?;
    Ok(())
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// One test executable, as `cargo test --no-run --message-format=json` lists it.
pub(crate) struct TestBinary {
    pub(crate) name: String,
    pub(crate) exe: PathBuf,
    pub(crate) dir: PathBuf,
}

/// The test executables of the workspace's default members, built (or
/// found up to date) by the same cargo invocation the host suite uses.
pub(crate) fn test_binaries(cargo: &mut Command) -> Result<Vec<TestBinary>> {
    let out = output(cargo.args(["test", "--release", "--no-run", "--message-format=json"]))?;
    let mut bins = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(manifest)) = (v["executable"].as_str(), v["manifest_path"].as_str()) else {
            continue;
        };
        let exe = PathBuf::from(exe);
        let name = exe.file_name().and_then(|n| n.to_str()).context("test executable name")?.to_owned();
        let dir = Path::new(manifest).parent().context("manifest dir")?.to_path_buf();
        bins.push(TestBinary { name, exe, dir });
    }
    if bins.is_empty() {
        bail!("cargo test --no-run listed no test executables");
    }
    Ok(bins)
}

/// How the guest runs: `LIMITER_GUEST_ACCEL=kvm|tcg`, else KVM where
/// `/dev/kvm` can run an unmodified kernel, software emulation otherwise.
fn accel() -> &'static str {
    match env::var("LIMITER_GUEST_ACCEL").as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "tcg",
        _ => {}
    }
    // A PVM /dev/kvm (kvm_pvm) fails on an unmodified Debian kernel
    // (emulation failure on cmpxchg16b, then xrstor).
    let kvm_ok = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
        && !Path::new("/sys/module/kvm_pvm").exists();
    if kvm_ok { "kvm" } else { "tcg" }
}

/// The outcome of one kernel's run.
pub(crate) struct Report {
    pub(crate) kernel: String,
    pub(crate) passed: u64,
    pub(crate) failed: u64,
    /// Binaries that exited non-zero (a crash or timeout has no failed count).
    pub(crate) broken: Vec<String>,
    pub(crate) boot: Duration,
    pub(crate) total: Duration,
    pub(crate) console: PathBuf,
}

impl Report {
    pub(crate) fn ok(&self) -> bool {
        self.failed == 0 && self.broken.is_empty()
    }
}

enum Boot {
    Done(Report),
    /// No job after the boot limit: killed; worth one more boot.
    Hung(PathBuf),
}

/// Boots `k` on `image` and runs `bins` inside; a boot that hangs before the
/// job starts is killed and tried once more.
pub(crate) fn run_kernel(
    image: &Image,
    k: &Kernel,
    bins: &[TestBinary],
    args: &[String],
    debs: [&Path; 2],
) -> Result<Report> {
    for attempt in 1..=2 {
        match boot(image, k, bins, args, debs, attempt)? {
            Boot::Done(r) => return Ok(r),
            Boot::Hung(console) if attempt == 1 => {
                eprintln!(
                    "xtask: {} hung before the job started (console: {}); booting again",
                    k.series,
                    console.display()
                );
            }
            Boot::Hung(console) => {
                bail!("kernel {} hung twice before the job started; console: {}", k.series, console.display())
            }
        }
    }
    unreachable!("two attempts")
}

fn boot(
    image: &Image,
    k: &Kernel,
    bins: &[TestBinary],
    args: &[String],
    debs: [&Path; 2],
    attempt: u32,
) -> Result<Boot> {
    let version = image.kernel_version(k)?;
    let accel = accel();
    let share = cache_dir().join("runs").join(k.series);
    remove_tree(&share)?;
    fs::create_dir_all(&share)?;
    let console = cache_dir().join("runs").join(format!("{}.attempt{attempt}.console.log", k.series));
    write_job(&share, bins, args, debs, accel)?;

    let kdir = image.kernel_dir(k);
    let src = crate::workspace_root().canonicalize()?;
    let accel_args: &[&str] =
        if accel == "kvm" { &["-enable-kvm", "-cpu", "host"] } else { &["-accel", "tcg,thread=multi", "-cpu", "max"] };
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(accel_args)
        .args(["-m", "4G", "-smp", "2", "-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kdir.join("vmlinuz"))
        .arg("-initrd")
        .arg(kdir.join("initrd.img"))
        .args(["-append", "root=/dev/vda rw console=ttyS0 panic=-1 quiet loglevel=4 systemd.show_status=0"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw,snapshot=on", image.rootfs().display()))
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=src,security_model=none,readonly=on", src.display()))
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=ctl,security_model=none", share.display()))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&console)?)
        .stderr(Stdio::inherit());
    eprintln!("xtask: booting {version} ({accel}, attempt {attempt}); console: {}", console.display());
    let started = Instant::now();
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let boot_limit = secs_from_env("LIMITER_GUEST_BOOT_TIMEOUT", 240);
    let limit = secs_from_env("LIMITER_GUEST_TIMEOUT", 50 * 60);
    let mut watch = ConsoleWatch::new(&console)?;
    let mut boot = None;
    let mut current = String::new();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        for line in watch.new_lines()? {
            if line.contains("LIMITER-GUEST job start") && boot.is_none() {
                boot = Some(started.elapsed());
                eprintln!("xtask: {} booted to the job in {:.1} s", k.series, started.elapsed().as_secs_f64());
            }
            // journald's forwarding puts "[ uptime] bash[pid]: " before each line.
            if let Some((_, name)) = line.split_once("LIMITER-GUEST run ") {
                name.trim().clone_into(&mut current);
                eprintln!("xtask: {} [{}] {current}", k.series, util::minutes(started.elapsed()));
            }
            if line.contains(" ... FAILED") {
                eprintln!("xtask: {} {current}: {}", k.series, line.trim_end());
            }
        }
        if boot.is_none() && started.elapsed() > boot_limit {
            kill(&mut child);
            return Ok(Boot::Hung(console));
        }
        if started.elapsed() > limit {
            kill(&mut child);
            bail!(
                "kernel {} ran over {} (in {current}); console: {}",
                k.series,
                util::minutes(limit),
                console.display()
            );
        }
        thread::sleep(Duration::from_millis(250));
    };
    let total = started.elapsed();
    let Some(boot) = boot else {
        bail!("qemu exited ({status}) before the job started; console: {}", console.display());
    };
    let results = fs::read_to_string(share.join("results.tsv")).unwrap_or_default();
    let (mut passed, mut failed, mut broken) = (0, 0, Vec::new());
    let mut ran = 0;
    for line in results.lines() {
        let mut f = line.split('\t');
        let (Some(name), Some(rc)) = (f.next(), f.next()) else { continue };
        ran += 1;
        let log = fs::read_to_string(share.join("logs").join(format!("{name}.log"))).unwrap_or_default();
        let (p, n) = log.lines().filter_map(util::test_result_counts).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        passed += p;
        failed += n;
        if rc != "0" {
            broken.push(format!("{name} (exit {rc})"));
        }
    }
    if ran < bins.len() {
        broken.push(format!("{} of {} test binaries never ran (qemu: {status})", bins.len() - ran, bins.len()));
    }
    Ok(Boot::Done(Report { kernel: version, passed, failed, broken, boot, total, console }))
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The job's inputs in the shared directory: the script, the binaries, the
/// environment (`debs`: the package under test and a newer build of it).
fn write_job(share: &Path, bins: &[TestBinary], args: &[String], debs: [&Path; 2], accel: &str) -> Result<()> {
    write_exec(&share.join("job.sh"), JOB_SCRIPT)?;
    let mut list = String::new();
    for b in bins {
        writeln!(list, "{}\t{}\t{}", b.name, b.exe.display(), b.dir.display())?;
    }
    fs::write(share.join("tests.list"), list)?;
    let root = crate::workspace_root().canonicalize()?;
    // Emulation runs everything 5-10 times slower: tests that wait for
    // something scale their patience by this factor.
    let factor = if accel == "kvm" { 2 } else { 10 };
    let mut lines = String::new();
    for a in args {
        writeln!(lines, "{a}")?;
    }
    fs::write(share.join("args"), lines)?;
    fs::write(
        share.join("env"),
        format!(
            "LIMITER_BIN='{}'\nLIMITER_DEB='{}'\nLIMITER_DEB_UPGRADE='{}'\nLIMITER_REQUIRE_PRIVILEGED_TESTS=1\n\
             LIMITER_TEST_TIME_FACTOR={factor}\nPER_BINARY_TIMEOUT={}\n",
            root.join("target/release/limiter").display(),
            debs[0].display(),
            debs[1].display(),
            secs_from_env("LIMITER_GUEST_BINARY_TIMEOUT", 25 * 60).as_secs(),
        ),
    )?;
    Ok(())
}

/// Reads the lines a growing console log gained since the last call.
struct ConsoleWatch {
    file: fs::File,
    pos: u64,
    partial: String,
}

impl ConsoleWatch {
    fn new(path: &Path) -> Result<Self> {
        Ok(Self { file: fs::File::open(path)?, pos: 0, partial: String::new() })
    }

    fn new_lines(&mut self) -> Result<Vec<String>> {
        self.file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        self.pos += self.file.read_to_end(&mut buf)? as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf).replace('\r', ""));
        let mut lines: Vec<String> = self.partial.split('\n').map(str::to_owned).collect();
        self.partial = lines.pop().unwrap_or_default();
        Ok(lines)
    }
}
