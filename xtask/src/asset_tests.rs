//! Tests over the shipped bytes: every manifest record matches its file (size and SHA-256:
//! the hash is checked here, in our CI, and never in a consumer's build), and the sub-crates'
//! compile-time check (`templates/check.rs`, used here directly) accepts them and rejects what
//! it must, down to a bad asset failing the crate's build with a clear error.

#[allow(dead_code)]
#[path = "../templates/check.rs"]
mod check;

use std::process::Command;

use check::{Kind, Problem};

use crate::manifest::Manifest;
use crate::spec::{self, Arch};
use crate::util;

fn kind(arch: Arch, k: spec::Kind) -> Kind {
    match k {
        spec::Kind::BzImage => Kind::BzImage,
        spec::Kind::Arm64Image => Kind::Arm64Image,
        spec::Kind::StaticExec => Kind::StaticExec(arch.elf_machine()),
        spec::Kind::Module => Kind::Module(arch.elf_machine()),
    }
}

#[test]
fn every_record_matches_its_file_and_kind() {
    let m = Manifest::load().unwrap();
    assert!(!m.assets.is_empty(), "the manifest lists no assets");
    for r in &m.assets {
        let arch = Arch::ALL.into_iter().find(|a| a.name() == r.arch).unwrap();
        let s = spec::assets(arch)
            .iter()
            .find(|s| s.name() == r.name)
            .unwrap();
        let bytes = std::fs::read(util::root().join(&r.file)).unwrap();
        assert_eq!(bytes.len() as u64, r.size, "{}", r.file);
        assert_eq!(util::sha256(&bytes), r.sha256, "{}", r.file);
        check::check(&bytes, r.size as usize, kind(arch, s.kind))
            .unwrap_or_else(|e| panic!("{}: {}", r.file, e.message()));
        assert!(!r.source.is_empty() && !r.toolchain.is_empty() && !r.version.is_empty());
    }
}

#[test]
fn every_x86_64_asset_is_built() {
    let m = Manifest::load().unwrap();
    for s in spec::assets(Arch::X86_64) {
        assert!(
            m.get(Arch::X86_64, s.name()).is_some(),
            "x86_64 {} missing",
            s.name()
        );
    }
}

#[cfg(feature = "vm")]
#[test]
fn crate_bytes_and_constants_match_the_manifest() {
    use supermachine_kernel_aarch64 as a;
    use supermachine_kernel_x86_64 as x;
    let m = Manifest::load().unwrap();
    // (arch, name, sha256 constant, bytes) of every asset of both crates.
    let mut seen: Vec<(Arch, &str, &str, &[u8])> = Vec::new();
    seen.extend(
        x::ASSETS
            .iter()
            .map(|a| (Arch::X86_64, a.name, a.sha256, a.bytes)),
    );
    seen.extend(
        a::ASSETS
            .iter()
            .map(|a| (Arch::Aarch64, a.name, a.sha256, a.bytes)),
    );
    for arch in Arch::ALL {
        let n = seen.iter().filter(|s| s.0 == arch).count();
        assert_eq!(n, spec::assets(arch).len(), "{}", arch.name());
    }
    for (arch, name, sha, bytes) in seen {
        let rec = m.get(arch, name).unwrap();
        assert_eq!(sha, rec.sha256, "{} {name}", arch.name());
        assert_eq!(bytes.len() as u64, rec.size);
        assert_eq!(
            util::sha256(bytes),
            rec.sha256,
            "{} {name}: the compiled-in bytes",
            arch.name()
        );
    }
    assert_eq!(
        x::KERNEL_LEN as u64,
        m.get(Arch::X86_64, "kernel").unwrap().size
    );
    // The items stay usable in const contexts, bytes included, though they live in statics.
    const { assert!(x::KERNEL_LEN > 0x206 && x::KERNEL_BYTES[0x202] == b'H') };
    const { assert!(a::SMPARK_KO_BYTES.len() == a::SMPARK_KO_LEN) };
}

#[cfg(feature = "vm")]
#[test]
fn debug_of_an_asset_does_not_dump_its_bytes() {
    let s = format!("{:?}", supermachine_kernel_x86_64::KERNEL);
    assert!(s.len() < 1000, "{} characters", s.len());
    assert!(s.contains("len: ") && s.contains("bzImage"), "{s}");
}

#[test]
fn agent_is_static_stripped_and_small() {
    let m = Manifest::load().unwrap();
    for r in m.assets.iter().filter(|r| r.name == "supermachine-agent") {
        assert!(
            r.size <= 1 << 20,
            "{} is {} bytes, over 1 MiB",
            r.file,
            r.size
        );
        let b = std::fs::read(util::root().join(&r.file)).unwrap();
        // No .symtab section name left: stripped.
        assert!(
            !b.windows(8).any(|w| w == b".symtab\0"),
            "{} is not stripped",
            r.file
        );
    }
}

fn elf64(machine: u16, e_type: u16, interp: bool) -> Vec<u8> {
    let mut b = vec![0u8; 64 + 56];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[16..18].copy_from_slice(&e_type.to_le_bytes());
    b[18..20].copy_from_slice(&machine.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&1u16.to_le_bytes());
    let p_type: u32 = if interp { 3 } else { 1 };
    b[64..68].copy_from_slice(&p_type.to_le_bytes());
    b
}

