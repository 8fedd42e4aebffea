//! Models that run inside keel's own process: chat on llama.cpp (GGUF), sentence embeddings from BERT
//! safetensors on ONNX Runtime. Both hide behind small traits ([`ChatEngine`], [`EmbedEngine`]) and run on worker threads fed by
//! bounded queues: on a small machine concurrent generations only slow each other down, so work waits its
//! turn, and when the queue is full the request is refused at once (429), so that a route can fall over.

mod engine;
mod llama;
pub mod models;
mod onnx;
mod provider;
mod sbert;
mod text;
mod worker;

pub use engine::{ChatEngine, EmbedEngine, GenerateParams, Generation, Sampling};
pub use llama::LlamaEngine;
pub use onnx::OrtEmbedder;
pub use provider::{LocalProvider, ModelKind};
pub use sbert::TokenCounter;
pub use worker::WorkerStats;

/// What can go wrong with a local model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LocalError {
    #[error("{0}")]
    ModelMissing(String),
    #[error("local inference failed: {0}")]
    Engine(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    ContextLength(String),
    #[error("the local model's queue is full ({0} waiting); try again or use another model")]
    Busy(usize),
    #[error("the client went away")]
    Cancelled,
    #[error("model download failed: {0}")]
    Pull(String),
}

impl LocalError {
    pub fn into_provider(self, id: &keel_providers::ProviderId) -> keel_providers::ProviderError {
        use keel_providers::ErrorKind;
        let kind = match &self {
            LocalError::ModelMissing(_) => ErrorKind::NotFound,
            LocalError::Engine(_) | LocalError::Pull(_) => ErrorKind::Server,
            LocalError::BadRequest(_) => ErrorKind::InvalidRequest,
            LocalError::Unsupported(_) => ErrorKind::Unsupported,
            LocalError::ContextLength(_) => ErrorKind::ContextLengthExceeded,
            LocalError::Busy(_) => ErrorKind::Busy,
            LocalError::Cancelled => ErrorKind::StreamIncomplete,
        };
        let mut e = keel_providers::ProviderError::new(id, kind, self.to_string());
        if kind == ErrorKind::Busy {
            // A generation takes seconds; asking again sooner only finds the queue full again.
            e.retry_after = Some(std::time::Duration::from_secs(1));
        }
        e
    }
}
