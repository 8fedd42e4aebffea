//! Evaluation (issue 15): suites of cases with expectations, run through keel's own request path, results
//! kept in keel's store, reports for people and CI, comparisons of two runs, and the gates that turn a run
//! into an exit code.
//!
//! - `suite.rs`: the suite file and its JSONL dataset.
//! - `check.rs`: deterministic checks; `judge.rs`: similarity and model judges (through keel).
//! - `client.rs`: keel's OpenAI API over HTTP; `run.rs`: the run (bounded concurrency, resumable).
//! - `compare.rs`, `stats.rs`: two runs case by case, McNemar's exact test, Wilson intervals.
//! - `report.rs`: terminal, JSON, JUnit XML, HTML.

pub mod check;
pub mod client;
pub mod compare;
mod judge;
pub mod online;
mod render;
pub mod report;
pub mod run;
pub mod stats;
pub mod suite;

pub use check::{Check, CheckSpec, Verdict};
pub use client::{CallError, Keel};
pub use compare::Comparison;
pub use online::{Online, OnlineCheck, OnlineStats};
pub use run::{Finished, Progress, Resume, Summary};
pub use suite::{Case, Gate, Suite, Target};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Suite(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] keel_store::StoreError),
    #[error("no run {0}")]
    NoRun(String),
    /// keel refused the first cases as invalid requests: every case would fail the same way.
    #[error("keel refused the suite's requests (run {run} stopped): {message}")]
    Refused { run: String, message: String },
}

impl EvalError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        EvalError::Io { path: path.display().to_string(), source }
    }
}

/// Why a run fails its gate (empty: it passes).
pub fn gate_failures(gate: &Gate, summary: &Summary, baseline: Option<&Comparison>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(min) = gate.min_pass_rate
        && summary.pass_rate < min
    {
        out.push(format!("pass rate {:.1}% is under the gate's {:.1}%", summary.pass_rate * 100.0, min * 100.0));
    }
    if let Some(max) = gate.max_cost_usd
        && summary.cost_usd > max
    {
        out.push(format!("the run cost ${:.6}, over the gate's ${max}", summary.cost_usd));
    }
    if let Some(c) = baseline {
        let alpha = gate.significance.unwrap_or(0.05);
        if c.significant_regression(alpha) {
            out.push(format!(
                "a significant regression against {}: {} cases regressed, {} improved (McNemar exact p = {:.4} < {alpha})",
                c.run_a,
                c.regressed.len(),
                c.improved.len(),
                c.p_value
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests_support {
    /// A logged request with every optional field empty.
    pub(crate) fn record() -> keel_store::Record {
        keel_store::Record {
            id: "r".into(),
            client_request_id: None,
            ts_ms: 1,
            key_id: None,
            tenant: None,
            api: "openai".into(),
            endpoint: "chat".into(),
            model_requested: None,
            model_served: None,
            status: 200,
            outcome: keel_store::Outcome::Ok,
            error_class: None,
            stream: false,
            attempts: vec![],
            ttft_ms: None,
            latency_ms: 1.0,
            tokens_in: None,
            tokens_out: None,
            tokens_cached: None,
            cost_usd: None,
            cache: None,
            request_body: None,
            response_body: None,
            metadata: serde_json::json!({}),
            template: None,
            template_version: None,
            routing: None,
        }
    }
}
