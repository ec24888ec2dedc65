//! The conformance session: supermachine 0.7.108's own client (the `conformance/` workspace)
//! against an x86_64 guest booted as supermachine boots it, shared by the conformance suite
//! (`xtask/src/e2e/conformance/`) and the bench. Which assets ([`Which`], [`AssetSet`]), the
//! client binary ([`build_binary`], [`lint`]), the root image every set boots
//! ([`root_image`]) and the booted guest with its exec socket ([`Session`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use supermachine_agent::protocol::READY_LINE;

use crate::spec::Arch;
use crate::vm::{self, rootfs};
use crate::{cargo, progress, util};

mod session;

pub use crate::spec::Which;
pub use session::{supermachine_initramfs, Bridge, Session};

/// The guest port supermachine dials (`DEFAULT_EXEC_GUEST_PORT`), the agent's.
pub const EXEC_PORT: u32 = supermachine_agent::protocol::DEFAULT_PORT;
/// The console line of an agent that listens (both upstream's 0.7.70 and ours): the agent's
/// [`READY_LINE`] and its port.
pub fn listen_line() -> String {
    format!("{READY_LINE} {EXEC_PORT}")
}
/// How long to wait for [`listen_line`] before letting the client's readiness gate decide.
pub const LISTEN_WAIT: Duration = Duration::from_secs(120);
/// The client's readiness budget once started.
pub const READY_AFTER_LINE: Duration = Duration::from_secs(60);
pub const READY_WITHOUT_LINE: Duration = Duration::from_secs(20);
/// A whole `check` run may not take longer than this (each check has its own deadline).
pub const RUN_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Execs of `true` timed per set, for the round-trip figure under the table.
pub const RTT_EXECS: usize = 100;
/// Guest RAM: supermachine's default (`memory_mib: 512`).
pub const MEM_MIB: u32 = 512;
/// Hidden override: the agent to test as "ours" (a binary not yet in the sub-crate).
pub const AGENT_OVERRIDE: &str = "SUPERMACHINE_CONFORMANCE_AGENT";
/// Upstream's version, as pinned by supermachine 0.7.108.
pub const UPSTREAM_VERSION: &str = crate::upstream::VERSION;

/// The three files supermachine takes from a kernel crate on x86_64.
#[derive(Clone, Debug)]
pub struct AssetSet {
    /// Whose.
    pub which: Which,
    /// bzImage.
    pub kernel: PathBuf,
    /// busybox (static), copied to `/bin/busybox` in the initramfs.
    pub busybox: PathBuf,
    /// The agent, `/supermachine-agent` in the initramfs.
    pub agent: PathBuf,
    /// An initramfs supermachine already assembled (its bundled extraction, [`bundled`]);
    /// otherwise the session builds one with `Image::build_kvm_initramfs`.
    pub initrd: Option<PathBuf>,
}

impl AssetSet {
    /// Our shipped assets; `$SUPERMACHINE_CONFORMANCE_AGENT` replaces the agent.
    pub fn ours(which: Which) -> Result<AssetSet> {
        let a = vm::extract_assets(Arch::X86_64)?;
        let agent = match std::env::var_os(AGENT_OVERRIDE) {
            Some(p) => {
                let p = PathBuf::from(p);
                if !p.is_file() {
                    bail!("{AGENT_OVERRIDE}={}: no such file", p.display());
                }
                progress!("conformance: ours uses the agent {}", p.display());
                p
            }
            None => a.agent,
        };
        Ok(AssetSet {
            which,
            kernel: a.kernel,
            busybox: a.busybox,
            agent,
            initrd: None,
        })
    }

    /// Upstream's 0.7.70 assets, fetched from crates.io on their own ([`crate::upstream`]):
    /// the conformance workspace builds supermachine with ours.
    pub fn upstream() -> Result<AssetSet> {
        let up = crate::upstream::fetch()?;
        let file = |name: &str| -> Result<PathBuf> {
            up.x86_64
                .asset(name)
                .map(Path::to_path_buf)
                .with_context(|| format!("upstream {UPSTREAM_VERSION} has no {name}"))
        };
        Ok(AssetSet {
            which: Which::Upstream,
            kernel: file("kernel")?,
            busybox: file("busybox")?,
            agent: file("supermachine-agent")?,
            initrd: None,
        })
    }
}

fn manifest() -> PathBuf {
    cargo::conformance_manifest()
}

/// Builds the conformance binary (minutes the first time: supermachine has ~100 dependencies)
/// and returns its path.
pub fn build_binary() -> Result<PathBuf> {
    progress!("conformance: building the client (supermachine 0.7.108; minutes the first time)");
    let t = Instant::now();
    let bin = cargo::build_conformance_tool(&manifest(), "supermachine-conformance", &[])
        .context("build the conformance client")?;
    progress!("conformance: client built in {:.0?}", t.elapsed());
    Ok(bin)
}

/// The hygiene of the conformance client and of `sm-boot` (supermachine's boot code for the
/// rigs), as for the main workspace: `cargo fmt --check`, `cargo clippy -D warnings` and their
/// unit tests (for `sm-boot`, supermachine's own `fdt.rs`, `boot.rs` and `mptable.rs` tests
/// too).
pub fn lint() -> Result<()> {
    let target = cargo::conformance_target();
    let src = vm::sm_boot::supermachine_src()?;
    for (what, manifest) in [
        ("the conformance client", manifest()),
        ("conformance/sm-boot", vm::sm_boot::manifest()),
    ] {
        let cargo_in = |sub: &str| {
            let mut c = util::cargo();
            c.arg(sub)
                .arg("--manifest-path")
                .arg(&manifest)
                .env("SUPERMACHINE_SRC", &src);
            c
        };
        progress!("conformance: fmt, clippy and unit tests of {what}");
        util::run(cargo_in("fmt").arg("--check")).with_context(|| format!("rustfmt of {what}"))?;
        util::run(
            cargo_in("clippy")
                .args(["--quiet", "--all-targets", "--locked", "--target-dir"])
                .arg(&target)
                .args(["--", "-D", "warnings"]),
        )
        .with_context(|| format!("clippy of {what}"))?;
        util::run(
            cargo_in("test")
                .args(["--quiet", "--locked", "--target-dir"])
                .arg(&target),
        )
        .with_context(|| format!("unit tests of {what}"))?;
    }
    Ok(())
}

/// The root image every set boots: the default busybox rootfs plus the conformance workload.
pub fn root_image(bin: &Path, dir: &Path) -> Result<PathBuf> {
    let assets = vm::extract_assets(Arch::X86_64)?;
    let stage = dir.join("rootfs");
    rootfs::populate_default(&stage, &assets)?;
    let script = util::output(Command::new(bin).arg("workload-script"))?;
    rootfs::add_run_workload(&stage, &script)?;
    let img = dir.join("rootfs.sqfs");
    rootfs::mksquashfs(&stage, &img, &[])?;
    let _ = std::fs::remove_dir_all(&stage);
    Ok(img)
}
