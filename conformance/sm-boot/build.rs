//! Copies supermachine's boot code from `SUPERMACHINE_SRC` (the unpacked supermachine 0.7.108
//! crate) into `OUT_DIR` for the tools to `include!`, so a wrong path fails with its cause, not
//! a missing file.
//!
//! One change is made: module doc lines (`//!`) become plain comments, because an
//! `include!`d file cannot carry inner doc comments. Every other byte is supermachine's.

use std::path::Path;

const PINNED: &str = "supermachine-0.7.108";
/// (source under the crate, name in `OUT_DIR`).
const FILES: [(&str, &str); 4] = [
    ("src/arch/aarch64/fdt.rs", "aarch64_fdt.rs"),
    ("src/arch/aarch64/layout.rs", "aarch64_layout.rs"),
    ("src/arch/x86_64/boot.rs", "x86_64_boot.rs"),
    ("src/arch/x86_64/mptable.rs", "x86_64_mptable.rs"),
];

fn main() {
    println!("cargo:rerun-if-env-changed=SUPERMACHINE_SRC");
    let src = std::env::var("SUPERMACHINE_SRC").unwrap_or_else(|_| {
        panic!(
            "SUPERMACHINE_SRC is not set: it names the unpacked {PINNED} crate \
             (`cargo xtask` sets it from the conformance workspace's cargo metadata)"
        )
    });
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let dir = Path::new(&src);
    assert!(
        dir.file_name().is_some_and(|n| n == PINNED),
        "SUPERMACHINE_SRC={src} is not the pinned {PINNED} crate"
    );
    for (f, name) in FILES {
        let p = dir.join(f);
        let text = std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{} is missing or unreadable: {e}", p.display()));
        let demoted: String = text
            .split_inclusive('\n')
            .map(|l| match l.strip_prefix("//!") {
                Some(rest) => format!("// {rest}"),
                None => l.to_string(),
            })
            .collect();
        let dest = Path::new(&out).join(name);
        std::fs::write(&dest, demoted).unwrap_or_else(|e| panic!("write {}: {e}", dest.display()));
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
