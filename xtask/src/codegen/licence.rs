//! What each sub-crate's bytes are licensed under, derived from the manifest: the `NOTICE`
//! file and the `license` expression of its `Cargo.toml`. The parts come from what each
//! binary is and how it was built (the manifest's `toolchain`), so a busybox rebuilt against
//! another C library, say, changes both without anyone editing them.

use std::fmt::Write as _;

use anyhow::{bail, Result};

use crate::manifest::Record;
use crate::spec::{Arch, AssetSpec};

/// Our own Rust code.
const OURS: &str = "MIT OR Apache-2.0";
const GPL2: &str = "GPL-2.0-only";
const GLIBC: &str = "LGPL-2.1-or-later";
const MUSL: &str = "MIT";
const LIBGCC: &str = "GPL-3.0-or-later WITH GCC-exception-3.1";

/// One licence inside a bundled file: its SPDX expression and what it covers.
struct Part {
    spdx: &'static str,
    what: &'static str,
}

/// The licences of what one bundled file contains.
fn parts(spec: &AssetSpec, rec: &Record) -> Vec<Part> {
    let musl = rec.toolchain.contains("musl");
    let mut v = Vec::new();
    match spec.name() {
        "kernel" => v.push(Part {
            spdx: GPL2,
            what: "Linux",
        }),
        "smpark.ko" => v.push(Part {
            spdx: GPL2,
            what: "the module (built against Linux)",
        }),
        "busybox" => {
            v.push(Part {
                spdx: GPL2,
                what: "busybox",
            });
            v.push(if musl {
                Part {
                    spdx: MUSL,
                    what: "musl libc, linked statically",
                }
            } else {
                Part {
                    spdx: GLIBC,
                    what: "glibc, linked statically by Debian",
                }
            });
        }
        _ => {
            v.push(Part {
                spdx: OURS,
                what: "the program, the Rust standard library and crates",
            });
            if musl {
                v.push(Part {
                    spdx: MUSL,
                    what: "musl libc, linked statically",
                });
            }
            if rec.toolchain.contains("libgcc_eh") {
                v.push(Part {
                    spdx: LIBGCC,
                    what: "GCC's libgcc_eh unwinder; the runtime library exception lets the \
                           program keep its own licence",
                });
            }
        }
    }
    v
}

/// The crate's SPDX `license` expression: our code's, then every other part, once each.
pub fn expression(present: &[(&AssetSpec, &Record)]) -> String {
    let mut terms = vec![format!("({OURS})")];
    for order in [GPL2, GLIBC, MUSL, LIBGCC] {
        let used = present
            .iter()
            .any(|(s, r)| parts(s, r).iter().any(|p| p.spdx == order));
        if used {
            terms.push(order.to_string());
        }
    }
    terms.join(" AND ")
}

/// `Cargo.toml` with its `license = "…"` line set to `expr`.
pub fn cargo_toml(current: &str, expr: &str) -> Result<String> {
    let mut out = String::new();
    let mut found = false;
    for line in current.lines() {
        if line.starts_with("license = ") {
            found = true;
            let _ = writeln!(out, "license = \"{expr}\"");
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
    if !found {
        bail!("Cargo.toml has no `license = ` line to generate");
    }
    Ok(out)
}

/// The crate's `NOTICE`.
pub fn notice(arch: Arch, present: &[(&AssetSpec, &Record)], repo: &str) -> String {
    let mut s = format!(
        "{} — third-party notices\n\n\
         The Rust code of this crate is MIT OR Apache-2.0 (LICENSE-MIT, LICENSE-APACHE).\n\
         The bundled binaries below are redistributed under the licences of what they contain,\n\
         listed with each; the crate's `license` expression is their union. GPL-2.0-only is in\n\
         COPYING. The complete corresponding source of every GPL/LGPL part is the Debian source\n\
         package named for it (for glibc and GCC: the Debian glibc and gcc-12 source packages of\n\
         the toolchain named), plus the configuration in this project's assets/ folder\n\
         ({repo}/tree/main/assets).\n\n",
        arch.crate_name()
    );
    for (spec, rec) in present {
        let _ = writeln!(s, "assets/{}", spec.file);
        for p in parts(spec, rec) {
            let _ = writeln!(s, "  licence: {} ({})", p.spdx, p.what);
        }
        let _ = writeln!(
            s,
            "  version: {}\n  source: {}\n  built with: {}\n  sha256: {}\n",
            rec.version, rec.source, rec.toolchain, rec.sha256
        );
    }
    s
}
