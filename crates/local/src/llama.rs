//! The chat engine on llama.cpp (through `llama-cpp-2`): the GGUF's own chat template and tokenizer, sampling
//! with temperature, top-p and a seed, stop sequences, and JSON-schema-constrained decoding via a grammar.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;

use keel_types::FinishReason;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;

use crate::LocalError;
use crate::engine::{ChatEngine, GenerateParams, Generation, Sampling};
use crate::text::{Step, TextAssembler};

/// llama.cpp's global state, initialised once per process.
fn backend() -> Result<&'static LlamaBackend, LocalError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
            b.void_logs();
            Ok(b)
        })
        .as_ref()
        .map_err(|e| LocalError::Engine(format!("llama.cpp backend: {e}")))
}

pub struct LlamaEngine {
    model: LlamaModel,
    template: LlamaChatTemplate,
    threads: i32,
    n_ctx: u32,
    recommended: Sampling,
}

impl LlamaEngine {
    pub fn load(path: &Path, threads: u32, context_size: u32) -> Result<Self, LocalError> {
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| LocalError::Engine(format!("cannot load {}: {e}", path.display())))?;
        let template = model
            .chat_template(None)
            .map_err(|e| LocalError::Engine(format!("{}: no usable chat template: {e}", path.display())))?;
        let n_ctx = context_size.min(model.n_ctx_train()).max(64);
        // GGUF files may carry their makers' sampling (`general.sampling.*`, llama.cpp's convention).
        let meta = |key: &str| model.meta_val_str(key).ok().and_then(|v| v.trim().parse::<f32>().ok());
        let recommended =
            Sampling { temperature: meta("general.sampling.temp"), top_p: meta("general.sampling.top_p") };
        Ok(Self { model, template, threads: i32::try_from(threads.max(1)).unwrap_or(1), n_ctx, recommended })
    }

    /// Sampling to use where the GGUF file names none (a packaged model's card).
    pub fn with_recommended(mut self, fallback: Sampling) -> Self {
        self.recommended.temperature = self.recommended.temperature.or(fallback.temperature);
        self.recommended.top_p = self.recommended.top_p.or(fallback.top_p);
        self
    }

    fn prompt(&self, messages: &[(String, String)]) -> Result<String, LocalError> {
        let chat = messages
            .iter()
            .map(|(role, text)| LlamaChatMessage::new(role.clone(), text.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LocalError::BadRequest(format!("message text: {e}")))?;
        self.model
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| LocalError::Engine(format!("chat template: {e}")))
    }

    fn sampler(&self, params: &GenerateParams) -> Result<LlamaSampler, LocalError> {
        let mut chain = Vec::new();
        if let Some(schema) = &params.json_schema {
            let grammar = llama_cpp_2::json_schema_to_grammar(&schema.to_string())
                .map_err(|e| LocalError::BadRequest(format!("response_format schema: {e}")))?;
            chain.push(
                LlamaSampler::grammar(&self.model, &grammar, "root")
                    .map_err(|e| LocalError::BadRequest(format!("response_format schema: {e}")))?,
            );
        }
        if params.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            chain.push(LlamaSampler::top_p(params.top_p.clamp(0.0, 1.0), 1));
            chain.push(LlamaSampler::temp(params.temperature));
            chain.push(LlamaSampler::dist(params.seed));
        }
        Ok(LlamaSampler::chain_simple(chain))
    }
}

impl ChatEngine for LlamaEngine {
    fn recommended(&self) -> Sampling {
        self.recommended
    }

    fn context_size(&self) -> u32 {
        self.n_ctx
    }

    fn generate(&self, params: &GenerateParams, emit: &mut dyn FnMut(&str) -> bool) -> Result<Generation, LocalError> {
        let backend = backend()?;
        let prompt = self.prompt(&params.messages)?;
        let vocab = self.model.vocab();
        let tokens = vocab.tokenize(prompt.as_bytes(), vocab.should_add_bos(), true);
        let n_prompt = tokens.len();
        let room = (self.n_ctx as usize).saturating_sub(n_prompt);
        if room == 0 {
            return Err(LocalError::ContextLength(format!(
                "the prompt has {n_prompt} tokens; the local model's context window is {}",
                self.n_ctx
            )));
        }
        let max_new = params.max_tokens.map_or(room, |m| (m as usize).min(room));
        let n_batch = u32::try_from(n_prompt.max(512)).unwrap_or(u32::MAX);
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let mut ctx =
            self.model.new_context(backend, ctx_params).map_err(|e| LocalError::Engine(format!("context: {e}")))?;
        let mut batch = LlamaBatch::new(n_prompt.max(1), 1);
        for (i, t) in tokens.iter().enumerate() {
            batch
                .add(*t, i32::try_from(i).unwrap_or(i32::MAX), &[0], i + 1 == n_prompt)
                .map_err(|e| LocalError::Engine(format!("batch: {e}")))?;
        }
        ctx.decode(&mut batch).map_err(|e| LocalError::Engine(format!("decode: {e}")))?;
        let mut sampler = self.sampler(params)?;
        let mut text = TextAssembler::new(params.stops.clone());
        let mut pos = i32::try_from(n_prompt).unwrap_or(i32::MAX);
        let mut generated = 0usize;
        let mut finish = FinishReason::Length;
        let mut stopped = false;
        let mut one = LlamaBatch::new(1, 1);
        let mut logprobs = params.logprobs.then(Vec::new);
        while generated < max_new {
            let token = sampler.sample(&ctx, -1);
            if vocab.is_eog(token) {
                finish = FinishReason::Stop;
                break;
            }
            generated += 1;
            let piece = vocab.token_to_piece(token, false, None);
            if let Some(lp) = logprobs.as_mut() {
                lp.push((
                    String::from_utf8_lossy(&piece).into_owned(),
                    log_probability(ctx.get_logits_ith(-1), token.0),
                ));
            }
            match text.push(&piece) {
                Step::Text(t) => {
                    if !t.is_empty() && !emit(&t) {
                        return Err(LocalError::Cancelled);
                    }
                }
                Step::Stopped(t) => {
                    if !t.is_empty() {
                        emit(&t);
                    }
                    finish = FinishReason::Stop;
                    stopped = true;
                    break;
                }
            }
            one.clear();
            one.add(token, pos, &[0], true).map_err(|e| LocalError::Engine(format!("batch: {e}")))?;
            pos += 1;
            ctx.decode(&mut one).map_err(|e| LocalError::Engine(format!("decode: {e}")))?;
        }
        let rest = text.finish();
        if !rest.is_empty() && !stopped {
            emit(&rest);
        }
        Ok(Generation { finish, prompt_tokens: n_prompt as u64, completion_tokens: generated as u64, logprobs })
    }
}

/// The natural-log probability of `token` under the softmax of `logits` (log-sum-exp shifted by the maximum, so
/// that no exponential overflows).
fn log_probability(logits: &[f32], token: i32) -> f32 {
    let Some(&own) = usize::try_from(token).ok().and_then(|i| logits.get(i)) else { return f32::NEG_INFINITY };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    own - max - sum.ln()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    #[test]
    fn log_probabilities_are_a_normalised_softmax() {
        let logits = [1.0f32, 2.0, 3.0, 1000.0];
        let total: f32 = (0..4).map(|t| super::log_probability(&logits, t).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert!(super::log_probability(&logits, 3) > -1e-3);
        assert_eq!(super::log_probability(&logits, 9), f32::NEG_INFINITY);
    }
}
