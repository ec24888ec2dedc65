//! supermachine 0.7.108's HVF guest machine, reproduced under QEMU `-M virt` (TCG): every
//! aarch64 boot of `cargo xtask` (run, the e2e suites, snapshot cycles, the bench) boots the
//! guest where and as supermachine boots it, not as QEMU's `-kernel` does.
//!
//! What supermachine does (`SM` = the supermachine 0.7.108 crate's `src/`):
//! - **RAM** at 0x8000_0000 (`arch/aarch64/layout.rs:8`). QEMU's RAM starts at 0x4000_0000,
//!   so QEMU gets 1 GiB more, which the guest never sees: the device tree lists only the
//!   window supermachine gives.
//! - **Image** copied to RAM + 0x80000 whatever its header's `text_offset` (`layout.rs:13`,
//!   `hvf/backend.rs:315-316`); **device tree** at RAM end − 2 MiB (`backend.rs:317-319`);
//!   **initrd** just below it, 4 KiB-aligned (`vmm/vstate.rs:384-393`).
//! - **vCPU 0** enters the Image with x0 = the device tree, x1..x3 = 0, EL1h with DAIF masked
//!   (`backend.rs:330-336`): a 48-byte stub ([`boot_stub`]) at RAM base does that here, QEMU's
//!   generic loader starting CPU 0 on it; secondaries come up through PSCI `CPU_ON` (hvc).
//! - **Device tree** written by supermachine's own `fdt::generate` (built from its source by
//!   `conformance/sm-boot`'s `hvf-fdt`), patched only where QEMU's hardware differs ([`super::qemu`]).
//! - **Devices** on virtio-mmio in supermachine's order ([`plan`], after `vmm/builder.rs:441`):
//!   vsock on transport 0, then the block devices (image layers, the delta layer, volumes),
//!   then virtio-rng and virtio-balloon.
//! - **CPU** like Apple's cores: no LPA2 (the kernel takes its 48-bit VA fallback), no SVE,
//!   SME or PMU, a 24 MHz counter; pointer authentication with QEMU's fast IMPLEMENTATION
//!   DEFINED cipher (the guest never depends on the algorithm; Apple signs in hardware).
//! - **No RTC** and no `rng-seed`: the guest clock starts at 1970 until init-oci applies
//!   `supermachine.host_time`, and the CRNG waits for virtio-rng.
//! - **Command line**: [`cmdline`], then the rig's own words
//!   ([`super::cmdline_words::rig_words`]: supermachine's queue sizes), then the bake's words
//!   ([`super::bake::cmdline`]). No `panic=`: the kernel's own `PANIC_TIMEOUT=-1` ends the VM.
//!
//! What HVF itself may still do differently is listed in the README ("Using with
//! supermachine").

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use super::qemu::{add_on_transport, loader, Config};

/// Guest RAM base (SM `layout.rs:8`, `DRAM_MEM_START_KERNEL`).
pub const RAM_BASE: u64 = 0x8000_0000;
/// Where the Image goes, from RAM base (SM `layout.rs:13`, `KERNEL_LOAD_OFFSET`).
pub const KERNEL_OFFSET: u64 = 0x8_0000;
/// The device tree's slot at the top of RAM (SM `layout.rs:17`, `FDT_MAX_SIZE`).
const FDT_SLOT: u64 = 0x20_0000;
/// QEMU `virt`'s RAM base: QEMU is given [`QEMU_RAM_BELOW_MIB`] more so that RAM reaches
/// [`RAM_BASE`] + the guest's size.
const QEMU_RAM_BASE: u64 = 0x4000_0000;
/// MiB of QEMU RAM below [`RAM_BASE`], invisible to the guest.
pub const QEMU_RAM_BELOW_MIB: u32 = ((RAM_BASE - QEMU_RAM_BASE) >> 20) as u32;
/// First virtio-mmio transport and stride (SM `layout.rs`: `VIRTIO_MMIO_BASE`, `_STRIDE`).
const VIRTIO_BASE: u64 = 0x0a00_0000;
const VIRTIO_STRIDE: u64 = 0x200;
/// The first SPI's INTID (SM `layout.rs`: `IRQ_BASE`).
const IRQ_BASE: u32 = 32;

/// QEMU `virt` as supermachine's machine: GICv3 without the ITS QEMU would put where
/// supermachine's redistributors are, RAM from a memfd (vhost-user needs it shared).
pub const MACHINE: &str = "virt,gic-version=3,its=off,memory-backend=mem";
/// An Apple-core-like CPU for TCG. QEMU emulates the 24 MHz counter with a whole-nanosecond
/// period (41 ns instead of 41.67), so guest time runs 1.6% fast against the host's.
pub const CPU: &str = "max,lpa2=off,sve=off,sme=off,pmu=off,pauth-impdef=on,cntfrq=24000000";

/// The start of supermachine's HVF bake command line (SM `bake/mod.rs:6348`); the bake's own
/// words follow ([`super::bake::cmdline`]).
pub fn cmdline() -> Vec<String> {
    [
        "earlycon=pl011,mmio32,0x09000000",
        "console=ttyAMA0",
        "quiet",
        "loglevel=4",
    ]
    .map(String::from)
    .to_vec()
}

