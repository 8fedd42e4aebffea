//! The request log, written at the edge because it records what the client got: the HTTP status, a stream that
//! ended badly, a client that went away. Every API request is recorded exactly once, whatever its outcome: an
//! [`Entry`] is opened when the request arrives and finished exactly once, explicitly (answer, error,
//! rejection, end of stream) or, if the handler or the stream is dropped first (the client disconnected), by
//! its `Drop`. The same finish path updates the metrics, so both always agree.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Bytes;
use axum::http::HeaderMap;
use futures::Stream;
use keel_config::BodyPolicy;
use keel_pipeline::cost::{self, Prices, Tokens};
use keel_pipeline::{AttemptOutcome, Attempts, CacheOutcome, GatewayError, InboundApi, RequestContext, RequestId};
use keel_providers::{ChatStream, ProviderError};
use keel_store::{AttemptRow, LogWriter, Record};
use keel_types::{ChatChunk, ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, Usage};
use serde_json::Value;

use crate::ApiError;
use crate::metrics::{AttemptLabels, CacheLabels, Metrics, ModelLabels, RequestLabels, TokenLabels};

/// The request log's configuration and sinks, shared by all requests.
pub struct RequestLog {
    writer: Option<LogWriter>,
    bodies: BodyPolicy,
    max_body: usize,
    prices: Prices,
    metrics: Arc<Metrics>,
    /// Model aliases clients may name; any other name is counted as "unknown" in metrics (bounded labels).
    known_models: std::collections::HashSet<String>,
}

impl RequestLog {
    pub fn new(
        writer: Option<LogWriter>,
        bodies: BodyPolicy,
        max_body: usize,
        prices: Prices,
        metrics: Arc<Metrics>,
        known_models: impl IntoIterator<Item = String>,
    ) -> Self {
        Self { writer, bodies, max_body, prices, metrics, known_models: known_models.into_iter().collect() }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Opens the entry of a request that just arrived.
    pub(crate) fn start(
        self: &Arc<Self>,
        id: &RequestId,
        api: InboundApi,
        endpoint: &'static str,
        headers: &HeaderMap,
    ) -> Entry {
        let record = Record {
            id: id.0.to_string(),
            ts_ms: keel_store::now_ms(),
            key_id: None,
            tenant: None,
            api: match api {
                InboundApi::OpenAi => "openai".into(),
                InboundApi::Anthropic => "anthropic".into(),
            },
            endpoint: endpoint.into(),
            model_requested: None,
            model_served: None,
            status: 0,
            outcome: String::new(),
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
            request_body: None,
            response_body: None,
            metadata: metadata(headers),
        };
        Entry {
            log: self.clone(),
            record: Some(record),
            received: Instant::now(),
            endpoint,
            api,
            attempts: None,
            raw: Bytes::new(),
            admitted: None,
            cache: None,
        }
    }

    fn body(&self, json: impl FnOnce() -> Option<Value>, raw: Option<&[u8]>) -> Option<String> {
        let text = match self.bodies {
            BodyPolicy::None => return None,
            BodyPolicy::Full => match raw {
                Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                None => json()?.to_string(),
            },
            BodyPolicy::Redacted => {
                let mut v = match raw {
                    Some(bytes) => serde_json::from_slice(bytes).ok()?,
                    None => json()?,
                };
                redact(&mut v, false);
                v.to_string()
            }
        };
        Some(truncate(text, self.max_body))
    }
}

/// `x-keel-tags: a,b` and `x-keel-metadata: {"k": "v"}` (a JSON object), kept with the row.
fn metadata(headers: &HeaderMap) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(meta) = headers.get("x-keel-metadata").and_then(|v| v.to_str().ok()) {
        match serde_json::from_str::<Value>(meta) {
            Ok(Value::Object(m)) => out.extend(m),
            _ => {
                out.insert("x-keel-metadata".into(), Value::String(meta.to_string()));
            }
        }
    }
    if let Some(tags) = headers.get("x-keel-tags").and_then(|v| v.to_str().ok()) {
        let tags: Vec<Value> =
            tags.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| Value::String(t.into())).collect();
        out.insert("tags".into(), Value::Array(tags));
    }
    Value::Object(out)
}

