//! Tests over the shipped bytes: every manifest record matches its file, and the sub-crates'
//! build-time check (`templates/build_checks.rs`, used here directly) accepts them and rejects
//! what it must.

#[allow(dead_code)]
#[path = "../templates/build_checks.rs"]
mod build_checks;

use build_checks::{check_kind, sha256_hex, Kind};

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
            .find(|s| s.name == r.name)
            .unwrap();
        let bytes = std::fs::read(util::root().join(&r.file)).unwrap();
        assert_eq!(bytes.len() as u64, r.size, "{}", r.file);
        assert_eq!(util::sha256(&bytes), r.sha256, "{}", r.file);
        check_kind(&bytes, &kind(arch, s.kind)).unwrap_or_else(|e| panic!("{}: {e}", r.file));
        assert!(!r.source.is_empty() && !r.toolchain.is_empty() && !r.version.is_empty());
    }
}

#[test]
fn every_x86_64_asset_is_built() {
    let m = Manifest::load().unwrap();
    for s in spec::assets(Arch::X86_64) {
        assert!(
            m.get(Arch::X86_64, s.name).is_some(),
            "x86_64 {} missing",
            s.name
        );
    }
}

#[cfg(feature = "vm")]
#[test]
fn crate_constants_match_the_manifest() {
    use supermachine_kernel_x86_64 as k;
    let m = Manifest::load().unwrap();
    let rec = |n: &str| m.get(Arch::X86_64, n).unwrap().clone();
    assert_eq!(k::KERNEL_SHA256, rec("kernel").sha256);
    assert_eq!(k::KERNEL_LEN as u64, rec("kernel").size);
    assert_eq!(k::BUSYBOX_SHA256, rec("busybox").sha256);
    assert_eq!(
        k::SUPERMACHINE_AGENT_SHA256,
        rec("supermachine-agent").sha256
    );
    assert_eq!(
        util::sha256(k::SUPERMACHINE_AGENT_BYTES),
        k::SUPERMACHINE_AGENT_SHA256
    );
    assert_eq!(k::ASSETS.len(), 3);
    const { assert!(k::KERNEL_LEN > 0) };
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

#[test]
fn sha256_matches_a_reference_implementation() {
    for len in [0usize, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 100_000] {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
        assert_eq!(sha256_hex(&data), util::sha256(&data), "length {len}");
    }
}

#[test]
fn build_check_rejects_wrong_bytes() {
    let elf64 = |machine: u16, e_type: u16, interp: bool| {
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
    };
    assert!(check_kind(&elf64(62, 2, false), &Kind::StaticExec(62)).is_ok());
    let e = check_kind(&elf64(62, 2, true), &Kind::StaticExec(62)).unwrap_err();
    assert!(e.contains("dynamically linked"), "{e}");
    let e = check_kind(&elf64(183, 2, false), &Kind::StaticExec(62)).unwrap_err();
    assert!(e.contains("machine 183"), "{e}");
    assert!(check_kind(&elf64(183, 1, false), &Kind::Module(183)).is_ok());
    assert!(check_kind(&elf64(183, 2, false), &Kind::Module(183)).is_err());
    assert!(check_kind(b"MZ not a kernel", &Kind::BzImage)
        .unwrap_err()
        .contains("HdrS"));
    assert!(check_kind(&[0u8; 100], &Kind::Arm64Image)
        .unwrap_err()
        .contains("arm64"));
    assert!(check_kind(b"\x7fELF", &Kind::StaticExec(62)).is_err());

    let dir = util::build_dir().join(format!("check-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lfs = dir.join("lfs");
    std::fs::write(
        &lfs,
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n",
    )
    .unwrap();
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let c = build_checks::Check {
        file: leak(lfs.display().to_string()),
        sha256: "",
        kind: Kind::BzImage,
    };
    assert!(build_checks::check(&c).unwrap_err().contains("Git LFS"));
    let good = dir.join("good");
    std::fs::write(&good, elf64(62, 2, false)).unwrap();
    let c = build_checks::Check {
        file: leak(good.display().to_string()),
        sha256: "00",
        kind: Kind::StaticExec(62),
    };
    assert!(build_checks::check(&c)
        .unwrap_err()
        .contains("manifest records 00"));
    let c = build_checks::Check {
        file: "/no/such/asset",
        sha256: "00",
        kind: Kind::BzImage,
    };
    assert!(build_checks::check(&c).unwrap_err().contains("cannot read"));
    std::fs::remove_dir_all(&dir).unwrap();
}
