//! The checks behind the sub-crates' build scripts: file kind and SHA-256, with no
//! dependencies. `cargo xtask codegen` appends this file to each generated `build.rs`; the
//! xtask tests use it directly, so the check that guards users' builds is itself tested.

use std::path::Path;

/// What kind of file an asset must be.
#[allow(dead_code)]
#[derive(Debug)]
pub enum Kind {
    /// x86 boot protocol image.
    BzImage,
    /// arm64 raw `Image`.
    Arm64Image,
    /// Static ELF executable for this ELF machine number.
    StaticExec(u16),
    /// ELF relocatable object (kernel module) for this ELF machine number.
    Module(u16),
}

/// One bundled file to check.
#[derive(Debug)]
pub struct Check {
    /// Path relative to the crate.
    pub file: &'static str,
    /// Expected SHA-256, lower-case hex.
    pub sha256: &'static str,
    /// Expected kind.
    pub kind: Kind,
}

/// Reads and checks one file.
pub fn check(c: &Check) -> Result<(), String> {
    let bytes = std::fs::read(Path::new(c.file)).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.starts_with(b"version https://git-lfs") {
        return Err("is a Git LFS pointer, not the asset (run `git lfs pull`)".into());
    }
    check_kind(&bytes, &c.kind)?;
    let got = sha256_hex(&bytes);
    if got != c.sha256 {
        return Err(format!(
            "sha256 is {got}, the manifest records {}",
            c.sha256
        ));
    }
    Ok(())
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Checks the ELF header: 64-bit little-endian, `e_type`, `e_machine`; for executables, no
/// `PT_INTERP` (a static binary needs no dynamic loader, which the guest does not have).
fn check_elf(b: &[u8], e_type: u16, machine: u16) -> Result<(), String> {
    if !b.starts_with(b"\x7fELF") || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err("is not a 64-bit little-endian ELF file".into());
    }
    let bad = || "has a truncated ELF header".to_string();
    let got_type = u16_at(b, 16).ok_or_else(bad)?;
    let got_machine = u16_at(b, 18).ok_or_else(bad)?;
    if got_machine != machine {
        return Err(format!(
            "is for ELF machine {got_machine}, expected {machine}"
        ));
    }
    if e_type == 1 {
        return if got_type == 1 {
            Ok(())
        } else {
            Err(format!(
                "has ELF type {got_type}, expected a relocatable module"
            ))
        };
    }
    if got_type != 2 && got_type != 3 {
        return Err(format!("has ELF type {got_type}, expected an executable"));
    }
    let phoff = u64_at(b, 32).ok_or_else(bad)? as usize;
    let phentsize = u16_at(b, 54).ok_or_else(bad)? as usize;
    let phnum = u16_at(b, 56).ok_or_else(bad)? as usize;
    for i in 0..phnum {
        let p_type = u32_at(b, phoff + i * phentsize).ok_or_else(bad)?;
        if p_type == 3 {
            return Err("is dynamically linked (has PT_INTERP); it must be static".into());
        }
    }
    Ok(())
}

/// Checks magic, class, machine and static-ness.
pub fn check_kind(b: &[u8], kind: &Kind) -> Result<(), String> {
    match kind {
        Kind::BzImage => {
            if b.get(0x202..0x206) != Some(b"HdrS") {
                return Err("has no `HdrS` boot-protocol magic at 0x202: not a bzImage".into());
            }
            Ok(())
        }
        Kind::Arm64Image => {
            if b.get(0x38..0x3c) != Some(b"ARM\x64") {
                return Err("has no `ARM\\x64` magic at 0x38: not an arm64 Image".into());
            }
            Ok(())
        }
        Kind::StaticExec(m) => check_elf(b, 2, *m),
        Kind::Module(m) => check_elf(b, 1, *m),
    }
}

/// SHA-256 (FIPS 180-4), lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut tail = data[data.len() - data.len() % 64..].to_vec();
    tail.push(0x80);
    while tail.len() % 64 != 56 {
        tail.push(0);
    }
    tail.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    let blocks = data[..data.len() - data.len() % 64]
        .chunks_exact(64)
        .chain(tail.chunks_exact(64));
    let mut w = [0u32; 64];
    for block in blocks {
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}