/// Replaces every text a person wrote or a model generated with its length, keeping the JSON's shape (model,
/// parameters, roles, tool names).
fn redact(v: &mut Value, inside_text: bool) {
    const TEXT_KEYS: [&str; 7] = ["content", "text", "arguments", "input", "prompt", "system", "thinking"];
    match v {
        Value::String(s) if inside_text => *s = format!("[redacted: {} chars]", s.chars().count()),
        Value::Array(items) => items.iter_mut().for_each(|i| redact(i, inside_text)),
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                // `type` names a part's kind ("text", "image_url"), not content.
                redact(item, (inside_text || TEXT_KEYS.contains(&k.as_str())) && k != "type");
            }
        }
        _ => {}
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}

/// One request's log entry, finished exactly once.
pub(crate) struct Entry {
    log: Arc<RequestLog>,
    /// `None` once finished.
    record: Option<Record>,
    received: Instant,
    endpoint: &'static str,
    api: InboundApi,
    /// The request's attempts, shared with the pipeline: a request cancelled mid-way still logs them.
    attempts: Option<Attempts>,
    /// The request body as received (reference-counted, not copied), for counting tokens a provider did not
    /// report.
    raw: Bytes,
    /// A virtual key's reservation, settled with the real cost when the entry is finished.
    admitted: Option<crate::auth::Admitted>,
    /// How the response cache served the request, when it was consulted.
    cache: Option<CacheOutcome>,
}

