//! Two runs of a suite, case by case: what improved, what regressed, and whether the difference in pass rate
//! is more than chance (McNemar's exact test on the cases both runs have: a paired test, since each case is
//! its own control).

use std::collections::HashMap;

use keel_store::EvalResult;

/// A case whose verdict changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub case_id: String,
    pub seq: u64,
    /// Outputs and failing checks, as recorded in each run.
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub run_a: String,
    pub run_b: String,
    /// Cases in both runs.
    pub paired: u64,
    pub pass_rate_a: f64,
    pub pass_rate_b: f64,
    /// Passed in A, failed in B.
    pub regressed: Vec<Change>,
    /// Failed in A, passed in B.
    pub improved: Vec<Change>,
    pub both_passed: u64,
    pub both_failed: u64,
    /// Cases in only one of the runs (not in the test).
    pub only_a: u64,
    pub only_b: u64,
    /// McNemar's exact two-sided p-value.
    pub p_value: f64,
}

impl Comparison {
    pub fn of(run_a: &str, a: &[EvalResult], run_b: &str, b: &[EvalResult]) -> Self {
        let by_id: HashMap<&str, &EvalResult> = a.iter().map(|r| (r.case_id.as_str(), r)).collect();
        let b_ids: std::collections::HashSet<&str> = b.iter().map(|r| r.case_id.as_str()).collect();
        let (mut regressed, mut improved) = (Vec::new(), Vec::new());
        let (mut both_passed, mut both_failed, mut paired, mut passed_a, mut passed_b) = (0, 0, 0u64, 0u64, 0u64);
        for rb in b {
            let Some(ra) = by_id.get(rb.case_id.as_str()) else { continue };
            paired += 1;
            passed_a += u64::from(ra.passed);
            passed_b += u64::from(rb.passed);
            let change = || Change {
                case_id: rb.case_id.clone(),
                seq: rb.seq,
                before: ra.detail.clone(),
                after: rb.detail.clone(),
            };
            match (ra.passed, rb.passed) {
                (true, true) => both_passed += 1,
                (false, false) => both_failed += 1,
                (true, false) => regressed.push(change()),
                (false, true) => improved.push(change()),
            }
        }
        regressed.sort_by_key(|c| c.seq);
        improved.sort_by_key(|c| c.seq);
        let rate = |p: u64| if paired == 0 { 0.0 } else { p as f64 / paired as f64 };
        Comparison {
            run_a: run_a.to_string(),
            run_b: run_b.to_string(),
            paired,
            pass_rate_a: rate(passed_a),
            pass_rate_b: rate(passed_b),
            p_value: crate::stats::mcnemar_exact(regressed.len() as u64, improved.len() as u64),
            regressed,
            improved,
            both_passed,
            both_failed,
            only_a: a.iter().filter(|r| !b_ids.contains(r.case_id.as_str())).count() as u64,
            only_b: b.iter().filter(|r| !by_id.contains_key(r.case_id.as_str())).count() as u64,
        }
    }

    /// B is worse than A, beyond chance at level `alpha`.
    pub fn significant_regression(&self, alpha: f64) -> bool {
        self.regressed.len() > self.improved.len() && self.p_value < alpha
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn results(run: &str, passed: &[(&str, bool)]) -> Vec<EvalResult> {
        passed
            .iter()
            .enumerate()
            .map(|(i, (id, p))| EvalResult {
                run_id: run.into(),
                case_id: (*id).into(),
                seq: i as u64,
                passed: *p,
                latency_ms: None,
                cost_usd: None,
                detail: serde_json::json!({}),
            })
            .collect()
    }

    #[test]
    fn cases_are_paired_by_id_and_the_discordant_ones_tested() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        // 12 cases: 8 passed in A; B loses 7 of them and gains 1; "x" only in A, "y" only in B.
        for i in 0..12 {
            let id = format!("c{i}");
            a.push((id.clone(), i < 8));
            b.push((id, i == 0 || i == 8));
        }
        let a: Vec<(&str, bool)> = a.iter().map(|(i, p)| (i.as_str(), *p)).chain([("x", true)]).collect();
        let b: Vec<(&str, bool)> = b.iter().rev().map(|(i, p)| (i.as_str(), *p)).chain([("y", false)]).collect();
        let c = Comparison::of("A", &results("A", &a), "B", &results("B", &b));
        assert_eq!(c.paired, 12);
        assert_eq!((c.regressed.len(), c.improved.len(), c.both_passed, c.both_failed), (7, 1, 1, 3));
        assert_eq!((c.only_a, c.only_b), (1, 1));
        assert!((c.p_value - 0.0703125).abs() < 1e-9, "{}", c.p_value);
        assert!(c.significant_regression(0.1));
        assert!(!c.significant_regression(0.05));
        let back = Comparison::of("B", &results("B", &b), "A", &results("A", &a));
        assert!(!back.significant_regression(0.5), "an improvement is not a regression");
    }
}
