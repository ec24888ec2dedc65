//! The VM end-to-end suite: boots the bundled assets of each arch under QEMU (x86_64: TCG
//! unless KVM is fast; aarch64: TCG, 4 vCPUs) and drives the agent over real virtio-vsock.
//! This module is the harness (the exec helpers every suite uses, [`check`], and [`run`], the
//! order of the suites); each suite is a file:
//! - [`exec`]: exec, rootfs, control and sysctl checks, shared by both arches, and the boot
//!   failure check;
//! - [`abuse`]: the agent under load, bad clients, disconnects and exhaustion;
//! - [`init_oci`]: aarch64's init-oci as supermachine runs it: markers, workload, bad input;
//! - [`smpark`]: aarch64's boot, smpark and snapshot checks;
//! - [`hvf_machine`]: the aarch64 guest on supermachine's HVF machine, as the guest sees it,
//!   and the smallest RAM;
//! - [`kvm_machine`]: the x86_64 guest on supermachine's KVM machine (1 vCPU on the PIC and
//!   PIT, 2 vCPUs on its MP table, the longest command line, the smallest RAM);
//! - [`run_image`]: `cargo xtask run` of an OCI layout with no command;
//! - [`tsi`]: guest networking (TSI) against supermachine's own muxer, in a network namespace;
//! - [`conformance`]: supermachine 0.7.108's own client against ours and upstream's assets
//!   (`cargo xtask conformance`, not part of [`run`]).

pub mod abuse;
pub mod conformance;
mod exec;
pub mod hvf_machine;
pub mod init_oci;
pub mod kvm_machine;
mod run_image;
pub mod smpark;
pub mod tsi;
mod users;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use supermachine_agent::protocol::*;

use crate::manifest::Manifest;
use crate::spec::{self, Arch};
use crate::vm::qemu::VsockDevice;
use crate::vm::{boot, Guest, Options};
use crate::{progress, vm};

/// An exec of `sh -c script`.
pub(crate) fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

/// Runs `req` to its end, naming its argv on failure.
pub(crate) fn out(g: &Guest, req: &ExecRequest) -> Result<supermachine_agent::client::Output> {
    g.client
        .exec_output(req)
        .with_context(|| format!("exec {:?}", req.argv))
}

