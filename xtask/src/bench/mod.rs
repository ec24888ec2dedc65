//! `cargo xtask bench [--arch x86_64|aarch64|all] [--only PART]... [--quick] [--update-readme]`
//!
//! Every figure is measured next to an anchor **in the same run**, because absolute times on
//! shared machines drift while ratios hold:
//! - [`crate::upstream`]: the published 0.7.70 crates, fetched with cargo at bench time (skipped,
//!   and said so, when crates.io cannot be reached);
//! - the transport's own limit, from a raw vsock server in the same guest ([`exec`], and
//!   next to guest networking on supermachine's own muxer, [`tsi`]).
//!
//! Prints a table, writes `target/bench/report.json` and `target/bench/chart.svg`, and with
//! `--update-readme` rewrites the README between `<!-- bench:start -->` and `<!-- bench:end -->`.
//! The transport figures (exec, streaming, TSI) and agent readiness ([`ready`]) are sampled
//! in rounds, each round one sample of ours next to one of its anchor's, and report medians
//! with their interquartile ranges, and the ratio's median with its 95 % confidence interval,
//! which decides the verdict ([`stats`]).
//! `--quick` takes fewer rounds (12 exec, 4 streaming, 5 TSI, 2 readiness on the host's clock
//! and 1 in virtual time, which varies little) and one boot per other boot figure, to prove the
//! bench works, not to settle a verdict; no test asserts any figure.

mod exec;
mod figure;
mod guest;
mod ready;
mod report;
mod stats;
mod tsi;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

pub use figure::Figure;

use crate::flags::BenchPart as Part;
use crate::manifest::Manifest;
use crate::spec::{self, Arch};
use crate::vm::qemu::VsockDevice;
use crate::{progress, setup, upstream, util, vm};

