//! OpenAI and every OpenAI-compatible server (Azure OpenAI, vLLM, Ollama, Groq, Together, Mistral, …): one
//! implementation, with the vendors' differences in [`quirks`].

mod errors;
mod quirks;

use std::collections::VecDeque;
use std::sync::Arc;

use eventsource_stream::Event;
use futures::FutureExt;
use futures::future::BoxFuture;
use keel_config::{ModelTarget, ProviderConfig, ProviderId};
use keel_types::{ChatChunk, ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse};
use serde::de::DeserializeOwned;

use crate::http::{client, snippet, transport_error};
use crate::sse::{Decoder, chat_stream};
use crate::{ChatStream, ErrorKind, Provider, ProviderError};
use quirks::{Auth, Quirks};

pub(crate) struct OpenAiProvider {
    inner: Arc<Inner>,
}

struct Inner {
    id: ProviderId,
    cfg: ProviderConfig,
    quirks: &'static Quirks,
    http: reqwest::Client,
    chat_url: Option<reqwest::Url>,
    embeddings_url: Option<reqwest::Url>,
}

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Chat,
    Embeddings,
}

fn invalid_url(id: &ProviderId, base: &str) -> ProviderError {
    ProviderError::new(id, ErrorKind::InvalidRequest, format!("invalid upstream URL from base_url {base:?}"))
}

impl OpenAiProvider {
    pub(crate) fn new(cfg: ProviderConfig) -> Result<Self, ProviderError> {
        let http = client(&cfg)?;
        let chat_url = reqwest::Url::parse(&format!("{}/chat/completions", cfg.base_url)).ok();
        let embeddings_url = reqwest::Url::parse(&format!("{}/embeddings", cfg.base_url)).ok();
        let inner = Inner { id: cfg.id.clone(), quirks: quirks::of(cfg.kind), cfg, http, chat_url, embeddings_url };
        Ok(Self { inner: Arc::new(inner) })
    }
}

impl Inner {
    fn url(&self, target: &ModelTarget, endpoint: Endpoint) -> Result<reqwest::Url, ProviderError> {
        let base = &self.cfg.base_url;
        let name = match endpoint {
            Endpoint::Chat => "chat/completions",
            Endpoint::Embeddings => "embeddings",
        };
        if !self.quirks.azure_paths {
            // Parsed once at start-up: URL parsing (IDNA included) is a measurable part of a request's CPU time.
            let url = match endpoint {
                Endpoint::Chat => &self.chat_url,
                Endpoint::Embeddings => &self.embeddings_url,
            };
            return url.clone().ok_or_else(|| invalid_url(&self.id, base));
        }
        let deployment = target.deployment.as_deref().unwrap_or(&target.model);
        let version = self.cfg.api_version.as_deref().unwrap_or_default();
        reqwest::Url::parse(&format!("{base}/openai/deployments/{deployment}/{name}?api-version={version}"))
            .map_err(|_| invalid_url(&self.id, base))
    }

    fn post(&self, url: reqwest::Url, body: Vec<u8>) -> reqwest::RequestBuilder {
        let mut rb = self.http.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        if let Some(key) = &self.cfg.api_key {
            rb = match self.quirks.auth {
                Auth::Bearer => rb.bearer_auth(key.expose()),
                Auth::ApiKeyHeader => rb.header("api-key", key.expose()),
            };
        }
        for (name, value) in &self.cfg.headers {
            rb = rb.header(name, value);
        }
        rb
    }

    /// Sends the request and returns the response if its status is a success; otherwise the classified error.
    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ProviderError> {
        crate::http::send(&self.id, rb, errors::classify).await
    }

