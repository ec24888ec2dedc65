//! One figure of the bench: ours next to its anchor, sampled in rounds or measured once.

use super::stats::{Paired, Verdict};

/// One measured figure, ours next to its anchor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    /// Stable key.
    pub id: String,
    /// Guest arch, when the figure is per arch.
    pub arch: Option<String>,
    /// What is measured, with its unit.
    pub what: String,
    /// Our value.
    pub ours: f64,
    /// What the anchor is.
    pub anchor_name: String,
    /// The anchor's value, when it could be measured.
    pub anchor: Option<f64>,
    /// Whether smaller is better (times, sizes) or larger (throughput).
    pub lower_is_better: bool,
    /// How it was measured, or why the anchor is missing.
    pub note: String,
    /// Where it was sampled in rounds next to its anchor: both sides' spreads and the paired
    /// ratios' ([`stats`]).
    pub paired: Option<Paired>,
    /// The goal for ours / anchor, if the figure has one.
    pub goal: Option<f64>,
}

impl Figure {
    pub(super) fn new(
        id: &str,
        arch: Option<String>,
        what: &str,
        ours: f64,
        anchor_name: &str,
        anchor: Option<f64>,
        lower_is_better: bool,
    ) -> Figure {
        Figure {
            id: id.into(),
            arch,
            what: what.into(),
            ours,
            anchor_name: anchor_name.into(),
            anchor,
            lower_is_better,
            note: String::new(),
            paired: None,
            goal: None,
        }
    }

    /// A figure sampled in `rounds` of (ours, anchor), each round's two samples back to back.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sampled(
        id: &str,
        arch: Option<String>,
        what: &str,
        anchor_name: &str,
        rounds: &[(f64, f64)],
        lower_is_better: bool,
        goal: Option<f64>,
    ) -> Figure {
        let p = Paired::of(rounds);
        let mut f = Figure::new(
            id,
            arch,
            what,
            p.ours.median,
            anchor_name,
            Some(p.anchor.median),
            lower_is_better,
        );
        f.paired = Some(p);
        f.goal = goal;
        f
    }

    /// The goal's verdict, where the figure was sampled and has a goal.
    pub fn verdict(&self) -> Option<Verdict> {
        Some(self.paired?.verdict(self.goal?, self.lower_is_better))
    }

    pub(super) fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = note.into();
        self
    }

    /// Adds `more` (when there is any) to the end of the note.
    pub(super) fn note_also(mut self, more: Option<&str>) -> Figure {
        if let Some(m) = more {
            if !self.note.is_empty() {
                self.note.push_str("; ");
            }
            self.note.push_str(m);
        }
        self
    }

    /// ours / anchor: the median of the paired ratios where sampled in rounds.
    pub fn ratio(&self) -> Option<f64> {
        if let Some(p) = self.paired {
            return Some(p.ratio.median);
        }
        self.anchor.filter(|a| *a > 0.0).map(|a| self.ours / a)
    }
}
