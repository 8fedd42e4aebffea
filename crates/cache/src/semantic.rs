//! The semantic cache's index: earlier requests by the meaning of their user messages, within their scope.
//!
//! Entries are grouped by scope (everything but the user's text, hashed: see [`crate::key::semantic_scope`]),
//! so a lookup only ever compares requests that differ in nothing else. A scope with few entries is searched
//! exhaustively (exact, and cheaper than a graph at that size); once it grows past [`FLAT_MAX`] entries it
//! moves to an HNSW graph (usearch, f16 vectors, cosine), so a lookup stays fast at millions of entries.
//! Candidates from the last user message's vector are then checked turn by turn: the request's similarity is
//! the lowest cosine over its user messages, and every turn must pass the guards.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use crate::answer::CachedAnswer;
use crate::guards::{self, Features};
use crate::{CacheError, Key};

/// Entries per scope searched exhaustively before the scope gets an HNSW graph.
pub const FLAT_MAX: usize = 512;
/// Candidates taken from the graph and checked turn by turn.
const CANDIDATES: usize = 8;

/// The lowest similarity a clause of one prompt may have to the other prompt (or its best-matching clause):
/// the verification step after the guards. Measured in `docs/cache.md`.
pub const CLAUSE_MIN: f32 = 0.70;

/// One user message of an entry or of a query.
#[derive(Debug, Clone)]
pub struct Turn {
    pub text: String,
    pub vector: Vec<f32>,
    /// The embeddings of its clauses ([`guards::clauses`]); empty for a single clause.
    pub clauses: Vec<Vec<f32>>,
    pub features: Features,
}

impl Turn {
    /// A turn from its text and its embedding (normalised here, so that a dot product is the cosine).
    pub fn new(text: String, vector: Vec<f32>) -> Self {
        Self::with_clauses(text, vector, Vec::new())
    }

    pub fn with_clauses(text: String, vector: Vec<f32>, clauses: Vec<Vec<f32>>) -> Self {
        let features = guards::features(&text);
        Self { text, vector: normalised(vector), clauses: clauses.into_iter().map(normalised).collect(), features }
    }
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// What to embed for a request's user turns, in order: each turn's text followed by its clauses.
pub fn embedding_inputs(turns: &[String]) -> Vec<String> {
    turns.iter().flat_map(|t| std::iter::once(t.clone()).chain(guards::clauses(t))).collect()
}

/// The turns, from the vectors of [`embedding_inputs`] in the same order; `None` if the counts disagree.
pub fn turns_from(texts: Vec<String>, vectors: Vec<Vec<f32>>) -> Option<Vec<Turn>> {
    let mut vectors = vectors.into_iter();
    let mut turns = Vec::with_capacity(texts.len());
    for text in texts {
        let n = guards::clauses(&text).len();
        let vector = vectors.next()?;
        let clauses: Vec<Vec<f32>> = vectors.by_ref().take(n).collect();
        if clauses.len() != n {
            return None;
        }
        turns.push(Turn::with_clauses(text, vector, clauses));
    }
    vectors.next().is_none().then_some(turns)
}

/// The clause check of two turns: every clause of either must be similar to the other turn as a whole or to one
/// of its clauses. 1 when neither has several clauses.
pub fn clause_score(a: &Turn, b: &Turn) -> f32 {
    let side = |x: &Turn, y: &Turn| {
        x.clauses
            .iter()
            .map(|c| y.clauses.iter().map(|d| dot(c, d)).fold(dot(c, &y.vector), f32::max))
            .fold(1.0f32, f32::min)
    };
    side(a, b).min(side(b, a))
}

#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    pub scope: Key,
    pub turns: Vec<Turn>,
    pub expires_ms: i64,
    pub answer: Arc<CachedAnswer>,
}

