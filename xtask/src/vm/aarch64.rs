//! Checks of the aarch64 assets under `qemu-system-aarch64 -M virt` (TCG, GICv3, 4 vCPUs).
//!
//! - [`boot_check`]: a tiny static test init (`xtask/guest-probe/boot-check.c`) reports the
//!   kernel release and the online CPUs and powers off through PSCI;
//! - [`agent_check`]: the shipped `init-oci` builds the overlay root from a squashfs on
//!   virtio-blk and execs the shipped agent as PID 1, which is driven over real virtio-vsock
//!   (vhost-device-vsock): probe, exec, files on the overlay, PSCI power-off.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};

use super::cpio::Archive;
use crate::manifest::Manifest;
use crate::spec::Arch;
use crate::{progress, util};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";

/// Runs the check when the manifest has an aarch64 kernel; says so and skips otherwise.
pub fn boot_check() -> Result<()> {
    let manifest = Manifest::load()?;
    let Some(kernel) = manifest.get(Arch::Aarch64, "kernel") else {
        progress!("e2e: aarch64 kernel not built yet: no aarch64 boot check");
        return Ok(());
    };
    let start = Instant::now();
    let dir = super::scratch_dir();
    std::fs::create_dir_all(&dir)?;
    let init = dir.join("boot-check");
    util::run(
        Command::new(Arch::Aarch64.gcc())
            .args(["-static", "-O2", "-o"])
            .arg(&init)
            .arg(util::root().join("xtask/guest-probe/boot-check.c")),
    )?;
    let files = [("init", std::fs::read(&init)?)];
    let spec = VmSpec {
        cpus: 4,
        mem_mib: 256,
        rootfs: None,
        cmdline: vec![],
    };
    let mut vm = start_vm(&kernel.file, &files, spec, dir)?;
    let ended = vm.wait_exit(Duration::from_secs(90))?;
    let status = vm.try_wait()?;
    let text = vm.console_text();
    ensure!(
        ended,
        "aarch64 guest did not power off within 90 s:\n{text}"
    );
    ensure!(
        status.is_some_and(|s| s.success()),
        "qemu-system-aarch64 exited with {status:?}:\n{text}"
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

/// Boots the aarch64 Image through init-oci and drives the agent over vsock.
pub fn agent_check() -> Result<()> {
    use supermachine_agent::client::{Client, Endpoint};
    use supermachine_agent::protocol::{ExecRequest, PowerAction, DEFAULT_PORT};

    let manifest = Manifest::load()?;
    let (Some(kernel), Some(agent), Some(init)) = (
        manifest.get(Arch::Aarch64, "kernel"),
        manifest.get(Arch::Aarch64, "supermachine-agent"),
        manifest.get(Arch::Aarch64, "init-oci"),
    ) else {
        progress!("e2e: aarch64 kernel, agent or init-oci not built yet: no aarch64 agent check");
        return Ok(());
    };
    let start = Instant::now();
    let dir = super::scratch_dir();
    std::fs::create_dir_all(&dir)?;
    // A root image with nothing but /etc: the checks run the agent binary itself.
    let tree = dir.join("rootfs");
    std::fs::create_dir_all(tree.join("etc"))?;
    std::fs::create_dir_all(tree.join("tmp"))?;
    std::fs::write(tree.join("etc/passwd"), PASSWD)?;
    let rootfs = dir.join("rootfs.sqfs");
    util::output(Command::new("mksquashfs").arg(&tree).arg(&rootfs).args([
        "-noappend",
        "-quiet",
        "-no-progress",
        "-comp",
        "zstd",
        "-all-root",
    ]))?;
    let read = |file: &str| std::fs::read(util::root().join(file));
    let initramfs = [
        ("init", read(&init.file)?),
        ("supermachine-agent", read(&agent.file)?),
    ];
    let vm_cfg = VmSpec {
        cpus: 4,
        mem_mib: 256,
        rootfs: Some(rootfs),
        cmdline: vec!["sm.hostname=armguest".into()],
    };
    let mut vm = start_vm(&kernel.file, &initramfs, vm_cfg, dir)?;
    let client = Client::new(Endpoint::HybridVsock {
        path: vm.vsock.clone(),
        port: DEFAULT_PORT,
    });
    let checked = (|| -> Result<()> {
        super::wait_ready(&mut vm, &client, Duration::from_secs(90))?;
        let p = client.probe()?;
        ensure!(
            p.pid == 1 && p.cpus_online == 4 && p.kernel_release == "6.12.117",
            "{p:?}"
        );
        let agent_path = "/run/supermachine/supermachine-agent";
        let out = client.exec_output(&ExecRequest::new([agent_path, "--help"]))?;
        ensure!(
            out.status.code == Some(2) && String::from_utf8_lossy(&out.stderr).contains("usage"),
            "{out:?}"
        );
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        client.write_file("/tmp-blob", 0o600, &data)?;
        ensure!(
            client.read_file("/tmp-blob", 1 << 20)? == data,
            "file round trip differs"
        );
        client.power(PowerAction::Poweroff)?;
        ensure!(
            vm.wait_exit(Duration::from_secs(30))?,
            "QEMU still running after poweroff"
        );
        Ok(())
    })();
    if let Err(e) = checked {
        bail!("{e:#}\n{}", vm.logs());
    }
    progress!(
        "e2e: ok aarch64 init-oci + agent over virtio-vsock: overlay root, probe, exec, files, PSCI power-off ({:.1?})",
        start.elapsed()
    );
    Ok(())
}

/// init-oci without a root disk: one FATAL line on the console, then PSCI power-off.
pub fn init_failure_check() -> Result<()> {
    let manifest = Manifest::load()?;
    let (Some(kernel), Some(init)) = (
        manifest.get(Arch::Aarch64, "kernel"),
        manifest.get(Arch::Aarch64, "init-oci"),
    ) else {
        return Ok(());
    };
    let start = Instant::now();
    let dir = super::scratch_dir();
    std::fs::create_dir_all(&dir)?;
    let vm_cfg = VmSpec {
        cpus: 1,
        mem_mib: 128,
        rootfs: None,
        cmdline: vec![],
    };
    let init = std::fs::read(util::root().join(&init.file))?;
    let mut vm = start_vm(&kernel.file, &[("init", init)], vm_cfg, dir)?;
    let ended = vm.wait_exit(Duration::from_secs(60))?;
    let console = vm.console_text();
    ensure!(
        ended,
        "aarch64 VM still running 60 s after init-oci failed:\n{console}"
    );
    ensure!(
        console.contains("init-oci: FATAL: root device /dev/vda did not appear"),
        "{console}"
    );
    progress!(
        "e2e: ok aarch64 init-oci failure prints a FATAL line and powers off ({:.1?})",
        start.elapsed()
    );
    Ok(())
}

/// Shape of an aarch64 test VM.
struct VmSpec {
    cpus: u32,
    mem_mib: u32,
    rootfs: Option<std::path::PathBuf>,
    cmdline: Vec<String>,
}

/// Starts the aarch64 Image (TCG, vhost-user vsock) with an initramfs of `/dev/console`, empty
/// `/proc` and `/sys`, and the given (name, contents) programs, in the scratch directory `dir`.
fn start_vm(
    kernel: &str,
    files: &[(&str, Vec<u8>)],
    spec: VmSpec,
    dir: std::path::PathBuf,
) -> Result<super::qemu::Vm> {
    let mut a = Archive::new();
    a.dir("dev", 0o755)
        .char_dev("dev/console", 0o600, 5, 1)
        .dir("proc", 0o755)
        .dir("sys", 0o755);
    for (name, bytes) in files {
        a.file(name, 0o755, bytes);
    }
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&initrd, a.finish())?;
    let cfg = super::qemu::Config {
        arch: Arch::Aarch64,
        kernel: util::root().join(kernel),
        initrd,
        rootfs: spec.rootfs,
        mem_mib: spec.mem_mib,
        cpus: spec.cpus,
        cmdline: spec.cmdline,
        accel: super::qemu::Accel::Tcg,
        icount: false,
    };
    super::qemu::Vm::start(&cfg, dir)
}
