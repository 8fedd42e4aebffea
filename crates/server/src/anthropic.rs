//! The handler of the Anthropic Messages API. Requests are translated to the canonical shape, served by the
//! same pipeline as every other request, and the answer translated back.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use keel_pipeline::{GatewayRequest, InboundApi, Operation, Output, RequestContext, RequestId};
use keel_types::anthropic::MessagesRequest;

use crate::openai::{run, served_by, set_served_by, unexpected};
use crate::{ApiError, AppState, body, stream};

/// `POST /v1/messages`.
pub(crate) async fn messages(
    State(app): State<AppState>,
    Extension(id): Extension<RequestId>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = match body::parse::<MessagesRequest>(body).and_then(translate) {
        Ok(r) => r,
        Err(e) => return e.into_response_for(InboundApi::Anthropic),
    };
    let model = req.model.clone();
    let ctx = RequestContext::new(id.clone(), InboundApi::Anthropic, &model);
    let resp = run(&app, GatewayRequest { ctx, op: Operation::Chat(req) }).await;
    let served_by = served_by(&resp.ctx);
    let mut out = match resp.result {
        Ok(Output::Chat(r)) => Json(keel_translate::chat_response_to_messages(r)).into_response(),
        Ok(Output::ChatStream(s)) => stream::anthropic(s, id, model),
        Ok(Output::Embeddings(_)) => unexpected(),
        Err(e) => ApiError::from(e).into_response_for(InboundApi::Anthropic),
    };
    set_served_by(&mut out, served_by);
    out
}

fn translate(req: MessagesRequest) -> Result<keel_types::ChatRequest, ApiError> {
    if req.model.is_empty() {
        return Err(ApiError::invalid("model: must not be empty", Some("model".into())));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages: must contain at least one message", Some("messages".into())));
    }
    keel_translate::messages_request_to_chat(req).map_err(|e| ApiError::invalid(e.message, e.param))
}
