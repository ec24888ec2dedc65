//! A running microVM: a vhost-user vsock backend (vhost-device-vsock, or supermachine's own
//! device through [`super::sm_vsock`]) + QEMU booting supermachine's own machine (for x86_64
//! its KVM machine on `-M microvm`, [`super::kvm_x86`]; for aarch64 its HVF machine on
//! `-M virt`, [`super::hvf`]), with a serial console and a QMP monitor on Unix sockets.
//!
//! Devices are virtio-mmio: on x86_64 given to the kernel as `virtio_mmio.device=` command-line
//! words, on aarch64 in supermachine's own device tree, the same paths our VMM users take. vhost-user needs the guest's memory shared: `memory-backend-memfd,share=on`. The
//! serial console is a socket (so a test can type into it) that QEMU also logs to a file.
//! Dropping a [`Vm`] kills and reaps its processes and removes its scratch directory, so
//! nothing is left behind on any exit path.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::tsi_host::TsiHost;
use super::{hvf, kvm_x86, sm_vsock};
use crate::spec::Arch;
use crate::{progress, toolchain};
use supermachine_agent::client::Endpoint;
use supermachine_agent::transport;

/// Guest CID given to the vsock backend.
pub const GUEST_CID: u32 = 3;

/// Which program serves the VM's virtio-vsock device (QEMU's `vhost-user-vsock-device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VsockDevice {
    /// vhost-device-vsock 0.3.0: hybrid vsock (`CONNECT <port>`) on [`Vm::vsock`], and guest
    /// connections to host port P on `<it>_P`.
    VhostDeviceVsock,
    /// supermachine's own device and muxer ([`super::sm_vsock`]): an exec socket per guest
    /// port in [`super::sm_vsock::PORTS`], and its env service on port 1026.
    Supermachine,
}

/// How the guest's CPU is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's emulator.
    Tcg,
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct Config {
    /// Guest architecture: x86_64 boots supermachine's KVM machine on `-M microvm`, aarch64
    /// its HVF machine on `-M virt` (GICv3).
    pub arch: Arch,
    /// bzImage or arm64 Image.
    pub kernel: PathBuf,
    /// Initramfs (uncompressed cpio).
    pub initrd: PathBuf,
    /// Root image for the first virtio-blk device, if any.
    pub rootfs: Option<PathBuf>,
    /// Further virtio-blk disks after the root image, in order: the guest sees the root image
    /// as `/dev/vda` and these as `/dev/vdb`, `/dev/vdc`, …
    pub disks: Vec<Disk>,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Extra kernel command-line words.
    pub cmdline: Vec<String>,
    /// CPU accelerator.
    pub accel: Accel,
    /// Guest time: the host's clock, or counted in instructions (TCG only).
    pub icount: super::Icount,
    /// Attach virtio-vsock (a vhost-user backend). QEMU cannot migrate a VM that has it.
    pub vsock: bool,
    /// Its backend.
    pub vsock_device: VsockDevice,
    /// With [`VsockDevice::Supermachine`]: what its muxer answers on port 1026 (else its
    /// default, no variables).
    pub env_json: Option<String>,
    /// With [`VsockDevice::Supermachine`]: its TSI host side (token, egress, IPv6).
    pub tsi: TsiHost,
    /// Start paused, waiting for a migration stream (`-incoming defer`); see
    /// [`super::qmp::Qmp::restore`].
    pub incoming: bool,
    /// Open QEMU's gdbstub on [`Vm::gdb`], so the host can write guest-physical memory
    /// ([`super::gdbstub`]) the way a VMM does.
    pub gdb: bool,
}

impl Config {
    /// A TCG VM with vsock, no root disk and no extra command line.
    pub fn new(arch: Arch, kernel: PathBuf, initrd: PathBuf, mem_mib: u32, cpus: u32) -> Config {
        Config {
            arch,
            kernel,
            initrd,
            rootfs: None,
            disks: Vec::new(),
            mem_mib,
            cpus,
            cmdline: Vec::new(),
            accel: Accel::Tcg,
            icount: super::Icount::Off,
            vsock: true,
            vsock_device: VsockDevice::VhostDeviceVsock,
            env_json: None,
            tsi: TsiHost::default(),
            incoming: false,
            gdb: false,
        }
    }
}

