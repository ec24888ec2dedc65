//! `cargo xtask fuzz [--target NAME] [--seconds N]`: runs the cargo-fuzz targets of `fuzz/`
//! (libFuzzer, nightly) from their checked-in seeds, and reports executions and findings.
//!
//! Each target starts from `fuzz/seeds/<target>` and grows a working corpus under
//! `target/fuzz/corpus/<target>` (kept between runs, never committed). A crash leaves its
//! input in `target/fuzz/artifacts/<target>/` and fails the command with the reproducer.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{progress, util};

/// The targets, one per parser: see each file's header for its properties.
pub const TARGETS: &[&str] = &[
    "frame_decoder",
    "requests",
    "init_cmdline",
    "init_files",
    "cpio_round_trip",
];

/// Seconds per target inside `cargo xtask test`.
pub const TEST_SECONDS: u64 = 20;

/// What one run did.
#[derive(Debug)]
pub struct Report {
    /// Target name.
    pub target: String,
    /// Inputs executed.
    pub runs: u64,
    /// Seconds it ran.
    pub seconds: u64,
    /// Corpus entries afterwards (seeds plus what it found).
    pub corpus: usize,
    /// Coverage (libFuzzer edge counters) at the end.
    pub coverage: u64,
}

fn dir(kind: &str, target: &str) -> PathBuf {
    util::root().join("target/fuzz").join(kind).join(target)
}

/// The nightly `cargo`, without the variables of the stable cargo that runs xtask.
fn nightly_cargo() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"])
        .current_dir(util::root().join("fuzz"));
    for v in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
    ] {
        c.env_remove(v);
    }
    c
}

/// Builds every target once (release, with debug assertions, as cargo-fuzz does).
pub fn build() -> Result<()> {
    progress!(
        "fuzz: building {} targets (nightly, sanitizer coverage)",
        TARGETS.len()
    );
    util::run(nightly_cargo().args(["fuzz", "build", "-O"]))
        .context("cargo fuzz build (is cargo-fuzz installed? `cargo xtask setup` does)")
}

/// The last number after `key` in libFuzzer's output.
fn stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.split(key).nth(1))
        .and_then(|rest| {
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

/// Fuzzes `target` for `seconds`.
pub fn run_target(target: &str, seconds: u64) -> Result<Report> {
    let corpus = dir("corpus", target);
    let artifacts = dir("artifacts", target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let seeds = util::root().join("fuzz/seeds").join(target);
    progress!("fuzz: {target} for {seconds} s (seeds {})", seeds.display());
    let out = nightly_cargo()
        .args(["fuzz", "run", "-O", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdin(Stdio::null())
        .output()
        .context("run cargo fuzz")?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let log_path = util::root()
        .join("target/fuzz")
        .join(format!("{target}.log"));
    std::fs::write(&log_path, &log)?;
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        bail!(
            "fuzz target {target} failed ({}); reproducer in {}, full log {}:\n{}",
            out.status,
            artifacts.display(),
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let report = Report {
        target: target.to_string(),
        runs: stat(&log, "stat::number_of_executed_units:").unwrap_or(0),
        seconds,
        corpus: std::fs::read_dir(&corpus)?.count(),
        coverage: stat(&log, "cov:").unwrap_or(0),
    };
    if report.runs == 0 {
        bail!(
            "fuzz target {target} executed nothing; log {}",
            log_path.display()
        );
    }
    progress!(
        "fuzz: {target}: {} runs in {} s ({}/s), coverage {}, corpus {}, no findings",
        report.runs,
        report.seconds,
        report.runs / report.seconds.max(1),
        report.coverage,
        report.corpus
    );
    Ok(report)
}

/// Runs `targets` (all when empty) for `seconds` each.
pub fn run(targets: &[String], seconds: u64) -> Result<Vec<Report>> {
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "unknown fuzz target {t}; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    build()?;
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let reports = chosen
        .iter()
        .map(|t| run_target(t, seconds))
        .collect::<Result<Vec<_>>>()?;
    for r in &reports {
        progress!(
            "fuzz summary: {:<16} {:>12} runs  {:>4} s  coverage {:>5}  corpus {:>5}  findings 0",
            r.target,
            r.runs,
            r.seconds,
            r.coverage,
            r.corpus
        );
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_stats() {
        let log = "#2\tINITED cov: 12 ft: 13 corp: 1/1b\n#4096\tpulse  cov: 40 ft: 50\nDone 123456 runs in 20 second(s)\nstat::number_of_executed_units: 123456\nstat::average_exec_per_sec:     6172\n";
        assert_eq!(stat(log, "stat::number_of_executed_units:"), Some(123456));
        assert_eq!(stat(log, "cov:"), Some(40));
        assert_eq!(stat(log, "nope"), None);
    }

    #[test]
    fn every_target_has_a_source_and_seeds() {
        for t in TARGETS {
            let src = util::root().join(format!("fuzz/fuzz_targets/{t}.rs"));
            assert!(src.exists(), "{}", src.display());
            let seeds = util::root().join("fuzz/seeds").join(t);
            assert!(
                std::fs::read_dir(&seeds).map_or(0, |d| d.count()) > 0,
                "{} has no seeds",
                seeds.display()
            );
        }
    }
}
