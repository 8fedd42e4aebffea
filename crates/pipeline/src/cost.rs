//! What a request costs: a price table per provider and model (keel's built-in list, overridden by the
//! configuration's `[prices]`), usage as the provider reported it or, when it did not, counted with the model's
//! tokenizer (tiktoken's encodings for OpenAI models, an approximation for others, and said so).

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_config::{Price, ProviderId, ProviderKind};
use keel_types::{ChatRequest, Content, EmbeddingInput, EmbeddingsRequest};

/// Prices in USD per million tokens (input, output, cached input), as published by the vendors in 2025.
/// A dated or suffixed model (`gpt-4o-2024-08-06`, `claude-sonnet-4-20250514`) takes its family's price: the
/// longest entry that is a prefix of the name, followed by `-` or the end. Keep the list sorted by name.
const BUILT_IN: &[(&str, f64, f64, f64)] = &[
    ("chatgpt-4o-latest", 5.0, 15.0, 5.0),
    ("claude-3-5-haiku", 0.8, 4.0, 0.08),
    ("claude-3-5-sonnet", 3.0, 15.0, 0.3),
    ("claude-3-7-sonnet", 3.0, 15.0, 0.3),
    ("claude-3-haiku", 0.25, 1.25, 0.03),
    ("claude-3-opus", 15.0, 75.0, 1.5),
    ("claude-haiku-4-5", 1.0, 5.0, 0.1),
    ("claude-opus-4", 15.0, 75.0, 1.5),
    ("claude-opus-4-1", 15.0, 75.0, 1.5),
    ("claude-opus-4-5", 5.0, 25.0, 0.5),
    ("claude-sonnet-4", 3.0, 15.0, 0.3),
    ("claude-sonnet-4-5", 3.0, 15.0, 0.3),
    ("gpt-3.5-turbo", 0.5, 1.5, 0.5),
    ("gpt-4", 30.0, 60.0, 30.0),
    ("gpt-4-turbo", 10.0, 30.0, 10.0),
    ("gpt-4.1", 2.0, 8.0, 0.5),
    ("gpt-4.1-mini", 0.4, 1.6, 0.1),
    ("gpt-4.1-nano", 0.1, 0.4, 0.025),
    ("gpt-4o", 2.5, 10.0, 1.25),
    ("gpt-4o-mini", 0.15, 0.6, 0.075),
    ("gpt-5", 1.25, 10.0, 0.125),
    ("gpt-5-mini", 0.25, 2.0, 0.025),
    ("gpt-5-nano", 0.05, 0.4, 0.005),
    ("o1", 15.0, 60.0, 7.5),
    ("o1-mini", 1.1, 4.4, 0.55),
    ("o3", 2.0, 8.0, 0.5),
    ("o3-mini", 1.1, 4.4, 0.55),
    ("o4-mini", 1.1, 4.4, 0.275),
    ("text-embedding-3-large", 0.13, 0.0, 0.13),
    ("text-embedding-3-small", 0.02, 0.0, 0.02),
    ("text-embedding-ada-002", 0.1, 0.0, 0.1),
];

/// Tokens of one request, as billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    /// Part of `input` served from the provider's prompt cache.
    pub cached: u64,
    /// Counted by keel rather than reported by the provider.
    pub estimated: bool,
}

/// The price table in force, shared by everything that prices a request (budget reservations, the log's cost):
/// a reloaded configuration replaces it for all of them at once. Readers load it without a lock.
#[derive(Debug, Clone, Default)]
pub struct SharedPrices(Arc<arc_swap::ArcSwap<Prices>>);

impl SharedPrices {
    pub fn new(prices: Prices) -> Self {
        Self(Arc::new(arc_swap::ArcSwap::from_pointee(prices)))
    }

    /// The table in force now.
    pub fn load(&self) -> Arc<Prices> {
        self.0.load_full()
    }

    /// Replaces the table for every holder of this handle.
    pub fn set(&self, prices: Prices) {
        self.0.store(Arc::new(prices));
    }
}

impl From<Prices> for SharedPrices {
    fn from(p: Prices) -> Self {
        Self::new(p)
    }
}

/// The price table: configured prices over the built-in list; in-process models cost nothing.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    configured: BTreeMap<String, Price>,
    kinds: BTreeMap<ProviderId, ProviderKind>,
}

impl Prices {
    pub fn new(configured: BTreeMap<String, Price>, kinds: BTreeMap<ProviderId, ProviderKind>) -> Self {
        Self { configured, kinds }
    }

