//! The guest kernel: Debian's pinned `linux-source-6.12`, `tinyconfig` + `assets/kernel/<arch>.config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{hardening, Built};
use crate::pins::Pins;
use crate::spec::Arch;
use crate::{kconfig, progress, util};

/// Fixed build identity: the same inputs give the same bytes.
const REPRODUCIBLE_ENV: &[(&str, &str)] = &[
    ("KBUILD_BUILD_TIMESTAMP", "2026-01-01 00:00:00 UTC"),
    ("KBUILD_BUILD_USER", "supermachine"),
    ("KBUILD_BUILD_HOST", "supermachine"),
    ("KBUILD_BUILD_VERSION", "1"),
    ("LOCALVERSION", ""),
    ("LC_ALL", "C"),
    ("TZ", "UTC"),
    ("SOURCE_DATE_EPOCH", "1767225600"),
];

/// Bumped when the recipe below changes in a way that changes the output.
const RECIPE: &str = "kernel-recipe-v3";

/// Source patches applied to the unpacked tree of `arch`: those for every arch
/// (`assets/kernel/patches/*.patch`), then its own (`assets/kernel/patches/<arch>/*.patch`),
/// each set in name order (`patch -p1`). Each file's header says why it exists. An arch's own
/// patches stay out of the other's input hash, so they do not force its rebuild.
fn patch_paths(arch: Arch) -> Result<Vec<PathBuf>> {
    let dir = util::root().join("assets/kernel/patches");
    let mut paths = patches_in(&dir)?;
    let own = dir.join(arch.name());
    if own.is_dir() {
        paths.extend(patches_in(&own)?);
    }
    Ok(paths)
}

/// The `*.patch` files directly in `dir`, in name order.
fn patches_in(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("read {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "patch") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// The patches' bytes of `arch`, concatenated in application order, for the input hash.
fn patch_bytes(arch: Arch) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for p in patch_paths(arch)? {
        bytes.extend(std::fs::read(&p).with_context(|| format!("read {}", p.display()))?);
    }
    Ok(bytes)
}

/// The fragments of `arch`, in merge order: what every guest needs, its hardening, then the
/// platform (whose fragment also holds the arch-specific hardening).
pub fn fragment_paths(arch: Arch) -> [PathBuf; 3] {
    let dir = util::root().join("assets/kernel");
    [
        dir.join("common.config"),
        dir.join("hardening.config"),
        dir.join(format!("{}.config", arch.name())),
    ]
}

/// The fragments' file names, joined as the build's messages and the manifest name them.
fn fragment_names(arch: Arch) -> String {
    fragment_paths(arch)
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .expect("fragment_paths joins a file name to a dir");
            format!("assets/kernel/{}", name.to_string_lossy())
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// The fragments' text, concatenated in merge order.
pub fn fragments(arch: Arch) -> Result<String> {
    let mut s = String::new();
    for p in fragment_paths(arch) {
        s.push_str(&std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?);
    }
    Ok(s)
}

/// The final `.config` of `arch`, checked in next to the fragment for audits.
pub fn final_config_path(arch: Arch) -> PathBuf {
    util::root()
        .join("assets/kernel")
        .join(format!("{}.final.config", arch.name()))
}

/// The settings of the fragments, one `CONFIG_X=value` line each in merge order: what
/// decides the kernel's bytes, without the comments (reasons, exceptions, measured costs), so
/// documenting a fragment does not make the shipped kernel stale.
fn settings(arch: Arch) -> Result<String> {
    Ok(kconfig::requested(&fragments(arch)?)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect())
}

/// Hash of everything that decides the kernel's bytes.
pub fn inputs(arch: Arch) -> Result<String> {
    let pins = std::fs::read(util::root().join("assets/kernel/SOURCE"))?;
    let frag = settings(arch)?;
    Ok(util::sha256(
        &[
            RECIPE.as_bytes(),
            arch.name().as_bytes(),
            &pins,
            frag.as_bytes(),
            &patch_bytes(arch)?,
        ]
        .concat(),
    ))
}

pub(super) fn make(src: &Path, arch: Arch) -> Command {
    let mut c = Command::new("make");
    c.current_dir(src)
        .arg(format!("ARCH={}", arch.kernel_arch()));
    if arch == Arch::Aarch64 {
        c.arg(format!("CROSS_COMPILE={}", arch.cross_compile()));
    }
    c.envs(REPRODUCIBLE_ENV.iter().copied());
    c
}

/// Unpacks the pinned source into a fresh tree and configures it; returns the tree.
pub fn configure(arch: Arch) -> Result<PathBuf> {
    let pins = Pins::load("kernel/SOURCE")?;
    let tarball = PathBuf::from(pins.get("tarball")?);
    if !tarball.exists() {
        bail!(
            "{} is missing: install {}={} (`cargo xtask setup` does)",
            tarball.display(),
            pins.get("package")?,
            pins.get("version")?
        );
    }
    progress!("kernel {}: verifying {}", arch.name(), tarball.display());
    let got = util::sha256_file(&tarball)?;
    if got != pins.get("tarball_sha256")? {
        bail!(
            "{}: sha256 {got} differs from the pin {} (assets/kernel/SOURCE): wrong {} version?",
            tarball.display(),
            pins.get("tarball_sha256")?,
            pins.get("package")?
        );
    }
    let work = util::build_dir().join(format!("kernel-{}", arch.name()));
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    progress!("kernel {}: unpacking into {}", arch.name(), work.display());
    util::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&work),
    )?;
    let src = work.join("linux-source-6.12");
    for p in patch_paths(arch)? {
        progress!("kernel {}: applying {}", arch.name(), p.display());
        util::run(
            Command::new("patch")
                .current_dir(&src)
                .args(["-p1", "--forward", "--quiet", "-i"])
                .arg(&p),
        )?;
    }
    let frags = fragment_paths(arch);
    progress!(
        "kernel {}: tinyconfig + {}",
        arch.name(),
        fragment_names(arch)
    );
    util::run(make(&src, arch).arg("-s").arg("tinyconfig"))?;
    util::run(
        Command::new("./scripts/kconfig/merge_config.sh")
            .current_dir(&src)
            .env("ARCH", arch.kernel_arch())
            .env("CROSS_COMPILE", arch.cross_compile())
            .args(["-m", "-Q", ".config"])
            .args(&frags)
            .stdout(std::process::Stdio::null()),
    )?;
    util::run(make(&src, arch).arg("-s").arg("olddefconfig"))?;
    let final_config = std::fs::read_to_string(src.join(".config"))?;
    let frag = fragments(arch)?;
    let lost = kconfig::missing(&frag, &final_config);
    if !lost.is_empty() {
        let list: Vec<String> = lost
            .iter()
            .map(|(s, w, g)| format!("{s}: requested {w}, final .config has {g}"))
            .collect();
        bail!(
            "{} ask for symbols that did not survive olddefconfig (a missing dependency?):\n  {}",
            fragment_names(arch),
            list.join("\n  ")
        );
    }
    // Audit before the six-minute compile, against the baseline this very tree ships.
    let baseline = hardening::save_kspp_baseline(&src, arch)?;
    hardening::check(arch, &baseline, &frag, &final_config)?;
    let r = hardening::recommended::check(arch, &final_config, &frag)?;
    progress!(
        "kernel {}: recommended settings: {} checked, {} met, {} excepted",
        arch.name(),
        r.checked,
        r.met,
        r.excepted
    );
    Ok(src)
}

