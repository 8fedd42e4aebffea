//! The `local` provider: canonical requests in, answers from in-process engines out, through the same
//! `Provider` trait (and so the same SSE path, retries and fallbacks) as any vendor.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use keel_config::{LocalSettings, ModelTarget, ProviderConfig, ProviderId};
use keel_providers::{ChatStream, Provider, ProviderError};
use keel_types::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Content, Delta, Embedding, EmbeddingInput,
    EmbeddingsRequest, EmbeddingsResponse, EmbeddingsUsage, Extra, FinishReason, Message, ResponseFormat, Role, Usage,
};

use crate::engine::{ChatEngine, EmbedEngine, GenerateParams};
use crate::worker::{Worker, WorkerStats};
use crate::{LlamaEngine, LocalError, OrtEmbedder, models};

/// What a loaded local model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Chat,
    Embeddings,
}

pub struct LocalProvider {
    id: ProviderId,
    settings: LocalSettings,
    dir: PathBuf,
    chat: Worker,
    embed: Worker,
    chat_engines: Mutex<HashMap<String, Arc<dyn ChatEngine>>>,
    embed_engines: Mutex<HashMap<String, Arc<dyn EmbedEngine>>>,
    counter: AtomicU64,
}

impl LocalProvider {
    pub fn new(cfg: &ProviderConfig) -> Result<Self, LocalError> {
        let settings = cfg.local.clone();
        Ok(Self {
            id: cfg.id.clone(),
            dir: models::models_dir(settings.models_dir.as_deref()),
            chat: Worker::spawn("keel-local-chat", settings.queue_depth as usize)?,
            embed: Worker::spawn("keel-local-embed", settings.embed_queue_depth as usize)?,
            settings,
            chat_engines: Mutex::new(HashMap::new()),
            embed_engines: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
        })
    }

