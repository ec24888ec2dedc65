//! busybox: the `bin/busybox` of Debian's pinned `busybox-static` .deb.

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::Built;
use crate::pins::Pins;
use crate::spec::Arch;
use crate::{progress, util};

/// Hash of the pin (the .deb is fully identified by it).
pub fn inputs(arch: Arch) -> Result<String> {
    let pins = std::fs::read(util::root().join("assets/busybox/SOURCE"))?;
    Ok(util::sha256(
        &[b"busybox-v1", arch.deb().as_bytes(), &pins[..]].concat(),
    ))
}

/// The unpacked `bin/busybox` of the pinned .deb for `arch`, downloaded once and kept in
/// `target/xtask/busybox-<arch>/`. The aarch64 one is not shipped: the aarch64 test VMs use it
/// for their root image.
pub fn fetch(arch: Arch) -> Result<std::path::PathBuf> {
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

/// The shipped busybox: the pinned .deb's binary, unmodified.
pub fn build(arch: Arch) -> Result<Built> {
    let pins = Pins::load("busybox/SOURCE")?;
    let (package, version) = (pins.get("package")?, pins.get("version")?);
    let want = pins.get(&format!("deb_sha256.{}", arch.deb()))?;
    let bin = fetch(arch)?;
    let bytes = std::fs::read(&bin).with_context(|| format!("read {}", bin.display()))?;
    Ok(Built {
        bytes,
        version: version.to_string(),
        source: format!(
            "Debian {package} {version} ({}, .deb sha256 {want}), bin/busybox",
            arch.deb()
        ),
        toolchain: "prebuilt by Debian (unmodified binary from the .deb)".into(),
        inputs: inputs(arch)?,
    })
}
