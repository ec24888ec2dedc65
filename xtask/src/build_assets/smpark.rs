//! `smpark.ko`: `assets/smpark/`, built out of tree against the exact aarch64 kernel tree.
//!
//! The module must carry the shipped Image's vermagic and use only symbols that Image
//! exports, so it is built in the kernel recipe's own tree (`target/xtask/kernel-aarch64`),
//! whose `Module.symvers` makes modpost fail on any unexported symbol. The tree is reused
//! when its `.config` is the checked-in final one and its Image is the shipped Image; else
//! it is configured and built afresh (about 7 minutes).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{kernel, Built};
use crate::manifest::Manifest;
use crate::pins::Pins;
use crate::spec::Arch;
use crate::{progress, util};

/// Bumped when the recipe below changes in a way that changes the output.
const RECIPE: &str = "smpark-recipe-v1";

fn source_dir() -> PathBuf {
    util::root().join("assets/smpark")
}

/// The files Kbuild compiles (the README is documentation, not an input).
const SOURCES: [&str; 3] = ["smpark.c", "smpark.h", "Kbuild"];

/// Hash of the module's sources and of everything that decides the kernel it is built for.
pub fn inputs(arch: Arch) -> Result<String> {
    let mut buf = format!("{RECIPE} {}", kernel::inputs(arch)?).into_bytes();
    for f in SOURCES {
        let p = source_dir().join(f);
        buf.extend(f.as_bytes());
        buf.extend(std::fs::read(&p).with_context(|| format!("read {}", p.display()))?);
    }
    Ok(util::sha256(&buf))
}

/// The aarch64 tree, configured and built, whose Image is byte-identical to the shipped one.
fn kernel_tree(arch: Arch) -> Result<PathBuf> {
    let tree = util::build_dir()
        .join(format!("kernel-{}", arch.name()))
        .join("linux-source-6.12");
    let final_config = std::fs::read(kernel::final_config_path(arch))
        .context("read the checked-in final .config (build the kernel first)")?;
    let tree = if std::fs::read(tree.join(".config")).ok().as_deref() == Some(&final_config[..]) {
        progress!("smpark.ko: reusing the kernel tree {}", tree.display());
        tree
    } else {
        kernel::configure(arch)?
    };
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    progress!("smpark.ko: make Image modules in the kernel tree (quick when already built)");
    util::run(kernel::make(&tree, arch).args([
        format!("-j{jobs}").as_str(),
        "-s",
        "Image",
        "modules",
    ]))?;
    let manifest = Manifest::load()?;
    let shipped = manifest
        .get(arch, "kernel")
        .context("no aarch64 kernel in the manifest: build it first")?;
    let built = util::sha256_file(&tree.join("arch/arm64/boot/Image"))?;
    if built != shipped.sha256 {
        bail!(
            "{}: the tree's Image (sha256 {built}) is not the shipped one ({}): a module built here would not match it; run `cargo xtask build-assets --arch aarch64 --only kernel --force` first",
            tree.display(),
            shipped.sha256
        );
    }
    Ok(tree)
}

/// The `vermagic=` of a module's `.modinfo`.
pub fn vermagic(ko: &[u8]) -> Option<String> {
    let at = ko.windows(9).position(|w| w == b"vermagic=")?;
    let rest = &ko[at + 9..];
    let end = rest.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// Builds `smpark.ko`.
pub fn build(arch: Arch) -> Result<Built> {
    if arch != Arch::Aarch64 {
        bail!("smpark.ko is aarch64-only");
    }
    let tree = kernel_tree(arch)?;
    // A fixed, fresh build directory: Kbuild writes its objects next to the sources.
    let dir = util::build_dir().join("smpark");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    for f in SOURCES {
        std::fs::copy(source_dir().join(f), dir.join(f))
            .with_context(|| format!("copy assets/smpark/{f}"))?;
    }
    progress!("smpark.ko: make M={} modules", dir.display());
    util::run(
        kernel::make(&tree, arch)
            .arg("-s")
            .arg(format!("M={}", dir.display()))
            .arg("modules"),
    )?;
    let ko = dir.join("smpark.ko");
    strip_debug(arch, &ko)?;
    let bytes = std::fs::read(&ko).with_context(|| format!("read {}", ko.display()))?;
    let pins = Pins::load("kernel/SOURCE")?;
    let release = pins.get("kernel_release")?;
    let magic = vermagic(&bytes).context("smpark.ko has no vermagic")?;
    if !magic.starts_with(&format!("{release} SMP mod_unload ")) {
        bail!("smpark.ko: vermagic `{magic}` does not match kernel {release}");
    }
    Ok(Built {
        bytes,
        version: release.to_string(),
        source: format!(
            "assets/smpark (GPL-2.0-only), built out of tree against the shipped aarch64 kernel tree (vermagic `{magic}`)"
        ),
        toolchain: util::tool_version(&arch.gcc()),
        inputs: inputs(arch)?,
    })
}

fn strip_debug(arch: Arch, ko: &Path) -> Result<()> {
    util::run(
        std::process::Command::new(format!("{}strip", arch.cross_compile()))
            .arg("--strip-debug")
            .arg(ko),
    )
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use supermachine_agent::smpark as abi;

    use crate::util;

    /// The agent's copy of the ioctl ABI agrees with `assets/smpark/smpark.h`, compiled.
    /// (x86_64 and arm64 share the asm-generic ioctl encoding and this struct's layout.)
    #[test]
    fn agent_abi_matches_the_header() {
        let dir = util::build_dir().join("smpark-abi-check");
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("abi.c");
        std::fs::write(
            &src,
            format!(
                "#include <stdio.h>\n#include <stddef.h>\n#include \"{}\"\n\
                 int main(void) {{ printf(\"%u %u %u %zu %zu %zu %zu %zu\\n\", \
                 (unsigned)SMPARK_PARK, (unsigned)SMPARK_UNPARK, (unsigned)SMPARK_STATUS, \
                 sizeof(struct smpark_status), offsetof(struct smpark_status, parked), \
                 offsetof(struct smpark_status, primary), offsetof(struct smpark_status, timeout_ms), \
                 offsetof(struct smpark_status, parks)); return 0; }}\n",
                util::root().join("assets/smpark/smpark.h").display()
            ),
        )
        .unwrap();
        let bin = dir.join("abi");
        util::run(Command::new("cc").arg("-o").arg(&bin).arg(&src)).unwrap();
        let out = util::output(&mut Command::new(&bin)).unwrap();
        let s = std::mem::size_of::<abi::Status>();
        let want = format!(
            "{} {} {} {s} 8 16 20 24",
            abi::SMPARK_PARK,
            abi::SMPARK_UNPARK,
            abi::SMPARK_STATUS
        );
        assert_eq!(out.trim(), want);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn vermagic_is_read_from_modinfo() {
        let ko = b"\x7fELF....name=smpark\0vermagic=6.12.117 SMP mod_unload aarch64\0";
        assert_eq!(
            super::vermagic(ko).as_deref(),
            Some("6.12.117 SMP mod_unload aarch64")
        );
        assert_eq!(super::vermagic(b"nothing"), None);
    }
}
