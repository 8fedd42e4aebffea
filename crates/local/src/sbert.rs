//! What every sentence-transformers BERT encoder shares, whatever engine runs it: the directory layout
//! (`config.json`, `model.safetensors`, `tokenizer.json`, `sentence_bert_config.json`), tokenization exactly as
//! sentence-transformers does it (surrounding white space stripped, truncation at `max_seq_length`, padding to
//! the longest text of the batch), and mean pooling over the attention mask followed by L2 normalisation.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::LocalError;

/// The parts of a BERT `config.json` an engine needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
}

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_positions() -> usize {
    512
}

/// A sentence-transformers model directory, read and checked.
pub struct SbertDir {
    pub dir: PathBuf,
    pub config: BertConfig,
    pub tokenizer: Tokenizer,
}

/// One tokenized batch, padded to its longest text.
pub struct Batch {
    pub rows: usize,
    pub len: usize,
    pub ids: Vec<u32>,
    pub mask: Vec<u32>,
    /// Tokens actually read (padding excluded).
    pub tokens: u64,
}

impl SbertDir {
    pub fn open(dir: &Path) -> Result<Self, LocalError> {
        let config_json = read(dir, "config.json")?;
        let config: BertConfig = serde_json::from_slice(&config_json)
            .map_err(|e| LocalError::Engine(format!("{}: {e}", dir.join("config.json").display())))?;
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(LocalError::Engine(format!(
                "{}: hidden_size {} is not a multiple of num_attention_heads {}",
                dir.join("config.json").display(),
                config.hidden_size,
                config.num_attention_heads
            )));
        }
        let max_len = read(dir, "sentence_bert_config.json")
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .map_or(config.max_position_embeddings, |n| n as usize)
            .min(config.max_position_embeddings);
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| LocalError::Engine(format!("{}: {e}", dir.join("tokenizer.json").display())))?;
        // The shipped tokenizer.json pads and truncates at 128; sentence-transformers uses `max_seq_length`
        // with dynamic padding (to the longest text of the batch).
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| LocalError::Engine(format!("tokenizer: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        Ok(Self { dir: dir.to_path_buf(), config, tokenizer })
    }

    pub fn weights(&self) -> Result<Vec<u8>, LocalError> {
        read(&self.dir, "model.safetensors")
    }

    pub fn tokenize(&self, texts: &[String]) -> Result<Batch, LocalError> {
        // sentence-transformers strips surrounding white space before tokenizing.
        let trimmed: Vec<&str> = texts.iter().map(|t| t.trim()).collect();
        let encodings =
            self.tokenizer.encode_batch(trimmed, true).map_err(|e| LocalError::Engine(format!("tokenize: {e}")))?;
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let ids: Vec<u32> = encodings.iter().flat_map(|e| e.get_ids().iter().copied()).collect();
        let mask: Vec<u32> = encodings.iter().flat_map(|e| e.get_attention_mask().iter().copied()).collect();
        let tokens = mask.iter().map(|m| u64::from(*m)).sum();
        Ok(Batch { rows: encodings.len(), len, ids, mask, tokens })
    }
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, LocalError> {
    std::fs::read(dir.join(name)).map_err(|e| LocalError::ModelMissing(format!("{}: {e}", dir.join(name).display())))
}

/// Mean pooling over the attention mask, then L2 normalisation, of `hidden` laid out `[rows, len, dims]`.
/// Sums run in f64 so that the result does not depend on the batch's padding.
pub fn mean_pool_normalize(hidden: &[f32], batch: &Batch, dims: usize) -> Result<Vec<Vec<f32>>, LocalError> {
    if hidden.len() != batch.rows * batch.len * dims {
        return Err(LocalError::Engine(format!(
            "encoder output has {} values, expected {}x{}x{}",
            hidden.len(),
            batch.rows,
            batch.len,
            dims
        )));
    }
    let mut out = Vec::with_capacity(batch.rows);
    let mut sum = vec![0f64; dims];
    for row in 0..batch.rows {
        sum.iter_mut().for_each(|s| *s = 0.0);
        let mut count = 0f64;
        for t in 0..batch.len {
            if batch.mask[row * batch.len + t] == 0 {
                continue;
            }
            count += 1.0;
            let base = (row * batch.len + t) * dims;
            for (s, h) in sum.iter_mut().zip(&hidden[base..base + dims]) {
                *s += f64::from(*h);
            }
        }
        let count = count.max(1e-9);
        let norm = sum.iter().map(|s| (s / count) * (s / count)).sum::<f64>().sqrt().max(1e-12);
        out.push(sum.iter().map(|s| (s / count / norm) as f32).collect());
    }
    Ok(out)
}

/// Counts tokens as a sentence-transformers model's tokenizer does (special tokens included, nothing
/// truncated): what sizes the chunks of a collection embedded with that model.
pub struct TokenCounter(Tokenizer);

impl TokenCounter {
    /// The tokenizer of the model directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, LocalError> {
        let mut t = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| LocalError::ModelMissing(format!("{}: {e}", dir.join("tokenizer.json").display())))?;
        t.with_truncation(None).map_err(|e| LocalError::Engine(format!("tokenizer: {e}")))?;
        t.with_padding(None);
        Ok(Self(t))
    }

    /// Tokens in `text`; a text the tokenizer cannot read counts as one token per byte (never too few).
    pub fn count(&self, text: &str) -> usize {
        self.0.encode(text.trim(), true).map_or(text.len(), |e| e.get_ids().len())
    }
}
