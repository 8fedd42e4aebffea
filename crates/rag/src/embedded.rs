//! The embedded index: BM25 with tantivy and an HNSW graph of vectors with usearch (f16, cosine), in one
//! directory per collection. The atomic point of an update is tantivy's commit, whose payload is the
//! collection's manifest (its model, sources and the name of the vectors file of that commit): the vectors are
//! saved to a new file first, then the commit names it, then the old file goes. A crash before the commit
//! leaves the previous commit, which still names the previous vectors file, so the collection stays
//! queryable as it was.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TantivyDocument, TextFieldIndexing, TextOptions,
    Value,
};
use tantivy::{IndexReader, ReloadPolicy, Term};

use crate::index::{Filter, Index, SourceState, Stats, Store, StoredChunk, Update};
use crate::{CollectionInfo, RagError};

const MANIFEST_VERSION: u32 = 1;
/// tantivy's indexing memory per update (its minimum is 15 MB).
const WRITER_BYTES: usize = 64 * 1024 * 1024;

/// What a commit says about the collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    info: CollectionInfo,
    generation: u64,
    next_id: u64,
    sources: BTreeMap<String, SourceState>,
}

impl Manifest {
    fn vectors_file(&self) -> String {
        format!("vectors-{}.usearch", self.generation)
    }

    fn stats(&self) -> Stats {
        Stats {
            sources: self.sources.len() as u64,
            chunks: self.sources.values().map(|s| s.chunks).sum(),
            tokens: self.sources.values().map(|s| s.tokens).sum(),
        }
    }
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    source: Field,
    text: Field,
    heading: Field,
    start: Field,
    end: Field,
    tag: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    // English text: lower-cased, stemmed; positions are not needed for BM25 over terms.
    let english = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default().set_tokenizer("en_stem").set_index_option(IndexRecordOption::WithFreqs),
        )
        .set_stored();
    let fields = Fields {
        id: b.add_u64_field("id", INDEXED | STORED | FAST),
        source: b.add_text_field("source", STRING | STORED),
        text: b.add_text_field("text", english.clone()),
        heading: b.add_text_field("heading", english),
        start: b.add_u64_field("start", STORED),
        end: b.add_u64_field("end", STORED),
        // Metadata as `key=value` terms, so a filter is a term query.
        tag: b.add_text_field("tag", STRING | STORED),
    };
    (b.build(), fields)
}

/// A collection on disk.
#[derive(Clone)]
pub struct EmbeddedIndex {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    index: tantivy::Index,
    reader: IndexReader,
    fields: Fields,
    manifest: RwLock<Manifest>,
    vectors: RwLock<usearch::Index>,
    /// One update at a time in this process (tantivy's lock file keeps other processes out).
    writing: Mutex<()>,
}

impl std::fmt::Debug for EmbeddedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedIndex").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

fn new_vectors(dims: usize) -> Result<usearch::Index, RagError> {
    let options = usearch::IndexOptions {
        dimensions: dims,
        metric: usearch::MetricKind::Cos,
        quantization: usearch::ScalarKind::F16,
        ..Default::default()
    };
    usearch::Index::new(&options).map_err(RagError::index)
}