/// `sh -c script`; its stdout, which must succeed.
pub(crate) fn stdout(g: &Guest, script: &str) -> Result<String> {
    let o = out(g, &sh(script))?;
    ensure!(
        o.status.code == 0,
        "`{script}` failed: {:?}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The guest's wall clock, in Unix seconds (`date +%s`).
pub(crate) fn guest_secs(g: &Guest) -> Result<i64> {
    stdout(g, "date +%s")?.trim().parse().context("date +%s")
}

/// Neither of supermachine's machines has an RTC: the guest clock must come from
/// `supermachine.host_time`, so it is within 10 minutes of the host's.
pub(crate) fn host_time_applied(g: &Guest) -> Result<()> {
    let guest = guest_secs(g)?;
    let host = crate::util::unix_now_secs() as i64;
    ensure!(
        (guest - host).abs() < 600,
        "guest clock {guest}, host {host}: host_time was not applied"
    );
    Ok(())
}

/// A raw connection to the agent's port, for clients that speak (or garble) frames themselves.
pub(crate) fn connect(g: &Guest) -> Result<std::os::unix::net::UnixStream> {
    let s = g.vm.connect(DEFAULT_PORT, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Runs one named check, printing its outcome.
pub(crate) fn check(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let t = std::time::Instant::now();
    f().with_context(|| format!("e2e check `{name}` failed"))?;
    progress!("e2e: ok {name} ({:.1?})", t.elapsed());
    Ok(())
}

/// Park/unpark cycles of the suite (the issue asks for 100; each takes about 0.2 s).
pub const PARK_CYCLES: u32 = 100;
/// Snapshot cycles of the suite; `cargo xtask snapshot-cycles 100` runs more.
pub const SNAPSHOT_CYCLES: u32 = 10;

/// Boots `arch` with the image-config workload and runs the shared checks on it.
fn arch_suite(arch: Arch) -> Result<()> {
    let volume = match arch {
        Arch::Aarch64 => Some(init_oci::main_volume()?),
        Arch::X86_64 => None,
    };
    let result = arch_suite_with(arch, volume.as_deref());
    if let Some(dir) = volume.as_deref().and_then(std::path::Path::parent) {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn arch_suite_with(arch: Arch, volume: Option<&std::path::Path>) -> Result<()> {
    let mut opts = Options {
        arch,
        extra_files: match arch {
            Arch::X86_64 => vec![(
                vm::rootfs::RUN_WORKLOAD.to_string(),
                exec::workload_script()?.into_bytes(),
            )],
            Arch::Aarch64 => Vec::new(),
        },
        // x86_64: 1 vCPU, as supermachine's `Vm::start`, warm pool and `Image.build` boot it
        // (the 2-vCPU MP-table mode has its own check).
        cpus: if arch == Arch::Aarch64 {
            vm::console::CPUS
        } else {
            1
        },
        gdb: arch == Arch::Aarch64,
        // aarch64 talks to the guest through supermachine's own vsock device and muxer; the
        // x86_64 suite stays on vhost-device-vsock until it boots as supermachine's KVM
        // backend does (the conformance suite drives x86_64 through supermachine's device).
        vsock_device: match arch {
            Arch::Aarch64 => VsockDevice::Supermachine,
            Arch::X86_64 => VsockDevice::VhostDeviceVsock,
        },
        ..Options::default()
    };
    if let Some(v) = volume {
        opts.bake = init_oci::main_bake(v);
        opts.cmdline = init_oci::main_cmdline();
    }
    progress!("e2e: {} guest", arch.name());
    let guest = boot(&opts)?;
    // The root image, the delta layer, then the volumes.
    let disks = 2 + opts.bake.volumes.len();
    let first = match arch {
        Arch::Aarch64 => init_oci::checks(&guest).and_then(|()| hvf_machine::checks(&guest, disks)),
        Arch::X86_64 => kvm_machine::checks(&guest),
    };
    let result = first
        .and_then(|()| exec::exec_checks(&guest))
        .and_then(|()| exec::rootfs_checks(&guest))
        .and_then(|()| exec::control_checks(&guest))
        .and_then(|()| abuse::checks(&guest))
        .and_then(|()| match arch {
            Arch::Aarch64 => smpark::smpark_checks(&guest, PARK_CYCLES),
            Arch::X86_64 => Ok(()),
        })
        .and_then(|()| exec::sysctl_checks(&guest));
    if let Err(e) = result {
        return Err(guest.vm.failure(format!("{} guest: {e:#}", arch.name())));
    }
    check("reboot ends QEMU and leaves nothing behind", || {
        let dir = guest.vm.dir().to_path_buf();
        guest.shutdown()?;
        ensure!(!dir.exists(), "{} left behind", dir.display());
        Ok(())
    })
}

/// Whether every aarch64 asset has been built (a tree bootstrapped for x86_64 only skips
/// the aarch64 checks, and says so).
fn aarch64_built() -> Result<bool> {
    let m = Manifest::load()?;
    Ok(spec::assets(Arch::Aarch64)
        .iter()
        .all(|a| m.get(Arch::Aarch64, a.name()).is_some()))
}

/// Runs the suite for `arches`.
pub fn run(arches: &[Arch]) -> Result<()> {
    let start = std::time::Instant::now();
    if arches.contains(&Arch::X86_64) {
        arch_suite(Arch::X86_64)?;
        kvm_machine::mp_table_check()?;
        kvm_machine::cmdline_headroom_check()?;
        kvm_machine::smallest_ram_check()?;
        exec::boot_failure_check()?;
        run_image::check()?;
        tsi::run(Arch::X86_64)?;
    }
    if arches.contains(&Arch::Aarch64) {
        if aarch64_built()? {
            smpark::boot_check()?;
            hvf_machine::panic_check()?;
            hvf_machine::smallest_ram_check()?;
            arch_suite(Arch::Aarch64)?;
            init_oci::no_disk_check()?;
            init_oci::bad_input_checks()?;
            smpark::module_checks()?;
            smpark::snapshot_check(SNAPSHOT_CYCLES)?;
            tsi::run(Arch::Aarch64)?;
        } else {
            progress!("e2e: aarch64 assets not all built: no aarch64 checks");
        }
    }
    progress!("e2e: all checks passed in {:.0?}", start.elapsed());
    Ok(())
}
