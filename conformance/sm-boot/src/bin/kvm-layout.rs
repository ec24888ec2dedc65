//! `kvm-layout`: the guest RAM supermachine 0.7.108's KVM backend lays out for an x86_64
//! guest, written by its own `arch::x86_64::boot::setup_boot` (and `mptable::write_mptable`
//! for more than one vCPU, as its `kvm/run.rs` does), for the project's rig that boots the
//! guest under QEMU as supermachine boots it.
//!
//! ```text
//! kvm-layout --bzimage FILE --initrd FILE --mem-mib M --cpus N --cmdline TEXT --out DIR
//! ```
//!
//! It writes what QEMU's `-device loader` then puts back where supermachine wrote it:
//! - `DIR/low.bin`: guest-physical [0, 0xa0000): page tables, GDT, zero page, command line and
//!   the MP table (supermachine writes nothing in [0xa0000, 1 MiB), where QEMU maps its BIOS);
//! - `DIR/kernel.bin`: the bzImage's protected-mode part, for 1 MiB;
//! - the initrd is the caller's file, at the address printed.
//!
//! On stdout, `initrd_addr=0x…`: where `setup_boot` put the initrd.
//!
//! The rig's firmware stub then enters the kernel in the register state supermachine's
//! `apply_boot_regs` gives vCPU 0. The stub has that state built in, so this tool refuses a
//! `setup_boot` whose registers differ from it ([`STUB_ENTRY`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sm_boot::flags::{number, walk};

/// supermachine 0.7.108's x86_64 boot code, compiled as it is.
#[allow(dead_code, unused_imports, clippy::all)]
mod sm {
    /// `src/arch/x86_64/boot.rs`.
    pub mod boot {
        include!(concat!(env!("OUT_DIR"), "/x86_64_boot.rs"));
    }
    /// `src/arch/x86_64/mptable.rs`.
    pub mod mptable {
        include!(concat!(env!("OUT_DIR"), "/x86_64_mptable.rs"));
    }
}

use sm::boot::layout::{BOOT_PARAMS, KERNEL_LOAD};

const USAGE: &str = "usage: kvm-layout --bzimage FILE --initrd FILE --mem-mib M --cpus N \
                     --cmdline TEXT --out DIR";

/// Where supermachine writes nothing below the kernel: QEMU's BIOS and option-ROM window.
const LOW_END: usize = 0xa0000;

/// The register state the rig's stub (`xtask/rig/src/vm/kvm_x86/stub.S`) enters the kernel with.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    gdt: (u64, u16),
    selectors: (u16, u16),
    long_mode_code: bool,
    rip: u64,
    rsi: u64,
    rflags: u64,
}

/// What the stub does: long mode with paging, supermachine's page tables and GDT, CS 0x10 and
/// every data segment 0x18, RSI at the zero page, entry at `startup_64` (1 MiB + 0x200).
const STUB_ENTRY: Entry = Entry {
    cr0: 0x8000_0001,
    cr3: 0x1000,
    cr4: 0x20,
    efer: 0x500,
    gdt: (0x4000, 31),
    selectors: (0x10, 0x18),
    long_mode_code: true,
    rip: 0x10_0200,
    rsi: 0x1_0000,
    rflags: 0x2,
};

fn entry_of(r: &sm::boot::BootRegs) -> Entry {
    Entry {
        cr0: r.cr0,
        cr3: r.cr3,
        cr4: r.cr4,
        efer: r.efer,
        gdt: (r.gdt_base, r.gdt_limit),
        selectors: (r.cs.selector, r.ds.selector),
        long_mode_code: r.cs.l == 1 && r.cs.present == 1,
        rip: r.rip,
        rsi: r.rsi,
        rflags: r.rflags,
    }
}

/// What to lay out.
#[derive(Debug, Default)]
struct Args {
    bzimage: Option<PathBuf>,
    initrd: Option<PathBuf>,
    mem_mib: u64,
    cpus: u64,
    cmdline: String,
    out: Option<PathBuf>,
}

fn parse(it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args::default();
    walk(
        it,
        USAGE,
        |_| false,
        |flag, value| {
            match flag {
                "--bzimage" => a.bzimage = Some(PathBuf::from(value)),
                "--initrd" => a.initrd = Some(PathBuf::from(value)),
                "--mem-mib" => a.mem_mib = number(&value)?,
                "--cpus" => a.cpus = number(&value)?,
                "--cmdline" => a.cmdline = value,
                "--out" => a.out = Some(PathBuf::from(value)),
                other => return Err(format!("unknown flag {other:?}")),
            }
            Ok(())
        },
    )?;
    if a.bzimage.is_none() || a.initrd.is_none() || a.out.is_none() {
        return Err(format!(
            "--bzimage, --initrd and --out are required\n{USAGE}"
        ));
    }
    if a.mem_mib == 0 || a.cpus == 0 || a.cpus > 255 {
        return Err(format!(
            "--mem-mib must be above 0 and --cpus in 1..=255 (got {} and {})",
            a.mem_mib, a.cpus
        ));
    }
    Ok(a)
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(
        b[at..at + 4].try_into().expect("4 bytes"),
    ))
}

