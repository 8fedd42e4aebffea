//! Retrieval over HTTP: `POST /v1/search` (keel's own endpoint, with the API key of any other), and the
//! collection admin API (`GET /admin/collections`, `DELETE /admin/collections/{name}`). Collections are built
//! with `keel ingest`; a search sees a newer ingest within `keel_rag::collections::RECHECK`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use keel_config::RetrievalMode;
use keel_pipeline::{InboundApi, Passage, RetrieveError, Retriever};
use keel_rag::{Collections, Filter, Mode, RagError};
use serde::Deserialize;

use crate::body::RawBody;
use crate::{ApiError, AppState};

/// The most results one search may ask for.
const MAX_K: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    collection: String,
    query: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    k: Option<usize>,
    /// Metadata every result must have (`{"kind": "markdown"}`).
    #[serde(default)]
    filter: BTreeMap<String, String>,
}

pub(crate) fn collections(app: &AppState) -> Result<&keel_rag::Collections, ApiError> {
    app.inner.collections.as_deref().ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        ..ApiError::invalid("retrieval is off: no embeddings model for collections is configured ([rag] model)", None)
            .code("retrieval_off")
    })
}

/// A retrieval error in the API's format.
pub(crate) fn api_error(e: RagError) -> ApiError {
    let message = e.to_string();
    match e {
        RagError::NoCollection(_) => ApiError {
            status: StatusCode::NOT_FOUND,
            ..ApiError::invalid(message, Some("collection".into())).code("collection_not_found")
        },
        RagError::BadName(_) => ApiError::invalid(message, Some("collection".into())),
        RagError::BadFilter(_) => ApiError::invalid(message, Some("filter".into())),
        RagError::Invalid(_) => ApiError::invalid(message, None),
        RagError::ModelMismatch { .. } => ApiError {
            status: StatusCode::CONFLICT,
            ..ApiError::invalid(message, Some("collection".into())).code("embedding_model_mismatch")
        },
        RagError::Embed(_) => ApiError::new(StatusCode::BAD_GATEWAY, "api_error", message).code("embeddings_failed"),
        RagError::Dimensions { .. } | RagError::Index(_) | RagError::Io { .. } => {
            tracing::error!(error = %message, "retrieval failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", message)
        }
    }
}

/// The grounding stage's view of the collections.
pub(crate) fn retriever(collections: Arc<Collections>) -> Arc<dyn Retriever> {
    Arc::new(Grounding(collections))
}

struct Grounding(Arc<Collections>);

impl Retriever for Grounding {
    fn retrieve(
        &self,
        collection: String,
        query: String,
        mode: RetrievalMode,
        k: usize,
    ) -> BoxFuture<'_, Result<Vec<Passage>, RetrieveError>> {
        let mode = match mode {
            RetrievalMode::Bm25 => Mode::Bm25,
            RetrievalMode::Vector => Mode::Vector,
            RetrievalMode::Hybrid => Mode::Hybrid,
        };
        async move {
            let hits = self.0.search(&collection, &query, mode, k, &Filter::default()).await.map_err(|e| match e {
                RagError::NoCollection(name) => RetrieveError::NoCollection(name),
                e @ (RagError::ModelMismatch { .. } | RagError::Dimensions { .. } | RagError::BadName(_)) => {
                    RetrieveError::Misconfigured(e.to_string())
                }
                e => RetrieveError::Failed(e.to_string()),
            })?;
            Ok(hits
                .into_iter()
                .map(|h| Passage {
                    index: 0,
                    collection: collection.clone(),
                    source: h.source,
                    headings: h.headings,
                    start: h.start,
                    end: h.end,
                    score: h.score,
                    text: h.text,
                })
                .collect())
        }
        .boxed()
    }
}

/// `POST /v1/search`.
pub(crate) async fn search(State(app): State<AppState>, body: RawBody) -> Response {
    let result = async {
        let collections = collections(&app)?;
        let req: SearchRequest = body.parse()?;
        let mode = match req.mode.as_deref() {
            None => Mode::Hybrid,
            Some(m) => Mode::parse(m).ok_or_else(|| {
                ApiError::invalid(format!("mode: {m:?} is not one of bm25, vector, hybrid"), Some("mode".into()))
            })?,
        };
        let k = req.k.unwrap_or(5);
        if k == 0 || k > MAX_K {
            return Err(ApiError::invalid(format!("k: must be between 1 and {MAX_K}"), Some("k".into())));
        }
        if req.query.trim().is_empty() {
            return Err(ApiError::invalid("query: must not be empty", Some("query".into())));
        }
        let filter = Filter { all: req.filter.into_iter().collect() };
        let hits = collections.search(&req.collection, &req.query, mode, k, &filter).await.map_err(api_error)?;
        Ok::<_, ApiError>(
            axum::Json(serde_json::json!({
                "object": "list",
                "collection": req.collection,
                "mode": mode,
                "model": collections.model(),
                "data": hits,
            }))
            .into_response(),
        )
    };
    result.await.unwrap_or_else(|e| e.into_response_for(InboundApi::OpenAi))
}

/// `GET /admin/collections`.
pub(crate) async fn list(State(app): State<AppState>) -> Response {
    let result = async {
        let collections = collections(&app)?;
        let data: Vec<serde_json::Value> = collections
            .list()
            .await
            .map_err(api_error)?
            .into_iter()
            .map(|(info, stats)| {
                serde_json::json!({
                    "name": info.name, "model": info.model, "dimensions": info.dims,
                    "files": stats.sources, "chunks": stats.chunks, "tokens": stats.tokens,
                })
            })
            .collect();
        Ok::<_, ApiError>(axum::Json(serde_json::json!({ "object": "list", "data": data })).into_response())
    };
    result.await.unwrap_or_else(|e| e.into_response_for(InboundApi::OpenAi))
}

/// `DELETE /admin/collections/{name}`.
pub(crate) async fn delete(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    let result = async {
        let collections = collections(&app)?;
        if collections.delete(&name).await.map_err(api_error)? {
            Ok::<_, ApiError>(axum::Json(serde_json::json!({ "name": name, "deleted": true })).into_response())
        } else {
            Err(api_error(RagError::NoCollection(name)))
        }
    };
    result.await.unwrap_or_else(|e| e.into_response_for(InboundApi::OpenAi))
}
