//! Booting the bundled assets under QEMU and reaching the agent over real virtio-vsock.
//!
//! x86_64 boots supermachine's KVM machine on `-M microvm` ([`kvm_x86`]) with the generated
//! busybox init script; aarch64 boots supermachine's own HVF machine under QEMU `-M virt`
//! ([`hvf`]) in supermachine's HVF layout ([`bake`]): the shipped `init-oci` and
//! `smpark.ko` in a gzip initramfs, the root image and a delta layer as two squashfs disks,
//! the env service on vsock port 1026. Both get the same squashfs root image on virtio-blk and
//! the same agent contract, so one suite drives both. vsock is served by vhost-device-vsock or
//! by supermachine's own device ([`sm_vsock`], [`Options::vsock_device`]).
//!
//! The suites that drive these machines live in xtask (`xtask/src/e2e/`).
//!
//! - [`assets`]: the bundled assets, extracted through the sub-crates' public API.
//! - [`accel`]: KVM or TCG, probed once per host boot.
//! - [`Icount`]: TCG's guest time on the host's clock or counted in guest instructions.
//! - [`hvf`]: supermachine's aarch64 (HVF) machine under QEMU: its addresses, device tree,
//!   devices and CPU.
//! - [`kvm_x86`]: supermachine's x86_64 (KVM) machine under QEMU: its RAM layout, entry
//!   state, interrupt mode, devices and command line.
//! - [`sm_boot`]: the tools that run supermachine's own boot code for those two.
//! - [`qemu`]: the VM processes (QEMU, vhost-device-vsock), their logs and clean-up.
//! - [`cmdline_words`]: the kernel command-line words the rig adds where QEMU's machine
//!   differs from supermachine's (queue sizes, the datagram switch).
//! - [`qmp`]: QEMU's monitor: stop, cont, save and restore, registers.
//! - [`gdbstub`]: writes guest-physical memory through QEMU's gdbstub (host-direct unpark).
//! - [`console`]: a VM driven over its serial console, without vsock (migratable).
//! - [`cpio`]: the initramfs writer.
//! - [`init`]: x86_64's generated PID-1 script, its command line and initramfs layout.
//! - [`bake`]: supermachine's aarch64 boot layout (init-oci, delta layer, env service).
//! - [`rootfs`]: squashfs root images.
//! - [`sm_vsock`]: supermachine's own vsock device as the VM's vsock backend.

pub mod accel;
mod assets;
pub mod bake;
pub mod cmdline_words;
pub mod console;
pub use crate::cpio;
pub mod gdbstub;
pub mod hvf;
mod icount;
pub mod init;
pub mod kvm_x86;
pub mod qemu;
pub mod qmp;
pub mod rootfs;
pub mod sm_boot;
pub mod sm_vsock;
pub mod test_network;
pub mod tsi_host;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use supermachine_agent::client::Client;
use supermachine_agent::protocol::{ProbeInfo, DEFAULT_PORT, READY_LINE};
use supermachine_guest::signals;

use crate::spec::Arch;
use crate::{progress, util};
use qemu::{Accel, Vm};
use rootfs::ImageConfig;

use assets::read;
pub use assets::{extract_assets, guest_program, initramfs, Assets};
pub use icount::Icount;

/// The guest's clocksource in sysfs: `tsc` (or `tsc-early`) on x86_64 when the TSC was
/// calibrated, `refined-jiffies` when it was not.
pub const CLOCKSOURCE_FILE: &str =
    "/sys/devices/system/clocksource/clocksource0/current_clocksource";

