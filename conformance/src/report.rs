//! Check outcomes: one console line per check while the suite runs, and a JSON document at
//! the end for `cargo xtask conformance` to put side by side.
//!
//! JSON shape: `{"suite": "...", "total_ms": N, "checks": [{"name", "pass", "ms", "detail"}]}`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// What one check found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Stable check name (the row of the side-by-side table).
    pub name: &'static str,
    /// Did the assets do what supermachine 0.7.108 expects?
    pub pass: bool,
    /// Wall time of the check.
    pub ms: u128,
    /// What was seen: a short summary on a pass, the cause on a failure.
    pub detail: String,
}

/// The outcomes of one run, in the order the checks ran.
#[derive(Debug)]
pub struct Report {
    suite: String,
    started: Instant,
    checks: Vec<Outcome>,
}

impl Report {
    /// An empty report for `suite`.
    pub fn new(suite: &str) -> Report {
        Report {
            suite: suite.to_string(),
            started: Instant::now(),
            checks: Vec::new(),
        }
    }

    /// Runs one check, prints its line and records it. An `Err` is a failed check, never an
    /// abort of the suite.
    pub fn check(&mut self, name: &'static str, f: impl FnOnce() -> Result<String>) -> bool {
        let t = Instant::now();
        let (pass, detail) = match f() {
            Ok(d) => (true, d),
            Err(e) => (false, format!("{e:#}")),
        };
        self.record(Outcome {
            name,
            pass,
            ms: t.elapsed().as_millis(),
            detail,
        });
        pass
    }

    /// Records (and prints) an outcome measured elsewhere.
    pub fn record(&mut self, o: Outcome) {
        // One line per check, the detail flattened so a table stays a table.
        let detail: String = o.detail.replace('\n', "\\n").chars().take(300).collect();
        println!(
            "{} {:<24} {:>7} ms  {detail}",
            if o.pass { "PASS" } else { "FAIL" },
            o.name,
            o.ms
        );
        self.checks.push(o);
    }

    /// Did every check pass?
    pub fn all_passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "suite": self.suite,
            "total_ms": self.started.elapsed().as_millis() as u64,
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name,
                "pass": c.pass,
                "ms": c.ms as u64,
                "detail": c.detail,
            })).collect::<Vec<_>>(),
        })
    }

    /// Writes the JSON report to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).context("encode the report")?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
    }
}
