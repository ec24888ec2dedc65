//! The exec round trip against its physical floor, and stdout streaming against raw vsock,
//! in one guest, each sampled in rounds next to its anchor ([`super::stats`]).
//!
//! The exec floor is one round trip that does what any exec must, timed by the host as an
//! exec is: a vsock message to the guest's raw server, which forks, execs `true` (found on PATH
//! with `execlp`, as the agent finds the exec's `true`) and waits for it, then answers
//! (`bench-guest serve`, command `x`), on a new connection (as supermachine opens one per exec)
//! and on a kept one. Its parts, timed apart (an echo, a connect + echo, the in-guest fork +
//! exec + wait), are the breakdown in the notes. A floor summed from them drifted with load:
//! on a busy host each short part still ran at once after its idle pause, while one burst of
//! the same work shared the host's cores, as an exec does (README, "Where an exec's time
//! goes"). The notes also put ours next to the floor whose spawn takes the steps the agent's
//! contract adds to any spawn (stdio pipes, a cgroup and a session of the child's own: command
//! `X`), which separates the agent's own cost from what any agent keeping that contract pays.
//!
//! One round takes each floor step [`PER_ROUND`] times and each exec twice as often, each
//! after the same idle pause, ours and the floors' taking turns (the round keeps each step's
//! mean). One round of streaming is the agent's stdout, then raw vsock, with the
//! same byte count and the same static-buffer writer.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use supermachine_agent::client::{Client, Event};
use supermachine_agent::protocol::ExecRequest;
use supermachine_agent::transport;

use super::guest::{boot_on_tsc, raw_from_guest, start_raw_server, BENCH_GUEST, PORT};
use super::Figure;
use crate::progress;
use crate::spec::Arch;
use crate::vm::{self, Options};

/// Samples of each step per round, each from idle; their mean is the round's value, which
/// narrows the spread of the rounds' ratios (one sample each left the interval too wide to
/// tell a 1.19× median from the 1.25× goal).
const PER_ROUND: u32 = 5;
/// The goal of both exec ratios.
const EXEC_GOAL: f64 = 1.25;
/// The goal of the streaming ratio.
const STREAM_GOAL: f64 = 0.7;

/// Exec round trips and streaming in one guest.
pub fn exec_and_stream(arch: Arch, quick: bool) -> Result<Vec<Figure>> {
    let (g, clock) = boot_on_tsc(&Options {
        arch,
        ..Options::default()
    })?;
    let result = measure(&g, arch, quick);
    g.shutdown()?;
    Ok(result?
        .into_iter()
        .map(|f| f.note_also(clock.as_deref()))
        .collect())
}

/// A pause before each timed step of a round, so that the previous step's deferred work in
/// the guest (connection teardown, the agent's clean-up after an exec) is not charged to the
/// next one: with 1 vCPU under TCG it would be.
const SETTLE: Duration = Duration::from_millis(20);

/// The mean of [`PER_ROUND`] runs of `step`, each after the idle pause.
fn from_idle(mut step: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut sum = 0.0;
    for _ in 0..PER_ROUND {
        std::thread::sleep(SETTLE);
        sum += step()?;
    }
    Ok(sum / f64::from(PER_ROUND))
}