    /// The price of `model` at `provider`: `[prices."provider/model"]`, then `[prices."model"]`, then the
    /// built-in list; `None` when keel does not know it (the cost is then left unknown, never guessed).
    pub fn price(&self, provider: &ProviderId, model: &str) -> Option<Price> {
        if let Some(p) = self.configured.get(&format!("{provider}/{model}")).or_else(|| self.configured.get(model)) {
            return Some(*p);
        }
        if self.kinds.get(provider) == Some(&ProviderKind::Local) {
            return Some(Price { input: 0.0, output: 0.0, cached_input: 0.0 });
        }
        // Vendors that host OpenAI's or Anthropic's models under a path-like name (`openai/gpt-4o`).
        let bare = model.rsplit('/').next().unwrap_or(model);
        built_in(bare)
    }

    /// The cost in USD of `tokens` at `provider`/`model`.
    pub fn cost(&self, provider: &ProviderId, model: &str, tokens: Tokens) -> Option<f64> {
        let p = self.price(provider, model)?;
        let cached = tokens.cached.min(tokens.input);
        let fresh = tokens.input - cached;
        Some((fresh as f64 * p.input + cached as f64 * p.cached_input + tokens.output as f64 * p.output) / 1e6)
    }
}

fn built_in(model: &str) -> Option<Price> {
    BUILT_IN
        .iter()
        .filter(|(name, ..)| model.strip_prefix(name).is_some_and(|rest| rest.is_empty() || rest.starts_with('-')))
        .max_by_key(|(name, ..)| name.len())
        .map(|&(_, input, output, cached_input)| Price { input, output, cached_input })
}

/// The tokenizer for counting what a provider did not report: OpenAI's `o200k_base` for its current models,
/// `cl100k_base` for older ones and as the approximation for every other vendor.
fn encoding(model: &str) -> &'static tiktoken_rs::CoreBPE {
    let bare = model.rsplit('/').next().unwrap_or(model);
    let old = bare.starts_with("gpt-4-") || bare == "gpt-4" || bare.starts_with("gpt-3.5") || bare.contains("ada");
    if old { tiktoken_rs::cl100k_base_singleton() } else { tiktoken_rs::o200k_base_singleton() }
}

/// Tokens in `text` under `model`'s encoding.
pub fn count_text(model: &str, text: &str) -> u64 {
    encoding(model).encode_ordinary(text).len() as u64
}

/// Prompt tokens of a chat request, counted the way OpenAI documents it (3 tokens of framing per message,
/// 3 for the reply's priming), tool definitions included as their JSON.
pub fn count_chat_prompt(model: &str, req: &ChatRequest) -> u64 {
    let bpe = encoding(model);
    let mut n = 3u64;
    for m in &req.messages {
        n += 3;
        if let Some(content) = &m.content {
            match content {
                Content::Text(t) => n += bpe.encode_ordinary(t).len() as u64,
                Content::Parts(parts) => {
                    for p in parts {
                        if let Some(t) = p.text.as_deref() {
                            n += bpe.encode_ordinary(t).len() as u64;
                        } else {
                            // Images and audio: OpenAI bills a fixed minimum per low-detail image.
                            n += 85;
                        }
                    }
                }
            }
        }
        if let Some(calls) = &m.tool_calls {
            let json = serde_json::to_string(calls).unwrap_or_default();
            n += bpe.encode_ordinary(&json).len() as u64;
        }
    }
    if let Some(tools) = &req.tools {
        let json = serde_json::to_string(tools).unwrap_or_default();
        n += bpe.encode_ordinary(&json).len() as u64;
    }
    n
}

/// An upper bound of a chat request's prompt tokens without tokenizing: a byte-level BPE token covers at least
/// one byte, so a text has at most as many tokens as UTF-8 bytes. Cheap enough for every request; budgets use it
/// first and count exactly only when it is not good enough.
pub fn chat_prompt_upper_bound(req: &ChatRequest) -> u64 {
    let mut n = 3u64;
    for m in &req.messages {
        n += 3;
        match &m.content {
            Some(Content::Text(t)) => n += t.len() as u64,
            Some(Content::Parts(parts)) => {
                for p in parts {
                    n += p.text.as_deref().map_or(85, |t| t.len() as u64);
                }
            }
            None => {}
        }
        if let Some(calls) = &m.tool_calls {
            n += serde_json::to_string(calls).map_or(0, |j| j.len() as u64);
        }
    }
    if let Some(tools) = &req.tools {
        n += serde_json::to_string(tools).map_or(0, |j| j.len() as u64);
    }
    n
}