    fn threads(&self) -> u32 {
        self.settings
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1)))
    }

    /// Resolves and loads a chat model, so the first request does not pay for it and a missing model fails
    /// keel's start rather than a request.
    pub async fn load_chat(&self, name: &str) -> Result<(), LocalError> {
        if self.chat_engines.lock().map(|m| m.contains_key(name)).unwrap_or(false) {
            return Ok(());
        }
        let path = models::resolve(name, &self.dir).await?;
        let (threads, ctx) = (self.threads(), self.settings.context_size);
        let card = models::packaged(name).map(|p| p.sampling).unwrap_or_default();
        let engine = tokio::task::spawn_blocking(move || LlamaEngine::load(&path, threads, ctx))
            .await
            .map_err(|e| LocalError::Engine(e.to_string()))??
            .with_recommended(card);
        if let Ok(mut m) = self.chat_engines.lock() {
            m.insert(name.to_string(), Arc::new(engine));
        }
        Ok(())
    }

    /// Resolves and loads an embedding model.
    pub async fn load_embeddings(&self, name: &str) -> Result<(), LocalError> {
        if self.embed_engines.lock().map(|m| m.contains_key(name)).unwrap_or(false) {
            return Ok(());
        }
        let path = models::resolve(name, &self.dir).await?;
        let threads = self.threads();
        let library = crate::onnx::find_library(self.settings.onnxruntime_library.as_deref(), &self.dir);
        let model = name.to_string();
        let engine = tokio::task::spawn_blocking(move || load_embedder(&model, &path, library, threads))
            .await
            .map_err(|e| LocalError::Engine(e.to_string()))??;
        if let Ok(mut m) = self.embed_engines.lock() {
            m.insert(name.to_string(), engine);
        }
        Ok(())
    }

    /// Loads a configured model, as a chat model when it is a GGUF file and as an embedding model when it is a
    /// sentence-transformers directory.
    pub async fn load(&self, name: &str) -> Result<ModelKind, LocalError> {
        let path = models::resolve(name, &self.dir).await?;
        if path.is_dir() {
            self.load_embeddings(name).await?;
            Ok(ModelKind::Embeddings)
        } else {
            self.load_chat(name).await?;
            Ok(ModelKind::Chat)
        }
    }

    fn chat_engine(&self, name: &str) -> Result<Arc<dyn ChatEngine>, LocalError> {
        self.chat_engines.lock().ok().and_then(|m| m.get(name).cloned()).ok_or_else(|| {
            LocalError::ModelMissing(format!("local chat model {name:?} is not loaded (is it configured as a model?)"))
        })
    }

    fn embed_engine(&self, name: &str) -> Result<Arc<dyn EmbedEngine>, LocalError> {
        self.embed_engines.lock().ok().and_then(|m| m.get(name).cloned()).ok_or_else(|| {
            LocalError::ModelMissing(format!(
                "local embedding model {name:?} is not loaded (is it configured as a model?)"
            ))
        })
    }

    /// The chat and embedding workers' counters (queue full, panics, abandoned generations).
    pub fn stats(&self) -> (Arc<WorkerStats>, Arc<WorkerStats>) {
        (self.chat.stats().clone(), self.embed.stats().clone())
    }

    fn next_id(&self) -> String {
        format!("chatcmpl-local-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }
}

/// Loads an embedding model on ONNX Runtime (its library from `keel models pull`, `$ORT_DYLIB_PATH` or
/// `onnxruntime_library`).
fn load_embedder(
    name: &str,
    path: &std::path::Path,
    library: Option<PathBuf>,
    threads: u32,
) -> Result<Arc<dyn EmbedEngine>, LocalError> {
    let library = library.ok_or_else(|| {
        LocalError::ModelMissing(format!(
            "the ONNX Runtime library {} was not found: run `keel models pull` (it fetches it from the onnxruntime \
             wheel), or set ORT_DYLIB_PATH or the provider's onnxruntime_library",
            crate::onnx::library_file_name()
        ))
    })?;
    let engine: Arc<dyn EmbedEngine> = Arc::new(OrtEmbedder::load(path, &library, threads)?);
    tracing::info!(model = name, engine = engine.engine(), "embedding model loaded");
    Ok(engine)
}

/// The generation parameters of a canonical request for `engine`; what a local model cannot honour is refused
/// clearly. Sampling the client did not set is the model's recommended one (else the API's defaults, 1.0); the
/// answer's length is capped at the context window, which bounds it anyway.
fn params(req: &ChatRequest, engine: &dyn ChatEngine) -> Result<GenerateParams, LocalError> {
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(LocalError::Unsupported("the local model does not support tool calls".into()));
    }
    if req.extra.get("n").and_then(serde_json::Value::as_u64).is_some_and(|n| n > 1) {
        return Err(LocalError::Unsupported("the local model generates one choice (n = 1)".into()));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role {
            Role::System | Role::Developer => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool | Role::Function => "tool",
        };
        let text = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                    return Err(LocalError::Unsupported(format!(
                        "messages[{i}]: the local model reads text only, not {:?} parts",
                        p.kind
                    )));
                }
                parts.iter().filter_map(|p| p.text.as_deref()).collect()
            }
        };
        messages.push((role.to_string(), text));
    }
    let json_schema = match &req.response_format {
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            Some(json_schema.schema.clone().unwrap_or_else(|| serde_json::json!({"type": "object"})))
        }
        Some(ResponseFormat::JsonObject) => Some(serde_json::json!({"type": "object"})),
        Some(ResponseFormat::Text) | None => None,
    };
    let recommended = engine.recommended();
    Ok(GenerateParams {
        messages,
        max_tokens: Some(req.max_output_tokens().map_or(engine.context_size(), |m| m.min(engine.context_size()))),
        temperature: req.temperature.map(|t| t as f32).or(recommended.temperature).unwrap_or(1.0),
        top_p: req.top_p.map(|p| p as f32).or(recommended.top_p).unwrap_or(1.0),
        seed: req.seed.map_or_else(rand_seed, |s| s as u32),
        stops: req.stop.as_ref().map(keel_types::Stop::to_vec).unwrap_or_default(),
        json_schema,
        // OpenAI's `logprobs: true`; reported on complete answers (a stream's chunks carry none).
        logprobs: req.extra.get("logprobs").and_then(serde_json::Value::as_bool).unwrap_or(false) && !req.stream,
    })
}