/// The median (sorts `v`).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Runs the bench.
pub fn run(args: crate::flags::Bench) -> Result<()> {
    setup::run()?;
    vm::install_signal_cleanup();
    let start = Instant::now();
    // Only the TSI figures have no upstream anchor (upstream's assets have no TSI).
    let wants_upstream = Part::ALL
        .iter()
        .any(|(p, _)| *p != Part::Tsi && args.measures(*p));
    let upstream = match wants_upstream.then(upstream::fetch).transpose() {
        Ok(u) => u,
        Err(e) => {
            progress!(
                "bench: upstream {} unavailable ({e:#}): its column is skipped",
                upstream::VERSION
            );
            None
        }
    };
    let mut figs = Vec::new();
    let samples = if args.quick { 1 } else { 5 };
    for &arch in &args.arches {
        let a = Some(arch.name().to_string());
        let ours_kernel = vm::extract_assets(arch)?.kernel;
        let up_kernel = upstream
            .as_ref()
            .and_then(|u| u.get(arch).asset("kernel"))
            .map(Path::to_path_buf);

        if args.measures(Part::Boot) {
            progress!("bench: {} boot cost to PID 1 under icount", arch.name());
            let ours = guest::boot_cost(arch, &ours_kernel)?;
            let (anchor, note) =
                anchor_or_note(up_kernel.as_deref(), |k| guest::boot_cost(arch, k));
            figs.push(
                Figure::new("boot_cost", a.clone(), "reset → PID 1, virtual time (s, icount)", ours, "upstream kernel, same initramfs", anchor, true)
                    .note(note.unwrap_or_else(|| format!("`-icount {}`, 1 vCPU; the guest's counter when PID 1 starts (loader, decompression and kernel init)", vm::Icount::Deterministic.option().unwrap_or_default()))),
            );
            if let Some(k) = &args.candidate_kernel {
                progress!("bench: {} candidate kernel {}", arch.name(), k.display());
                let cand = guest::boot_cost(arch, k)?;
                let size = std::fs::metadata(k).with_context(|| format!("read {}", k.display()))?;
                let ours_size = std::fs::metadata(&ours_kernel)?;
                figs.push(
                    Figure::new(
                        "boot_cost_candidate",
                        a.clone(),
                        "candidate kernel: reset → PID 1, virtual time (s, icount)",
                        cand,
                        "ours (shipped kernel)",
                        Some(ours),
                        true,
                    )
                    .note(format!(
                        "{}: {} B against ours {} B",
                        k.display(),
                        size.len(),
                        ours_size.len()
                    )),
                );
            }
        }

        if args.measures(Part::Ready) {
            progress!("bench: {} VMM start -> agent ready", arch.name());
            let rounds = if args.quick { (2, 1) } else { (5, 3) };
            figs.extend(ready::figures(
                arch,
                up_kernel.as_deref(),
                rounds,
                kvm_note(arch),
            )?);
        }

        if args.measures(Part::Exec) {
            progress!("bench: {} exec round trip and streaming", arch.name());
            figs.extend(exec::exec_and_stream(arch, args.quick)?);
            if arch == Arch::X86_64 {
                progress!("bench: x86_64 exec round trip through supermachine's own client");
                figs.push(supermachine_exec(args.quick)?);
            }
        }

        if args.measures(Part::Tsi) {
            progress!("bench: {} guest networking (TSI)", arch.name());
            figs.extend(tsi::figures(arch, args.quick)?);
        }

        if args.measures(Part::Memory) {
            progress!("bench: {} smallest guest memory", arch.name());
            let (ours, breakdown) = guest::min_memory(arch, None)?;
            let (anchor, note) = anchor_or_note(up_kernel.as_deref(), |k| {
                guest::min_memory(arch, Some(k)).map(|(mib, _)| mib)
            });
            figs.push(
                Figure::new(
                    "min_memory",
                    a,
                    "smallest guest RAM that boots and execs (MiB)",
                    ours,
                    "upstream kernel, our init + agent",
                    anchor,
                    true,
                )
                .note(match note {
                    Some(n) => format!("{breakdown}; {n}"),
                    None => breakdown,
                }),
            );
        }
    }

    if args.measures(Part::Host) {
        figs.extend(sizes(upstream.as_ref())?);
        figs.extend(build_cost(upstream.is_some(), samples)?);
        figs.push(extraction(samples)?);
    }
    let elapsed = start.elapsed();
    report::write(&figs, &args, elapsed)?;
    progress!("bench: done in {elapsed:.0?}");
    Ok(())
}

