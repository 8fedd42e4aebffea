//! A collection end to end on the embedded index: incremental ingest (unchanged skipped, changed replaced,
//! deleted removed, a bad file reported and skipped), search in every mode, filters, the model check, and an
//! update that fails midway leaving the previous state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use keel_rag::chunk::ApproxTokens;
use keel_rag::fusion::Fusion;
use keel_rag::index::{NewChunk, SourceUpdate};
use keel_rag::ingest::ingest;
use keel_rag::{Chunk, Chunker, CollectionInfo, Embed, EmbeddedIndex, Filter, Index, Mode, RagError, Searcher, Update};

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

fn info(name: &str) -> CollectionInfo {
    CollectionInfo { name: name.into(), model: "hashed".into(), dims: 64 }
}

fn chunker() -> Chunker {
    Chunker::new(20, 60, 5, Arc::new(ApproxTokens)).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

async fn run(index: &EmbeddedIndex, docs: &Path) -> keel_rag::ingest::Report {
    let idx: Arc<dyn Index> = Arc::new(index.clone());
    ingest(idx, Arc::new(Hashed("hashed")), chunker(), &[docs.to_path_buf()], &BTreeMap::new(), &|_| {}).await.unwrap()
}

#[tokio::test]
async fn incremental_ingest_search_and_filters() {
    let data = tempfile::tempdir().unwrap();
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

    let index = EmbeddedIndex::open_or_create(data.path(), info("docs")).unwrap();
    let r = run(&index, docs.path()).await;
    assert_eq!((r.files, r.added, r.unchanged, r.ignored), (4, 3, 0, 1), "{r:?}");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert!(r.failed[0].source.ends_with("broken.md"));
    assert_eq!(index.stats().sources, 3);

    let searcher = Searcher::new(Arc::new(index.clone()), Arc::new(Hashed("hashed")), Fusion::default()).unwrap();
    for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
        let hits =
            searcher.search("how does a TCP server accept connections", mode, 3, &Filter::default()).await.unwrap();
        assert!(hits[0].source.ends_with("net.html"), "{mode:?}: {hits:?}");
        assert_eq!(hits[0].headings, vec!["Networking", "Sockets"]);
        assert_eq!(hits[0].meta.get("kind").map(String::as_str), Some("html"));
    }
    let hits = searcher.search("zebra", Mode::Hybrid, 3, &Filter::default()).await.unwrap();
    assert!(hits[0].source.ends_with("notes.txt"));
    assert_eq!(hits[0].bm25_rank, Some(1));

    // A filter keeps only what matches, on both sides.
    let only_md = Filter::parse(&["kind=markdown"]).unwrap();
    for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
        let hits = searcher.search("TCP server connections file", mode, 5, &only_md).await.unwrap();
        assert!(!hits.is_empty(), "{mode:?}");
        assert!(hits.iter().all(|h| h.source.ends_with("fs.md")), "{mode:?}: {hits:?}");
    }
    assert!(matches!(Filter::parse(&["nokey"]), Err(RagError::BadFilter(_))));

    // Again: nothing changed, nothing embedded.
    let r = run(&index, docs.path()).await;
    assert_eq!((r.unchanged, r.added, r.replaced, r.removed, r.chunks), (3, 0, 0, 0, 0), "{r:?}");

    // One file changed, one deleted: replaced and removed, and the collection reopens in that state.
    write(docs.path(), "fs.md", "# File system\n\n## Writing\n\nUse writeFile to write a whole file at once.\n");
    std::fs::remove_file(docs.path().join("notes.txt")).unwrap();
    let r = run(&index, docs.path()).await;
    assert_eq!((r.unchanged, r.replaced, r.removed), (1, 1, 1), "{r:?}");
    drop(searcher);
    let reopened = EmbeddedIndex::open(data.path(), "docs").unwrap();
    assert_eq!(reopened.stats().sources, 2);
    let searcher = Searcher::new(Arc::new(reopened), Arc::new(Hashed("hashed")), Fusion::default()).unwrap();
    let hits = searcher.search("zebra crossing", Mode::Hybrid, 5, &Filter::default()).await.unwrap();
    assert!(hits.iter().all(|h| !h.source.ends_with("notes.txt")), "a deleted file's chunks are gone: {hits:?}");
    let hits = searcher.search("readFile", Mode::Bm25, 5, &Filter::default()).await.unwrap();
    assert!(hits.is_empty(), "a replaced file's old chunks are gone: {hits:?}");
    let hits = searcher.search("writeFile", Mode::Hybrid, 5, &Filter::default()).await.unwrap();
    assert!(hits[0].text.contains("writeFile"));
}

#[tokio::test]
async fn another_model_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let index = EmbeddedIndex::open_or_create(data.path(), info("c")).unwrap();
    let err = Searcher::new(Arc::new(index), Arc::new(Hashed("other-model")), Fusion::default()).unwrap_err();
    assert!(matches!(err, RagError::ModelMismatch { .. }), "{err}");
    assert!(matches!(EmbeddedIndex::open(data.path(), "missing"), Err(RagError::NoCollection(_))));
    assert!(matches!(EmbeddedIndex::open(data.path(), "../x"), Err(RagError::BadName(_))));
}

#[tokio::test]
async fn a_failed_update_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let index = EmbeddedIndex::open_or_create(data.path(), info("c")).unwrap();
    let chunk = |t: &str| Chunk { text: t.into(), start: 0, end: t.len(), headings: vec![], tokens: 3 };
    let good = SourceUpdate {
        source: "a".into(),
        hash: "1".into(),
        meta: BTreeMap::new(),
        chunks: vec![NewChunk { chunk: chunk("alpha beta"), vector: vec![1.0; 64] }],
    };
    index.apply(Update { remove: vec![], upsert: vec![good.clone()] }).await.unwrap();
    // The second source's vector has the wrong size: the whole update is refused, the first stays as it was.
    let mut bad = good.clone();
    bad.source = "b".into();
    bad.chunks[0].vector = vec![1.0; 3];
    let mut replaced = good.clone();
    replaced.chunks[0].chunk = chunk("gamma");
    let err = index.apply(Update { remove: vec![], upsert: vec![replaced, bad] }).await.unwrap_err();
    assert!(matches!(err, RagError::Dimensions { want: 64, got: 3 }), "{err}");
    let reopened = EmbeddedIndex::open(data.path(), "c").unwrap();
    assert_eq!(reopened.stats().sources, 1);
    let hits = reopened.keyword("alpha".into(), 5, Filter::default()).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert!(reopened.keyword("gamma".into(), 5, Filter::default()).await.unwrap().is_empty());
}
