//! What the `sm-boot` tools share: their command-line flags.
//!
//! - `hvf-fdt`: the device tree supermachine's HVF backend gives an aarch64 guest;
//! - `kvm-layout`: the guest RAM supermachine's KVM backend lays out for an x86_64 guest.
//!
//! Each tool compiles the pinned supermachine crate's own source for its part (`include!`),
//! so the rigs boot guests with supermachine's code, not a copy of it.

pub mod flags;

use std::process::ExitCode;

/// How a tool ends: success, or its error on stderr after its name.
pub fn exit(tool: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool}: {e}");
            ExitCode::FAILURE
        }
    }
}