/// Token log-probabilities in OpenAI's shape: `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`.
fn openai_logprobs(tokens: &[(String, f32)]) -> serde_json::Value {
    let content: Vec<serde_json::Value> = tokens
        .iter()
        .map(|(token, lp)| {
            serde_json::json!({"token": token, "logprob": lp, "bytes": token.as_bytes(), "top_logprobs": []})
        })
        .collect();
    serde_json::json!({ "content": content })
}

fn rand_seed() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn chunk(id: &str, model: &str, created: u64, delta: Delta, finish: Option<FinishReason>) -> ChatChunk {
    ChatChunk {
        id: id.to_string(),
        object: "chat.completion.chunk".into(),
        created,
        model: model.to_string(),
        choices: vec![ChunkChoice { index: 0, delta, finish_reason: finish, logprobs: None, extra: Extra::new() }],
        usage: None,
        system_fingerprint: None,
        extra: Extra::new(),
    }
}

impl Provider for LocalProvider {
    fn id(&self) -> &ProviderId {
        &self.id
    }

    fn chat(&self, target: &ModelTarget, req: ChatRequest) -> BoxFuture<'static, Result<ChatResponse, ProviderError>> {
        let id = self.id.clone();
        let prepared = self.chat_engine(&target.model).and_then(|e| Ok((params(&req, &*e)?, e)));
        let (p, engine) = match prepared {
            Ok(v) => v,
            Err(e) => return futures::future::ready(Err(e.into_provider(&id))).boxed(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stats = self.chat.stats().clone();
        let submitted = self.chat.submit(move || {
            // Abandoned while it waited (the client left, a timeout fired): nothing to do.
            if tx.is_closed() {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let mut text = String::new();
            // Generation stops as soon as nobody waits for the answer: the worker is free for the next request.
            let result = engine.generate(&p, &mut |t| {
                text.push_str(t);
                !tx.is_closed()
            });
            if matches!(result, Err(LocalError::Cancelled)) {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            let _ = tx.send(result.map(|g| (g, text)));
        });
        let (response_id, model) = (self.next_id(), target.model.clone());
        async move {
            submitted.map_err(|e| e.into_provider(&id))?;
            let (g, text) = rx
                .await
                .map_err(|_| LocalError::Engine("the generation was dropped".into()).into_provider(&id))?
                .map_err(|e| e.into_provider(&id))?;
            Ok(ChatResponse {
                id: response_id,
                object: "chat.completion".into(),
                created: now(),
                model,
                choices: vec![Choice {
                    index: 0,
                    message: Message::new(Role::Assistant, text),
                    finish_reason: Some(g.finish),
                    logprobs: g.logprobs.as_ref().map(|lp| openai_logprobs(lp)),
                    extra: Extra::new(),
                }],
                usage: Some(Usage::new(g.prompt_tokens, g.completion_tokens)),
                system_fingerprint: None,
                extra: Extra::new(),
            })
        }
        .boxed()
    }

    fn chat_stream(
        &self,
        target: &ModelTarget,
        req: ChatRequest,
    ) -> BoxFuture<'static, Result<ChatStream, ProviderError>> {
        let id = self.id.clone();
        let prepared = self.chat_engine(&target.model).and_then(|e| Ok((params(&req, &*e)?, e)));
        let (p, engine) = match prepared {
            Ok(v) => v,
            Err(e) => return futures::future::ready(Err(e.into_provider(&id))).boxed(),
        };
        // A small buffer: generation is paced by the client, and stops when the client goes away.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ChatChunk, ProviderError>>(16);
        let (response_id, model, created) = (self.next_id(), target.model.clone(), now());
        let job_id = id.clone();
        let stats = self.chat.stats().clone();
        let submitted = self.chat.submit(move || {
            if tx.is_closed() {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let opening = Delta { role: Some(Role::Assistant), content: Some(String::new()), ..Delta::default() };
            if tx.blocking_send(Ok(chunk(&response_id, &model, created, opening, None))).is_err() {
                return;
            }
            let result = engine.generate(&p, &mut |t| {
                let delta = Delta { content: Some(t.to_string()), ..Delta::default() };
                tx.blocking_send(Ok(chunk(&response_id, &model, created, delta, None))).is_ok()
            });
            match result {
                Ok(g) => {
                    let _ =
                        tx.blocking_send(Ok(chunk(&response_id, &model, created, Delta::default(), Some(g.finish))));
                    let mut last = chunk(&response_id, &model, created, Delta::default(), None);
                    last.choices.clear();
                    last.usage = Some(Usage::new(g.prompt_tokens, g.completion_tokens));
                    let _ = tx.blocking_send(Ok(last));
                }
                Err(LocalError::Cancelled) => {
                    stats.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.into_provider(&job_id)));
                }
            }
        });
        async move {
            submitted.map_err(|e| e.into_provider(&id))?;
            Ok(tokio_stream_from(rx, id))
        }
        .boxed()
    }

    fn embeddings(
        &self,
        target: &ModelTarget,
        req: EmbeddingsRequest,
    ) -> BoxFuture<'static, Result<EmbeddingsResponse, ProviderError>> {
        let id = self.id.clone();
        let texts = match req.input {
            EmbeddingInput::One(s) => vec![s],
            EmbeddingInput::Many(v) => v,
            EmbeddingInput::Tokens(_) | EmbeddingInput::ManyTokens(_) => {
                let e = LocalError::Unsupported("the local embedding model takes text input, not token ids".into());
                return futures::future::ready(Err(e.into_provider(&id))).boxed();
            }
        };
        let engine = match self.embed_engine(&target.model) {
            Ok(e) => e,
            Err(e) => return futures::future::ready(Err(e.into_provider(&id))).boxed(),
        };
        if let Some(d) = req.dimensions
            && d as usize != engine.dimensions()
        {
            let e =
                LocalError::BadRequest(format!("dimensions: this model produces {} dimensions", engine.dimensions()));
            return futures::future::ready(Err(e.into_provider(&id))).boxed();
        }
        let base64 = req.encoding_format.as_deref() == Some("base64");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stats = self.embed.stats().clone();
        let submitted = self.embed.submit(move || {
            if tx.is_closed() {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // Batches of 32 bound the memory of one forward pass.
            let mut vectors = Vec::with_capacity(texts.len());
            let mut tokens = 0;
            for batch in texts.chunks(32) {
                match engine.embed(batch) {
                    Ok((v, t)) => {
                        vectors.extend(v);
                        tokens += t;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            let _ = tx.send(Ok((vectors, tokens)));
        });
        let model = target.model.clone();
        async move {
            submitted.map_err(|e| e.into_provider(&id))?;
            let (vectors, tokens) = rx
                .await
                .map_err(|_| LocalError::Engine("the embedding job was dropped".into()).into_provider(&id))?
                .map_err(|e| e.into_provider(&id))?;
            let data = vectors
                .into_iter()
                .enumerate()
                .map(|(i, v)| Embedding {
                    object: "embedding".into(),
                    index: i as u32,
                    embedding: if base64 { encode_base64(&v).into() } else { serde_json::json!(v) },
                })
                .collect();
            Ok(EmbeddingsResponse {
                object: "list".into(),
                data,
                model,
                usage: Some(EmbeddingsUsage { prompt_tokens: tokens, total_tokens: tokens }),
                extra: Extra::new(),
            })
        }
        .boxed()
    }
}

/// OpenAI's `encoding_format: "base64"`: the little-endian f32 bytes, base64-encoded.
fn encode_base64(v: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The chunks of a generation. A channel that closes before the usage chunk (the worker died) ends the stream
/// with an error, never silently.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<ChatChunk, ProviderError>>,
    id: ProviderId,
) -> ChatStream {
    let mut complete = false;
    let mut ended = false;
    Box::pin(futures::stream::poll_fn(move |cx| {
        if ended {
            return std::task::Poll::Ready(None);
        }
        match rx.poll_recv(cx) {
            std::task::Poll::Ready(Some(item)) => {
                if let Ok(c) = &item {
                    complete |= c.usage.is_some();
                }
                if item.is_err() {
                    ended = true;
                }
                std::task::Poll::Ready(Some(item))
            }
            std::task::Poll::Ready(None) => {
                ended = true;
                if complete {
                    std::task::Poll::Ready(None)
                } else {
                    let e = LocalError::Engine("the generation stopped before it finished".into());
                    std::task::Poll::Ready(Some(Err(e.into_provider(&id))))
                }
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }))
}
