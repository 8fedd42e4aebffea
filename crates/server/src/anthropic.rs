//! The handler of the Anthropic Messages API. Requests are translated to the canonical shape, served by the
//! same pipeline as every other request, and the answer translated back.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use keel_pipeline::{GatewayRequest, InboundApi, Operation, Output, RequestContext, RequestId};
use keel_types::anthropic::MessagesRequest;

use crate::auth::{self, Principal};
use crate::body::RawBody;
use crate::log::Answer;
use crate::openai::{cache_request, failed, run, served_by, set_cache, set_cost, set_served_by, unexpected};
use crate::{ApiError, AppState, body, stream};
use keel_pipeline::cost;

/// `POST /v1/messages`.
pub(crate) async fn messages(
    State(app): State<AppState>,
    Extension(id): Extension<RequestId>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let api = InboundApi::Anthropic;
    let principal = principal.map(|Extension(p)| p);
    let mut entry = app.inner.log.start(&id, api, "messages", &headers);
    entry.principal(principal.as_ref());
    if let Ok(raw) = &body {
        entry.request(raw);
    }
    let mut req = match body::parse::<MessagesRequest>(body).and_then(translate) {
        Ok(mut r) => {
            if let (Some(origin), Some(beta)) =
                (r.anthropic.as_mut(), headers.get("anthropic-beta").and_then(|v| v.to_str().ok()))
            {
                origin.beta = Some(beta.to_string());
            }
            r
        }
        Err(e) => {
            entry.reject(&e).await;
            return e.into_response_for(api);
        }
    };
    let model = req.model.clone();
    let mut ctx = RequestContext::new(id.clone(), api, &model);
    entry.attach(&ctx, req.stream, None);
    if let Err(e) = cache_request(&mut ctx, principal.as_ref(), &headers) {
        entry.reject(&e).await;
        return e.into_response_for(api);
    }
    let (bound, model) = (cost::chat_prompt_upper_bound(&req), req.model.clone());
    match auth::admit(&app, principal.as_ref(), &model, Some(&mut req), bound, || 0).await {
        Ok(admitted) => entry.admitted(admitted),
        Err(e) => {
            entry.reject(&e).await;
            return e.into_response_for(api);
        }
    }
    let resp = run(&app, GatewayRequest { ctx, op: Operation::Chat(req) }).await;
    let served_by = served_by(&resp.ctx);
    entry.cache(resp.ctx.cache.clone());
    let (mut out, cost) = match resp.result {
        Ok(Output::Chat(r)) => {
            let cost = entry.finish(Answer::Chat(&r)).await;
            (Json(keel_translate::chat_response_to_messages(r)).into_response(), cost)
        }
        Ok(Output::ChatStream(s)) => (stream::anthropic(entry.watch(app.inner.shutdown.guard(s)), id, model), None),
        Ok(Output::Embeddings(_)) => (unexpected(), None),
        Err(e) => failed(entry, e, api).await,
    };
    set_served_by(&mut out, served_by);
    set_cost(&mut out, cost);
    set_cache(&mut out, resp.ctx.cache.as_ref());
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
