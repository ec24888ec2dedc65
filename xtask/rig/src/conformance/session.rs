//! A guest booted the way supermachine boots it, and the socket supermachine's client talks
//! to: [`Session`] (QEMU with supermachine's initramfs), served by supermachine's own vsock
//! device and exec socket (`sm-vsock`), or by vhost-device-vsock and [`Bridge`] (a Unix socket
//! to the guest's vsock port, what supermachine's VMM hands its client).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use supermachine_agent::transport;

use super::{
    listen_line, AssetSet, Which, EXEC_PORT, LISTEN_WAIT, MEM_MIB, READY_AFTER_LINE,
    READY_WITHOUT_LINE, RUN_LIMIT,
};
use crate::spec::Arch;
use crate::vm::qemu::{Config, ConsoleWait, Vm, VsockDevice};
use crate::vm::sm_vsock;
use crate::{progress, util, vm};

/// A Unix socket whose every connection is a new hybrid-vsock connection to one guest port:
/// `CONNECT <port>\n`, the `OK …\n` line read byte by byte, then bytes both ways, each
/// direction half-closed when its source ends.
#[derive(Debug)]
pub struct Bridge {
    /// Where clients connect.
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Bridge {
    /// Listens on `path`, forwarding to `port` through vhost-device-vsock's `uds` socket.
    pub fn start(path: PathBuf, uds: PathBuf, port: u32) -> Result<Bridge> {
        let listener =
            UnixListener::bind(&path).with_context(|| format!("listen on {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let uds = uds.clone();
                    thread::spawn(move || {
                        let _ = forward(client, &uds, port);
                    });
                }
            })
        };
        Ok(Bridge {
            path,
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag. Should the socket be gone already, the
        // thread is left blocked in accept rather than joined forever.
        if UnixStream::connect(&self.path).is_ok() {
            if let Some(t) = self.accept.take() {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Copies `from` into `to` until EOF, then half-closes `to`; on an error, closes both.
fn pump(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// One client connection: a new guest connection, then both directions copied. When the
/// guest refuses, the client just sees its connection closed (as with supermachine's VMM).
fn forward(client: UnixStream, uds: &Path, port: u32) -> std::io::Result<()> {
    let guest = transport::connect_hybrid_vsock(uds, port, Duration::from_secs(10))?;
    let up = {
        let (c, g) = (client.try_clone()?, guest.try_clone()?);
        thread::spawn(move || pump(c, g))
    };
    pump(guest, client);
    let _ = up.join();
    Ok(())
}

/// A booted guest and the exec socket supermachine's client talks to.
#[derive(Debug)]
pub struct Session {
    /// The exec socket for supermachine's client: supermachine's own (`vsock_mux::start_exec`
    /// in `sm-vsock`), or our [`Bridge`] over vhost-device-vsock.
    pub exec: PathBuf,
    /// The bridge, with vhost-device-vsock. Declared before the VM, so it is dropped before
    /// the VM removes the directory its socket lives in.
    _bridge: Option<Bridge>,
    /// QEMU and the vsock backend (dropping kills them and removes the scratch dir).
    pub vm: Vm,
    /// When QEMU was started.
    pub started: Instant,
    /// From QEMU start to the agent's listening line, if it was printed.
    pub listening_after: Option<Duration>,
}

impl Session {
    /// Boots `set` with `root` as `/dev/vda` and the initramfs supermachine built (the set's
    /// own, or `Image::build_kvm_initramfs` through the conformance binary `bin`), its vsock served
    /// by `device`, and waits for the agent's listening line.
    pub fn boot(bin: &Path, set: &AssetSet, root: &Path, device: VsockDevice) -> Result<Session> {
        let dir = vm::scratch_dir();
        std::fs::create_dir_all(&dir)?;
        let initrd = dir.join("initrd.cpio");
        if let Some(built) = &set.initrd {
            std::fs::copy(built, &initrd).with_context(|| format!("copy {}", built.display()))?;
        } else if set.which == Which::OursOwnInit {
            let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
            std::fs::write(
                &initrd,
                vm::init::initramfs(&read(&set.busybox)?, &read(&set.agent)?),
            )?;
        } else {
            supermachine_initramfs(bin, set, &initrd)?;
        }
        let mut cfg = Config::new(Arch::X86_64, set.kernel.clone(), initrd, MEM_MIB, 1);
        cfg.rootfs = Some(root.to_path_buf());
        cfg.vsock_device = device;
        progress!(
            "conformance: booting {} assets ({}, TCG, {MEM_MIB} MiB)",
            set.which.name(),
            set.kernel.display()
        );
        let started = Instant::now();
        let vm = Vm::start(&cfg, dir.clone())?;
        let (exec, bridge) = match device {
            VsockDevice::Supermachine => (sm_vsock::port_socket(&dir, EXEC_PORT), None),
            VsockDevice::VhostDeviceVsock => {
                let b = Bridge::start(dir.join("exec.sock"), vm.vsock.clone(), EXEC_PORT)?;
                (b.path.clone(), Some(b))
            }
        };
        let mut s = Session {
            exec,
            _bridge: bridge,
            vm,
            started,
            listening_after: None,
        };
        s.wait_listening()?;
        Ok(s)
    }

    /// Waits for [`listen_line`]; fails only when the VM is gone or the init gave up.
    fn wait_listening(&mut self) -> Result<()> {
        let wait = LISTEN_WAIT.saturating_sub(self.started.elapsed());
        let seen = self.vm.wait_console(wait, |c| {
            c.contains(&listen_line()) || c.contains(vm::init::NO_ROOTFS_LINE)
        })?;
        match seen {
            ConsoleWait::Exited(st, _) => bail!(
                "the VM exited ({st}) before its agent listened\n{}",
                self.vm.logs()
            ),
            ConsoleWait::Found(c) if c.contains(&listen_line()) => {
                let t = self.started.elapsed();
                self.listening_after = Some(t);
                progress!("conformance: agent listening after {t:.1?}");
                Ok(())
            }
            ConsoleWait::Found(_) => {
                bail!("the guest init found no root image\n{}", self.vm.logs())
            }
            ConsoleWait::TimedOut(_) => {
                progress!(
                    "conformance: no `{}` on the console after {LISTEN_WAIT:?}; \
                     trying the client's readiness gate anyway",
                    listen_line()
                );
                Ok(())
            }
        }
    }

    /// Runs `supermachine-conformance check` and returns its JSON report.
    pub fn check(&self, bin: &Path, stress: bool) -> Result<Value> {
        let json = self.vm.dir().join("report.json");
        let ready = if self.listening_after.is_some() {
            READY_AFTER_LINE
        } else {
            READY_WITHOUT_LINE
        };
        let mut cmd = Command::new(bin);
        cmd.arg("check")
            .arg("--socket")
            .arg(&self.exec)
            .arg("--json")
            .arg(&json)
            .arg("--ready-timeout")
            .arg(ready.as_secs().to_string());
        if stress {
            cmd.arg("--stress");
        }
        let mut child = cmd.spawn().context("start the conformance client")?;
        let t = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if t.elapsed() > RUN_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the conformance client ran past {RUN_LIMIT:?}");
            }
            thread::sleep(Duration::from_millis(100));
        };
        let text = std::fs::read_to_string(&json).with_context(|| {
            format!(
                "the conformance client ({status}) wrote no report\n{}",
                self.vm.logs()
            )
        })?;
        serde_json::from_str(&text).context("parse the conformance report")
    }

    /// Median µs of an exec of `true` through supermachine's `ExecBuilder::output`.
    pub fn rtt(&self, bin: &Path, n: usize) -> Result<u64> {
        let out = util::output(
            Command::new(bin)
                .arg("rtt")
                .arg("--socket")
                .arg(&self.exec)
                .arg("-n")
                .arg(n.to_string()),
        )?;
        out.trim()
            .parse()
            .with_context(|| format!("rtt printed {out:?}"))
    }
}

/// Builds `out` with supermachine's own `Image::build_kvm_initramfs` (through `bin`).
pub fn supermachine_initramfs(bin: &Path, set: &AssetSet, out: &Path) -> Result<()> {
    util::run(
        Command::new(bin)
            .arg("initramfs")
            .arg("--agent")
            .arg(&set.agent)
            .arg("--busybox")
            .arg(&set.busybox)
            .arg("--out")
            .arg(out),
    )
    .context("supermachine::Image::build_kvm_initramfs")
}
