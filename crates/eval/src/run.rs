//! Running a suite: every case through keel, with bounded concurrency, each result stored as soon as it is
//! known (an interrupted run keeps what it finished and is resumed by skipping those cases), then the summary.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt as _;
use keel_store::{EvalResult, EvalRun, EvalStore};
use serde_json::{Value, json};

use crate::EvalError;
use crate::check::Verdict;
use crate::client::{CallError, Keel};
use crate::render::render;
use crate::suite::{Case, Suite, Target};

/// Which run to continue.
#[derive(Debug, Clone)]
pub enum Resume {
    /// The newest unfinished run of this suite with the same suite hash.
    Latest,
    Id(String),
}

/// Progress, reported after every case.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub passed: u64,
}

/// A run as it ended.
#[derive(Debug)]
pub struct Finished {
    pub run: EvalRun,
    pub results: Vec<EvalResult>,
    pub summary: Summary,
    /// Stopped before every case ran (the run can be resumed).
    pub interrupted: bool,
}

/// The numbers of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    pub cases: u64,
    pub passed: u64,
    pub failed: u64,
    /// Cases whose request failed (counted in `failed` too).
    pub errors: u64,
    pub pass_rate: f64,
    /// Wilson's 95% interval of the pass rate.
    pub pass_rate_low: f64,
    pub pass_rate_high: f64,
    /// Per check: cases it passed, of the cases it ran on.
    pub checks: BTreeMap<String, (u64, u64)>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub cost_usd: f64,
    /// Cases whose cost keel knew.
    pub cost_known: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Template versions that answered (`name@version`), and the targets that served.
    pub templates: Vec<String>,
    pub served_by: Vec<String>,
    /// Wall-clock time of the run's cases, this session (not across resumes).
    pub duration_ms: f64,
}

impl Summary {
    pub fn of(results: &[EvalResult], duration_ms: f64) -> Self {
        let cases = results.len() as u64;
        let passed = results.iter().filter(|r| r.passed).count() as u64;
        let errors = results.iter().filter(|r| r.detail.get("error").is_some_and(|e| !e.is_null())).count() as u64;
        let mut checks: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut templates = BTreeSet::new();
        let mut served_by = BTreeSet::new();
        let (mut tokens_in, mut tokens_out) = (0, 0);
        for r in results {
            for v in r.detail.get("checks").and_then(Value::as_array).into_iter().flatten() {
                if let Ok(v) = serde_json::from_value::<Verdict>(v.clone()) {
                    let e = checks.entry(v.check).or_default();
                    e.0 += u64::from(v.passed);
                    e.1 += 1;
                }
            }
            if let Some(t) = r.detail.get("template").and_then(Value::as_str) {
                templates.insert(t.to_string());
            }
            if let Some(s) = r.detail.get("served_by").and_then(Value::as_str) {
                served_by.insert(s.to_string());
            }
            tokens_in += r.detail.get("tokens_in").and_then(Value::as_u64).unwrap_or(0);
            tokens_out += r.detail.get("tokens_out").and_then(Value::as_u64).unwrap_or(0);
        }
        let latencies: Vec<f64> = results.iter().filter_map(|r| r.latency_ms).collect();
        let (low, high) = crate::stats::wilson(passed, cases);
        Summary {
            cases,
            passed,
            failed: cases - passed,
            errors,
            pass_rate: if cases == 0 { 0.0 } else { passed as f64 / cases as f64 },
            pass_rate_low: low,
            pass_rate_high: high,
            checks,
            latency_p50_ms: crate::stats::quantile(&latencies, 0.5),
            latency_p95_ms: crate::stats::quantile(&latencies, 0.95),
            cost_usd: results.iter().filter_map(|r| r.cost_usd).sum(),
            cost_known: results.iter().filter(|r| r.cost_usd.is_some()).count() as u64,
            tokens_in,
            tokens_out,
            templates: templates.into_iter().collect(),
            served_by: served_by.into_iter().collect(),
            duration_ms,
        }
    }
}

