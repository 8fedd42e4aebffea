//! The collections pages: every collection with its size, one collection's documents with a search box that
//! shows where each retriever (BM25, vector) ranked every result next to the fused rank, and one document's
//! chunks. Read-only: collections are written by `keel ingest` and the vector stores API.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use keel_rag::fusion::Fusion;
use keel_rag::{Collections, Filter, Hit, Mode, RagError, SourceState};

use super::{Session, Tab, count, encode, given, message, page, query_of, session};
use crate::AppState;

/// Documents (and a document's chunks) shown per page.
const PER_PAGE: usize = 50;
/// Results a search may ask for (as `POST /v1/search`).
const MAX_K: usize = 100;
/// The longest query the search box takes, in characters.
const MAX_QUERY_CHARS: usize = 2_000;
/// Characters of a chunk shown in a result (the document page shows chunks whole).
const SNIPPET_CHARS: usize = 400;

/// The signed-in session and the collections, or the response that says why not.
fn signed_in_with_collections<'a>(
    app: &'a AppState,
    headers: &HeaderMap,
    here: &str,
) -> Result<(Session, &'a Collections), Box<Response>> {
    let s = session(app, headers, here)?;
    let c = app.inner.collections.as_deref().ok_or_else(|| {
        Box::new(message(
            StatusCode::NOT_FOUND,
            "Retrieval is off",
            "No embeddings model for collections is configured: set [rag] model (the local all-minilm-l6-v2, or an \
             embeddings alias) and restart keel.",
        ))
    })?;
    Ok((s, c))
}

/// A retrieval error as a page, with the status the API would answer.
fn rag_failed(e: RagError) -> Response {
    let (status, title) = rag_failed_status(&e);
    message(status, title, &e.to_string())
}

/// The status the API answers a retrieval error with, and a title for it.
fn rag_failed_status(e: &RagError) -> (StatusCode, &'static str) {
    match e {
        RagError::NoCollection(_) => (StatusCode::NOT_FOUND, "Not found"),
        RagError::BadName(_) | RagError::BadFilter(_) | RagError::Invalid(_) => (StatusCode::BAD_REQUEST, "Invalid"),
        RagError::ModelMismatch { .. } => (StatusCode::CONFLICT, "Embeddings model mismatch"),
        RagError::Embed(_) => (StatusCode::BAD_GATEWAY, "Embeddings failed"),
        RagError::Dimensions { .. } | RagError::Index(_) | RagError::Io { .. } => {
            tracing::error!(error = %e, "dashboard: reading a collection failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "Collection unavailable")
        }
    }
}

/// A page number from the query string: none is the first; anything but a number is the form's mistake.
fn page_number(v: &Option<String>) -> Result<usize, String> {
    match given(v) {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| format!("Page {v:?} is not a page number.")),
    }
}

