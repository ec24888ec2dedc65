//! `cargo xtask snapshot-cycles [N] [--no-park]`: N save/restore cycles of a 4-vCPU aarch64
//! guest, with or without smpark parking the secondary vCPUs first; prints the success rate
//! and fails unless every cycle ended with a task running on every CPU.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::spec::Arch;
use crate::vm::console::{console_files, restore_in_new_qemu, start_vm, Console, CPUS};
use crate::vm::qemu::{Config, Vm};
use crate::{flags, vm};

/// Runs the command.
pub fn run(f: flags::SnapshotCycles) -> Result<()> {
    vm::install_signal_cleanup();
    let start = std::time::Instant::now();
    let r = snapshot_cycles(f.n, f.park)?;
    println!(
        "snapshot cycles ({}): {}/{} succeeded in {:.0?}{}",
        if f.park {
            "with smpark"
        } else {
            "without parking"
        },
        r.ok,
        f.n,
        start.elapsed(),
        r.failure
            .map(|e| format!("; first failure: {e}"))
            .unwrap_or_default()
    );
    if r.ok != f.n {
        std::process::exit(1);
    }
    Ok(())
}

/// Outcome of [`snapshot_cycles`].
#[derive(Debug)]
pub struct CycleReport {
    /// Cycles that ended with a task running on every CPU.
    pub ok: u32,
    /// Cycles attempted.
    pub tried: u32,
    /// The first failure, if any.
    pub failure: Option<String>,
}

/// `n` snapshot cycles of a 4-vCPU guest: (park →) save → restore in a new QEMU →
/// sync-time (→ unpark) → a pinned task on every CPU. Stops at the first failed cycle, as
/// the guest is then lost.
pub fn snapshot_cycles(n: u32, park: bool) -> Result<CycleReport> {
    let assets = vm::extract_assets(Arch::Aarch64)?;
    let files = console_files(&assets)?;
    let (vm, mut cfg) = start_vm(&assets, &files, CPUS, false)?;
    // Each restored QEMU gets the same command line, so the initramfs must outlive the VM
    // it was written for.
    let snaps = vm::scratch_dir();
    std::fs::create_dir_all(&snaps)?;
    let initrd = snaps.join("initrd.cpio");
    std::fs::copy(&cfg.initrd, &initrd)?;
    cfg.initrd = initrd;
    let result = run_cycles(vm, &cfg, &snaps, n, park);
    let _ = std::fs::remove_dir_all(&snaps);
    result
}

fn run_cycles(mut vm: Vm, cfg: &Config, snaps: &Path, n: u32, park: bool) -> Result<CycleReport> {
    let mut con = Console::connect(&vm)?;
    con.command("", "ready 4")?;
    let mut report = CycleReport {
        ok: 0,
        tried: 0,
        failure: None,
    };
    let file: PathBuf = snaps.join("snapshot.bin");
    for i in 0..n {
        report.tried += 1;
        let cycle = (|| -> Result<Vm> {
            if park {
                con.command("park", "parked e")?;
            }
            let restored = restore_in_new_qemu(&vm, cfg, &file)?;
            con = Console::connect(&restored)?;
            let now = crate::util::unix_now_secs();
            con.command(&format!("time {now}"), "time ")?;
            if park {
                con.command("unpark", "unparked")?;
            }
            con.command("pin", "pinned 4")?;
            Ok(restored)
        })();
        match cycle {
            Ok(next) => {
                vm = next;
                report.ok += 1;
            }
            Err(e) => {
                report.failure = Some(format!("cycle {i}: {e:#}"));
                break;
            }
        }
    }
    Ok(report)
}