/// Runs `suite` through `keel`, storing the run and every result in `store`; stops early (resumably) when
/// `interrupt` resolves.
pub async fn run(
    suite: &Suite,
    keel: &Keel,
    store: Arc<dyn EvalStore>,
    resume: Option<Resume>,
    progress: &(dyn Fn(Progress) + Send + Sync),
    interrupt: impl Future<Output = ()>,
) -> Result<Finished, EvalError> {
    let (run, mut results) = match resume {
        None => (new_run(suite, &*store).await?, Vec::new()),
        Some(how) => {
            let run = resumable(suite, &*store, how).await?;
            let done = store.results(&run.id).await?;
            (run, done)
        }
    };
    let done: HashSet<String> = results.iter().map(|r| r.case_id.clone()).collect();
    let pending: Vec<&Case> = suite.cases.iter().filter(|c| !done.contains(&c.id)).collect();
    let total = suite.cases.len() as u64;
    let mut passed = results.iter().filter(|r| r.passed).count() as u64;
    progress(Progress { done: results.len() as u64, total, passed });
    let started = std::time::Instant::now();
    let mut stream = futures::stream::iter(pending)
        .map(|case| async move { (case, run_case(suite, keel, case).await) })
        .buffer_unordered(suite.concurrency);
    let mut interrupted = false;
    let mut refused: Option<String> = None;
    tokio::pin!(interrupt);
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = &mut interrupt => {
                interrupted = true;
                break;
            }
        };
        let Some((case, outcome)) = next else { break };
        let result = EvalResult {
            run_id: run.id.clone(),
            case_id: case.id.clone(),
            seq: case.seq,
            passed: outcome.passed,
            latency_ms: outcome.latency_ms,
            cost_usd: outcome.cost_usd,
            detail: outcome.detail,
        };
        store.put_result(&result).await?;
        passed += u64::from(result.passed);
        results.push(result);
        progress(Progress { done: results.len() as u64, total, passed });
        // keel refuses the request itself (an unknown template or model, a missing variable): every case
        // would fail the same way, so the run stops at the first few instead of sending them all.
        if let Some(e) = outcome.refusal {
            let all_refused = results.iter().all(|r| r.detail.get("refused").is_some_and(|v| v == true));
            if all_refused && results.len() >= 3.min(suite.cases.len()) {
                refused = Some(e);
                break;
            }
        }
    }
    drop(stream);
    if let Some(e) = refused {
        return Err(EvalError::Refused { run: run.id.clone(), message: e });
    }
    results.sort_by_key(|r| r.seq);
    let summary = Summary::of(&results, started.elapsed().as_secs_f64() * 1000.0);
    let mut run = run;
    if !interrupted {
        let value = serde_json::to_value(&summary).map_err(|e| EvalError::Suite(e.to_string()))?;
        let now = keel_store::now_ms();
        store.finish_run(&run.id, now, &value).await?;
        run.finished_ms = Some(now);
        run.summary = Some(value);
    }
    Ok(Finished { run, results, summary, interrupted })
}

async fn new_run(suite: &Suite, store: &dyn EvalStore) -> Result<EvalRun, EvalError> {
    let run = EvalRun {
        id: format!("run-{}", uuid::Uuid::now_v7().simple()),
        suite: suite.name.clone(),
        suite_hash: suite.hash.clone(),
        started_ms: keel_store::now_ms(),
        finished_ms: None,
        cases: suite.cases.len() as u64,
        meta: suite.meta(),
        summary: None,
    };
    store.create_run(&run).await?;
    Ok(run)
}

async fn resumable(suite: &Suite, store: &dyn EvalStore, how: Resume) -> Result<EvalRun, EvalError> {
    let run = match how {
        Resume::Id(id) => store.run(&id).await?.ok_or_else(|| EvalError::NoRun(id.clone()))?,
        Resume::Latest => store
            .runs(Some(&suite.name), 50)
            .await?
            .into_iter()
            .find(|r| r.finished_ms.is_none() && r.suite_hash == suite.hash)
            .ok_or_else(|| {
                EvalError::NoRun(format!("an unfinished run of suite {:?} with this dataset", suite.name))
            })?,
    };
    if run.suite_hash != suite.hash {
        return Err(EvalError::Suite(format!(
            "run {} ran another version of the suite or its dataset (hash {} ≠ {}): start a new run",
            run.id, run.suite_hash, suite.hash
        )));
    }
    if run.finished_ms.is_some() {
        return Err(EvalError::Suite(format!("run {} is finished", run.id)));
    }
    Ok(run)
}

/// What one case came to.
struct CaseOutcome {
    passed: bool,
    latency_ms: Option<f64>,
    cost_usd: Option<f64>,
    detail: Value,
    /// keel refused the request as invalid (a 4xx other than 408/429): its message.
    refusal: Option<String>,
}

