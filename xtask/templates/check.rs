//! Compile-time checks of the bundled bytes, so a bad asset fails the build of this crate with
//! a clear `E0080` naming the file, instead of booting into a confusing failure later.
//!
//! Each asset's `static` is initialised through [`verified`], which rustc evaluates while it
//! compiles this crate: no build script and no hashing in a consumer's build. The checks are
//! the exact size the manifest recorded (a Git LFS pointer, a truncated checkout or a stale
//! file all differ in size; a small file that reads as an LFS pointer is named as one), the
//! magic of the image format, and for ELF files the class, byte order, type, machine and the
//! absence of `PT_INTERP` (the guest has no dynamic loader). The SHA-256 of every file is
//! verified against the manifest by the project's own tests, not here: the `.crate` that
//! carries these bytes is already checksum-verified by Cargo.

/// What kind of file an asset must be.
// One template serves both sub-crates, and each uses only the kinds of its own arch.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// x86 boot protocol image (`HdrS` at 0x202).
    BzImage,
    /// arm64 raw `Image` (`ARM\x64` at 0x38).
    Arm64Image,
    /// Static ELF executable for this ELF machine number.
    StaticExec(u16),
    /// ELF relocatable object (a kernel module) for this ELF machine number.
    Module(u16),
}

/// Why a file is not the asset it should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    /// A Git LFS pointer file was checked out instead of the bytes.
    LfsPointer,
    /// The size differs from the manifest's.
    WrongSize,
    /// No `HdrS` boot-protocol magic.
    NotBzImage,
    /// No `ARM\x64` magic.
    NotArm64Image,
    /// Not a 64-bit little-endian ELF file.
    NotElf64,
    /// An ELF header or program header runs past the end of the file.
    TruncatedElf,
    /// The ELF machine differs from the asset's architecture.
    WrongMachine,
    /// An executable was expected and this is not one, or the other way round.
    WrongElfType,
    /// The executable has `PT_INTERP`: it is dynamically linked.
    Dynamic,
}

impl Problem {
    /// What is wrong, and what to do about it.
    pub(crate) const fn message(self) -> &'static str {
        match self {
            Problem::LfsPointer => {
                "bundled asset is a Git LFS pointer, not the asset: run `git lfs pull`"
            }
            Problem::WrongSize => {
                "bundled asset does not have the size the manifest records: restore it from \
                 git, or rebuild it with `cargo xtask build-assets` and rerun `cargo xtask codegen`"
            }
            Problem::NotBzImage => "bundled kernel has no `HdrS` magic at 0x202: not a bzImage",
            Problem::NotArm64Image => {
                "bundled kernel has no `ARM\\x64` magic at 0x38: not an arm64 Image"
            }
            Problem::NotElf64 => "bundled program is not a 64-bit little-endian ELF file",
            Problem::TruncatedElf => "bundled program has a truncated ELF header",
            Problem::WrongMachine => "bundled ELF file is for another machine (e_machine)",
            Problem::WrongElfType => "bundled ELF file has the wrong e_type",
            Problem::Dynamic => "bundled program is dynamically linked (has PT_INTERP)",
        }
    }
}

/// `PT_INTERP`: the program asks for a dynamic loader.
const PT_INTERP: u32 = 3;
/// Longer than any Git LFS pointer file (about 130 bytes), shorter than any asset.
const LFS_POINTER_MAX: usize = 1024;
const LFS_MAGIC: &[u8] = b"version https://git-lfs";

const fn starts_with(b: &[u8], prefix: &[u8]) -> bool {
    if b.len() < prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if b[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn bytes_at(b: &[u8], off: usize, want: &[u8]) -> bool {
    match b.split_at_checked(off) {
        Some((_, rest)) => starts_with(rest, want),
        None => false,
    }
}

/// Little-endian integer of `n` bytes at `off`, or `None` past the end.
const fn le(b: &[u8], off: usize, n: usize) -> Option<u64> {
    if off > b.len() || b.len() - off < n {
        return None;
    }
    let mut v = 0u64;
    let mut i = n;
    while i > 0 {
        i -= 1;
        v = (v << 8) | b[off + i] as u64;
    }
    Some(v)
}

/// Checks the ELF header and, for executables, that no program header is `PT_INTERP`.
const fn check_elf(b: &[u8], module: bool, machine: u16) -> Result<(), Problem> {
    if !starts_with(b, b"\x7fELF") || b.len() < 64 || b[4] != 2 || b[5] != 1 {
        return Err(Problem::NotElf64);
    }
    let (Some(e_type), Some(e_machine)) = (le(b, 16, 2), le(b, 18, 2)) else {
        return Err(Problem::TruncatedElf);
    };
    if e_machine != machine as u64 {
        return Err(Problem::WrongMachine);
    }
    if module {
        // ET_REL.
        return if e_type == 1 {
            Ok(())
        } else {
            Err(Problem::WrongElfType)
        };
    }
    // ET_EXEC, or ET_DYN for a static-pie executable.
    if e_type != 2 && e_type != 3 {
        return Err(Problem::WrongElfType);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (le(b, 32, 8), le(b, 54, 2), le(b, 56, 2))
    else {
        return Err(Problem::TruncatedElf);
    };
    let mut i = 0;
    while i < phnum {
        let off = phoff + i * phentsize;
        if off > usize::MAX as u64 {
            return Err(Problem::TruncatedElf);
        }
        match le(b, off as usize, 4) {
            Some(p_type) if p_type == PT_INTERP as u64 => return Err(Problem::Dynamic),
            Some(_) => {}
            None => return Err(Problem::TruncatedElf),
        }
        i += 1;
    }
    Ok(())
}

/// Checks `bytes` against the size the manifest recorded and the shape of `kind`.
pub(crate) const fn check(bytes: &[u8], size: usize, kind: Kind) -> Result<(), Problem> {
    if bytes.len() != size {
        return Err(
            if bytes.len() < LFS_POINTER_MAX && starts_with(bytes, LFS_MAGIC) {
                Problem::LfsPointer
            } else {
                Problem::WrongSize
            },
        );
    }
    match kind {
        Kind::BzImage if bytes_at(bytes, 0x202, b"HdrS") => Ok(()),
        Kind::BzImage => Err(Problem::NotBzImage),
        Kind::Arm64Image if bytes_at(bytes, 0x38, b"ARM\x64") => Ok(()),
        Kind::Arm64Image => Err(Problem::NotArm64Image),
        Kind::StaticExec(machine) => check_elf(bytes, false, machine),
        Kind::Module(machine) => check_elf(bytes, true, machine),
    }
}

/// The bytes of an asset as the array its `static` holds, after [`check`]; a failed check
/// stops compilation with the problem's message.
///
/// Generic over both lengths so that a wrong size reaches [`check`] (and its clear message)
/// rather than failing as a type mismatch. Returning the array by value keeps the bytes in the
/// `static`'s own allocation: a `pub const` that refers to that `static` then costs a consumer
/// a symbol reference, not a copy of the bytes in its metadata and object code.
pub(crate) const fn verified<const M: usize, const N: usize>(
    bytes: &[u8; M],
    kind: Kind,
) -> [u8; N] {
    if let Err(problem) = check(bytes, N, kind) {
        panic!("{}", problem.message());
    }
    match bytes.first_chunk::<N>() {
        Some(array) => *array,
        None => panic!("{}", Problem::WrongSize.message()),
    }
}