/// The collections under a directory, by name.
pub fn list(root: &Path) -> Result<Vec<CollectionInfo>, RagError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(RagError::io(root, e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if crate::check_name(&name).is_ok()
            && let Ok(m) = read_manifest(&entry.path())
        {
            out.push(m.info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Deletes a collection; `false` if there was none.
pub fn delete(root: &Path, name: &str) -> Result<bool, RagError> {
    crate::check_name(name)?;
    let dir = root.join(name);
    if !dir.join("tantivy").join("meta.json").exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(&dir).map_err(|e| RagError::io(&dir, e))?;
    Ok(true)
}

fn read_manifest(dir: &Path) -> Result<Manifest, RagError> {
    let index = tantivy::Index::open_in_dir(dir.join("tantivy")).map_err(RagError::index)?;
    manifest_of(&index)
}

fn manifest_of(index: &tantivy::Index) -> Result<Manifest, RagError> {
    let metas = index.load_metas().map_err(RagError::index)?;
    let payload = metas.payload.ok_or_else(|| RagError::Index("the index has no manifest".into()))?;
    let m: Manifest = serde_json::from_str(&payload).map_err(|e| RagError::Index(format!("manifest: {e}")))?;
    if m.version != MANIFEST_VERSION {
        return Err(RagError::Index(format!("manifest version {} is not supported", m.version)));
    }
    Ok(m)
}

impl EmbeddedIndex {
    /// Opens a collection.
    pub fn open(root: &Path, name: &str) -> Result<Self, RagError> {
        crate::check_name(name)?;
        let dir = root.join(name);
        if !dir.join("tantivy").join("meta.json").exists() {
            return Err(RagError::NoCollection(name.to_string()));
        }
        let index = tantivy::Index::open_in_dir(dir.join("tantivy")).map_err(RagError::index)?;
        let manifest = manifest_of(&index)?;
        let vectors = new_vectors(manifest.info.dims)?;
        let file = dir.join(manifest.vectors_file());
        let path = file.to_str().ok_or_else(|| RagError::io(&file, "not a UTF-8 path"))?;
        vectors.load(path).map_err(|e| RagError::io(&file, e))?;
        Self::from_parts(dir, index, manifest, vectors)
    }

    /// Opens a collection, or creates an empty one for this model.
    pub fn open_or_create(root: &Path, info: CollectionInfo) -> Result<Self, RagError> {
        crate::check_name(&info.name)?;
        match Self::open(root, &info.name) {
            Ok(c) => Ok(c),
            Err(RagError::NoCollection(_)) => Self::create(root, info),
            Err(e) => Err(e),
        }
    }

    fn create(root: &Path, info: CollectionInfo) -> Result<Self, RagError> {
        if info.dims == 0 {
            return Err(RagError::Invalid("an embeddings model with zero dimensions".into()));
        }
        let dir = root.join(&info.name);
        let tdir = dir.join("tantivy");
        std::fs::create_dir_all(&tdir).map_err(|e| RagError::io(&tdir, e))?;
        let (schema, _) = schema();
        let index = tantivy::Index::create_in_dir(&tdir, schema).map_err(RagError::index)?;
        let manifest =
            Manifest { version: MANIFEST_VERSION, info, generation: 0, next_id: 0, sources: BTreeMap::new() };
        let vectors = new_vectors(manifest.info.dims)?;
        save_vectors(&vectors, &dir.join(manifest.vectors_file()))?;
        let mut writer: tantivy::IndexWriter<TantivyDocument> =
            index.writer_with_num_threads(1, WRITER_BYTES).map_err(RagError::index)?;
        let payload = serde_json::to_string(&manifest).map_err(RagError::index)?;
        let mut prepared = writer.prepare_commit().map_err(RagError::index)?;
        prepared.set_payload(&payload);
        prepared.commit().map_err(RagError::index)?;
        Self::from_parts(dir, index, manifest, vectors)
    }

    fn from_parts(
        dir: PathBuf,
        index: tantivy::Index,
        manifest: Manifest,
        vectors: usearch::Index,
    ) -> Result<Self, RagError> {
        let (_, fields) = schema();
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(RagError::index)?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                index,
                reader,
                fields,
                manifest: RwLock::new(manifest),
                vectors: RwLock::new(vectors),
                writing: Mutex::new(()),
            }),
        })
    }

    /// Vectors and index files on disk, in bytes.
    pub fn disk_bytes(&self) -> u64 {
        walkdir::WalkDir::new(&self.inner.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }

    /// The vectors' memory, in bytes (usearch's own count).
    pub fn vector_memory_bytes(&self) -> u64 {
        self.inner.vectors.read().map(|v| v.memory_usage() as u64).unwrap_or(0)
    }

    /// Whether another process committed a newer state than the one open here.
    pub fn is_stale(&self) -> bool {
        let on_disk = manifest_of(&self.inner.index).map(|m| m.generation);
        let here = self.inner.manifest.read().map(|m| m.generation);
        match (on_disk, here) {
            (Ok(d), Ok(h)) => d != h,
            _ => true,
        }
    }

    fn manifest(&self) -> Option<Manifest> {
        self.inner.manifest.read().ok().map(|m| m.clone())
    }
}

fn save_vectors(vectors: &usearch::Index, file: &Path) -> Result<(), RagError> {
    let path = file.to_str().ok_or_else(|| RagError::io(file, "not a UTF-8 path"))?;
    vectors.save(path).map_err(|e| RagError::io(file, e))
}

fn source_term(f: &Fields, source: &str) -> Term {
    Term::from_field_text(f.source, source)
}

fn filter_query(f: &Fields, filter: &Filter) -> Option<BooleanQuery> {
    if filter.is_empty() {
        return None;
    }
    let parts: Vec<(Occur, Box<dyn Query>)> = filter
        .all
        .iter()
        .map(|(k, v)| {
            let q: Box<dyn Query> =
                Box::new(TermQuery::new(Term::from_field_text(f.tag, &format!("{k}={v}")), IndexRecordOption::Basic));
            (Occur::Must, q)
        })
        .collect();
    Some(BooleanQuery::new(parts))
}

impl Inner {
    fn apply(&self, update: Update) -> Result<(), RagError> {
        let _one = self.writing.lock().map_err(|_| RagError::Index("a previous update failed midway".into()))?;
        let mut manifest = self.manifest.read().map_err(|_| RagError::Index("manifest lock poisoned".into()))?.clone();
        let dims = manifest.info.dims;
        for s in &update.upsert {
            if let Some(bad) = s.chunks.iter().find(|c| c.vector.len() != dims) {
                return Err(RagError::Dimensions { want: dims, got: bad.vector.len() });
            }
        }
        let mut writer: tantivy::IndexWriter<TantivyDocument> = self
            .index
            .writer_with_num_threads(1, WRITER_BYTES)
            .map_err(|e| RagError::Index(format!("{e} (is another keel ingesting into this collection?)")))?;
        let f = self.fields;
        let mut removed_ids = Vec::new();
        let gone = update.remove.iter().chain(update.upsert.iter().map(|s| &s.source));
        for source in gone {
            if let Some(old) = manifest.sources.remove(source) {
                writer.delete_term(source_term(&f, source));
                removed_ids.extend(old.first_id..old.first_id + old.chunks);
            }
        }
        let mut added: Vec<(u64, &[f32])> = Vec::new();
        for s in &update.upsert {
            if s.chunks.is_empty() {
                continue;
            }
            let first_id = manifest.next_id;
            let mut tokens = 0;
            for (i, c) in s.chunks.iter().enumerate() {
                let id = first_id + i as u64;
                let mut doc = TantivyDocument::default();
                doc.add_u64(f.id, id);
                doc.add_text(f.source, &s.source);
                doc.add_text(f.text, &c.chunk.text);
                for h in &c.chunk.headings {
                    doc.add_text(f.heading, h);
                }
                doc.add_u64(f.start, c.chunk.start as u64);
                doc.add_u64(f.end, c.chunk.end as u64);
                doc.add_text(f.tag, format!("source={}", s.source));
                for (k, v) in &s.meta {
                    doc.add_text(f.tag, format!("{k}={v}"));
                }
                writer.add_document(doc).map_err(RagError::index)?;
                added.push((id, &c.vector));
                tokens += c.chunk.tokens as u64;
            }
            let chunks = s.chunks.len() as u64;
            manifest.next_id += chunks;
            manifest.sources.insert(s.source.clone(), SourceState { hash: s.hash.clone(), first_id, chunks, tokens });
        }
        manifest.generation += 1;
        let old_file = self.dir.join(format!("vectors-{}.usearch", manifest.generation - 1));
        let new_file = self.dir.join(manifest.vectors_file());
        {
            let vectors = self.vectors.write().map_err(|_| RagError::Index("vectors lock poisoned".into()))?;
            let result = (|| {
                for id in &removed_ids {
                    vectors.remove(*id).map_err(RagError::index)?;
                }
                let need = vectors.size() + added.len();
                if need > vectors.capacity() {
                    vectors.reserve(need.max(1024)).map_err(RagError::index)?;
                }
                for (id, v) in &added {
                    vectors.add(*id, v).map_err(RagError::index)?;
                }
                save_vectors(&vectors, &new_file)
            })();
            if let Err(e) = result {
                // The graph in memory went ahead of the last commit: put the committed one back.
                drop(vectors);
                self.reload_vectors();
                return Err(e);
            }
        }
        let payload = serde_json::to_string(&manifest).map_err(RagError::index)?;
        let committed = writer.prepare_commit().and_then(|mut p| {
            p.set_payload(&payload);
            p.commit()
        });
        if let Err(e) = committed {
            let _ = std::fs::remove_file(&new_file);
            self.reload_vectors();
            return Err(RagError::index(e));
        }
        if let Ok(mut m) = self.manifest.write() {
            *m = manifest;
        }
        self.reader.reload().map_err(RagError::index)?;
        let _ = std::fs::remove_file(&old_file);
        Ok(())
    }

    /// Puts the vectors of the last commit back in memory after a failed update.
    fn reload_vectors(&self) {
        let Ok(m) = manifest_of(&self.index) else { return };
        let file = self.dir.join(m.vectors_file());
        if let (Ok(mut v), Ok(fresh), Some(path)) = (self.vectors.write(), new_vectors(m.info.dims), file.to_str())
            && fresh.load(path).is_ok()
        {
            *v = fresh;
        }
    }

    fn keyword(&self, query: &str, k: usize, filter: &Filter) -> Result<Vec<(u64, f32)>, RagError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let f = self.fields;
        let mut analyzer = self.index.tokenizer_for_field(f.text).map_err(RagError::index)?;
        let mut terms = Vec::new();
        let mut seen = HashSet::new();
        let mut stream = analyzer.token_stream(query);
        while stream.advance() {
            let t = stream.token().text.clone();
            if seen.insert(t.clone()) {
                terms.push(t);
            }
        }
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for t in &terms {
            for field in [f.text, f.heading] {
                let q = TermQuery::new(Term::from_field_text(field, t), IndexRecordOption::WithFreqs);
                should.push((Occur::Should, Box::new(q)));
            }
        }
        let text_query: Box<dyn Query> = Box::new(BooleanQuery::new(should));
        let query: Box<dyn Query> = match filter_query(&f, filter) {
            Some(fq) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, text_query),
                (Occur::Must, Box::new(ConstScoreQuery::new(Box::new(fq), 0.0))),
            ])),
            None => text_query,
        };
        let searcher = self.reader.searcher();
        let top = searcher.search(&query, &TopDocs::with_limit(k).order_by_score()).map_err(RagError::index)?;
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let column = searcher.segment_reader(addr.segment_ord).fast_fields().u64("id").map_err(RagError::index)?;
            if let Some(id) = column.first(addr.doc_id) {
                out.push((id, score));
            }
        }
        Ok(out)
    }

    /// The ids of the chunks a filter lets through.
    fn allowed(&self, filter: &Filter) -> Result<Option<HashSet<u64>>, RagError> {
        let Some(q) = filter_query(&self.fields, filter) else { return Ok(None) };
        let searcher = self.reader.searcher();
        let docs = searcher.search(&q, &DocSetCollector).map_err(RagError::index)?;
        let mut ids = HashSet::with_capacity(docs.len());
        let mut columns = BTreeMap::new();
        for addr in docs {
            if let std::collections::btree_map::Entry::Vacant(e) = columns.entry(addr.segment_ord) {
                e.insert(searcher.segment_reader(addr.segment_ord).fast_fields().u64("id").map_err(RagError::index)?);
            }
            if let Some(id) = columns.get(&addr.segment_ord).and_then(|c| c.first(addr.doc_id)) {
                ids.insert(id);
            }
        }
        Ok(Some(ids))
    }

    fn vector(&self, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<(u64, f32)>, RagError> {
        let dims = self.manifest.read().map(|m| m.info.dims).unwrap_or(0);
        if query.len() != dims {
            return Err(RagError::Dimensions { want: dims, got: query.len() });
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let allowed = self.allowed(filter)?;
        let vectors = self.vectors.read().map_err(|_| RagError::Index("vectors lock poisoned".into()))?;
        let found = match &allowed {
            None => vectors.search(query, k),
            Some(ids) if ids.is_empty() => return Ok(Vec::new()),
            Some(ids) => vectors.filtered_search(query, k, |key: u64| ids.contains(&key)),
        }
        .map_err(RagError::index)?;
        Ok(found.keys.into_iter().zip(found.distances).map(|(id, d)| (id, 1.0 - d)).collect())
    }

    fn chunks(&self, ids: &[u64]) -> Result<Vec<StoredChunk>, RagError> {
        let f = self.fields;
        let searcher = self.reader.searcher();
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let q = TermQuery::new(Term::from_field_u64(f.id, id), IndexRecordOption::Basic);
            let top = searcher.search(&q, &TopDocs::with_limit(1).order_by_score()).map_err(RagError::index)?;
            let Some((_, addr)) = top.into_iter().next() else { continue };
            let doc: TantivyDocument = searcher.doc(addr).map_err(RagError::index)?;
            let text_of = |field| doc.get_first(field).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            let u64_of = |field| doc.get_first(field).and_then(|v| v.as_u64()).unwrap_or_default();
            let mut meta = BTreeMap::new();
            for v in doc.get_all(f.tag) {
                if let Some((k, v)) = v.as_str().and_then(|t| t.split_once('='))
                    && k != "source"
                {
                    meta.insert(k.to_string(), v.to_string());
                }
            }
            out.push(StoredChunk {
                id,
                source: text_of(f.source),
                text: text_of(f.text),
                headings: doc.get_all(f.heading).filter_map(|v| v.as_str().map(str::to_string)).collect(),
                start: u64_of(f.start),
                end: u64_of(f.end),
                meta,
            });
        }
        Ok(out)
    }
}