/// The variables a case sends.
fn inputs(suite: &Suite, case: &Case) -> serde_json::Map<String, Value> {
    match &suite.inputs {
        None => case.fields.clone(),
        Some(names) => names.iter().filter_map(|n| Some((n.clone(), case.fields.get(n)?.clone()))).collect(),
    }
}

/// The request of a case, and the prompt as text (for judges and the report).
fn request(suite: &Suite, case: &Case) -> Result<(Value, String), String> {
    let vars = inputs(suite, case);
    let mut body = serde_json::Map::new();
    let prompt = match &suite.target {
        Target::Template { name, version } => {
            body.insert("model".into(), json!(""));
            body.insert("messages".into(), json!([]));
            let mut call = json!({"name": name, "variables": vars});
            if let Some(v) = version {
                call["version"] = json!(v);
            }
            body.insert("keel_template".into(), call);
            // The template renders in keel; what it asked is reported from the variables.
            serde_json::to_string_pretty(&vars).unwrap_or_default()
        }
        Target::Prompt { model, system, prompt } => {
            let user = render(prompt, &vars).map_err(|e| format!("prompt: {e}"))?;
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages
                    .push(json!({"role": "system", "content": render(s, &vars).map_err(|e| format!("system: {e}"))?}));
            }
            messages.push(json!({"role": "user", "content": user}));
            body.insert("model".into(), json!(model));
            body.insert("messages".into(), Value::Array(messages));
            user
        }
    };
    for (k, v) in &suite.params {
        body.insert(k.clone(), v.clone());
    }
    Ok((Value::Object(body), prompt))
}

async fn run_case(suite: &Suite, keel: &Keel, case: &Case) -> CaseOutcome {
    let mut detail = json!({"input": Value::Object(inputs(suite, case))});
    let (body, prompt) = match request(suite, case) {
        Ok(r) => r,
        Err(e) => {
            detail["error"] = json!(e);
            return CaseOutcome { passed: false, latency_ms: None, cost_usd: None, detail, refusal: None };
        }
    };
    if matches!(suite.target, Target::Prompt { .. }) {
        detail["prompt"] = json!(prompt);
    }
    let meta = json!({"eval_suite": suite.name, "eval_case": case.id});
    let reply = match keel.chat(&body, suite.cache, &meta).await {
        Ok(r) => r,
        Err(e) => {
            let refused = e.is_client_error();
            detail["error"] = json!(e.to_string());
            detail["refused"] = json!(refused);
            if let CallError::Status { status, .. } = &e {
                detail["status"] = json!(status);
            }
            return CaseOutcome {
                passed: false,
                latency_ms: None,
                cost_usd: None,
                detail,
                refusal: refused.then(|| e.to_string()),
            };
        }
    };
    let mut verdicts = Vec::with_capacity(suite.checks.len());
    for check in &suite.checks {
        let v = match check.local(&reply.text, case) {
            Some(v) => v,
            None => crate::judge::evaluate(check, keel, &suite.embedding_model, &reply.text, &prompt, case).await,
        };
        verdicts.push(v);
    }
    if let Some(max) = suite.limits.max_latency_ms {
        verdicts.push(Verdict {
            expected: Some(format!("<= {max} ms")),
            got: Some(format!("{:.0} ms", reply.latency_ms)),
            ..Verdict::new("latency".into(), reply.latency_ms <= max)
        });
    }
    if let Some(max) = suite.limits.max_cost_usd {
        let within = reply.cost_usd.is_none_or(|c| c <= max);
        verdicts.push(Verdict {
            expected: Some(format!("<= ${max}")),
            got: reply.cost_usd.map(|c| format!("${c:.6}")),
            note: reply.cost_usd.is_none().then(|| "cost unknown (no price for the model)".to_string()),
            ..Verdict::new("cost".into(), within)
        });
    }
    let passed = verdicts.iter().all(|v| v.passed);
    detail["output"] = json!(reply.text);
    detail["checks"] = serde_json::to_value(&verdicts).unwrap_or(Value::Null);
    detail["tokens_in"] = json!(reply.tokens_in);
    detail["tokens_out"] = json!(reply.tokens_out);
    detail["request_id"] = json!(reply.request_id);
    detail["template"] = json!(reply.template);
    detail["served_by"] = json!(reply.served_by);
    detail["finish_reason"] = json!(reply.finish_reason);
    CaseOutcome { passed, latency_ms: Some(reply.latency_ms), cost_usd: reply.cost_usd, detail, refusal: None }
}
