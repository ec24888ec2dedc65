//! `assets/manifest.json`: what every shipped byte is and where it came from.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::spec::Arch;
use crate::util;

/// One shipped file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// Asset name (see `spec::assets`).
    pub name: String,
    /// Path from the workspace root.
    pub file: String,
    /// Bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Version of what was built.
    pub version: String,
    /// Pinned sources and recipe.
    pub source: String,
    /// Compilers and tools that built it.
    pub toolchain: String,
    /// SHA-256 over the build's inputs; build-assets skips a rebuild when it is unchanged.
    pub inputs_sha256: String,
}

/// The whole manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Provenance note.
    pub generated_by: String,
    /// Records sorted by arch, then API order.
    pub assets: Vec<Record>,
}

/// Path of the manifest.
pub fn path() -> PathBuf {
    util::root().join("assets").join("manifest.json")
}

impl Manifest {
    /// Loads the manifest (empty when there is none yet).
    pub fn load() -> Result<Manifest> {
        let p = path();
        if !p.exists() {
            return Ok(Manifest::default());
        }
        let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", p.display()))
    }

    /// Writes the manifest, records in a stable order.
    pub fn save(&mut self) -> Result<()> {
        self.generated_by = "cargo xtask build-assets; do not edit".into();
        let order = |r: &Record| {
            let arch = Arch::ALL
                .iter()
                .position(|a| a.name() == r.arch)
                .unwrap_or(9);
            let spec = Arch::ALL
                .get(arch)
                .and_then(|a| {
                    crate::spec::assets(*a)
                        .iter()
                        .position(|s| s.name() == r.name)
                })
                .unwrap_or(9);
            (arch, spec)
        };
        self.assets.sort_by_key(order);
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        util::write_atomic(&path(), text.as_bytes())
    }

    /// The record of `arch`/`name`.
    pub fn get(&self, arch: Arch, name: &str) -> Option<&Record> {
        self.assets
            .iter()
            .find(|r| r.arch == arch.name() && r.name == name)
    }

    /// Inserts or replaces a record.
    pub fn put(&mut self, r: Record) {
        self.assets
            .retain(|o| !(o.arch == r.arch && o.name == r.name));
        self.assets.push(r);
    }
}
