//! Scores, and the rule that picks a head's candidate at equal cost.
//!
//! Each candidate of a head has a **score** on the sampled query rows ([`Criterion`]) and a
//! **cost** ([`crate::search::cost`]), both summed over the prompts. The head's **budget** is
//! `budget_keys` keys per sampled row in the same units ([`crate::search::cost::budget_units`]).
//!
//! The rule ([`choose`]):
//!
//! 1. A candidate **competes** when its cost is at most `budget × (1 + tolerance)`.
//! 2. Among the competitors the best score wins; equal scores go to the lower cost, then to the
//!    candidate listed first in the space.
//! 3. When no candidate competes, the cheapest wins (equal costs: the better score, then the
//!    first listed).
//!
//! So candidates are compared at (at most) equal realised cost, and a cheaper candidate that
//! scores as well as a dearer one is preferred.

use std::cmp::Ordering;
use std::fmt;

/// An output element differs from dense attention when `|sparse - dense|` exceeds this
/// (MInference's `search_pattern_v2`).
pub const MISMATCH_THRESHOLD: f32 = 5e-3;

/// How a candidate's output on the sampled rows is scored against dense attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Criterion {
    /// MInference's: the number of output elements that differ from dense attention by more than
    /// [`MISMATCH_THRESHOLD`]; lower is better.
    Mismatch,
    /// Attention recall: the share of each row's dense softmax mass on the keys the kernel
    /// visited, `exp(lse_sparse - lse_dense)`, averaged over the rows and rounded to
    /// [`RECALL_DECIMALS`] decimals; higher is better.
    Recall,
}

/// Decimals a mean recall is compared (and written) at. Two kernels that visit the same keys sum
/// them in different orders, so their log-sum-exps differ in the last bit on a few rows (an f32
/// ulp of an LSE near 30 is 2e-6); rounding the mean makes such candidates tie, and the cheaper
/// one wins, instead of that noise deciding.
pub const RECALL_DECIMALS: i32 = 6;

impl Criterion {
    /// The name on the command line and in progress files.
    pub fn as_str(self) -> &'static str {
        match self {
            Criterion::Mismatch => "mismatch",
            Criterion::Recall => "recall",
        }
    }

    /// `Less` when score `a` is better than `b`; NaN is worse than any number.
    pub fn compare(self, a: f64, b: f64) -> Ordering {
        let key = |x: f64| match (x.is_nan(), self) {
            (true, _) => f64::INFINITY,
            (false, Criterion::Mismatch) => x,
            (false, Criterion::Recall) => -x,
        };
        key(a).total_cmp(&key(b))
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One candidate's result on one head, over every prompt.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Evaluation {
    /// Output elements past [`MISMATCH_THRESHOLD`] on the sampled rows.
    pub mismatches: u64,
    /// Sum of the sampled rows' recall.
    pub recall_sum: f64,
    /// Sampled rows.
    pub rows: u64,
    /// Cost in units of 64 × 64 ([`crate::search::cost`]); infinite for a candidate that cannot
    /// run on the prompt.
    pub cost: f64,
}

impl Evaluation {
    /// The score under `criterion`: the mismatch count, or the mean recall rounded to
    /// [`RECALL_DECIMALS`] decimals.
    pub fn score(&self, criterion: Criterion) -> f64 {
        match criterion {
            Criterion::Mismatch => self.mismatches as f64,
            Criterion::Recall => {
                let scale = 10f64.powi(RECALL_DECIMALS);
                (self.recall_sum / self.rows.max(1) as f64 * scale).round() / scale
            }
        }
    }

    /// Adds another prompt's result.
    pub fn add(&mut self, other: &Evaluation) {
        self.mismatches += other.mismatches;
        self.recall_sum += other.recall_sum;
        self.rows += other.rows;
        self.cost += other.cost;
    }
}

