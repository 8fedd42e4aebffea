//! Providers: one attempt at one upstream per call, behind the [`Provider`] trait.
//!
//! Retries, fallbacks and timeouts across attempts are not here: they live in the pipeline's `call` stage.
//! A provider turns a canonical request into its vendor's wire format, makes one HTTP call, and turns the answer
//! (or the failure, classified in [`ProviderError`]) back into the canonical form.

mod anthropic;
mod error;
mod http;
mod openai;
mod registry;
mod scrub;
mod sse;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use error::{ErrorKind, ProviderError};
pub use keel_config::{ModelTarget, ProviderId};
pub use registry::Providers;

use keel_types::{ChatChunk, ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse};

/// A stream of chat chunks. It ends (`None`) only after a complete answer; an answer that cannot be completed
/// ends with one `Err` item instead, never with a silent end.
pub type ChatStream = BoxStream<'static, Result<ChatChunk, ProviderError>>;

/// One upstream LLM API. Each method makes exactly one attempt.
pub trait Provider: Send + Sync + 'static {
    fn id(&self) -> &ProviderId;

    /// A complete (non-streamed) chat completion. `req.model` is already the upstream model name.
    fn chat(&self, target: &ModelTarget, req: ChatRequest) -> BoxFuture<'static, Result<ChatResponse, ProviderError>>;

    /// A streamed chat completion. The future resolves once the upstream accepted the request (status 2xx);
    /// the stream then yields chunks. Usage is always requested upstream, so the last chunk carries it when the
    /// vendor reports usage.
    fn chat_stream(
        &self,
        target: &ModelTarget,
        req: ChatRequest,
    ) -> BoxFuture<'static, Result<ChatStream, ProviderError>>;

    fn embeddings(
        &self,
        target: &ModelTarget,
        req: EmbeddingsRequest,
    ) -> BoxFuture<'static, Result<EmbeddingsResponse, ProviderError>>;
}

/// Entry points for the fuzz targets (`fuzz/`): every decoder of upstream bytes, driven without a network.
/// Not part of keel's API.
#[doc(hidden)]
pub mod fuzz {
    use bytes::Bytes;
    use futures::StreamExt;
    use keel_types::{ChatChunk, ChatResponse};

    use crate::ProviderError;

    fn id() -> crate::ProviderId {
        crate::ProviderId::from("fuzz")
    }

    fn drain(stream: crate::ChatStream) -> Vec<Result<ChatChunk, ProviderError>> {
        futures::executor::block_on(stream.collect())
    }

    fn body(chunks: Vec<Vec<u8>>) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))))
    }

    /// An OpenAI-compatible SSE body, arriving in `chunks`, decoded into canonical chunks.
    pub fn openai_stream(chunks: Vec<Vec<u8>>, limit: u64) -> Vec<Result<ChatChunk, ProviderError>> {
        drain(crate::sse::decode(id(), body(chunks), limit, crate::openai::OpenAiDecoder::new(id())))
    }

    /// An Anthropic SSE body, arriving in `chunks`, decoded into canonical chunks.
    pub fn anthropic_stream(chunks: Vec<Vec<u8>>, limit: u64) -> Vec<Result<ChatChunk, ProviderError>> {
        drain(crate::sse::decode(id(), body(chunks), limit, crate::anthropic::AnthropicDecoder::new(id())))
    }

    /// An OpenAI-compatible vendor's error answer.
    pub fn openai_error(status: u16, body: &[u8]) -> ProviderError {
        crate::openai::errors::classify(&id(), status, body)
    }

    /// An OpenAI-compatible mid-stream error event.
    pub fn openai_stream_error(data: &str) -> Option<ProviderError> {
        crate::openai::errors::stream_error(&id(), data)
    }

    /// Anthropic's error answer.
    pub fn anthropic_error(status: u16, body: &[u8]) -> ProviderError {
        crate::anthropic::classify(&id(), status, body)
    }

    /// Anthropic's non-streamed answer.
    pub fn anthropic_answer(body: &[u8]) -> Result<ChatResponse, ProviderError> {
        crate::anthropic::answer(&id(), body)
    }

    /// `Retry-After` / `retry-after-ms` from header values as sent.
    pub fn retry_after(headers: &[(&str, &[u8])]) -> Option<std::time::Duration> {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            if let (Ok(n), Ok(v)) = (http::HeaderName::try_from(*name), http::HeaderValue::from_bytes(value)) {
                map.append(n, v);
            }
        }
        crate::http::retry_after(&map)
    }
}