/// The result of a lookup.
#[derive(Debug, Default)]
pub struct Lookup {
    /// The entry served and the request's similarity to it.
    pub hit: Option<(Arc<Entry>, f32)>,
    /// The highest similarity seen among candidates (hit or not), for the similarity histogram.
    pub best: Option<f32>,
    /// The guard that turned down the most similar candidate above the threshold, if one did.
    pub refused_by: Option<&'static str>,
}

/// Every semantic entry in memory, bounded in number; the oldest go first.
pub struct SemanticIndex {
    dims: usize,
    max_entries: usize,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Arc<Entry>>,
    scopes: HashMap<Key, Bucket>,
    order: VecDeque<u64>,
}

enum Bucket {
    /// Searched exhaustively; `building` while its graph is being built (outside the index's lock).
    Flat {
        ids: Vec<u64>,
        building: bool,
    },
    Graph(Arc<Graph>),
}

/// A scope that outgrew the flat search: the vectors to build its graph from, taken under the lock; the
/// graph is built without it ([`GraphBuild::build`]) and swapped in by [`SemanticIndex::install`], so that
/// lookups never wait for a graph to be built.
pub struct GraphBuild {
    scope: Key,
    dims: usize,
    items: Vec<(u64, Vec<f32>)>,
}

/// A graph built from a [`GraphBuild`], ready to be installed.
pub struct BuiltGraph {
    scope: Key,
    ids: std::collections::HashSet<u64>,
    index: usearch::Index,
}

impl GraphBuild {
    /// Builds the scope's HNSW graph: the costly part, run by the caller with no lock held.
    pub fn build(self) -> Result<BuiltGraph, CacheError> {
        let index = new_graph(self.dims, self.items.len())?;
        for (id, vector) in &self.items {
            index.add(*id, vector).map_err(backend)?;
        }
        Ok(BuiltGraph { scope: self.scope, ids: self.items.iter().map(|(id, _)| *id).collect(), index })
    }
}

/// An HNSW graph. usearch adds and searches concurrently once capacity is reserved, so both take the read
/// lock; only growing the capacity takes the write lock. Adding to the graph (the costly part of an insert)
/// happens outside the index-wide lock, so lookups never wait for it.
struct Graph(RwLock<usearch::Index>);

impl Graph {
    fn add(&self, id: u64, vector: &[f32]) -> Result<(), CacheError> {
        let full = self.0.read().map_or(true, |i| i.size() + 1 > i.capacity());
        if full {
            let index = self.0.write().map_err(|_| CacheError::Backend("semantic graph poisoned".into()))?;
            if index.size() + 1 > index.capacity() {
                index.reserve((index.capacity() * 2).max(1024)).map_err(backend)?;
            }
        }
        let index = self.0.read().map_err(|_| CacheError::Backend("semantic graph poisoned".into()))?;
        index.add(id, vector).map_err(backend)
    }
}

