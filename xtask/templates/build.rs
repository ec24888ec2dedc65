//! Refuses to build this crate with bytes that are not the ones the manifest recorded.
//!
//! Checks each bundled file: present, not a Git LFS pointer, the right magic (bzImage `HdrS`,
//! arm64 Image `ARM\x64`, ELF class/machine/static-ness), and its SHA-256. No external tools
//! and no dependencies: SHA-256 is implemented below.

// @ASSETS@

fn main() {
    for c in ASSETS {
        println!("cargo:rerun-if-changed={}", c.file);
        if let Err(e) = check(c) {
            panic!(
                "\n\nsupermachine-kernel: bundled asset {}: {e}\n\
                 Rebuild the assets with `cargo xtask build-assets`, or restore them from git.\n\n",
                c.file
            );
        }
    }
}