/// The index of the winning candidate under the rule of the [module docs](self); `None` when
/// `evaluations` is empty.
pub fn choose(evaluations: &[Evaluation], criterion: Criterion, budget: f64, tolerance: f64) -> Option<usize> {
    let cap = budget * (1.0 + tolerance);
    let competes = |e: &Evaluation| e.cost <= cap;
    let by_score = |a: &(usize, &Evaluation), b: &(usize, &Evaluation)| {
        criterion
            .compare(a.1.score(criterion), b.1.score(criterion))
            .then(a.1.cost.total_cmp(&b.1.cost))
            .then(a.0.cmp(&b.0))
    };
    let by_cost = |a: &(usize, &Evaluation), b: &(usize, &Evaluation)| {
        a.1.cost
            .total_cmp(&b.1.cost)
            .then(criterion.compare(a.1.score(criterion), b.1.score(criterion)))
            .then(a.0.cmp(&b.0))
    };
    let indexed = || evaluations.iter().enumerate();
    indexed().filter(|(_, e)| competes(e)).min_by(by_score).or_else(|| indexed().min_by(by_cost)).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(mismatches: u64, recall: f64, cost: f64) -> Evaluation {
        Evaluation { mismatches, recall_sum: recall * 10.0, rows: 10, cost }
    }

    #[test]
    fn the_best_score_within_the_budget_wins() {
        let evaluations = [eval(50, 0.90, 100.0), eval(10, 0.99, 130.0), eval(20, 0.95, 110.0), eval(0, 1.0, 400.0)];
        // Cap 125: candidates 0 and 2 compete; 2 scores better on both criteria.
        assert_eq!(choose(&evaluations, Criterion::Mismatch, 100.0, 0.25), Some(2));
        assert_eq!(choose(&evaluations, Criterion::Recall, 100.0, 0.25), Some(2));
        // Cap 130: candidate 1 competes too.
        assert_eq!(choose(&evaluations, Criterion::Mismatch, 100.0, 0.3), Some(1));
        // A large budget lets the dense-like candidate win.
        assert_eq!(choose(&evaluations, Criterion::Recall, 1000.0, 0.0), Some(3));
    }

    #[test]
    fn ties_go_to_the_cheaper_then_the_first() {
        let evaluations = [eval(0, 1.0, 90.0), eval(0, 1.0, 80.0), eval(0, 1.0, 80.0)];
        assert_eq!(choose(&evaluations, Criterion::Mismatch, 100.0, 0.0), Some(1));
        assert_eq!(choose(&evaluations, Criterion::Recall, 100.0, 0.0), Some(1));
    }

    #[test]
    fn without_a_competitor_the_cheapest_wins() {
        let evaluations = [eval(5, 0.9, 300.0), eval(9, 0.8, 200.0), eval(1, 0.99, 200.0)];
        assert_eq!(choose(&evaluations, Criterion::Mismatch, 100.0, 0.25), Some(2));
        assert_eq!(choose(&[], Criterion::Mismatch, 100.0, 0.25), None);
        // A candidate that could not run (infinite cost) never competes.
        let blocked = [eval(0, 1.0, f64::INFINITY), eval(3, 0.9, 50.0)];
        assert_eq!(choose(&blocked, Criterion::Mismatch, 100.0, 0.25), Some(1));
    }

    #[test]
    fn recalls_equal_to_the_rounding_tie_and_the_cheaper_wins() {
        // Two candidates that visit every key: one row's LSE off by an f32 ulp (2e-6) in the first.
        let rows = 4096;
        let noisy = Evaluation { mismatches: 0, recall_sum: rows as f64 - 1.9e-6, rows, cost: 10.0 };
        let exact = Evaluation { recall_sum: rows as f64, cost: 20.0, ..noisy };
        assert_eq!(noisy.score(Criterion::Recall), 1.0);
        assert_eq!(choose(&[exact, noisy], Criterion::Recall, 100.0, 0.0), Some(1));
        // A real difference still decides.
        let worse = Evaluation { recall_sum: rows as f64 * 0.99, ..noisy };
        assert_eq!(choose(&[exact, worse], Criterion::Recall, 100.0, 0.0), Some(0));
    }

    #[test]
    fn nan_scores_lose() {
        let evaluations = [Evaluation { recall_sum: f64::NAN, rows: 1, ..eval(0, 0.0, 10.0) }, eval(0, 0.5, 20.0)];
        assert_eq!(choose(&evaluations, Criterion::Recall, 100.0, 0.0), Some(1));
        assert_eq!(Criterion::Recall.compare(f64::NAN, 0.0), Ordering::Greater);
        assert_eq!(Criterion::Mismatch.compare(1.0, 2.0), Ordering::Less);
        assert_eq!(Criterion::Recall.compare(1.0, 2.0), Ordering::Greater);
    }

    #[test]
    fn evaluations_add_up_over_prompts() {
        let mut total = eval(3, 0.5, 10.0);
        total.add(&Evaluation { mismatches: 2, recall_sum: 30.0, rows: 30, cost: 5.0 });
        assert_eq!(total.mismatches, 5);
        assert_eq!(total.score(Criterion::Mismatch), 5.0);
        assert!((total.score(Criterion::Recall) - 35.0 / 40.0).abs() < 1e-12);
        assert_eq!(total.cost, 15.0);
    }
}
