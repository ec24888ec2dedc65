//! Guest networking (TSI) next to the raw vsock stream on the same rig: supermachine's own
//! device and muxer (`sm-vsock`), our kernel with TSI on, the host's servers in
//! [`crate::vm::test_network`]'s namespace. The samples alternate (TSI, raw, TSI, raw, …) in
//! one guest, so load that comes and goes lands on both sides.
//!
//! - throughput guest → host: the guest times its TSI connection's bytes from the count it
//!   sends to the host's sink until the sink's answer; the anchor, timed on the host, streams
//!   the same count from `bench-guest` over raw vsock from the request to the last byte;
//! - throughput host → guest: the host's source times its bytes until the guest's ack; the
//!   anchor sends them to `bench-guest` over raw vsock until its ack;
//! - connect latency: a TSI connect and close to the host's echo server, against a raw vsock
//!   connect and close to the muxer's own port 1026, both timed in the guest.

use std::os::unix::net::UnixStream;

use anyhow::{Context, Result};
use supermachine_agent::protocol::ExecRequest;

use super::Figure;
use crate::progress;
use crate::spec::Arch;
use crate::vm::qemu::VsockDevice;
use crate::vm::test_network::{self as network, ECHO_PORT, SERVER, SINK_PORT, SOURCE_PORT};
use crate::vm::{self, sm_vsock, Guest, Options};

/// The muxer's env-service port: a raw vsock port the host answers.
const HOST_VSOCK_PORT: u32 = init_oci::contract::ENV_PORT;
/// The goal of both throughput ratios.
const GOAL: f64 = 0.7;
/// Connects per latency sample.
const CONNECTS: u32 = 20;

/// The TSI figures of `arch`.
pub fn figures(arch: Arch, quick: bool) -> Result<Vec<Figure>> {
    // What needs the network is built before the namespace.
    sm_vsock::binary()?;
    let net = vm::guest_program(arch, "net")?;
    network::run(move || {
        let (g, clock) = super::guest::boot_on_tsc(&Options {
            arch,
            vsock_device: VsockDevice::Supermachine,
            ..Options::default()
        })?;
        let result = measure(&g, arch, quick, &net).map(|figs| {
            figs.into_iter()
                .map(|f| f.note_also(clock.as_deref()))
                .collect()
        });
        g.finish(result)
    })
}

/// `/tmp/net ARGS`'s nanoseconds (`ok ns N`).
fn guest_ns(g: &Guest, args: &str) -> Result<f64> {
    let argv: Vec<String> = std::iter::once("/tmp/net".to_string())
        .chain(args.split(' ').map(str::to_string))
        .collect();
    let o = g.client.exec_output(&ExecRequest::new(argv))?;
    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
    text.strip_prefix("ok ns ")
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("net {args}: {text:?} {:?}", o.status))
}

fn raw_stream(g: &Guest) -> Result<UnixStream> {
    let path = sm_vsock::port_socket(g.vm.dir(), sm_vsock::RAW_PORT);
    let s = UnixStream::connect(&path).with_context(|| format!("connect {}", path.display()))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    Ok(s)
}

/// Raw vsock, guest → host: `bytes` from `bench-guest` until its end; MB/s.
fn raw_to_host(g: &Guest, bytes: u64) -> Result<f64> {
    super::guest::raw_from_guest(raw_stream(g)?, bytes)
}

/// Raw vsock, host → guest: `bytes` to `bench-guest` until its ack; MB/s.
fn raw_to_guest(g: &Guest, bytes: u64) -> Result<f64> {
    super::guest::raw_to_guest(raw_stream(g)?, bytes)
}

fn measure(g: &Guest, arch: Arch, quick: bool, net: &[u8]) -> Result<Vec<Figure>> {
    g.client.write_file("/tmp/net", 0o755, net)?;
    super::guest::start_raw_server(g, arch)?;
    // Several times the 8 MiB vsock window both sides get, so buffering cannot pass for speed.
    let bytes: u64 = if quick { 32 << 20 } else { 128 << 20 };
    let samples = if quick { 5 } else { 9 };
    progress!(
        "bench: {} TSI against raw vsock, {samples} alternating samples of {} MiB each way",
        arch.name(),
        bytes >> 20
    );
    let mbs = |ns: f64| bytes as f64 / 1e6 / (ns / 1e9);
    let (mut tx, mut rx, mut con) = (vec![], vec![], vec![]);
    for _ in 0..samples {
        let ours = mbs(guest_ns(g, &format!("send {SERVER} {SINK_PORT} {bytes}"))
            .context("TSI guest → host")?);
        tx.push((
            ours,
            raw_to_host(g, bytes).context("raw vsock guest → host")?,
        ));
        let ours = mbs(
            guest_ns(g, &format!("fetch {SERVER} {SOURCE_PORT} {bytes}"))
                .context("TSI host → guest")?,
        );
        rx.push((
            ours,
            raw_to_guest(g, bytes).context("raw vsock host → guest")?,
        ));
        let ours = guest_ns(g, &format!("connlat {SERVER} {ECHO_PORT} {CONNECTS}"))
            .context("TSI connect latency")?
            / 1e3;
        let raw = guest_ns(g, &format!("vconnlat {HOST_VSOCK_PORT} {CONNECTS}"))
            .context("raw vsock connect latency")?
            / 1e3;
        con.push((ours, raw));
    }
    let a = Some(arch.name().to_string());
    let note = format!("supermachine's muxer (sm-vsock), {samples} rounds");
    Ok(vec![
        Figure::sampled(
            "tsi_tx",
            a.clone(),
            &format!("TSI TCP guest → host, {} MiB (MB/s)", bytes >> 20),
            "raw vsock stream, same rig",
            &tx,
            false,
            Some(GOAL),
        )
        .note(format!(
            "{note}; raw vsock reaches the host through the muxer's exec socket (a Unix-socket \
             relay), TSI through the muxer's own TCP socket"
        )),
        Figure::sampled(
            "tsi_rx",
            a.clone(),
            &format!("TSI TCP host → guest, {} MiB (MB/s)", bytes >> 20),
            "raw vsock stream, same rig",
            &rx,
            false,
            Some(GOAL),
        )
        .note(note),
        Figure::sampled(
            "tsi_connect",
            a,
            "TSI TCP connect + close to the host (µs, median)",
            "raw vsock connect + close to the muxer",
            &con,
            true,
            None,
        )
        .note(format!(
            "mean of {CONNECTS} per sample, timed in the guest; TSI adds the CONNECT round trip \
             and the host's own connect"
        )),
    ])
}
