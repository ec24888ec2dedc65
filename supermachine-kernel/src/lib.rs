//! Guest assets for [supermachine](https://github.com/supermachine/supermachine-kernel)
//! microVMs, for the architecture you compile for.
//!
//! This crate is a facade. The bytes live in one sub-crate per guest architecture, declared as
//! `[target.'cfg(target_arch = "…")'.dependencies]`, so Cargo downloads only the one that
//! matches your target and every crate stays under crates.io's size cap:
//!
//! | `target_arch` | re-exported crate | VMM backend | assets |
//! |---|---|---|---|
//! | `x86_64` | [`supermachine-kernel-x86-64`](https://docs.rs/supermachine-kernel-x86-64) | KVM | bzImage, busybox, supermachine-agent |
//! | `aarch64` | [`supermachine-kernel-aarch64`](https://docs.rs/supermachine-kernel-aarch64) | HVF | Image, init-oci, supermachine-agent, smpark.ko |
//!
//! The items both sub-crates have are re-exported here by name, so code written against them
//! compiles on both arches, and a sub-crate that lost one fails to compile here. The
//! arch-only items are marked with their arch (on docs.rs, switch the platform to see the
//! other's): `BUSYBOX_*` and `extract_busybox_to*` on x86_64 (the generated init's shell);
//! `INIT_OCI_*`, `SMPARK_KO_*`, `extract_init_oci_to*` and `extract_smpark_ko_to*` on aarch64.
//! Gate code that uses them with `#[cfg(target_arch = "…")]`.
//!
//! On any other `target_arch` this crate refuses to compile with a message naming the
//! supported ones: a VMM for another host has no guest assets to use, and a build error says
//! so earlier and more clearly than a missing item would. A VMM that needs the other arch's
//! guest (to bundle it, say) depends on that sub-crate directly: the sub-crates build on
//! every host.
//!
//! What the VMM builds around these files (initramfs, command line, the agent's protocol) is
//! in the crate's README.
//!
//! # Examples
//! ```no_run
//! use std::path::Path;
//!
//! // A directory only the VMM's user can write to, not a world-writable one.
//! let dir = Path::new("/var/lib/my-vmm/guest");
//! supermachine_kernel::extract_kernel_to_with_parents(&dir.join("kernel"))?;
//! supermachine_kernel::extract_supermachine_agent_to(&dir.join("supermachine-agent"))?;
//! println!("kernel {} ({} bytes)", supermachine_kernel::KERNEL_VERSION, supermachine_kernel::KERNEL_LEN);
//! #[cfg(target_arch = "x86_64")]
//! supermachine_kernel::extract_busybox_to(&dir.join("busybox"))?;
//! # Ok::<(), std::io::Error>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(target_arch = "x86_64")]
use supermachine_kernel_x86_64 as guest;

#[cfg(target_arch = "aarch64")]
use supermachine_kernel_aarch64 as guest;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "supermachine-kernel has guest assets for target_arch = \"x86_64\" and \"aarch64\" only; \
     depend on supermachine-kernel-x86-64 or supermachine-kernel-aarch64 directly to bundle \
     a guest of another architecture"
);

/// The README's examples are compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

// The cfg only keeps an unsupported arch down to the one compile_error! above; on docs.rs,
// `doc(cfg(all()))` keeps these common items unmarked.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[cfg_attr(docsrs, doc(cfg(all())))]
#[doc(inline)]
pub use guest::{
    extract_all_to, extract_kernel_to, extract_kernel_to_with_parents,
    extract_supermachine_agent_to, extract_supermachine_agent_to_with_parents, Asset, AssetPaths,
    ARCH, ASSETS, KERNEL, KERNEL_BYTES, KERNEL_LEN, KERNEL_SHA256, KERNEL_VERSION,
    SUPERMACHINE_AGENT, SUPERMACHINE_AGENT_BYTES, SUPERMACHINE_AGENT_LEN,
    SUPERMACHINE_AGENT_SHA256, SUPERMACHINE_AGENT_VERSION,
};

#[cfg(target_arch = "x86_64")]
#[cfg_attr(docsrs, doc(cfg(target_arch = "x86_64")))]
#[doc(inline)]
pub use guest::{
    extract_busybox_to, extract_busybox_to_with_parents, BUSYBOX, BUSYBOX_BYTES, BUSYBOX_LEN,
    BUSYBOX_SHA256, BUSYBOX_VERSION,
};

#[cfg(target_arch = "aarch64")]
#[cfg_attr(docsrs, doc(cfg(target_arch = "aarch64")))]
#[doc(inline)]
pub use guest::{
    extract_init_oci_to, extract_init_oci_to_with_parents, extract_smpark_ko_to,
    extract_smpark_ko_to_with_parents, INIT_OCI, INIT_OCI_BYTES, INIT_OCI_LEN, INIT_OCI_SHA256,
    INIT_OCI_VERSION, SMPARK_KO, SMPARK_KO_BYTES, SMPARK_KO_LEN, SMPARK_KO_SHA256,
    SMPARK_KO_VERSION,
};