/// Lays out `mem` as supermachine does for `a`; returns the initrd's address.
fn lay_out(mem: &mut [u8], a: &Args, bz: &[u8], initrd: &[u8]) -> Result<u64, String> {
    let cfg = sm::boot::BootConfig {
        mem_size: mem.len(),
        cmdline: &a.cmdline,
        bzimage: bz,
        initrd: Some(initrd),
    };
    let regs =
        sm::boot::setup_boot(mem, &cfg).map_err(|e| format!("supermachine's setup_boot: {e:?}"))?;
    let got = entry_of(&regs);
    if got != STUB_ENTRY {
        return Err(format!(
            "supermachine's entry state is not the one the rig's stub sets:\n  \
             setup_boot: {got:?}\n  stub:       {STUB_ENTRY:?}"
        ));
    }
    // `kvm/run.rs`: an MP table only when there is more than one vCPU.
    if a.cpus > 1 {
        sm::mptable::write_mptable(mem, a.cpus as u8)
            .map_err(|e| format!("supermachine's write_mptable: {e:?}"))?;
    }
    Ok(le32(mem, BOOT_PARAMS as usize + 0x218))
}

fn run(a: &Args) -> Result<(), String> {
    let bz = read(a.bzimage.as_ref().expect("required"))?;
    let initrd = read(a.initrd.as_ref().expect("required"))?;
    let mut mem = vec![0u8; (a.mem_mib << 20) as usize];
    let initrd_addr = lay_out(&mut mem, a, &bz, &initrd)?;
    let kernel = KERNEL_LOAD as usize;
    if let Some(i) = mem[LOW_END..kernel].iter().position(|&b| b != 0) {
        return Err(format!(
            "supermachine wrote at {:#x}, in QEMU's BIOS window [{LOW_END:#x}, {kernel:#x})",
            LOW_END + i
        ));
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_len = bz.len() - (setup_sects + 1) * 512;
    let out = a.out.as_ref().expect("required");
    std::fs::create_dir_all(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    for (name, bytes) in [
        ("low.bin", &mem[..LOW_END]),
        ("kernel.bin", &mem[kernel..kernel + pm_len]),
    ] {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(|e| format!("write {}: {e}", p.display()))?;
    }
    println!("initrd_addr={initrd_addr:#x}");
    Ok(())
}

fn main() -> ExitCode {
    sm_boot::exit(
        "kvm-layout",
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
        let with = |extra: &[&str]| {
            let mut v = vec![
                "--bzimage",
                "b",
                "--initrd",
                "i",
                "--mem-mib",
                "64",
                "--out",
                "o",
            ];
            v.extend(extra);
            args(&v)
        };
        let a = with(&["--cpus", "2", "--cmdline", "x y"]).unwrap();
        assert_eq!((a.mem_mib, a.cpus, a.cmdline.as_str()), (64, 2, "x y"));
        assert!(args(&["--bzimage", "b"]).unwrap_err().contains("required"));
        assert!(args(&["--cpus", "x"]).unwrap_err().contains("not a number"));
        let e = with(&["--cpus", "256"]).unwrap_err();
        assert!(e.contains("--cpus in 1..=255"), "{e}");
        assert!(args(&["--bogus", "1"])
            .unwrap_err()
            .contains("unknown flag"));
    }

    /// A bzImage-shaped buffer: 1 setup sector, `pm` bytes of protected-mode kernel, the given
    /// init_size (as `setup_boot` reads it).
    fn bzimage(pm: usize, init_size: u32) -> Vec<u8> {
        let mut bz = vec![0u8; 2 * 512 + pm];
        bz[0x1f1] = 1;
        bz[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        bz
    }

    #[test]
    fn supermachines_entry_is_the_stubs_and_the_mp_table_comes_with_a_second_cpu() {
        let a = |cpus| Args {
            mem_mib: 64,
            cpus,
            cmdline: "console=ttyS0".into(),
            ..Args::default()
        };
        let bz = bzimage(4096, 0x100_0000);
        let mut one = vec![0u8; 64 << 20];
        let rd = lay_out(&mut one, &a(1), &bz, &[7u8; 8192]).unwrap();
        // Top-down below 64 MiB, page-aligned.
        assert_eq!(rd, (64 << 20) - 8192);
        assert!(one[0x9_fc00..LOW_END].iter().all(|&b| b == 0));
        let mut two = vec![0u8; 64 << 20];
        lay_out(&mut two, &a(2), &bz, &[7u8; 8192]).unwrap();
        assert_eq!(&two[0x9_fc00..0x9_fc04], b"_MP_");
    }
}
