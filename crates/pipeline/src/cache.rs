//! The cache stage, between route (which resolved the alias) and call: answers a request from an earlier,
//! identical one (exact) or, where the route opts in, from an earlier one that means the same (semantic), and
//! keeps complete answers for later requests.
//!
//! What is never stored: errors, answers cut by the token limit or a content filter, streams that did not end
//! with their end marker, answers that failed schema validation (they end as errors in the call stage). A
//! cache that fails (Redis down, embeddings unavailable) costs a miss, never a failed request.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use keel_cache::semantic::Entry;
use keel_cache::{Assembler, CachedAnswer, ExactBackend, Key, Scope, SemanticIndex, Turn};
use keel_config::{CacheMode, ModelTarget};
use keel_providers::{ChatStream, Providers};
use keel_types::{ChatRequest, ChatResponse, EmbeddingInput, EmbeddingsRequest, Usage};
use tower::{Layer, Service};

use crate::route::RoutePlan;
use crate::{GatewayRequest, GatewayResponse, Operation, Output, RequestContext};

/// The longest the semantic layer waits for the request's embeddings.
const EMBED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How the cache served a request, for the response headers, the log and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheOutcome {
    /// Answered from the cache; `similarity` is set for a semantic hit.
    Hit { similarity: Option<f32>, saved: Saved },
    /// Looked up and not found; `similarity` is the nearest semantic candidate's, if any was compared.
    Miss { similarity: Option<f32> },
    /// Not read (mode `write`): the answer, if complete, refreshes the entry.
    Bypass,
}

impl CacheOutcome {
    /// "hit", "semantic_hit", "miss" or "bypass".
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheOutcome::Hit { similarity: None, .. } => "hit",
            CacheOutcome::Hit { similarity: Some(_), .. } => "semantic_hit",
            CacheOutcome::Miss { .. } => "miss",
            CacheOutcome::Bypass => "bypass",
        }
    }
}

/// What a hit saved: the upstream call that produced the answer, with its usage.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub provider: String,
    pub model: String,
    pub usage: Option<Usage>,
}

/// The semantic layer: its index, the embeddings model, where entries persist.
#[derive(Clone)]
pub struct Semantic {
    pub index: Arc<SemanticIndex>,
    pub embedder: Embedder,
    /// Where entries persist, so the index survives restarts.
    pub store: Option<Arc<dyn keel_store::CacheStore>>,
    /// Where entries are published to the other instances as they are written.
    pub channel: Option<keel_cache::Channel>,
}

/// Embeds text through the configured embeddings model's first target.
#[derive(Clone)]
pub struct Embedder {
    providers: Providers,
    target: ModelTarget,
}

impl Embedder {
    pub fn new(providers: Providers, target: ModelTarget) -> Self {
        Self { providers, target }
    }

    /// The model's identity, part of the semantic scope: vectors of two models are not comparable.
    pub fn name(&self) -> String {
        self.target.to_string()
    }

    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let provider = self.providers.get(&self.target.provider).ok_or(EmbedError::Unavailable)?;
        let n = texts.len();
        let req = EmbeddingsRequest {
            model: self.target.model.clone(),
            input: EmbeddingInput::Many(texts),
            encoding_format: None,
            dimensions: None,
            user: None,
            extra: Default::default(),
        };
        let resp = provider.embeddings(&self.target, req).await.map_err(EmbedError::Provider)?;
        vectors_of(resp, n)
    }
}

/// The vectors of an embeddings response, in input order; an error unless there is one per input.
pub(crate) fn vectors_of(mut resp: keel_types::EmbeddingsResponse, n: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
    resp.data.sort_by_key(|e| e.index);
    let vectors: Vec<Vec<f32>> = resp
        .data
        .iter()
        .map(|e| e.embedding.as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect()))
        .collect::<Option<_>>()
        .ok_or(EmbedError::Encoding)?;
    if vectors.len() != n {
        return Err(EmbedError::Count { asked: n, got: vectors.len() });
    }
    Ok(vectors)
}

/// Why the semantic layer's embeddings could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error("the embeddings model's provider is not available")]
    Unavailable,
    #[error(transparent)]
    Provider(keel_providers::ProviderError),
    #[error("embeddings came back in an unexpected encoding")]
    Encoding,
    #[error("asked for {asked} embeddings, got {got}")]
    Count { asked: usize, got: usize },
    /// The request path failed (every target, after retries and fallbacks).
    #[error("{0}")]
    Failed(String),
    #[error("no embeddings within {0} ms")]
    Timeout(u128),
}

