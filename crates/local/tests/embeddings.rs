//! all-MiniLM-L6-v2 in keel against reference vectors from an independent implementation
//! (`scripts/embedding-reference.py`, numpy): every component within 1e-4.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use keel_local::{BertEmbedder, EmbedEngine};
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
fn vectors_match_the_independent_reference_one_by_one_and_batched() {
    let engine = BertEmbedder::load(&common::model("all-minilm-l6-v2")).unwrap();
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
