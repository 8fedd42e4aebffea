//! Files in a vector store: adding them (one, or a batch: read from the files directory, extracted, chunked and
//! embedded into the store's collection before the answer, so an added file is `completed` or `failed`, never
//! `in_progress`), listing, reading, changing their attributes, and removing them.
//!
//! The record lock is held only to read and write the record, never across an ingest: the record is read to
//! check the request, the files are ingested, and the record is read again and updated. A store deleted
//! meanwhile has its collection deleted again (an ingest may have recreated it).

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use keel_rag::RagError;
use keel_rag::extract::Kind;
use serde::Deserialize;
use serde_json::Value;

use super::filter::{Attributes, check_attributes, meta_of};
use super::record::{self, Batch, LastError, MAX_FILES_PER_STORE, Status, StoreFile};
use super::{Ctx, respond, store_not_found};
use crate::ApiError;
use crate::body::RawBody;
use crate::files::{ListQuery, new_id, not_found, now, object_id, page};

/// Files one batch (or one `POST /v1/vector_stores` with `file_ids`) may add.
pub(crate) const MAX_BATCH_FILES: usize = 500;
/// The most files one list of a store's files returns.
const MAX_LIST: usize = 100;

/// A file to add, with its attributes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Wanted {
    pub file_id: String,
    #[serde(default)]
    pub attributes: Option<Attributes>,
    /// Accepted and not used: keel cuts every file with its `[rag]` chunk sizes.
    #[serde(default, rename = "chunking_strategy")]
    _chunking_strategy: Option<Value>,
}

impl Wanted {
    pub(crate) fn new(file_id: String, attributes: Option<Attributes>) -> Self {
        Self { file_id, attributes, _chunking_strategy: None }
    }
}

/// The document kind of a file, from its name's extension: Markdown, HTML, else plain text.
fn kind_of(filename: &str) -> Kind {
    Kind::of(std::path::Path::new(filename)).unwrap_or(Kind::Text)
}

fn failure(e: &RagError) -> LastError {
    let code = match e {
        RagError::Invalid(_) => "invalid_file",
        _ => "server_error",
    };
    LastError { code: code.into(), message: e.to_string() }
}

/// Adds files to a store (replacing those already in it) and records the outcome of each.
pub(crate) async fn attach(ctx: &Ctx<'_>, store_id: &str, wanted: Vec<Wanted>) -> Result<Vec<StoreFile>, ApiError> {
    let mut unique: Vec<Wanted> = Vec::with_capacity(wanted.len());
    for w in wanted {
        if let Some(a) = &w.attributes {
            check_attributes(a)?;
        }
        match unique.iter_mut().find(|u| u.file_id == w.file_id) {
            Some(u) => *u = w,
            None => unique.push(w),
        }
    }
    if unique.len() > MAX_BATCH_FILES {
        return Err(ApiError::invalid(format!("at most {MAX_BATCH_FILES} files at once"), Some("file_ids".into())));
    }
    let before = {
        let _lock = ctx.area.records.lock().await;
        record::load(ctx.area, store_id).await?.ok_or_else(|| store_not_found(store_id))?
    };
    let new = unique.iter().filter(|w| before.file(&w.file_id).is_none()).count();
    if before.files.len() + new > MAX_FILES_PER_STORE {
        return Err(full());
    }
    let mut metas = Vec::with_capacity(unique.len());
    for w in &unique {
        let meta = ctx.area.get(&w.file_id).await?.ok_or_else(|| ApiError {
            param: Some("file_id".into()),
            ..not_found("file", "file_not_found", &w.file_id)
        })?;
        metas.push(meta);
    }
    let mut done = Vec::with_capacity(unique.len());
    for (w, meta) in unique.into_iter().zip(metas) {
        let old = before.file(&w.file_id);
        // Attributes are those asked for, else the ones the file had in this store.
        let attributes = w.attributes.or_else(|| old.map(|o| o.attributes.clone())).unwrap_or_default();
        if let Some(old) = old.filter(|o| o.status == Status::Completed && o.attributes == attributes) {
            done.push(old.clone());
            continue;
        }
        let mut file = StoreFile {
            id: meta.id.clone(),
            filename: meta.filename.clone(),
            created_at: old.map_or_else(now, |o| o.created_at),
            status: Status::Failed,
            usage_bytes: meta.bytes,
            attributes,
            last_error: None,
            chunks: 0,
        };
        match ingest(ctx, store_id, &file, old.is_some()).await {
            Ok(chunks) => {
                file.status = Status::Completed;
                file.chunks = chunks;
            }
            Err(e) => file.last_error = Some(e),
        }
        done.push(file);
    }
    let _lock = ctx.area.records.lock().await;
    let Some(mut store) = record::load(ctx.area, store_id).await? else {
        drop(_lock);
        if let Err(e) = ctx.collections.delete(store_id).await {
            tracing::warn!(store = store_id, error = %e, "deleting the collection of a deleted vector store failed");
        }
        return Err(store_not_found(store_id));
    };
    store.upsert(&done);
    if store.files.len() > MAX_FILES_PER_STORE {
        // Other requests filled the store meanwhile: what this one added goes again.
        for f in done.iter().filter(|f| before.file(&f.id).is_none()) {
            let _ = ctx.collections.remove_document(store_id, &f.id).await;
        }
        return Err(full());
    }
    store.last_active_at = now();
    record::save(ctx.area, &store).await?;
    Ok(done)
}

