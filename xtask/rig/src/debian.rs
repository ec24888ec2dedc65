//! Debian packages: what is installed, and the pinned `.deb`s xtask downloads (a leaf module,
//! so that `setup`, the build and the VMs share them without importing each other).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::pins::Pins;
use crate::spec::Arch;
use crate::{progress, util};

/// The installed version of a Debian package, `None` when it is not installed.
pub fn dpkg_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", package])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.strip_prefix("install ok installed ").map(str::to_string)
}

/// The Debian suite and mirror of [`rootfs`].
const ROOTFS_SUITE: &str = "bookworm";
const ROOTFS_MIRROR: &str = "http://deb.debian.org/debian";
/// The packages [`rootfs`] adds to `minbase`: the real clients of the networking checks.
const ROOTFS_INCLUDE: &str = "curl";

/// A Debian root tree for `arch` (`minbase` plus [`ROOTFS_INCLUDE`], from [`ROOTFS_SUITE`]),
/// kept in `target/xtask/debian-rootfs-<arch>/root`: the guest-networking checks run real
/// Debian programs in it (`curl`, `bash`). Made without running any of its programs, so it
/// works for either arch on this host: `debootstrap --foreign` unpacks the required packages
/// and downloads the rest (checked against the suite's signed index), and `dpkg-deb -x`
/// unpacks those. No maintainer script runs; nothing the checks use needs one.
pub fn rootfs(arch: Arch) -> Result<PathBuf> {
    let work = util::build_dir().join(format!("debian-rootfs-{}", arch.name()));
    let root = work.join("root");
    let stamp = work.join("complete");
    if stamp.exists() {
        return Ok(root);
    }
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    progress!(
        "debian rootfs {}: debootstrap --foreign --variant=minbase --include={ROOTFS_INCLUDE} \
         {ROOTFS_SUITE} (about a minute the first time)",
        arch.name()
    );
    util::run(
        Command::new("debootstrap")
            .args(["--foreign", "--variant=minbase"])
            .arg(format!("--include={ROOTFS_INCLUDE}"))
            .arg(format!("--arch={}", arch.deb()))
            .arg(ROOTFS_SUITE)
            .arg(&root)
            .arg(ROOTFS_MIRROR)
            .stdout(std::process::Stdio::null()),
    )
    .context("debootstrap (`cargo xtask setup` installs it; it needs deb.debian.org)")?;
    let archives = root.join("var/cache/apt/archives");
    for e in std::fs::read_dir(&archives)? {
        let deb = e?.path();
        if deb.extension().is_some_and(|x| x == "deb") {
            util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            std::fs::remove_file(&deb)?;
        }
    }
    std::fs::write(&stamp, "")?;
    Ok(root)
}

/// The unpacked `bin/busybox` of the pinned busybox-static .deb for `arch`,
/// downloaded once and kept in `target/xtask/busybox-<arch>/`. The aarch64 test VMs use it for
/// their root image.
pub fn busybox(arch: Arch) -> Result<PathBuf> {
    let pins = Pins::load("busybox/SOURCE")?;
    let (package, version) = (pins.get("package")?, pins.get("version")?);
    let want = pins.get(&format!("deb_sha256.{}", arch.deb()))?;
    let work = util::build_dir().join(format!("busybox-{}", arch.name()));
    let bin = work.join("root/bin/busybox");
    let stamp = work.join("deb.sha256");
    if bin.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(bin);
    }
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    progress!(
        "busybox {}: apt-get download {package}:{}={version}",
        arch.name(),
        arch.deb()
    );
    util::run(
        Command::new("apt-get")
            .current_dir(&work)
            .arg("download")
            .arg(format!("{package}:{}={version}", arch.deb())),
    )
    .context("download busybox (for arm64, `dpkg --add-architecture arm64 && apt-get update` first; `cargo xtask setup` does)")?;
    let deb = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download produced no .deb")?;
    let got = util::sha256_file(&deb)?;
    if got != want {
        bail!(
            "{}: sha256 {got} differs from the pin {want} (assets/busybox/SOURCE)",
            deb.display()
        );
    }
    let root = work.join("root");
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    if !bin.exists() {
        bail!("{}: the .deb has no bin/busybox", deb.display());
    }
    std::fs::write(&stamp, want)?;
    Ok(bin)
}