/// How a non-streamed request ended. Response bodies are logged in keel's canonical shape (an OpenAI chat
/// completion); embeddings without their vectors.
pub(crate) enum Outcome<'a> {
    Chat(&'a ChatResponse),
    Embeddings(&'a EmbeddingsResponse),
    /// The error the client got and its class.
    Failed(&'a ApiError, String),
}

impl Entry {
    /// Keeps the request body per the body policy.
    pub(crate) fn request(&mut self, raw: &Bytes) {
        self.raw = raw.clone();
        let body = self.log.body(|| None, Some(raw));
        if let Some(r) = self.record.as_mut() {
            r.request_body = body;
        }
    }

    /// The request was parsed: its model, whether it streams, its context's attempts.
    pub(crate) fn attach(&mut self, ctx: &RequestContext, stream: bool, user: Option<&str>) {
        self.attempts = Some(ctx.attempts.clone());
        tracing::Span::current().record("gen_ai.request.model", ctx.requested_model.as_str());
        if let Some(r) = self.record.as_mut() {
            r.model_requested = Some(ctx.requested_model.clone());
            r.stream = stream;
            if let (Some(user), Value::Object(m)) = (user, &mut r.metadata) {
                m.entry("user").or_insert_with(|| Value::String(user.to_string()));
            }
        }
    }

    /// The caller, when a key was checked.
    pub(crate) fn principal(&mut self, p: Option<&crate::auth::Principal>) {
        if let (Some(r), Some(crate::auth::Principal::Key(key))) = (self.record.as_mut(), p) {
            r.key_id = Some(key.id.clone());
            r.tenant = key.tenant.clone();
        }
    }

    /// How the cache served the request (from the pipeline's context).
    pub(crate) fn cache(&mut self, outcome: Option<CacheOutcome>) {
        self.cache = outcome;
    }

    /// The key's reservation, to settle when the request ends.
    pub(crate) fn admitted(&mut self, a: Option<crate::auth::Admitted>) {
        self.admitted = a;
    }

    /// Refused before reaching the pipeline (unreadable body, invalid request).
    pub(crate) fn reject(mut self, err: &ApiError) {
        if let Some(mut r) = self.record.take() {
            r.status = err.status.as_u16();
            r.outcome = "rejected".into();
            r.error_class = Some(err.code.clone().unwrap_or_else(|| err.kind.to_string()));
            r.response_body = self.log.body(|| serde_json::to_value(err.openai_body()).ok(), None);
            let _ = self.write(r, Tokens::default(), false, None);
        }
    }

    /// A non-streamed request ended. Returns its cost in USD when known (for the `x-keel-cost-usd` header).
    pub(crate) fn finish(mut self, outcome: Outcome<'_>) -> Option<f64> {
        let mut r = self.record.take()?;
        let mut counted = false;
        let tokens = match outcome {
            Outcome::Chat(resp) => {
                r.status = 200;
                r.outcome = "ok".into();
                r.response_body = self.log.body(|| serde_json::to_value(resp).ok(), None);
                match &resp.usage {
                    Some(u) => tokens_of(u),
                    None => {
                        counted = true;
                        let out: String =
                            resp.choices.iter().filter_map(|c| c.message.content.as_ref()).map(|c| c.text()).collect();
                        let model = resp.model.clone();
                        Tokens {
                            input: self.count_prompt(&model),
                            output: cost::count_text(&model, &out),
                            cached: 0,
                            estimated: true,
                        }
                    }
                }
            }
            Outcome::Embeddings(resp) => {
                r.status = 200;
                r.outcome = "ok".into();
                let summary = || {
                    Some(serde_json::json!({
                        "model": resp.model,
                        "data": format!("[{} embeddings]", resp.data.len()),
                        "usage": resp.usage,
                    }))
                };
                r.response_body = self.log.body(summary, None);
                let reported = resp.usage.as_ref().map_or(0, |u| u.prompt_tokens);
                let input = if reported > 0 {
                    reported
                } else {
                    counted = true;
                    serde_json::from_slice::<EmbeddingsRequest>(&self.raw)
                        .map_or(0, |req| cost::count_embeddings_input(&resp.model, &req))
                };
                Tokens { input, output: 0, cached: 0, estimated: counted }
            }
            Outcome::Failed(err, class) => {
                r.status = err.status.as_u16();
                r.outcome = "error".into();
                r.error_class = Some(class);
                r.response_body = self.log.body(|| serde_json::to_value(err.openai_body()).ok(), None);
                Tokens::default()
            }
        };
        self.write(r, tokens, counted, None)
    }

    /// Prompt tokens counted from the request body, for a provider that reported no usage.
    fn count_prompt(&self, model: &str) -> u64 {
        let req = match self.api {
            InboundApi::OpenAi => serde_json::from_slice::<ChatRequest>(&self.raw).ok(),
            InboundApi::Anthropic => serde_json::from_slice::<keel_types::anthropic::MessagesRequest>(&self.raw)
                .ok()
                .and_then(|m| keel_translate::messages_request_to_chat(m).ok()),
        };
        req.map_or(0, |req| cost::count_chat_prompt(model, &req))
    }

    /// Follows a stream to its end (or the client's disconnect) and finishes the entry then.
    pub(crate) fn watch(mut self, stream: ChatStream) -> ChatStream {
        if let Some(r) = self.record.as_mut() {
            r.status = 200;
        }
        let keep_text = self.log.bodies != BodyPolicy::None;
        Box::pin(Watched {
            inner: stream,
            entry: Some(self),
            first_token: None,
            usage: None,
            text: String::new(),
            keep_text,
            model: String::new(),
            finish_reason: None,
        })
    }

    /// Completes the row (served model, attempts, latency, cost), updates the metrics and queues the row.
    fn write(&mut self, mut r: Record, tokens: Tokens, estimated: bool, ttft: Option<f64>) -> Option<f64> {
        let attempts = self.attempts.as_ref().map(Attempts::snapshot).unwrap_or_default();
        let served = attempts.iter().rev().find(|a| a.outcome == AttemptOutcome::Ok);
        r.model_served = served.map(|a| format!("{}/{}", a.provider, a.model));
        let has_usage = r.status == 200 || tokens.input + tokens.output > 0;
        if has_usage {
            r.tokens_in = Some(tokens.input);
            r.tokens_out = Some(tokens.output);
            r.tokens_cached = Some(tokens.cached);
            r.cost_usd = served.and_then(|a| self.log.prices.cost(&a.provider, &a.model, tokens));
        }
        if let Some(outcome) = &self.cache {
            r.cache = Some(outcome.as_str().to_string());
            let m = &self.log.metrics;
            match outcome {
                CacheOutcome::Hit { similarity, saved } => {
                    // Nothing was spent; what the answer cost when it was first made is what the hit saved.
                    r.cost_usd = Some(0.0);
                    let provider = keel_config::ProviderId::from(saved.provider.as_str());
                    let was = self.log.prices.cost(&provider, &saved.model, tokens);
                    if let Value::Object(meta) = &mut r.metadata {
                        meta.insert(
                            "cache_source".into(),
                            Value::String(format!("{}/{}", saved.provider, saved.model)),
                        );
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
                _ => {}
            }
        }
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
                    AttemptOutcome::Ok => None,
                    AttemptOutcome::Failed { status, .. } => *status,
                    AttemptOutcome::CircuitOpen => None,
                },
                outcome: match &a.outcome {
                    AttemptOutcome::Ok => "ok".into(),
                    AttemptOutcome::Failed { kind, .. } => kind.as_str().into(),
                    AttemptOutcome::CircuitOpen => "circuit_open".into(),
                },
            })
            .collect();
        r.ttft_ms = ttft;
        r.latency_ms = self.received.elapsed().as_secs_f64() * 1000.0;
        self.observe(&r);
        if let Some(a) = self.admitted.take() {
            let (cost, tokens) = (r.cost_usd.unwrap_or(0.0), tokens.input + tokens.output);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        if let Err(e) = a.counters.settle(&a.reservation, cost, tokens).await {
                            tracing::error!(error = %e, key = a.reservation.key_id, "settling a budget reservation failed");
                        }
                    });
                }
                Err(_) => tracing::error!(key = a.reservation.key_id, "no runtime to settle a budget reservation"),
            }
        }
        let cost = r.cost_usd;
        if let Some(w) = &self.log.writer {
            w.write_detached(r);
        }
        cost
    }

    fn observe(&self, r: &Record) {
        let m = &self.log.metrics;
        let model = match r.model_requested.as_deref() {
            Some(name) if self.log.known_models.contains(name) => name.to_string(),
            Some(_) => "unknown".to_string(),
            None => String::new(),
        };
        let outcome = match r.outcome.as_str() {
            "ok" => "ok",
            "rejected" => "rejected",
            "stream_error" => "stream_error",
            "client_disconnected" => "client_disconnected",
            _ => "error",
        };
        m.requests
            .get_or_create(&RequestLabels { endpoint: self.endpoint, model: model.clone(), status: r.status, outcome })
            .inc();
        let labels = ModelLabels { model: model.clone() };
        m.duration.get_or_create(&labels).observe(r.latency_ms / 1000.0);
        if let Some(t) = r.ttft_ms {
            m.ttft.get_or_create(&labels).observe(t / 1000.0);
        }
        // A cache hit spent no tokens: its row keeps the answer's usage, the token counters do not count it.
        let hit = matches!(r.cache.as_deref(), Some("hit" | "semantic_hit"));
        for (kind, n) in [("input", r.tokens_in), ("output", r.tokens_out), ("cached_input", r.tokens_cached)] {
            if let Some(n) = n.filter(|n| *n > 0 && !hit) {
                m.tokens.get_or_create(&TokenLabels { model: model.clone(), kind }).inc_by(n);
            }
        }
        if let Some(c) = r.cost_usd.filter(|c| *c > 0.0) {
            m.cost.get_or_create(&labels).inc_by(c);
        }
        if let Some(outcome) = &r.cache {
            m.cache.get_or_create(&CacheLabels { outcome: outcome.clone() }).inc();
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
    /// The handler was dropped before the request finished: the client went away while keel was working.
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            if r.status == 0 {
                // nginx's "client closed request": no status was sent.
                r.status = 499;
            }
            r.outcome = "client_disconnected".into();
            let _ = self.write(r, Tokens::default(), false, None);
        }
    }
}