fn full() -> ApiError {
    ApiError::invalid(format!("a vector store holds at most {MAX_FILES_PER_STORE} files"), Some("file_ids".into()))
        .code("file_limit_reached")
}

/// Puts one file's chunks into the store's collection: its count, or why it failed.
async fn ingest(ctx: &Ctx<'_>, store_id: &str, file: &StoreFile, replacing: bool) -> Result<usize, LastError> {
    let bytes =
        ctx.area.bytes(&file.id).await.map_err(|e| LastError { code: "server_error".into(), message: e.message })?;
    // The same bytes with other attributes would be skipped as unchanged: the old chunks go first.
    if replacing {
        match ctx.collections.remove_document(store_id, &file.id).await {
            Ok(_) | Err(RagError::NoCollection(_)) => {}
            Err(e) => return Err(failure(&e)),
        }
    }
    let kind = kind_of(&file.filename);
    match ctx.collections.add_document(store_id, &file.id, kind, bytes, meta_of(&file.attributes)).await {
        Ok(added) => Ok(added.chunks),
        Err(e) => {
            tracing::warn!(store = store_id, file = %file.id, error = %e, "adding a file to a vector store failed");
            Err(failure(&e))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    #[serde(default)]
    file_ids: Vec<String>,
    #[serde(default)]
    files: Vec<Wanted>,
    /// Attributes of every file of `file_ids`.
    #[serde(default)]
    attributes: Option<Attributes>,
    #[serde(default, rename = "chunking_strategy")]
    _chunking_strategy: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    attributes: Option<Attributes>,
}

/// `POST /v1/vector_stores/{id}/files`.
pub(crate) async fn create(State(app): State<crate::AppState>, Path(id): Path<String>, body: RawBody) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let wanted: Wanted = body.parse()?;
            let files = attach(&ctx, &id, vec![wanted]).await?;
            let store = ctx.store(&id).await?;
            let object = files.first().map(|f| store.file_object(f)).unwrap_or_default();
            Ok::<_, ApiError>(axum::Json(object).into_response())
        }
        .await,
    )
}

