//! Checks `SUPERMACHINE_SRC` (the unpacked supermachine 0.7.108 crate) before `main.rs`
//! `include!`s its device-tree code, so a wrong path fails with its cause, not a missing file.

use std::path::Path;

const PINNED: &str = "supermachine-0.7.108";
const FILES: [&str; 2] = ["src/arch/aarch64/fdt.rs", "src/arch/aarch64/layout.rs"];

fn main() {
    println!("cargo:rerun-if-env-changed=SUPERMACHINE_SRC");
    let src = std::env::var("SUPERMACHINE_SRC").unwrap_or_else(|_| {
        panic!(
            "SUPERMACHINE_SRC is not set: it names the unpacked {PINNED} crate \
             (`cargo xtask` sets it from the conformance workspace's cargo metadata)"
        )
    });
    let dir = Path::new(&src);
    assert!(
        dir.file_name().is_some_and(|n| n == PINNED),
        "SUPERMACHINE_SRC={src} is not the pinned {PINNED} crate"
    );
    for f in FILES {
        let p = dir.join(f);
        assert!(p.is_file(), "{} is missing", p.display());
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