/// Previous and next links: `here` is a path and query (the other fields kept), `anchor` where the list is.
fn pager(here: &str, anchor: &str, page_no: usize, pages: usize) -> Markup {
    let at = |n: usize| format!("{here}&page={n}{anchor}");
    html! {
        @if pages > 1 {
            nav.pager aria-label="Pages" {
                @if page_no > 0 { a href=(at(page_no - 1)) rel="prev" { "Previous" } }
                span { "Page " (page_no + 1) " of " (pages) }
                @if page_no + 1 < pages { a href=(at(page_no + 1)) rel="next" { "Next" } }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------ the list

pub(super) async fn list(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let (s, collections) = match signed_in_with_collections(&app, &headers, "/ui/collections") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let all = match collections.list().await {
        Ok(all) => all,
        Err(e) => return rag_failed(e),
    };
    let main = html! {
        h1 { "Collections" }
        p { "Embedded with " code { (collections.model()) } ", on " (collections.store().describe()) "." }
        @if all.is_empty() {
            p { "No collection yet: " code { "keel ingest NAME PATH…" } " or the vector stores API creates one." }
        } @else {
            table {
                caption { "Collections" }
                thead { tr { th scope="col" { "Collection" } th scope="col" { "Documents" } th scope="col" { "Chunks" } th scope="col" { "Tokens" } th scope="col" { "Model" } th scope="col" { "Dimensions" } } }
                tbody {
                    @for (info, stats) in &all {
                        tr data-collection=(info.name) {
                            td { a href=(format!("/ui/collections/{}", encode(&info.name))) { (info.name) } }
                            td.num data-col="documents" { (count(stats.sources)) }
                            td.num data-col="chunks" { (count(stats.chunks)) }
                            td.num { (count(stats.tokens)) }
                            td { code { (info.model) } }
                            td.num { (info.dims) }
                        }
                    }
                }
            }
        }
    };
    page("Collections", &s, Tab::Collections, main)
}

// ------------------------------------------------------------------------------------------ one collection

#[derive(Deserialize, Default)]
pub(super) struct CollectionQuery {
    /// The search box.
    q: Option<String>,
    mode: Option<String>,
    k: Option<String>,
    /// `key=value` conditions, comma-separated.
    filter: Option<String>,
    /// Documents whose source contains this.
    source: Option<String>,
    page: Option<String>,
}

/// A checked search: what the form asked, or what is wrong with it.
struct Search {
    query: String,
    mode: Mode,
    k: usize,
    filter: Filter,
}

fn parse_search(q: &CollectionQuery) -> Result<Option<Search>, String> {
    let Some(query) = given(&q.q) else { return Ok(None) };
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(format!("The query is longer than {MAX_QUERY_CHARS} characters."));
    }
    let mode = match given(&q.mode) {
        None => Mode::Hybrid,
        Some(m) => Mode::parse(m).ok_or_else(|| format!("Mode {m:?} is not one of hybrid, bm25, vector."))?,
    };
    let k = match given(&q.k) {
        None => 10,
        Some(k) => match k.parse::<usize>() {
            Ok(k) if (1..=MAX_K).contains(&k) => k,
            _ => return Err(format!("Results must be a number from 1 to {MAX_K}.")),
        },
    };
    let conditions: Vec<&str> =
        q.filter.as_deref().unwrap_or("").split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
    let filter = Filter::parse(&conditions).map_err(|e| format!("Filter: {e}."))?;
    Ok(Some(Search { query: query.to_string(), mode, k, filter }))
}

pub(super) async fn collection(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<CollectionQuery>,
) -> Response {
    let here = format!("/ui/collections/{}", encode(&name));
    let (s, collections) = match signed_in_with_collections(&app, &headers, &here) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let index = match collections.index(&name).await {
        Ok(i) => i,
        Err(e) => return rag_failed(e),
    };
    let info = index.info();
    let (stats, sources) = match (index.stats().await, index.sources().await) {
        (Ok(stats), Ok(sources)) => (stats, sources),
        (Err(e), _) | (_, Err(e)) => return rag_failed(e),
    };

    // The search, when one was asked. Its failures are shown on the collection's page, with the status the API
    // would answer (400 for the form's mistakes, 502 when the embeddings model failed).
    let mut status = StatusCode::OK;
    let mut problems = Vec::new();
    let search = match parse_search(&q) {
        Ok(s) => s,
        Err(p) => {
            status = StatusCode::BAD_REQUEST;
            problems.push(p);
            None
        }
    };
    let hits = match &search {
        Some(sr) => match collections.search(&name, &sr.query, sr.mode, sr.k, &sr.filter).await {
            Ok(hits) => Some(hits),
            Err(e) => {
                status = rag_failed_status(&e).0;
                problems.push(e.to_string());
                None
            }
        },
        None => None,
    };
    let page_no = match page_number(&q.page) {
        Ok(n) => n,
        Err(p) => {
            status = StatusCode::BAD_REQUEST;
            problems.push(p);
            0
        }
    };

    // Documents: filtered by source, a page at a time.
    let wanted = given(&q.source).unwrap_or("");
    let docs: Vec<(&String, &SourceState)> = sources.iter().filter(|(src, _)| src.contains(wanted)).collect();
    let pages = docs.len().div_ceil(PER_PAGE).max(1);
    let page_no = page_no.min(pages - 1);
    let mode = search.as_ref().map_or(Mode::Hybrid, |s| s.mode);
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    // Each form keeps the other's fields, and the pager both.
    let search_fields =
        [("q", q.q.as_deref()), ("mode", q.mode.as_deref()), ("k", q.k.as_deref()), ("filter", q.filter.as_deref())];
    let pager_here = format!("{here}?{}", query_of(&[search_fields.as_slice(), &[("source", Some(wanted))]].concat()));

    let main = html! {
        h1 { "Collection " code { (info.name) } }
        dl.stats {
            (super::stat("Documents", "documents", &count(stats.sources)))
            (super::stat("Chunks", "chunks", &count(stats.chunks)))
            (super::stat("Tokens", "tokens", &count(stats.tokens)))
            (super::stat("Dimensions", "dimensions", &info.dims.to_string()))
        }
        p { "Embedded with " code { (info.model) } "; hybrid searches fuse the two rankings by " (fusion_text(collections.fusion())) "." }
        h2 #search { "Search" }
        @for p in &problems { p.error role="alert" { (p) } }
        form.filters role="search" method="get" action=(format!("{here}#search")) {
            div { label for="s-q" { "Query" } input #s-q name="q" type="search" value=(value(&q.q)) size="40" maxlength=(MAX_QUERY_CHARS) required; }
            div {
                label for="s-mode" { "Retriever" }
                select #s-mode name="mode" {
                    @for (m, text) in [(Mode::Hybrid, "hybrid (BM25 + vector, fused)"), (Mode::Bm25, "BM25 only"), (Mode::Vector, "vector only")] {
                        option value=(m.as_str()) selected[m == mode] { (text) }
                    }
                }
            }
            div { label for="s-k" { "Results" } input #s-k name="k" value=(q.k.clone().unwrap_or_else(|| "10".into())) inputmode="numeric" size="4"; }
            div { label for="s-filter" { "Filter" } input #s-filter name="filter" value=(value(&q.filter)) placeholder="kind=markdown, lang=en"; }
            @if !wanted.is_empty() { input type="hidden" name="source" value=(wanted); }
            button type="submit" { "Search" }
        }
        @if let (Some(hits), Some(sr)) = (&hits, &search) { (results(&name, sr, hits, &sources)) }
        h2 #documents { "Documents" }
        form.filters method="get" action=(format!("{here}#documents")) {
            div { label for="d-source" { "Source contains" } input #d-source name="source" value=(wanted); }
            @for (k, v) in &search_fields { @if let Some(v) = v.filter(|v| !v.is_empty()) { input type="hidden" name=(k) value=(v); } }
            button type="submit" { "Show" }
        }
        p data-count=(docs.len()) { (count(docs.len() as u64)) " of " (count(sources.len() as u64)) " documents." }
        @if !docs.is_empty() {
            table.documents {
                caption { "Documents" }
                thead { tr { th scope="col" { "Source" } th scope="col" { "Chunks" } th scope="col" { "Tokens" } th scope="col" { "SHA-256" } } }
                tbody {
                    @for (src, st) in docs.iter().skip(page_no * PER_PAGE).take(PER_PAGE) {
                        tr data-source=(src) {
                            td { a href=(document_href(&name, src, None)) { (src) } }
                            td.num data-col="chunks" { (count(st.chunks)) }
                            td.num { (count(st.tokens)) }
                            td { code title=(st.hash) { (st.hash.get(..12).unwrap_or(&st.hash)) } }
                        }
                    }
                }
            }
        }
        (pager(&pager_here, "#documents", page_no, pages))
    };
    let mut r = page(&format!("Collection {}", info.name), &s, Tab::Collections, main);
    *r.status_mut() = status;
    r
}

/// How a hybrid search fuses, in words.
fn fusion_text(f: Fusion) -> String {
    match f {
        Fusion::Rrf { k } => format!("reciprocal rank (Σ 1 / ({k} + rank))"),
        Fusion::Mix { weight } => {
            format!(
                "a mix of scores ({weight} × BM25 / the best BM25 + {} × min-max scaled cosine similarity)",
                1.0 - weight
            )
        }
        Fusion::Tmm { weight } => {
            format!("a mix of scores ({weight} × BM25 / the best BM25 + {} × cosine similarity)", 1.0 - weight)
        }
    }
}

fn document_href(collection: &str, source: &str, chunk: Option<u64>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("source", source);
    if let Some(c) = chunk {
        q.append_pair("chunk", &c.to_string());
    }
    let anchor = chunk.map(|c| format!("#chunk-{c}")).unwrap_or_default();
    format!("/ui/collections/{}/document?{}{anchor}", encode(collection), q.finish())
}

/// A retriever's rank of a chunk; "—" (read out as "not ranked") when the chunk was not among its candidates.
fn rank(r: Option<usize>) -> Markup {
    html! {
        @match r {
            Some(r) => { (r) }
            None => { span.muted aria-hidden="true" title="not among this retriever's candidates" { "—" } span.visually-hidden { "not ranked" } }
        }
    }
}

/// The results. A hybrid search shows, next to each chunk's fused rank, where each retriever ranked it (a chunk
/// one retriever did not find at all has no rank there); a search by one retriever shows its own ranks only.
fn results(collection: &str, sr: &Search, hits: &[Hit], sources: &BTreeMap<String, SourceState>) -> Markup {
    let (what, score) = match sr.mode {
        Mode::Hybrid => ("fused from BM25 and vector search", "Fused score"),
        Mode::Bm25 => ("by BM25 alone", "BM25 score"),
        Mode::Vector => ("by vector search alone", "Cosine similarity"),
    };
    let hybrid = sr.mode == Mode::Hybrid;
    html! {
        p data-results=(hits.len()) { (hits.len()) " results for " q { (sr.query) } ", " (what) "." }
        @if hybrid {
            p.muted { "Each retriever ranks up to " (keel_rag::search::CANDIDATES.max(sr.k)) " candidates; the BM25 and vector columns show where each placed the chunk (—: not among its candidates; BM25 finds only chunks that share a word with the query)." }
        }
        @if !hits.is_empty() {
            table.results {
                caption { "Results" }
                thead { tr {
                    th scope="col" { "Rank" }
                    @if hybrid { th scope="col" { "BM25 rank" } th scope="col" { "Vector rank" } }
                    th scope="col" { (score) }
                    th scope="col" { "Document" } th scope="col" { "Chunk" }
                } }
                tbody {
                    @for (i, h) in hits.iter().enumerate() {
                        tr data-chunk=(h.id) data-source=(h.source) {
                            td.num data-col="rank" { (i + 1) }
                            @if hybrid {
                                td.num data-col="bm25" { (rank(h.bm25_rank)) }
                                td.num data-col="vector" { (rank(h.vector_rank)) }
                            }
                            td.num { (format!("{:.4}", h.score)) }
                            td {
                                @if sources.contains_key(&h.source) { a href=(document_href(collection, &h.source, Some(h.id))) { (h.source) } }
                                @else { (h.source) }
                                @if !h.headings.is_empty() { br; span.muted { (h.headings.join(" › ")) } }
                            }
                            td { (snippet(&h.text)) }
                        }
                    }
                }
            }
        }
    }
}

fn snippet(text: &str) -> String {
    let mut s: String = text.chars().take(SNIPPET_CHARS).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

// -------------------------------------------------------------------------------------------- one document

#[derive(Deserialize, Default)]
pub(super) struct DocumentQuery {
    source: Option<String>,
    /// Open the page holding this chunk.
    chunk: Option<String>,
    page: Option<String>,
}

pub(super) async fn document(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<DocumentQuery>,
) -> Response {
    let collection_href = format!("/ui/collections/{}", encode(&name));
    let source = q.source.unwrap_or_default();
    let here = document_href(&name, &source, None);
    let (s, collections) = match signed_in_with_collections(&app, &headers, &here) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if source.is_empty() {
        return message(StatusCode::BAD_REQUEST, "Invalid", "Which document? The address names none (?source=…).");
    }
    let (page_asked, chunk_asked) = match (
        page_number(&q.page),
        q.chunk.as_deref().map(|c| c.trim().parse::<u64>().map_err(|_| format!("Chunk {c:?} is not a chunk id."))),
    ) {
        (Ok(p), None) => (p, None),
        (Ok(p), Some(Ok(c))) => (p, Some(c)),
        (Err(e), _) | (_, Some(Err(e))) => return message(StatusCode::BAD_REQUEST, "Invalid", &e),
    };
    let index = match collections.index(&name).await {
        Ok(i) => i,
        Err(e) => return rag_failed(e),
    };
    let state = match index.sources().await {
        Ok(mut sources) => sources.remove(&source),
        Err(e) => return rag_failed(e),
    };
    let Some(state) = state else {
        return message(
            StatusCode::NOT_FOUND,
            "Not found",
            &format!("Collection {name:?} has no document {source:?}."),
        );
    };
    let total = usize::try_from(state.chunks).unwrap_or(usize::MAX);
    let pages = total.div_ceil(PER_PAGE).max(1);
    let end = state.first_id.saturating_add(state.chunks);
    // A chunk id opens the page that holds it; one the document no longer holds (it was ingested again since the
    // link was made) is said so, on the first page.
    let (page_no, gone) = match chunk_asked {
        Some(c) if (state.first_id..end).contains(&c) => {
            (usize::try_from(c - state.first_id).map_or(0, |i| i / PER_PAGE), None)
        }
        Some(c) => (0, Some(c)),
        None => (page_asked.min(pages - 1), None),
    };
    let first = state.first_id.saturating_add((page_no * PER_PAGE) as u64);
    let ids: Vec<u64> = (first..end).take(PER_PAGE).collect();
    let chunks = match index.chunks(ids).await {
        Ok(c) => c,
        Err(e) => return rag_failed(e),
    };
    let meta = chunks.first().map(|c| c.meta.clone()).unwrap_or_default();
    let main = html! {
        p { a href=(collection_href) { "← Collection " (name) } }
        h1 { "Document " code { (source) } }
        @if let Some(c) = gone { p.error role="alert" { "This document holds no chunk " (c) " any more: it was ingested again since that link was made." } }
        dl.fields {
            dt { "Chunks" } dd data-field="chunks" { (count(state.chunks)) }
            dt { "Tokens" } dd { (count(state.tokens)) }
            dt { "SHA-256" } dd { code { (state.hash) } }
            @for (k, v) in &meta { @if k != "source" { dt { (k) } dd { (v) } } }
        }
        @for c in &chunks {
            article.chunk id=(format!("chunk-{}", c.id)) data-chunk=(c.id) {
                h2 {
                    "Chunk " (c.id.saturating_sub(state.first_id) + 1) " of " (state.chunks)
                    span.muted { " · id " (c.id) " · bytes " (c.start) "–" (c.end) " of the extracted text" }
                }
                @if !c.headings.is_empty() { p.muted { (c.headings.join(" › ")) } }
                pre { (c.text) }
            }
        }
        (pager(&here, "", page_no, pages))
    };
    page(&format!("Document {source}"), &s, Tab::Collections, main)
}
