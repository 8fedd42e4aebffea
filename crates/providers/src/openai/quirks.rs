//! The differences between OpenAI-compatible vendors, as data. One implementation reads this table; there is no
//! copy of the provider per vendor.

use keel_config::ProviderKind;
use keel_types::{ChatRequest, Content};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// Azure OpenAI: `api-key: KEY`.
    ApiKeyHeader,
}

/// Whether a vendor takes OpenAI's `metadata` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metadata {
    /// Sent as it is, like every other field keel does not model (self-hosted and unknown servers).
    Pass,
    /// OpenAI accepts it only with `store: true` and rejects it otherwise.
    WithStore,
    /// The vendor rejects it.
    Drop,
}

#[derive(Debug)]
pub(crate) struct Quirks {
    pub auth: Auth,
    /// Azure OpenAI's `/openai/deployments/{deployment}/…?api-version=…` paths.
    pub azure_paths: bool,
    /// The vendor knows only `max_tokens`, not OpenAI's newer `max_completion_tokens`.
    pub legacy_max_tokens: bool,
    /// The vendor's name for `seed`.
    pub seed_field: &'static str,
    /// What the vendor accepts of `metadata`.
    pub metadata: Metadata,
    /// Fields the vendor rejects, removed before sending.
    pub drop_fields: &'static [&'static str],
    /// Whether `stream_options.include_usage` is understood (otherwise the vendor reports usage unasked or not at all).
    pub stream_options: bool,
}

const OPENAI: Quirks = Quirks {
    auth: Auth::Bearer,
    azure_paths: false,
    legacy_max_tokens: false,
    seed_field: "seed",
    metadata: Metadata::WithStore,
    drop_fields: &[],
    stream_options: true,
};

pub(crate) fn of(kind: ProviderKind) -> &'static Quirks {
    static AZURE: Quirks = Quirks { auth: Auth::ApiKeyHeader, azure_paths: true, ..OPENAI };
    // Self-hosted servers and most hosted ones predate `max_completion_tokens`. Hosted vendors with a known
    // dialect reject `metadata`; an unknown OpenAI-compatible server gets it like any other field keel passes on.
    static COMPATIBLE: Quirks = Quirks { legacy_max_tokens: true, metadata: Metadata::Drop, ..OPENAI };
    static OPEN_COMPATIBLE: Quirks = Quirks { legacy_max_tokens: true, metadata: Metadata::Pass, ..OPENAI };
    static GROQ: Quirks =
        Quirks { metadata: Metadata::Drop, drop_fields: &["logit_bias", "logprobs", "top_logprobs"], ..OPENAI };
    // Mistral rejects unknown fields with 422 and spells the seed `random_seed`; it always reports stream usage.
    static MISTRAL: Quirks = Quirks {
        legacy_max_tokens: true,
        seed_field: "random_seed",
        metadata: Metadata::Drop,
        drop_fields: &["user", "logit_bias", "logprobs", "top_logprobs", "store"],
        stream_options: false,
        ..OPENAI
    };
    static OPENAI_STATIC: Quirks = OPENAI;
    match kind {
        ProviderKind::OpenAi => &OPENAI_STATIC,
        ProviderKind::Azure => &AZURE,
        ProviderKind::Groq => &GROQ,
        ProviderKind::Mistral => &MISTRAL,
        ProviderKind::Vllm | ProviderKind::Ollama | ProviderKind::Together => &COMPATIBLE,
        ProviderKind::OpenAiCompatible => &OPEN_COMPATIBLE,
        // Not OpenAI dialects; the registry never builds an OpenAI provider for them.
        ProviderKind::Anthropic | ProviderKind::Local => &OPENAI_STATIC,
    }
}

impl Quirks {
    /// Rewrites a canonical request into this vendor's dialect.
    pub(crate) fn apply(&self, req: &mut ChatRequest) {
        if self.legacy_max_tokens && req.max_tokens.is_none() {
            req.max_tokens = req.max_completion_tokens.take();
        }
        if self.seed_field != "seed"
            && let Some(seed) = req.seed.take()
        {
            req.extra.insert(self.seed_field.to_string(), seed.into());
        }
        match self.metadata {
            Metadata::Pass => {}
            Metadata::WithStore => {
                if !req.extra.get("store").and_then(|v| v.as_bool()).unwrap_or(false) {
                    req.metadata = None;
                }
            }
            Metadata::Drop => req.metadata = None,
        }
        for field in self.drop_fields {
            req.extra.remove(*field);
            if *field == "user" {
                req.user = None;
            }
        }
        strip_anthropic_fields(req);
        if req.stream {
            if self.stream_options {
                req.stream_options.get_or_insert_with(Default::default).include_usage = true;
            } else {
                req.stream_options = None;
            }
        } else {
            req.stream_options = None;
        }
    }
}

/// Removes what an Anthropic client's request carries for Anthropic's sake (the request fields keel does not
/// model, `thinking_blocks` on assistant messages, `cache_control` on content parts and tools):
/// OpenAI-compatible servers reject unknown fields there.
fn strip_anthropic_fields(req: &mut ChatRequest) {
    if let Some(origin) = req.anthropic.take() {
        for f in &origin.fields {
            req.extra.remove(f);
        }
    }
    for m in &mut req.messages {
        m.extra.remove("thinking_blocks");
        m.extra.remove("cache_control");
        if let Some(Content::Parts(parts)) = &mut m.content {
            for p in parts {
                p.extra.remove("cache_control");
            }
        }
    }
    for t in req.tools.iter_mut().flatten() {
        t.extra.remove("cache_control");
    }
}
