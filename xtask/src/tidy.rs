//! House rules that the compiler and clippy do not check, run by `cargo test --workspace` (so
//! by `cargo xtask test`), as rust-analyzer's `tidy.rs` does:
//! - every published item of the product crates is documented;
//! - no Rust file is over [`MAX_LINES`] lines, but for the few in [`LONG_FILES`];
//! - no `unwrap()` outside tests;
//! - every `unsafe` block carries a `// SAFETY:` comment (clippy's
//!   `undocumented_unsafe_blocks`, denied for every member crate: checked here that it stays so);
//! - the README's command list is `cargo xtask --help`.
//!
//! The checks read the sources as text, blanking comments and string literals first
//! ([`scan::Source`]), so they see code the way a reviewer would, without a parser dependency.

mod scan;

use std::collections::BTreeSet;
use std::path::Path;

use crate::util;
use scan::{is_test_file, sources, test_module_files};

/// The longest a Rust file may be.
const MAX_LINES: usize = 500;

/// Files allowed over [`MAX_LINES`], each with why it is not split now. Keep it short.
const LONG_FILES: &[(&str, &str)] = &[];

/// The product crates' sources: what `missing_docs` and the doc check cover.
const PRODUCT_DIRS: [&str; 3] = [
    "supermachine-kernel/src",
    "supermachine-kernel-x86-64/src",
    "supermachine-kernel-aarch64/src",
];

#[test]
fn no_file_over_the_line_limit() {
    let mut over = Vec::new();
    let mut allowed_and_seen = BTreeSet::new();
    for s in sources() {
        if s.raw.len() <= MAX_LINES {
            continue;
        }
        if LONG_FILES.iter().any(|(p, _)| *p == s.rel) {
            allowed_and_seen.insert(s.rel.clone());
        } else {
            over.push(format!("{}: {} lines", s.rel, s.raw.len()));
        }
    }
    assert!(
        over.is_empty(),
        "over {MAX_LINES} lines (split them): {over:#?}"
    );
    let stale: Vec<_> = LONG_FILES
        .iter()
        .filter(|(p, _)| !allowed_and_seen.contains(*p))
        .collect();
    assert!(
        stale.is_empty(),
        "in LONG_FILES but no longer over {MAX_LINES} lines (remove them): {stale:#?}"
    );
}

#[test]
fn no_unwrap_outside_tests() {
    let sources = sources();
    let test_modules = test_module_files(&sources);
    let mut found = Vec::new();
    for s in &sources {
        if is_test_file(&s.rel, &test_modules) {
            continue;
        }
        for (i, line) in s.code.iter().enumerate() {
            if !s.test[i] && line.contains(".unwrap()") {
                found.push(format!("{}:{}: {}", s.rel, i + 1, s.raw[i].trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "unwrap() outside tests (return the error, or `expect` saying why it cannot fail): {found:#?}"
    );
}

#[test]
fn published_items_are_documented() {
    let root = util::root();
    // The compiler does the real check: every product crate denies missing_docs...
    for lib in [
        "supermachine-kernel/src/lib.rs",
        "supermachine-kernel-x86-64/src/lib.rs",
        "supermachine-kernel-aarch64/src/lib.rs",
        "assets/agent/src/lib.rs",
    ] {
        let text = std::fs::read_to_string(root.join(lib)).expect(lib);
        assert!(
            text.contains("#![deny(missing_docs)]"),
            "{lib}: the crate root must deny missing_docs"
        );
    }
    // ...and, so that a crate cannot quietly `allow` it, every `pub` item, field and module
    // here has a doc comment (`///` above it, past its attributes, or `//!` in its file).
    let sources = sources();
    let test_modules = test_module_files(&sources);
    let mut undocumented = Vec::new();
    for s in &sources {
        let product = PRODUCT_DIRS.iter().any(|d| s.rel.starts_with(d))
            || (s.rel.starts_with("assets/agent/src/") && !s.rel.contains("/bin/"));
        if !product || is_test_file(&s.rel, &test_modules) {
            continue;
        }
        for (i, line) in s.code.iter().enumerate() {
            let t = line.trim_start();
            if s.test[i] || !t.starts_with("pub ") || t.starts_with("pub use ") {
                continue;
            }
            let mut k = i;
            while k > 0 && s.raw[k - 1].trim_start().starts_with("#[") {
                k -= 1;
            }
            let documented = k > 0 && s.raw[k - 1].trim_start().starts_with("///");
            let module_doc = t
                .strip_prefix("pub mod ")
                .and_then(|n| n.strip_suffix(';'))
                .is_some_and(|name| {
                    let dir = Path::new(&s.rel).parent().unwrap_or(Path::new(""));
                    [format!("{name}.rs"), format!("{name}/mod.rs")]
                        .iter()
                        .any(|f| {
                            std::fs::read_to_string(root.join(dir).join(f))
                                .is_ok_and(|m| m.trim_start().starts_with("//!"))
                        })
                });
            if !documented && !module_doc {
                undocumented.push(format!("{}:{}: {}", s.rel, i + 1, s.raw[i].trim()));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "published items without a doc comment: {undocumented:#?}"
    );
}

#[test]
fn unsafe_blocks_need_a_safety_comment_in_every_crate() {
    let root = util::root();
    let ws = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    for lint in [
        "undocumented_unsafe_blocks = \"deny\"",
        "missing_safety_doc = \"deny\"",
        "unsafe_op_in_unsafe_fn = \"deny\"",
    ] {
        assert!(ws.contains(lint), "workspace lints lost `{lint}`");
    }
    let members = ws
        .split("members = [")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .expect("workspace members");
    for m in members.split(',').map(|m| m.trim().trim_matches('"')) {
        if m.is_empty() {
            continue;
        }
        let toml = std::fs::read_to_string(root.join(m).join("Cargo.toml")).expect(m);
        assert!(
            toml.contains("[lints]\nworkspace = true"),
            "{m}/Cargo.toml must inherit the workspace lints"
        );
    }
    // The crates outside the workspace: conformance forbids unsafe; fuzz targets have none.
    let conformance = std::fs::read_to_string(root.join("conformance/Cargo.toml")).expect("conf");
    assert!(conformance.contains("unsafe_code = \"forbid\""));
    for s in sources().iter().filter(|s| s.rel.starts_with("fuzz/")) {
        assert!(
            !s.code.iter().any(|l| l.contains("unsafe")),
            "{}: unsafe in a fuzz target, outside the workspace lints",
            s.rel
        );
    }
}

#[test]
fn readme_command_list_is_the_usage() {
    let readme = std::fs::read_to_string(util::root().join("README.md")).expect("README.md");
    let begin = "<!-- commands:begin (`cargo xtask --help`) -->\n```text\n";
    let end = "\n```\n<!-- commands:end -->";
    let listed = readme
        .split_once(begin)
        .and_then(|(_, r)| r.split_once(end))
        .map(|(l, _)| l)
        .expect("README.md: the command list between the commands:begin/end markers");
    assert_eq!(
        listed,
        crate::flags::USAGE,
        "README.md's command list differs from `cargo xtask --help`: paste the usage there"
    );
}
