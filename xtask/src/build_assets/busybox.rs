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

use super::{kernel, Built};
use crate::pins::Pins;
use crate::spec::Arch;
use crate::{progress, setup, util};

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
    Ok(kernel::requested(&text)
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

/// The unpacked `bin/busybox` of the pinned .deb for `arch` (only aarch64 has a pin),
/// downloaded once and kept in `target/xtask/busybox-<arch>/`. The aarch64 test VMs use it for
/// their root image.
pub fn fetch(arch: Arch) -> Result<PathBuf> {
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

/// `fragment` laid over `base` (a `.config`): every symbol the fragment sets loses its line
/// in `base`, and the fragment's lines follow.
fn merge(base: &str, fragment: &str) -> String {
    let wanted = kernel::requested(fragment);
    let mut out: String = base
        .lines()
        .filter(|l| {
            let sym = l
                .strip_prefix("# ")
                .and_then(|r| r.strip_suffix(" is not set"))
                .or_else(|| l.split_once('=').map(|(k, _)| k));
            !sym.is_some_and(|s| wanted.iter().any(|(w, _)| w == s))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    for (k, v) in wanted {
        if v == "n" {
            out.push_str(&format!("# {k} is not set\n"));
        } else {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    out
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
    std::fs::write(&config, merge(&base, &fragment))?;
    let answers = work.join("oldconfig.answers");
    std::fs::write(&answers, "n\n".repeat(4096))?;
    let stdin = std::fs::File::open(&answers)?;
    util::output(make(&src).arg("oldconfig").stdin(Stdio::from(stdin))).context(
        "busybox oldconfig asked a question `n` does not answer (a new number or string \
         option?): set it in assets/busybox/x86_64.config",
    )?;
    let final_config = std::fs::read_to_string(&config)?;
    let lost = kernel::missing(&fragment, &final_config);
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
            "busybox {}: not shipped (the test VMs use `fetch`)",
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
    let package_version = |p: &str| setup::dpkg_version(p).unwrap_or_else(|| "unknown".into());
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

    #[test]
    fn merge_replaces_every_symbol_the_fragment_sets() {
        let base = "# c\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_N=5\n";
        let frag = "# why\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_N=7\n";
        assert_eq!(
            merge(base, frag),
            "# c\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_N=7\n"
        );
    }

    /// The checked-in final config is the one the shipped binary was built from: it keeps
    /// every applet the fragment asks for.
    #[test]
    fn checked_in_final_config_keeps_every_requested_symbol() {
        let frag = std::fs::read_to_string(fragment_path()).unwrap();
        let fin = std::fs::read_to_string(final_config_path()).unwrap();
        assert_eq!(kernel::missing(&frag, &fin), Vec::new());
        assert!(!kernel::requested(&frag).is_empty());
    }
}
