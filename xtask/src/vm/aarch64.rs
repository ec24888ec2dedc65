//! Boot check of the aarch64 kernel under `qemu-system-aarch64 -M virt` (TCG, GICv3, 4 vCPUs).
//!
//! Until init-oci and the aarch64 agent ship, this proves the Image itself: it boots a tiny
//! static test init (`xtask/guest-probe/boot-check.c`) that reports the kernel release and the
//! online CPUs and powers off through PSCI.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::cpio::Archive;
use crate::manifest::Manifest;
use crate::spec::Arch;
use crate::{progress, util};

/// Runs the check when the manifest has an aarch64 kernel; says so and skips otherwise.
pub fn boot_check() -> Result<()> {
    let manifest = Manifest::load()?;
    let Some(kernel) = manifest.get(Arch::Aarch64, "kernel") else {
        progress!("e2e: aarch64 kernel not built yet: no aarch64 boot check");
        return Ok(());
    };
    let dir = util::build_dir().join(format!("arm-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir, &util::root().join(&kernel.file));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(dir: &std::path::Path, image: &std::path::Path) -> Result<()> {
    let init = dir.join("init");
    util::run(
        Command::new("aarch64-linux-gnu-gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&init)
            .arg(util::root().join("xtask/guest-probe/boot-check.c")),
    )?;
    let mut a = Archive::new();
    a.dir("dev", 0o755)
        .char_dev("dev/console", 0o600, 5, 1)
        .dir("proc", 0o755)
        .dir("sys", 0o755)
        .file("init", 0o755, &std::fs::read(&init)?);
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&initrd, a.finish())?;
    let console = dir.join("console.log");
    let start = Instant::now();
    let mut qemu = Command::new("qemu-system-aarch64")
        .args([
            "-M",
            "virt,gic-version=3",
            "-cpu",
            "max",
            "-smp",
            "4",
            "-m",
            "256",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(image)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyAMA0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start qemu-system-aarch64 (run `cargo xtask setup`)")?;
    let status = loop {
        if let Some(st) = qemu.try_wait()? {
            break st;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = qemu.kill();
            let _ = qemu.wait();
            bail!(
                "aarch64 guest did not power off within 90 s:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    ensure!(
        status.success(),
        "qemu-system-aarch64 exited with {status}:\n{text}"
    );
    ensure!(
        text.contains("supermachine-boot-check: ok release=6.12.117 machine=aarch64 cpus=0-3"),
        "aarch64 guest did not report a 4-CPU boot:\n{text}"
    );
    progress!(
        "e2e: ok aarch64 Image boots 4 vCPUs to userspace and powers off ({:.1?})",
        start.elapsed()
    );
    Ok(())
}