/// The cache's parts, shared by every request.
#[derive(Clone)]
pub struct CacheParts {
    pub exact: Arc<dyn ExactBackend>,
    pub semantic: Option<Semantic>,
    writes: Writes,
}

/// What the cache stage has done besides hits and misses (the metrics read it).
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Answers not stored because the write queue was full.
    pub writes_dropped: AtomicU64,
    /// Semantic lookups skipped because the request's embedding failed (the model's queue full, a timeout, an
    /// error): each is a plain miss, and its answer is stored for exact hits only.
    pub embed_failures: AtomicU64,
    /// Answers stored (exact and semantic).
    pub stored: AtomicU64,
}

/// How many answers may wait to be stored. Storing is an optimisation: when the queue is full, an answer is
/// not stored (and counted), never waited for.
const WRITE_QUEUE: usize = 1024;
/// How many answers are stored at once.
const WRITE_CONCURRENCY: usize = 16;

/// The queue of answers to store, drained by one task (up to 16 stores at once), off the request path.
#[derive(Clone)]
struct Writes {
    tx: tokio::sync::mpsc::Sender<Store>,
    stats: Arc<CacheStats>,
}

/// One answer to store.
struct Store {
    exact: Arc<dyn ExactBackend>,
    key: Key,
    answer: Arc<CachedAnswer>,
    ttl: std::time::Duration,
    semantic: Option<(Semantic, Entry, Option<keel_store::SemanticRow>)>,
}

impl CacheParts {
    /// The cache's parts; starts the task that stores answers (on the current runtime).
    pub fn new(exact: Arc<dyn ExactBackend>, semantic: Option<Semantic>) -> Self {
        Self::with_queue(exact, semantic, WRITE_QUEUE)
    }

    fn with_queue(exact: Arc<dyn ExactBackend>, semantic: Option<Semantic>, queue: usize) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel::<Store>(queue);
        let stats = Arc::new(CacheStats::default());
        let items = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (s, rx)) });
        let counted = stats.clone();
        tokio::spawn(items.for_each_concurrent(WRITE_CONCURRENCY, move |store| {
            let stats = counted.clone();
            async move {
                store.run().await;
                stats.stored.fetch_add(1, Ordering::Relaxed);
            }
        }));
        Self { exact, semantic, writes: Writes { tx, stats } }
    }

    pub fn stats(&self) -> &Arc<CacheStats> {
        &self.writes.stats
    }
}

impl Store {
    async fn run(self) {
        if let Err(e) = self.exact.put(self.key, self.answer, self.ttl).await {
            tracing::warn!(error = %e, "cache write failed");
        }
        let Some((sem, entry, row)) = self.semantic else { return };
        // The index insert (and, when a scope outgrows the flat search, its graph's build) is CPU work: it runs
        // on the blocking pool, never on the request path's threads.
        let index = sem.index.clone();
        let inserted = tokio::task::spawn_blocking(move || {
            let (evicted, build) = index.insert_deferred(entry)?;
            if let Some(build) = build {
                index.install(build.build()?)?;
            }
            Ok::<_, keel_cache::CacheError>(evicted)
        })
        .await;
        let evicted = match inserted {
            Ok(Ok(evicted)) => evicted,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "semantic cache insert failed");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "semantic cache insert panicked");
                return;
            }
        };
        let Some(row) = row else { return };
        if let Some(channel) = &sem.channel
            && let Err(e) = channel.publish(&row).await
        {
            tracing::warn!(error = %e, "publishing a semantic cache entry failed (other instances load it at start)");
        }
        let Some(store) = sem.store else { return };
        if let Err(e) = store.cache_put(&row).await {
            tracing::warn!(error = %e, "persisting a semantic cache entry failed");
        }
        let ids: Vec<i64> = evicted.iter().filter_map(|i| i64::try_from(*i).ok()).collect();
        if !ids.is_empty()
            && let Err(e) = store.cache_delete(&ids).await
        {
            tracing::warn!(error = %e, "deleting evicted semantic cache entries failed");
        }
    }
}

#[derive(Clone)]
pub struct CacheLayer {
    parts: CacheParts,
}