/// Microseconds since `t`.
fn us(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

/// One raw echo of `msg` on `s`, in µs.
fn echo(s: &mut (impl Read + Write), msg: &[u8; 64]) -> Result<f64> {
    let mut back = [0u8; 64];
    let t = Instant::now();
    s.write_all(msg)?;
    s.read_exact(&mut back)?;
    Ok(us(t))
}

/// An exec of `true` through `client`, in µs.
fn exec_true(client: &Client) -> Result<f64> {
    let t = Instant::now();
    let o = client.exec_output(&ExecRequest::new(["true"]))?;
    let took = us(t);
    if o.status.code != 0 {
        bail!("`true` exited {:?}", o.status);
    }
    Ok(took)
}

/// The in-guest mean of one fork + exec + wait of `true`, each after the idle pause every
/// exec sample gets ([`SETTLE`]), in µs: a part of the floor, for the notes. Back to back the
/// spawns ran warm (2.4 ms against 3.9 ms from idle under TCG here).
fn spawn_us(g: &vm::Guest) -> Result<f64> {
    let o = g.client.exec_output(&ExecRequest::new([
        BENCH_GUEST.to_string(),
        "spawn".into(),
        PER_ROUND.to_string(),
        SETTLE.as_millis().to_string(),
    ]))?;
    let ns: f64 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .with_context(|| {
            format!(
                "bench-guest spawn: stdout `{}`, stderr `{}`",
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            )
        })?;
    Ok(ns / 1000.0)
}

/// One floor round trip on `s`, in µs: `first` (the command byte on a new connection, then
/// `msg` in the same write) is sent, the raw server spawns `true` and answers `msg` with its
/// exit status in the first byte.
fn spawn_round_trip(s: &mut (impl Read + Write), first: &[u8], msg: &[u8; 64]) -> Result<f64> {
    let (mut back, out) = ([0u8; 64], [first, msg].concat());
    let t = Instant::now();
    s.write_all(&out)?;
    s.read_exact(&mut back)?;
    let took = us(t);
    if back[0] != 0 {
        bail!(
            "the floor's spawn of `true` ended with status byte {}",
            back[0]
        );
    }
    Ok(took)
}

/// MB/s of `bytes` of `bench-guest out` streamed through the agent.
fn agent_stream(g: &vm::Guest, bytes: u64) -> Result<f64> {
    let t = Instant::now();
    let mut exec = g.client.exec(&ExecRequest::new([
        BENCH_GUEST.to_string(),
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
    if got != bytes {
        bail!("streamed {got} of {bytes} bytes");
    }
    Ok(got as f64 / 1e6 / t.elapsed().as_secs_f64())
}

/// MB/s of `bytes` of `bench-guest out` through a pipe to `dd` with 128 KiB reads, all in
/// the guest: the pipe hop the agent's stream adds to a raw one, without vsock.
fn pipe_hop(g: &vm::Guest, bytes: u64) -> Result<f64> {
    let t = Instant::now();
    let o = g.client.exec_output(&ExecRequest::new([
        "sh".to_string(),
        "-c".into(),
        format!("{BENCH_GUEST} out {bytes} | dd of=/dev/null bs=131072 2>/dev/null"),
    ]))?;
    if o.status.code != 0 {
        bail!("bench-guest out | dd exited {:?}", o.status);
    }
    Ok(bytes as f64 / 1e6 / t.elapsed().as_secs_f64())
}

fn measure(g: &vm::Guest, arch: Arch, quick: bool) -> Result<Vec<Figure>> {
    start_raw_server(g, arch)?;
    let rounds = if quick { 12 } else { 40 };
    progress!(
        "bench: {} exec round trips, {rounds} rounds next to their floors",
        arch.name()
    );
    let connect = || transport::connect_hybrid_vsock(&g.vm.vsock, PORT, Duration::from_secs(10));
    let kept_with = |command: &[u8]| -> Result<_> {
        let mut s = connect()?;
        s.write_all(command)?;
        Ok(s)
    };
    let (mut kept_echo, mut kept_floor, mut kept_contract) =
        (kept_with(b"e")?, kept_with(b"x")?, kept_with(b"X")?);
    let msg = [7u8; 64];
    let reusing = Client::new(g.client.endpoint().clone()).with_connection_reuse(true);
    let (mut new_conn, mut reused) = (Vec::new(), Vec::new());
    // Ours against the floors whose spawn takes the contract's steps.
    let (mut new_conn_contract, mut reused_contract) = (Vec::new(), Vec::new());
    // The floor's parts timed apart, summed over the rounds: echo, connect + echo, spawn.
    let mut parts = [0.0; 3];
    for round in 0..rounds {
        // Each sample from idle, as each exec starts from idle: the median of a burst would
        // pair a warm round trip (guest awake, host thread running) with a cold exec. Ours and
        // the floors take turns sample by sample, so load that comes and goes lands on both;
        // and each sample follows one of the other side's: what ran last before the idle pause
        // decides what the guest finds cached (under TCG a switch to another process flushes
        // QEMU's TLB), and in this order no sample, ours or the floor's, follows its own kind.
        let (mut sums, mut counts) = ([0.0; 6], [0u32; 6]);
        for k in 0..PER_ROUND {
            let mut order = [4, 0, 5, 1, 4, 2, 5, 3];
            if (round + k as usize) % 2 == 1 {
                order.reverse();
            }
            for step in order {
                std::thread::sleep(SETTLE);
                sums[step] += match step {
                    0 => spawn_round_trip(&mut connect()?, b"x", &msg)?,
                    1 => spawn_round_trip(&mut kept_floor, b"", &msg)?,
                    2 => spawn_round_trip(&mut connect()?, b"X", &msg)?,
                    3 => spawn_round_trip(&mut kept_contract, b"", &msg)?,
                    4 => exec_true(&g.client)?,
                    _ => exec_true(&reusing)?,
                };
                counts[step] += 1;
            }
        }
        let [f_new, f_kept, c_new, c_kept, x, r]: [f64; 6] =
            std::array::from_fn(|step| sums[step] / f64::from(counts[step]));
        new_conn.push((x, f_new));
        reused.push((r, f_kept));
        new_conn_contract.push(x / c_new);
        reused_contract.push(r / c_kept);
        parts[0] += from_idle(|| echo(&mut kept_echo, &msg))?;
        parts[1] += from_idle(|| {
            let t = Instant::now();
            let mut fresh = connect()?;
            fresh.write_all(b"e")?;
            echo(&mut fresh, &msg)?;
            Ok(us(t))
        })?;
        parts[2] += spawn_us(g)?;
    }
    drop((kept_echo, kept_floor, kept_contract));
    let [echo_us, connect_us, spawn_mean] = parts.map(|sum| sum / rounds as f64);
    let floor_means = |pairs: &[(f64, f64)]| pairs.iter().map(|p| p.1).sum::<f64>() / rounds as f64;
    let (floor_new_us, floor_kept_us) = (floor_means(&new_conn), floor_means(&reused));
    let contract = |ratios: &mut Vec<f64>| {
        format!(
            "; against the floor whose spawn also takes the steps the agent's contract adds to \
             any spawn (three stdio pipes, a cgroup and a session of the child's own: the raw \
             server's `X`), ours is {:.2}× (median of the rounds)",
            super::median(ratios)
        )
    };
    let (contract_new, contract_reused) = (
        contract(&mut new_conn_contract),
        contract(&mut reused_contract),
    );
    // What a new connection adds, round by round: ours (new less reused) and the floor's
    // (new less kept), beside the parts' connect (connect + echo less echo, timed apart).
    let added = |pick: fn(&(f64, f64)) -> f64| {
        let mut d: Vec<f64> = new_conn
            .iter()
            .zip(&reused)
            .map(|(n, r)| pick(n) - pick(r))
            .collect();
        super::median(&mut d)
    };
    let connection_cost = format!(
        "; a new connection added {:.0} µs to ours and {:.0} µs to the floor's round trip \
         (medians of the rounds' differences from the reused or kept one); the connect timed \
         apart costs {:.0} µs",
        added(|p| p.0),
        added(|p| p.1),
        connect_us - echo_us
    );

    let (stream_rounds, bytes): (usize, u64) = if quick { (4, 16 << 20) } else { (9, 64 << 20) };
    progress!(
        "bench: {} streaming, {stream_rounds} rounds of {} MiB through the agent, then raw vsock",
        arch.name(),
        bytes >> 20
    );
    let (mut stream, mut hops, mut raws) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..stream_rounds {
        let agent = agent_stream(g, bytes)?;
        let raw = raw_from_guest(connect()?, bytes)?;
        stream.push((agent, raw));
        hops.push(pipe_hop(g, bytes)?);
        raws.push(raw);
    }
    // One vCPU shares the pipe hop (the program's writes, the agent's reads) and the guest's
    // part of the vsock send; wholly in series they give `serial`. An agent beats that only as
    // far as the host's part of the send (vhost-device-vsock's copy) overlaps the guest's work.
    let (hop, raw) = (super::median(&mut hops), super::median(&mut raws));
    let serial = 1.0 / (1.0 / hop + 1.0 / raw);
    let a = Some(arch.name().to_string());
    Ok(vec![
        Figure::sampled(
            "exec_rtt",
            a.clone(),
            "exec round trip of `true`, a new connection each (µs, median)",
            "floor: connect + echo + fork/exec/wait, one round trip",
            &new_conn,
            true,
            Some(EXEC_GOAL),
        )
        .note(format!(
            "{rounds} rounds, each step the mean of its samples that round ({PER_ROUND} of each \
             floor, {} of each exec, taking turns so that no sample follows its own kind), each \
             from a {} ms idle pause; the floor ({floor_new_us:.0} µs, mean) is one round trip \
             to the guest's raw server, which forks, execs `true` (found on PATH) and waits for \
             it before it answers; its parts timed apart (means): {connect_us:.0} µs vsock connect + echo, \
             {spawn_mean:.0} µs fork/exec/wait in the guest{contract_new}{connection_cost}",
            2 * PER_ROUND,
            SETTLE.as_millis()
        )),
        Figure::sampled(
            "exec_rtt_reused",
            a.clone(),
            "exec round trip of `true`, one reused connection (µs, median)",
            "floor: echo + fork/exec/wait, one round trip",
            &reused,
            true,
            Some(EXEC_GOAL),
        )
        .note(format!(
            "{rounds} rounds, sampled as above; the floor ({floor_kept_us:.0} µs, \
             mean) is that round trip on a kept connection; its parts timed apart (means): \
             {echo_us:.0} µs vsock echo, {spawn_mean:.0} µs fork/exec/wait in the \
             guest{contract_reused}"
        )),
        Figure::sampled(
            "stream",
            a,
            &format!("stdout streaming of {} MiB (MB/s)", bytes >> 20),
            "raw vsock stream",
            &stream,
            false,
            Some(STREAM_GOAL),
        )
        .note(format!(
            "{stream_rounds} rounds; the same static-buffer writer on both sides; raw: 16 KiB \
             writes, agent: 16 KiB frames in 32 KiB writes (vhost-device-vsock 0.3.0 stalls \
             above 32 KiB). Breakdown: the same writer into a pipe read in 128 KiB reads in the \
             guest (`bench-guest out | dd bs=128k`, no vsock) moves {hop:.0} MB/s; on one vCPU \
             the pipe hop and the raw send ({raw:.0} MB/s) share the CPU: wholly in series \
             they give {serial:.0} MB/s, {:.2}× raw, and an agent that reads the program's pipe \
             goes faster only as far as the host's part of the send overlaps the guest's work",
            serial / raw
        )),
    ])
}