#[test]
fn check_rejects_wrong_bytes() {
    let mut far = elf64(62, 2, false);
    far[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    let cases: [(Vec<u8>, Kind, Result<(), Problem>); 11] = [
        (elf64(62, 2, false), Kind::StaticExec(62), Ok(())),
        (elf64(62, 3, false), Kind::StaticExec(62), Ok(())),
        (
            elf64(62, 2, true),
            Kind::StaticExec(62),
            Err(Problem::Dynamic),
        ),
        (
            elf64(183, 2, false),
            Kind::StaticExec(62),
            Err(Problem::WrongMachine),
        ),
        (elf64(183, 1, false), Kind::Module(183), Ok(())),
        (
            elf64(183, 2, false),
            Kind::Module(183),
            Err(Problem::WrongElfType),
        ),
        (
            elf64(62, 1, false),
            Kind::StaticExec(62),
            Err(Problem::WrongElfType),
        ),
        (far, Kind::StaticExec(62), Err(Problem::TruncatedElf)),
        (
            b"MZ not a kernel".to_vec(),
            Kind::BzImage,
            Err(Problem::NotBzImage),
        ),
        (
            vec![0u8; 100],
            Kind::Arm64Image,
            Err(Problem::NotArm64Image),
        ),
        (
            b"\x7fELF".to_vec(),
            Kind::StaticExec(62),
            Err(Problem::NotElf64),
        ),
    ];
    for (i, (bytes, kind, want)) in cases.iter().enumerate() {
        assert_eq!(check::check(bytes, bytes.len(), *kind), *want, "case {i}");
    }
    let lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n";
    assert_eq!(
        check::check(lfs, 4096, Kind::BzImage),
        Err(Problem::LfsPointer)
    );
    let big = elf64(62, 2, false);
    assert_eq!(
        check::check(&big, big.len() + 1, Kind::StaticExec(62)),
        Err(Problem::WrongSize)
    );
    for p in [Problem::LfsPointer, Problem::WrongSize, Problem::Dynamic] {
        assert!(p.message().starts_with("bundled "), "{}", p.message());
    }
}

/// A new crate directory `name` under the build dir with this `[dependencies]` table (and no
/// workspace), and a command that runs cargo in it with its own target dir.
fn scratch_crate(name: &str, deps: &str) -> (std::path::PathBuf, Command) {
    let dir = util::build_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
             [dependencies]\n{deps}\n\n[workspace]\n"
        ),
    )
    .unwrap();
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("CARGO_INCREMENTAL", "0");
    (dir, cargo)
}

/// A copy of the x86_64 crate in which the kernel is a Git LFS pointer and busybox is
/// truncated must fail to compile, naming both files and saying what is wrong with each.
#[test]
fn a_bad_asset_fails_the_crate_build_with_a_clear_error() {
    let src = Arch::X86_64.crate_dir();
    let (dir, mut cargo) = scratch_crate("bad-asset", "");
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    for e in std::fs::read_dir(src.join("src")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join("src").join(e.file_name())).unwrap();
    }
    std::fs::copy(src.join("README.md"), dir.join("README.md")).unwrap();
    for s in spec::assets(Arch::X86_64) {
        let from = src.join("assets").join(s.file);
        let to = dir.join("assets").join(s.file);
        match s.name() {
            "kernel" => std::fs::write(
                &to,
                "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 2974720\n",
            )
            .unwrap(),
            "busybox" => {
                let b = std::fs::read(&from).unwrap();
                std::fs::write(&to, &b[..b.len() / 2]).unwrap()
            }
            _ => std::os::unix::fs::symlink(&from, &to).unwrap(),
        }
    }
    let out = cargo
        .args(["check", "--offline", "--quiet", "--lib"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the bad crate compiled");
    for want in [
        "E0080",
        "assets/bzImage",
        Problem::LfsPointer.message(),
        "assets/busybox",
        "does not have the size the manifest records",
    ] {
        assert!(err.contains(want), "no {want:?} in:\n{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A consumer that calls only `extract_kernel_to` carries the kernel's bytes and none of the
/// others: the bytes' `static`s stay separate sections that the linker drops when unused.
#[test]
fn a_consumer_of_one_asset_links_only_its_bytes() {
    let facade = util::root().join("supermachine-kernel");
    let deps = format!(
        "supermachine-kernel = {{ path = \"{}\" }}",
        facade.display()
    );
    let (dir, mut cargo) = scratch_crate("one-asset", &deps);
    std::fs::write(
        dir.join("src/main.rs"),
        "fn main() {\n    let _ = supermachine_kernel::extract_kernel_to(std::path::Path::new(\"/nonexistent/k\"));\n}\n",
    )
    .unwrap();
    let status = cargo
        .args(["build", "--offline", "--quiet"])
        .status()
        .unwrap();
    assert!(status.success());
    let bin = std::fs::read(dir.join("target/debug/one-asset")).unwrap();
    let m = Manifest::load().unwrap();
    for r in m.assets.iter().filter(|r| r.arch == "x86_64") {
        let bytes = std::fs::read(util::root().join(&r.file)).unwrap();
        let middle = &bytes[bytes.len() / 2..bytes.len() / 2 + 256];
        let linked = bin.windows(middle.len()).any(|w| w == middle);
        assert_eq!(linked, r.name == "kernel", "{} linked: {linked}", r.name);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