impl CacheLayer {
    pub fn new(parts: CacheParts) -> Self {
        Self { parts }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> CacheService<S> {
        CacheService { parts: self.parts.clone(), inner }
    }
}

#[derive(Clone)]
pub struct CacheService<S> {
    parts: CacheParts,
    inner: S,
}

impl<S> Service<GatewayRequest> for CacheService<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<GatewayResponse, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(plan) = req.ctx.route.clone() else { return inner.call(req).boxed() };
        let mode = req.ctx.cache_mode.unwrap_or(plan.cache.mode);
        if mode == CacheMode::Off || !matches!(req.op, Operation::Chat(_)) {
            return inner.call(req).boxed();
        }
        let parts = self.parts.clone();
        async move { parts.serve(req, plan, mode, inner).await }.boxed()
    }
}

/// The semantic side of one request: where it would be stored and its turns.
struct SemanticQuery {
    scope: Key,
    turns: Vec<Turn>,
    threshold: f32,
}

impl CacheParts {
    async fn serve<S>(
        self,
        req: GatewayRequest,
        plan: Arc<RoutePlan>,
        mode: CacheMode,
        mut inner: S,
    ) -> Result<GatewayResponse, Infallible>
    where
        S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible>,
    {
        let GatewayRequest { mut ctx, op } = req;
        let Operation::Chat(chat) = op else {
            return inner.call(GatewayRequest { ctx, op }).await;
        };
        let scope = Scope { route: &plan.fingerprint, tenant: &ctx.tenant };
        let key = keel_cache::key::exact(&chat, scope);
        if mode.reads() {
            match self.exact.get(&key).await {
                Ok(Some(answer)) => return Ok(hit(ctx, &chat, &answer, None)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cache read failed; treated as a miss"),
            }
        }
        let mut similarity = None;
        let semantic = match (&self.semantic, plan.cache.semantic) {
            (Some(sem), Some(threshold)) => self.semantic_query(sem, &chat, &ctx, &plan, threshold).await,
            _ => None,
        };
        if let (Some(sem), Some(q)) = (&self.semantic, &semantic)
            && mode.reads()
        {
            let found = sem.index.lookup(&q.scope, &q.turns, q.threshold, keel_store::now_ms());
            similarity = found.best;
            if let Some((entry, sim)) = found.hit {
                return Ok(hit(ctx, &chat, &entry.answer, Some(sim)));
            }
        }
        ctx.cache = Some(if mode.reads() { CacheOutcome::Miss { similarity } } else { CacheOutcome::Bypass });
        let ttl = plan.cache.ttl;
        let mut resp = inner.call(GatewayRequest { ctx, op: Operation::Chat(chat) }).await?;
        if !mode.writes() {
            return Ok(resp);
        }
        let served = resp.ctx.served_by().map(|a| (a.provider.to_string(), a.model.clone()));
        let writer = Writer { parts: self.clone(), key, semantic, ttl, served };
        resp.result = match resp.result {
            Ok(Output::Chat(r)) => {
                writer.store(&r);
                Ok(Output::Chat(r))
            }
            Ok(Output::ChatStream(s)) => Ok(Output::ChatStream(Box::pin(Recording {
                inner: s,
                assembler: Some(Assembler::default()),
                writer: Some(writer),
            }))),
            other => other,
        };
        Ok(resp)
    }

    async fn semantic_query(
        &self,
        sem: &Semantic,
        chat: &ChatRequest,
        ctx: &RequestContext,
        plan: &RoutePlan,
        threshold: f32,
    ) -> Option<SemanticQuery> {
        let route = format!("{}|{}", plan.fingerprint, sem.embedder.name());
        let (scope, texts) = keel_cache::key::semantic_scope(chat, Scope { route: &route, tenant: &ctx.tenant })?;
        let inputs = keel_cache::semantic::embedding_inputs(&texts);
        // A slow embeddings model must not hold the request: past the limit the semantic layer is skipped.
        let embedded = tokio::time::timeout(EMBED_TIMEOUT, sem.embedder.embed(inputs))
            .await
            .unwrap_or_else(|_| Err(EmbedError::Timeout(EMBED_TIMEOUT.as_millis())));
        match embedded {
            Ok(vectors) if vectors.iter().all(|v| v.len() == sem.index.dims()) => {
                let turns = keel_cache::semantic::turns_from(texts, vectors)?;
                Some(SemanticQuery { scope, turns, threshold })
            }
            Ok(_) => {
                tracing::warn!(model = sem.embedder.name(), "embeddings of an unexpected size; semantic cache skipped");
                None
            }
            Err(e) => {
                self.writes.stats.embed_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "embedding for the semantic cache failed; skipped");
                None
            }
        }
    }
}