impl SemanticIndex {
    pub fn new(dims: usize, max_entries: usize) -> Self {
        Self { dims, max_entries: max_entries.max(1), inner: RwLock::new(Inner::default()) }
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn len(&self) -> usize {
        self.inner.read().map_or(0, |i| i.entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the HNSW graphs (vectors and links), for the benchmark.
    pub fn graph_memory(&self) -> usize {
        self.inner.read().map_or(0, |i| {
            i.scopes
                .values()
                .map(|b| match b {
                    Bucket::Graph(g) => g.0.read().map_or(0, |i| i.memory_usage()),
                    Bucket::Flat { .. } => 0,
                })
                .sum()
        })
    }

    /// Adds an entry; evicts the oldest when full. Returns the ids evicted. When the entry's scope outgrows
    /// the flat search, its graph is built here, after the index's lock is released.
    pub fn insert(&self, entry: Entry) -> Result<Vec<u64>, CacheError> {
        let (evicted, build) = self.insert_deferred(entry)?;
        if let Some(build) = build {
            self.install(build.build()?)?;
        }
        Ok(evicted)
    }

    /// Adds an entry as [`SemanticIndex::insert`] does, but hands back the graph to build when the scope
    /// outgrew the flat search: the caller builds it where blocking is fine and [`SemanticIndex::install`]s it;
    /// until then the scope is searched exhaustively.
    pub fn insert_deferred(&self, entry: Entry) -> Result<(Vec<u64>, Option<GraphBuild>), CacheError> {
        if entry.turns.is_empty() || entry.turns.iter().any(|t| t.vector.len() != self.dims) {
            return Err(CacheError::Backend(format!("semantic entry needs {}-dimensional vectors", self.dims)));
        }
        let id = entry.id;
        let scope = entry.scope;
        let last = entry.turns.last().map(|t| t.vector.clone()).unwrap_or_default();
        let (graph, build, evicted) = {
            let mut inner = self.inner.write().map_err(|_| CacheError::Backend("semantic index poisoned".into()))?;
            inner.entries.insert(id, Arc::new(entry));
            inner.order.push_back(id);
            let bucket = inner.scopes.entry(scope).or_insert_with(|| Bucket::Flat { ids: Vec::new(), building: false });
            let (graph, mut build) = match bucket {
                Bucket::Flat { ids, building } => {
                    ids.push(id);
                    if ids.len() > FLAT_MAX && !*building {
                        *building = true;
                        (None, Some(ids.clone()))
                    } else {
                        (None, None)
                    }
                }
                Bucket::Graph(g) => (Some(g.clone()), None),
            };
            let items = build.take().map(|ids| {
                ids.iter()
                    .filter_map(|id| {
                        inner.entries.get(id).and_then(|e| e.turns.last()).map(|t| (*id, t.vector.clone()))
                    })
                    .collect::<Vec<_>>()
            });
            let mut evicted = Vec::new();
            while inner.entries.len() > self.max_entries {
                let Some(old) = inner.order.pop_front() else { break };
                if remove(&mut inner, old) {
                    evicted.push(old);
                }
            }
            let build = items.map(|items| GraphBuild { scope, dims: self.dims, items });
            (graph, build, evicted)
        };
        if let Some(g) = graph {
            g.add(id, &last)?;
        }
        Ok((evicted, build))
    }

    /// Swaps a built graph in for its scope's flat list, adding what was inserted and removing what was evicted
    /// while it was being built. A scope that emptied meanwhile drops it.
    pub fn install(&self, built: BuiltGraph) -> Result<(), CacheError> {
        let mut inner = self.inner.write().map_err(|_| CacheError::Backend("semantic index poisoned".into()))?;
        let Some(Bucket::Flat { ids, building: true }) = inner.scopes.get(&built.scope) else { return Ok(()) };
        let now: std::collections::HashSet<u64> = ids.iter().copied().collect();
        let index = built.index;
        for gone in built.ids.difference(&now) {
            let _ = index.remove(*gone);
        }
        for id in now.difference(&built.ids) {
            if let Some(last) = inner.entries.get(id).and_then(|e| e.turns.last()) {
                if index.size() + 1 > index.capacity() {
                    index.reserve((index.capacity() * 2).max(1024)).map_err(backend)?;
                }
                index.add(*id, &last.vector).map_err(backend)?;
            }
        }
        inner.scopes.insert(built.scope, Bucket::Graph(Arc::new(Graph(RwLock::new(index)))));
        Ok(())
    }

    /// Removes expired entries; returns their ids.
    pub fn purge(&self, now_ms: i64) -> Vec<u64> {
        let Ok(mut inner) = self.inner.write() else { return Vec::new() };
        let expired: Vec<u64> = inner.entries.values().filter(|e| e.expires_ms <= now_ms).map(|e| e.id).collect();
        for id in &expired {
            remove(&mut inner, *id);
        }
        let Inner { order, entries, .. } = &mut *inner;
        order.retain(|id| entries.contains_key(id));
        expired
    }

    /// The nearest earlier request in `scope` whose similarity is at least `threshold` and whose every turn
    /// passes the guards. `query` holds the request's user turns, in order.
    pub fn lookup(&self, scope: &Key, query: &[Turn], threshold: f32, now_ms: i64) -> Lookup {
        let mut out = Lookup::default();
        let Some(last) = query.last() else { return out };
        let Ok(inner) = self.inner.read() else { return out };
        // A small scope's ids are borrowed, not copied, per lookup.
        let candidates: std::borrow::Cow<'_, [u64]> = match inner.scopes.get(scope) {
            None => return out,
            Some(Bucket::Flat { ids, .. }) => std::borrow::Cow::Borrowed(ids.as_slice()),
            Some(Bucket::Graph(g)) => match g
                .0
                .read()
                .map_err(|_| "poisoned".to_string())
                .and_then(|i| i.search(&last.vector, CANDIDATES).map_err(|e| e.to_string()))
            {
                Ok(m) => std::borrow::Cow::Owned(m.keys),
                Err(e) => {
                    tracing::warn!(error = %e, "semantic index search failed");
                    return out;
                }
            },
        };
        let mut scored: Vec<(f32, &Arc<Entry>)> = candidates
            .iter()
            .filter_map(|id| inner.entries.get(id))
            .filter(|e| e.expires_ms > now_ms && e.turns.len() == query.len())
            .map(|e| (similarity(query, &e.turns), e))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        out.best = scored.first().map(|s| s.0);
        for (sim, e) in scored {
            if sim < threshold {
                break;
            }
            let refused = query.iter().zip(&e.turns).find_map(|(q, c)| {
                guards::check(&q.features, &c.features)
                    .err()
                    .or_else(|| (clause_score(q, c) < CLAUSE_MIN).then_some("clauses"))
            });
            match refused {
                None => {
                    out.hit = Some((e.clone(), sim));
                    return out;
                }
                Some(guard) => {
                    out.refused_by.get_or_insert(guard);
                }
            }
        }
        out
    }
}

/// The request's similarity to an entry: the lowest cosine over their user turns.
pub fn similarity(query: &[Turn], entry: &[Turn]) -> f32 {
    query.iter().zip(entry).map(|(q, c)| dot(&q.vector, &c.vector)).fold(f32::INFINITY, f32::min)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn remove(inner: &mut Inner, id: u64) -> bool {
    let Some(e) = inner.entries.remove(&id) else { return false };
    let mut empty = false;
    if let Some(bucket) = inner.scopes.get_mut(&e.scope) {
        match bucket {
            Bucket::Flat { ids, .. } => {
                ids.retain(|x| *x != id);
                empty = ids.is_empty();
            }
            Bucket::Graph(g) => {
                if let Ok(index) = g.0.read() {
                    let _ = index.remove(id);
                    empty = index.size() == 0;
                }
            }
        }
    }
    if empty {
        inner.scopes.remove(&e.scope);
    }
    true
}

fn new_graph(dims: usize, n: usize) -> Result<usearch::Index, CacheError> {
    let options = usearch::IndexOptions {
        dimensions: dims,
        metric: usearch::MetricKind::Cos,
        quantization: usearch::ScalarKind::F16,
        ..Default::default()
    };
    let index = usearch::Index::new(&options).map_err(backend)?;
    index.reserve((n * 2).max(1024)).map_err(backend)?;
    Ok(index)
}

fn backend(e: impl std::fmt::Display) -> CacheError {
    CacheError::Backend(format!("semantic index: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const DIMS: usize = 8;

    fn answer(text: &str) -> Arc<CachedAnswer> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "response": {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]},
                "provider": "p", "model": "m", "created_ms": 0
            }))
            .unwrap(),
        )
    }

    /// A unit vector mostly along axis `axis`, turned by `angle` towards the next axis.
    fn vector(axis: usize, angle: f32) -> Vec<f32> {
        let mut v = vec![0.0; DIMS];
        v[axis % DIMS] = angle.cos();
        v[(axis + 1) % DIMS] = angle.sin();
        v
    }

    fn entry(id: u64, scope: Key, turns: &[(&str, Vec<f32>)], expires_ms: i64) -> Entry {
        Entry {
            id,
            scope,
            turns: turns.iter().map(|(t, v)| Turn::new(t.to_string(), v.clone())).collect(),
            expires_ms,
            answer: answer(&format!("answer {id}")),
        }
    }

    fn query(turns: &[(&str, Vec<f32>)]) -> Vec<Turn> {
        turns.iter().map(|(t, v)| Turn::new(t.to_string(), v.clone())).collect()
    }

    #[test]
    fn finds_the_nearest_entry_of_its_scope_only() {
        let index = SemanticIndex::new(DIMS, 100);
        let (s1, s2) = (Key([1; 32]), Key([2; 32]));
        index.insert(entry(1, s1, &[("how do I reset my password", vector(0, 0.0))], i64::MAX)).unwrap();
        index.insert(entry(2, s1, &[("what is the weather like", vector(3, 0.0))], i64::MAX)).unwrap();
        let q = query(&[("how can I reset my password", vector(0, 0.1))]);
        let found = index.lookup(&s1, &q, 0.95, 0);
        let (e, sim) = found.hit.unwrap();
        assert_eq!(e.id, 1);
        assert!((sim - 0.1f32.cos()).abs() < 1e-5);
        assert!(index.lookup(&s2, &q, 0.95, 0).hit.is_none(), "another scope never answers");
        let far = query(&[("how can I reset my password", vector(0, 0.5))]);
        let miss = index.lookup(&s1, &far, 0.95, 0);
        assert!(miss.hit.is_none());
        assert!((miss.best.unwrap() - 0.5f32.cos()).abs() < 1e-5, "the best similarity is reported on a miss");
    }

    #[test]
    fn guards_refuse_similar_requests_with_other_facts() {
        let index = SemanticIndex::new(DIMS, 100);
        let s = Key([1; 32]);
        index.insert(entry(1, s, &[("Refund order 1234", vector(0, 0.0))], i64::MAX)).unwrap();
        let found = index.lookup(&s, &query(&[("Refund order 1235", vector(0, 0.0))]), 0.9, 0);
        assert!(found.hit.is_none());
        assert_eq!(found.refused_by, Some("numbers"));
    }

    #[test]
    fn every_turn_of_a_conversation_must_match() {
        let index = SemanticIndex::new(DIMS, 100);
        let s = Key([1; 32]);
        index
            .insert(entry(
                1,
                s,
                &[("tell me about cats", vector(0, 0.0)), ("and their food", vector(2, 0.0))],
                i64::MAX,
            ))
            .unwrap();
        let same = query(&[("tell me about cats", vector(0, 0.05)), ("and their food", vector(2, 0.0))]);
        assert!(index.lookup(&s, &same, 0.95, 0).hit.is_some());
        let other_first = query(&[("tell me about dogs", vector(5, 0.0)), ("and their food", vector(2, 0.0))]);
        assert!(index.lookup(&s, &other_first, 0.95, 0).hit.is_none(), "the last message alone is not enough");
        let shorter = query(&[("and their food", vector(2, 0.0))]);
        assert!(index.lookup(&s, &shorter, 0.95, 0).hit.is_none());
    }

    #[test]
    fn expired_entries_are_not_served_and_are_purged() {
        let index = SemanticIndex::new(DIMS, 100);
        let s = Key([1; 32]);
        index.insert(entry(1, s, &[("a question", vector(0, 0.0))], 1000)).unwrap();
        let q = query(&[("a question", vector(0, 0.0))]);
        assert!(index.lookup(&s, &q, 0.9, 999).hit.is_some());
        assert!(index.lookup(&s, &q, 0.9, 1000).hit.is_none());
        assert_eq!(index.purge(1000), vec![1]);
        assert!(index.is_empty());
    }

    #[test]
    fn the_oldest_entries_go_first_when_full() {
        let index = SemanticIndex::new(DIMS, 2);
        let s = Key([1; 32]);
        for id in 1..=3 {
            let evicted = index.insert(entry(id, s, &[("q", vector(id as usize, 0.0))], i64::MAX)).unwrap();
            assert_eq!(evicted, if id == 3 { vec![1] } else { vec![] });
        }
        assert_eq!(index.len(), 2);
        assert!(index.lookup(&s, &query(&[("q", vector(1, 0.0))]), 0.99, 0).hit.is_none());
        assert!(index.lookup(&s, &query(&[("q", vector(3, 0.0))]), 0.99, 0).hit.is_some());
    }

    #[test]
    fn a_large_scope_moves_to_the_graph_and_still_finds_its_entries() {
        let dims = 32;
        let index = SemanticIndex::new(dims, 10_000);
        let s = Key([1; 32]);
        let mut seed = 42u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5
        };
        let vectors: Vec<Vec<f32>> = (0..FLAT_MAX * 3).map(|_| (0..dims).map(|_| rnd()).collect()).collect();
        for (i, v) in vectors.iter().enumerate() {
            let e = Entry {
                id: i as u64 + 1,
                scope: s,
                turns: vec![Turn::new("q".into(), v.clone())],
                expires_ms: i64::MAX,
                answer: answer("a"),
            };
            index.insert(e).unwrap();
        }
        assert!(index.graph_memory() > 0, "the scope is searched through an HNSW graph");
        let mut found = 0;
        for (i, v) in vectors.iter().enumerate().step_by(7) {
            if let Some((e, sim)) = index.lookup(&s, &[Turn::new("q".into(), v.clone())], 0.99, 0).hit {
                assert_eq!(e.id, i as u64 + 1);
                assert!(sim > 0.999);
                found += 1;
            }
        }
        let asked = vectors.len().div_ceil(7);
        assert!(found * 100 >= asked * 98, "recall {found}/{asked}");
    }

    #[test]
    fn lookups_go_on_while_a_scope_graph_is_built_and_nothing_added_meanwhile_is_lost() {
        let dims = 16;
        let index = SemanticIndex::new(dims, 10_000);
        let s = Key([7; 32]);
        let v =
            |i: usize| (0..dims).map(|d| if d == i % dims { 1.0 } else { (i * 31 + d * 7) as f32 % 0.37 }).collect();
        let e = |i: usize| Entry {
            id: i as u64 + 1,
            scope: s,
            turns: vec![Turn::new(format!("q{i}"), v(i))],
            expires_ms: i64::MAX,
            answer: answer("a"),
        };
        let mut pending = None;
        for i in 0..=FLAT_MAX {
            let (_, build) = index.insert_deferred(e(i)).unwrap();
            if build.is_some() {
                pending = build;
            }
        }
        let build = pending.expect("the scope outgrew the flat search");
        // The graph is not built yet: lookups are answered from the flat list, and inserts go on.
        assert_eq!(index.graph_memory(), 0);
        let probe = [Turn::new("q3".into(), v(3))];
        assert_eq!(index.lookup(&s, &probe, 0.99, 0).hit.map(|(e, _)| e.id), Some(4));
        let (_, again) = index.insert_deferred(e(FLAT_MAX + 1)).unwrap();
        assert!(again.is_none(), "one build per scope at a time");
        // Built without any lock held, then swapped in with the entry added meanwhile.
        index.install(build.build().unwrap()).unwrap();
        assert!(index.graph_memory() > 0);
        let late = [Turn::new(format!("q{}", FLAT_MAX + 1), v(FLAT_MAX + 1))];
        assert_eq!(index.lookup(&s, &late, 0.99, 0).hit.map(|(e, _)| e.id), Some(FLAT_MAX as u64 + 2));
    }
}