/// Builds the kernel image of `arch`.
pub fn build(arch: Arch) -> Result<Built> {
    let src = configure(arch)?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (target, image) = match arch {
        Arch::X86_64 => ("bzImage", "arch/x86/boot/bzImage"),
        Arch::Aarch64 => ("Image", "arch/arm64/boot/Image"),
    };
    progress!(
        "kernel {}: make -j{jobs} {target} (about 6 minutes on 2 cores)",
        arch.name()
    );
    let start = std::time::Instant::now();
    util::run(
        make(&src, arch)
            .arg(format!("-j{jobs}"))
            .arg("-s")
            .arg(target),
    )?;
    progress!("kernel {}: built in {:.0?}", arch.name(), start.elapsed());
    let bytes = std::fs::read(src.join(image))?;
    std::fs::copy(src.join(".config"), final_config_path(arch))?;
    let pins = Pins::load("kernel/SOURCE")?;
    let frag = settings(arch)?;
    Ok(Built {
        bytes,
        version: pins.get("kernel_release")?.to_string(),
        source: format!(
            "Debian {} {} (tarball sha256 {}) + assets/kernel/patches (sha256 {}), tinyconfig + {} (settings sha256 {})",
            pins.get("package")?,
            pins.get("version")?,
            pins.get("tarball_sha256")?,
            util::sha256(&patch_bytes(arch)?),
            fragment_names(arch),
            util::sha256(frag.as_bytes())
        ),
        toolchain: format!(
            "{}; {}",
            util::tool_version(&arch.gcc()),
            util::tool_version("ld")
        ),
        inputs: inputs(arch)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_final_configs_keep_every_requested_symbol() {
        for arch in Arch::ALL {
            let Ok(fin) = std::fs::read_to_string(final_config_path(arch)) else {
                continue;
            };
            let frag = fragments(arch).unwrap();
            assert_eq!(kconfig::missing(&frag, &fin), [], "{}", arch.name());
        }
    }

    /// supermachine's HVF backend copies the Image to RAM + 0x80000 whatever its
    /// `text_offset`: only a relocatable arm64 kernel runs there (issue 21; the e2e suite boots
    /// it there). KASLR stays off, so every boot, and every snapshot, has the same layout; and
    /// supermachine passes no `panic=`, so the kernel's own timeout ends a panicked VM.
    #[test]
    fn the_arm64_image_is_relocatable_without_kaslr() {
        let fin = std::fs::read_to_string(final_config_path(Arch::Aarch64)).unwrap();
        assert!(fin.lines().any(|l| l == "CONFIG_RELOCATABLE=y"));
        assert!(fin
            .lines()
            .any(|l| l == "# CONFIG_RANDOMIZE_BASE is not set"));
        assert!(fin.lines().any(|l| l == "CONFIG_PANIC_TIMEOUT=-1"));
    }

    #[test]
    fn no_symbol_is_set_in_two_fragments() {
        for arch in Arch::ALL {
            let Ok(frag) = fragments(arch) else { continue };
            let mut syms: Vec<String> = kconfig::requested(&frag)
                .into_iter()
                .map(|(s, _)| s)
                .collect();
            syms.sort();
            let twice: Vec<&[String]> = syms.windows(2).filter(|w| w[0] == w[1]).collect();
            assert!(twice.is_empty(), "{}: set twice: {twice:?}", arch.name());
        }
    }
}
