//! The OpenAI vector stores API over keel's collections, so that `client.vector_stores.*` of the OpenAI SDKs
//! works against keel: a vector store is a collection named after its id (`vs_…`), its files are documents
//! whose source is the file's id, their attributes are chunk metadata (`filter.rs`). The store's name,
//! metadata and files are in its record (`record.rs`); adding files is synchronous (`attach.rs`).
//!
//! Unlike OpenAI: files are added before the answer (no `in_progress`), stores do not expire, `chunking_strategy`
//! is accepted and not used (keel cuts with `[rag]`'s chunk sizes), `rewrite_query` and `ranking_options.ranker`
//! are ignored, and filters are exact matches (`eq`, `and`). A search may say `"mode"`: `hybrid` (the default),
//! `bm25` or `vector`, as `POST /v1/search` does.

mod attach;
mod filter;
mod record;

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_pipeline::InboundApi;
use keel_rag::{Collections, Mode, RagError};
use serde::Deserialize;
use serde_json::Value;

use crate::body::RawBody;
use crate::files::{FileArea, ListQuery, new_id, not_found, now, object_id, page};
use crate::{ApiError, AppState};

/// The most results one search returns (OpenAI's bound), and the default.
const MAX_RESULTS: usize = 50;
const DEFAULT_RESULTS: usize = 10;
/// The most vector stores one list returns.
const MAX_LIST: usize = 100;
/// Metadata a store may have, and their sizes (OpenAI's limits).
const MAX_METADATA: usize = 16;
const MAX_METADATA_KEY_CHARS: usize = 64;
const MAX_METADATA_VALUE_CHARS: usize = 512;
const MAX_NAME_CHARS: usize = 256;
/// The longest query (all the strings of a query array together).
const MAX_QUERY_BYTES: usize = 16 * 1024;

/// The routes of the vector stores API.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/vector_stores", get(list).post(create))
        .route("/v1/vector_stores/{id}", get(retrieve).post(modify).delete(delete))
        .route("/v1/vector_stores/{id}/search", post(search))
        .route("/v1/vector_stores/{id}/files", get(attach::list).post(attach::create))
        .route(
            "/v1/vector_stores/{id}/files/{file_id}",
            get(attach::retrieve).post(attach::update).delete(attach::delete),
        )
        .route("/v1/vector_stores/{id}/files/{file_id}/content", get(attach::content))
        .route("/v1/vector_stores/{id}/file_batches", post(attach::create_batch))
        .route("/v1/vector_stores/{id}/file_batches/{batch_id}", get(attach::retrieve_batch))
        .route("/v1/vector_stores/{id}/file_batches/{batch_id}/cancel", post(attach::retrieve_batch))
        .route("/v1/vector_stores/{id}/file_batches/{batch_id}/files", get(attach::batch_files))
}

/// What every vector store handler needs: the files directory and the collections.
pub(crate) struct Ctx<'a> {
    area: &'a FileArea,
    collections: &'a Collections,
}

impl<'a> Ctx<'a> {
    fn of(app: &'a AppState) -> Result<Self, ApiError> {
        let collections = crate::rag::collections(app)?;
        let area = app.inner.files.as_deref().ok_or_else(|| {
            ApiError { status: StatusCode::NOT_FOUND, ..ApiError::invalid("this keel keeps no files", None) }
                .code("files_off")
        })?;
        Ok(Self { area, collections })
    }

    /// A store's record as it is now (a record is replaced atomically: reading needs no lock).
    async fn store(&self, id: &str) -> Result<record::Store, ApiError> {
        record::load(self.area, id).await?.ok_or_else(|| store_not_found(id))
    }
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| e.into_response_for(InboundApi::OpenAi))
}

