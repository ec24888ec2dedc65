//! busybox, from `assets/busybox/SOURCE`.
//!
//! - **x86_64 (shipped):** built from Debian's pinned busybox *source* package (each file's
//!   sha256 pinned, Debian's patches applied by `dpkg-source -x`), `make allnoconfig` plus the
//!   applets of `assets/busybox/x86_64.config`, linked statically against musl. The build is
//!   reproducible: a fixed `SOURCE_DATE_EPOCH`, no kconfig timestamp, the source path mapped
//!   away (`-ffile-prefix-map`); busybox records no build user or host.
//! - **aarch64 (not shipped):** the unmodified `bin/busybox` of the pinned `busybox-static`
//!   .deb, for the root image of the aarch64 test VMs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::Built;
use crate::pins::Pins;
use crate::spec::Arch;
use crate::{debian, kconfig, progress, util};

/// Bumped when the recipe below changes in a way that changes the output.
const RECIPE: &str = "busybox-recipe-v2";

/// The build environment that makes the bytes depend on the inputs alone.
const REPRODUCIBLE_ENV: &[(&str, &str)] = &[
    ("SOURCE_DATE_EPOCH", "1767225600"),
    ("KCONFIG_NOTIMESTAMP", "1"),
    ("LC_ALL", "C"),
    ("TZ", "UTC"),
];

/// The applet selection, a kconfig fragment.
fn fragment_path() -> PathBuf {
    util::root().join("assets/busybox/x86_64.config")
}

/// The final `.config`, checked in next to the fragment for audits.
pub fn final_config_path() -> PathBuf {
    util::root().join("assets/busybox/x86_64.final.config")
}

/// The fragment's settings, one `CONFIG_X=value` line each: what decides the bytes, without
/// the comments, so documenting an applet does not make the shipped binary stale.
fn settings() -> Result<String> {
    let p = fragment_path();
    let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    Ok(kconfig::requested(&text)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect())
}

/// Hash of everything that decides the bytes of `arch`'s busybox: the recipe, the pins and,
/// for the source build, the fragment's settings.
pub fn inputs(arch: Arch) -> Result<String> {
    let pins = std::fs::read(util::root().join("assets/busybox/SOURCE"))?;
    let settings = match arch {
        Arch::X86_64 => settings()?,
        Arch::Aarch64 => String::new(),
    };
    Ok(util::sha256(
        &[
            RECIPE.as_bytes(),
            arch.name().as_bytes(),
            &pins[..],
            settings.as_bytes(),
        ]
        .concat(),
    ))
}

/// The source package's file `source.<key>` in `dir`, downloaded from `source.url` unless a
/// copy with the pinned sha256 is already there.
fn source_file(pins: &Pins, key: &str, dir: &Path) -> Result<PathBuf> {
    let name = pins.get(&format!("source.{key}"))?;
    let want = pins.get(&format!("source.{key}_sha256"))?;
    let path = dir.join(name);
    if path.is_file() && util::sha256_file(&path)? == want {
        return Ok(path);
    }
    let url = format!("{}/{name}", pins.get("source.url")?);
    progress!("busybox: downloading {url}");
    let tmp = path.with_extension("part");
    util::run(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "-o"])
            .arg(&tmp)
            .arg(&url),
    )
    .with_context(|| format!("download {url}"))?;
    let got = util::sha256_file(&tmp)?;
    if got != want {
        bail!("{url}: sha256 {got} differs from the pin {want} (assets/busybox/SOURCE)");
    }
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    Ok(path)
}

fn make(src: &Path) -> Command {
    let mut c = Command::new("make");
    c.current_dir(src).envs(REPRODUCIBLE_ENV.iter().copied());
    c
}