/// A response from the cache: the stored answer under this request's id, whole or replayed as a stream.
fn hit(mut ctx: RequestContext, chat: &ChatRequest, answer: &CachedAnswer, similarity: Option<f32>) -> GatewayResponse {
    let mut resp = answer.response.clone();
    resp.id = format!("chatcmpl-{}", ctx.id.0.replace('-', ""));
    resp.created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(resp.created, |d| d.as_secs());
    let saved = Saved { provider: answer.provider.clone(), model: answer.model.clone(), usage: resp.usage.clone() };
    ctx.cache = Some(CacheOutcome::Hit { similarity, saved });
    let output = if chat.stream {
        let chunks = keel_cache::replay(&resp);
        Output::ChatStream(futures::stream::iter(chunks.into_iter().map(Ok)).boxed())
    } else {
        Output::Chat(resp)
    };
    GatewayResponse { ctx, result: Ok(output) }
}

/// Stores one complete answer, off the request path.
struct Writer {
    parts: CacheParts,
    key: Key,
    semantic: Option<SemanticQuery>,
    ttl: std::time::Duration,
    /// The attempt that answered; an answer without one (none should exist) is not stored.
    served: Option<(String, String)>,
}

impl Writer {
    /// Queues a complete answer for storing; returns at once (a full queue skips it, counted).
    fn store(self, resp: &ChatResponse) {
        if !keel_cache::storable(resp) {
            return;
        }
        let Some((provider, model)) = self.served else { return };
        let now = keel_store::now_ms();
        let answer = Arc::new(CachedAnswer { response: resp.clone(), provider, model, created_ms: now });
        let semantic = match (self.parts.semantic.clone(), self.semantic) {
            (Some(sem), Some(q)) => {
                let expires_ms = now.saturating_add(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX));
                let id = rand::random::<u64>() >> 1;
                let row =
                    (sem.store.is_some() || sem.channel.is_some()).then(|| row_of(id, &q, now, expires_ms, &answer));
                let entry = Entry { id, scope: q.scope, turns: q.turns, expires_ms, answer: answer.clone() };
                Some((sem, entry, row))
            }
            _ => None,
        };
        let store = Store { exact: self.parts.exact.clone(), key: self.key, answer, ttl: self.ttl, semantic };
        let writes = &self.parts.writes;
        if writes.tx.try_send(store).is_err() {
            writes.stats.writes_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("cache write queue full; an answer was not stored");
        }
    }
}

/// The stored form of a semantic entry: user turns as JSON, their vectors as little-endian `f32`s.
fn row_of(id: u64, q: &SemanticQuery, now: i64, expires_ms: i64, answer: &CachedAnswer) -> keel_store::SemanticRow {
    let texts: Vec<&str> = q.turns.iter().map(|t| t.text.as_str()).collect();
    // In the order of `embedding_inputs`: each turn's vector, then its clauses'.
    let vectors: Vec<u8> = q
        .turns
        .iter()
        .flat_map(|t| std::iter::once(&t.vector).chain(&t.clauses))
        .flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes()))
        .collect();
    keel_store::SemanticRow {
        id: i64::try_from(id).unwrap_or(i64::MAX),
        scope: q.scope.hex(),
        created_ms: now,
        expires_ms,
        turns: serde_json::to_string(&texts).unwrap_or_else(|_| "[]".into()),
        vectors,
        answer: serde_json::to_string(answer).unwrap_or_default(),
    }
}

/// Rebuilds the semantic index from the store at startup; returns how many entries were loaded. Rows that
/// cannot be read (another embeddings model's size, a damaged row) are skipped and deleted.
pub async fn load_semantic(
    index: &SemanticIndex,
    store: &Arc<dyn keel_store::CacheStore>,
) -> Result<usize, keel_store::StoreError> {
    let now = keel_store::now_ms();
    let _ = store.cache_purge(now).await;
    let rows = store.cache_load(now).await?;
    let (mut loaded, mut bad) = (0, Vec::new());
    for row in rows {
        match entry_of(&row, index.dims()) {
            Some(entry) => match index.insert(entry) {
                Ok(_) => loaded += 1,
                Err(_) => bad.push(row.id),
            },
            None => bad.push(row.id),
        }
    }
    if !bad.is_empty() {
        let _ = store.cache_delete(&bad).await;
    }
    Ok(loaded)
}

