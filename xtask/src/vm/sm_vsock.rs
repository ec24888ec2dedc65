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

/// The guest ports whose exec sockets `sm-vsock` opens: the agent's.
pub const PORTS: [u32; 1] = [supermachine_agent::protocol::DEFAULT_PORT];

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

/// The `sm-vsock` command for the VM in `dir`: QEMU's vhost-user socket, guest CID
/// [`super::qemu::GUEST_CID`], the mux socket, an exec socket per port of [`PORTS`], and the
/// env document `env_json` (written to `dir`). `SUPERMACHINE_VHOST_LOG` (any value) makes it
/// trace every vhost-user event.
pub fn command(dir: &Path, vhost_sock: &Path, env_json: Option<&str>) -> Result<Command> {
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
    if let Some(json) = env_json {
        let f = dir.join("env.json");
        std::fs::write(&f, json).with_context(|| format!("write {}", f.display()))?;
        cmd.arg("--env-json").arg(f);
    }
    if std::env::var_os("SUPERMACHINE_VHOST_LOG").is_some() {
        cmd.env("SM_VSOCK_TRACE", "1");
    }
    Ok(cmd)
}
