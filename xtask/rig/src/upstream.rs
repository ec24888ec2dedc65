//! The upstream anchor: the published `supermachine-kernel-x86-64` and
//! `supermachine-kernel-aarch64` 0.7.70, fetched from crates.io with cargo by the bench and the
//! conformance suite's control run (the conformance workspace patches supermachine onto our
//! crates, so upstream's are fetched here, on their own). Their assets ship xz-compressed;
//! they are decompressed here for size and boot figures. None of their bytes goes into this
//! project.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::spec::Arch;
use crate::{progress, util};

/// The version measured against.
pub const VERSION: &str = "0.7.70";

/// One fetched upstream sub-crate.
#[derive(Debug, Clone)]
pub struct Crate {
    /// Its `.crate` file (what a user downloads).
    pub dot_crate: PathBuf,
    /// Decompressed assets: (name, path), kernel first.
    pub assets: Vec<(String, PathBuf)>,
}

impl Crate {
    /// The decompressed asset `name`.
    pub fn asset(&self, name: &str) -> Option<&Path> {
        self.assets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
    }
}

/// Both upstream crates.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `supermachine-kernel-x86-64`.
    pub x86_64: Crate,
    /// `supermachine-kernel-aarch64`.
    pub aarch64: Crate,
}

impl Upstream {
    /// The crate of `arch`.
    pub fn get(&self, arch: Arch) -> &Crate {
        match arch {
            Arch::X86_64 => &self.x86_64,
            Arch::Aarch64 => &self.aarch64,
        }
    }
}

/// The consumer project used to fetch (and, by the build-cost figure, to build) upstream.
pub fn consumer_dir() -> PathBuf {
    util::build_dir().join("bench/upstream-fetch")
}

/// Fetches both crates with `cargo fetch` and decompresses their assets.
pub fn fetch() -> Result<Upstream> {
    let dir = consumer_dir();
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"upstream-fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [dependencies]\nsupermachine-kernel-x86-64 = \"={VERSION}\"\nsupermachine-kernel-aarch64 = \"={VERSION}\"\n\n[workspace]\n"
        ),
    )?;
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n")?;
    progress!("upstream: cargo fetch supermachine-kernel-* {VERSION} from crates.io");
    util::run(
        Command::new("cargo")
            .current_dir(&dir)
            .args(["fetch", "--quiet"]),
    )
    .context("fetch the upstream crates from crates.io")?;
    Ok(Upstream {
        x86_64: unpack(Arch::X86_64)?,
        aarch64: unpack(Arch::Aarch64)?,
    })
}

fn find_in_registry(sub: &str, name: &str) -> Result<PathBuf> {
    let base = util::cargo_home().join("registry").join(sub);
    for index in std::fs::read_dir(&base).with_context(|| format!("read {}", base.display()))? {
        let p = index?.path().join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found under {} after cargo fetch",
        base.display()
    )
}

fn unpack(arch: Arch) -> Result<Crate> {
    let name = format!("{}-{VERSION}", arch.crate_name());
    let dot_crate = find_in_registry("cache", &format!("{name}.crate"))?;
    let src = find_in_registry("src", &name)?;
    let out = util::build_dir().join(format!("bench/upstream-{}", arch.name()));
    std::fs::create_dir_all(&out)?;
    let mut assets = Vec::new();
    for asset in [
        "kernel",
        "busybox",
        "supermachine-agent",
        "init-oci",
        "smpark.ko",
    ] {
        let xz = src.join(format!("{asset}.xz"));
        if !xz.exists() {
            continue;
        }
        let dest = out.join(asset);
        if !dest.exists() {
            let bytes = Command::new("xz")
                .args(["-dc"])
                .arg(&xz)
                .output()
                .with_context(|| format!("xz -dc {}", xz.display()))?;
            if !bytes.status.success() {
                bail!("xz -dc {} failed", xz.display());
            }
            util::write_atomic(&dest, &bytes.stdout)?;
        }
        assets.push((asset.to_string(), dest));
    }
    Ok(Crate { dot_crate, assets })
}
