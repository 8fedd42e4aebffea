//! The OpenAI Files API, as much of it as vector stores need: `POST /v1/files` (multipart upload, streamed to
//! disk within [`MAX_FILE_BYTES`]), `GET /v1/files`, `GET|DELETE /v1/files/{id}`, `GET /v1/files/{id}/content`.
//! A file is two entries of the files directory: its bytes (`<id>`) and its description (`<id>.json`), the
//! description written last, so a file exists once both are there. Also the cursor pagination of OpenAI's
//! lists, which vector stores share.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequest, Path as UrlPath, Query, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use keel_pipeline::InboundApi;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::{ApiError, AppState, ServerLimits};

/// The largest file `POST /v1/files` takes: the largest document a collection takes.
pub(crate) const MAX_FILE_BYTES: usize = keel_rag::collections::MAX_DOCUMENT_BYTES;
/// The largest upload body: the file and the multipart framing and fields around it.
pub(crate) const MAX_UPLOAD_BODY: usize = MAX_FILE_BYTES + 64 * 1024;
/// Files kept at once; past it an upload is refused until some are deleted.
const MAX_FILES: usize = 10_000;
/// The longest file name kept (in bytes); a longer one is cut.
const MAX_FILENAME_BYTES: usize = 255;
/// The longest value of a small multipart field (`purpose`).
const MAX_FIELD_BYTES: usize = 256;
/// The purposes a file may be uploaded with (the SDK's `FilePurpose`).
const PURPOSES: &[&str] = &["assistants", "batch", "fine-tune", "vision", "user_data", "evals"];

/// Where uploaded files and vector store records live, and the lock that orders changes to the records.
pub(crate) struct FileArea {
    root: PathBuf,
    /// Held while a vector store record is read, changed and written back (never across an ingest).
    pub(crate) records: tokio::sync::Mutex<()>,
}

impl FileArea {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root, records: tokio::sync::Mutex::new(()) }
    }

    fn data(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn meta(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.json"))
    }

    /// The directory of vector store records.
    pub(crate) fn stores(&self) -> PathBuf {
        self.root.join("vector_stores")
    }

    /// A file's description; `None` when there is no such file.
    pub(crate) async fn get(&self, id: &str) -> Result<Option<FileMeta>, ApiError> {
        if !valid_id(id, "file-") {
            return Ok(None);
        }
        read_json(&self.meta(id)).await
    }

    /// A file's bytes.
    pub(crate) async fn bytes(&self, id: &str) -> Result<Vec<u8>, ApiError> {
        let path = self.data(id);
        tokio::fs::read(&path).await.map_err(|e| io_error(&path, e))
    }

    async fn all(&self) -> Result<Vec<FileMeta>, ApiError> {
        let names = json_names(&self.root, MAX_FILES).await?;
        let mut files = Vec::with_capacity(names.len());
        for id in names.iter().filter(|n| valid_id(n, "file-")) {
            if let Some(meta) = read_json::<FileMeta>(&self.meta(id)).await? {
                files.push(meta);
            }
        }
        Ok(files)
    }
}

/// What is known of an uploaded file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FileMeta {
    pub id: String,
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    pub purpose: String,
}

impl FileMeta {
    fn object(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
            "filename": self.filename, "purpose": self.purpose, "status": "processed",
            "status_details": null, "expires_at": null,
        })
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A new id: the prefix and a UUIDv7, so that ids sort in the order they were made (the lists' cursor order).
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// Whether `id` is one keel could have made: it becomes a file name, so nothing else is looked up.
pub(crate) fn valid_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

pub(crate) fn not_found(what: &str, code: &str, id: &str) -> ApiError {
    ApiError { status: StatusCode::NOT_FOUND, ..ApiError::invalid(format!("No {what} found with id '{id}'."), None) }
        .code(code)
}

pub(crate) fn io_error(path: &Path, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(path = %path.display(), error = %e, "file storage failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", format!("file storage: {}: {e}", path.display()))
}

/// A JSON document; `None` when the file does not exist.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, ApiError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| io_error(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Writes a JSON document atomically: a temporary file, synced, then renamed over the old one.
pub(crate) async fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(value).map_err(|e| io_error(path, e))?;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
    let written = async {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut f = tokio::fs::File::create(&tmp).await?;
        f.write_all(&bytes).await?;
        f.sync_all().await?;
        tokio::fs::rename(&tmp, path).await
    };
    if let Err(e) = written.await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io_error(path, e));
    }
    Ok(())
}