/// The class of a failure, for the log and the metrics.
pub(crate) fn error_class(e: &GatewayError) -> String {
    match e {
        GatewayError::InvalidRequest(_) => "invalid_request".into(),
        GatewayError::UnknownModel { .. } => "unknown_model".into(),
        GatewayError::ProviderUnavailable(_) => "provider_unavailable".into(),
        GatewayError::Provider(p) => p.kind.as_str().into(),
    }
}

fn tokens_of(u: &Usage) -> Tokens {
    Tokens { input: u.prompt_tokens, output: u.completion_tokens, cached: u.cached_tokens(), estimated: false }
}

/// A stream under watch: times the first token, keeps the usage (and, per the body policy, the text) and
/// finishes the entry at the end marker, at an error, or when dropped before either.
struct Watched {
    inner: ChatStream,
    entry: Option<Entry>,
    first_token: Option<f64>,
    usage: Option<Usage>,
    text: String,
    keep_text: bool,
    model: String,
    finish_reason: Option<String>,
}

impl Watched {
    fn observe(&mut self, chunk: &ChatChunk) {
        if self.model.is_empty() && !chunk.model.is_empty() {
            self.model = chunk.model.clone();
        }
        if let Some(u) = &chunk.usage {
            self.usage = Some(u.clone());
        }
        for c in &chunk.choices {
            let piece = c.delta.content.as_deref().unwrap_or("");
            if self.first_token.is_none() && (!piece.is_empty() || c.delta.tool_calls.is_some()) {
                self.first_token = self.entry.as_ref().map(|e| e.received.elapsed().as_secs_f64() * 1000.0);
            }
            // Kept for the body (per policy) and for counting when the provider reports no usage.
            if self.keep_text || self.usage.is_none() {
                self.text.push_str(piece);
            }
            if let Some(f) = &c.finish_reason {
                self.finish_reason = serde_json::to_value(f).ok().and_then(|v| v.as_str().map(str::to_string));
            }
        }
    }

