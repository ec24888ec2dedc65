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
//! Everything of the matching sub-crate is re-exported here, so code written against the
//! common items compiles on both:
//! `KERNEL_BYTES`, `KERNEL_LEN`, `KERNEL_SHA256`, `KERNEL_VERSION`, `SUPERMACHINE_AGENT_*`,
//! `extract_kernel_to{,_with_parents}`, `extract_supermachine_agent_to{,_with_parents}`,
//! `ASSETS` and `extract_all_to`.
//!
//! Arch-only items exist only on their arch (see them on docs.rs by switching the platform):
//! - x86_64: `BUSYBOX_*` and `extract_busybox_to{,_with_parents}` (the generated init's shell);
//! - aarch64: `INIT_OCI_*`, `SMPARK_KO_*`, `extract_init_oci_to*`, `extract_smpark_ko_to*`.
//!
//! Gate arch-only code with `#[cfg(target_arch = "…")]`.
//!
//! On any other `target_arch` this crate refuses to compile with a message naming the
//! supported ones: a VMM for another host has no guest assets to use, and a build error says
//! so earlier and more clearly than a missing item would. A VMM that needs the other arch's
//! guest (to bundle it, say) depends on that sub-crate directly: the sub-crates build on
//! every host.
//!
//! # Examples
//! ```no_run
//! use std::path::Path;
//!
//! let dir = Path::new("/var/lib/my-vmm/guest");
//! supermachine_kernel::extract_kernel_to_with_parents(&dir.join("kernel"))?;
//! supermachine_kernel::extract_supermachine_agent_to(&dir.join("supermachine-agent"))?;
//! println!("kernel {} ({} bytes)", supermachine_kernel::KERNEL_VERSION, supermachine_kernel::KERNEL_LEN);
//! #[cfg(target_arch = "x86_64")]
//! supermachine_kernel::extract_busybox_to(&dir.join("busybox"))?;
//! # Ok::<(), std::io::Error>(())
//! ```
#![deny(missing_docs)]

#[cfg(target_arch = "x86_64")]
#[doc(inline)]
pub use supermachine_kernel_x86_64::*;

#[cfg(target_arch = "aarch64")]
#[doc(inline)]
pub use supermachine_kernel_aarch64::*;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "supermachine-kernel has guest assets for target_arch = \"x86_64\" and \"aarch64\" only; \
     depend on supermachine-kernel-x86-64 or supermachine-kernel-aarch64 directly to bundle \
     a guest of another architecture"
);

/// The arch-only API is reachable through the facade: `cargo xtask test` checks this crate
/// for both targets, so a missing re-export fails to compile.
#[cfg(target_arch = "x86_64")]
const _: () = {
    let _: (&[u8], usize) = (BUSYBOX_BYTES, BUSYBOX_LEN);
    let _: fn(&std::path::Path) -> std::io::Result<()> = extract_busybox_to;
};
#[cfg(target_arch = "aarch64")]
const _: () = {
    let _: (&[u8], usize, &[u8], usize) =
        (INIT_OCI_BYTES, INIT_OCI_LEN, SMPARK_KO_BYTES, SMPARK_KO_LEN);
    let _: [fn(&std::path::Path) -> std::io::Result<()>; 4] = [
        extract_init_oci_to,
        extract_init_oci_to_with_parents,
        extract_smpark_ko_to,
        extract_smpark_ko_to_with_parents,
    ];
};
