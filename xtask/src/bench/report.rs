//! The bench's outputs: a table on stdout, `target/bench/report.json`, `target/bench/chart.svg`
//! and, on request, the README section between `<!-- bench:start -->` and `<!-- bench:end -->`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::stats::{Spread, Verdict};
use super::Figure;
use crate::flags::Bench as Args;
use crate::{progress, util};

const START: &str = "<!-- bench:start -->";
const END: &str = "<!-- bench:end -->";

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A value, with its interquartile range where it was sampled.
fn value(v: f64, spread: Option<Spread>) -> String {
    match spread {
        Some(s) => format!("{} ({}–{})", fmt(v), fmt(s.q1), fmt(s.q3)),
        None => fmt(v),
    }
}

/// The ratio cell: the paired ratios' median, their interquartile range, the median's 95 %
/// confidence interval, and the goal's verdict (which that interval decides).
fn ratio_cell(f: &Figure) -> String {
    let Some(r) = f.ratio() else {
        return "n/a".into();
    };
    let Some(p) = f.paired else {
        return format!("{r:.2}×");
    };
    let m = p.ratio_median;
    let mut cell = format!(
        "{r:.2}× ({:.2}–{:.2}; median {:.2}–{:.2})",
        p.ratio.q1, p.ratio.q3, m.lo, m.hi
    );
    if let (Some(goal), Some(v)) = (f.goal, f.verdict()) {
        let side = if f.lower_is_better { "≤" } else { "≥" };
        let said = match v {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::TooWide => "interval too wide to tell",
        };
        let _ = write!(cell, ", goal {side} {goal}×: {said}");
    }
    cell
}

/// The markdown table. Sampled figures show medians with their interquartile ranges (ours,
/// the anchor, and the ratios of rounds taken back to back).
pub fn table(figs: &[Figure]) -> String {
    let mut t = String::from("| arch | figure | ours | anchor | anchor value | ours / anchor |\n|---|---|---|---|---|---|\n");
    for f in figs {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            f.arch.as_deref().unwrap_or("-"),
            f.what,
            value(f.ours, f.paired.map(|p| p.ours)),
            f.anchor_name,
            f.anchor
                .map_or("n/a".into(), |a| value(a, f.paired.map(|p| p.anchor))),
            ratio_cell(f),
        );
    }
    let notes: Vec<String> = figs
        .iter()
        .filter(|f| !f.note.is_empty())
        .map(|f| {
            format!(
                "- {} {}: {}",
                f.arch.as_deref().unwrap_or(""),
                f.what,
                f.note
            )
        })
        .collect();
    if !notes.is_empty() {
        t.push('\n');
        t.push_str(&notes.join("\n"));
        t.push('\n');
    }
    t
}

/// A horizontal bar chart of ours / anchor, with the parity line.
pub fn svg(figs: &[Figure]) -> String {
    let rows: Vec<&Figure> = figs.iter().filter(|f| f.ratio().is_some()).collect();
    let (label_w, bar_w, row_h) = (430.0, 360.0, 22.0);
    let max = rows
        .iter()
        .filter_map(|f| f.ratio())
        .fold(1.5f64, f64::max)
        .min(4.0);
    let height = 40.0 + row_h * rows.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"4\" y=\"16\" font-weight=\"bold\">ours / anchor (green: better than the anchor; bars clipped at {max:.1}×)</text>\n",
        label_w + bar_w + 70.0
    );
    let x1 = label_w + bar_w / max;
    for (i, f) in rows.iter().enumerate() {
        let r = f.ratio().unwrap_or(0.0);
        let y = 28.0 + row_h * i as f64;
        let better = if f.lower_is_better {
            r <= 1.0
        } else {
            r >= 1.0
        };
        let colour = if better { "#3a9a4a" } else { "#c0504d" };
        let w = bar_w * r.min(max) / max;
        let label = format!("{} {}", f.arch.as_deref().unwrap_or(""), f.what)
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let _ = writeln!(
            s,
            "<text x=\"4\" y=\"{}\">{label}</text><rect x=\"{label_w}\" y=\"{}\" width=\"{w:.1}\" height=\"{}\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{}\">{r:.2}×</text>",
            y + 13.0,
            y + 2.0,
            row_h - 6.0,
            label_w + w + 4.0,
            y + 13.0
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{x1:.1}\" y1=\"24\" x2=\"{x1:.1}\" y2=\"{height}\" stroke=\"#333\" stroke-dasharray=\"4 3\"/>\n</svg>"
    );
    s
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let qemu = util::tool_version("qemu-system-x86_64");
    format!("{cpus} host cores, {qemu}, TCG (nested KVM too slow here)")
}