/// The stems of the `*.json` files of a directory (none when it does not exist), at most `max` of them.
pub(crate) async fn json_names(dir: &Path, max: usize) -> Result<Vec<String>, ApiError> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir, e)),
    };
    let mut names = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(|e| io_error(dir, e))? {
        let name = entry.file_name();
        if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
            names.push(stem.to_string());
            if names.len() > max {
                break;
            }
        }
    }
    Ok(names)
}

fn files_area(app: &AppState) -> Result<&FileArea, ApiError> {
    app.inner.files.as_deref().ok_or_else(|| {
        ApiError { status: StatusCode::NOT_FOUND, ..ApiError::invalid("this keel keeps no files", None) }
            .code("files_off")
    })
}

/// The query of a list: OpenAI's cursor pagination, and the filters some lists have.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub limit: Option<usize>,
    pub after: Option<String>,
    pub before: Option<String>,
    pub order: Option<String>,
    /// Files in a vector store: by status.
    pub filter: Option<String>,
    /// Files: by purpose.
    pub purpose: Option<String>,
}

impl ListQuery {
    pub(crate) fn of(uri: &Uri) -> Result<Self, ApiError> {
        Query::<ListQuery>::try_from_uri(uri).map(|q| q.0).map_err(|e| ApiError::invalid(e.body_text(), None))
    }
}

/// One page of a list, in the order asked (`desc`, newest first, unless `order=asc`), with OpenAI's cursors.
/// Items are ordered by id, which is creation order; a cursor need not name an item that still exists.
pub(crate) fn page<T: Serialize>(
    mut items: Vec<T>,
    id: impl Fn(&T) -> &str,
    q: &ListQuery,
    max_limit: usize,
    default_limit: usize,
) -> Result<serde_json::Value, ApiError> {
    let limit = q.limit.unwrap_or(default_limit);
    if limit == 0 || limit > max_limit {
        return Err(ApiError::invalid(format!("limit: must be between 1 and {max_limit}"), Some("limit".into())));
    }
    let desc = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(o) => return Err(ApiError::invalid(format!("order: {o:?} is not asc or desc"), Some("order".into()))),
    };
    items.sort_by(|a, b| if desc { id(b).cmp(id(a)) } else { id(a).cmp(id(b)) });
    // `x` comes after the cursor `c` in this order.
    let later = |x: &str, c: &str| if desc { x < c } else { x > c };
    if let Some(after) = &q.after {
        items.retain(|x| later(id(x), after));
    }
    let mut has_more = items.len() > limit;
    if let Some(before) = &q.before {
        items.retain(|x| later(before, id(x)));
        has_more = items.len() > limit;
        let skip = items.len().saturating_sub(limit);
        items = items.split_off(skip);
    }
    items.truncate(limit);
    let first_id = items.first().map(|x| id(x).to_string());
    let last_id = items.last().map(|x| id(x).to_string());
    Ok(serde_json::json!({
        "object": "list", "data": items, "first_id": first_id, "last_id": last_id, "has_more": has_more,
    }))
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| e.into_response_for(InboundApi::OpenAi))
}

/// `POST /v1/files`: multipart `file` and `purpose`.
pub(crate) async fn upload(State(app): State<AppState>, req: Request) -> Response {
    respond(
        async {
            let area = files_area(&app)?;
            let limits = req.extensions().get::<ServerLimits>().copied().unwrap_or_default();
            let multipart = axum::extract::Multipart::from_request(req, &()).await.map_err(|e| {
                ApiError::invalid(format!("expected a multipart/form-data body: {}", e.body_text()), None)
            })?;
            if json_names(&area.root, MAX_FILES).await?.len() >= MAX_FILES {
                return Err(ApiError::invalid(
                    format!("this keel keeps at most {MAX_FILES} files: delete some first"),
                    None,
                )
                .code("file_limit_reached"));
            }
            let id = new_id("file-");
            let received = tokio::time::timeout(limits.body_read_timeout, receive(area, &id, multipart)).await;
            let received = match received {
                Ok(r) => r,
                Err(_) => Err(ApiError {
                    status: StatusCode::REQUEST_TIMEOUT,
                    ..ApiError::invalid(
                        format!(
                            "the upload did not arrive within {} ms (server.body_read_timeout_ms)",
                            limits.body_read_timeout.as_millis()
                        ),
                        None,
                    )
                    .code("request_timeout")
                }),
            };
            let part = part_path(area, &id);
            let (filename, purpose, bytes) = match received {
                Ok(r) => r,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(e);
                }
            };
            let meta = FileMeta { id: id.clone(), bytes, created_at: now(), filename, purpose };
            let data = area.data(&id);
            if let Err(e) = tokio::fs::rename(&part, &data).await {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(io_error(&data, e));
            }
            if let Err(e) = write_json(&area.meta(&id), &meta).await {
                let _ = tokio::fs::remove_file(&data).await;
                return Err(e);
            }
            Ok::<_, ApiError>(axum::Json(meta.object()).into_response())
        }
        .await,
    )
}