/// How to boot.
#[derive(Clone, Debug)]
pub struct Options {
    /// Guest architecture.
    pub arch: Arch,
    /// Root filesystem.
    pub rootfs: rootfs::Source,
    /// Guest RAM.
    pub mem_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Accelerator; `None` probes.
    pub accel: Option<Accel>,
    /// Guest time: the host's clock, or counted in instructions (which forces TCG).
    pub icount: Icount,
    /// Files added to the root image (path inside the guest, contents); not for `Dir` sources.
    pub extra_files: Vec<(String, Vec<u8>)>,
    /// Extra kernel command-line words.
    pub cmdline: Vec<String>,
    /// Boot this kernel instead of the bundled one (the bench's upstream anchor).
    pub kernel: Option<PathBuf>,
    /// How long to wait for the agent; `None`: 120 s (240 s under icount).
    pub ready_timeout: Option<Duration>,
    /// aarch64: the delta layer, env service, volumes and module of supermachine's layout.
    pub bake: bake::BakeOptions,
    /// Open QEMU's gdbstub, so the host can write guest-physical memory (host-direct unpark).
    pub gdb: bool,
    /// The vsock backend.
    pub vsock_device: qemu::VsockDevice,
    /// With [`qemu::VsockDevice::Supermachine`]: its TSI host side.
    pub tsi: tsi_host::TsiHost,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            arch: Arch::X86_64,
            rootfs: rootfs::Source::Default,
            mem_mib: 256,
            cpus: 1,
            accel: None,
            icount: Icount::Off,
            extra_files: Vec::new(),
            cmdline: Vec::new(),
            kernel: None,
            ready_timeout: None,
            bake: bake::BakeOptions::default(),
            gdb: false,
            vsock_device: qemu::VsockDevice::VhostDeviceVsock,
            tsi: tsi_host::TsiHost::default(),
        }
    }
}

/// A booted guest with its agent answering.
#[derive(Debug)]
pub struct Guest {
    /// Guest architecture.
    pub arch: Arch,
    /// The VM processes.
    pub vm: Vm,
    /// Client for the agent.
    pub client: Client,
    /// Image config of an OCI rootfs.
    pub image: Option<ImageConfig>,
    /// From starting QEMU to the agent's first answer.
    pub ready_after: Duration,
    /// The guest's uptime in that first answer.
    pub ready_uptime: Duration,
    /// The agent's pid at boot: 1 on x86_64; init-oci's child on aarch64.
    pub agent_pid: i32,
    /// aarch64: the env service and console handshakes, alive with the guest.
    pub host: bake::HostSide,
}

/// Scratch directories alive, removed by the signal handler on Ctrl-C.
static SCRATCH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub fn scratch_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = util::build_dir().join(format!(
        "vm-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    SCRATCH
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(d.clone());
    d
}

/// On SIGINT/SIGTERM/SIGHUP: kill every VM process, remove scratch files, exit 130.
/// Call before starting any thread, so the signals stay blocked everywhere else.
pub fn install_signal_cleanup() {
    let set = signals::set_of(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    // SAFETY: set is initialised; pthread_sigmask on this thread, the old mask not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: set is initialised and sig a valid out-pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        // Raw write(2): the main thread may hold the stderr lock forever.
        let msg = format!("xtask: signal {sig}: stopping the VM and cleaning up\n");
        // SAFETY: writes a valid buffer to fd 2.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        qemu::kill_all();
        for d in SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = std::fs::remove_dir_all(d);
        }
        // _exit: exit() would flush stdout, whose lock the main thread may hold.
        // SAFETY: ends the process; nothing runs after it.
        unsafe { libc::_exit(130) }
    });
}

fn add_files(stage: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    for (p, data) in files {
        let dest = stage.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().context("file path has no parent")?)?;
        std::fs::write(&dest, data).with_context(|| format!("write {}", dest.display()))?;
    }
    Ok(())
}

