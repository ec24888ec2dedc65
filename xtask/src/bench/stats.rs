//! Figures that hold under load: each figure's samples are taken in rounds, one of ours next
//! to one of its anchor's (A B A B …), so load that comes and goes lands on both sides of a
//! round. A round gives one paired ratio; the figure reports the median of each side with its
//! spread and the median of the paired ratios with their interquartile range, and says whether
//! that range supports the goal's verdict.

use serde::Serialize;

/// Five numbers of a sample: min, quartiles, max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// First quartile.
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `v` (not empty); quartiles by linear interpolation between ranks.
    pub fn of(v: &[f64]) -> Spread {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if s.is_empty() {
                return f64::NAN;
            }
            let x = p * (s.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            s[lo] + (s[hi] - s[lo]) * (x - lo as f64)
        };
        Spread {
            min: at(0.0),
            q1: at(0.25),
            median: at(0.5),
            q3: at(0.75),
            max: at(1.0),
        }
    }
}

/// What the interval says about a goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// The whole interquartile range meets the goal.
    Met,
    /// The whole interquartile range misses it.
    Missed,
    /// The range straddles the goal: these samples cannot say.
    TooWide,
}

/// A sampled figure: both sides' spreads and the paired ratios'.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Paired {
    /// Rounds.
    pub rounds: usize,
    /// Ours.
    pub ours: Spread,
    /// The anchor.
    pub anchor: Spread,
    /// ours / anchor of each round.
    pub ratio: Spread,
}

impl Paired {
    /// From rounds of (ours, anchor).
    pub fn of(rounds: &[(f64, f64)]) -> Paired {
        let ours: Vec<f64> = rounds.iter().map(|r| r.0).collect();
        let anchor: Vec<f64> = rounds.iter().map(|r| r.1).collect();
        let ratio: Vec<f64> = rounds
            .iter()
            .filter(|r| r.1 > 0.0)
            .map(|r| r.0 / r.1)
            .collect();
        Paired {
            rounds: rounds.len(),
            ours: Spread::of(&ours),
            anchor: Spread::of(&anchor),
            ratio: Spread::of(&ratio),
        }
    }

    /// The verdict on `goal` for a figure where smaller (or, if not, larger) ratios are better.
    pub fn verdict(&self, goal: f64, lower_is_better: bool) -> Verdict {
        let (good, bad) = if lower_is_better {
            (self.ratio.q3 <= goal, self.ratio.q1 > goal)
        } else {
            (self.ratio.q1 >= goal, self.ratio.q3 < goal)
        };
        match (good, bad) {
            (true, _) => Verdict::Met,
            (_, true) => Verdict::Missed,
            _ => Verdict::TooWide,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate() {
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!(
            (s.min, s.q1, s.median, s.q3, s.max),
            (1.0, 2.0, 3.0, 4.0, 5.0)
        );
        let s = Spread::of(&[1.0, 2.0]);
        assert_eq!((s.q1, s.median, s.q3), (1.25, 1.5, 1.75));
    }

    #[test]
    fn paired_ratios_cancel_load_that_hits_both_sides() {
        // A load step doubles both sides of the later rounds: the paired ratio stays put.
        let rounds = [(11.0, 10.0), (11.0, 10.0), (22.0, 20.0), (22.0, 20.0)];
        let p = Paired::of(&rounds);
        assert!((p.ratio.q1 - 1.1).abs() < 1e-9 && (p.ratio.q3 - 1.1).abs() < 1e-9);
        assert_eq!(p.verdict(1.25, true), Verdict::Met);
        assert_eq!(p.verdict(1.05, true), Verdict::Missed);
        let wide = Paired::of(&[(1.0, 1.0), (1.5, 1.0), (1.2, 1.0), (1.4, 1.0)]);
        assert_eq!(wide.verdict(1.25, true), Verdict::TooWide);
        assert_eq!(Paired::of(&[(0.8, 1.0)]).verdict(0.7, false), Verdict::Met);
    }
}