    async fn json<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T, ProviderError> {
        let resp = self.send(rb.timeout(self.cfg.request_timeout)).await?;
        let body = resp.bytes().await.map_err(|e| {
            let mut err = transport_error(&self.id, &e);
            if err.kind == ErrorKind::ConnectionLost {
                err.kind = ErrorKind::StreamIncomplete;
            }
            err
        })?;
        serde_json::from_slice(&body).map_err(|e| {
            ProviderError::new(
                &self.id,
                ErrorKind::Protocol,
                format!("upstream answered with an invalid body ({e}): {}", snippet(&body)),
            )
        })
    }
}

fn encode(id: &ProviderId, value: &impl serde::Serialize) -> Result<Vec<u8>, ProviderError> {
    serde_json::to_vec(value)
        .map_err(|e| ProviderError::new(id, ErrorKind::InvalidRequest, format!("cannot encode request: {e}")))
}

impl Provider for OpenAiProvider {
    fn id(&self) -> &ProviderId {
        &self.inner.id
    }

    fn chat(
        &self,
        target: &ModelTarget,
        mut req: ChatRequest,
    ) -> BoxFuture<'static, Result<ChatResponse, ProviderError>> {
        let inner = self.inner.clone();
        let url = inner.url(target, Endpoint::Chat);
        req.model.clone_from(&target.model);
        req.stream = false;
        async move {
            inner.quirks.apply(&mut req);
            let body = encode(&inner.id, &req)?;
            inner.json(inner.post(url?, body)).await
        }
        .boxed()
    }

    fn chat_stream(
        &self,
        target: &ModelTarget,
        mut req: ChatRequest,
    ) -> BoxFuture<'static, Result<ChatStream, ProviderError>> {
        let inner = self.inner.clone();
        let url = inner.url(target, Endpoint::Chat);
        req.model.clone_from(&target.model);
        req.stream = true;
        async move {
            inner.quirks.apply(&mut req);
            let body = encode(&inner.id, &req)?;
            let resp = inner.send(inner.post(url?, body).header(reqwest::header::ACCEPT, "text/event-stream")).await?;
            Ok(chat_stream(
                inner.id.clone(),
                resp,
                OpenAiDecoder { provider: inner.id.clone(), done: false, finished: false },
            ))
        }
        .boxed()
    }

    fn embeddings(
        &self,
        target: &ModelTarget,
        mut req: EmbeddingsRequest,
    ) -> BoxFuture<'static, Result<EmbeddingsResponse, ProviderError>> {
        let inner = self.inner.clone();
        let url = inner.url(target, Endpoint::Embeddings);
        req.model.clone_from(&target.model);
        async move {
            let body = encode(&inner.id, &req)?;
            inner.json(inner.post(url?, body)).await
        }
        .boxed()
    }
}

/// OpenAI's stream: `data: <chunk>` events, `data: [DONE]` at the end, and `data: {"error": …}` when the vendor
/// fails mid-stream.
struct OpenAiDecoder {
    provider: ProviderId,
    done: bool,
    /// A choice reported its finish reason: the answer is complete even if `[DONE]` never comes.
    finished: bool,
}

impl Decoder for OpenAiDecoder {
    fn event(&mut self, event: Event, out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        match serde_json::from_str::<ChatChunk>(data) {
            Ok(chunk) => {
                self.finished |= chunk.choices.iter().any(|c| c.finish_reason.is_some());
                out.push_back(chunk);
                Ok(())
            }
            Err(parse_error) => {
                if let Some(err) = errors::stream_error(&self.provider, data) {
                    return Err(err);
                }
                Err(ProviderError::new(
                    &self.provider,
                    ErrorKind::Protocol,
                    format!("malformed stream chunk ({parse_error}): {}", snippet(data.as_bytes())),
                ))
            }
        }
    }

    fn is_complete(&self) -> bool {
        self.done
    }

    /// Several OpenAI-compatible servers close the body without `[DONE]`; after a finish reason the answer
    /// (and any usage chunk, which precedes the marker) is complete.
    fn end_without_marker(&mut self, _out: &mut VecDeque<ChatChunk>) -> bool {
        self.finished
    }
}
