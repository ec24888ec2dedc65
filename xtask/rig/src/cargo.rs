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

/// The conformance workspace's manifest: the one place supermachine 0.7.108 and upstream's
/// 0.7.70 crates are dependencies (test-only; never of the published crates or of xtask).
#[cfg(feature = "vm")]
pub fn conformance_manifest() -> std::path::PathBuf {
    util::root().join("conformance/Cargo.toml")
}

/// Where cargo unpacked package `name` `version` of the workspace of `manifest` (fetching it
/// first when needed): how the test rigs reach supermachine's and upstream's crates, which
/// only the conformance workspace depends on.
#[cfg(feature = "vm")]
pub fn source_dir(
    manifest: &std::path::Path,
    name: &str,
    version: &str,
) -> Result<std::path::PathBuf> {
    let out = util::output(
        util::cargo()
            .args([
                "metadata",
                "--format-version",
                "1",
                "--locked",
                "--manifest-path",
            ])
            .arg(manifest),
    )
    .with_context(|| format!("cargo metadata of {}", manifest.display()))?;
    let meta: serde_json::Value = serde_json::from_str(&out).context("parse cargo metadata")?;
    let pkg = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name && p["version"] == version)
        .with_context(|| format!("{} does not resolve {name} {version}", manifest.display()))?;
    let path = pkg["manifest_path"]
        .as_str()
        .context("cargo metadata: package without manifest_path")?;
    std::path::Path::new(path)
        .parent()
        .map(std::path::Path::to_path_buf)
        .context("manifest_path has no parent")
}

/// Where the conformance workspace and its tools build: one target directory, so
/// supermachine's ~100 dependencies are built once for all of them.
#[cfg(feature = "vm")]
pub fn conformance_target() -> std::path::PathBuf {
    util::root().join("conformance/target")
}

/// Builds binary `bin` of the package at `manifest` into [`conformance_target`] (`cargo build
/// --locked`, with `env` set) and returns its path.
#[cfg(feature = "vm")]
pub fn build_conformance_tool(
    manifest: &std::path::Path,
    bin: &str,
    env: &[(&str, &std::path::Path)],
) -> Result<std::path::PathBuf> {
    let target = conformance_target();
    let mut cmd = util::cargo();
    cmd.args([
        "build",
        "--quiet",
        "--locked",
        "--bin",
        bin,
        "--manifest-path",
    ])
    .arg(manifest)
    .arg("--target-dir")
    .arg(&target);
    for (k, v) in env {
        cmd.env(k, v);
    }
    util::run(&mut cmd).with_context(|| format!("build {bin} ({})", manifest.display()))?;
    Ok(target.join("debug").join(bin))
}