/// `POST /v1/vector_stores/{id}/files/{file_id}`: new attributes (the file is indexed again with them).
pub(crate) async fn update(
    State(app): State<crate::AppState>,
    Path((id, file_id)): Path<(String, String)>,
    body: RawBody,
) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let req: UpdateRequest = body.parse()?;
            if ctx.store(&id).await?.file(&file_id).is_none() {
                return Err(file_not_in_store(&id, &file_id));
            }
            let wanted = Wanted::new(file_id, Some(req.attributes.unwrap_or_default()));
            let files = attach(&ctx, &id, vec![wanted]).await?;
            let store = ctx.store(&id).await?;
            Ok::<_, ApiError>(
                axum::Json(files.first().map(|f| store.file_object(f)).unwrap_or_default()).into_response(),
            )
        }
        .await,
    )
}

fn file_not_in_store(store: &str, file: &str) -> ApiError {
    not_found(&format!("file in vector store '{store}'"), "file_not_found", file)
}

/// `GET /v1/vector_stores/{id}/files`.
pub(crate) async fn list(State(app): State<crate::AppState>, Path(id): Path<String>, uri: Uri) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let store = ctx.store(&id).await?;
            let q = ListQuery::of(&uri)?;
            Ok::<_, ApiError>(axum::Json(file_page(&store, &q, |_| true)?).into_response())
        }
        .await,
    )
}

/// A page of a store's files, those `keep` lets through, with the status filter of the query.
fn file_page(store: &record::Store, q: &ListQuery, keep: impl Fn(&StoreFile) -> bool) -> Result<Value, ApiError> {
    let status = match q.filter.as_deref() {
        None => None,
        Some("completed") => Some(Some(Status::Completed)),
        Some("failed") => Some(Some(Status::Failed)),
        // Files are never left in progress or cancelled: nothing has those statuses.
        Some("in_progress" | "cancelled") => Some(None),
        Some(other) => {
            return Err(ApiError::invalid(
                format!("filter: {other:?} is not one of in_progress, completed, failed, cancelled"),
                Some("filter".into()),
            ));
        }
    };
    let objects = store
        .files
        .iter()
        .filter(|f| keep(f) && status.is_none_or(|s| Some(f.status) == s))
        .map(|f| store.file_object(f))
        .collect();
    page(objects, object_id, q, MAX_LIST, 20)
}

/// `GET /v1/vector_stores/{id}/files/{file_id}`.
pub(crate) async fn retrieve(
    State(app): State<crate::AppState>,
    Path((id, file_id)): Path<(String, String)>,
) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let store = ctx.store(&id).await?;
            let file = store.file(&file_id).ok_or_else(|| file_not_in_store(&id, &file_id))?;
            Ok::<_, ApiError>(axum::Json(store.file_object(file)).into_response())
        }
        .await,
    )
}

/// `GET /v1/vector_stores/{id}/files/{file_id}/content`: the file's text as keel extracted it.
pub(crate) async fn content(
    State(app): State<crate::AppState>,
    Path((id, file_id)): Path<(String, String)>,
) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let store = ctx.store(&id).await?;
            let file = store.file(&file_id).ok_or_else(|| file_not_in_store(&id, &file_id))?;
            let kind = kind_of(&file.filename);
            let bytes = ctx.area.bytes(&file_id).await?;
            let text = tokio::task::spawn_blocking(move || keel_rag::extract::extract(kind, &bytes))
                .await
                .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "api_error", e.to_string()))?
                .map(|doc| doc.text)
                .map_err(|e| ApiError::invalid(format!("{file_id}: {e}"), None).code("invalid_file"))?;
            Ok::<_, ApiError>(
                axum::Json(serde_json::json!({
                    "object": "vector_store.file_content.page",
                    "data": [{"type": "text", "text": text}],
                    "has_more": false,
                    "next_page": null,
                }))
                .into_response(),
            )
        }
        .await,
    )
}

