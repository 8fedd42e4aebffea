//! OpenAI and every OpenAI-compatible server (Azure OpenAI, vLLM, Ollama, Groq, Together, Mistral, …): one
//! implementation, with the vendors' differences in [`quirks`].

pub(crate) mod errors;
mod quirks;

use std::collections::VecDeque;
use std::sync::Arc;

use futures::future::BoxFuture;
use keel_config::{ModelTarget, ProviderConfig, ProviderId};
use keel_types::{ChatChunk, ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse};
use serde::de::DeserializeOwned;

use crate::http::{answer_body, client, snippet};
use crate::scrub::{self, Scrubber};
use crate::sse::{Decoder, chat_stream};
use crate::{ChatStream, ErrorKind, Provider, ProviderError};
use quirks::{Auth, Quirks};

pub(crate) struct OpenAiProvider {
    inner: Arc<Inner>,
}

struct Inner {
    id: ProviderId,
    /// Removes this provider's secrets from every failure it returns.
    scrub: Scrubber,
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
        let scrub = Scrubber::new(&cfg);
        let inner =
            Inner { id: cfg.id.clone(), scrub, quirks: quirks::of(cfg.kind), cfg, http, chat_url, embeddings_url };
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
        let body = answer_body(&self.id, resp, self.cfg.max_response_bytes).await?;
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
        let scrub = inner.scrub.clone();
        scrub::future(scrub, async move {
            inner.quirks.apply(&mut req);
            let body = encode(&inner.id, &req)?;
            inner.json(inner.post(url?, body)).await
        })
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
        let scrub = inner.scrub.clone();
        scrub::stream(scrub, async move {
            inner.quirks.apply(&mut req);
            let body = encode(&inner.id, &req)?;
            let resp = inner.send(inner.post(url?, body).header(reqwest::header::ACCEPT, "text/event-stream")).await?;
            Ok(chat_stream(inner.id.clone(), resp, inner.cfg.max_response_bytes, OpenAiDecoder::new(inner.id.clone())))
        })
    }

    fn embeddings(
        &self,
        target: &ModelTarget,
        mut req: EmbeddingsRequest,
    ) -> BoxFuture<'static, Result<EmbeddingsResponse, ProviderError>> {
        let inner = self.inner.clone();
        let url = inner.url(target, Endpoint::Embeddings);
        req.model.clone_from(&target.model);
        let scrub = inner.scrub.clone();
        scrub::future(scrub, async move {
            let body = encode(&inner.id, &req)?;
            inner.json(inner.post(url?, body)).await
        })
    }
}

/// OpenAI's stream: `data: <chunk>` events, `data: [DONE]` at the end, and `data: {"error": …}` when the vendor
/// fails mid-stream.
pub(crate) struct OpenAiDecoder {
    provider: ProviderId,
    done: bool,
    /// Every choice seen so far, by index, and whether it reported its finish reason. The answer is complete
    /// when each did, even if `[DONE]` never comes; with `n` > 1, one finished choice is not enough.
    choices: std::collections::BTreeMap<u32, bool>,
}

impl OpenAiDecoder {
    pub(crate) fn new(provider: ProviderId) -> Self {
        Self { provider, done: false, choices: std::collections::BTreeMap::new() }
    }
}

impl Decoder for OpenAiDecoder {
    fn event(&mut self, event: crate::sse::Event, out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError> {
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
                for c in &chunk.choices {
                    *self.choices.entry(c.index).or_default() |= c.finish_reason.is_some();
                }
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

    /// Several OpenAI-compatible servers close the body without `[DONE]`: once every choice reported its finish
    /// reason the answer is complete (its usage chunk, when the vendor sends one, precedes the marker). A body
    /// that closes before that was cut, however cleanly.
    fn end_without_marker(&mut self, _out: &mut VecDeque<ChatChunk>) -> bool {
        !self.choices.is_empty() && self.choices.values().all(|finished| *finished)
    }
}
