//! Online evaluation: a check of a suite's syntax on a sample of live requests, off the request path. The
//! request log hands finished rows to [`Online::offer`] (a sampling decision and a `try_send`: it never waits);
//! one task reads the prompt and the answer from each row's logged bodies, runs the check (a judge or a
//! similarity asks its model through keel, tagged `eval` so that those calls are never sampled themselves),
//! and stores the score as feedback of the request (source `check` or `judge`, named after the evaluation),
//! where `keel quality` and `/admin/quality` read it.
//!
//! Bounded: the queue holds [`QUEUE`] rows; a row offered when it is full is dropped and counted
//! (`dropped`), as is a row whose bodies cannot be read (`unreadable`). Sampling is per evaluation, by a hash
//! of the request id (deterministic: the same request is in or out of every instance's sample alike).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keel_store::{Feedback, FeedbackSource, FeedbackStore, Record};
use serde_json::{Map, Value};
use sha2::Digest as _;

use crate::check::{Check, CheckSpec, Verdict};
use crate::client::Keel;
use crate::suite::Case;

/// The most rows waiting for evaluation.
pub const QUEUE: usize = 1024;

/// One online evaluation, compiled.
#[derive(Debug, Clone)]
pub struct OnlineCheck {
    pub name: String,
    pub route: Option<String>,
    pub template: Option<String>,
    pub sample: f64,
    pub check: Check,
    pub embedding_model: Option<String>,
}

impl OnlineCheck {
    /// Compiles a check written as in a suite (`spec`: a TOML table with `type`).
    pub fn new(
        name: &str,
        route: Option<String>,
        template: Option<String>,
        sample: f64,
        spec: &toml::Value,
        embedding_model: Option<String>,
    ) -> Result<Self, String> {
        let spec: CheckSpec = spec.clone().try_into().map_err(|e| format!("online_evals.{name}.check: {e}"))?;
        let check = Check::new(&spec).map_err(|e| format!("online_evals.{name}.check: {e}"))?;
        if matches!(check, Check::Similarity { .. }) && embedding_model.is_none() {
            return Err(format!("online_evals.{name}.embedding_model: required by a similarity check"));
        }
        Ok(Self { name: name.to_string(), route, template, sample, check, embedding_model })
    }

    /// Whether a logged request is one this evaluation samples.
    fn wants(&self, r: &Record) -> bool {
        if self.route.as_ref().is_some_and(|route| r.model_requested.as_ref() != Some(route)) {
            return false;
        }
        if self.template.as_ref().is_some_and(|t| r.template.as_ref() != Some(t)) {
            return false;
        }
        sampled(&r.id, &self.name, self.sample)
    }
}

/// Whether request `id` is in evaluation `name`'s sample of `fraction`: a hash of both, uniform in [0, 1).
fn sampled(id: &str, name: &str, fraction: f64) -> bool {
    if fraction >= 1.0 {
        return true;
    }
    let digest = sha2::Sha256::digest(format!("{name}\u{0}{id}").as_bytes());
    let mut top = [0u8; 8];
    top.copy_from_slice(&digest[..8]);
    let unit = (u64::from_be_bytes(top) >> 11) as f64 / (1u64 << 53) as f64;
    unit < fraction
}

/// Counts, for metrics.
#[derive(Debug, Default)]
pub struct OnlineStats {
    pub evaluated: AtomicU64,
    /// Offered while the queue was full.
    pub dropped: AtomicU64,
    /// Bodies not logged in full, or no answer text.
    pub unreadable: AtomicU64,
    /// The check could not run (a judge that failed) or the store refused the score.
    pub failed: AtomicU64,
}

/// The request log's side: offers finished rows.
#[derive(Clone)]
pub struct Online {
    checks: Arc<[OnlineCheck]>,
    tx: tokio::sync::mpsc::Sender<(Record, Vec<usize>)>,
    stats: Arc<OnlineStats>,
}

impl Online {
    /// Starts the evaluating task; it ends when every [`Online`] is dropped.
    pub fn spawn(
        checks: Vec<OnlineCheck>,
        keel: Keel,
        store: Arc<dyn FeedbackStore>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let checks: Arc<[OnlineCheck]> = checks.into();
        let stats = Arc::new(OnlineStats::default());
        let task = tokio::spawn(work(rx, checks.clone(), keel, store, stats.clone()));
        (Self { checks, tx, stats }, task)
    }

