//! The test rig under `cargo xtask`, apart from the build tool and the suites: it boots our
//! guest as supermachine boots it and gives the suites (`xtask/src/e2e/`) and the bench
//! (`xtask/src/bench/`) a machine to drive.
//!
//! - [`vm`]: the machine (supermachine's KVM x86_64 and HVF aarch64 machines under QEMU, its
//!   vsock device and muxer, QMP, the rootfs and initramfs layouts, the network namespace);
//! - [`conformance`]: supermachine 0.7.108's own client against a booted guest, the session
//!   the conformance suite and the bench share;
//! - [`upstream`]: upstream's 0.7.70 assets, fetched for the bench and the conformance
//!   control run;
//! - [`cpio`]: the initramfs writer;
//! - [`spec`], [`pins`], [`toolchain`], [`cargo`], [`debian`], [`util`]: what exists (arches,
//!   assets), pinned sources, the tools and helpers the rig and the build tool share.
//!
//! Without the `vm` feature only the parts that need no shipped bytes build: what the build
//! tool bootstraps a tree with, and what the fuzz targets use.

pub mod cargo;
#[cfg(feature = "vm")]
pub mod conformance;
pub mod cpio;
pub mod debian;
pub mod pins;
pub mod spec;
pub mod toolchain;
#[cfg(feature = "vm")]
pub mod upstream;
pub mod util;
#[cfg(feature = "vm")]
pub mod vm;
