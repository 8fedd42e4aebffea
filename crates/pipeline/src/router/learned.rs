//! Learned routing (issue 16): a logistic regression over the embedding of the prompt's last user turn predicts
//! the probability that the cheap alias's answer passes; at or above the router's threshold the cheap alias
//! serves, below it the large one.
//!
//! The model is trained by `keel route train` from two eval runs of the same cases, one on each alias: a case is
//! labelled by whether the cheap alias passed. The threshold is chosen for a target quality on out-of-fold
//! predictions (five folds, so no case is scored by a model that saw it): the cheapest threshold whose routed mix
//! keeps the pass rate at least `target × the large alias's pass rate` on those cases.
//!
//! Why by hand: the model is a dot product and a sigmoid, training is a few hundred passes of full-batch gradient
//! descent over at most a few thousand 384-dimension vectors (well under a second), and it must be reproducible
//! bit for bit (one thread, a fixed order, no randomness); a machine-learning crate would bring far more than
//! the hundred lines it replaces, as with the guard's classifier.

use std::path::Path;

use keel_types::{ChatRequest, Role};
use serde::{Deserialize, Serialize};

/// The weights file's format tag.
pub const FORMAT: &str = "keel-learned-router/1";

/// A trained router, as `keel route train` writes it (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Weights {
    pub format: String,
    /// The embeddings model the vectors came from (the served model name): a router only reads vectors of it.
    pub embedding_model: String,
    pub weights: Vec<f32>,
    pub bias: f32,
    /// The cheap alias serves when the predicted probability is at least this.
    pub threshold: f32,
    /// What it was trained on and for, and what cross-validation estimated. For people; keel reads none of it.
    #[serde(default)]
    pub trained: serde_json::Value,
}

impl Weights {
    /// Reads and checks a weights file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let w: Weights = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a weights file of `keel route train`: {e}", path.display()))?;
        if w.format != FORMAT {
            return Err(format!("{}: format {:?}, expected {FORMAT:?}", path.display(), w.format));
        }
        if w.weights.is_empty() || !w.weights.iter().chain([&w.bias, &w.threshold]).all(|x| x.is_finite()) {
            return Err(format!("{}: weights must be finite numbers, at least one", path.display()));
        }
        if !(0.0..=1.0).contains(&w.threshold) {
            return Err(format!("{}: threshold {} is not a probability", path.display(), w.threshold));
        }
        Ok(w)
    }

    /// The probability that the cheap alias passes, or `None` for a vector of another dimension.
    pub fn probability(&self, vector: &[f32]) -> Option<f32> {
        (vector.len() == self.weights.len()).then(|| predict(&self.weights, self.bias, vector))
    }
}

/// What a learned router reads of a request: the text of its last user turn (what the prompt asks; a
/// template's rendered prompt). Training reads the same function, so both sides embed the same text.
pub fn prompt_text(chat: &ChatRequest) -> String {
    let last_user = chat.messages.iter().rev().find(|m| m.role == Role::User);
    last_user.and_then(|m| m.content.as_ref()).map(|c| c.text()).unwrap_or_default()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The vector scaled to unit length (a zero vector stays zero). Both training and serving read unit vectors,
/// whatever the embeddings model returns, so a model that does not normalise its output is scored the same way
/// it was trained.
pub fn unit(x: &[f32]) -> Vec<f32> {
    let norm = x.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>().sqrt();
    if norm > 0.0 && norm.is_finite() { x.iter().map(|v| (f64::from(*v) / norm) as f32).collect() } else { x.to_vec() }
}

fn predict(w: &[f32], b: f32, x: &[f32]) -> f32 {
    let x = unit(x);
    let z = w.iter().zip(&x).map(|(w, x)| f64::from(*w) * f64::from(*x)).sum::<f64>() + f64::from(b);
    // Kept under 1 so that a threshold of 1 always means "never the cheap alias".
    (sigmoid(z) as f32).min(1.0 - 1e-6)
}

/// A fitted logistic regression.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub weights: Vec<f32>,
    pub bias: f32,
}