/// Adds an entry another instance stored (published on the cache's channel) to `index`; CPU work, for the
/// blocking pool. `false` when the row cannot be read (another embeddings model's size).
pub fn insert_row(index: &SemanticIndex, row: &keel_store::SemanticRow) -> bool {
    let Some(entry) = entry_of(row, index.dims()) else { return false };
    let inserted = index.insert_deferred(entry).and_then(|(_, build)| match build {
        Some(build) => index.install(build.build()?),
        None => Ok(()),
    });
    inserted.is_ok()
}

fn entry_of(row: &keel_store::SemanticRow, dims: usize) -> Option<Entry> {
    let texts: Vec<String> = serde_json::from_str(&row.turns).ok()?;
    let floats: Vec<f32> = row.vectors.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if texts.is_empty() || dims == 0 || !floats.len().is_multiple_of(dims) {
        return None;
    }
    let turns = keel_cache::semantic::turns_from(texts, floats.chunks(dims).map(<[f32]>::to_vec).collect())?;
    let mut scope = [0u8; 32];
    for (i, b) in scope.iter_mut().enumerate() {
        *b = u8::from_str_radix(row.scope.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let answer: CachedAnswer = serde_json::from_str(&row.answer).ok()?;
    Some(Entry {
        id: u64::try_from(row.id).ok()?,
        scope: Key(scope),
        turns,
        expires_ms: row.expires_ms,
        answer: Arc::new(answer),
    })
}

/// A stream being recorded: assembled as it passes, stored only after its end marker.
struct Recording {
    inner: ChatStream,
    assembler: Option<Assembler>,
    writer: Option<Writer>,
}

impl Stream for Recording {
    type Item = Result<keel_types::ChatChunk, keel_providers::ProviderError>;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = futures::ready!(self.inner.as_mut().poll_next(cx));
        match &item {
            Some(Ok(chunk)) => {
                if let Some(a) = self.assembler.as_mut() {
                    a.push(chunk);
                }
            }
            // A failed stream is never stored.
            Some(Err(_)) => {
                self.assembler = None;
                self.writer = None;
            }
            None => {
                if let (Some(a), Some(w)) = (self.assembler.take(), self.writer.take()) {
                    w.store(&a.finish());
                }
            }
        }
        Poll::Ready(item)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use keel_cache::CacheError;

    use super::*;

    /// An exact backend that never finishes a write (a stalled Redis).
    #[derive(Default)]
    struct Stalled {
        writing: AtomicU64,
    }

    impl ExactBackend for Stalled {
        fn get<'a>(&'a self, _: &'a Key) -> BoxFuture<'a, Result<Option<Arc<CachedAnswer>>, CacheError>> {
            futures::future::ready(Ok(None)).boxed()
        }

        fn put(&self, _: Key, _: Arc<CachedAnswer>, _: std::time::Duration) -> BoxFuture<'_, Result<(), CacheError>> {
            self.writing.fetch_add(1, Ordering::Relaxed);
            futures::future::pending().boxed()
        }

        fn name(&self) -> &'static str {
            "stalled"
        }
    }

    #[tokio::test]
    async fn a_stalled_backend_holds_a_bounded_number_of_writes_and_the_rest_are_dropped_and_counted() {
        let exact = Arc::new(Stalled::default());
        let parts = CacheParts::with_queue(exact.clone(), None, 4);
        let answer: ChatResponse = serde_json::from_value(serde_json::json!({
            "id": "a", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]
        }))
        .unwrap();
        let total = 100u64;
        for i in 0..total {
            let writer = Writer {
                parts: parts.clone(),
                key: Key([u8::try_from(i).unwrap(); 32]),
                semantic: None,
                ttl: std::time::Duration::from_secs(60),
                served: Some(("p".into(), "m".into())),
            };
            writer.store(&answer);
            tokio::task::yield_now().await;
        }
        for _ in 0..1000 {
            if exact.writing.load(Ordering::Relaxed) == WRITE_CONCURRENCY as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let writing = exact.writing.load(Ordering::Relaxed);
        let queued = 4 - parts.writes.tx.capacity() as u64;
        let dropped = parts.stats().writes_dropped.load(Ordering::Relaxed);
        assert_eq!(writing, WRITE_CONCURRENCY as u64, "at most {WRITE_CONCURRENCY} writes wait on the backend");
        assert_eq!(queued, 4, "the queue is full");
        assert_eq!(writing + queued + dropped, total, "every answer is being written, queued or counted as dropped");
        assert_eq!(parts.stats().stored.load(Ordering::Relaxed), 0);
    }
}
