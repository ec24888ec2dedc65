//! The figures measured in booted guests: boot cost to PID 1 (icount) and the smallest guest
//! memory; and the raw vsock server the transport figures ([`super::exec`], [`super::tsi`])
//! are anchored on.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use supermachine_agent::protocol::ExecRequest;
use supermachine_agent::transport;

use crate::progress;
use crate::spec::Arch;
use crate::vm::{self, cmdline_words, qemu, Options};

/// Virtual time (s) from reset to PID 1 under [`vm::Icount::Deterministic`] (guest time counts
/// instructions: identical run to run), as `boot-check` reads the guest's counter first thing:
/// loader, decompression and kernel init, all of what a VMM waits for before userspace.
pub fn boot_cost(arch: Arch, kernel: &Path) -> Result<f64> {
    const LINE: &str = "supermachine-boot-check: ok ";
    let init = vm::guest_program(arch, "boot-check")?;
    let dir = vm::scratch_dir();
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&initrd, vm::cpio::initramfs(&[("init", init)]))?;
    let mut cfg = qemu::Config::new(arch, kernel.to_path_buf(), initrd, 256, 1);
    cfg.vsock = false;
    cfg.icount = vm::Icount::Deterministic;
    let mut vm = qemu::Vm::start(&cfg, dir)?;
    let start = Instant::now();
    loop {
        let text = vm.console_text();
        if let Some(line) = text.lines().find(|l| l.contains(LINE)) {
            let ns = line
                .split_once("clock_ns=")
                .and_then(|(_, n)| n.trim().parse::<u64>().ok())
                .with_context(|| format!("no clock_ns in `{line}`"))?;
            return Ok(ns as f64 / 1e9);
        }
        if vm.try_wait()?.is_some() || start.elapsed() > Duration::from_secs(150) {
            bail!(
                "{} did not reach PID 1 under icount:\n{}",
                kernel.display(),
                vm.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The x86_64 guest's clocksource when its kernel could calibrate the TSC: `tsc-early`, and
/// `tsc` once the kernel has refined the calibration (a second after boot).
const X86_CLOCK: &str = "tsc";
/// Boots tried for a guest on [`X86_CLOCK`] before the figures are taken without it.
const CLOCK_BOOTS: u32 = 8;

/// A guest booted with `opts` that keeps time with the TSC, and what it took to get one (for
/// the figures' notes): `None` when the first boot had it.
///
/// supermachine's x86_64 machine has no clock to calibrate the TSC on but the PIT (no HPET, PM
/// timer or kvm-clock). Under TCG the PIT calibration fails now and then when idle (about 1
/// boot in 10) and mostly under load (7 boots of 8 with two busy loops on this 2-core host:
/// "Unable to calibrate against PIT"), and the guest keeps time on refined-jiffies: a 4 ms
/// clock without high-resolution timers, its own timings coarse and its clock reads system
/// calls. A figure from such a guest would compare
/// another machine, so the boot is redone. aarch64's counter needs no calibration.
pub(super) fn boot_on_tsc(opts: &Options) -> Result<(vm::Guest, Option<String>)> {
    let mut lost = Vec::new();
    loop {
        let g = vm::boot(opts)?;
        if opts.arch != Arch::X86_64 {
            return Ok((g, None));
        }
        let clock = g
            .client
            // sysfs reports every attribute as 4096 bytes long.
            .read_file(vm::CLOCKSOURCE_FILE, 4096)
            .with_context(|| format!("read {}", vm::CLOCKSOURCE_FILE))?;
        let clock = String::from_utf8_lossy(&clock).trim().to_string();
        if clock.starts_with(X86_CLOCK) {
            let note = (!lost.is_empty()).then(|| {
                format!(
                    "{} boot(s) before this guest's came up on {} instead of the TSC (its PIT \
                     calibration failed) and were redone",
                    lost.len(),
                    lost.join(", ")
                )
            });
            return Ok((g, note));
        }
        lost.push(clock);
        if lost.len() as u32 >= CLOCK_BOOTS {
            return Ok((
                g,
                Some(format!(
                    "measured on a guest without the TSC: {CLOCK_BOOTS} boots came up on {}",
                    lost.join(", ")
                )),
            ));
        }
        progress!(
            "bench: the guest keeps time on {} (its TSC calibration failed); booting again",
            lost.last().map_or("", String::as_str)
        );
        g.shutdown()?;
    }
}

/// Where the bench writes `bench-guest` in the guest.
pub(super) const BENCH_GUEST: &str = "/tmp/bench-guest";

/// `bench-guest` built for `arch` (compiled on each call).
pub(super) fn bench_guest(arch: Arch) -> Result<Vec<u8>> {
    vm::guest_program(arch, "bench-guest")
}

/// What a guest of `mem_mib` showed once it booted and ran `true`: the kernel's `Memory:`
/// line (what it reserved for itself) and `MemAvailable` after the agent answered.
struct Booted {
    kernel_line: String,
    total_kib: Option<u64>,
    available_kib: Option<u64>,
}

/// Boots a guest with `mem_mib` and runs `true`; the error says how it failed.
fn boots_with(arch: Arch, kernel: Option<&Path>, mem_mib: u32) -> Result<Booted> {
    let g = vm::boot(&Options {
        arch,
        kernel: kernel.map(Path::to_path_buf),
        mem_mib,
        ready_timeout: Some(Duration::from_secs(30)),
        ..Options::default()
    })?;
    let ran = g.client.exec_output(&ExecRequest::new(["true"]));
    // The agent's probe reports the guest's MemTotal and MemAvailable.
    let memory = g.client.probe();
    let console = g.vm.console_text();
    g.shutdown()?;
    let code = ran?.status.code;
    if code != 0 {
        bail!("`true` exited {code}");
    }
    let memory = memory.ok();
    let kernel_line = console
        .lines()
        .find_map(|l| l.split_once("Memory: ").map(|(_, m)| m.trim().to_string()))
        .unwrap_or_default();
    Ok(Booted {
        kernel_line,
        total_kib: memory.as_ref().map(|p| p.mem_total_kib),
        available_kib: memory.map(|p| p.mem_available_kib),
    })
}

/// The smallest memory (MiB, on an 8 MiB grid from 16 to 256, 8 assumed to fail) at which
/// boot and exec work, and what sets it: the kernel's own reservation and what was left at that size, and how
/// the guest 8 MiB below failed.
pub fn min_memory(arch: Arch, kernel: Option<&Path>) -> Result<(f64, String)> {
    let (mut lo, mut hi) = (8u32, 256u32); // lo fails (assumed), hi works
    let mut at_hi = boots_with(arch, kernel, hi)
        .with_context(|| format!("does not boot even with {hi} MiB"))?;
    let mut below = format!("{lo} MiB not tried (assumed to fail)");
    while hi - lo > 8 {
        let mid = (lo + hi) / 2 / 8 * 8;
        let mid = if mid <= lo { lo + 8 } else { mid };
        progress!("bench: {} memory probe {mid} MiB", arch.name());
        match boots_with(arch, kernel, mid) {
            Ok(b) => (hi, at_hi) = (mid, b),
            Err(e) => {
                lo = mid;
                let why = format!("{e:#}");
                let why = why.lines().next().unwrap_or_default();
                below = format!(
                    "{mid} MiB failed: {}",
                    why.chars().take(400).collect::<String>()
                );
            }
        }
    }
    let mib = |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    let kernel = if at_hi.kernel_line.is_empty() {
        String::new()
    } else {
        format!(" (its boot line: \"Memory: {}\")", at_hi.kernel_line)
    };
    Ok((
        f64::from(hi),
        format!(
            "8 MiB grid, boot + exec `true`, virtqueues of supermachine's {} entries (`{}`; a \
             kernel without the parameter, upstream's, keeps QEMU's 1024 and ~3 MiB more of vsock \
             receive buffers); at {hi} MiB the guest had MemTotal {} (the rest is \
             the kernel's own){kernel} and MemAvailable {} with the agent serving; {below}",
            cmdline_words::QUEUE_SIZE,
            cmdline_words::queue_num_max(),
            mib(at_hi.total_kib),
            mib(at_hi.available_kib),
        ),
    ))
}

/// MB/s of `bytes` streamed by `bench-guest`'s `s` command on `s` (a connection to its raw
/// vsock server) until it closes.
pub(super) fn raw_from_guest(mut s: impl Read + Write, bytes: u64) -> Result<f64> {
    let t = Instant::now();
    s.write_all(b"s")?;
    s.write_all(&bytes.to_le_bytes())?;
    let mut buf = vec![0u8; 1 << 16];
    let mut raw = 0u64;
    // Counted, not read to EOF: supermachine's exec socket does not pass the guest's close on.
    while raw < bytes {
        let want = buf.len().min((bytes - raw) as usize);
        match s.read(&mut buf[..want]) {
            Ok(0) => bail!("raw vsock streamed {raw} of {bytes} bytes, then closed"),
            Ok(k) => raw += k as u64,
            Err(e) => bail!("raw vsock streamed {raw} of {bytes} bytes, then: {e}"),
        }
    }
    Ok(raw as f64 / 1e6 / t.elapsed().as_secs_f64())
}

/// MB/s of `bytes` sent on `s` (a connection to `bench-guest`'s raw vsock server, its `r`
/// command) until it acknowledges them all.
pub(super) fn raw_to_guest(mut s: impl Read + Write, bytes: u64) -> Result<f64> {
    let t = Instant::now();
    s.write_all(b"r")?;
    s.write_all(&bytes.to_le_bytes())?;
    let buf = vec![0u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack)?;
    Ok(bytes as f64 / 1e6 / t.elapsed().as_secs_f64())
}

/// The raw vsock server's port in the guest.
pub(super) const PORT: u32 = vm::sm_vsock::RAW_PORT;

/// Writes `bench-guest` into `g` and starts its raw vsock server on [`PORT`], with the agent's
/// vsock window so both sides of each ratio get the same credit.
pub(super) fn start_raw_server(g: &vm::Guest, arch: Arch) -> Result<()> {
    g.client
        .write_file(BENCH_GUEST, 0o755, &bench_guest(arch)?)?;
    let o = g.client.exec_output(&ExecRequest::new([
        BENCH_GUEST.to_string(),
        "serve".into(),
        PORT.to_string(),
        transport::VSOCK_BUFFER_SIZE.to_string(),
    ]))?;
    if !String::from_utf8_lossy(&o.stdout).contains("serving") {
        bail!("bench-guest serve: {o:?}");
    }
    Ok(())
}