/// The hybrid-vsock Unix socket of the VM in scratch directory `dir` (vhost-device-vsock's
/// `uds-path`; guest connections to host port P arrive on `<it>_P`).
pub fn vsock_socket(dir: &Path) -> PathBuf {
    dir.join("vsock.sock")
}

/// A virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Raw image file.
    pub path: PathBuf,
    /// Attach read-only (image layers) or read-write (volumes).
    pub read_only: bool,
}

/// Pids of every VM process alive, so a Ctrl-C handler can kill them.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kills every VM process started by this xtask (used on SIGINT/SIGTERM).
pub fn kill_all() {
    for pid in LIVE.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        // SAFETY: kill takes no pointers.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

fn track(c: &Child) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(c.id());
}

fn untrack(c: &Child) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != c.id());
}

/// How [`Vm::wait_console`] ended; each carries the console text.
#[derive(Debug)]
pub enum ConsoleWait {
    /// The text was there.
    Found(String),
    /// QEMU exited first, with this status.
    Exited(std::process::ExitStatus, String),
    /// The timeout passed first.
    TimedOut(String),
}

/// A booted (or booting) VM.
#[derive(Debug)]
pub struct Vm {
    qemu: Option<Child>,
    vhost: Option<Child>,
    dir: PathBuf,
    /// The hybrid-vsock Unix socket (`CONNECT <port>`) of vhost-device-vsock.
    pub vsock: PathBuf,
    /// The vsock backend.
    pub vsock_device: VsockDevice,
    /// Serial console log.
    pub console: PathBuf,
    /// The serial console's socket (a client may read and type).
    pub serial: PathBuf,
    /// The QMP monitor's socket.
    pub qmp: PathBuf,
    /// The gdbstub's socket, when [`Config::gdb`] asked for one.
    pub gdb: PathBuf,
    keep_dir: bool,
}

