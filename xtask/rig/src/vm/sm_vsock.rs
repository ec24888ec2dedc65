//! supermachine's own virtio-vsock device as the VM's vsock backend: `sm-vsock`
//! (`conformance/src/bin/sm-vsock.rs`) serves QEMU's `vhost-user-vsock-device` with
//! supermachine 0.7.108's `Vsock` device and muxer, its exec socket (`vsock_mux::start_exec`:
//! a plain Unix socket per guest port, no `CONNECT` handshake), its inbound mux socket and its
//! env service on port 1026.
//!
//! Which runs use it: the conformance suite and the aarch64 e2e suites (supermachine's code
//! on the host side, as a VMM author's guest meets it). vhost-device-vsock stays where it
//! serves better: `cargo xtask run` (no supermachine build on a fresh machine), the x86_64
//! e2e suite and the bench (its floor figures are taken on the same transport), a boot with
//! no env service at all (supermachine's muxer always answers port 1026), and the rigs that
//! need guest→host connections to other ports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result};

use crate::{cargo, progress};

/// The guest port of the bench's raw vsock server (`bench-guest serve`): the transport's own
/// limit, next to which the bench puts the agent and TSI.
pub const RAW_PORT: u32 = 5000;

/// The guest ports whose exec sockets `sm-vsock` opens: the agent's and [`RAW_PORT`].
pub const PORTS: [u32; 2] = [supermachine_agent::protocol::DEFAULT_PORT, RAW_PORT];

/// The exec socket of guest `port` in the VM's scratch directory `dir`.
pub fn port_socket(dir: &Path, port: u32) -> PathBuf {
    dir.join(format!("sm-vsock-{port}.sock"))
}

/// supermachine's inbound mux socket (TSI ingress) in `dir`.
pub fn mux_socket(dir: &Path) -> PathBuf {
    dir.join("sm-mux.sock")
}

/// `sm-vsock`, built once per run in the conformance workspace's target (minutes the first
/// time: supermachine has ~100 dependencies).
pub fn binary() -> Result<PathBuf> {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    if let Some(b) = BIN.get() {
        return Ok(b.clone());
    }
    progress!(
        "vm: building sm-vsock (supermachine 0.7.108's vsock device; minutes the first time)"
    );
    let bin = cargo::build_conformance_tool(&cargo::conformance_manifest(), "sm-vsock", &[])?;
    Ok(BIN.get_or_init(|| bin).clone())
}

/// The `sm-vsock` command for the VM of `cfg` in `dir`: QEMU's vhost-user socket, guest CID
/// [`super::qemu::GUEST_CID`], the mux socket, an exec socket per port of [`PORTS`], the env
/// document [`super::qemu::Config::env_json`] (written to `dir`), and the TSI host side
/// [`super::qemu::Config::tsi`]. `SUPERMACHINE_VHOST_LOG` (any value) makes it
/// trace every vhost-user event.
pub fn command(dir: &Path, vhost_sock: &Path, cfg: &super::qemu::Config) -> Result<Command> {
    let mut cmd = Command::new(binary()?);
    cmd.arg("--vhost-socket")
        .arg(vhost_sock)
        .args(["--cid", &super::qemu::GUEST_CID.to_string()])
        .arg("--mux-socket")
        .arg(mux_socket(dir));
    for port in PORTS {
        cmd.arg("--port")
            .arg(format!("{port}={}", port_socket(dir, port).display()));
    }
    let tsi = &cfg.tsi;
    if let Some(t) = tsi.host_token.as_ref().or(tsi.token.as_ref()) {
        cmd.args(["--tsi-token", t]);
    }
    if let Some(p) = &tsi.egress_policy {
        cmd.args(["--egress-policy", p]);
    }
    cmd.arg("--status-file")
        .arg(super::tsi_host::tsi_status(dir));
    for p in &tsi.report_inet_ports {
        cmd.args(["--report-inet-port", &p.to_string()]);
    }
    if let Some(v6) = tsi.host_ipv6 {
        cmd.env("SUPERMACHINE_HOST_IPV6", if v6 { "1" } else { "0" });
    }
    if let Some(json) = &cfg.env_json {
        let f = dir.join("env.json");
        std::fs::write(&f, json).with_context(|| format!("write {}", f.display()))?;
        cmd.arg("--env-json").arg(f);
    }
    if std::env::var_os("SUPERMACHINE_VHOST_LOG").is_some() {
        cmd.env("SM_VSOCK_TRACE", "1");
    }
    Ok(cmd)
}
