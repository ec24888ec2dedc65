//! `cargo xtask conformance [--assets ours|upstream|both|ours-own-init]`: supermachine
//! 0.7.108's own public client driving x86_64 guests, ours and upstream's 0.7.70 side by side.
//!
//! The client side is the `conformance/` workspace (its own lock file, depending on
//! `supermachine = "=0.7.108"`). This module is the VMM side that supermachine would be, as
//! far as it can be here (`/dev/kvm` on these hosts is too slow to boot a guest):
//!
//! 1. builds the conformance binary;
//! 2. builds the initramfs with it, which calls `supermachine::Image::build_kvm_initramfs` on
//!    the set's agent and busybox, so the guest runs supermachine's own generated `/init`;
//! 3. builds one zstd squashfs root image for every set: the project's default busybox rootfs
//!    plus a `/.supermachine/run-workload` (the script comes from the binary);
//! 4. boots supermachine's KVM machine under QEMU TCG ([`crate::vm::kvm_x86`]: its own
//!    `setup_boot` layout, 1 vCPU on the PIC and PIT) with supermachine's own vsock device
//!    and muxer behind QEMU's vhost-user-vsock (`sm-vsock`, [`crate::vm::sm_vsock`]; guest CID 3), the root
//!    image as the first virtio-blk disk and supermachine's KVM command line
//!    ([`crate::vm::init::supermachine_cmdline`]);
//! 5. hands supermachine's client the exec socket supermachine's own `vsock_mux::start_exec`
//!    opens for guest port 1028, which is what its VMM hands its client (the bench boots
//!    the same sessions on vhost-device-vsock, bridged by [`session::Bridge`]);
//! 6. runs `supermachine-conformance check` against it and reads back its JSON report, then
//!    times [`RTT_EXECS`] execs of `true` (`supermachine-conformance rtt`).
//!
//! `--assets ours-own-init` boots our assets in the initramfs xtask itself generates
//! ([`crate::vm::init`], what `cargo xtask run` and the end-to-end suite boot) instead of
//! supermachine's, and compares the two initramfs layouts entry by entry.
//!
//! One deviation from supermachine's cold boot, on purpose: the client is started once the
//! guest's console says the agent listens (or after [`LISTEN_WAIT`] without that line), not
//! from the first instant. vhost-device-vsock 0.3.0 was seen to wedge for good when a
//! hybrid-vsock connection arrived before the guest's vsock driver was up (the bench still
//! runs on it); supermachine's own device is held to the same start for comparable figures. The client's own readiness gate (`/bin/true` every 200 ms) still
//! runs first in the suite, and on our assets a burst of execs is fired before anything else.
//!
//! Upstream's assets come from cargo itself: `cargo metadata` on the conformance workspace
//! names the `supermachine-kernel-x86-64` 0.7.70 package that supermachine pins, and its
//! `.xz` files are decompressed with `xz -dc`.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;
pub use vm_rig::conformance::lint;
use vm_rig::conformance::{
    build_binary, root_image, supermachine_initramfs, AssetSet, Session, Which, AGENT_OVERRIDE,
    RTT_EXECS,
};

use crate::vm;
use crate::vm::qemu::VsockDevice;
use crate::{progress, util};

mod bundled;

/// Upstream's checks that are known to fail, with why (recorded, never fatal).
const UPSTREAM_KNOWN: &[(&str, &str)] = &[
    (
        "tty-winsize",
        "supermachine's x86 init never mounts devpts, and the 0.7.70 agent does not either",
    ),
    (
        "exec-signals-default",
        "the 0.7.70 agent leaves SIGPIPE ignored in its execs: busybox `yes | head` never ends",
    ),
];