/// Prints and writes everything.
pub fn write(figs: &[Figure], args: &Args, elapsed: Duration) -> Result<()> {
    let dir = util::root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let table = table(figs);
    println!("{table}");
    let json = serde_json::json!({
        "quick": args.quick,
        "machine": machine(),
        "seconds": elapsed.as_secs_f64(),
        "figures": figs.iter().map(|f| {
            let mut v = serde_json::to_value(f).unwrap_or_default();
            v["ratio"] = serde_json::json!(f.ratio());
            v["verdict"] = serde_json::json!(f.verdict());
            v
        }).collect::<Vec<_>>(),
    });
    let report = dir.join("report.json");
    std::fs::write(&report, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("write {}", report.display()))?;
    let chart = dir.join("chart.svg");
    std::fs::write(&chart, svg(figs))?;
    progress!("bench: wrote {} and {}", report.display(), chart.display());
    if args.update_readme {
        update_readme(&table, args, elapsed)?;
    }
    Ok(())
}

fn update_readme(table: &str, args: &Args, elapsed: Duration) -> Result<()> {
    // The chart is committed next to the README so the section can show it.
    let committed = util::root().join("docs/bench-chart.svg");
    std::fs::create_dir_all(util::root().join("docs"))?;
    std::fs::copy(util::root().join("target/bench/chart.svg"), &committed)?;
    let path = util::root().join("README.md");
    let readme = std::fs::read_to_string(&path)?;
    let (Some(a), Some(b)) = (readme.find(START), readme.find(END)) else {
        bail!("README.md has no {START} … {END} section");
    };
    let section = format!(
        "{START}\n_Measured by `cargo xtask bench{}` in {:.0} s on {}; every anchor in the same run._\n\n{table}\n![ours / anchor](docs/bench-chart.svg)\n{END}",
        if args.quick { " --quick" } else { "" },
        elapsed.as_secs_f64(),
        machine()
    );
    let new = format!("{}{section}{}", &readme[..a], &readme[b + END.len()..]);
    util::write_atomic(&path, new.as_bytes())?;
    progress!("bench: updated the README's bench section");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_chart_show_ratios() {
        let f = vec![
            Figure::new(
                "a",
                Some("x86_64".into()),
                "boot (s)",
                0.2,
                "up",
                Some(0.8),
                true,
            ),
            Figure::new("b", None, "build (s)", 3.0, "up", None, true).note("why"),
        ];
        let t = table(&f);
        assert!(
            t.contains("| x86_64 | boot (s) | 0.200 | up | 0.800 | 0.25× |"),
            "{t}"
        );
        assert!(
            t.contains("| - | build (s) | 3.00 | up | n/a | n/a |"),
            "{t}"
        );
        assert!(t.contains("- build (s): why") || t.contains("build (s): why"));
        let s = svg(&f);
        assert!(s.starts_with("<svg") && s.contains("0.25×") && !s.contains("build"));
    }

    #[test]
    fn sampled_figures_show_their_intervals_and_verdict() {
        let rounds = [(11.0, 10.0), (12.0, 10.0), (11.0, 10.0), (12.0, 10.0)];
        let f = Figure::sampled("e", None, "exec (µs)", "floor", &rounds, true, Some(1.25));
        let t = table(&[f]);
        assert!(
            t.contains("| exec (µs) | 11.50 (11.00–12.00) | floor | 10.00 (10.00–10.00) | 1.15× (1.10–1.20; median 1.10–1.20), goal ≤ 1.25×: met |"),
            "{t}"
        );
    }
}
