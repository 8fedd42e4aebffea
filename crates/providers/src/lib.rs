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
