//! supermachine 0.7.108's x86_64 KVM machine, reproduced under QEMU `-M microvm` (TCG): every
//! x86_64 boot of `cargo xtask` (run, the e2e suites, the conformance suite, the bench) boots
//! the guest where and as supermachine's KVM backend boots it, not as QEMU's `-kernel` and
//! SeaBIOS do.
//!
//! What supermachine does (`SM` = the supermachine 0.7.108 crate's `src/`):
//! - **RAM** laid out by its own `arch::x86_64::boot::setup_boot`: page tables, GDT, zero page
//!   with a 2-entry e820, command line, the bzImage's protected-mode part at 1 MiB, the
//!   initrd top-down below min(RAM, 2 GiB); an MP table (`mptable::write_mptable`) only with
//!   more than one vCPU (`kvm/run.rs:827-838`). `conformance/sm-boot`'s `kvm-layout` runs
//!   that code; QEMU's generic loader puts its output back in place.
//! - **vCPU 0** enters `startup_64` in long mode with its registers (`kvm/mod.rs:993-1019`):
//!   a 64 KiB stub ([`stub`], `stub.S`) mapped as QEMU's BIOS does that and jumps; other
//!   vCPUs wait for SIPI.
//! - **One vCPU** in `Vm::start`, the warm pool and `Image.build` (`api.rs:9166-9177`): no MP
//!   table, so the guest runs in virtual-wire mode on the 8259 PIC with the PIT as its
//!   clockevent. Two vCPUs boot the MP-table mode (IO-APIC, local APIC timer).
//! - **CPU** without the hypervisor bit or TSC-deadline (KVM's supported CPUID with CET
//!   masked): no kvm-clock; the TSC is calibrated on the PIT.
//! - **No RTC**, ACPI, HPET or virtio-rng: the clock starts near 1999 until the init applies
//!   `supermachine.host_time`.
//! - **Devices** on virtio-mmio, announced on the command line in its order (`kvm/run.rs:
//!   755-803`): the root disk on IRQ 5, vsock on IRQ 6, volumes on IRQ 7 onwards ([`plan`]).
//!   QEMU's transports sit at other addresses (0xfeb0_0000 + 512·i instead of 0xd000_0000 +
//!   4 KiB·i), each on IRQ 5 + i, so every device keeps supermachine's IRQ.
//! - **Command line**: [`super::init::supermachine_cmdline`], the device words, the rig's own
//!   words ([`super::cmdline_words::rig_words`]: supermachine's queue sizes), then the caller's.
//!
//! The rig also refuses a boot that supermachine would start but that could never work: a
//! kernel that is not relocatable decompresses at its `pref_address`, and supermachine's
//! initrd floor (1 MiB + `init_size`) lets a small guest's initrd land there ([`Layout`],
//! [`KernelWindow`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use super::qemu::{add_on_transport, loader, Config};
use crate::util;

/// QEMU `microvm` as supermachine's KVM machine: the 8259 PIC and the PIT, a 16550 at 0x3f8,
/// no ACPI, RTC or option ROMs; RAM from a memfd (vhost-user needs it shared).
pub const MACHINE: &str =
    "microvm,acpi=off,rtc=off,pit=on,pic=on,isa-serial=on,x-option-roms=off,memory-backend=mem";
/// The CPU under TCG: no hypervisor bit (so no kvm-clock), and TCG has no TSC-deadline.
pub const CPU: &str = "max,-hypervisor";
/// The CPU under KVM: the host's, as supermachine passes `KVM_GET_SUPPORTED_CPUID`.
pub const KVM_CPU: &str = "host,-hypervisor";

/// QEMU microvm's virtio-mmio transports (`hw/i386/microvm.c`): 8 from 0xfeb0_0000, 512 B
/// apart, transport `i` on IRQ 5 + `i` (without its second IO-APIC, which needs ACPI).
const VIRTIO_BASE: u64 = 0xfeb0_0000;
const VIRTIO_STRIDE: u64 = 0x200;
const VIRTIO_IRQ_BASE: u32 = 5;
/// supermachine's volumes take IRQs 7, 8 and 9 (`kvm/run.rs`: `VOLUME_IRQ_BASE` up to
/// `FS_IRQ_BASE`).
pub const MAX_VOLUMES: usize = 3;

/// A virtio device of supermachine's machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The root image (`/dev/vda`), IRQ 5.
    RootDisk,
    /// virtio-vsock, IRQ 6.
    Vsock,
    /// The n-th data volume, IRQ 7 + n.
    Volume(usize),
}

