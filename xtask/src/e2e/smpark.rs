//! The aarch64-only checks, under `qemu-system-aarch64 -M virt` (TCG, GICv3).
//!
//! The exec, rootfs and control suite is shared with x86_64 ([`super::exec`]); this module adds:
//! - [`boot_check`]: a tiny static test init (`xtask/guest-probe/boot-check.c`) reports the
//!   kernel release and the online CPUs and powers off through PSCI;
//! - [`smpark_checks`]: park/unpark through the agent, pinned tasks after each unpark,
//!   byte-identical secondary registers while parked, concurrent parks;
//! - [`module_checks`]: smpark on one CPU, unload after a park, and host-direct unpark;
//! - [`snapshot_check`]: [`crate::snapshot_cycles`]' park → save (QMP migrate to a file) →
//!   restore in a new QEMU → sync-time → unpark → tasks on every CPU.
//!
//! The module and snapshot checks boot a console-driven VM without vsock
//! ([`crate::vm::console`]): QEMU cannot migrate one with `vhost-user-vsock`.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use supermachine_agent::protocol::ExecRequest;

use crate::manifest::Manifest;
use crate::progress;
use crate::spec::Arch;
use crate::vm::console::{
    console_files, guest_program, restore_in_new_qemu, start_vm, start_vm_with_gdb, Console, CPUS,
};
use crate::vm::qemu::Vm;
use crate::vm::qmp::registers_by_cpu;
use crate::vm::{self, hvf, Guest};