/// Unpacks the pinned source package into a fresh tree under `work` and configures it:
/// `allnoconfig`, the fragment laid over it, then `oldconfig` answering `n` to every option
/// the fragment's applets make visible, so that nothing the fragment does not name is built.
fn configure(work: &Path) -> Result<PathBuf> {
    let pins = Pins::load("busybox/SOURCE")?;
    let downloads = util::build_dir().join("busybox-source");
    std::fs::create_dir_all(&downloads)?;
    // The .dsc pins the other two files' checksums too; each is checked against its own pin.
    let dsc = source_file(&pins, "dsc", &downloads)?;
    source_file(&pins, "orig", &downloads)?;
    source_file(&pins, "debian", &downloads)?;
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("remove {}", work.display()))?;
    }
    std::fs::create_dir_all(work)?;
    let src = work.join("src");
    progress!("busybox x86_64: dpkg-source -x {}", dsc.display());
    // --no-check: the files were verified above against our pins; the signature check would
    // only warn, as no Debian keyring is configured for source packages here.
    util::output(
        Command::new("dpkg-source")
            .args(["--no-check", "-x"])
            .arg(&dsc)
            .arg(&src),
    )
    .context("unpack the busybox source package (dpkg-source is in dpkg-dev)")?;
    util::output(make(&src).args(["-s", "allnoconfig"]))?;
    let fragment = std::fs::read_to_string(fragment_path())?;
    let config = src.join(".config");
    let base = std::fs::read_to_string(&config)?;
    std::fs::write(&config, kconfig::merge(&base, &fragment))?;
    let answers = work.join("oldconfig.answers");
    std::fs::write(&answers, "n\n".repeat(4096))?;
    let stdin = std::fs::File::open(&answers)?;
    util::output(make(&src).arg("oldconfig").stdin(Stdio::from(stdin))).context(
        "busybox oldconfig asked a question `n` does not answer (a new number or string \
         option?): set it in assets/busybox/x86_64.config",
    )?;
    let final_config = std::fs::read_to_string(&config)?;
    let lost = kconfig::missing(&fragment, &final_config);
    if !lost.is_empty() {
        bail!(
            "assets/busybox/x86_64.config asks for symbols that did not survive oldconfig (a \
             missing dependency?); (symbol, requested, final): {lost:?}"
        );
    }
    util::write_atomic(&final_config_path(), final_config.as_bytes())?;
    Ok(src)
}

/// The Linux UAPI headers (`linux/`, `asm/`, `asm-generic/`) some applets include, which the
/// musl-gcc wrapper leaves off its include path: links into Debian's `linux-libc-dev`.
fn uapi_headers(work: &Path) -> Result<PathBuf> {
    let dir = work.join("uapi");
    std::fs::create_dir_all(&dir)?;
    for (name, target) in [
        ("linux", "/usr/include/linux"),
        ("asm", "/usr/include/x86_64-linux-gnu/asm"),
        ("asm-generic", "/usr/include/asm-generic"),
    ] {
        if !Path::new(target).is_dir() {
            bail!("{target} is missing: install linux-libc-dev");
        }
        std::os::unix::fs::symlink(target, dir.join(name))
            .with_context(|| format!("link {} to {target}", dir.join(name).display()))?;
    }
    Ok(dir)
}

/// The shipped busybox of `arch`; only x86_64 ships one.
pub fn build(arch: Arch) -> Result<Built> {
    if arch != Arch::X86_64 {
        bail!(
            "busybox {}: not shipped (the test VMs use `debian::busybox`)",
            arch.name()
        );
    }
    let pins = Pins::load("busybox/SOURCE")?;
    let version = pins.get("source.version")?;
    let work = util::build_dir().join("busybox-build-x86_64");
    let src = configure(&work)?;
    let uapi = uapi_headers(&work)?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    progress!("busybox x86_64: make -j{jobs} (musl-gcc, static)");
    util::output(
        make(&src)
            .arg(format!("-j{jobs}"))
            .args(["CC=musl-gcc", "HOSTCC=gcc"])
            .arg(format!(
                "CONFIG_EXTRA_CFLAGS=-isystem {} -ffile-prefix-map={}=busybox",
                uapi.display(),
                src.display()
            ))
            .arg(format!(
                "BB_EXTRA_VERSION=Debian {version}, supermachine-kernel"
            )),
    )
    .context("build busybox")?;
    let bin = src.join("busybox");
    let bytes = std::fs::read(&bin).with_context(|| format!("read {}", bin.display()))?;
    let package_version = |p: &str| debian::dpkg_version(p).unwrap_or_else(|| "unknown".into());
    Ok(Built {
        bytes,
        version: version.to_string(),
        source: format!(
            "Debian busybox {version} source package (.dsc sha256 {}, Debian's patches), \
             allnoconfig + assets/busybox/x86_64.config (settings sha256 {})",
            pins.get("source.dsc_sha256")?,
            util::sha256(settings()?.as_bytes())
        ),
        toolchain: format!(
            "{} through musl-gcc, static, with Debian musl-dev {} and linux-libc-dev {} headers",
            util::tool_version("gcc"),
            package_version("musl-dev:amd64"),
            package_version("linux-libc-dev:amd64")
        ),
        inputs: inputs(arch)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in final config is the one the shipped binary was built from: it keeps
    /// every applet the fragment asks for.
    #[test]
    fn checked_in_final_config_keeps_every_requested_symbol() {
        let frag = std::fs::read_to_string(fragment_path()).unwrap();
        let fin = std::fs::read_to_string(final_config_path()).unwrap();
        assert_eq!(kconfig::missing(&frag, &fin), Vec::new());
        assert!(!kconfig::requested(&frag).is_empty());
    }
}
