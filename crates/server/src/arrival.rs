//! What the edge knows of an API request when it arrives, read once from its HTTP head: keel's id for it, the
//! endpoint, the caller (as the identity layer found it), and what the client said in its headers (its own
//! request id, the cache mode it asks for, its log tags and metadata, Anthropic betas). The request's context
//! starts here; no stage reads the headers again.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use keel_pipeline::{ClientFacts, Endpoint, Principal, RequestContext, RequestId};

/// A request's context as it arrives, and the facts only the edge uses.
pub(crate) struct Arrival {
    pub ctx: RequestContext,
    /// `anthropic-beta`, passed on to Anthropic upstreams.
    pub anthropic_beta: Option<String>,
}

impl Arrival {
    pub(crate) fn new(id: RequestId, endpoint: Endpoint, principal: Option<Principal>, headers: &HeaderMap) -> Self {
        let mut ctx = RequestContext::new(id, endpoint);
        ctx.principal = principal;
        ctx.client = ClientFacts {
            request_id: crate::request_id::client_id(headers).map(str::to_string),
            cache: headers.get("x-keel-cache").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            metadata: Arc::new(crate::log::metadata(headers)),
        };
        Self { ctx, anthropic_beta: headers.get("anthropic-beta").and_then(|v| v.to_str().ok()).map(str::to_string) }
    }

    /// The arrival of a request on `parts`, when its path is an API endpoint.
    pub(crate) fn of(parts: &Parts) -> Option<Self> {
        let endpoint = Endpoint::of_path(parts.uri.path())?;
        // The request id layer gives every request one; a request without it still gets an id of its own.
        let id = match parts.extensions.get::<RequestId>() {
            Some(id) => id.clone(),
            None => RequestId(Arc::from(uuid::Uuid::now_v7().to_string())),
        };
        Some(Self::new(id, endpoint, parts.extensions.get::<Principal>().cloned(), &parts.headers))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Arrival {
    type Rejection = axum::response::Response;

    /// Only the API endpoints' handlers extract an arrival; on any other path it is a bug in keel, said so.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::of(parts)
            .ok_or_else(|| crate::encode::internal("an API handler served a path that is not an API endpoint"))
    }
}