/// An upper bound of an embeddings request's input tokens (see [`chat_prompt_upper_bound`]).
pub fn embeddings_input_upper_bound(req: &EmbeddingsRequest) -> u64 {
    match &req.input {
        EmbeddingInput::One(s) => s.len() as u64,
        EmbeddingInput::Many(v) => v.iter().map(|s| s.len() as u64).sum(),
        EmbeddingInput::Tokens(t) => t.len() as u64,
        EmbeddingInput::ManyTokens(v) => v.iter().map(|t| t.len() as u64).sum(),
    }
}

/// Input tokens of an embeddings request.
pub fn count_embeddings_input(model: &str, req: &EmbeddingsRequest) -> u64 {
    match &req.input {
        EmbeddingInput::One(s) => count_text(model, s),
        EmbeddingInput::Many(v) => v.iter().map(|s| count_text(model, s)).sum(),
        EmbeddingInput::Tokens(t) => t.len() as u64,
        EmbeddingInput::ManyTokens(v) => v.iter().map(|t| t.len() as u64).sum(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn prices() -> Prices {
        let configured = BTreeMap::from([
            ("my-model".to_string(), Price { input: 1.0, output: 2.0, cached_input: 0.5 }),
            ("azure/gpt-4o".to_string(), Price { input: 3.0, output: 12.0, cached_input: 3.0 }),
        ]);
        let kinds = BTreeMap::from([
            (ProviderId::from("openai"), ProviderKind::OpenAi),
            (ProviderId::from("azure"), ProviderKind::Azure),
            (ProviderId::from("here"), ProviderKind::Local),
        ]);
        Prices::new(configured, kinds)
    }

    #[test]
    fn dated_models_take_their_family_price_and_the_longest_prefix_wins() {
        let p = prices();
        let openai = ProviderId::from("openai");
        assert_eq!(p.price(&openai, "gpt-4o-2024-08-06").unwrap().input, 2.5);
        assert_eq!(p.price(&openai, "gpt-4o-mini-2024-07-18").unwrap().input, 0.15);
        assert_eq!(p.price(&openai, "claude-sonnet-4-20250514").unwrap().output, 15.0);
        assert_eq!(p.price(&openai, "claude-opus-4-5-20251101").unwrap().input, 5.0);
        assert_eq!(p.price(&openai, "openai/gpt-4.1-nano").unwrap().input, 0.1);
        assert!(p.price(&openai, "gpt-4ox").is_none(), "a prefix must end at a dash");
        assert!(p.price(&openai, "llama-3-70b").is_none(), "unknown models have no price, not a guess");
    }

    #[test]
    fn configured_prices_override_per_target_then_per_model_and_local_is_free() {
        let p = prices();
        assert_eq!(p.price(&ProviderId::from("azure"), "gpt-4o").unwrap().input, 3.0);
        assert_eq!(p.price(&ProviderId::from("openai"), "gpt-4o").unwrap().input, 2.5);
        assert_eq!(p.price(&ProviderId::from("openai"), "my-model").unwrap().output, 2.0);
        assert_eq!(
            p.cost(&ProviderId::from("here"), "smollm2", Tokens { input: 1000, output: 1000, ..Tokens::default() }),
            Some(0.0)
        );
    }

    #[test]
    fn cost_bills_cached_input_at_its_own_rate() {
        let p = prices();
        let t = Tokens { input: 1_000_000, output: 500_000, cached: 400_000, estimated: false };
        // 600k fresh at 2.5 + 400k cached at 1.25 + 500k out at 10.
        let c = p.cost(&ProviderId::from("openai"), "gpt-4o", t).unwrap();
        assert!((c - (1.5 + 0.5 + 5.0)).abs() < 1e-9, "{c}");
    }

    #[test]
    fn the_cheap_bound_is_never_below_the_count() {
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Привет, как дела? 東京の天気は？ emoji 🎉🎉 and plain words"}
            ]
        }))
        .unwrap();
        for model in ["gpt-4o", "gpt-4"] {
            assert!(chat_prompt_upper_bound(&req) >= count_chat_prompt(model, &req));
        }
    }

    #[test]
    fn counting_uses_the_models_encoding() {
        // "hello world" is 2 tokens in both encodings; a long non-English text differs between them.
        assert_eq!(count_text("gpt-4o", "hello world"), 2);
        let text = "Привет, как дела? Это тест токенизатора.";
        assert_ne!(count_text("gpt-4o", text), count_text("gpt-4", text));
    }
}
