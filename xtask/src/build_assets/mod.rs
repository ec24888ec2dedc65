//! `cargo xtask build-assets [--arch x86_64|aarch64|all] [--only NAME] [--force]`.
//!
//! Builds every shipped byte from pinned sources, writes it into its sub-crate's `assets/`,
//! records it in `assets/manifest.json` and regenerates the sub-crates' code. An asset whose
//! recorded inputs hash is unchanged, and whose file still has the recorded sha256, is not
//! rebuilt (the kernel takes minutes).

mod agent;
pub mod busybox;
pub mod hardening;
pub mod kernel;
pub mod smpark;

use anyhow::{bail, Result};

use crate::manifest::{Manifest, Record};
use crate::spec::{self, Arch, Asset};
use crate::{codegen, progress, util};

/// A freshly built asset.
#[derive(Debug)]
pub struct Built {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Version of what was built.
    pub version: String,
    /// Pinned sources and recipe.
    pub source: String,
    /// Tools that built it.
    pub toolchain: String,
    /// Hash of the inputs.
    pub inputs: String,
}

fn inputs(arch: Arch, asset: Asset) -> Result<String> {
    match asset {
        Asset::Kernel => kernel::inputs(arch),
        Asset::Busybox => busybox::inputs(arch),
        Asset::Agent => agent::inputs(arch, "assets/agent"),
        Asset::InitOci => agent::inputs(arch, "assets/init-oci"),
        Asset::Smpark => smpark::inputs(arch),
    }
}

fn build(arch: Arch, asset: Asset) -> Result<Built> {
    match asset {
        Asset::Kernel => kernel::build(arch),
        Asset::Busybox => busybox::build(arch),
        Asset::Agent => agent::build(arch),
        Asset::InitOci => agent::build_init_oci(arch),
        Asset::Smpark => smpark::build(arch),
    }
}

/// Runs the command.
pub fn run(args: crate::flags::BuildAssets) -> Result<()> {
    let mut manifest = Manifest::load()?;
    for &arch in &args.arches {
        for s in spec::assets(arch) {
            if args.only.is_some_and(|o| o != s.asset) {
                continue;
            }
            let file = arch.crate_dir().join("assets").join(s.file);
            let rel = file.strip_prefix(util::root())?.display().to_string();
            let inputs = inputs(arch, s.asset)?;
            if !args.force {
                if let Some(r) = manifest.get(arch, s.name()) {
                    if r.inputs_sha256 == inputs
                        && file.exists()
                        && util::sha256_file(&file)? == r.sha256
                    {
                        progress!("{} {}: up to date ({rel})", s.name(), arch.name());
                        continue;
                    }
                }
            }
            let built = build(arch, s.asset)?;
            util::write_atomic(&file, &built.bytes)?;
            progress!(
                "{} {}: {} bytes -> {rel}",
                s.name(),
                arch.name(),
                built.bytes.len()
            );
            manifest.put(Record {
                arch: arch.name().into(),
                name: s.name().into(),
                file: rel,
                size: built.bytes.len() as u64,
                sha256: util::sha256(&built.bytes),
                version: built.version,
                source: built.source,
                toolchain: built.toolchain,
                inputs_sha256: built.inputs,
            });
            // Save and regenerate after each asset: a later failure keeps what was built, and
            // the sub-crate's build-time check always agrees with its bytes.
            manifest.save()?;
            codegen::run(false)?;
        }
    }
    if args.only.is_none() {
        for &arch in &args.arches {
            for s in spec::assets(arch) {
                if manifest.get(arch, s.name()).is_none() {
                    bail!("{} {}: no asset built", s.name(), arch.name());
                }
            }
        }
    }
    codegen::run(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifest records the inputs each asset was built from; a recipe or source edited
    /// since (a fragment, the agent, smpark.c) means the shipped bytes are stale.
    #[test]
    fn every_shipped_asset_was_built_from_the_current_inputs() {
        let manifest = Manifest::load().unwrap();
        for arch in Arch::ALL {
            for s in spec::assets(arch) {
                let Some(r) = manifest.get(arch, s.name()) else {
                    continue;
                };
                assert_eq!(
                    r.inputs_sha256,
                    inputs(arch, s.asset).unwrap(),
                    "{} {}: its inputs changed since it was built; run `cargo xtask build-assets --arch {} --only {}`",
                    s.name(),
                    arch.name(),
                    arch.name(),
                    s.name()
                );
            }
        }
    }
}
