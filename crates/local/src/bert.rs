//! The pure-Rust embedding engine: a BERT sentence encoder on candle. Slower than the ONNX Runtime engine
//! (see docs/benchmarks.md) but needs no runtime library, so it is what `embeddings_engine = "auto"` falls back to.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use crate::LocalError;
use crate::engine::EmbedEngine;
use crate::sbert::{SbertDir, mean_pool_normalize};

pub struct BertEmbedder {
    model: BertModel,
    sbert: SbertDir,
}

fn engine_err(what: &str) -> impl Fn(candle_core::Error) -> LocalError + '_ {
    move |e| LocalError::Engine(format!("{what}: {e}"))
}

impl BertEmbedder {
    /// Loads a sentence-transformers directory (see [`SbertDir`]).
    pub fn load(dir: &Path) -> Result<Self, LocalError> {
        let sbert = SbertDir::open(dir)?;
        let config: Config =
            serde_json::from_slice(&sbert.config_json).map_err(|e| LocalError::Engine(format!("config.json: {e}")))?;
        let vb = VarBuilder::from_buffered_safetensors(sbert.weights()?, DType::F32, &Device::Cpu)
            .map_err(engine_err("model.safetensors"))?;
        let model = BertModel::load(vb, &config).map_err(engine_err("BERT weights"))?;
        Ok(Self { model, sbert })
    }
}

impl EmbedEngine for BertEmbedder {
    fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, u64), LocalError> {
        if texts.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let batch = self.sbert.tokenize(texts)?;
        let device = Device::Cpu;
        let shape = (batch.rows, batch.len);
        let ids = Tensor::from_slice(&batch.ids, shape, &device).map_err(engine_err("input"))?;
        let mask = Tensor::from_slice(&batch.mask, shape, &device).map_err(engine_err("input"))?;
        let types = ids.zeros_like().map_err(engine_err("input"))?;
        let out = self.model.forward(&ids, &types, Some(&mask)).map_err(engine_err("forward"))?;
        let hidden = out.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(engine_err("output"))?;
        let vectors = mean_pool_normalize(&hidden, &batch, self.dimensions())?;
        Ok((vectors, batch.tokens))
    }

    fn dimensions(&self) -> usize {
        self.sbert.config.hidden_size
    }

    fn engine(&self) -> &'static str {
        "candle"
    }
}
