//! Anthropic's Messages API as an upstream: canonical requests are translated by `keel-translate`, sent to
//! `/v1/messages`, and the answer (or event stream) translated back.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use keel_config::{ModelTarget, ProviderConfig, ProviderId};
use keel_translate::{MessagesToChatStream, TranslateErrorKind, chat_request_to_messages, messages_response_to_chat};
use keel_types::anthropic::{MessagesResponse, StreamEvent};
use keel_types::{ChatChunk, ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse};
use serde_json::Value;

use crate::http::{answer_body, client, kind_of_status, refine, snippet};
use crate::scrub::{self, Scrubber};
use crate::sse::{Decoder, chat_stream};
use crate::{ChatStream, ErrorKind, Provider, ProviderError};

/// The API version keel speaks; the wire format below follows it.
const API_VERSION: &str = "2023-06-01";

pub(crate) struct AnthropicProvider {
    inner: Arc<Inner>,
}

struct Inner {
    id: ProviderId,
    /// Removes this provider's secrets from every failure it returns.
    scrub: Scrubber,
    cfg: ProviderConfig,
    http: reqwest::Client,
}

impl AnthropicProvider {
    pub(crate) fn new(cfg: ProviderConfig) -> Result<Self, ProviderError> {
        let http = client(&cfg)?;
        Ok(Self { inner: Arc::new(Inner { id: cfg.id.clone(), scrub: Scrubber::new(&cfg), cfg, http }) })
    }
}

impl Inner {
    fn request(&self, target: &ModelTarget, req: &ChatRequest) -> Result<reqwest::RequestBuilder, ProviderError> {
        let body = chat_request_to_messages(req, &target.model, self.cfg.default_max_tokens).map_err(|e| {
            let kind = match e.kind {
                TranslateErrorKind::Unsupported => ErrorKind::Unsupported,
                TranslateErrorKind::Invalid => ErrorKind::InvalidRequest,
            };
            let message = match &e.param {
                Some(p) => format!("{p}: {}", e.message),
                None => e.message,
            };
            ProviderError::new(&self.id, kind, message)
        })?;
        let body = serde_json::to_vec(&body).map_err(|e| {
            ProviderError::new(&self.id, ErrorKind::InvalidRequest, format!("cannot encode request: {e}"))
        })?;
        let mut rb = self
            .http
            .post(format!("{}/v1/messages", self.cfg.base_url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("anthropic-version", API_VERSION)
            .body(body);
        if let Some(key) = &self.cfg.api_key {
            rb = rb.header("x-api-key", key.expose());
        }
        // An Anthropic client's beta features travel with its request.
        if let Some(beta) = req.anthropic.as_ref().and_then(|a| a.beta.as_deref()) {
            rb = rb.header("anthropic-beta", beta);
        }
        for (name, value) in &self.cfg.headers {
            rb = rb.header(name, value);
        }
        Ok(rb)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ProviderError> {
        crate::http::send(&self.id, rb, classify).await
    }
}

/// Anthropic errors: `{"type":"error","error":{"type":"overloaded_error","message":…}}`.
pub(crate) fn classify(provider: &ProviderId, status: u16, body: &[u8]) -> ProviderError {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let error = json.as_ref().and_then(|v| v.get("error"));
    let code = error.and_then(|e| e.get("type")).and_then(Value::as_str).map(str::to_string);
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str).map(str::to_string);
    let message = message.unwrap_or_else(|| format!("upstream returned HTTP {status}: {}", snippet(body)));
    ProviderError { status: Some(status), ..error_of(provider, kind_of_status(status), code, message) }
}

fn error_of(provider: &ProviderId, kind: ErrorKind, code: Option<String>, message: String) -> ProviderError {
    let kind = if code.as_deref() == Some("overloaded_error") { ErrorKind::Server } else { kind };
    let kind = refine(kind, code.as_deref(), &message);
    ProviderError { code, ..ProviderError::new(provider, kind, message) }
}

impl Provider for AnthropicProvider {
    fn id(&self) -> &ProviderId {
        &self.inner.id
    }

    fn chat(
        &self,
        target: &ModelTarget,
        mut req: ChatRequest,
    ) -> BoxFuture<'static, Result<ChatResponse, ProviderError>> {
        let inner = self.inner.clone();
        req.stream = false;
        let rb = inner.request(target, &req);
        let scrub = inner.scrub.clone();
        scrub::future(scrub, async move {
            let resp = inner.send(rb?.timeout(inner.cfg.request_timeout)).await?;
            let body = answer_body(&inner.id, resp, inner.cfg.max_response_bytes).await?;
            answer(&inner.id, &body)
        })
    }

    fn chat_stream(
        &self,
        target: &ModelTarget,
        mut req: ChatRequest,
    ) -> BoxFuture<'static, Result<ChatStream, ProviderError>> {
        let inner = self.inner.clone();
        req.stream = true;
        let rb = inner.request(target, &req);
        let scrub = inner.scrub.clone();
        scrub::stream(scrub, async move {
            let resp = inner.send(rb?.header(reqwest::header::ACCEPT, "text/event-stream")).await?;
            let decoder = AnthropicDecoder::new(inner.id.clone());
            Ok(chat_stream(inner.id.clone(), resp, inner.cfg.max_response_bytes, decoder))
        })
    }

