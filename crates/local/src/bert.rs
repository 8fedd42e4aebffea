//! The embedding engine: a BERT sentence encoder (all-MiniLM-L6-v2 and its kin) on candle, computing exactly
//! what sentence-transformers computes: tokens truncated at the model's `max_seq_length` with dynamic padding,
//! mean pooling over the attention mask, L2 normalisation.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::LocalError;
use crate::engine::EmbedEngine;

pub struct BertEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    dims: usize,
}

fn engine_err(what: &str) -> impl Fn(candle_core::Error) -> LocalError + '_ {
    move |e| LocalError::Engine(format!("{what}: {e}"))
}

impl BertEmbedder {
    /// Loads a sentence-transformers directory: `config.json`, `model.safetensors`, `tokenizer.json`, and
    /// `sentence_bert_config.json` when present (for `max_seq_length`).
    pub fn load(dir: &Path) -> Result<Self, LocalError> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| LocalError::ModelMissing(format!("{}: {e}", dir.join(name).display())))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| LocalError::Engine(format!("config.json: {e}")))?;
        let dims: usize = serde_json::from_slice::<serde_json::Value>(&read("config.json")?)
            .ok()
            .and_then(|v| v["hidden_size"].as_u64())
            .map_or(384, |n| n as usize);
        let max_positions = serde_json::from_slice::<serde_json::Value>(&read("config.json")?)
            .ok()
            .and_then(|v| v["max_position_embeddings"].as_u64())
            .unwrap_or(512) as usize;
        let max_len = read("sentence_bert_config.json")
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .map_or(max_positions, |n| n as usize)
            .min(max_positions);
        let weights = read("model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(engine_err("model.safetensors"))?;
        let model = BertModel::load(vb, &config).map_err(engine_err("BERT weights"))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| LocalError::Engine(format!("tokenizer.json: {e}")))?;
        // The shipped tokenizer.json pads and truncates at 128; sentence-transformers uses `max_seq_length`
        // with dynamic padding (to the longest text of the batch).
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| LocalError::Engine(format!("tokenizer: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        Ok(Self { model, tokenizer, dims })
    }
}

impl EmbedEngine for BertEmbedder {
    fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, u64), LocalError> {
        if texts.is_empty() {
            return Ok((Vec::new(), 0));
        }
        // sentence-transformers strips surrounding white space before tokenizing.
        let trimmed: Vec<&str> = texts.iter().map(|t| t.trim()).collect();
        let encodings =
            self.tokenizer.encode_batch(trimmed, true).map_err(|e| LocalError::Engine(format!("tokenize: {e}")))?;
        let tokens: u64 =
            encodings.iter().map(|e| e.get_attention_mask().iter().map(|m| u64::from(*m)).sum::<u64>()).sum();
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let ids: Vec<u32> = encodings.iter().flat_map(|e| e.get_ids().to_vec()).collect();
        let mask: Vec<u32> = encodings.iter().flat_map(|e| e.get_attention_mask().to_vec()).collect();
        let device = Device::Cpu;
        let shape = (encodings.len(), len);
        let ids = Tensor::from_vec(ids, shape, &device).map_err(engine_err("input"))?;
        let mask = Tensor::from_vec(mask, shape, &device).map_err(engine_err("input"))?;
        let types = ids.zeros_like().map_err(engine_err("input"))?;
        let out = self.model.forward(&ids, &types, Some(&mask)).map_err(engine_err("forward"))?;
        let pooled = (|| {
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let sum = out.broadcast_mul(&m)?.sum(1)?;
            let count = m.sum(1)?.clamp(1e-9f32, f32::MAX)?;
            let mean = sum.broadcast_div(&count)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        })()
        .map_err(engine_err("pooling"))?;
        Ok((pooled, tokens))
    }

    fn dimensions(&self) -> usize {
        self.dims
    }
}
