//! Figures that hold under load: each figure's samples are taken in rounds, one of ours next
//! to one of its anchor's (A B A B …), so load that comes and goes lands on both sides of a
//! round. A round gives one paired ratio; the figure reports the median of each side with its
//! spread, the median of the paired ratios with their interquartile range (how much one round
//! varies from the next), and a 95 % confidence interval for that median (how well the rounds
//! pin it down), which decides the goal's verdict.
//!
//! The interval is distribution-free (order statistics of the ratios: the median lies between
//! the k-th smallest and the k-th largest with a binomial probability), so no assumption is
//! made about how TCG's noise is shaped, and it is the same every time for the same rounds (no
//! resampling). The interquartile range does not narrow with more rounds; this interval does.

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
        let s = sorted(v);
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

/// The confidence [`MedianInterval`] aims for.
const CONFIDENCE: f64 = 0.95;

/// A confidence interval for the median of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MedianInterval {
    /// Lower end: the k-th smallest value.
    pub lo: f64,
    /// Upper end: the k-th largest value.
    pub hi: f64,
    /// The probability that the interval holds the median of what was sampled: at least
    /// [`CONFIDENCE`], except for samples too small to reach it (then min to max, and less).
    pub confidence: f64,
}

impl MedianInterval {
    /// The interval of `v` (not empty).
    pub fn of(v: &[f64]) -> MedianInterval {
        let s = sorted(v);
        let n = s.len();
        if n == 0 {
            return MedianInterval {
                lo: f64::NAN,
                hi: f64::NAN,
                confidence: 0.0,
            };
        }
        // [x(k), x(n+1-k)] misses the median only when at most k-1 values fall on one side:
        // probability 2·P(B ≤ k-1), B ~ Binomial(n, 1/2). Take the largest k that keeps the
        // confidence, or k = 1 (min to max) when none does.
        let mut k = 1;
        while k < n.div_ceil(2) && 1.0 - 2.0 * binomial_half_cdf(n, k) >= CONFIDENCE {
            k += 1;
        }
        MedianInterval {
            lo: s[k - 1],
            hi: s[n - k],
            confidence: 1.0 - 2.0 * binomial_half_cdf(n, k - 1),
        }
    }
}

/// `v`, sorted (a copy: the caller keeps its order).
fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

/// P(B ≤ j) for B ~ Binomial(n, 1/2).
fn binomial_half_cdf(n: usize, j: usize) -> f64 {
    let mut term = 0.5f64.powi(n as i32); // P(B = 0)
    let mut sum = 0.0;
    for i in 0..=j.min(n) {
        sum += term;
        // P(B = i + 1) = P(B = i) · (n - i) / (i + 1)
        term *= (n - i) as f64 / (i + 1) as f64;
    }
    sum
}

/// What the median's confidence interval says about a goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// The whole interval meets the goal.
    Met,
    /// The whole interval misses it.
    Missed,
    /// The interval straddles the goal: these rounds cannot say.
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
    /// Where the median of those ratios lies.
    pub ratio_median: MedianInterval,
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
            ratio_median: MedianInterval::of(&ratio),
        }
    }

    /// The verdict on `goal` for a figure where smaller (or, if not, larger) ratios are better.
    pub fn verdict(&self, goal: f64, lower_is_better: bool) -> Verdict {
        let MedianInterval { lo, hi, .. } = self.ratio_median;
        let (good, bad) = if lower_is_better {
            (hi <= goal, lo > goal)
        } else {
            (lo >= goal, hi < goal)
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
    fn the_median_interval_takes_the_order_statistics_of_its_confidence() {
        // n = 30: P(B <= 9) = 0.0214, P(B <= 10) = 0.0494, so [x(10), x(21)] at 95.7 %.
        let v: Vec<f64> = (1..=30).map(f64::from).collect();
        let m = MedianInterval::of(&v);
        assert_eq!((m.lo, m.hi), (10.0, 21.0));
        assert!((m.confidence - 0.9572).abs() < 1e-4, "{}", m.confidence);
        // Too few for 95 %: min to max, and the confidence it has (1 - 2/16).
        let m = MedianInterval::of(&[3.0, 1.0, 4.0, 2.0]);
        assert_eq!((m.lo, m.hi, m.confidence), (1.0, 4.0, 0.875));
        // More rounds of the same spread pin the median down more closely.
        let wide: Vec<f64> = (0..12).map(|i| 1.0 + 0.05 * f64::from(i % 6)).collect();
        let more: Vec<f64> = (0..60).map(|i| 1.0 + 0.05 * f64::from(i % 6)).collect();
        let (a, b) = (MedianInterval::of(&wide), MedianInterval::of(&more));
        assert!(b.hi - b.lo < a.hi - a.lo, "{a:?} {b:?}");
        assert_eq!(Spread::of(&wide).q3, Spread::of(&more).q3);
    }

    #[test]
    fn paired_ratios_cancel_load_that_hits_both_sides() {
        // A load step doubles both sides of the later rounds: the paired ratio stays put.
        let rounds = [(11.0, 10.0), (11.0, 10.0), (22.0, 20.0), (22.0, 20.0)];
        let p = Paired::of(&rounds);
        assert!((p.ratio.q1 - 1.1).abs() < 1e-9 && (p.ratio.q3 - 1.1).abs() < 1e-9);
        assert!((p.ratio_median.lo - 1.1).abs() < 1e-9 && (p.ratio_median.hi - 1.1).abs() < 1e-9);
        assert_eq!(p.verdict(1.25, true), Verdict::Met);
        assert_eq!(p.verdict(1.05, true), Verdict::Missed);
        let wide = Paired::of(&[(1.0, 1.0), (1.5, 1.0), (1.2, 1.0), (1.4, 1.0)]);
        assert_eq!(wide.verdict(1.25, true), Verdict::TooWide);
        // Rounds spread across the goal, but many of them, the median well under it.
        let many: Vec<(f64, f64)> = (0..30)
            .map(|i| {
                (
                    1.05 + 0.01 * f64::from(i % 10) + if i % 5 == 0 { 0.3 } else { 0.0 },
                    1.0,
                )
            })
            .collect();
        let p = Paired::of(&many);
        assert!(p.ratio.max > 1.25 && p.ratio_median.hi < 1.25, "{p:?}");
        assert_eq!(p.verdict(1.25, true), Verdict::Met);
        assert_eq!(Paired::of(&[(0.8, 1.0)]).verdict(0.7, false), Verdict::Met);
    }
}