/// One virtio-mmio transport of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// What sits there.
    pub device: Device,
    /// QEMU's transport index (`virtio-mmio-bus.<index>`).
    pub index: u32,
}

impl Slot {
    /// The transport's base address.
    pub fn base(&self) -> u64 {
        VIRTIO_BASE + VIRTIO_STRIDE * u64::from(self.index)
    }

    /// Its IRQ: supermachine's number for the device.
    pub fn irq(&self) -> u32 {
        VIRTIO_IRQ_BASE + self.index
    }

    /// Its `virtio_mmio.device=` word.
    pub fn word(&self) -> String {
        format!(
            "virtio_mmio.device={VIRTIO_STRIDE:#x}@{:#x}:{}",
            self.base(),
            self.irq()
        )
    }
}

/// supermachine's devices for a root disk (or none), vsock (or none) and `volumes` data
/// volumes, in its command-line order, each on its IRQ.
pub fn plan(root: bool, vsock: bool, volumes: usize) -> Result<Vec<Slot>> {
    ensure!(
        volumes <= MAX_VOLUMES,
        "{volumes} data volumes: supermachine's x86_64 machine takes at most {MAX_VOLUMES} \
         (IRQs 7-9)"
    );
    let mut slots = Vec::new();
    if root {
        slots.push(Slot {
            device: Device::RootDisk,
            index: 0,
        });
    }
    if vsock {
        slots.push(Slot {
            device: Device::Vsock,
            index: 1,
        });
    }
    slots.extend((0..volumes).map(|i| Slot {
        device: Device::Volume(i),
        index: 2 + i as u32,
    }));
    Ok(slots)
}

/// Where a bzImage decompresses and runs, from its setup header (Linux `boot.rst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelWindow {
    /// `pref_address`: where a kernel that is not relocatable decompresses and runs.
    pub pref_address: u64,
    /// `init_size`: the kernel's footprint from there.
    pub init_size: u64,
    /// `relocatable_kernel`.
    pub relocatable: bool,
}

impl KernelWindow {
    /// Reads the setup header of `bzimage`.
    pub fn read(bzimage: &Path) -> Result<KernelWindow> {
        let mut hdr = [0u8; 0x268];
        let mut f =
            std::fs::File::open(bzimage).with_context(|| format!("open {}", bzimage.display()))?;
        std::io::Read::read_exact(&mut f, &mut hdr).with_context(|| {
            format!("{}: shorter than a bzImage setup header", bzimage.display())
        })?;
        ensure!(
            &hdr[0x202..0x206] == b"HdrS",
            "{} is not a bzImage (no HdrS magic)",
            bzimage.display()
        );
        let le = |at: usize, n: usize| {
            hdr[at..at + n]
                .iter()
                .rev()
                .fold(0u64, |acc, &b| acc << 8 | u64::from(b))
        };
        Ok(KernelWindow {
            pref_address: le(0x258, 8),
            init_size: le(0x260, 4),
            relocatable: hdr[0x234] != 0,
        })
    }

    /// The smallest guest RAM in MiB at which supermachine's placement keeps an initrd of
    /// `initrd_len` bytes clear of this kernel when it is not relocatable: the kernel's window
    /// [`pref_address`, + `init_size`) lies below the initrd.
    pub fn min_mem_mib(&self, initrd_len: u64) -> u32 {
        let need = self.pref_address + self.init_size + initrd_len.next_multiple_of(0x1000);
        need.div_ceil(1 << 20) as u32
    }
}

/// Where supermachine's `setup_boot` put the initrd, and where the kernel decompresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The initrd's guest-physical address.
    pub initrd: u64,
    /// Its length.
    pub initrd_len: u64,
    /// The kernel's window.
    pub kernel: KernelWindow,
}

impl Layout {
    /// Parses `kvm-layout`'s `initrd_addr=` line.
    fn parse(text: &str, initrd_len: u64, kernel: KernelWindow) -> Result<Layout> {
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("initrd_addr=0x"))
            .with_context(|| format!("kvm-layout printed no initrd_addr: {text:?}"))?;
        let initrd = u64::from_str_radix(v, 16)
            .with_context(|| format!("kvm-layout's initrd_addr=0x{v}"))?;
        Ok(Layout {
            initrd,
            initrd_len,
            kernel,
        })
    }

    /// Refuses a layout whose initrd overlaps where a kernel that is not relocatable
    /// decompresses (a relocatable kernel with KASLR moves clear of it itself).
    pub fn check(&self, mem_mib: u32) -> Result<()> {
        let k = &self.kernel;
        let window = k.pref_address..k.pref_address + k.init_size;
        let overlaps = self.initrd < window.end && self.initrd + self.initrd_len > window.start;
        if !k.relocatable && overlaps {
            bail!(
                "{mem_mib} MiB of RAM: supermachine's setup_boot puts the {} B initrd at {:#x}, \
                 inside [{:#x}, {:#x}) where this kernel (not relocatable) decompresses, which \
                 would corrupt it; give the guest at least {} MiB",
                self.initrd_len,
                self.initrd,
                window.start,
                window.end,
                k.min_mem_mib(self.initrd_len)
            );
        }
        Ok(())
    }
}

