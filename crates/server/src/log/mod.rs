//! The request log, written at the edge because it records what the client got: the HTTP status, a stream that
//! ended badly, a client that went away. Every API request is recorded exactly once, whatever its outcome: an
//! [`Entry`] is opened when the request arrives and finished exactly once, explicitly (answer, error,
//! rejection, end of stream) or, if the handler or the stream is dropped first (the client disconnected, or the
//! shutdown deadline cut it), by its `Drop`. The same finish path updates the metrics and settles the key's
//! budget reservation, so the three always agree.
//!
//! Back-pressure: a row is queued through the writer's bounded queue, and the request path waits for room when
//! the policy says so: a non-streamed answer before it is sent, a stream before its last event
//! ([`watch::Watched`]). Only a request that is already gone cannot wait; its row goes through the writer's
//! bounded background waiters (`LogWriter::write_detached`).

mod body;
mod layer;
mod watch;

pub(crate) use body::metadata;
pub(crate) use layer::{Inbound, LogLayer};

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::body::Bytes;
use keel_config::BodyPolicy;
use keel_pipeline::cost::{self, SharedPrices, Tokens};
use keel_pipeline::{
    AttemptOutcome, AttemptRecord, Attempts, CacheOutcome, Endpoint, Operation, Principal, Prompt, RequestContext,
    Settlement,
};
use keel_providers::ChatStream;
use keel_store::{AttemptRow, CacheStatus, LogWriter, Outcome, Record};
use keel_types::{ChatResponse, EmbeddingsResponse, Usage};
use serde_json::Value;

use crate::ApiError;
use crate::arrival::Arrival;
use crate::metrics::{AttemptLabels, CacheLabels, Metrics, ModelLabels, RequestLabels, TokenLabels};

/// The request log's configuration and sinks, shared by all requests.
pub struct RequestLog {
    writer: Option<LogWriter>,
    bodies: BodyPolicy,
    max_body: usize,
    /// Shared with the budget reservations; a reloaded configuration replaces it.
    prices: SharedPrices,
    metrics: Arc<Metrics>,
    /// Model aliases clients may name; any other name is counted as "unknown" in metrics (bounded labels).
    /// Replaced whole when a configuration is reloaded.
    known_models: arc_swap::ArcSwap<HashSet<String>>,
    /// Set at the shutdown deadline: requests cut from then on are logged as `shutdown`, not as disconnects.
    stopping: AtomicBool,
    /// The rows queued last, which may not be in the store yet (feedback can name them at once).
    recent: std::sync::Mutex<Recent>,
    /// Sees every row as it is queued (online evaluation samples from it); it must not wait.
    tap: Option<RowTap>,
}

/// An observer of finished rows, called on the request path: it must return at once (queue, never wait).
pub type RowTap = Arc<dyn Fn(&Record) + Send + Sync>;

/// A logged request, as feedback finds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Logged {
    /// keel's id (the log row's).
    pub id: String,
    pub key_id: Option<String>,
}

/// The last [`Recent::CAPACITY`] rows queued for the store, by keel's id and by the client's: the log writer
/// stores rows in batches, and a client may give feedback on an answer the moment it has it. Bounded: the
/// oldest is forgotten (by then it was written long ago; the store answers for it).
#[derive(Debug, Default)]
pub(crate) struct Recent {
    by_id: std::collections::HashMap<String, Logged>,
    by_client: std::collections::HashMap<String, String>,
    order: std::collections::VecDeque<(String, Option<String>)>,
}

impl Recent {
    const CAPACITY: usize = 16_384;

    fn note(&mut self, r: &Record) {
        if self.by_id.contains_key(&r.id) {
            return;
        }
        if self.order.len() >= Self::CAPACITY
            && let Some((id, client)) = self.order.pop_front()
        {
            self.by_id.remove(&id);
            if let Some(c) = client
                && self.by_client.get(&c) == Some(&id)
            {
                self.by_client.remove(&c);
            }
        }
        self.by_id.insert(r.id.clone(), Logged { id: r.id.clone(), key_id: r.key_id.clone() });
        if let Some(c) = &r.client_request_id {
            self.by_client.insert(c.clone(), r.id.clone());
        }
        self.order.push_back((r.id.clone(), r.client_request_id.clone()));
    }