/// Boots a guest and waits for its agent.
pub fn boot(opts: &Options) -> Result<Guest> {
    let assets = extract_assets(opts.arch)?;
    let dir = scratch_dir();
    // Until the VM owns the directory, a failure (a bad --rootfs, say) must remove it here.
    match prepare_images(opts, &assets, &dir) {
        Ok(images) => start(opts, &assets, dir, images),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// What [`prepare_images`] wrote.
#[derive(Debug)]
struct Images {
    /// The initramfs.
    initrd: PathBuf,
    /// The root image (`/dev/vda`).
    rootfs: PathBuf,
    /// aarch64: the delta layer and volumes (`/dev/vdb`, …).
    disks: Vec<qemu::Disk>,
    /// The OCI image's config.
    image: Option<ImageConfig>,
}

/// Writes the initramfs, the root image and, on aarch64, the delta layer into `dir`.
fn prepare_images(opts: &Options, assets: &Assets, dir: &Path) -> Result<Images> {
    std::fs::create_dir_all(dir)?;
    let initrd = dir.join(match opts.arch {
        Arch::X86_64 => "initrd.cpio",
        Arch::Aarch64 => "initrd.cpio.gz",
    });
    std::fs::write(&initrd, initramfs(assets, opts.bake.smpark_ko.as_deref())?)?;
    let rootfs_img = dir.join("rootfs.sqfs");
    let stage = dir.join("rootfs");
    let image = match (&opts.rootfs, opts.extra_files.is_empty()) {
        (rootfs::Source::Dir(_), false) => {
            bail!("extra files cannot be added to a --rootfs directory")
        }
        (src, true) => rootfs::build(src, assets, &stage, &rootfs_img)?,
        (src, false) => {
            // Unpack first, add the files, then pack the tree.
            let image = match src {
                rootfs::Source::Default => {
                    rootfs::populate_default(&stage, assets)?;
                    None
                }
                rootfs::Source::Oci(l) => Some(rootfs::stage_oci(l, &stage)?),
                rootfs::Source::Tar(t) => {
                    std::fs::create_dir_all(&stage)?;
                    rootfs::extract_tar(t, &stage)?;
                    None
                }
                rootfs::Source::Dir(_) => unreachable!("refused above"),
            };
            add_files(&stage, &opts.extra_files)?;
            rootfs::mksquashfs(&stage, &rootfs_img, &[])?;
            image
        }
    };
    let _ = std::fs::remove_dir_all(&stage);
    let mut disks = Vec::new();
    if opts.arch == Arch::Aarch64 {
        let workload = opts.bake.workload.clone().unwrap_or_else(|| {
            image
                .as_ref()
                .map_or_else(bake::Workload::busybox, bake::Workload::from_image)
        });
        let delta = dir.join("delta.sqfs");
        bake::build_delta(
            &assets.init_oci_bytes()?,
            &read(&assets.agent)?,
            &workload,
            &dir.join("delta"),
            &delta,
        )?;
        disks.push(qemu::Disk {
            path: delta,
            read_only: true,
        });
        disks.extend(opts.bake.volumes.iter().map(|v| qemu::Disk {
            path: v.clone(),
            read_only: false,
        }));
    }
    Ok(Images {
        initrd,
        rootfs: rootfs_img,
        disks,
        image,
    })
}

/// Starts the VM (which then owns `dir`), its host side, and waits for the agent.
fn start(opts: &Options, assets: &Assets, dir: PathBuf, images: Images) -> Result<Guest> {
    let accel = match (opts.accel, opts.arch) {
        // Counting instructions is TCG's, whatever else was asked.
        _ if opts.icount != Icount::Off => Accel::Tcg,
        (Some(a), _) => a,
        // An aarch64 guest on this x86_64 host can only be emulated.
        (None, Arch::Aarch64) => Accel::Tcg,
        (None, Arch::X86_64) => {
            accel::pick_accel(|| accel::probe_kvm(assets, &images.initrd, &images.rootfs))
        }
    };
    let kernel = opts.kernel.clone().unwrap_or_else(|| assets.kernel.clone());
    let mut cfg = qemu::Config::new(
        opts.arch,
        kernel.clone(),
        images.initrd,
        opts.mem_mib,
        opts.cpus,
    );
    cfg.rootfs = Some(images.rootfs);
    cfg.disks = images.disks;
    cfg.cmdline = match opts.arch {
        Arch::Aarch64 => bake::cmdline(opts.bake.host_ipv6),
        Arch::X86_64 => Vec::new(),
    };
    cfg.cmdline.extend(opts.cmdline.iter().cloned());
    cfg.accel = accel;
    cfg.icount = opts.icount;
    cfg.gdb = opts.gdb;
    cfg.vsock_device = opts.vsock_device;
    cfg.tsi = opts.tsi.clone();
    let mut host = bake::HostSide::default();
    if opts.arch == Arch::Aarch64 && opts.bake.env_service {
        let env = opts
            .bake
            .host_env
            .clone()
            .unwrap_or_else(|| bake::HostEnv::from_image(images.image.as_ref()));
        match opts.vsock_device {
            // supermachine's muxer answers port 1026 itself.
            qemu::VsockDevice::Supermachine => cfg.env_json = Some(env.json()),
            // The guest connects while it boots: listen before QEMU starts.
            qemu::VsockDevice::VhostDeviceVsock => {
                host.env = Some(bake::EnvService::start(
                    &qemu::vsock_socket(&dir),
                    env.json(),
                )?)
            }
        }
    }
    progress!(
        "vm: booting {} ({} MiB, {} vCPU, {accel:?}{})",
        kernel.display(),
        opts.mem_mib,
        opts.cpus,
        if opts.icount == Icount::Off {
            ""
        } else {
            ", icount"
        }
    );
    let started = std::time::Instant::now();
    let mut vm = Vm::start(&cfg, dir)?;
    if opts.arch == Arch::Aarch64 {
        host.responder = Some(bake::Responder::start(&vm.serial)?);
    }
    let client = Client::new(vm.endpoint(DEFAULT_PORT));
    let timeout = opts.ready_timeout.unwrap_or(if opts.icount != Icount::Off {
        Duration::from_secs(240)
    } else {
        Duration::from_secs(120)
    });
    let first = match wait_ready(&mut vm, &client, timeout) {
        Ok(probe) => probe,
        Err(e) => return Err(vm.failure(e)),
    };
    let ready_after = started.elapsed();
    Ok(Guest {
        arch: opts.arch,
        vm,
        client,
        image: images.image,
        ready_after,
        ready_uptime: Duration::from_millis(first.uptime_ms),
        agent_pid: first.pid,
        host,
    })
}

/// Console lines after which the agent will never answer: the x86 init found no root image,
/// or init-oci could not start the agent. Seeing one ends the wait at once.
const INIT_FAILED: &[&str] = &[
    init::NO_ROOTFS_LINE,
    "exec-agent: /supermachine-agent missing",
    "exec-agent: exec /supermachine-agent",
];

/// Waits for the agent's console line, then for its first answer, which it returns.
pub fn wait_ready(vm: &mut Vm, client: &Client, timeout: Duration) -> Result<ProbeInfo> {
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = vm.try_wait()? {
            // The console's last lines say why (a panic, the OOM killer, a failed mount).
            let console = vm.console_text();
            let why = match console.lines().find(|l| l.contains("Kernel panic")) {
                Some(panic) => panic.trim().to_string(),
                None => {
                    let tail: Vec<&str> = console.lines().rev().take(3).collect();
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                }
            };
            bail!("the VM exited ({st}) before its agent was ready; its console: {why}");
        }
        let console = vm.console_text();
        if let Some(line) = INIT_FAILED.iter().find(|l| console.contains(*l)) {
            bail!("the guest init failed: `{line}`");
        }
        // Connect only once the agent says it listens: hybrid-vsock connections attempted
        // before the guest's vsock driver is up were seen (once in dozens of boots) to wedge
        // vhost-device-vsock 0.3.0 for every later connection.
        if !console.contains(READY_LINE) {
            if start.elapsed() > timeout {
                bail!("the agent did not print `{READY_LINE}` within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match client.probe() {
            Ok(p) => {
                progress!(
                    "vm: agent ready after {:.2?} (guest uptime {} ms)",
                    start.elapsed(),
                    p.uptime_ms
                );
                return Ok(p);
            }
            Err(e) if start.elapsed() > timeout => bail!("agent not ready within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(25)),
        }
    }
}

impl Guest {
    /// Shuts the guest down after `result` and returns it, or, when `result` failed, returns
    /// its error with the VM's logs (the VM is left to the clean-up).
    pub fn finish<T>(self, result: Result<T>) -> Result<T> {
        match result {
            Ok(v) => {
                self.shutdown()?;
                Ok(v)
            }
            Err(e) => Err(self.vm.failure(e)),
        }
    }

    /// Asks the agent to reboot (which ends QEMU: `reboot=t`, `-no-reboot`) and waits for QEMU
    /// to exit; kills it if it does not within 10 s.
    pub fn shutdown(mut self) -> Result<()> {
        let asked = self
            .client
            .power(supermachine_agent::protocol::PowerAction::Reboot);
        let exited = self.vm.wait_exit(Duration::from_secs(10))?;
        asked.context("ask the agent to power off")?;
        if !exited {
            bail!(
                "QEMU still running 10 s after the guest was told to reboot\n{}",
                self.vm.logs()
            );
        }
        Ok(())
    }
}
