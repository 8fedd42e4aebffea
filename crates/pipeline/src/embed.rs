//! Embeddings for keel's own uses (ingesting and searching collections) through the call stage: the alias's
//! targets in order with retries, fallbacks, timeouts and circuit breakers, exactly as a client's
//! `/v1/embeddings` request is served.

use std::sync::Arc;

use keel_types::{EmbeddingInput, EmbeddingsRequest};
use tower::ServiceExt;

use crate::cache::{EmbedError, vectors_of};
use crate::route::{RoutePlan, RouteTable};
use crate::{Call, Endpoint, GatewayRequest, Operation, Output, RequestContext, RequestId};

/// Embeds texts through one alias's route.
#[derive(Clone)]
pub struct RoutedEmbedder {
    call: Call,
    plan: Arc<RoutePlan>,
    model: String,
}

impl std::fmt::Debug for RoutedEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedEmbedder").field("alias", &self.plan.alias).finish_non_exhaustive()
    }
}

/// Why an alias cannot embed for a collection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedRouteError {
    #[error("model {0:?} is not configured")]
    Unknown(String),
    #[error(
        "model {alias:?} falls back across different models ({models}): the vectors of a collection must all come \
         from one model; use one model name (several providers of it are fine)"
    )]
    MixedModels { alias: String, models: String },
}

impl RoutedEmbedder {
    pub fn new(call: Call, routes: &RouteTable, alias: &str) -> Result<Self, EmbedRouteError> {
        let plan = routes.plan(alias).cloned().ok_or_else(|| EmbedRouteError::Unknown(alias.to_string()))?;
        let mut models: Vec<&str> = plan.targets.iter().map(|t| t.model.as_str()).collect();
        models.dedup();
        let [model] = models.as_slice() else {
            return Err(EmbedRouteError::MixedModels { alias: alias.to_string(), models: models.join(", ") });
        };
        let model = model.to_string();
        Ok(Self { call, plan, model })
    }

    /// The model the vectors come from (the same whichever provider serves it).
    pub fn model(&self) -> &str {
        &self.model
    }

    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let n = texts.len();
        let req = EmbeddingsRequest {
            model: self.plan.alias.clone(),
            input: EmbeddingInput::Many(texts),
            encoding_format: None,
            dimensions: None,
            user: None,
            extra: Default::default(),
        };
        let mut ctx = RequestContext::new(RequestId(uuid::Uuid::now_v7().to_string().into()), Endpoint::Embeddings);
        ctx.requested_model = self.plan.alias.clone();
        ctx.route = Some(self.plan.clone());
        let op = Operation::embeddings(req);
        let Ok(resp) = self.call.clone().oneshot(GatewayRequest { ctx, op }).await;
        match resp.result {
            Ok(Output::Embeddings(r)) => vectors_of(r, n),
            Ok(_) => Err(EmbedError::Encoding),
            Err(e) => Err(EmbedError::Failed(e.to_string())),
        }
    }
}