    fn end(&mut self, outcome: &str, error: Option<&ProviderError>) {
        let Some(mut entry) = self.entry.take() else { return };
        let Some(mut r) = entry.record.take() else { return };
        r.outcome = outcome.into();
        r.error_class = error.map(|e| e.kind.as_str().to_string());
        let (tokens, estimated) = match &self.usage {
            Some(u) => (tokens_of(u), false),
            None => {
                let model = if self.model.is_empty() {
                    r.model_requested.clone().unwrap_or_default()
                } else {
                    self.model.clone()
                };
                let t = Tokens {
                    input: entry.count_prompt(&model),
                    output: cost::count_text(&model, &self.text),
                    cached: 0,
                    estimated: true,
                };
                (t, true)
            }
        };
        if self.keep_text {
            let body = serde_json::json!({
                "content": std::mem::take(&mut self.text),
                "finish_reason": self.finish_reason,
                "error": error.map(|e| e.to_string()),
            });
            r.response_body = entry.log.body(|| Some(body), None);
        }
        let _ = entry.write(r, tokens, estimated, self.first_token);
    }
}

impl Stream for Watched {
    type Item = Result<ChatChunk, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = futures::ready!(self.inner.as_mut().poll_next(cx));
        match &item {
            Some(Ok(chunk)) => self.observe(chunk),
            Some(Err(e)) => {
                let e = e.clone();
                self.end("stream_error", Some(&e));
            }
            None => self.end("ok", None),
        }
        Poll::Ready(item)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.end("client_disconnected", None);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn redaction_keeps_the_shape_and_hides_every_text() {
        let mut v = serde_json::json!({
            "model": "gpt-4o",
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": "secret system prompt"},
                {"role": "user", "content": [{"type": "text", "text": "my card is 4111"}]},
                {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]}
            ],
            "input": ["embed me"]
        });
        redact(&mut v, false);
        let s = v.to_string();
        assert!(
            !s.contains("secret") && !s.contains("4111") && !s.contains("embed me") && !s.contains("\\\"q\\\""),
            "{s}"
        );
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["messages"][0]["content"], "[redacted: 20 chars]");
        assert_eq!(v["messages"][2]["tool_calls"][0]["function"]["name"], "lookup");
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("héllo".into(), 2), "h…[truncated]");
        assert_eq!(truncate("short".into(), 10), "short");
    }

    #[test]
    fn metadata_comes_from_the_keel_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-keel-tags", "checkout, beta,".parse().unwrap());
        h.insert("x-keel-metadata", r#"{"team":"payments"}"#.parse().unwrap());
        assert_eq!(metadata(&h), serde_json::json!({"team": "payments", "tags": ["checkout", "beta"]}));
        let mut h = HeaderMap::new();
        h.insert("x-keel-metadata", "not json".parse().unwrap());
        assert_eq!(metadata(&h), serde_json::json!({"x-keel-metadata": "not json"}));
    }
}
