//! The drop-in in one step: the conformance workspace builds supermachine 0.7.108 against our
//! crates through `[patch.crates-io]` (its `supermachine-kernel = "=0.7.70"` pin accepts our
//! `0.7.70+ours.N`), and the "ours" run boots what supermachine itself extracts from them at
//! run time (`Image::bake_kvm_from_squashfs_auto`, through its private
//! `extract_bundled_kvm_boot_assets`), after checking those bytes against our files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::spec::Arch;
use crate::{util, vm};
use vm_rig::conformance::{supermachine_initramfs, AssetSet, Which};

/// What supermachine extracted: the kernel and the initramfs it assembled.
#[derive(Clone, Debug)]
pub struct Bundled {
    /// `kernel`: the bzImage compiled into supermachine.
    pub kernel: PathBuf,
    /// `agent.cpio`: supermachine's initramfs of the compiled-in agent and busybox.
    pub initrd: PathBuf,
}

/// Runs `bin bundled` on `root` into `dir/bundled`, and checks that supermachine's kernel is
/// our bzImage byte for byte and its initramfs is the one its `build_kvm_initramfs` makes of
/// our shipped agent and busybox. Returns the files and a report row.
pub fn extract(bin: &Path, root: &Path, dir: &Path) -> Result<(Bundled, Value)> {
    let t = Instant::now();
    let out = dir.join("bundled");
    util::run(
        Command::new(bin)
            .arg("bundled")
            .arg("--squashfs")
            .arg(root)
            .arg("--out")
            .arg(&out),
    )
    .context("supermachine's Image::bake_kvm_from_squashfs_auto")?;
    let b = Bundled {
        kernel: out.join("kernel"),
        initrd: out.join("agent.cpio"),
    };
    // The shipped files (not an agent override): what the crates compile in.
    let a = vm::extract_assets(Arch::X86_64)?;
    let shipped = AssetSet {
        which: Which::Ours,
        kernel: a.kernel,
        busybox: a.busybox,
        agent: a.agent,
        initrd: None,
    };
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let kernel = read(&b.kernel)?;
    ensure!(
        kernel == read(&shipped.kernel)?,
        "the kernel supermachine extracted ({} B, sha256 {}) is not our bzImage ({})",
        kernel.len(),
        util::sha256(&kernel),
        shipped.kernel.display()
    );
    let want = dir.join("expected-agent.cpio");
    supermachine_initramfs(bin, &shipped, &want)?;
    let initrd = read(&b.initrd)?;
    ensure!(
        initrd == read(&want)?,
        "the initramfs supermachine assembled from its bundled agent and busybox ({} B) is not \
         the one it builds from ours",
        initrd.len()
    );
    let row = serde_json::json!({
        "name": "bundled-assets",
        "pass": true,
        "ms": t.elapsed().as_millis() as u64,
        "detail": format!(
            "supermachine, built with our crates, extracted our bzImage ({} B) and an initramfs of \
             our agent and busybox ({} B), byte-identical",
            kernel.len(),
            initrd.len()
        ),
    });
    Ok((b, row))
}
