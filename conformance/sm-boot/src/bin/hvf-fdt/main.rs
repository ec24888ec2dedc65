//! `hvf-fdt`: the device tree supermachine 0.7.108's HVF backend gives an aarch64 guest,
//! produced by supermachine's own `arch::aarch64::fdt::generate`, for the project's rig that
//! boots the guest under QEMU `-M virt` as supermachine boots it.
//!
//! supermachine compiles its FDT builder only for `target_arch = "aarch64"`, so this tool
//! compiles the pinned crate's own `fdt.rs` and `layout.rs` (unchanged, through `include!`)
//! against `vm-fdt` 0.3.0, the version supermachine's lock file pins.
//!
//! ```text
//! hvf-fdt --cpus N --mem-mib M --cmdline TEXT [--initrd GPA:LEN] [--virtio BASE:INTID]...
//!         [--qemu-virt] --out FILE
//! ```
//!
//! `--qemu-virt` then patches only what QEMU's `virt` hardware forces, and prints each patch:
//! - the GICv3 redistributor base: supermachine 0x0808_0000, QEMU 0x080A_0000 (QEMU puts its
//!   ITS at 0x0808_0000);
//! - each `virtio_mmio` node's SPI: supermachine numbers them 0, 2, 3, … (skipping the
//!   PL011's SPI 1), QEMU wires transport `i` (at 0x0a00_0000 + 0x200·i) to SPI 16 + i.

mod patch;

/// supermachine 0.7.108's aarch64 code, compiled as it is.
#[allow(dead_code, unused_imports, clippy::all)]
mod sm {
    /// `src/arch/aarch64/layout.rs`.
    pub mod layout {
        include!(concat!(env!("OUT_DIR"), "/aarch64_layout.rs"));
    }
    /// `src/arch/aarch64/fdt.rs` (its `use super::layout` finds the module above).
    pub mod fdt {
        include!(concat!(env!("OUT_DIR"), "/aarch64_fdt.rs"));
    }
}

use std::path::PathBuf;
use std::process::ExitCode;

use sm_boot::flags::{number, pair, walk};

/// What to generate.
#[derive(Debug, Default)]
struct Args {
    cpus: usize,
    mem_mib: u64,
    cmdline: String,
    initrd: Option<(u64, u64)>,
    virtio: Vec<(u64, u32)>,
    qemu_virt: bool,
    out: Option<PathBuf>,
}

const USAGE: &str = "usage: hvf-fdt --cpus N --mem-mib M --cmdline TEXT [--initrd GPA:LEN] \
                     [--virtio BASE:INTID]... [--qemu-virt] --out FILE";

fn parse(it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args::default();
    let mut qemu_virt = false;
    walk(
        it,
        USAGE,
        |flag| {
            let hit = flag == "--qemu-virt";
            qemu_virt |= hit;
            hit
        },
        |flag, value| {
            match flag {
                "--cpus" => a.cpus = number(&value)? as usize,
                "--mem-mib" => a.mem_mib = number(&value)?,
                "--cmdline" => a.cmdline = value,
                "--initrd" => a.initrd = Some(pair(flag, &value)?),
                "--virtio" => {
                    let (base, irq) = pair(flag, &value)?;
                    let irq = u32::try_from(irq).map_err(|_| format!("--virtio {value}: INTID"))?;
                    a.virtio.push((base, irq));
                }
                "--out" => a.out = Some(PathBuf::from(value)),
                other => return Err(format!("unknown flag {other:?}")),
            }
            Ok(())
        },
    )?;
    a.qemu_virt = qemu_virt;
    if a.cpus == 0 || a.mem_mib == 0 || a.out.is_none() {
        return Err(format!("--cpus, --mem-mib and --out are required\n{USAGE}"));
    }
    Ok(a)
}

fn run(a: &Args) -> Result<(), String> {
    let devs: Vec<sm::fdt::VirtioMmioEntry> = a
        .virtio
        .iter()
        .map(|&(base, irq)| sm::fdt::VirtioMmioEntry { base, irq })
        .collect();
    let mut dtb = sm::fdt::generate(a.cpus, a.mem_mib << 20, &a.cmdline, a.initrd, &devs)
        .map_err(|e| format!("supermachine's fdt::generate: {e}"))?;
    if a.qemu_virt {
        for line in patch::for_qemu_virt(&mut dtb)? {
            eprintln!("hvf-fdt: patched {line}");
        }
    }
    let out = a.out.as_ref().expect("parse requires --out");
    std::fs::write(out, &dtb).map_err(|e| format!("write {}: {e}", out.display()))
}

fn main() -> ExitCode {
    sm_boot::exit(
        "hvf-fdt",
        parse(std::env::args().skip(1)).and_then(|a| run(&a)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Result<Args, String> {
        parse(s.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_parse_and_bad_ones_are_named() {
        let a = args(&[
            "--cpus",
            "4",
            "--mem-mib",
            "512",
            "--cmdline",
            "quiet",
            "--initrd",
            "0x9fd0e000:4096",
            "--virtio",
            "0x0a000000:32",
            "--qemu-virt",
            "--out",
            "x.dtb",
        ])
        .unwrap();
        assert_eq!(
            (a.cpus, a.mem_mib, a.initrd),
            (4, 512, Some((0x9fd0e000, 4096)))
        );
        assert_eq!(a.virtio, [(0x0a00_0000, 32)]);
        assert!(a.qemu_virt);
        assert!(args(&["--cpus", "x"])
            .unwrap_err()
            .contains("\"x\" is not a number"));
        assert!(args(&["--cpus", "1"]).unwrap_err().contains("required"));
        assert!(args(&["--bogus", "1"])
            .unwrap_err()
            .contains("unknown flag"));
        assert!(args(&["--initrd", "5"]).unwrap_err().contains("want A:B"));
    }

    #[test]
    fn supermachines_tree_gets_only_qemus_two_patches() {
        let devs = [
            sm::fdt::VirtioMmioEntry {
                base: 0x0a00_0000,
                irq: 32,
            },
            sm::fdt::VirtioMmioEntry {
                base: 0x0a00_0200,
                irq: 34,
            },
        ];
        let orig = sm::fdt::generate(2, 256 << 20, "console=ttyAMA0", None, &devs).unwrap();
        let mut dtb = orig.clone();
        let done = patch::for_qemu_virt(&mut dtb).unwrap();
        assert_eq!(done.len(), 3, "{done:?}");
        assert_eq!(dtb.len(), orig.len());
        let changed: Vec<usize> = (0..dtb.len()).filter(|&i| dtb[i] != orig[i]).collect();
        // 0x0808_0000 -> 0x080a_0000: one byte; SPI 0 -> 16 and 2 -> 17: one byte each.
        assert_eq!(changed.len(), 3, "{changed:?}");
    }
}