/// Compares the initramfs xtask generates ([`vm::init::initramfs`]) with supermachine's
/// for the same busybox and agent: the same entries, modes and payloads, in the same order
/// (the `/init` scripts differ in wording, not in what they do). Returns a report row.
fn layout_row(bin: &Path, set: &AssetSet, dir: &Path) -> Value {
    let t = Instant::now();
    let result = (|| -> Result<String> {
        let theirs_path = dir.join("supermachine-initrd.cpio");
        supermachine_initramfs(bin, set, &theirs_path)?;
        let theirs = vm::cpio::parse(&std::fs::read(&theirs_path)?)
            .map_err(|e| anyhow::anyhow!("supermachine's initramfs: {e}"))?;
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        let ours = vm::cpio::parse(&vm::init::initramfs(
            &read(&set.busybox)?,
            &read(&set.agent)?,
        ))
        .map_err(|e| anyhow::anyhow!("our initramfs: {e}"))?;
        let shape = |v: &[vm::cpio::Entry]| -> Vec<(String, u32, Option<Vec<u8>>)> {
            v.iter()
                .map(|e| {
                    // Compare every payload but the init script's.
                    let data = (e.name != "init").then(|| e.data.clone());
                    (e.name.clone(), e.mode, data)
                })
                .collect()
        };
        if shape(&theirs) != shape(&ours) {
            let names = |v: &[vm::cpio::Entry]| {
                v.iter()
                    .map(|e| format!("{} {:o}", e.name, e.mode))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            bail!(
                "supermachine: [{}]; ours: [{}]",
                names(&theirs),
                names(&ours)
            );
        }
        Ok(format!(
            "{} entries match supermachine's (init script aside)",
            ours.len()
        ))
    })();
    let (pass, detail) = match result {
        Ok(d) => (true, d),
        Err(e) => (false, format!("{e:#}")),
    };
    serde_json::json!({
        "name": "initramfs-layout",
        "pass": pass,
        "ms": t.elapsed().as_millis() as u64,
        "detail": detail,
    })
}

/// Prints a row xtask adds to a report, as the client prints its own.
fn print_row(row: &Value) {
    println!(
        "{} {:<24} {:>7} ms  {}",
        if row["pass"] == true { "PASS" } else { "FAIL" },
        row["name"].as_str().unwrap_or("?"),
        row["ms"],
        row["detail"].as_str().unwrap_or("")
    );
}

/// One check's outcome, as the client reported it.
#[derive(Clone, Debug)]
struct Row {
    name: String,
    pass: bool,
    ms: u64,
    detail: String,
}

/// The rows of one set's report (or one failing row when the set could not be run).
fn rows(report: &Result<Value>) -> Vec<Row> {
    match report {
        Err(e) => vec![Row {
            name: "boot".into(),
            pass: false,
            ms: 0,
            detail: format!("{e:#}").lines().next().unwrap_or("").to_string(),
        }],
        Ok(v) => v["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| Row {
                name: c["name"].as_str().unwrap_or("?").to_string(),
                pass: c["pass"].as_bool() == Some(true),
                ms: c["ms"].as_u64().unwrap_or(0),
                detail: c["detail"].as_str().unwrap_or("").to_string(),
            })
            .collect(),
    }
}

