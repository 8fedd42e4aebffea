//! The two small traits that hide the inference engines from the rest of keel.

use keel_types::FinishReason;

use crate::LocalError;

/// What to generate: the conversation and the sampling parameters.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// (role, text) in order.
    pub messages: Vec<(String, String)>,
    pub max_tokens: Option<u32>,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
    pub stops: Vec<String>,
    /// A JSON Schema the output must satisfy (constrained decoding).
    pub json_schema: Option<serde_json::Value>,
    /// Whether to report each generated token's log-probability (under the model's distribution, before
    /// sampling settings).
    pub logprobs: bool,
}

/// How a generation ended, with exact token counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub finish: FinishReason,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Each generated token's text and natural-log probability, when asked for.
    pub logprobs: Option<Vec<(String, f32)>>,
}

/// The sampling a model's makers recommend, applied when a request sets none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
}

/// A chat model running in-process. `generate` blocks: it runs on a worker thread.
pub trait ChatEngine: Send + Sync + 'static {
    /// Generates, handing each piece of text to `emit`; `emit` returning false (the client went away) stops it.
    fn generate(&self, params: &GenerateParams, emit: &mut dyn FnMut(&str) -> bool) -> Result<Generation, LocalError>;

    /// The model's recommended sampling, when known.
    fn recommended(&self) -> Sampling {
        Sampling::default()
    }

    /// The context window in tokens: prompt and answer together.
    fn context_size(&self) -> u32;
}

/// A sentence-embedding model running in-process. `embed` blocks: it runs on a worker thread.
pub trait EmbedEngine: Send + Sync + 'static {
    /// One L2-normalised vector per text, and the number of tokens read.
    fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, u64), LocalError>;

    fn dimensions(&self) -> usize;

    /// The engine's name, for logs and benchmarks.
    fn engine(&self) -> &'static str;
}