/// Where supermachine puts the boot images in guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The Image.
    pub kernel: u64,
    /// The device tree.
    pub fdt: u64,
    /// The initrd.
    pub initrd: u64,
}

impl Layout {
    /// The layout for `mem_mib` of RAM, an Image whose header claims `image_size` bytes, and
    /// an initrd of `initrd_len` bytes. supermachine only `debug_assert!`s that the initrd
    /// clears the kernel; the rig refuses with the sizes.
    pub fn new(mem_mib: u32, image_size: u64, initrd_len: u64) -> Result<Layout> {
        let kernel = RAM_BASE + KERNEL_OFFSET;
        let fdt = RAM_BASE + (u64::from(mem_mib) << 20) - FDT_SLOT;
        let initrd = fdt
            .checked_sub(initrd_len + 0xfff)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= kernel + image_size)
            .with_context(|| {
                format!(
                    "{mem_mib} MiB of RAM cannot hold the Image ({image_size} B at {kernel:#x}) \
                     and an initrd of {initrd_len} B below the device tree at {fdt:#x}"
                )
            })?;
        Ok(Layout {
            kernel,
            fdt,
            initrd,
        })
    }
}

/// The `image_size` field of an arm64 Image header (offset 16, little-endian): how much
/// memory the kernel uses from its load address, BSS included.
pub fn image_size(image: &Path) -> Result<u64> {
    let mut head = [0u8; 64];
    let mut f = std::fs::File::open(image).with_context(|| format!("open {}", image.display()))?;
    std::io::Read::read_exact(&mut f, &mut head)
        .with_context(|| format!("{}: shorter than an arm64 Image header", image.display()))?;
    ensure!(
        &head[56..60] == b"ARM\x64",
        "{} is not an arm64 Image (no ARM\\x64 magic)",
        image.display()
    );
    Ok(u64::from_le_bytes(
        head[16..24].try_into().expect("8 bytes"),
    ))
}

/// A virtio device of supermachine's machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// virtio-vsock, always transport 0.
    Vsock,
    /// The n-th virtio-blk device (image layers, the delta layer, then volumes).
    Block(usize),
    /// virtio-rng.
    Rng,
    /// virtio-balloon.
    Balloon,
}

/// One virtio-mmio transport of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// What sits there.
    pub device: Device,
    /// Its index: base = 0x0a00_0000 + 0x200 × index (QEMU's `virtio-mmio-bus.<index>`).
    pub index: u32,
    /// Its interrupt as supermachine numbers it (INTID): 32 for vsock, then 34 onwards, as
    /// INTID 33 (SPI 1) is the PL011's.
    pub intid: u32,
}

impl Slot {
    /// The transport's base address.
    pub fn base(&self) -> u64 {
        VIRTIO_BASE + VIRTIO_STRIDE * u64::from(self.index)
    }
}

/// supermachine's virtio-mmio plan for `blocks` block devices (SM `vmm/builder.rs:441-510`,
/// without virtio-fs): vsock at INTID 32, then every other device at INTID 33 + its index
/// (INTID 33, SPI 1, is the PL011's).
pub fn plan(blocks: usize) -> Vec<Slot> {
    let mut devices = vec![Device::Vsock];
    devices.extend((0..blocks).map(Device::Block));
    devices.extend([Device::Rng, Device::Balloon]);
    devices
        .into_iter()
        .zip(0u32..)
        .map(|(device, index)| Slot {
            device,
            index,
            intid: IRQ_BASE + index + u32::from(index > 0),
        })
        .collect()
}

/// The boot stub at RAM base: x0 = `fdt`, x1..x3 = 0, jump to `kernel` (what supermachine's
/// vCPU 0 registers are when it first runs, SM `hvf/backend.rs:330-336`).
pub fn boot_stub(fdt: u64, kernel: u64) -> Vec<u8> {
    const CODE: [u32; 8] = [
        0x5800_0100, // 0x00 ldr x0, 0x20   (the device tree's address)
        0xaa1f_03e1, // 0x04 mov x1, xzr
        0xaa1f_03e2, // 0x08 mov x2, xzr
        0xaa1f_03e3, // 0x0c mov x3, xzr
        0x5800_00c4, // 0x10 ldr x4, 0x28   (the Image's address)
        0xd61f_0080, // 0x14 br  x4
        0xd503_201f, // 0x18 nop
        0xd503_201f, // 0x1c nop
    ];
    let mut out: Vec<u8> = CODE.iter().flat_map(|w| w.to_le_bytes()).collect();
    out.extend(fdt.to_le_bytes()); // 0x20
    out.extend(kernel.to_le_bytes()); // 0x28
    out
}

/// What [`device_tree`] describes.
#[derive(Clone, Debug)]
pub struct TreeSpec<'a> {
    /// vCPUs.
    pub cpus: u32,
    /// Guest RAM.
    pub mem_mib: u32,
    /// `bootargs`.
    pub cmdline: &'a str,
    /// The initrd's address and length.
    pub initrd: (u64, u64),
    /// The virtio-mmio devices.
    pub slots: &'a [Slot],
}

