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

/// The unpacked `bin/busybox` of the pinned .deb for `arch` (only aarch64 has a pin),
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
