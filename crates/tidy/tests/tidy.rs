//! Tidy tests, after rust-analyzer's: the invariants of ARCHITECTURE.md that a machine can check. Each failure
//! names the file and the rule.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Every file of the repository, relative to its root, without build output and version control.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                let skip = matches!(
                    name.as_str(),
                    "target" | ".git" | "node_modules" | "__pycache__" | "artifacts" | "corpus"
                ) || name.starts_with(".venv");
                if !skip {
                    dirs.push(path);
                }
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

struct Crate {
    dir: String,
    name: String,
    deps: BTreeSet<String>,
    has_bin: bool,
    has_lib: bool,
    bin_paths: BTreeSet<String>,
}

fn crates(root: &Path) -> Vec<Crate> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else { continue };
        let manifest: toml::Table = text.parse().unwrap();
        let name = manifest["package"]["name"].as_str().unwrap().to_string();
        let deps = manifest
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        let mut bin_paths: BTreeSet<String> = manifest
            .get("bin")
            .and_then(|b| b.as_array())
            .map(|bins| bins.iter().filter_map(|b| b.get("path")?.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if dir.join("src/main.rs").exists() {
            bin_paths.insert("src/main.rs".into());
        }
        out.push(Crate {
            dir: dir.file_name().unwrap().to_string_lossy().to_string(),
            name,
            deps,
            has_bin: !bin_paths.is_empty(),
            has_lib: dir.join("src/lib.rs").exists(),
            bin_paths,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The crates each crate may depend on: the layering of ARCHITECTURE.md. The binaries (`keel`, `keel-bench`)
/// wire everything together and may depend on any crate.
fn layering() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("keel-types", &[][..]),
        ("keel-translate", &["keel-types"][..]),
        ("keel-config", &["keel-types", "keel-guard"][..]),
        ("keel-providers", &["keel-types", "keel-config", "keel-translate"][..]),
        ("keel-store", &[][..]),
        ("keel-cache", &["keel-types", "keel-store"][..]),
        ("keel-limits", &["keel-store"][..]),
        (
            "keel-pipeline",
            &["keel-types", "keel-config", "keel-providers", "keel-cache", "keel-store", "keel-guard"][..],
        ),
        ("keel-local", &["keel-types", "keel-config", "keel-providers"][..]),
        ("keel-rag", &[][..]),
        ("keel-guard", &[][..]),
        ("keel-eval", &["keel-store"][..]),
        (
            "keel-server",
            &[
                "keel-types",
                "keel-config",
                "keel-providers",
                "keel-pipeline",
                "keel-translate",
                "keel-store",
                "keel-limits",
                "keel-rag",
                "keel-eval",
            ][..],
        ),
        ("keel-testkit", &[][..]),
        ("keel-tidy", &[][..]),
    ])
}

/// HTTP server frameworks: only the server knows them.
const HTTP_SERVER: &[&str] = &["axum", "hyper", "hyper-util", "http-body", "http-body-util", "tower-http"];

/// Crates that do IO: the vocabulary and the translations between APIs must not need them.
const IO: &[&str] = &["tokio", "reqwest", "hyper", "axum", "sqlx", "redis", "mio", "async-std"];

#[test]
fn crates_depend_only_on_what_they_may() {
    let root = root();
    let layering = layering();
    let mut problems = Vec::new();
    for c in crates(&root) {
        let internal: Vec<&String> = c.deps.iter().filter(|d| d.starts_with("keel")).collect();
        match layering.get(c.name.as_str()) {
            Some(allowed) => {
                for d in internal.iter().filter(|d| !allowed.contains(&d.as_str())) {
                    problems.push(format!("{}: depends on {d}, which the layering does not allow", c.name));
                }
            }
            None if c.has_bin && !c.has_lib => {}
            None => problems
                .push(format!("{}: not in the layering of tests/tidy.rs (add it, and to ARCHITECTURE.md)", c.name)),
        }
        for d in c.deps.iter().filter(|d| HTTP_SERVER.contains(&d.as_str())) {
            if c.name != "keel-server" {
                problems.push(format!("{}: depends on {d}; only keel-server knows the HTTP server", c.name));
            }
        }
        if c.deps.contains("anyhow") && !c.has_bin {
            problems.push(format!("{}: depends on anyhow; only binaries use it (libraries have typed errors)", c.name));
        }
        if ["keel-types", "keel-translate"].contains(&c.name.as_str()) {
            for d in c.deps.iter().filter(|d| IO.contains(&d.as_str())) {
                problems.push(format!("{}: depends on {d}; the vocabulary and the translations do no IO", c.name));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn library_code_has_typed_errors_and_the_vocabulary_does_no_io() {
    let root = root();
    let mut problems = Vec::new();
    for c in crates(&root) {
        for file in files(&root.join("crates").join(&c.dir)) {
            let rel = file.to_string_lossy().to_string();
            if !rel.starts_with("src/") || file.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(root.join("crates").join(&c.dir).join(&file)).unwrap();
            // In a crate with a library, only the binaries' own files may use anyhow.
            if c.has_lib && !c.bin_paths.contains(&rel) && text.contains("anyhow") {
                problems.push(format!("crates/{}/{rel}: uses anyhow in library code", c.dir));
            }
            if ["keel-types", "keel-translate"].contains(&c.name.as_str()) {
                for io in ["std::fs", "std::net", "std::process", "tokio::", "File::open"] {
                    if text.contains(io) {
                        problems.push(format!(
                            "crates/{}/{rel}: uses {io}; the vocabulary and the translations do no IO",
                            c.dir
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn every_source_file_opens_with_its_header() {
    let root = root();
    let missing: Vec<String> = files(&root)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
        .filter(|f| {
            let text = std::fs::read_to_string(root.join(f)).unwrap_or_default();
            !text.starts_with("//!")
        })
        .map(|f| format!("{}: does not open with a `//!` line saying what it owns", f.display()))
        .collect();
    assert!(missing.is_empty(), "\n{}\n", missing.join("\n"));
}

/// A backticked span of the documentation that names a file of this repository.
fn named_path(span: &str) -> Option<&str> {
    let span = span.trim_end_matches('/');
    if span.is_empty() || span.contains(char::is_whitespace) || span.contains(['*', '{', '<', '$', ':', '=', '(']) {
        return None;
    }
    let rooted = ["crates/", "scripts/", "docs/", "tests/", "fuzz/", ".ci/"].iter().any(|p| span.starts_with(p));
    let source = [".rs", ".md", ".py"].iter().any(|e| span.ends_with(e));
    (rooted || source).then_some(span)
}

#[test]
fn every_file_the_documentation_names_exists() {
    let root = root();
    let all = files(&root);
    let exists = |span: &str| {
        all.iter().any(|f| {
            let f = f.to_string_lossy();
            f == span || f.starts_with(&format!("{span}/")) || f.ends_with(&format!("/{span}"))
        })
    };
    let docs = all.iter().filter(|f| {
        let s = f.to_string_lossy();
        (s.ends_with(".md") && !s.contains('/')) || (s.starts_with("docs/") && s.ends_with(".md"))
    });
    let mut problems = Vec::new();
    for doc in docs {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (i, line) in text.lines().enumerate() {
            for (j, span) in line.split('`').enumerate() {
                if j % 2 == 1
                    && let Some(path) = named_path(span)
                    && !exists(path)
                {
                    problems.push(format!("{}:{}: names `{path}`, which does not exist", doc.display(), i + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}