/// Writes supermachine's device tree for `spec` to `out`, patched for QEMU `virt`.
pub fn device_tree(spec: &TreeSpec, out: &Path) -> Result<()> {
    let tool = super::sm_boot::tool("hvf-fdt")?;
    let mut cmd = Command::new(tool);
    cmd.args(["--cpus", &spec.cpus.to_string()])
        .args(["--mem-mib", &spec.mem_mib.to_string()])
        .args(["--cmdline", spec.cmdline])
        .args([
            "--initrd",
            &format!("{:#x}:{}", spec.initrd.0, spec.initrd.1),
        ]);
    for s in spec.slots {
        cmd.args(["--virtio", &format!("{:#x}:{}", s.base(), s.intid)]);
    }
    cmd.arg("--qemu-virt").arg("--out").arg(out);
    let out_text = cmd.output().context("run conformance/sm-boot's hvf-fdt")?;
    if !out_text.status.success() {
        bail!(
            "hvf-fdt failed ({}): {}",
            out_text.status,
            String::from_utf8_lossy(&out_text.stderr)
        );
    }
    Ok(())
}

/// Adds supermachine's HVF machine to QEMU's command line: the Image, the device tree its own code
/// writes and the initrd at its addresses, CPU 0 entering through the boot stub, and the
/// devices on its virtio-mmio transports. A transport with no device (vsock in a
/// migratable VM) reads as an empty slot, which the guest skips.
pub fn add_boot(q: &mut Command, cfg: &Config, dir: &Path, disks: usize) -> Result<()> {
    let initrd_len = std::fs::metadata(&cfg.initrd)
        .with_context(|| format!("initrd {}", cfg.initrd.display()))?
        .len();
    let layout = Layout::new(cfg.mem_mib, image_size(&cfg.kernel)?, initrd_len)?;
    let slots = plan(disks);
    let mut cmdline = cmdline();
    cmdline.extend(cfg.extra_words());
    let dtb = dir.join("supermachine.dtb");
    device_tree(
        &TreeSpec {
            cpus: cfg.cpus,
            mem_mib: cfg.mem_mib,
            cmdline: &cmdline.join(" "),
            initrd: (layout.initrd, initrd_len),
            slots: &slots,
        },
        &dtb,
    )?;
    let stub = dir.join("boot-stub.bin");
    std::fs::write(&stub, boot_stub(layout.fdt, layout.kernel))
        .with_context(|| format!("write {}", stub.display()))?;
    q.args(["-device", &loader(&cfg.kernel, layout.kernel)])
        .args(["-device", &loader(&dtb, layout.fdt)])
        .args(["-device", &loader(&cfg.initrd, layout.initrd)])
        .args(["-device", &format!("{},cpu-num=0", loader(&stub, RAM_BASE))]);
    for s in &slots {
        let device = match s.device {
            Device::Vsock if cfg.vsock => "vhost-user-vsock-device,chardev=vhu".into(),
            Device::Vsock => continue,
            Device::Block(i) => format!("virtio-blk-device,drive=disk{i}"),
            Device::Rng => "virtio-rng-device,rng=rng".into(),
            Device::Balloon => "virtio-balloon-device".into(),
        };
        add_on_transport(q, &device, s.index);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_supermachines() {
        // SM vmm/builder.rs: vsock @0x0a000000 INTID 32; blocks from 0x0a000200 at 34, 35, …;
        // then rng and balloon.
        let p = plan(2);
        let got: Vec<_> = p.iter().map(|s| (s.device, s.base(), s.intid)).collect();
        assert_eq!(
            got,
            [
                (Device::Vsock, 0x0a00_0000, 32),
                (Device::Block(0), 0x0a00_0200, 34),
                (Device::Block(1), 0x0a00_0400, 35),
                (Device::Rng, 0x0a00_0600, 36),
                (Device::Balloon, 0x0a00_0800, 37),
            ]
        );
    }

    #[test]
    fn the_layout_is_supermachines_and_refuses_what_does_not_fit() {
        // HVF.md: 512 MiB, 0.94 MiB initrd -> FDT 0x9fe00000, initrd 0x9fd0e000.
        let l = Layout::new(512, 0x80_0000, 0x9fe0_0000 - 0x9fd0_f000).unwrap();
        assert_eq!(l.kernel, 0x8008_0000);
        assert_eq!(l.fdt, 0x9fe0_0000);
        assert_eq!(l.initrd, 0x9fd0_e000);
        let e = Layout::new(16, 0x80_0000, 8 << 20).unwrap_err().to_string();
        assert!(e.contains("16 MiB of RAM cannot hold"), "{e}");
    }

    #[test]
    fn the_stub_loads_x0_and_jumps() {
        let s = boot_stub(0x9fe0_0000, 0x8008_0000);
        assert_eq!(s.len(), 0x30);
        assert_eq!(&s[0x20..0x28], &0x9fe0_0000u64.to_le_bytes());
        assert_eq!(&s[0x28..0x30], &0x8008_0000u64.to_le_bytes());
    }
}