/// Exec round trip of `true` through supermachine 0.7.108's `ExecBuilder::output`: our agent
/// against upstream 0.7.70's, both in the initramfs supermachine builds, on our kernel and
/// busybox, with the same client.
fn supermachine_exec(quick: bool) -> Result<Figure> {
    use vm_rig::conformance::{self, AssetSet, Session, Which};
    let bin = conformance::build_binary()?;
    let dir = vm::scratch_dir();
    std::fs::create_dir_all(&dir)?;
    let root = conformance::root_image(&bin, &dir)?;
    let (rounds, block) = if quick { (6, 10) } else { (20, 10) };
    let ours_set = AssetSet::ours(Which::Ours)?;
    // The bench keeps vhost-device-vsock: its transport floors are measured on it.
    let boot = |set: &AssetSet| Session::boot(&bin, set, &root, VsockDevice::VhostDeviceVsock);
    let what = "exec round trip of `true` via supermachine's ExecBuilder (µs, median)";
    let anchor = "upstream 0.7.70 agent, same kernel, busybox and client";
    let arch = || Some(Arch::X86_64.name().to_string());
    // Both guests up at once, each idle while the other is measured, so that load which comes
    // and goes lands on both sides of a round. Both are shut down before the directory goes.
    let figure = (|| -> Result<Figure> {
        let ours = boot(&ours_set)?;
        let upstream = AssetSet::upstream().and_then(|up| {
            boot(&AssetSet {
                which: Which::Upstream,
                agent: up.agent,
                ..ours_set.clone()
            })
        });
        let upstream = match upstream {
            Ok(u) => u,
            // Ours alone, then, with the reason the anchor is missing.
            Err(e) => {
                let t = ours.rtt(&bin, rounds * block)? as f64;
                return Ok(
                    Figure::new("exec_supermachine", arch(), what, t, anchor, None, true)
                        .note(format!("upstream's agent: {e:#}")),
                );
            }
        };
        let pairs = (0..rounds)
            .map(|_| {
                Ok((
                    ours.rtt(&bin, block)? as f64,
                    upstream.rtt(&bin, block)? as f64,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Figure::sampled(
            "exec_supermachine",
            arch(),
            what,
            anchor,
            &pairs,
            true,
            Some(SUPERMACHINE_EXEC_GOAL),
        )
        .note(format!(
            "{rounds} rounds, each the median of {block} execs (after 5 warm-up) in our guest, \
             then in upstream's, both booted side by side; TCG, 1 vCPU, 512 MiB each"
        )))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    figure
}

/// The goal of the exec through supermachine's own client, against upstream's agent.
const SUPERMACHINE_EXEC_GOAL: f64 = 0.5;

/// Measures the anchor when there is one; else says why not.
fn anchor_or_note<T>(
    kernel: Option<&Path>,
    f: impl FnOnce(&Path) -> Result<T>,
) -> (Option<T>, Option<String>) {
    match kernel {
        None => (None, Some("upstream not fetched".into())),
        Some(k) => match f(k) {
            Ok(v) => (Some(v), None),
            Err(e) => {
                progress!("bench: the upstream anchor failed: {e:#}");
                let first = format!("{e:#}")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                (None, Some(format!("upstream failed: {first}")))
            }
        },
    }
}

fn kvm_note(arch: Arch) -> String {
    match arch {
        Arch::Aarch64 => "TCG (an aarch64 guest on an x86_64 host)".into(),
        Arch::X86_64 => match vm::accel::probed_accel() {
            Some(vm::qemu::Accel::Kvm) => "KVM".into(),
            Some(vm::qemu::Accel::Tcg) => {
                "TCG: KVM here is nested and failed the 10 s probe, so no KVM figure".into()
            }
            None => "TCG: /dev/kvm is not usable here, so no KVM figure".into(),
        },
    }
}

/// Asset and `.crate` sizes, ours vs upstream (decompressed).
fn sizes(upstream: Option<&upstream::Upstream>) -> Result<Vec<Figure>> {
    let manifest = Manifest::load()?;
    let mut figs = Vec::new();
    for arch in Arch::ALL {
        let up = upstream.map(|u| u.get(arch));
        for s in spec::assets(arch) {
            let Some(r) = manifest.get(arch, s.name()) else {
                continue;
            };
            let anchor = up
                .and_then(|u| u.asset(s.name()))
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| m.len() as f64 / 1e6);
            figs.push(Figure::new(
                &format!("size_{}", s.name()),
                Some(arch.name().into()),
                &format!("{} size (MB, uncompressed)", s.name()),
                r.size as f64 / 1e6,
                "upstream (xz -d)",
                anchor,
                true,
            ));
        }
        let ours = std::fs::metadata(crate::cargo::package(arch)?)?.len() as f64 / 1e6;
        let anchor = up
            .and_then(|u| std::fs::metadata(&u.dot_crate).ok())
            .map(|m| m.len() as f64 / 1e6);
        figs.push(Figure::new(
            "size_crate",
            Some(arch.name().into()),
            &format!("{}.crate (MB)", arch.crate_name()),
            ours,
            "upstream .crate",
            anchor,
            true,
        ));
    }
    Ok(figs)
}

/// Seconds for a clean `cargo build` of a tiny consumer crate whose dependency is `dep`.
fn consumer_build(name: &str, dep: &str, offline: bool) -> Result<f64> {
    let dir = util::build_dir().join(format!("bench/consumer-{name}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!("[package]\nname = \"consumer-{name}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\n{dep}\n\n[workspace]\n"),
    )?;
    std::fs::write(dir.join("src/main.rs"), "fn main() { println!(\"hi\"); }\n")?;
    // Resolve (and fetch) first, so the timed build is the build alone.
    util::run(
        Command::new("cargo")
            .current_dir(&dir)
            .args(["fetch", "--quiet"]),
    )?;
    let t = Instant::now();
    let mut c = Command::new("cargo");
    // A crates.io dependency is never built incrementally, but a path dependency (ours) is:
    // turn it off for every consumer so that ours is timed as a published crate would be.
    c.current_dir(&dir)
        .args(["build", "--quiet"])
        .env("CARGO_INCREMENTAL", "0");
    if offline {
        c.arg("--offline");
    }
    util::run(&mut c).with_context(|| format!("build the {name} consumer"))?;
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&dir)?;
    Ok(secs)
}

/// Clean-build cost of a consumer of our facade, of upstream 0.7.70's facade, and of an
/// empty crate; the note states the ratio against the goal of 0.7× upstream.
fn build_cost(have_upstream: bool, samples: usize) -> Result<Vec<Figure>> {
    progress!("bench: consumer build cost ({samples} clean builds each)");
    let facade = util::root().join("supermachine-kernel");
    let mut ours = Vec::new();
    let mut up = Vec::new();
    let mut empty = Vec::new();
    for _ in 0..samples {
        ours.push(consumer_build(
            "ours",
            &format!(
                "supermachine-kernel = {{ path = \"{}\" }}",
                facade.display()
            ),
            false,
        )?);
        if have_upstream {
            up.push(consumer_build(
                "upstream",
                &format!("supermachine-kernel = \"={}\"", upstream::VERSION),
                true,
            )?);
        }
        empty.push(consumer_build("empty", "", false)?);
    }
    let (ours, empty) = (median(&mut ours), median(&mut empty));
    let up = (!up.is_empty()).then(|| median(&mut up));
    let ratio = up.map_or("no upstream figure".into(), |u| {
        format!("ours / upstream = {:.2}× (goal ≤ 0.70×)", ours / u)
    });
    let fig = Figure::new(
        "build_cost",
        None,
        "clean `cargo build` of a consumer of the facade (s, median, x86_64 host)",
        ours,
        "upstream 0.7.70 facade consumer (its build.rs runs xz -d)",
        up,
        true,
    )
    .note(format!(
        "{ratio}; ours has no build script (compile-time checks, bytes in statics); \
         CARGO_INCREMENTAL=0 for both; an empty crate takes {empty:.2} s"
    ));
    Ok(vec![fig])
}

/// Extract-all throughput vs a plain `std::fs::write` of the same bytes.
fn extraction(samples: usize) -> Result<Figure> {
    use supermachine_kernel_x86_64 as x86;
    let total: usize = x86::ASSETS.iter().map(|a| a.bytes.len()).sum();
    let dir = util::build_dir().join("bench/extract");
    let fresh = |d: &PathBuf| -> Result<()> {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
        Ok(std::fs::create_dir_all(d)?)
    };
    let mut ours = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..samples.max(3) {
        fresh(&dir)?;
        let t = Instant::now();
        x86::extract_all_to(&dir)?;
        ours.push(total as f64 / 1e6 / t.elapsed().as_secs_f64());
        fresh(&dir)?;
        let t = Instant::now();
        for a in x86::ASSETS {
            std::fs::write(dir.join(a.file_name), a.bytes)?;
        }
        plain.push(total as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(Figure::new(
        "extract",
        Some("x86_64".into()),
        &format!("extract_all_to, {:.1} MB (MB/s)", total as f64 / 1e6),
        median(&mut ours),
        "plain std::fs::write",
        Some(median(&mut plain)),
        false,
    )
    .note("ours also fsyncs each file and renames it into place"))
}