/// `DELETE /v1/vector_stores/{id}/files/{file_id}`: the file leaves the store; the uploaded file stays.
pub(crate) async fn delete(
    State(app): State<crate::AppState>,
    Path((id, file_id)): Path<(String, String)>,
) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            if ctx.store(&id).await?.file(&file_id).is_none() {
                return Err(file_not_in_store(&id, &file_id));
            }
            match ctx.collections.remove_document(&id, &file_id).await {
                Ok(_) | Err(RagError::NoCollection(_)) => {}
                Err(e) => return Err(crate::rag::api_error(e)),
            }
            let _lock = ctx.area.records.lock().await;
            if let Some(mut store) = record::load(ctx.area, &id).await? {
                store.files.retain(|f| f.id != file_id);
                store.last_active_at = now();
                record::save(ctx.area, &store).await?;
            }
            Ok::<_, ApiError>(
                axum::Json(
                    serde_json::json!({ "id": file_id, "object": "vector_store.file.deleted", "deleted": true }),
                )
                .into_response(),
            )
        }
        .await,
    )
}

/// `POST /v1/vector_stores/{id}/file_batches`: `file_ids` (with `attributes` for all), or `files` (each with
/// its own).
pub(crate) async fn create_batch(
    State(app): State<crate::AppState>,
    Path(id): Path<String>,
    body: RawBody,
) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let req: BatchRequest = body.parse()?;
            let wanted: Vec<Wanted> = match (req.file_ids.is_empty(), req.files.is_empty()) {
                (false, true) => {
                    req.file_ids.into_iter().map(|file_id| Wanted::new(file_id, req.attributes.clone())).collect()
                }
                (true, false) => req.files,
                (false, false) => {
                    return Err(ApiError::invalid("give `file_ids` or `files`, not both", Some("files".into())));
                }
                (true, true) => {
                    return Err(ApiError::invalid("no files: give `file_ids` or `files`", Some("file_ids".into())));
                }
            };
            let done = attach(&ctx, &id, wanted).await?;
            let batch = Batch {
                id: new_id("vsfb_"),
                created_at: now(),
                file_ids: done.iter().map(|f| f.id.clone()).collect(),
                completed: done.iter().filter(|f| f.status == Status::Completed).count(),
                failed: done.iter().filter(|f| f.status == Status::Failed).count(),
            };
            let _lock = ctx.area.records.lock().await;
            let mut store = record::load(ctx.area, &id).await?.ok_or_else(|| store_not_found(&id))?;
            store.remember(batch.clone());
            record::save(ctx.area, &store).await?;
            Ok::<_, ApiError>(axum::Json(store.batch_object(&batch)).into_response())
        }
        .await,
    )
}

fn batch_of<'a>(store: &'a record::Store, batch_id: &str) -> Result<&'a Batch, ApiError> {
    store.batches.iter().find(|b| b.id == batch_id).ok_or_else(|| not_found("file batch", "batch_not_found", batch_id))
}

/// `GET /v1/vector_stores/{id}/file_batches/{batch_id}`, and `POST …/cancel` (a batch is done when it is
/// answered: there is nothing left to cancel).
pub(crate) async fn retrieve_batch(
    State(app): State<crate::AppState>,
    Path((id, batch_id)): Path<(String, String)>,
) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let store = ctx.store(&id).await?;
            Ok::<_, ApiError>(axum::Json(store.batch_object(batch_of(&store, &batch_id)?)).into_response())
        }
        .await,
    )
}

/// `GET /v1/vector_stores/{id}/file_batches/{batch_id}/files`: the batch's files still in the store.
pub(crate) async fn batch_files(
    State(app): State<crate::AppState>,
    Path((id, batch_id)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    respond(
        async {
            let ctx = Ctx::of(&app)?;
            let store = ctx.store(&id).await?;
            let q = ListQuery::of(&uri)?;
            let batch = batch_of(&store, &batch_id)?;
            Ok::<_, ApiError>(axum::Json(file_page(&store, &q, |f| batch.file_ids.contains(&f.id))?).into_response())
        }
        .await,
    )
}
