//! Shared by the local-model tests: where the packaged models are.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

/// The models directory; the packaged models must be there (`keel models pull`, which `.ci/run` does).
pub fn model(name: &str) -> PathBuf {
    let dir = keel_local::models::models_dir(None);
    let target = keel_local::models::PACKAGED.iter().find(|p| p.name == name).map(|p| p.target).unwrap();
    let path = dir.join(target);
    assert!(path.exists(), "{} is missing: run `keel models pull` (or set KEEL_MODELS_DIR)", path.display());
    path
}

/// The ONNX Runtime library `keel models pull` puts in the models directory.
pub fn onnxruntime() -> PathBuf {
    let dir = keel_local::models::models_dir(None);
    let path = dir.join(keel_local::models::ONNXRUNTIME.target);
    assert!(path.exists(), "{} is missing: run `keel models pull` (or set KEEL_MODELS_DIR)", path.display());
    path
}
