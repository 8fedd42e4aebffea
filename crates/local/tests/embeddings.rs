//! all-MiniLM-L6-v2 in keel, on ONNX Runtime, against reference vectors from an independent implementation
//! (`scripts/embedding-reference.py`, numpy): every component within 1e-4.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use keel_local::{EmbedEngine, OrtEmbedder};
use serde_json::Value;

fn fixture() -> Vec<(String, usize, Vec<f32>)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm-reference.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let emb = i["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (i["text"].as_str().unwrap().to_string(), i["tokens"].as_u64().unwrap() as usize, emb)
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn onnxruntime_vectors_match_the_independent_reference_one_by_one_and_batched() {
    let engine = OrtEmbedder::load(&common::model("all-minilm-l6-v2"), &common::onnxruntime(), 2).unwrap();
    assert_eq!(engine.engine(), "onnxruntime");
    check(&engine);
}

#[test]
fn onnxruntime_refuses_a_model_whose_weights_do_not_match_its_config() {
    // A copy of the model whose config claims more layers than the weights hold: a clear error, not a panic.
    let src = common::model("all-minilm-l6-v2");
    let dir = std::env::temp_dir().join(format!("keel-bad-bert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut config: Value = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    config["num_hidden_layers"] = 7.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err = OrtEmbedder::load(&dir, &common::onnxruntime(), 1).err().expect("must fail");
    assert!(err.to_string().contains("encoder.layer.6"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn check(engine: &dyn EmbedEngine) {
    assert_eq!(engine.dimensions(), 384);
    let items = fixture();
    assert!(items.len() >= 12);
    for (text, _, want) in &items {
        let (got, _) = engine.embed(std::slice::from_ref(text)).unwrap();
        let d = max_diff(&got[0], want);
        assert!(d <= 1e-4, "{text:?}: max abs difference {d}");
    }
    // One padded batch gives the same vectors: the attention mask excludes the padding.
    let texts: Vec<String> = items.iter().map(|(t, _, _)| t.clone()).collect();
    let (batch, tokens) = engine.embed(&texts).unwrap();
    for ((text, n, want), got) in items.iter().zip(&batch) {
        let d = max_diff(got, want);
        assert!(d <= 1e-4, "batched {text:?}: max abs difference {d}");
        let _ = n;
    }
    let expected_tokens: usize = items.iter().map(|(_, n, _)| n).sum();
    assert_eq!(tokens as usize, expected_tokens, "usage counts the real tokens, padding excluded");
}
