//! KVM or TCG: KVM only when `/dev/kvm` opens and a guest boots quickly on it (nested KVM on
//! these hosts is slower than TCG); the verdict is cached per host boot.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use supermachine_agent::client::{Client, Endpoint};
use supermachine_agent::protocol::DEFAULT_PORT;

use super::qemu::{self, Accel, Vm};
use super::{scratch_dir, wait_ready, Assets};
use crate::progress;
use crate::spec::Arch;

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn probe_cache() -> std::path::PathBuf {
    crate::util::build_dir().join("kvm-probe")
}

/// The KVM probe's verdict from earlier in this host boot, if there was one.
pub fn probed_accel() -> Option<Accel> {
    let c = std::fs::read_to_string(probe_cache()).ok()?;
    let (id, verdict) = c.split_once(' ')?;
    (id == boot_id()).then(|| {
        if verdict.trim() == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    })
}

/// KVM is used only when `/dev/kvm` opens and a guest boots quickly on it; nested KVM here
/// is slower than TCG. The answer is cached per host boot.
pub fn pick_accel(probe: impl FnOnce() -> Result<bool>) -> Accel {
    let kvm_ok = File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm_ok {
        progress!("vm: /dev/kvm not usable: TCG");
        return Accel::Tcg;
    }
    if let Some(accel) = probed_accel() {
        progress!("vm: accelerator {accel:?} (probed earlier this boot)");
        return accel;
    }
    let boot_id = boot_id();
    let cache = probe_cache();
    progress!("vm: probing KVM (a guest must reach its agent within 10 s)...");
    let fast = probe().unwrap_or(false);
    let accel = if fast { Accel::Kvm } else { Accel::Tcg };
    let _ = std::fs::create_dir_all(crate::util::build_dir());
    let _ = std::fs::write(
        &cache,
        format!("{boot_id} {}", if fast { "kvm" } else { "tcg" }),
    );
    progress!(
        "vm: accelerator {accel:?}{}",
        if fast {
            ""
        } else {
            " (KVM present but too slow, e.g. nested)"
        }
    );
    accel
}

/// Whether a guest reaches its agent within 10 s under KVM.
pub fn probe_kvm(assets: &Assets, initrd: &Path, rootfs: &Path) -> Result<bool> {
    let mut cfg = qemu::Config::new(
        Arch::X86_64,
        assets.kernel.clone(),
        initrd.to_path_buf(),
        128,
        1,
    );
    cfg.rootfs = Some(rootfs.to_path_buf());
    cfg.accel = Accel::Kvm;
    let mut vm = Vm::start(&cfg, scratch_dir())?;
    let client = Client::new(Endpoint::HybridVsock {
        path: vm.vsock.clone(),
        port: DEFAULT_PORT,
    });
    Ok(wait_ready(&mut vm, &client, Duration::from_secs(10)).is_ok())
}
