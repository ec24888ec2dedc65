//! The aarch64 guest on supermachine's HVF machine ([`crate::vm::hvf`]), as the guest sees it:
//! the Image running where supermachine copies it, supermachine's device tree and device
//! order, no RTC (the clock comes from `supermachine.host_time`), the balloon, a kernel
//! panic that ends the VM although supermachine passes no `panic=`, and the smallest RAM.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;

use super::{check, stdout};
use crate::spec::Arch;
use crate::vm::console::start_vm;
use crate::vm::{self, cmdline_words, hvf, Guest, Options};

/// virtio device IDs (virtio 1.2, section 5).
const VSOCK_ID: &str = "0x0013";
const BLOCK_ID: &str = "0x0002";
const RNG_ID: &str = "0x0004";
const BALLOON_ID: &str = "0x0005";

/// Checks on the main aarch64 guest (`g` boots with `disks` block devices).
pub fn checks(g: &Guest, disks: usize) -> Result<()> {
    check(
        "the Image runs at supermachine's load address (RAM 0x80000000 + 0x80000)",
        || {
            let iomem = stdout(g, "grep -E 'System RAM|Kernel code' /proc/iomem")?;
            let want_ram = format!("{:08x}-", hvf::RAM_BASE);
            let want_code = format!("{:08x}-", hvf::RAM_BASE + hvf::KERNEL_OFFSET);
            ensure!(
                iomem
                    .lines()
                    .any(|l| l.trim_start().starts_with(&want_ram) && l.contains("System RAM"))
                    && iomem.lines().any(
                        |l| l.trim_start().starts_with(&want_code) && l.contains("Kernel code")
                    ),
                "/proc/iomem has no RAM at {want_ram} or kernel code at {want_code}:\n{iomem}"
            );
            Ok(())
        },
    )?;
    check(
        "supermachine's device tree: its devices in its order, no RTC, no rng-seed",
        || {
            let script = "tr -d '\\0' < /proc/device-tree/compatible; echo; \
                 for d in /sys/bus/virtio/devices/virtio*; do \
                   echo $(basename $(readlink -f $d/..)) $(cat $d/device); done; \
                 ls /sys/class/rtc | wc -l; \
                 test -e /proc/device-tree/chosen/rng-seed && echo rng-seed || echo no-seed";
            let text = stdout(g, script)?;
            let mut lines = text.lines();
            ensure!(
                lines.next() == Some("linux,dummy-virt"),
                "not supermachine's tree:\n{text}"
            );
            let mut want: Vec<String> = hvf::plan(disks)
                .iter()
                .map(|s| {
                    let id = match s.device {
                        hvf::Device::Vsock => VSOCK_ID,
                        hvf::Device::Block(_) => BLOCK_ID,
                        hvf::Device::Rng => RNG_ID,
                        hvf::Device::Balloon => BALLOON_ID,
                    };
                    format!("{:x}.virtio_mmio {id}", s.base())
                })
                .collect();
            let mut got: Vec<String> = lines.by_ref().take(want.len()).map(String::from).collect();
            want.sort();
            got.sort();
            ensure!(got == want, "devices {got:?}, want {want:?}:\n{text}");
            ensure!(
                lines.next() == Some("0") && lines.next() == Some("no-seed"),
                "an RTC or an rng-seed:\n{text}"
            );
            Ok(())
        },
    )?;
    check(
        "no RTC: the clock comes from supermachine.host_time",
        || super::host_time_applied(g),
    )?;
    check(
        "balloon inflate and deflate through QMP, the agent answering",
        || {
            let mut qmp = g.vm.monitor()?;
            let full = balloon_actual(&mut qmp)?;
            let target = full - (64 << 20);
            qmp.execute("balloon", json!({ "value": target }))?;
            wait_balloon(&mut qmp, |actual| actual <= target)?;
            ensure!(stdout(g, "echo inflated")? == "inflated\n");
            qmp.execute("balloon", json!({ "value": full }))?;
            wait_balloon(&mut qmp, |actual| actual == full)?;
            ensure!(stdout(g, "echo deflated")? == "deflated\n");
            Ok(())
        },
    )
}

/// The guest's memory as the balloon leaves it (`query-balloon`'s `actual`, bytes).
fn balloon_actual(qmp: &mut vm::qmp::Qmp) -> Result<u64> {
    qmp.execute("query-balloon", json!({}))?["actual"]
        .as_u64()
        .context("query-balloon without `actual`")
}

/// Polls `query-balloon` until `done` accepts the guest's actual size (30 s at most).
fn wait_balloon(qmp: &mut vm::qmp::Qmp, done: impl Fn(u64) -> bool) -> Result<()> {
    let start = Instant::now();
    loop {
        let actual = balloon_actual(qmp)?;
        if done(actual) {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the balloon stayed at {actual} B"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A kernel panic (an initramfs without `/init`) ends the VM within 60 s on supermachine's
/// command line, which has no `panic=`: the kernel's own `PANIC_TIMEOUT=-1` resets, and PSCI
/// `SYSTEM_RESET` stops supermachine's VM (and QEMU, run with `-no-reboot`).
pub fn panic_check() -> Result<()> {
    check("a kernel panic ends the VM without `panic=`", || {
        let assets = vm::extract_assets(Arch::Aarch64)?;
        let (mut vm, _) = start_vm(&assets, &[("not-init", b"#!/bin/sh\n".to_vec())], 1, false)?;
        let ended = vm.wait_exit(Duration::from_secs(60))?;
        let text = vm.console_text();
        ensure!(ended, "the VM still runs 60 s after booting:\n{text}");
        ensure!(
            text.contains("Kernel panic"),
            "the VM ended without a panic:\n{text}"
        );
        Ok(())
    })
}

/// The smallest RAM of an aarch64 guest that the README's bench table reports.
const SMALLEST_RAM_MIB: u32 = 24;

/// A guest of [`SMALLEST_RAM_MIB`] boots and execs, with its virtqueues at the entries
/// supermachine's transport offers ([`cmdline_words::QUEUE_SIZE`]): at QEMU's 1024 the
/// vsock driver's receive buffers alone take 3 MiB more, and the guest deadlocks on memory.
pub fn smallest_ram_check() -> Result<()> {
    let want = cmdline_words::QUEUE_SIZE.to_string();
    check(
        &format!(
            "a {SMALLEST_RAM_MIB} MiB guest boots and execs, its virtqueues at supermachine's \
             {want} entries"
        ),
        || {
            let g = vm::boot(&Options {
                arch: Arch::Aarch64,
                mem_mib: SMALLEST_RAM_MIB,
                ..Options::default()
            })?;
            let r = stdout(&g, "cat /sys/module/virtio_mmio/parameters/queue_num_max");
            let cap = g.finish(r)?;
            ensure!(
                cap.trim() == want,
                "virtio_mmio.queue_num_max reads `{}`, not {want}",
                cap.trim()
            );
            Ok(())
        },
    )
}