fn store_not_found(id: &str) -> ApiError {
    not_found("vector store", "vector_store_not_found", id)
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bad = metadata.len() > MAX_METADATA
        || metadata.iter().any(|(k, v)| {
            k.is_empty() || k.chars().count() > MAX_METADATA_KEY_CHARS || v.chars().count() > MAX_METADATA_VALUE_CHARS
        });
    if bad {
        return Err(ApiError::invalid(
            format!(
                "metadata: at most {MAX_METADATA} pairs, keys of 1 to {MAX_METADATA_KEY_CHARS} characters, values of \
                 at most {MAX_METADATA_VALUE_CHARS}"
            ),
            Some("metadata".into()),
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid(format!("name: at most {MAX_NAME_CHARS} characters"), Some("name".into())));
    }
    Ok(())
}

/// Stores never expire: an expiry policy is refused rather than ignored.
fn check_expiry(expires_after: &Option<Value>) -> Result<(), ApiError> {
    match expires_after {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "expires_after: keel's vector stores do not expire; delete a store when it is no longer needed",
            Some("expires_after".into()),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    file_ids: Vec<String>,
    #[serde(default)]
    expires_after: Option<Value>,
    /// Accepted and not used: keel cuts every file with its `[rag]` chunk sizes.
    #[serde(default, rename = "chunking_strategy")]
    _chunking_strategy: Option<Value>,
}

/// `POST /v1/vector_stores`.
async fn create(State(app): State<AppState>, body: RawBody) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let req: CreateRequest = body.parse()?;
            let name = req.name.unwrap_or_default();
            check_name(&name)?;
            let metadata = req.metadata.unwrap_or_default();
            check_metadata(&metadata)?;
            check_expiry(&req.expires_after)?;
            if req.file_ids.len() > attach::MAX_BATCH_FILES {
                return Err(ApiError::invalid(
                    format!("file_ids: at most {} files at once", attach::MAX_BATCH_FILES),
                    Some("file_ids".into()),
                ));
            }
            let created_at = now();
            let store = record::Store {
                id: new_id("vs_"),
                name,
                description: req.description,
                created_at,
                last_active_at: created_at,
                metadata,
                files: Vec::new(),
                batches: Vec::new(),
            };
            {
                let _lock = ctx.area.records.lock().await;
                if record::ids(ctx.area).await?.len() >= record::MAX_STORES {
                    return Err(ApiError::invalid(
                        format!("this keel keeps at most {} vector stores: delete some first", record::MAX_STORES),
                        None,
                    )
                    .code("vector_store_limit_reached"));
                }
                record::save(ctx.area, &store).await?;
            }
            if !req.file_ids.is_empty() {
                let wanted = req.file_ids.into_iter().map(|file_id| attach::Wanted::new(file_id, None)).collect();
                attach::attach(&ctx, &store.id, wanted).await?;
            }
            Ok::<_, ApiError>(axum::Json(ctx.store(&store.id).await?.object()).into_response())
        }
        .await,
    )
}

/// `GET /v1/vector_stores`.
async fn list(State(app): State<AppState>, uri: Uri) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let q = ListQuery::of(&uri)?;
            let mut objects = Vec::new();
            for id in record::ids(ctx.area).await? {
                if let Some(store) = record::load(ctx.area, &id).await? {
                    objects.push(store.object());
                }
            }
            Ok::<_, ApiError>(axum::Json(page(objects, object_id, &q, MAX_LIST, 20)?).into_response())
        }
        .await,
    )
}

/// `GET /v1/vector_stores/{id}`.
async fn retrieve(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    respond(async { Ok::<_, ApiError>(axum::Json(Ctx::of(&app)?.store(&id).await?.object()).into_response()) }.await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModifyRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    expires_after: Option<Value>,
}

/// `POST /v1/vector_stores/{id}`: a new name or metadata (`null` leaves them as they are).
async fn modify(State(app): State<AppState>, Path(id): Path<String>, body: RawBody) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let req: ModifyRequest = body.parse()?;
            check_expiry(&req.expires_after)?;
            let _lock = ctx.area.records.lock().await;
            let mut store = ctx.store(&id).await?;
            if let Some(name) = req.name {
                check_name(&name)?;
                store.name = name;
            }
            if let Some(metadata) = req.metadata {
                check_metadata(&metadata)?;
                store.metadata = metadata;
            }
            store.last_active_at = now();
            record::save(ctx.area, &store).await?;
            Ok::<_, ApiError>(axum::Json(store.object()).into_response())
        }
        .await,
    )
}