impl Fit {
    pub fn probability(&self, x: &[f32]) -> f32 {
        predict(&self.weights, self.bias, x)
    }
}

/// Passes of gradient descent: enough for the loss to settle on unit-length sentence embeddings.
const EPOCHS: usize = 600;

/// Fits `P(y | x)` by full-batch gradient descent with Nesterov momentum on the mean log-loss plus
/// `l2 / 2 × |w|²` (the bias is not penalised). Classes are weighted equally whatever their sizes, so that a
/// cheap alias that rarely passes still gets a model that ranks. Inputs are scaled to unit length first (as
/// [`Fit::probability`] scales what it scores). Deterministic: same input, same weights.
pub fn fit(x: &[Vec<f32>], y: &[bool], l2: f64) -> Fit {
    let x: Vec<Vec<f32>> = x.iter().map(|v| unit(v)).collect();
    let d = x.first().map_or(0, Vec::len);
    let n = x.len().min(y.len());
    let positives = y.iter().take(n).filter(|p| **p).count();
    let (wp, wn) = match (positives, n - positives) {
        (0, _) | (_, 0) => (1.0, 1.0),
        (p, q) => (n as f64 / (2.0 * p as f64), n as f64 / (2.0 * q as f64)),
    };
    let (mut w, mut b) = (vec![0.0f64; d], 0.0f64);
    let (mut vw, mut vb) = (vec![0.0f64; d], 0.0f64);
    // Unit-length inputs: the loss's curvature is at most 1/4 per sample, so a step of 1 is stable.
    let (rate, momentum) = (1.0, 0.9);
    let mut grad = vec![0.0f64; d];
    for _ in 0..EPOCHS {
        // The look-ahead point of Nesterov's method.
        let look: Vec<f64> = w.iter().zip(&vw).map(|(w, v)| w + momentum * v).collect();
        let look_b = b + momentum * vb;
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut grad_b = 0.0;
        for (xi, yi) in x.iter().zip(y).take(n) {
            let z = look.iter().zip(xi).map(|(w, x)| w * f64::from(*x)).sum::<f64>() + look_b;
            let (target, weight) = if *yi { (1.0, wp) } else { (0.0, wn) };
            let err = weight * (sigmoid(z) - target);
            for (g, x) in grad.iter_mut().zip(xi) {
                *g += err * f64::from(*x);
            }
            grad_b += err;
        }
        let scale = 1.0 / n.max(1) as f64;
        for j in 0..d {
            let g = grad[j] * scale + l2 * look[j];
            vw[j] = momentum * vw[j] - rate * g;
            w[j] += vw[j];
        }
        vb = momentum * vb - rate * grad_b * scale;
        b += vb;
    }
    Fit { weights: w.iter().map(|v| *v as f32).collect(), bias: b as f32 }
}

/// The fold of case `i` in `k`-fold cross-validation: interleaved (`i mod k`), so that a dataset sorted by
/// subject spreads every subject over all the folds.
fn fold(i: usize, k: usize) -> usize {
    i % k
}

/// Out-of-fold probabilities: each case scored by a model fitted on the other folds.
pub fn out_of_fold(x: &[Vec<f32>], y: &[bool], l2: f64, k: usize) -> Vec<f32> {
    let mut p = vec![0.0; x.len()];
    for f in 0..k {
        let (mut tx, mut ty) = (Vec::new(), Vec::new());
        for (i, (xi, yi)) in x.iter().zip(y).enumerate() {
            if fold(i, k) != f {
                tx.push(xi.clone());
                ty.push(*yi);
            }
        }
        let model = fit(&tx, &ty, l2);
        for (i, xi) in x.iter().enumerate() {
            if fold(i, k) == f {
                p[i] = model.probability(xi);
            }
        }
    }
    p
}

