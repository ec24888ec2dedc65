//! The figures measured in booted guests: boot cost to PID 1 (icount), VMM start → agent
//! ready, exec round trip against its physical floor, stdout streaming against raw vsock, and
//! the smallest guest memory.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use supermachine_agent::client::{Client, Event};
use supermachine_agent::protocol::ExecRequest;
use supermachine_agent::transport;

use super::{median, Figure};
use crate::progress;
use crate::spec::Arch;
use crate::vm::{self, qemu, Options};

/// Guest uptime (s) at the kernel's `Run /init as init process` line, under
/// `-icount shift=0,sleep=off` (guest time counts instructions: identical run to run).
pub fn boot_cost(arch: Arch, kernel: &Path) -> Result<f64> {
    let init = vm::guest_program(arch, "boot-check")?;
    let dir = vm::scratch_dir();
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&initrd, vm::cpio::initramfs(&[("init", init)]))?;
    let mut cfg = qemu::Config::new(arch, kernel.to_path_buf(), initrd, 256, 1);
    cfg.vsock = false;
    cfg.icount = true;
    cfg.cmdline = vec!["loglevel=7".into(), "printk.time=1".into()];
    let mut vm = qemu::Vm::start(&cfg, dir)?;
    let start = Instant::now();
    loop {
        let text = vm.console_text();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("Run /init as init process"))
        {
            let stamp = line
                .split_once('[')
                .and_then(|(_, r)| r.split_once(']'))
                .and_then(|(t, _)| t.trim().parse::<f64>().ok())
                .with_context(|| format!("no printk time stamp in `{line}`"))?;
            return Ok(stamp);
        }
        if vm.try_wait()?.is_some() || start.elapsed() > Duration::from_secs(150) {
            bail!(
                "{} did not reach `Run /init` under icount:\n{}",
                kernel.display(),
                vm.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Median wall time from starting QEMU to the agent's first answer, over `n` boots.
pub fn agent_ready(arch: Arch, kernel: Option<&Path>, n: usize) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..n {
        let g = vm::boot(&Options {
            arch,
            kernel: kernel.map(Path::to_path_buf),
            ready_timeout: Some(Duration::from_secs(60)),
            ..Options::default()
        })?;
        times.push(g.ready_after.as_secs_f64());
        g.shutdown()?;
    }
    Ok(median(&mut times))
}

/// Whether a guest with `mem_mib` boots and runs `true`.
fn boots_with(arch: Arch, kernel: Option<&Path>, mem_mib: u32) -> bool {
    let run = || -> Result<()> {
        let g = vm::boot(&Options {
            arch,
            kernel: kernel.map(Path::to_path_buf),
            mem_mib,
            ready_timeout: Some(Duration::from_secs(30)),
            ..Options::default()
        })?;
        let ok = g
            .client
            .exec_output(&ExecRequest::new(["true"]))?
            .status
            .code
            == 0;
        g.shutdown()?;
        if !ok {
            bail!("`true` failed");
        }
        Ok(())
    };
    run().is_ok()
}

/// The smallest memory (MiB, on an 8 MiB grid from 16 to 256) at which boot and exec work.
pub fn min_memory(arch: Arch, kernel: Option<&Path>) -> Result<f64> {
    let (mut lo, mut hi) = (16u32, 256u32); // lo fails (assumed), hi works
    if !boots_with(arch, kernel, hi) {
        bail!("does not boot even with {hi} MiB");
    }
    while hi - lo > 8 {
        let mid = (lo + hi) / 2 / 8 * 8;
        let mid = if mid <= lo { lo + 8 } else { mid };
        progress!("bench: {} memory probe {mid} MiB", arch.name());
        if boots_with(arch, kernel, mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(f64::from(hi))
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

/// Exec round trip, its floor, and streaming throughput in one guest.
pub fn exec_and_stream(arch: Arch, quick: bool) -> Result<Vec<Figure>> {
    let g = vm::boot(&Options {
        arch,
        ..Options::default()
    })?;
    let result = measure(&g, arch, quick);
    g.shutdown()?;
    result
}

const PORT: u32 = vm::sm_vsock::RAW_PORT;

/// Writes `bench-guest` into `g` and starts its raw vsock server on [`PORT`], with the agent's
/// vsock window so both sides of each ratio get the same credit.
pub(super) fn start_raw_server(g: &vm::Guest, arch: Arch) -> Result<()> {
    let bin = vm::guest_program(arch, "bench-guest")?;
    g.client.write_file("/tmp/bench-guest", 0o755, &bin)?;
    let o = g.client.exec_output(&ExecRequest::new([
        "/tmp/bench-guest".to_string(),
        "serve".into(),
        PORT.to_string(),
        transport::VSOCK_BUFFER_SIZE.to_string(),
    ]))?;
    if !String::from_utf8_lossy(&o.stdout).contains("serving") {
        bail!("bench-guest serve: {o:?}");
    }
    Ok(())
}

fn measure(g: &vm::Guest, arch: Arch, quick: bool) -> Result<Vec<Figure>> {
    start_raw_server(g, arch)?;
    let n = if quick { 1 } else { 200 };
    // Raw vsock echo round trip, 64-byte messages, on one connection.
    let mut s = transport::connect_hybrid_vsock(&g.vm.vsock, PORT, Duration::from_secs(10))?;
    s.write_all(b"e")?;
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut rtts = Vec::new();
    for _ in 0..n.max(20) {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(s);
    let echo_us = median(&mut rtts);
    // A new connection and one echo on it: what a connection per exec costs at least.
    let mut connects = Vec::new();
    for _ in 0..if quick { 5 } else { 50 } {
        let t = Instant::now();
        let mut s = transport::connect_hybrid_vsock(&g.vm.vsock, PORT, Duration::from_secs(10))?;
        s.write_all(b"e")?;
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        connects.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let connect_echo_us = median(&mut connects);
    // In-guest fork + exec + wait of `true`.
    let o = g
        .client
        .exec_output(&ExecRequest::new(["/tmp/bench-guest", "spawn", "100"]))?;
    let spawn_us: f64 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse::<f64>()
        .context("bench-guest spawn output")?
        / 1000.0;
    // The agent's exec round trip of `true`: a new connection per exec (as supermachine does),
    // then one reused connection (our client's opt-in).
    let reusing = Client::new(g.client.endpoint().clone()).with_connection_reuse(true);
    let rtt = |client: &Client| -> Result<f64> {
        let mut execs = Vec::new();
        for _ in 0..if quick { 5 } else { 100 } {
            let t = Instant::now();
            let o = client.exec_output(&ExecRequest::new(["true"]))?;
            execs.push(t.elapsed().as_secs_f64() * 1e6);
            if o.status.code != 0 {
                bail!("`true` exited {:?}", o.status);
            }
        }
        Ok(median(&mut execs))
    };
    let exec_us = rtt(&g.client)?;
    let reused_us = rtt(&reusing)?;
    let floor = connect_echo_us + spawn_us;
    let reused_floor = echo_us + spawn_us;

    // stdout streaming: the agent vs raw vsock, same byte count.
    let bytes: u64 = if quick { 32 << 20 } else { 256 << 20 };
    progress!(
        "bench: {} streaming {} MiB through the agent",
        arch.name(),
        bytes >> 20
    );
    let t = Instant::now();
    // The same static-buffer writer as the raw side (bench-guest), 64 KiB per write, so the
    // figure is the agent's cost and not the source's (dd would add a read of /dev/zero).
    let mut exec = g.client.exec(&ExecRequest::new([
        "/tmp/bench-guest".to_string(),
        "out".into(),
        bytes.to_string(),
    ]))?;
    let mut got = 0u64;
    loop {
        match exec.next_event()? {
            Event::Stdout(b) => got += b.len() as u64,
            Event::Stderr(_) => {}
            Event::Exit(_) => break,
        }
    }
    let agent_mbs = got as f64 / 1e6 / t.elapsed().as_secs_f64();
    if got != bytes {
        bail!("streamed {got} of {bytes} bytes");
    }
    progress!(
        "bench: {} streaming {} MiB over raw vsock",
        arch.name(),
        bytes >> 20
    );
    let s = transport::connect_hybrid_vsock(&g.vm.vsock, PORT, Duration::from_secs(10))?;
    let raw_mbs = raw_from_guest(s, bytes)?;
    let a = Some(arch.name().to_string());
    Ok(vec![
        Figure::new(
            "exec_rtt",
            a.clone(),
            "exec round trip of `true`, a new connection each (µs, median)",
            exec_us,
            "floor: connect + echo + fork/exec/wait",
            Some(floor),
            true,
        )
        .note(format!(
            "floor = {connect_echo_us:.0} µs vsock connect + echo + {spawn_us:.0} µs \
             fork/exec/wait in the guest; goal ≤ 1.25×"
        )),
        Figure::new(
            "exec_rtt_reused",
            a.clone(),
            "exec round trip of `true`, one reused connection (µs, median)",
            reused_us,
            "floor: echo + fork/exec/wait",
            Some(reused_floor),
            true,
        )
        .note(format!(
            "floor = {echo_us:.0} µs vsock echo + {spawn_us:.0} µs fork/exec/wait; goal ≤ 1.25×"
        )),
        Figure::new(
            "stream",
            a,
            &format!("stdout streaming of {} MiB (MB/s)", bytes >> 20),
            agent_mbs,
            "raw vsock stream",
            Some(raw_mbs),
            false,
        )
        .note("goal ≥ 0.7×; the same static-buffer writer on both sides; raw: 16 KiB writes, agent: 16 KiB frames in 32 KiB writes (vhost-device-vsock 0.3.0 stalls above 32 KiB)"),
    ])
}