    /// The request with keel's id `id`, else the latest with the client's id `id`.
    fn find(&self, id: &str) -> Option<Logged> {
        self.by_id.get(id).or_else(|| self.by_client.get(id).and_then(|k| self.by_id.get(k))).cloned()
    }
}

impl RequestLog {
    pub fn new(
        writer: Option<LogWriter>,
        bodies: BodyPolicy,
        max_body: usize,
        prices: impl Into<SharedPrices>,
        metrics: Arc<Metrics>,
        known_models: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            writer,
            bodies,
            max_body,
            prices: prices.into(),
            metrics,
            known_models: arc_swap::ArcSwap::from_pointee(known_models.into_iter().collect()),
            stopping: AtomicBool::new(false),
            recent: std::sync::Mutex::new(Recent::default()),
            tap: None,
        }
    }

    /// Adds an observer of every row as it is queued.
    pub fn with_tap(mut self, tap: RowTap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// A request queued for the log lately (by keel's id or the client's), which the store may not hold yet.
    pub(crate) fn recent(&self, id: &str) -> Option<Logged> {
        self.recent.lock().ok().and_then(|r| r.find(id))
    }

    fn note(&self, r: &Record) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.note(r);
        }
        if let Some(tap) = &self.tap {
            tap(r);
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The aliases a reloaded configuration serves (the metrics' bounded `model` label).
    pub fn set_known_models(&self, names: impl IntoIterator<Item = String>) {
        self.known_models.store(Arc::new(names.into_iter().collect()));
    }

    /// The shutdown deadline came: what is cut from now on was cut by keel, not by its client.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Opens the entry of a request that just arrived, with its body as received (kept per the body policy).
    pub(crate) fn start(self: &Arc<Self>, arrival: &Arrival, raw: &Bytes) -> Entry {
        let ctx = &arrival.ctx;
        let (key_id, tenant) = match &ctx.principal {
            Some(Principal::Key(key)) => (Some(key.id.clone()), key.tenant.clone()),
            Some(Principal::Admin) | None => (None, None),
        };
        let record = Record {
            id: ctx.id.0.to_string(),
            client_request_id: ctx.client.request_id.clone(),
            ts_ms: keel_store::now_ms(),
            key_id,
            tenant,
            api: ctx.api.as_str().into(),
            endpoint: ctx.endpoint.as_str().into(),
            model_requested: None,
            model_served: None,
            status: 0,
            outcome: Outcome::Error,
            error_class: None,
            stream: false,
            attempts: Vec::new(),
            ttft_ms: None,
            latency_ms: 0.0,
            tokens_in: None,
            tokens_out: None,
            tokens_cached: None,
            cost_usd: None,
            cache: None,
            request_body: if raw.is_empty() { None } else { self.body(|| None, Some(raw)) },
            response_body: None,
            metadata: Value::clone(&ctx.client.metadata),
            template: ctx.template.as_ref().map(|t| t.name.to_string()),
            template_version: ctx.template.as_ref().map(|t| t.version.to_string()),
            routing: None,
        };
        Entry {
            log: self.clone(),
            record: Some(record),
            received: ctx.received,
            endpoint: ctx.endpoint,
            attempts: ctx.attempts.clone(),
            prompt: Prompt::default(),
            settlement: ctx.settlement.clone(),
            cache: None,
            guard: ctx.guard.clone(),
            escalation_time: None,
        }
    }

    /// Logs a request refused at the HTTP edge (identity), before it reached the request path; the row is
    /// queued before the refusal is sent.
    pub(crate) async fn refuse(self: &Arc<Self>, arrival: Arrival, err: &ApiError) {
        self.start(&arrival, &Bytes::new()).reject(err, &class_of(err)).await;
    }

    /// As [`RequestLog::refuse`], for a refusal that must not wait for the log (admission control shedding
    /// load).
    pub(crate) fn refuse_detached(self: &Arc<Self>, arrival: Arrival, err: &ApiError) {
        let mut entry = self.start(&arrival, &Bytes::new());
        if let Some(r) = entry.rejected(err, &class_of(err)) {
            entry.queue_detached(r);
        }
    }

    fn body(&self, json: impl FnOnce() -> Option<Value>, raw: Option<&[u8]>) -> Option<String> {
        body::kept(self.bodies, self.max_body, json, raw)
    }
}

/// One request's log entry, finished exactly once.
pub(crate) struct Entry {
    log: Arc<RequestLog>,
    /// `None` once finished.
    record: Option<Record>,
    received: Instant,
    endpoint: Endpoint,
    /// The request's attempts, shared with the pipeline: a request cancelled mid-way still logs them.
    attempts: Attempts,
    /// The request's prompt, for counting tokens a provider did not report (counted once, shared).
    prompt: Prompt,
    /// The key's budget reservation (put there by the limits stage), settled with the real cost when the entry
    /// is finished.
    settlement: Settlement,
    /// How the response cache served the request, when it was consulted.
    cache: Option<CacheOutcome>,
    /// The guards' verdicts, shared with the guard stage (a stream's output verdicts arrive until its end).
    guard: keel_pipeline::GuardReport,
    /// The time a cascade's failed steps took, for the metrics.
    escalation_time: Option<std::time::Duration>,
}

/// How a non-streamed request ended. Response bodies are logged in keel's canonical shape (an OpenAI chat
/// completion); embeddings without their vectors.
pub(crate) enum Answer<'a> {
    Chat(&'a ChatResponse),
    Embeddings(&'a EmbeddingsResponse),
    /// The error the client got and its class.
    Failed(&'a ApiError, &'a str),
}

/// What the answer itself says it consumed.
enum Reported<'a> {
    /// The provider's usage (for a continued stream, every attempt's).
    Usage(Tokens),
    /// Nothing: keel counts the prompt, and `text` as the output delivered so far.
    Unknown { text: &'a str },
}

impl Entry {
    /// The request was parsed: its model, whether it streams, its caller's `user`, its prompt.
    pub(crate) fn attach(&mut self, ctx: &RequestContext, op: &Operation) {
        self.prompt = ctx.prompt.clone();
        tracing::Span::current().record("gen_ai.request.model", op.model());
        let user = match op {
            Operation::Chat(r) => r.user.as_deref(),
            Operation::Embeddings(r) => r.user.as_deref(),
        };
        if let Some(r) = self.record.as_mut() {
            r.model_requested = Some(op.model().to_string());
            r.stream = op.streams();
            if let (Some(user), Value::Object(m)) = (user, &mut r.metadata) {
                m.entry("user").or_insert_with(|| Value::String(user.to_string()));
            }
        }
    }

    /// The guards' verdicts (from the pipeline's context).
    pub(crate) fn guard(&mut self, report: keel_pipeline::GuardReport) {
        self.guard = report;
    }

    /// How the cache served the request (from the pipeline's context).
    pub(crate) fn cache(&mut self, outcome: Option<CacheOutcome>) {
        self.cache = outcome;
    }

    /// What a router decided (from the pipeline's context).
    pub(crate) fn routing(&mut self, decision: Option<&keel_pipeline::RouteDecision>) {
        let Some(d) = decision else { return };
        if d.escalations > 0 {
            self.escalation_time = Some(d.escalation_time);
        }
        if let Some(r) = self.record.as_mut() {
            r.routing = Some(keel_store::Routing {
                router: d.router.clone(),
                to: d.to.clone(),
                reason: d.reason.clone(),
                escalations: d.escalations,
            });
        }
    }

    /// Refused before anything was done with it (unreadable body, invalid request, identity, the key's limits):
    /// the row is queued before the refusal is sent.
    pub(crate) async fn reject(mut self, err: &ApiError, class: &str) {
        if let Some(r) = self.rejected(err, class) {
            self.queue(r).await;
        }
    }

    fn rejected(&mut self, err: &ApiError, class: &str) -> Option<Record> {
        let mut r = self.record.take()?;
        r.status = err.status.as_u16();
        r.outcome = Outcome::Rejected;
        r.error_class = Some(class.to_string());
        r.response_body = self.log.body(|| serde_json::to_value(err.openai_body()).ok(), None);
        let (r, _) = self.complete(r, Reported::Unknown { text: "" }, None);
        Some(r)
    }

    /// A non-streamed request ended; its row is queued (waiting for room per the log's policy) before the
    /// answer goes out. Returns its cost in USD when known (for the `x-keel-cost-usd` header).
    pub(crate) async fn finish(mut self, answer: Answer<'_>) -> Option<f64> {
        let mut r = self.record.take()?;
        let reported = match answer {
            Answer::Chat(resp) => {
                r.status = 200;
                r.outcome = Outcome::Ok;
                r.response_body = self.log.body(|| serde_json::to_value(resp).ok(), None);
                match &resp.usage {
                    Some(u) => Reported::Usage(tokens_of(u)),
                    None => {
                        let out: String =
                            resp.choices.iter().filter_map(|c| c.message.content.as_ref()).map(|c| c.text()).collect();
                        let (r, cost) = self.complete(r, Reported::Unknown { text: &out }, None);
                        self.queue(r).await;
                        return cost;
                    }
                }
            }
            Answer::Embeddings(resp) => {
                r.status = 200;
                r.outcome = Outcome::Ok;
                let summary = || {
                    Some(serde_json::json!({
                        "model": resp.model,
                        "data": format!("[{} embeddings]", resp.data.len()),
                        "usage": resp.usage,
                    }))
                };
                r.response_body = self.log.body(summary, None);
                match resp.usage.as_ref().map(|u| u.prompt_tokens).filter(|n| *n > 0) {
                    Some(input) => Reported::Usage(Tokens { input, ..Tokens::default() }),
                    None => {
                        let input = self.prompt.tokens(&resp.model);
                        Reported::Usage(Tokens { input, estimated: true, ..Tokens::default() })
                    }
                }
            }
            Answer::Failed(err, class) => {
                r.status = err.status.as_u16();
                r.outcome = Outcome::Error;
                r.error_class = Some(class.to_string());
                r.response_body = self.log.body(|| serde_json::to_value(err.openai_body()).ok(), None);
                Reported::Unknown { text: "" }
            }
        };
        let (r, cost) = self.complete(r, reported, None);
        self.queue(r).await;
        cost
    }

    /// Follows a stream to its end (or the client's disconnect) and finishes the entry then.
    pub(crate) fn watch(mut self, stream: ChatStream) -> ChatStream {
        if let Some(r) = self.record.as_mut() {
            r.status = 200;
        }
        let keep_text = self.log.bodies != BodyPolicy::None;
        Box::pin(watch::Watched::new(stream, self, keep_text))
    }

    /// Waits for room in the log's queue (per its policy), then queues the row.
    async fn queue(&self, r: Record) {
        if let Some(w) = self.write(r) {
            w.await;
        }
    }

    /// The write of a row, to await: cancel-safe (dropped before the row was queued, it queues it detached).
    fn write(&self, r: Record) -> Option<keel_store::Write> {
        let w = self.log.writer.as_ref()?;
        self.log.note(&r);
        Some(w.write(r))
    }

    /// Queues the row without waiting: the request is gone.
    fn queue_detached(&self, r: Record) {
        if let Some(w) = &self.log.writer {
            self.log.note(&r);
            w.write_detached(r);
        }
    }

    /// Completes the row: who served it, every attempt, tokens and cost, the cache, latency; settles the key's
    /// reservation; updates the metrics. Returns the row and its cost.
    ///
    /// Tokens and cost are counted per upstream attempt, at each one's price: an attempt that broke part-way
    /// through a stream carries keel's estimate of what it consumed; the attempt that answered is what the
    /// answer reports, less those estimates (a continued stream's usage includes them), or, when nothing was
    /// reported (a provider without usage, a client that left), the prompt and the text delivered, counted.
    fn complete(&mut self, mut r: Record, reported: Reported<'_>, ttft: Option<f64>) -> (Record, Option<f64>) {
        let attempts = self.attempts.snapshot();
        let serving = attempts.iter().rposition(|a| {
            matches!(a.outcome, AttemptOutcome::Ok | AttemptOutcome::FailedMidStream { .. } | AttemptOutcome::InFlight)
        });
        r.model_served = serving
            .map(|i| &attempts[i])
            .filter(|a| !matches!(a.outcome, AttemptOutcome::InFlight))
            .map(|a| format!("{}/{}", a.provider, a.model));
        let prices = self.log.prices.load();
        let price = |a: &AttemptRecord, t: Tokens| prices.cost(&a.provider, &a.model, t);
        let mut total = Tokens::default();
        // What keel estimated for broken attempts: a continued stream's reported usage includes it. (Answers
        // set aside, a cascade's or a judge's, were reported by their provider and are not in it.)
        let mut broken = Tokens::default();
        let mut cost = Some(0.0);
        let mut estimated = false;
        for (i, a) in attempts.iter().enumerate() {
            if let (Some(u), false) = (a.usage, Some(i) == serving) {
                let t = Tokens { input: u.input, output: u.output, cached: 0, estimated: u.estimated };
                add(&mut total, t);
                if u.estimated {
                    add(&mut broken, t);
                }
                cost = cost.zip(price(a, t)).map(|(c, p)| c + p);
                estimated |= u.estimated;
            }
        }
        match serving.map(|i| &attempts[i]) {
            Some(a) => {
                let own = match (a.usage, &reported) {
                    (Some(u), _) => Tokens { input: u.input, output: u.output, cached: 0, estimated: u.estimated },
                    (None, Reported::Usage(t)) => Tokens {
                        input: t.input.saturating_sub(broken.input),
                        output: t.output.saturating_sub(broken.output),
                        cached: t.cached,
                        estimated: t.estimated,
                    },
                    (None, Reported::Unknown { text }) => Tokens {
                        input: self.prompt.tokens(&a.model),
                        output: cost::count_text(&a.model, text).saturating_sub(broken.output),
                        cached: 0,
                        estimated: true,
                    },
                };
                estimated |= own.estimated;
                add(&mut total, own);
                cost = cost.zip(price(a, own)).map(|(c, p)| c + p);
            }
            None => {
                // No upstream call: a cache hit (its answer's usage), or a refusal.
                if let Reported::Usage(t) = reported {
                    total = t;
                }
                cost = None;
            }
        }
        let has_usage = r.status == 200 || total.input + total.output > 0;
        if has_usage {
            r.tokens_in = Some(total.input);
            r.tokens_out = Some(total.output);
            r.tokens_cached = Some(total.cached);
            r.cost_usd = cost;
        }
        self.cache_outcome(&mut r, total);
        self.guard_outcome(&mut r);
        if estimated && let Value::Object(m) = &mut r.metadata {
            m.insert("tokens_estimated".into(), Value::Bool(true));
        }
        r.attempts = attempts
            .iter()
            .map(|a| AttemptRow {
                provider: a.provider.to_string(),
                model: a.model.clone(),
                started_ms: a.started_after.as_secs_f64() * 1000.0,
                latency_ms: a.latency.as_secs_f64() * 1000.0,
                status: match &a.outcome {
                    AttemptOutcome::Failed { status, .. } => *status,
                    _ => None,
                },
                outcome: a.outcome.as_str().into(),
            })
            .collect();
        r.ttft_ms = ttft;
        r.latency_ms = self.received.elapsed().as_secs_f64() * 1000.0;
        self.observe(&r);
        self.settlement.settle(r.cost_usd.unwrap_or(0.0), total.input + total.output);
        let cost = r.cost_usd;
        (r, cost)
    }

    /// The guards' part of the row: their verdicts in the metadata (`guard`), counted in the metrics by guard,
    /// action and model alias.
    fn guard_outcome(&self, r: &mut Record) {
        let verdicts = self.guard.snapshot();
        if verdicts.is_empty() {
            return;
        }
        let route = r.model_requested.clone().unwrap_or_default();
        for v in &verdicts {
            let labels =
                crate::metrics::GuardLabels { guard: v.guard.as_str(), action: v.action, route: route.clone() };
            self.log.metrics.guard.get_or_create(&labels).inc();
        }
        if let (Value::Object(meta), Ok(v)) = (&mut r.metadata, serde_json::to_value(&verdicts)) {
            meta.insert("guard".into(), v);
        }
    }

    /// The cache's part of the row: a hit cost nothing and saved what its answer cost when it was made.
    fn cache_outcome(&self, r: &mut Record, tokens: Tokens) {
        let Some(outcome) = &self.cache else { return };
        r.cache = Some(cache_status(outcome));
        let m = &self.log.metrics;
        match outcome {
            CacheOutcome::Hit { similarity, saved } => {
                r.cost_usd = Some(0.0);
                let provider = keel_config::ProviderId::from(saved.provider.as_str());
                let was = self.log.prices.load().cost(&provider, &saved.model, tokens);
                if let Value::Object(meta) = &mut r.metadata {
                    meta.insert("cache_source".into(), Value::String(format!("{}/{}", saved.provider, saved.model)));
                    if let Some(c) = was {
                        meta.insert("cache_saved_usd".into(), serde_json::json!(c));
                    }
                    if let Some(s) = similarity {
                        meta.insert("cache_similarity".into(), serde_json::json!(s));
                    }
                }
                if let Some(c) = was.filter(|c| *c > 0.0) {
                    m.cache_saved.inc_by(c);
                }
                if let Some(s) = similarity {
                    m.cache_similarity.observe(f64::from(*s));
                }
            }
            CacheOutcome::Miss { similarity: Some(s) } => m.cache_similarity.observe(f64::from(*s)),
            CacheOutcome::Miss { similarity: None } | CacheOutcome::Bypass => {}
        }
    }

    fn observe(&self, r: &Record) {
        let m = &self.log.metrics;
        let model = match r.model_requested.as_deref() {
            Some(name) if self.log.known_models.load().contains(name) => name.to_string(),
            Some(_) => "unknown".to_string(),
            None => String::new(),
        };
        m.requests
            .get_or_create(&RequestLabels {
                endpoint: self.endpoint.as_str(),
                model: model.clone(),
                status: r.status,
                outcome: r.outcome.as_str(),
            })
            .inc();
        if let Some(routing) = &r.routing {
            let labels = crate::metrics::RouteLabels { router: routing.router.clone(), to: routing.to.clone() };
            m.routed.get_or_create(&labels).inc();
            if routing.escalations > 0 {
                let router = ModelLabels { model: routing.router.clone() };
                m.escalations.get_or_create(&router).inc_by(u64::from(routing.escalations));
                if let Some(t) = self.escalation_time {
                    m.escalation_time.get_or_create(&router).observe(t.as_secs_f64());
                }
            }
        }
        let labels = ModelLabels { model: model.clone() };
        m.duration.get_or_create(&labels).observe(r.latency_ms / 1000.0);
        if let Some(t) = r.ttft_ms {
            m.ttft.get_or_create(&labels).observe(t / 1000.0);
        }
        // A cache hit spent no tokens: its row keeps the answer's usage, the token counters do not count it.
        let hit = r.cache.is_some_and(CacheStatus::is_hit);
        for (kind, n) in [("input", r.tokens_in), ("output", r.tokens_out), ("cached_input", r.tokens_cached)] {
            if let Some(n) = n.filter(|n| *n > 0 && !hit) {
                m.tokens.get_or_create(&TokenLabels { model: model.clone(), kind }).inc_by(n);
            }
        }
        if let Some(c) = r.cost_usd.filter(|c| *c > 0.0) {
            m.cost.get_or_create(&labels).inc_by(c);
        }
        if let Some(status) = r.cache {
            m.cache.get_or_create(&CacheLabels { outcome: status.as_str() }).inc();
        }
        for a in &r.attempts {
            m.attempts
                .get_or_create(&AttemptLabels {
                    provider: a.provider.clone(),
                    model: a.model.clone(),
                    outcome: a.outcome.clone(),
                })
                .inc();
        }
    }
}

impl Drop for Entry {
    /// The handler was dropped before the request finished: the client went away while keel was working, or
    /// the shutdown deadline cut the request.
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            if self.log.stopping.load(Ordering::Relaxed) {
                r.outcome = Outcome::Shutdown;
                r.status = 503;
            } else {
                r.outcome = Outcome::ClientDisconnected;
                if r.status == 0 {
                    // nginx's "client closed request": no status was sent.
                    r.status = 499;
                }
            }
            let (r, _) = self.complete(r, Reported::Unknown { text: "" }, None);
            self.queue_detached(r);
        }
    }
}

fn add(total: &mut Tokens, t: Tokens) {
    total.input = total.input.saturating_add(t.input);
    total.output = total.output.saturating_add(t.output);
    total.cached = total.cached.saturating_add(t.cached);
}

fn cache_status(outcome: &CacheOutcome) -> CacheStatus {
    match outcome {
        CacheOutcome::Hit { similarity: None, .. } => CacheStatus::Hit,
        CacheOutcome::Hit { similarity: Some(_), .. } => CacheStatus::SemanticHit,
        CacheOutcome::Miss { .. } => CacheStatus::Miss,
        CacheOutcome::Bypass => CacheStatus::Bypass,
    }
}

/// The class of a refusal made at the HTTP edge: its code, else its type.
fn class_of(err: &ApiError) -> String {
    err.code.clone().unwrap_or_else(|| err.kind.to_string())
}

fn tokens_of(u: &Usage) -> Tokens {
    Tokens { input: u.prompt_tokens, output: u.completion_tokens, cached: u.cached_tokens(), estimated: false }
}