/// Mean log-loss of probabilities against outcomes.
pub fn log_loss(p: &[f32], y: &[bool]) -> f64 {
    let eps = 1e-6;
    let total: f64 = p
        .iter()
        .zip(y)
        .map(|(p, y)| {
            let p = f64::from(*p).clamp(eps, 1.0 - eps);
            if *y { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    total / p.len().max(1) as f64
}

/// One case as the threshold sees it: the predicted probability, both aliases' outcomes and costs.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub p: f32,
    pub small_pass: bool,
    pub large_pass: bool,
    pub small_cost: f64,
    pub large_cost: f64,
}

/// A threshold and what it gives on the cases it was chosen on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Choice {
    pub threshold: f32,
    /// The share of cases the cheap alias serves.
    pub small_share: f64,
    pub pass_rate: f64,
    pub large_pass_rate: f64,
    pub small_pass_rate: f64,
    pub cost: f64,
    pub large_cost: f64,
}

/// The cheapest threshold whose routed pass rate is at least `target × the large alias's`; among equally cheap
/// ones, the highest pass rate. Sending everything to the large alias always qualifies (threshold 1).
pub fn choose_threshold(cases: &[Case], target: f64) -> Choice {
    let n = cases.len().max(1) as f64;
    let large_pass_rate = cases.iter().filter(|c| c.large_pass).count() as f64 / n;
    let small_pass_rate = cases.iter().filter(|c| c.small_pass).count() as f64 / n;
    let large_cost: f64 = cases.iter().map(|c| c.large_cost).sum();
    let mut sorted: Vec<&Case> = cases.iter().collect();
    sorted.sort_by(|a, b| b.p.total_cmp(&a.p));
    // Start with every case on the large alias, then hand them to the cheap one in falling order of p.
    let (mut passes, mut cost) = (cases.iter().filter(|c| c.large_pass).count() as f64, large_cost);
    let mut best = Choice {
        threshold: 1.0,
        small_share: 0.0,
        pass_rate: passes / n,
        large_pass_rate,
        small_pass_rate,
        cost,
        large_cost,
    };
    let floor = target * large_pass_rate - 1e-12;
    for (k, c) in sorted.iter().enumerate() {
        passes += f64::from(u8::from(c.small_pass)) - f64::from(u8::from(c.large_pass));
        cost += c.small_cost - c.large_cost;
        // Cases with equal p go together: a threshold cannot split them.
        if sorted.get(k + 1).is_some_and(|next| next.p == c.p) {
            continue;
        }
        let rate = passes / n;
        // Halfway to the next case down, so that this case and the ones above it reach the threshold and the
        // next does not; where f32 cannot hold a point strictly between the two, this case's own p.
        let threshold = match sorted.get(k + 1) {
            Some(next) => {
                let mid = ((f64::from(c.p) + f64::from(next.p)) / 2.0) as f32;
                if mid > next.p && mid <= c.p { mid } else { c.p }
            }
            None => 0.0,
        };
        if rate >= floor && (cost < best.cost - 1e-12 || (cost <= best.cost + 1e-12 && rate > best.pass_rate)) {
            best = Choice {
                threshold,
                small_share: (k + 1) as f64 / n,
                pass_rate: rate,
                large_pass_rate,
                small_pass_rate,
                cost,
                large_cost,
            };
        }
    }
    best
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Unit vectors near one of two directions, labelled by which: a separable problem with noise.
    fn clusters(n: usize) -> (Vec<Vec<f32>>, Vec<bool>) {
        let mut state = 7u64;
        let mut rand = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5
        };
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..n {
            let label = i % 3 == 0;
            let mut v: Vec<f32> = (0..16).map(|_| rand() * 0.6).collect();
            v[if label { 0 } else { 1 }] += 1.0;
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            x.push(v.iter().map(|a| a / norm).collect());
            y.push(label);
        }
        (x, y)
    }

    #[test]
    fn a_fit_separates_what_can_be_separated_and_is_reproducible() {
        let (x, y) = clusters(300);
        let model = fit(&x, &y, 1e-3);
        let right = x.iter().zip(&y).filter(|(xi, yi)| (model.probability(xi) >= 0.5) == **yi).count();
        assert!(right >= 290, "{right}/300 right");
        assert_eq!(model, fit(&x, &y, 1e-3), "the same data gives the same weights");
        // Held out: the out-of-fold predictions rank nearly as well, and beat a constant on log-loss.
        let p = out_of_fold(&x, &y, 1e-3, 5);
        let right = p.iter().zip(&y).filter(|(p, y)| (**p >= 0.5) == **y).count();
        assert!(right >= 280, "{right}/300 right out of fold");
        let base = y.iter().filter(|y| **y).count() as f32 / y.len() as f32;
        assert!(log_loss(&p, &y) < log_loss(&vec![base; y.len()], &y));
    }

    #[test]
    fn the_threshold_is_the_cheapest_that_keeps_the_target_quality() {
        let case = |p: f32, small_pass: bool, large_pass: bool| Case {
            p,
            small_pass,
            large_pass,
            small_cost: 1.0,
            large_cost: 10.0,
        };
        // Large passes all 10; small passes the four most confident and one unconfident case.
        let cases = vec![
            case(0.95, true, true),
            case(0.9, true, true),
            case(0.85, true, true),
            case(0.8, true, true),
            case(0.7, false, true),
            case(0.6, false, true),
            case(0.5, false, true),
            case(0.3, false, true),
            case(0.2, true, true),
            case(0.1, false, true),
        ];
        let exact = choose_threshold(&cases, 1.0);
        assert_eq!((exact.small_share, exact.pass_rate, exact.cost), (0.4, 1.0, 64.0));
        assert!(exact.threshold > 0.7 && exact.threshold < 0.8, "{}", exact.threshold);
        // At 90% of large's quality one more wrong case may go to the cheap alias: the fifth, at 0.7.
        let loose = choose_threshold(&cases, 0.9);
        assert_eq!((loose.small_share, loose.pass_rate), (0.5, 0.9));
        // Nothing qualifies but large: threshold 1, which no probability reaches.
        let none = choose_threshold(&[case(0.9, false, true)], 1.0);
        assert_eq!((none.threshold, none.small_share, none.cost), (1.0, 0.0, 10.0));
        let w = Weights {
            format: FORMAT.into(),
            embedding_model: "m".into(),
            weights: vec![1000.0],
            bias: 0.0,
            threshold: 1.0,
            trained: serde_json::Value::Null,
        };
        assert!(w.probability(&[1.0]).unwrap() < 1.0);
        assert_eq!(w.probability(&[1.0, 2.0]), None, "a vector of another dimension is not scored");
    }

    #[test]
    fn a_weights_file_is_checked_when_it_is_read() {
        let dir = std::env::temp_dir().join(format!("keel-learned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.json");
        let good = Weights {
            format: FORMAT.into(),
            embedding_model: "all-minilm-l6-v2".into(),
            weights: vec![0.5, -0.5],
            bias: 0.1,
            threshold: 0.6,
            trained: serde_json::json!({"cases": 2}),
        };
        std::fs::write(&path, serde_json::to_string(&good).unwrap()).unwrap();
        assert_eq!(Weights::load(&path).unwrap(), good);
        for (bad, why) in [
            (
                serde_json::json!({"format": "other/1", "embedding_model": "m", "weights": [1.0], "bias": 0.0, "threshold": 0.5}),
                "format",
            ),
            (
                serde_json::json!({"format": FORMAT, "embedding_model": "m", "weights": [], "bias": 0.0, "threshold": 0.5}),
                "at least one",
            ),
            (
                serde_json::json!({"format": FORMAT, "embedding_model": "m", "weights": [1.0], "bias": 0.0, "threshold": 1.5}),
                "probability",
            ),
            (serde_json::json!({"weights": "no"}), "not a weights file"),
        ] {
            std::fs::write(&path, bad.to_string()).unwrap();
            let e = Weights::load(&path).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        assert!(Weights::load(&dir.join("missing.json")).unwrap_err().contains("cannot read"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