/// Runs index work off the async runtime.
async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    job: impl FnOnce(&Inner) -> Result<T, RagError> + Send + 'static,
) -> Result<T, RagError> {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || job(&inner)).await.map_err(|e| RagError::Index(format!("index task: {e}")))?
}

impl Index for EmbeddedIndex {
    fn info(&self) -> CollectionInfo {
        self.manifest().map(|m| m.info).unwrap_or(CollectionInfo { name: String::new(), model: String::new(), dims: 0 })
    }

    fn sources(&self) -> BoxFuture<'_, Result<BTreeMap<String, SourceState>, RagError>> {
        let m = self.manifest().ok_or_else(|| RagError::Index("manifest lock poisoned".into()));
        async move { Ok(m?.sources) }.boxed()
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats, RagError>> {
        let s = self.manifest().map(|m| m.stats());
        async move { s.ok_or_else(|| RagError::Index("manifest lock poisoned".into())) }.boxed()
    }

    fn stale(&self) -> BoxFuture<'_, bool> {
        let this = self.clone();
        async move { tokio::task::spawn_blocking(move || this.is_stale()).await.unwrap_or(true) }.boxed()
    }

    fn apply(&self, update: Update) -> BoxFuture<'_, Result<(), RagError>> {
        blocking(&self.inner, move |i| i.apply(update)).boxed()
    }

    fn keyword(&self, query: String, k: usize, filter: Filter) -> BoxFuture<'_, Result<Vec<(u64, f32)>, RagError>> {
        blocking(&self.inner, move |i| i.keyword(&query, k, &filter)).boxed()
    }

    fn vector(&self, query: Vec<f32>, k: usize, filter: Filter) -> BoxFuture<'_, Result<Vec<(u64, f32)>, RagError>> {
        blocking(&self.inner, move |i| i.vector(&query, k, &filter)).boxed()
    }

    fn chunks(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<Vec<StoredChunk>, RagError>> {
        blocking(&self.inner, move |i| i.chunks(&ids)).boxed()
    }
}