/// Runs the check when the manifest has an aarch64 kernel; says so and skips otherwise.
pub fn boot_check() -> Result<()> {
    if Manifest::load()?.get(Arch::Aarch64, "kernel").is_none() {
        progress!("e2e: aarch64 kernel not built yet: no aarch64 boot check");
        return Ok(());
    }
    let start = Instant::now();
    let assets = vm::extract_assets(Arch::Aarch64)?;
    let (mut vm, _) = start_vm(
        &assets,
        &[("init", guest_program("boot-check")?)],
        CPUS,
        false,
    )?;
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

/// The kernel image's text starts here (no KASLR); modules, smpark.ko among them, sit in the
/// 2 GiB below it (arm64 `MODULES_VADDR`).
const KERNEL_TEXT: u64 = 0xffff_8000_8000_0000;
const MODULES: u64 = KERNEL_TEXT - (2 << 30);

/// Whether a parked CPU's registers show smpark's halt: the PC in module space (the WFI is
/// smpark.ko's own), scratch registers X0-X17 zeroed just before it, IRQs masked
/// (PSTATE.I). Between halts it may be taking its tick or an IPI. (Without the PC test, a
/// sample with the scratch registers zeroed but the PC in kernel text once passed for a
/// halt, and the next second's real halt then looked like a parked CPU that moved.)
fn at_halt(regs: &str) -> bool {
    let field = |name: &str| {
        regs.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
    };
    let irqs_masked = field("PSTATE=").is_some_and(|p| p & 0x80 != 0);
    let in_module = field("PC=").is_some_and(|pc| (MODULES..KERNEL_TEXT).contains(&pc));
    irqs_masked && in_module && (0..18).all(|i| regs.contains(&format!("X{i:02}=0000000000000000")))
}

/// Stops the VM with every secondary at its halt, as a VMM does before capturing (it sees
/// the WFI exits), and returns every vCPU's registers. The VM runs again afterwards.
fn registers_at_halt(vm: &Vm) -> Result<Vec<(u32, String)>> {
    let mut m = vm.monitor()?;
    for _ in 0..200 {
        m.stop()?;
        let text = m.hmp("info registers -a");
        m.cont()?;
        let regs = registers_by_cpu(&text?);
        if regs.len() == CPUS as usize && regs.iter().skip(1).all(|(_, r)| at_halt(r)) {
            return Ok(regs);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("in 200 tries the parked CPUs were never all at their halt together")
}

/// While parked, the secondaries' registers at their halt are the same before and after a
/// second of running.
fn check_parked_registers_stable(vm: &Vm) -> Result<()> {
    let a = registers_at_halt(vm)?;
    std::thread::sleep(Duration::from_secs(1));
    let b = registers_at_halt(vm)?;
    for ((cpu, x), (_, y)) in a.iter().zip(&b).skip(1) {
        if x != y {
            let diff: Vec<String> = x
                .split_whitespace()
                .zip(y.split_whitespace())
                .filter(|(p, q)| p != q)
                .map(|(p, q)| format!("{p} -> {q}"))
                .collect();
            bail!(
                "parked CPU {cpu} changed registers within 1 s: {}",
                diff.join(", ")
            );
        }
    }
    Ok(())
}

/// A task pinned to each CPU runs there: prints the CPU each ran on.
const PINNED: &str = "for c in 0 1 2 3; do taskset -c $c cut -d' ' -f39 /proc/self/stat; done";

/// Park/unpark cycles through the agent on a running 4-vCPU guest.
pub fn smpark_checks(g: &Guest, cycles: u32) -> Result<()> {
    super::check("smpark.ko loaded by init-oci, 4 CPUs online", || {
        let st = g.client.park_status()?;
        ensure!(
            st.module_loaded && st.online == [0, 1, 2, 3] && st.parked.is_empty(),
            "{st:?}"
        );
        Ok(())
    })?;
    super::check(
        &format!("{cycles}/{cycles} park/unpark cycles, a pinned task on every CPU after each"),
        || {
            for i in 0..cycles {
                let st = g.client.park()?;
                ensure!(
                    st.parked == [1, 2, 3] && st.primary == 0,
                    "cycle {i}: park gave {st:?}"
                );
                if i % 25 == 0 || i + 1 == cycles {
                    check_parked_registers_stable(&g.vm).with_context(|| format!("cycle {i}"))?;
                }
                let st = g.client.unpark()?;
                ensure!(st.parked.is_empty(), "cycle {i}: unpark left {st:?}");
                let o = g
                    .client
                    .exec_output(&ExecRequest::new(["sh", "-c", PINNED]))?;
                ensure!(
                    o.stdout == b"0\n1\n2\n3\n",
                    "cycle {i}: pinned tasks ran on {:?} ({})",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            Ok(())
        },
    )?;
    super::check(
        "host-direct unpark (1 written at state_gpa) releases the CPUs and unpins the agent",
        || {
            let gpa = g
                .client
                .exec_output(&ExecRequest::new(["cat", "/sys/kernel/smpark/state_gpa"]))?;
            let text = String::from_utf8_lossy(&gpa.stdout);
            let gpa = u64::from_str_radix(text.trim().trim_start_matches("0x"), 16)
                .with_context(|| format!("state_gpa reads {text:?}"))?;
            let st = g.client.park()?;
            ensure!(st.parked == [1, 2, 3], "park gave {st:?}");
            vm::gdbstub::write_physical(&g.vm.gdb, gpa, &[1])?;
            // No smpark_unpark: the agent notices on its next request and unpins itself.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let st = g.client.park_status()?;
                if st.parked.is_empty() {
                    break;
                }
                ensure!(
                    std::time::Instant::now() < deadline,
                    "still parked 10 s after the host's write: {st:?}"
                );
            }
            let o = g.client.exec_output(&ExecRequest::new([
                "sh",
                "-c",
                &format!(
                    "grep Cpus_allowed_list /proc/{}/status; {PINNED}",
                    g.agent_pid
                ),
            ]))?;
            let out = String::from_utf8_lossy(&o.stdout);
            ensure!(
                out == "Cpus_allowed_list:\t0-3\n0\n1\n2\n3\n",
                "after a host-direct unpark: {out:?} {}",
                String::from_utf8_lossy(&o.stderr)
            );
            // The agent's own unpark is then a harmless no-op.
            ensure!(g.client.unpark()?.parked.is_empty());
            Ok(())
        },
    )?;
    super::check(
        "concurrent parks from 4 connections, then one unpark",
        || {
            let results: Vec<_> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..4).map(|_| s.spawn(|| g.client.park())).collect();
                hs.into_iter().map(|h| h.join()).collect()
            });
            for r in results {
                let st = r.map_err(|_| anyhow::anyhow!("a park thread panicked"))??;
                ensure!(st.parked == [1, 2, 3], "{st:?}");
            }
            ensure!(g.client.unpark()?.parked.is_empty());
            ensure!(
                g.client
                    .exec_output(&ExecRequest::new(["sh", "-c", PINNED]))?
                    .stdout
                    == b"0\n1\n2\n3\n"
            );
            Ok(())
        },
    )
}

/// smpark on one CPU is a no-op; after a park, closing the device unparks and the module
/// unloads cleanly.
pub fn module_checks() -> Result<()> {
    let assets = vm::extract_assets(Arch::Aarch64)?;
    let files = console_files(&assets)?;
    super::check("smpark on 1 CPU: park is a no-op", || {
        let (vm, _) = start_vm(&assets, &files, 1, false)?;
        let mut con = Console::connect(&vm)?;
        con.command("", "ready 1")
            .or_else(|_| -> Result<String> { bail!("{}", vm.console_text()) })?;
        con.command("park", "parked 0")?;
        con.command("unpark", "unparked")?;
        con.command("pin", "pinned 1")?;
        Ok(())
    })?;
    super::check(
        "closing /dev/smpark unparks; rmmod after a park is clean",
        || {
            let (vm, _) = start_vm(&assets, &files, CPUS, false)?;
            let mut con = Console::connect(&vm)?;
            con.command("", "ready 4")?;
            con.command("park", "parked e")?;
            con.command("rmmod", "removed")?;
            con.command("pin", "pinned 4")?;
            ensure!(
                !vm.console_text().contains("Call trace"),
                "kernel warning:\n{}",
                vm.console_text()
            );
            Ok(())
        },
    )?;
    host_unpark_check(&assets, &files)
}

/// Host-direct unpark cycles of [`host_unpark_check`].
const HOST_UNPARK_CYCLES: u64 = 5;

/// The parked-CPU mask and the park count of a `status` answer
/// (`status parked <hex> parks <n>`).
fn parse_status(answer: &str) -> Result<(u64, u64)> {
    let parsed = (|| {
        let rest = answer.strip_prefix("status parked ")?;
        let (mask, parks) = rest.split_once(" parks ")?;
        Some((
            u64::from_str_radix(mask, 16).ok()?,
            parks.trim().parse().ok()?,
        ))
    })();
    parsed.with_context(|| format!("unexpected status answer `{answer}`"))
}

/// The state page's guest-physical address, read from sysfs in the guest.
fn state_gpa(con: &mut Console, mem_mib: u64) -> Result<u64> {
    let a = con.command("gpa", "gpa 0x")?;
    let gpa = u64::from_str_radix(&a["gpa 0x".len()..], 16)
        .with_context(|| format!("state_gpa answer `{a}`"))?;
    ensure!(
        gpa % 4096 == 0 && (hvf::RAM_BASE..hvf::RAM_BASE + (mem_mib << 20)).contains(&gpa),
        "state_gpa {gpa:#x} is not a page of guest RAM"
    );
    Ok(gpa)
}

/// Parks, checks the park count, writes the unpark byte at `gpa` from the host (which must
/// find it cleared by the park), and waits until no CPU is parked. Returns how long after
/// the write the status showed every CPU released.
fn park_then_host_unpark(vm: &Vm, con: &mut Console, gpa: u64, parks: u64) -> Result<Duration> {
    con.command("park", "parked e")?;
    let (mask, n) = parse_status(&con.command("status", "status ")?)?;
    ensure!(
        mask == 0xe && n == parks,
        "after park {parks}: parked {mask:#x}, {n} parks (a stale park would not count)"
    );
    host_unpark(vm, con, gpa)
}

/// Writes the unpark byte at `gpa` from the host (which must find it cleared by the park)
/// and waits until no CPU is parked; returns how long that took after the write.
fn host_unpark(vm: &Vm, con: &mut Console, gpa: u64) -> Result<Duration> {
    let before = vm::gdbstub::write_physical(&vm.gdb, gpa, &[1])?;
    ensure!(
        before == [0],
        "the unpark byte was {before:?} while parked: park must clear it"
    );
    let written = Instant::now();
    loop {
        let (mask, _) = parse_status(&con.command("status", "status ")?)?;
        if mask == 0 {
            return Ok(written.elapsed());
        }
        ensure!(
            written.elapsed() < Duration::from_secs(10),
            "CPUs {mask:#x} still parked 10 s after the host wrote 1 at {gpa:#x}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Host-direct unpark, as supermachine's `SMPARK_UNPARK_DIRECT` does it: the host writes 1
/// at `state_gpa` (here through QEMU's gdbstub in physical-memory mode) and every parked
/// CPU leaves its loop with no guest-side call. Afterwards the module is as after an
/// unpark: tasks run on every CPU, `SMPARK_UNPARK` is a no-op, and the next park parks
/// afresh (the park count grows, the byte is cleared). Then the same after a snapshot
/// restore in a new QEMU, with the GPA the snapshot was taken with (supermachine's
/// `.smpark` sidecar), and an unload straight after a host-direct unpark.
fn host_unpark_check(assets: &vm::Assets, files: &[(&str, Vec<u8>)]) -> Result<()> {
    super::check(
        &format!(
            "host-direct unpark: 1 written at state_gpa releases the parked CPUs ({HOST_UNPARK_CYCLES} cycles, then after a restore, then rmmod)"
        ),
        || {
            let (vm, cfg) = start_vm_with_gdb(assets, files, CPUS)?;
            let mut con = Console::connect(&vm)?;
            con.command("", "ready 4")?;
            let gpa = state_gpa(&mut con, u64::from(cfg.mem_mib))?;
            let mut waits = Vec::new();
            for i in 1..=HOST_UNPARK_CYCLES {
                if i == 1 {
                    // The byte check in the loop keeps every halt identical.
                    con.command("park", "parked e")?;
                    check_parked_registers_stable(&vm)?;
                    con.command("unpark", "unparked")?;
                }
                // Park 1 was the registers check's.
                let waited = park_then_host_unpark(&vm, &mut con, gpa, i + 1)
                    .with_context(|| format!("cycle {i}"))?;
                waits.push(waited);
                con.command("pin", "pinned 4")
                    .with_context(|| format!("cycle {i}"))?;
                if i % 2 == 0 {
                    // After a host-direct unpark the ioctl has nothing left to do.
                    con.command("unpark", "unparked")?;
                }
            }
            let mut parks = HOST_UNPARK_CYCLES + 1;

            // Park, save, restore in a new QEMU; unpark there through the same GPA.
            con.command("park", "parked e")?;
            parks += 1;
            let snaps = vm::scratch_dir();
            std::fs::create_dir_all(&snaps)?;
            let file = snaps.join("snapshot.bin");
            let restored = restore_in_new_qemu(&vm, &cfg, &file);
            let _ = std::fs::remove_dir_all(&snaps);
            let restored = restored?;
            drop(vm);
            let mut con = Console::connect(&restored)?;
            let (mask, n) = parse_status(&con.command("status", "status ")?)?;
            ensure!(mask == 0xe && n == parks, "restored: parked {mask:#x}, {n} parks");
            ensure!(
                state_gpa(&mut con, u64::from(cfg.mem_mib))? == gpa,
                "state_gpa changed across the restore"
            );
            waits.push(host_unpark(&restored, &mut con, gpa).context("restored")?);
            con.command("pin", "pinned 4")?;

            // Unload right after a host-direct unpark (its clean-up work may still be queued).
            parks += 1;
            park_then_host_unpark(&restored, &mut con, gpa, parks)?;
            con.command("rmmod", "removed")?;
            con.command("pin", "pinned 4")?;
            let text = restored.console_text();
            ensure!(!text.contains("Call trace"), "kernel warning:\n{text}");
            let slowest = waits.iter().max().copied().unwrap_or_default();
            progress!(
                "e2e: host-direct unpark: every CPU released within {slowest:.0?} of the write (host side, including the status round trips)"
            );
            Ok(())
        },
    )
}

/// The snapshot check of the suite: `n` of `n` cycles with parking.
pub fn snapshot_check(n: u32) -> Result<()> {
    super::check(
        &format!("{n}/{n} snapshot cycles: park, save, restore in a new QEMU, sync-time, unpark, tasks on 4 CPUs"),
        || {
            let r = crate::snapshot_cycles::snapshot_cycles(n, true)?;
            ensure!(r.ok == n, "{}/{} cycles: {}", r.ok, n, r.failure.unwrap_or_default());
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn halt_signature() {
        let zero: String = (0..18)
            .map(|i| format!("X{i:02}=0000000000000000 "))
            .collect();
        // CI's case: PCs of a real halt in smpark.ko and of kernel text.
        let module = "PC=ffff800078880aa4";
        assert!(super::at_halt(&format!(
            "{module} {zero} PSTATE=010020c5 ----"
        )));
        assert!(!super::at_halt(&format!(
            "{module} {zero} PSTATE=01002005 ----"
        )));
        assert!(!super::at_halt(&format!(
            "PC=ffff800080090a80 {zero} PSTATE=004023c5 ----"
        )));
        assert!(!super::at_halt(&format!(
            "{module} X00=0000000000000001 PSTATE=010020c5"
        )));
    }

    #[test]
    fn status_answer() {
        assert_eq!(
            super::parse_status("status parked e parks 12").unwrap(),
            (0xe, 12)
        );
        assert_eq!(
            super::parse_status("status parked 0 parks 0").unwrap(),
            (0, 0)
        );
        assert!(super::parse_status("status parked x parks 1").is_err());
        assert!(super::parse_status("parked e").is_err());
    }
}