    fn embeddings(
        &self,
        _target: &ModelTarget,
        _req: EmbeddingsRequest,
    ) -> BoxFuture<'static, Result<EmbeddingsResponse, ProviderError>> {
        let err = ProviderError::new(&self.inner.id, ErrorKind::Unsupported, "Anthropic has no embeddings API");
        futures::future::ready(Err(err)).boxed()
    }
}

pub(crate) struct AnthropicDecoder {
    provider: ProviderId,
    translator: MessagesToChatStream,
    /// Anthropic messages carry no timestamp; OpenAI chunks do.
    created: u64,
    /// `message_delta` brought the stop reason: the answer is complete even if `message_stop` never comes.
    finished: bool,
    /// The id and model of the message, for a usage chunk made at the end.
    last: Option<(String, String)>,
}

impl AnthropicDecoder {
    pub(crate) fn new(provider: ProviderId) -> Self {
        Self { provider, translator: MessagesToChatStream::new(true), created: unix_now(), finished: false, last: None }
    }
}

/// Parses a non-streamed answer body as the provider does.
pub(crate) fn answer(id: &ProviderId, body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let parsed: MessagesResponse = serde_json::from_slice(body).map_err(|e| {
        ProviderError::new(
            id,
            ErrorKind::Protocol,
            format!("upstream answered with an invalid body ({e}): {}", snippet(body)),
        )
    })?;
    let mut chat = messages_response_to_chat(parsed);
    chat.created = unix_now();
    Ok(chat)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Decoder for AnthropicDecoder {
    fn event(&mut self, event: crate::sse::Event, out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError> {
        if event.data.trim().is_empty() {
            return Ok(());
        }
        let parsed: StreamEvent = serde_json::from_str(&event.data).map_err(|e| {
            ProviderError::new(
                &self.provider,
                ErrorKind::Protocol,
                format!("malformed stream event ({e}): {}", snippet(event.data.as_bytes())),
            )
        })?;
        if let StreamEvent::Error { error } = &parsed {
            return Err(error_of(&self.provider, ErrorKind::Server, Some(error.kind.clone()), error.message.clone()));
        }
        for mut chunk in self.translator.push(parsed) {
            chunk.created = self.created;
            self.finished |= chunk.choices.iter().any(|c| c.finish_reason.is_some());
            if self.last.is_none() {
                self.last = Some((chunk.id.clone(), chunk.model.clone()));
            }
            out.push_back(chunk);
        }
        Ok(())
    }

    fn is_complete(&self) -> bool {
        self.translator.is_complete()
    }

    /// The stop reason came but `message_stop` did not: the answer is complete; its usage, which the
    /// translator emits on `message_stop`, is emitted here.
    fn end_without_marker(&mut self, out: &mut VecDeque<ChatChunk>) -> bool {
        if !self.finished {
            return false;
        }
        if let (Some(usage), Some((id, model))) = (self.translator.usage(), self.last.clone()) {
            out.push_back(ChatChunk {
                id,
                object: "chat.completion.chunk".into(),
                created: self.created,
                model,
                choices: Vec::new(),
                usage: Some(usage),
                system_fingerprint: None,
                extra: Default::default(),
            });
        }
        true
    }
}
