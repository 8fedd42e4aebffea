//! The statistics of reports and gates: a confidence interval for a pass rate (Wilson's score interval) and
//! McNemar's exact test for two runs of the same cases. Written here, not taken from a crate: both are a few
//! lines of closed-form arithmetic, and the statistics crates on crates.io either lack the paired test or pull
//! in a linear-algebra stack for it.

/// Wilson's 95% score interval for `passed` of `n`.
pub fn wilson(passed: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let n = n as f64;
    let p = passed as f64 / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt()) / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// McNemar's exact test (two-sided) on the discordant pairs of two runs over the same cases: `regressed`
/// cases passed in the first run and failed in the second, `improved` the other way. Under the null
/// hypothesis each discordant case is equally likely to go either way, so the count is Binomial(b + c, 1/2);
/// the p-value is twice the smaller tail, capped at 1.
pub fn mcnemar_exact(regressed: u64, improved: u64) -> f64 {
    let n = regressed + improved;
    if n == 0 {
        return 1.0;
    }
    let k = regressed.min(improved);
    // P(X <= k) for X ~ Binomial(n, 1/2), summed in log space (n may be in the thousands).
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut tail = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// The `q`-quantile (0..=1) of values by the nearest-rank method; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize;
    v.get(rank.saturating_sub(1)).copied()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn mcnemar_matches_the_binomial_tables() {
        // Reference values: R's binom.test(k, n, 0.5)$p.value.
        assert!((mcnemar_exact(0, 6) - 0.03125).abs() < 1e-12);
        assert!((mcnemar_exact(1, 9) - 0.021_484_375).abs() < 1e-12);
        assert!((mcnemar_exact(5, 5) - 1.0).abs() < 1e-12);
        assert!((mcnemar_exact(10, 20) - 0.098_737_146_705).abs() < 1e-9);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(3, 1), mcnemar_exact(1, 3), "two-sided: symmetric");
        let big = mcnemar_exact(400, 600);
        assert!(big > 0.0 && big < 1e-9, "{big}");
    }

    #[test]
    fn wilson_interval_contains_the_rate_and_stays_in_bounds() {
        let (lo, hi) = wilson(0, 10);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.2775).abs() < 1e-3);
        let (lo, hi) = wilson(50, 100);
        assert!((lo - 0.4038).abs() < 1e-3 && (hi - 0.5962).abs() < 1e-3);
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&v, 0.5), Some(3.0));
        assert_eq!(quantile(&v, 0.95), Some(5.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