fn part_path(area: &FileArea, id: &str) -> PathBuf {
    area.root.join(format!("{id}.part"))
}

/// Reads the multipart fields, the file streamed into `<id>.part`: `(filename, purpose, bytes)`.
async fn receive(
    area: &FileArea,
    id: &str,
    mut multipart: axum::extract::Multipart,
) -> Result<(String, String, u64), ApiError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        let status = e.status();
        let err = ApiError::invalid(format!("multipart body: {}", e.body_text()), None);
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError { status, kind: "request_too_large", ..err }
        } else {
            err
        }
    };
    let (mut file, mut purpose) = (None, None);
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        match field.name() {
            Some("file") if file.is_none() => {
                let filename = clean_filename(field.file_name().unwrap_or("upload"));
                tokio::fs::create_dir_all(&area.root).await.map_err(|e| io_error(&area.root, e))?;
                let path = part_path(area, id);
                let mut out = tokio::fs::File::create(&path).await.map_err(|e| io_error(&path, e))?;
                let mut size = 0usize;
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    size += chunk.len();
                    if size > MAX_FILE_BYTES {
                        return Err(ApiError {
                            status: StatusCode::PAYLOAD_TOO_LARGE,
                            kind: "request_too_large",
                            ..ApiError::invalid(
                                format!("file: larger than {MAX_FILE_BYTES} bytes"),
                                Some("file".into()),
                            )
                        });
                    }
                    out.write_all(&chunk).await.map_err(|e| io_error(&path, e))?;
                }
                out.sync_all().await.map_err(|e| io_error(&path, e))?;
                file = Some((filename, size as u64));
            }
            Some("file") => return Err(ApiError::invalid("file: sent more than once", Some("file".into()))),
            Some("purpose") => {
                let mut value = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    value.extend_from_slice(&chunk);
                    if value.len() > MAX_FIELD_BYTES {
                        return Err(ApiError::invalid("purpose: too long", Some("purpose".into())));
                    }
                }
                purpose = Some(String::from_utf8_lossy(&value).trim().to_string());
            }
            // Fields keel does not use (`expires_after[...]`) are read past.
            _ => while field.chunk().await.map_err(bad)?.is_some() {},
        }
    }
    let Some((filename, bytes)) = file else {
        return Err(ApiError::invalid("file: missing (a multipart field named `file`)", Some("file".into())));
    };
    let purpose = match purpose {
        Some(p) if PURPOSES.contains(&p.as_str()) => p,
        Some(p) => {
            return Err(ApiError::invalid(
                format!("purpose: {p:?} is not one of {}", PURPOSES.join(", ")),
                Some("purpose".into()),
            ));
        }
        None => return Err(ApiError::invalid("purpose: missing", Some("purpose".into()))),
    };
    Ok((filename, purpose, bytes))
}

/// The file's own name (no directories), printable, at most [`MAX_FILENAME_BYTES`].
fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out = String::new();
    for c in base.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_FILENAME_BYTES {
            break;
        }
        out.push(c);
    }
    if out.trim().is_empty() { "upload".into() } else { out }
}

/// `GET /v1/files`.
pub(crate) async fn list(State(app): State<AppState>, uri: Uri) -> Response {
    respond(
        async {
            let area = files_area(&app)?;
            let q = ListQuery::of(&uri)?;
            let mut files = area.all().await?;
            if let Some(p) = &q.purpose {
                files.retain(|f| &f.purpose == p);
            }
            let objects = files.iter().map(FileMeta::object).collect();
            Ok::<_, ApiError>(axum::Json(page(objects, object_id, &q, MAX_FILES, MAX_FILES)?).into_response())
        }
        .await,
    )
}

