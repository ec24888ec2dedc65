//! The host tools xtask builds and boots with, and where they are: a leaf module, so that
//! commands share them without importing each other.

use std::path::PathBuf;

use crate::spec::Arch;
use crate::util;

/// Debian's rustc-web, the toolchain of every shipped Rust binary.
pub const CARGO: &str = "/usr/bin/cargo";
/// Its rustc.
pub const RUSTC: &str = "/usr/bin/rustc";

/// The Rust target a crate's static guest binary is built for.
pub fn rust_target(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-unknown-linux-musl",
        Arch::Aarch64 => "aarch64-unknown-linux-musl",
    }
}

/// vhost-device-vsock from crates.io: the vhost-user vsock backend QEMU uses here.
pub const VHOST_VSOCK_VERSION: &str = "0.3.0";

/// Path of the pinned vhost-device-vsock binary.
pub fn vhost_device_vsock() -> PathBuf {
    util::cargo_home().join("bin").join("vhost-device-vsock")
}