/// The stub firmware, assembled from `stub.S` into the build directory once per source.
pub fn stub() -> Result<PathBuf> {
    let src = util::root().join("xtask/rig/src/vm/kvm_x86/stub.S");
    let text = std::fs::read(&src).with_context(|| format!("read {}", src.display()))?;
    let dir = util::build_dir();
    let bin = dir.join(format!("kvm-x86-stub-{}.bin", &util::sha256(&text)[..16]));
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir)?;
    let obj = bin.with_extension("o");
    util::run(Command::new("as").arg("--64").arg(&src).arg("-o").arg(&obj))
        .context("assemble the x86_64 rig's stub (binutils' `as`)")?;
    let tmp = bin.with_extension("tmp");
    util::run(
        Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-Ttext=0",
                "-e",
                "0",
                "--oformat=binary",
                "-o",
            ])
            .arg(&tmp)
            .arg(&obj),
    )
    .context("link the x86_64 rig's stub")?;
    let len = std::fs::metadata(&tmp)?.len();
    ensure!(
        len == 0x10000,
        "the stub is {len} B, not the 64 KiB BIOS it must be"
    );
    std::fs::rename(&tmp, &bin)?;
    let _ = std::fs::remove_file(&obj);
    Ok(bin)
}

/// Runs supermachine's `setup_boot` (through `kvm-layout`) for `cfg` with `cmdline`, writing
/// the low memory and the kernel into `dir`.
pub fn lay_out(cfg: &Config, cmdline: &str, dir: &Path) -> Result<Layout> {
    let initrd_len = std::fs::metadata(&cfg.initrd)
        .with_context(|| format!("initrd {}", cfg.initrd.display()))?
        .len();
    let out = Command::new(super::sm_boot::tool("kvm-layout")?)
        .arg("--bzimage")
        .arg(&cfg.kernel)
        .arg("--initrd")
        .arg(&cfg.initrd)
        .args(["--mem-mib", &cfg.mem_mib.to_string()])
        .args(["--cpus", &cfg.cpus.to_string()])
        .args(["--cmdline", cmdline])
        .arg("--out")
        .arg(dir)
        .output()
        .context("run conformance/sm-boot's kvm-layout")?;
    if !out.status.success() {
        bail!(
            "supermachine's x86_64 layout failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let layout = Layout::parse(
        &String::from_utf8_lossy(&out.stdout),
        initrd_len,
        KernelWindow::read(&cfg.kernel)?,
    )?;
    layout.check(cfg.mem_mib)?;
    Ok(layout)
}

/// The kernel's command-line limit on x86_64 (`COMMAND_LINE_SIZE` 2048, with the NUL): it
/// cuts a longer line silently, so the rig refuses one.
pub const CMDLINE_MAX: usize = 2047;

/// supermachine's command line for a root disk (or none), vsock (or none) and `volumes`
/// volumes, then `extra`: its cold-boot words, its device words in its order, the caller's.
pub fn command_line(root: bool, vsock: bool, volumes: usize, extra: &[String]) -> Result<String> {
    let mut words = super::init::supermachine_cmdline();
    words.extend(plan(root, vsock, volumes)?.iter().map(Slot::word));
    words.extend(extra.iter().cloned());
    let line = words.join(" ");
    ensure!(
        line.len() <= CMDLINE_MAX,
        "the kernel command line is {} characters; the x86_64 kernel keeps {CMDLINE_MAX} and \
         would drop the rest: {:?}",
        line.len(),
        &line[CMDLINE_MAX.min(line.len())..]
    );
    Ok(line)
}

/// Adds supermachine's KVM machine to QEMU's command line: RAM as its `setup_boot` writes it,
/// the stub as the BIOS, and the devices on the transports of their IRQs. `disks` counts
/// the root image (when there is one) and the volumes after it.
pub fn add_boot(q: &mut Command, cfg: &Config, dir: &Path, disks: usize) -> Result<()> {
    let root = cfg.rootfs.is_some();
    let volumes = disks - usize::from(root);
    let slots = plan(root, cfg.vsock, volumes)?;
    let cmdline = command_line(root, cfg.vsock, volumes, &cfg.extra_words())?;
    let layout = lay_out(cfg, &cmdline, dir)?;
    // supermachine's KVM answers a port no device claims with 0 (KVM zeroes the exit's data
    // buffer), QEMU with 0xff. The one that shows is the CMOS data port: the kernel reads the
    // RTC at boot and, seeing the update-in-progress bit set for ever, waits out 1 s before
    // "Unable to read current time from RTC". A console that reads 0 and drops writes
    // answers there as supermachine does.
    q.args(["-chardev", "null,id=cmos"]).args([
        "-device",
        "isa-debugcon,iobase=0x71,readback=0,chardev=cmos",
    ]);
    q.arg("-bios")
        .arg(stub()?)
        .args(["-device", &loader(&dir.join("low.bin"), 0)])
        .args(["-device", &loader(&dir.join("kernel.bin"), 0x10_0000)])
        .args(["-device", &loader(&cfg.initrd, layout.initrd)]);
    for s in &slots {
        let device = match s.device {
            Device::RootDisk => "virtio-blk-device,drive=disk0".to_string(),
            Device::Vsock => "vhost-user-vsock-device,chardev=vhu".to_string(),
            Device::Volume(i) => format!("virtio-blk-device,drive=disk{}", i + usize::from(root)),
        };
        add_on_transport(q, &device, s.index);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_keeps_supermachines_irqs() {
        let words: Vec<String> = plan(true, true, 2)
            .unwrap()
            .iter()
            .map(Slot::word)
            .collect();
        assert_eq!(
            words,
            [
                "virtio_mmio.device=0x200@0xfeb00000:5",
                "virtio_mmio.device=0x200@0xfeb00200:6",
                "virtio_mmio.device=0x200@0xfeb00400:7",
                "virtio_mmio.device=0x200@0xfeb00600:8",
            ]
        );
        // Without a root disk or vsock, volumes keep their IRQs (supermachine's fixed bases).
        let p = plan(false, false, 1).unwrap();
        assert_eq!((p[0].device, p[0].irq()), (Device::Volume(0), 7));
        let e = plan(true, true, 4).unwrap_err().to_string();
        assert!(e.contains("at most 3"), "{e}");
    }

    #[test]
    fn an_initrd_on_the_decompressing_kernel_is_refused_with_the_ram_it_needs() {
        // The case: 40 MiB, a 9.35 MiB initrd at 0x1ea8000, our kernel at
        // [16, 33.9) MiB.
        let ours = KernelWindow {
            pref_address: 0x100_0000,
            init_size: 0x11e_4000,
            relocatable: false,
        };
        let l = Layout::parse("initrd_addr=0x1ea8000\n", 9_805_000, ours).unwrap();
        let e = l.check(40).unwrap_err().to_string();
        assert!(
            e.contains("at 0x1ea8000, inside [0x1000000, 0x21e4000)"),
            "{e}"
        );
        assert!(e.contains("at least 44 MiB"), "{e}");
        // A relocatable kernel (KASLR moves it) is not refused.
        let reloc = Layout {
            kernel: KernelWindow {
                relocatable: true,
                ..ours
            },
            ..l
        };
        reloc.check(40).unwrap();
        // Clear of the window: fine.
        let high = Layout {
            initrd: 0x21e4000,
            ..l
        };
        high.check(44).unwrap();
        assert!(Layout::parse("initrd_addr=zz", 1, ours).is_err());
    }

    #[test]
    fn the_shipped_bzimage_header_reads_as_a_fixed_window_at_16_mib() {
        let a = crate::vm::extract_assets(crate::spec::Arch::X86_64).unwrap();
        let k = KernelWindow::read(&a.kernel).unwrap();
        assert_eq!((k.pref_address, k.relocatable), (0x100_0000, false));
        // The footprint holds the decompressed kernel: more than the bzImage, far less than
        // the guest (14.3 MiB at 6.12 with this config).
        let image = std::fs::metadata(&a.kernel).unwrap().len();
        assert!(k.init_size > image && k.init_size < 64 << 20, "{k:?}");
        let e = KernelWindow::read(&a.busybox).unwrap_err().to_string();
        assert!(e.contains("not a bzImage"), "{e}");
    }
}