/// The `id` of an API object.
pub(crate) fn object_id(object: &serde_json::Value) -> &str {
    object["id"].as_str().unwrap_or_default()
}

/// `GET /v1/files/{id}`.
pub(crate) async fn retrieve(State(app): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    respond(
        async {
            let area = files_area(&app)?;
            let meta = area.get(&id).await?.ok_or_else(|| not_found("file", "file_not_found", &id))?;
            Ok::<_, ApiError>(axum::Json(meta.object()).into_response())
        }
        .await,
    )
}

/// `GET /v1/files/{id}/content`.
pub(crate) async fn content(State(app): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    respond(
        async {
            let area = files_area(&app)?;
            area.get(&id).await?.ok_or_else(|| not_found("file", "file_not_found", &id))?;
            let bytes = area.bytes(&id).await?;
            Ok::<_, ApiError>(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        .await,
    )
}

/// `DELETE /v1/files/{id}`. Vector stores the file was added to keep its chunks.
pub(crate) async fn delete(State(app): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    respond(
        async {
            let area = files_area(&app)?;
            area.get(&id).await?.ok_or_else(|| not_found("file", "file_not_found", &id))?;
            // The description goes first: without it the file no longer exists, whatever happens next.
            let meta = area.meta(&id);
            tokio::fs::remove_file(&meta).await.map_err(|e| io_error(&meta, e))?;
            let data = area.data(&id);
            if let Err(e) = tokio::fs::remove_file(&data).await {
                tracing::warn!(path = %data.display(), error = %e, "removing a deleted file's bytes failed");
            }
            Ok::<_, ApiError>(
                axum::Json(serde_json::json!({ "id": id, "object": "file", "deleted": true })).into_response(),
            )
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ids(page: &serde_json::Value) -> Vec<String> {
        page["data"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    }

    fn query(s: &str) -> ListQuery {
        ListQuery::of(&format!("/x?{s}").parse::<Uri>().unwrap()).unwrap()
    }

    #[test]
    fn pages_follow_the_cursor_in_either_order() {
        let items: Vec<String> = ["a1", "a2", "a3", "a4", "a5"].iter().map(|s| s.to_string()).collect();
        let p = page(items.clone(), |s: &String| s.as_str(), &query("limit=2"), 100, 20).unwrap();
        assert_eq!(ids(&p), ["a5", "a4"]);
        assert_eq!(p["has_more"], true);
        assert_eq!(p["last_id"], "a4");
        let p = page(items.clone(), |s: &String| s.as_str(), &query("limit=2&after=a4"), 100, 20).unwrap();
        assert_eq!(ids(&p), ["a3", "a2"]);
        let p = page(items.clone(), |s: &String| s.as_str(), &query("limit=2&after=a2"), 100, 20).unwrap();
        assert_eq!((ids(&p), p["has_more"].as_bool()), (vec!["a1".to_string()], Some(false)));
        let p = page(items.clone(), |s: &String| s.as_str(), &query("order=asc&after=a3"), 100, 20).unwrap();
        assert_eq!(ids(&p), ["a4", "a5"]);
        let p = page(items.clone(), |s: &String| s.as_str(), &query("order=asc&limit=1&before=a4"), 100, 20).unwrap();
        assert_eq!((ids(&p), p["has_more"].as_bool()), (vec!["a3".to_string()], Some(true)));
        assert!(page(items.clone(), |s: &String| s.as_str(), &query("limit=0"), 100, 20).is_err());
        assert!(page(items, |s: &String| s.as_str(), &query("order=up"), 100, 20).is_err());
        assert!(ListQuery::of(&"/x?limit=many".parse::<Uri>().unwrap()).is_err());
    }

    #[test]
    fn ids_and_filenames_cannot_leave_the_directory() {
        assert!(valid_id(&new_id("file-"), "file-"));
        assert!(!valid_id("file-../x", "file-"));
        assert!(!valid_id("file-", "file-"));
        assert!(!valid_id("vs_abc", "file-"));
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\docs\\a.md"), "a.md");
        assert_eq!(clean_filename("a\nb.md"), "ab.md");
        assert_eq!(clean_filename("dir/"), "upload");
    }
}
