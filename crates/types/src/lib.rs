//! The vocabulary of keel: wire types of the OpenAI and Anthropic APIs, usage and ids. No IO.
//!
//! keel's canonical request and stream shape is OpenAI's chat completion: every inbound API is translated to
//! it and every provider is translated from it. Types keep the fields they do not model in an `extra` map so
//! that nothing a client sends is dropped on the way to an OpenAI-compatible upstream.

pub mod anthropic;
pub mod chat;
pub mod embeddings;
pub mod error;
pub mod models;

pub use chat::*;
pub use embeddings::*;

/// A JSON object holding fields keel passes through without interpreting them.
pub type Extra = serde_json::Map<String, serde_json::Value>;