/// Collections as directories under one root.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    root: PathBuf,
}

impl EmbeddedStore {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
}

async fn off_runtime<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, RagError> + Send + 'static,
) -> Result<T, RagError> {
    tokio::task::spawn_blocking(job).await.map_err(|e| RagError::Index(format!("index task: {e}")))?
}

impl Store for EmbeddedStore {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn Index>, RagError>> {
        let (root, name) = (self.root.clone(), name.to_string());
        off_runtime(move || EmbeddedIndex::open(&root, &name).map(|i| Arc::new(i) as Arc<dyn Index>)).boxed()
    }

    fn open_or_create(&self, info: CollectionInfo) -> BoxFuture<'_, Result<Arc<dyn Index>, RagError>> {
        let root = self.root.clone();
        off_runtime(move || {
            let index = EmbeddedIndex::open_or_create(&root, info.clone())?;
            crate::index::same_model(Arc::new(index), &info)
        })
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(CollectionInfo, Stats)>, RagError>> {
        let root = self.root.clone();
        off_runtime(move || {
            let mut out = Vec::new();
            for info in list(&root)? {
                let stats = match EmbeddedIndex::open(&root, &info.name) {
                    Ok(i) => i.manifest().map(|m| m.stats()),
                    Err(_) => None,
                };
                out.push((info, stats.unwrap_or_default()));
            }
            Ok(out)
        })
        .boxed()
    }

    fn delete(&self, name: &str) -> BoxFuture<'_, Result<bool, RagError>> {
        let (root, name) = (self.root.clone(), name.to_string());
        off_runtime(move || delete(&root, &name)).boxed()
    }

    fn describe(&self) -> String {
        format!("embedded index under {}", self.root.display())
    }
}