/// Boots each set in turn, runs the suite, prints the table; fails when ours fails a check.
pub fn run(which: &[Which]) -> Result<()> {
    let start = Instant::now();
    let bin = build_binary()?;
    let dir = vm::scratch_dir();
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&bin, &dir, which);
    let _ = std::fs::remove_dir_all(&dir);
    let results = result?;
    let failed = print_table(&results);
    let record = util::build_dir().join("conformance.json");
    let doc: serde_json::Map<String, Value> = results
        .iter()
        .map(|(w, r)| {
            let v = match r {
                Ok(v) => v.clone(),
                Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
            };
            (w.name().to_string(), v)
        })
        .collect();
    util::write_atomic(&record, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    progress!(
        "conformance: {:.0?} in all; reports in {}",
        start.elapsed(),
        record.display()
    );
    if !failed.is_empty() {
        bail!(
            "our assets failed {} conformance check(s): {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn run_in(bin: &Path, dir: &Path, which: &[Which]) -> Result<Vec<(Which, Result<Value>)>> {
    let root = root_image(bin, dir)?;
    let mut out = Vec::new();
    for &w in which {
        let t = Instant::now();
        let report = (|| {
            let mut set = match w {
                Which::Ours | Which::OursOwnInit => AssetSet::ours(w)?,
                Which::Upstream => AssetSet::upstream()?,
            };
            // Ours boots what supermachine, built with our crates, extracts from them (unless
            // an agent override is under test).
            let bundled_row = if w == Which::Ours {
                let (b, row) = bundled::extract(bin, &root, dir)?;
                print_row(&row);
                if std::env::var_os(AGENT_OVERRIDE).is_none() {
                    set.kernel = b.kernel;
                    set.initrd = Some(b.initrd);
                }
                Some(row)
            } else {
                None
            };
            let s = Session::boot(bin, &set, &root, VsockDevice::Supermachine)?;
            let mut report = s.check(bin, w != Which::Upstream)?;
            if let (Some(row), Some(checks)) = (bundled_row, report["checks"].as_array_mut()) {
                checks.insert(0, row);
            }
            match s.rtt(bin, RTT_EXECS) {
                Ok(us) => report["rtt_us"] = us.into(),
                Err(e) => progress!("conformance: {} exec round trip: {e:#}", w.name()),
            }
            if w == Which::OursOwnInit {
                let row = layout_row(bin, &set, s.vm.dir());
                print_row(&row);
                if let Some(checks) = report["checks"].as_array_mut() {
                    checks.insert(0, row);
                }
            }
            Ok(report)
        })();
        progress!(
            "conformance: {} assets done in {:.0?}",
            w.name(),
            t.elapsed()
        );
        out.push((w, report));
    }
    Ok(out)
}

/// Prints `check | ours | upstream`, then the details of every failure. Returns the names of
/// the checks ours failed (all of them when ours was run and could not boot).
fn print_table(results: &[(Which, Result<Value>)]) -> Vec<String> {
    let sets: Vec<(Which, Vec<Row>)> = results.iter().map(|(w, r)| (*w, rows(r))).collect();
    let mut names: Vec<String> = Vec::new();
    for (_, rs) in &sets {
        for r in rs {
            if !names.contains(&r.name) {
                names.push(r.name.clone());
            }
        }
    }
    let cell = |rs: &[Row], name: &str| match rs.iter().find(|r| r.name == name) {
        Some(r) if r.pass => format!("pass {:>6} ms", r.ms),
        Some(r) => format!("FAIL {:>6} ms", r.ms),
        None => "-".into(),
    };
    let mut header = format!("{:<24}", "check");
    for (w, _) in &sets {
        header.push_str(&format!(" | {:<14}", w.name()));
    }
    println!("\n{header}\n{}", "-".repeat(header.len()));
    for n in &names {
        let mut line = format!("{n:<24}");
        for (_, rs) in &sets {
            line.push_str(&format!(" | {:<14}", cell(rs, n)));
        }
        println!("{line}");
    }
    // Each set on its own kernel: the bench compares agents on one kernel.
    let mut line = format!("{:<24}", "exec `true` rtt, median");
    for (w, _) in &sets {
        let us = results
            .iter()
            .find(|(x, _)| x == w)
            .and_then(|(_, r)| r.as_ref().ok())
            .and_then(|v| v["rtt_us"].as_u64());
        let cell = us.map_or("-".to_string(), |us| format!("{us:>9} µs"));
        line.push_str(&format!(" | {cell:<14}"));
    }
    println!("{line}\n");
    let mut ours_failed = Vec::new();
    for (w, rs) in &sets {
        for r in rs.iter().filter(|r| !r.pass) {
            let known = UPSTREAM_KNOWN
                .iter()
                .find(|(n, _)| *w == Which::Upstream && *n == r.name)
                .map(|(_, why)| format!(" [known: {why}]"))
                .unwrap_or_default();
            println!("{} {}: {}{known}", w.name(), r.name, r.detail);
            if *w != Which::Upstream {
                ours_failed.push(r.name.clone());
            }
        }
    }
    ours_failed
}