fn wait_for_path(p: &Path, timeout: Duration, child: &mut Child, what: &str) -> Result<()> {
    let start = Instant::now();
    while !p.exists() {
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited early ({st}) before creating {}", p.display());
        }
        if start.elapsed() > timeout {
            bail!("{what} did not create {} within {timeout:?}", p.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

impl Vm {
    /// Starts vhost-device-vsock and QEMU. `dir` is a fresh scratch directory the VM owns
    /// (kept after the VM when `SUPERMACHINE_KEEP_VM` is set, for debugging).
    pub fn start(cfg: &Config, dir: PathBuf) -> Result<Vm> {
        std::fs::create_dir_all(&dir)?;
        let vhost_sock = dir.join("vhost.sock");
        let mut vm = Vm {
            qemu: None,
            vhost: None,
            vsock: vsock_socket(&dir),
            vsock_device: cfg.vsock_device,
            console: dir.join("console.log"),
            serial: dir.join("serial.sock"),
            qmp: dir.join("qmp.sock"),
            gdb: dir.join("gdb.sock"),
            dir,
            keep_dir: false,
        };
        if std::env::var_os("SUPERMACHINE_KEEP_VM").is_some() {
            vm.keep();
        }
        if cfg.vsock {
            match cfg.vsock_device {
                VsockDevice::VhostDeviceVsock => vm.start_vhost(&vhost_sock)?,
                VsockDevice::Supermachine => vm.start_sm_vsock(cfg, &vhost_sock)?,
            }
        }
        vm.start_qemu(cfg, &vhost_sock)?;
        Ok(vm)
    }

    fn start_vhost(&mut self, vhost_sock: &Path) -> Result<()> {
        let mut cmd = Command::new(toolchain::vhost_device_vsock());
        // SUPERMACHINE_VHOST_LOG=debug shows the backend's view when vsock misbehaves.
        cmd.env(
            "RUST_LOG",
            std::env::var("SUPERMACHINE_VHOST_LOG").unwrap_or_else(|_| "error".into()),
        )
        .arg("--vm")
        .arg(format!(
            "guest-cid={GUEST_CID},socket={},uds-path={}",
            vhost_sock.display(),
            self.vsock.display()
        ));
        self.start_backend(
            cmd,
            vhost_sock,
            "vhost-device-vsock (run `cargo xtask setup`)",
        )
    }

    fn start_sm_vsock(&mut self, cfg: &Config, vhost_sock: &Path) -> Result<()> {
        let cmd = sm_vsock::command(&self.dir, vhost_sock, cfg)?;
        self.start_backend(cmd, vhost_sock, "sm-vsock")
    }

    /// Starts the vsock backend `cmd` (its stderr in `vhost.log`) and waits for it to create
    /// QEMU's vhost-user socket.
    fn start_backend(&mut self, mut cmd: Command, vhost_sock: &Path, what: &str) -> Result<()> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(self.dir.join("vhost.log"))?)
            .spawn()
            .with_context(|| format!("start {what}"))?;
        track(&child);
        let child = self.vhost.insert(child);
        wait_for_path(vhost_sock, Duration::from_secs(10), child, what)
    }

    /// How a host client reaches guest `port`: hybrid vsock through vhost-device-vsock, or
    /// supermachine's exec socket for that port.
    pub fn endpoint(&self, port: u32) -> Endpoint {
        match self.vsock_device {
            VsockDevice::VhostDeviceVsock => Endpoint::HybridVsock {
                path: self.vsock.clone(),
                port,
            },
            VsockDevice::Supermachine => Endpoint::Unix(sm_vsock::port_socket(&self.dir, port)),
        }
    }

    /// A stream to guest `port` ([`Vm::endpoint`]) within `timeout` (supermachine's exec
    /// socket accepts at once: the guest answers later, on the stream).
    pub fn connect(&self, port: u32, timeout: Duration) -> Result<UnixStream> {
        Ok(match self.vsock_device {
            VsockDevice::VhostDeviceVsock => {
                transport::connect_hybrid_vsock(&self.vsock, port, timeout)?
            }
            VsockDevice::Supermachine => {
                let path = sm_vsock::port_socket(&self.dir, port);
                transport::connect_unix(&path, timeout)
                    .with_context(|| format!("connect to {}", path.display()))?
            }
        })
    }

    fn start_qemu(&mut self, cfg: &Config, vhost_sock: &Path) -> Result<()> {
        let (binary, machine, qemu_mib) = match cfg.arch {
            Arch::X86_64 => ("qemu-system-x86_64", kvm_x86::MACHINE, cfg.mem_mib),
            Arch::Aarch64 => (
                "qemu-system-aarch64",
                hvf::MACHINE,
                cfg.mem_mib + hvf::QEMU_RAM_BELOW_MIB,
            ),
        };
        let mut q = Command::new(binary);
        q.args(["-M", machine])
            .arg("-object")
            .arg(format!(
                "memory-backend-memfd,id=mem,size={qemu_mib}M,share=on"
            ))
            .args(["-m", &format!("{qemu_mib}")])
            .args(["-smp", &cfg.cpus.to_string()])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-chardev")
            .arg(format!(
                "socket,id=ser,path={},server=on,wait=off,logfile={},logappend=on",
                self.serial.display(),
                self.console.display()
            ))
            .args(["-serial", "chardev:ser"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", self.qmp.display()))
            .args(["-object", "rng-random,id=rng,filename=/dev/urandom"]);
        if cfg.vsock {
            q.arg("-chardev")
                .arg(format!("socket,id=vhu,path={}", vhost_sock.display()));
        }
        let root = cfg.rootfs.iter().map(|p| Disk {
            path: p.clone(),
            read_only: true,
        });
        let disks: Vec<Disk> = root.chain(cfg.disks.iter().cloned()).collect();
        for (i, d) in disks.iter().enumerate() {
            q.arg("-drive").arg(format!(
                "id=disk{i},file={},format=raw,if=none,readonly={}",
                d.path.display(),
                if d.read_only { "on" } else { "off" }
            ));
        }
        match cfg.arch {
            Arch::X86_64 => kvm_x86::add_boot(&mut q, cfg, &self.dir, disks.len())?,
            Arch::Aarch64 => hvf::add_boot(&mut q, cfg, &self.dir, disks.len())?,
        }
        if cfg.incoming {
            q.args(["-incoming", "defer"]);
        }
        if cfg.gdb {
            q.arg("-gdb")
                .arg(format!("unix:{},server=on,wait=off", self.gdb.display()));
        }
        match (cfg.accel, cfg.arch) {
            (Accel::Kvm, Arch::X86_64) => q.args(["-enable-kvm", "-cpu", kvm_x86::KVM_CPU]),
            (Accel::Kvm, Arch::Aarch64) => q.args(["-enable-kvm", "-cpu", "host"]),
            (Accel::Tcg, Arch::X86_64) => q.args(["-accel", "tcg", "-cpu", kvm_x86::CPU]),
            (Accel::Tcg, Arch::Aarch64) => q.args(["-accel", "tcg", "-cpu", hvf::CPU]),
        };
        if let Some(how) = cfg.icount.option() {
            q.args(["-icount", how]);
        }
        let qemu = q
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(self.dir.join("qemu.log"))?)
            .spawn()
            .with_context(|| format!("start {binary} (run `cargo xtask setup`)"))?;
        track(&qemu);
        let qemu = self.qemu.insert(qemu);
        // The monitor socket exists once QEMU has parsed its command line.
        wait_for_path(&self.qmp, Duration::from_secs(10), qemu, binary)
    }

    /// Connects to the QMP monitor.
    pub fn monitor(&self) -> Result<super::qmp::Qmp> {
        super::qmp::Qmp::connect(&self.qmp)
    }

    /// The scratch directory this VM owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The serial console so far, plus QEMU's and the vsock backend's stderr.
    pub fn logs(&self) -> String {
        let read = |n: &str| read_lossy(&self.dir.join(n));
        format!(
            "--- guest console ---\n{}\n--- qemu stderr ---\n{}\n--- vsock backend ---\n{}",
            read("console.log"),
            read("qemu.log"),
            read("vhost.log")
        )
    }

    /// `e` with this VM's logs, and `e` again after them: a log's tail is what a reader (or a
    /// CI summary) sees, so the cause must be there too.
    pub fn failure(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{e:#}\n{}\n--- failed ---\n{e:#}", self.logs())
    }

    /// The guest console so far.
    pub fn console_text(&self) -> String {
        read_lossy(&self.console)
    }

    /// Has QEMU exited? Returns its status.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.qemu.as_mut() {
            Some(q) => Ok(q.try_wait()?),
            None => Ok(None),
        }
    }

    /// Polls the console every 20 ms until `found` accepts its text, QEMU exits, or `timeout`
    /// passes; says which, with the console text at that moment.
    pub fn wait_console(
        &mut self,
        timeout: Duration,
        found: impl Fn(&str) -> bool,
    ) -> Result<ConsoleWait> {
        let start = Instant::now();
        loop {
            let text = self.console_text();
            if found(&text) {
                return Ok(ConsoleWait::Found(text));
            }
            if let Some(st) = self.try_wait()? {
                return Ok(ConsoleWait::Exited(st, text));
            }
            if start.elapsed() > timeout {
                return Ok(ConsoleWait::TimedOut(text));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for QEMU to exit on its own (after a guest reboot/poweroff).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<bool> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.try_wait()?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(false)
    }

    /// Keep the scratch directory (logs) after drop, for debugging.
    fn keep(&mut self) {
        self.keep_dir = true;
        progress!("vm: keeping {}", self.dir.display());
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        for child in [self.qemu.take(), self.vhost.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            untrack(&child);
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `-device loader` putting `file` at guest-physical `addr`, as it is (no ELF parsing).
pub fn loader(file: &Path, addr: u64) -> String {
    format!("loader,file={},addr={addr:#x},force-raw=on", file.display())
}

/// Adds virtio `device` on the machine's transport `index` (`virtio-mmio-bus.<index>`), so
/// that it sits where the VMM being reproduced puts it, whatever QEMU's own order.
pub fn add_on_transport(q: &mut Command, device: &str, index: u32) {
    q.args(["-device", &format!("{device},bus=virtio-mmio-bus.{index}")]);
}

/// A log file's text so far, empty when it is not there yet. Lossy: a kernel may write bytes
/// that are not UTF-8, which must not hide the rest.
fn read_lossy(path: &std::path::Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
