//! The bundled assets of one arch, extracted through its sub-crate's public API, and what
//! is built from them for a boot (the initramfs, test-only guest programs).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

use super::{bake, init};
use crate::spec::Arch;
use crate::util;

/// The bundled assets of one arch, extracted through its sub-crate's public API.
#[derive(Debug)]
pub struct Assets {
    /// Guest architecture.
    pub arch: Arch,
    /// bzImage or Image.
    pub kernel: PathBuf,
    /// The agent.
    pub agent: PathBuf,
    /// The busybox of the default root image: the shipped one on x86_64; on aarch64, the
    /// same pinned Debian package's arm64 build (test-only, not shipped).
    pub busybox: PathBuf,
    /// The shipped x86_64 busybox, which lists on this x86_64 host the applets both root
    /// images link (the arm64 .deb's busybox has every one of them).
    pub busybox_host: PathBuf,
    /// aarch64: `init-oci` and `smpark.ko`.
    pub init_oci: Option<PathBuf>,
    /// aarch64: `smpark.ko`.
    pub smpark: Option<PathBuf>,
}

fn extract_context(dir: &Path) -> String {
    format!("extract the bundled assets into {}", dir.display())
}

/// Extracts the x86_64 crate's assets into `dir`.
fn extract_x86_64(dir: &Path) -> Result<supermachine_kernel_x86_64::AssetPaths> {
    supermachine_kernel_x86_64::extract_all_to(dir).with_context(|| extract_context(dir))
}

/// Serialises extraction within the process. Two callers extracting into an empty directory
/// at once (parallel unit tests in a fresh clone) both write the files, and one may exec a
/// binary whose new inode the other still holds open for writing, directly or through a
/// child forked meanwhile: `ETXTBSY` (seen in a clean-clone CI run). The caller that waits
/// finds identical files and writes nothing.
static EXTRACTING: Mutex<()> = Mutex::new(());

/// Extracts the shipped assets of `arch` (skipped when identical files are already there).
pub fn extract_assets(arch: Arch) -> Result<Assets> {
    let _one_at_a_time = EXTRACTING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = util::build_dir().join(format!("assets-{}", arch.name()));
    Ok(match arch {
        Arch::X86_64 => {
            let p = extract_x86_64(&dir)?;
            Assets {
                arch,
                kernel: p.kernel,
                agent: p.supermachine_agent,
                busybox: p.busybox.clone(),
                busybox_host: p.busybox,
                init_oci: None,
                smpark: None,
            }
        }
        Arch::Aarch64 => {
            let p = supermachine_kernel_aarch64::extract_all_to(&dir)
                .with_context(|| extract_context(&dir))?;
            // The x86_64 busybox lists the applets of both (same package) on this host.
            let host = extract_x86_64(&util::build_dir().join("assets-x86_64"))?;
            Assets {
                arch,
                kernel: p.kernel,
                agent: p.supermachine_agent,
                busybox: crate::debian::busybox(arch)?,
                busybox_host: host.busybox,
                init_oci: Some(p.init_oci),
                smpark: Some(p.smpark_ko),
            }
        }
    })
}

/// Reads a file, naming it on failure.
pub(super) fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("read {}", p.display()))
}

impl Assets {
    /// The shipped `init-oci` (aarch64).
    pub fn init_oci_bytes(&self) -> Result<Vec<u8>> {
        read(
            self.init_oci
                .as_deref()
                .context("the aarch64 crate has no init-oci")?,
        )
    }
}

/// The initramfs of `assets`: the x86_64 init script with busybox and the agent (an
/// uncompressed cpio), or supermachine's aarch64 one ([`bake::initramfs`], gzip): `init-oci`
/// and `smpark.ko` (`smpark` replaces the shipped module's bytes).
pub fn initramfs(assets: &Assets, smpark: Option<&[u8]>) -> Result<Vec<u8>> {
    match assets.arch {
        Arch::X86_64 => Ok(init::initramfs(
            &read(&assets.busybox)?,
            &read(&assets.agent)?,
        )),
        Arch::Aarch64 => {
            let shipped = assets.smpark.as_deref().map(read).transpose()?;
            bake::initramfs(&assets.init_oci_bytes()?, smpark.or(shipped.as_deref()))
        }
    }
}

/// Compiles a test-only guest program `xtask/guest-probe/NAME.c` statically for `arch`
/// (musl on x86_64, glibc on aarch64, which has no musl-gcc wrapper here).
pub fn guest_program(arch: Arch, name: &str) -> Result<Vec<u8>> {
    let out = util::build_dir().join(format!("guest-{name}-{}", arch.name()));
    std::fs::create_dir_all(util::build_dir())?;
    let cc = match arch {
        Arch::X86_64 => "musl-gcc".to_string(),
        Arch::Aarch64 => arch.gcc(),
    };
    util::run(
        std::process::Command::new(cc)
            .args(["-static", "-pthread", "-O2", "-Wall", "-o"])
            .arg(&out)
            .arg(util::root().join(format!("xtask/guest-probe/{name}.c"))),
    )?;
    std::fs::read(&out).with_context(|| format!("read {}", out.display()))
}
