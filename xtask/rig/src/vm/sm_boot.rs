//! The `conformance/sm-boot` tools: supermachine 0.7.108's own boot code (the HVF device tree,
//! the KVM x86_64 RAM layout), compiled from the pinned crate's source without building the
//! whole crate, and run by the rigs ([`super::hvf`], [`super::kvm_x86`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::{cargo, util};

/// Where cargo unpacked supermachine 0.7.108 (for the conformance workspace), whose boot code
/// the tools compile.
pub fn supermachine_src() -> Result<PathBuf> {
    cargo::source_dir(&cargo::conformance_manifest(), "supermachine", "0.7.108")
        .context("find supermachine 0.7.108's source (its boot code)")
}

/// The manifest of `conformance/sm-boot`.
pub fn manifest() -> PathBuf {
    util::root().join("conformance/sm-boot/Cargo.toml")
}

/// Binary `bin` of `conformance/sm-boot`, built once per run.
pub fn tool(bin: &str) -> Result<PathBuf> {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(p) = built.get(bin) {
        return Ok(p.clone());
    }
    let src = supermachine_src()?;
    let path = cargo::build_conformance_tool(&manifest(), bin, &[("SUPERMACHINE_SRC", &src)])
        .with_context(|| format!("build conformance/sm-boot's {bin} (supermachine's own code)"))?;
    built.insert(bin.to_string(), path.clone());
    Ok(path)
}