/// `DELETE /v1/vector_stores/{id}`: the collection first, then the record (so a failure leaves a store that can
/// be deleted again). The uploaded files stay.
async fn delete(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let store = ctx.store(&id).await?;
            ctx.collections.delete(store.collection()).await.map_err(crate::rag::api_error)?;
            let _lock = ctx.area.records.lock().await;
            record::remove(ctx.area, &id).await?;
            Ok::<_, ApiError>(
                axum::Json(serde_json::json!({ "id": id, "object": "vector_store.deleted", "deleted": true }))
                    .into_response(),
            )
        }
        .await,
    )
}

/// A query: one string, or several (searched as one).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(untagged)]
enum SearchQuery {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RankingOptions {
    #[serde(default, rename = "ranker")]
    _ranker: Option<String>,
    #[serde(default)]
    score_threshold: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    query: SearchQuery,
    #[serde(default)]
    filters: Option<Value>,
    #[serde(default)]
    max_num_results: Option<usize>,
    #[serde(default)]
    ranking_options: Option<RankingOptions>,
    #[serde(default, rename = "rewrite_query")]
    _rewrite_query: Option<bool>,
    /// keel's own: `hybrid` (default), `bm25` or `vector`.
    #[serde(default)]
    mode: Option<String>,
}

/// `POST /v1/vector_stores/{id}/search`.
async fn search(State(app): State<AppState>, Path(id): Path<String>, body: RawBody) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let req: SearchRequest = body.parse()?;
            let store = ctx.store(&id).await?;
            let text = match &req.query {
                SearchQuery::One(q) => q.clone(),
                SearchQuery::Many(qs) => qs.join("\n"),
            };
            if text.trim().is_empty() {
                return Err(ApiError::invalid("query: must not be empty", Some("query".into())));
            }
            if text.len() > MAX_QUERY_BYTES {
                return Err(ApiError::invalid(format!("query: at most {MAX_QUERY_BYTES} bytes"), Some("query".into())));
            }
            let k = req.max_num_results.unwrap_or(DEFAULT_RESULTS);
            if k == 0 || k > MAX_RESULTS {
                return Err(ApiError::invalid(
                    format!("max_num_results: must be between 1 and {MAX_RESULTS}"),
                    Some("max_num_results".into()),
                ));
            }
            let mode = match req.mode.as_deref() {
                None => Mode::Hybrid,
                Some(m) => Mode::parse(m).ok_or_else(|| {
                    ApiError::invalid(format!("mode: {m:?} is not one of bm25, vector, hybrid"), Some("mode".into()))
                })?,
            };
            let filter = match &req.filters {
                None | Some(Value::Null) => keel_rag::Filter::default(),
                Some(f) => filter::parse_filter(f)?,
            };
            let threshold = req.ranking_options.and_then(|r| r.score_threshold);
            let hits = match ctx.collections.search(store.collection(), &text, mode, k, &filter).await {
                Ok(hits) => hits,
                // A store no file was added to yet has no collection: it finds nothing.
                Err(RagError::NoCollection(_)) => Vec::new(),
                Err(e) => return Err(crate::rag::api_error(e)),
            };
            // Only the store's completed files answer (a file whose ingest was cut short is not one of them).
            let data: Vec<Value> = hits
                .into_iter()
                .filter(|h| threshold.is_none_or(|t| h.score >= t))
                .filter_map(|h| {
                    let file = store.file(&h.source).filter(|f| f.status == record::Status::Completed)?;
                    Some(serde_json::json!({
                        "file_id": file.id,
                        "filename": file.filename,
                        "score": h.score,
                        "attributes": file.attributes,
                        "content": [{"type": "text", "text": h.text}],
                    }))
                })
                .collect();
            Ok::<_, ApiError>(
                axum::Json(serde_json::json!({
                    "object": "vector_store.search_results.page",
                    "search_query": req.query,
                    "data": data,
                    "has_more": false,
                    "next_page": null,
                }))
                .into_response(),
            )
        }
        .await,
    )
}
