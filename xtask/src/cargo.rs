//! Cargo chores several commands share (the `.crate` of a sub-crate, a package's version): a
//! leaf module, so that `bench` and `test` do not import each other.

use anyhow::{Context, Result};

use crate::util;

/// Packs a sub-crate and returns the `.crate` path.
#[cfg(feature = "vm")]
pub fn package(arch: crate::spec::Arch) -> Result<std::path::PathBuf> {
    util::run(util::cargo().args([
        "package",
        "--quiet",
        "--no-verify",
        "--allow-dirty",
        "-p",
        arch.crate_name(),
    ]))?;
    let ver = package_version(arch.crate_name())?;
    Ok(util::root()
        .join("target/package")
        .join(format!("{}-{ver}.crate", arch.crate_name())))
}

/// The `version` of the package in `crate_dir`.
pub fn package_version(crate_dir: &str) -> Result<String> {
    let path = util::root().join(crate_dir).join("Cargo.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("version = \"")?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .with_context(|| format!("{}: no version line", path.display()))
}