    pub fn stats(&self) -> &Arc<OnlineStats> {
        &self.stats
    }

    /// A request finished: queued for the evaluations that sample it, if any. Never waits. Requests that
    /// did not end with an answer, and keel-eval's own requests (tagged `eval`), are not evaluated.
    pub fn offer(&self, r: &Record) {
        if r.outcome != keel_store::Outcome::Ok || is_eval(r) {
            return;
        }
        let wanted: Vec<usize> = self.checks.iter().enumerate().filter(|(_, c)| c.wants(r)).map(|(i, _)| i).collect();
        if wanted.is_empty() {
            return;
        }
        if self.tx.try_send((r.clone(), wanted)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn is_eval(r: &Record) -> bool {
    r.metadata.get("tags").and_then(Value::as_array).is_some_and(|tags| tags.iter().any(|t| t == "eval"))
}

async fn work(
    mut rx: tokio::sync::mpsc::Receiver<(Record, Vec<usize>)>,
    checks: Arc<[OnlineCheck]>,
    keel: Keel,
    store: Arc<dyn FeedbackStore>,
    stats: Arc<OnlineStats>,
) {
    while let Some((record, wanted)) = rx.recv().await {
        let Some((prompt, answer, fields)) = read(&record) else {
            stats.unreadable.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let case = Case { id: record.id.clone(), seq: 0, fields };
        for i in wanted {
            let Some(c) = checks.get(i) else { continue };
            let verdict = match c.check.local(&answer, &case) {
                Some(v) => v,
                None => {
                    let embed = c.embedding_model.as_deref().unwrap_or_default();
                    crate::judge::evaluate(&c.check, &keel, embed, &answer, &prompt, &case).await
                }
            };
            let Some(score) = score(&c.check, &verdict) else {
                // A check that could not run says nothing of the answer: it is counted, not stored as a 0.
                tracing::warn!(eval = %c.name, request = %record.id, note = ?verdict.note, "online check failed");
                stats.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let feedback = Feedback {
                id: uuid::Uuid::now_v7().to_string(),
                request_id: record.id.clone(),
                ts_ms: keel_store::now_ms(),
                key_id: None,
                source: if c.check.needs_model() { FeedbackSource::Judge } else { FeedbackSource::Check },
                name: c.name.clone(),
                score,
                comment: verdict.note.clone(),
                correction: None,
                meta: serde_json::to_value(&verdict).unwrap_or_default(),
            };
            match store.put_feedback(&feedback).await {
                Ok(()) => stats.evaluated.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(eval = %c.name, error = %e, "storing an online evaluation failed");
                    stats.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
}

/// The verdict as a score in [0, 1]: a judge's grade 1–5 mapped linearly, a pairwise or deterministic check
/// 1 or 0, a similarity its cosine. None: the check could not run.
fn score(check: &Check, v: &Verdict) -> Option<f64> {
    let broken = !v.passed && v.score.is_none() && v.note.is_some() && v.got.is_none() && v.expected.is_none();
    match check {
        Check::Judge { .. } => v.score.map(|s| ((s - 1.0) / 4.0).clamp(0.0, 1.0)),
        Check::Similarity { .. } => v.score.map(|s| s.clamp(0.0, 1.0)),
        _ if broken => None,
        _ => Some(if v.passed { 1.0 } else { 0.0 }),
    }
}

/// The prompt (the last user turn's text), the answer's text and the case fields a check can use (`prompt`,
/// `answer`, the template's variables, the request's metadata) from a row's logged bodies.
fn read(r: &Record) -> Option<(String, String, Map<String, Value>)> {
    let request: Value = serde_json::from_str(r.request_body.as_deref()?).ok()?;
    let response: Value = serde_json::from_str(r.response_body.as_deref()?).ok()?;
    let answer = match response.pointer("/choices/0/message/content") {
        Some(c) => text(c),
        None => text(response.get("content")?),
    };
    let prompt = request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user")))
        .and_then(|m| m.get("content"))
        .map(text)
        .unwrap_or_default();
    let mut fields = Map::new();
    if let Some(Value::Object(vars)) = request.pointer("/keel_template/variables") {
        fields.extend(vars.clone());
    }
    fields.insert("prompt".into(), prompt.clone().into());
    fields.insert("answer".into(), answer.clone().into());
    fields.insert("metadata".into(), r.metadata.clone());
    let prompt = if prompt.is_empty() {
        // A template request: its variables are what was asked.
        request.pointer("/keel_template/variables").map(Value::to_string).unwrap_or_default()
    } else {
        prompt
    };
    Some((prompt, answer, fields))
}

/// The text of a message content: a string, or the text parts of an array (OpenAI parts, Anthropic blocks).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("")
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn sampling_is_deterministic_per_request_and_close_to_the_fraction() {
        let n = 20_000;
        let hits = (0..n).filter(|i| sampled(&format!("req-{i}"), "e", 0.1)).count();
        assert!((1_700..2_300).contains(&hits), "{hits} of {n} at 10%");
        assert_eq!(sampled("req-7", "e", 0.1), sampled("req-7", "e", 0.1));
        assert!((0..100).all(|i| sampled(&format!("r{i}"), "e", 1.0)));
    }

    #[test]
    fn prompt_answer_and_template_variables_are_read_from_the_logged_bodies() {
        let r = Record {
            request_body: Some(
                r#"{"model":"t","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"Capital of Peru?"}]}],"keel_template":{"name":"t","variables":{"country":"Peru"}}}"#
                    .into(),
            ),
            response_body: Some(r#"{"choices":[{"message":{"role":"assistant","content":"Lima"}}]}"#.into()),
            ..crate::tests_support::record()
        };
        let (prompt, answer, fields) = read(&r).unwrap();
        assert_eq!((prompt.as_str(), answer.as_str()), ("Capital of Peru?", "Lima"));
        assert_eq!(fields["country"], "Peru");
        let stream = Record { response_body: Some(r#"{"content":"Li","finish_reason":"stop"}"#.into()), ..r.clone() };
        assert_eq!(read(&stream).unwrap().1, "Li");
        let redacted = Record { response_body: Some("{\"choices\"…[truncated]".into()), ..r };
        assert!(read(&redacted).is_none());
    }

    #[tokio::test]
    async fn a_deterministic_check_scores_sampled_requests_into_the_store_and_skips_eval_traffic() {
        let store = keel_store::open("sqlite::memory:").await.unwrap();
        let check = OnlineCheck::new(
            "one-word",
            Some("small".into()),
            None,
            1.0,
            &toml::from_str::<toml::Value>("type = \"regex\"\npattern = '^\\w+$'").unwrap(),
            None,
        )
        .unwrap();
        let keel = Keel::new("http://127.0.0.1:9", None, std::time::Duration::from_secs(1)).unwrap();
        let (online, task) = Online::spawn(vec![check], keel, store.clone());
        let row = |id: &str, answer: &str, route: &str| Record {
            id: id.into(),
            model_requested: Some(route.into()),
            request_body: Some(r#"{"model":"small","messages":[{"role":"user","content":"Capital?"}]}"#.into()),
            response_body: Some(
                serde_json::json!({"choices": [{"message": {"role": "assistant", "content": answer}}]}).to_string(),
            ),
            ..crate::tests_support::record()
        };
        let mut eval_traffic = row("e", "Lima", "small");
        eval_traffic.metadata = serde_json::json!({"tags": ["eval"]});
        for r in [row("a", "Lima", "small"), row("b", "It is Lima.", "small"), row("c", "Lima", "big"), eval_traffic] {
            store.insert(std::slice::from_ref(&r)).await.unwrap();
            online.offer(&r);
        }
        let stats = online.stats().clone();
        drop(online);
        task.await.unwrap();
        assert_eq!(stats.evaluated.load(Ordering::Relaxed), 2);
        let a = store.feedback("a").await.unwrap();
        assert_eq!((a[0].source, a[0].name.as_str(), a[0].score), (FeedbackSource::Check, "one-word", 1.0));
        assert_eq!(store.feedback("b").await.unwrap()[0].score, 0.0);
        assert!(store.feedback("c").await.unwrap().is_empty(), "another route");
        assert!(store.feedback("e").await.unwrap().is_empty(), "keel-eval's own requests");
    }
}
