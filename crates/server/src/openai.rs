//! Handlers of the OpenAI API: chat completions, embeddings, models.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_pipeline::{GatewayError, GatewayRequest, InboundApi, Operation, Output, RequestContext, RequestId};
use keel_types::models::{ModelInfo, ModelList};
use keel_types::{ChatRequest, EmbeddingInput, EmbeddingsRequest, Role};
use tower::ServiceExt;

use crate::auth::{self, Principal};
use crate::body::RawBody;
use crate::log::{Answer, Entry, error_class};
use crate::{ApiError, AppState, body, stream};
use keel_pipeline::cost;

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(
    State(app): State<AppState>,
    Extension(id): Extension<RequestId>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let api = InboundApi::OpenAi;
    let principal = principal.map(|Extension(p)| p);
    let mut entry = app.inner.log.start(&id, api, "chat", &headers);
    entry.principal(principal.as_ref());
    if let Ok(raw) = &body {
        entry.request(raw);
    }
    let mut req: ChatRequest = match body::parse(body).and_then(validate_chat) {
        Ok(r) => r,
        Err(e) => {
            entry.reject(&e).await;
            return e.into_response_for(api);
        }
    };
    let wants_usage = req.include_usage();
    let mut ctx = RequestContext::new(id, api, &req.model);
    entry.attach(&ctx, req.stream, req.user.as_deref());
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
            (Json(r).into_response(), cost)
        }
        Ok(Output::ChatStream(s)) => (stream::openai(entry.watch(app.inner.shutdown.guard(s)), wants_usage), None),
        Ok(Output::Embeddings(_)) => (unexpected(), None),
        Err(e) => failed(entry, e, api).await,
    };
    set_served_by(&mut out, served_by);
    set_cost(&mut out, cost);
    set_cache(&mut out, resp.ctx.cache.as_ref());
    out
}

/// The request's cache scope (its tenant) and the mode the client asked for in `x-keel-cache`.
pub(crate) fn cache_request(
    ctx: &mut RequestContext,
    principal: Option<&Principal>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    ctx.tenant = match principal {
        Some(Principal::Key(k)) => match &k.tenant {
            Some(t) => format!("tenant:{t}"),
            None => format!("key:{}", k.id),
        },
        Some(Principal::Admin) | None => String::new(),
    };
    if let Some(v) = headers.get("x-keel-cache") {
        let mode = v.to_str().ok().and_then(keel_config::CacheMode::parse).ok_or_else(|| {
            ApiError::invalid("x-keel-cache: expected off, read, write or read-write", Some("x-keel-cache".into()))
        })?;
        ctx.cache_mode = Some(mode);
    }
    Ok(())
}

/// `x-keel-cache` (hit, semantic_hit, miss, bypass) and, for a semantic hit, `x-keel-cache-similarity`.
pub(crate) fn set_cache(resp: &mut Response, outcome: Option<&keel_pipeline::CacheOutcome>) {
    let Some(outcome) = outcome else { return };
    resp.headers_mut().insert("x-keel-cache", HeaderValue::from_static(outcome.as_str()));
    if let keel_pipeline::CacheOutcome::Hit { similarity: Some(s), .. } = outcome
        && let Ok(v) = HeaderValue::from_str(&format!("{s:.4}"))
    {
        resp.headers_mut().insert("x-keel-cache-similarity", v);
    }
}

/// A request the pipeline could not answer: logged with its class, answered in the API's error format.
pub(crate) async fn failed(entry: Entry, e: GatewayError, api: InboundApi) -> (Response, Option<f64>) {
    let class = error_class(&e);
    let err = ApiError::from(e);
    entry.finish(Answer::Failed(&err, class)).await;
    (err.into_response_for(api), None)
}

/// `x-keel-cost-usd`: what the request cost, when keel knows the model's price.
pub(crate) fn set_cost(resp: &mut Response, cost: Option<f64>) {
    if let Some(v) = cost.and_then(|c| HeaderValue::from_str(&format!("{c:.8}")).ok()) {
        resp.headers_mut().insert("x-keel-cost-usd", v);
    }
}

fn validate_chat(req: ChatRequest) -> Result<ChatRequest, ApiError> {
    if req.model.is_empty() {
        return Err(ApiError::invalid("model: must not be empty", Some("model".into())));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages: must contain at least one message", Some("messages".into())));
    }
    for (i, m) in req.messages.iter().enumerate() {
        // An assistant turn may be only tool calls (or a refusal); every other message says something.
        let says_something = m.content.is_some()
            || (m.role == Role::Assistant
                && (m.tool_calls.as_ref().is_some_and(|c| !c.is_empty())
                    || m.refusal.is_some()
                    || m.extra.contains_key("function_call")));
        if !says_something {
            let what = if m.role == Role::Assistant { "content or tool_calls" } else { "content" };
            return Err(ApiError::invalid(
                format!("messages[{i}]: a message with role `{}` needs {what}", role_name(m.role)),
                Some(format!("messages[{i}].content")),
            ));
        }
    }
    Ok(req)
}

fn role_name(r: Role) -> String {
    serde_json::to_value(r).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(app): State<AppState>,
    Extension(id): Extension<RequestId>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let api = InboundApi::OpenAi;
    let principal = principal.map(|Extension(p)| p);
    let mut entry = app.inner.log.start(&id, api, "embeddings", &headers);
    entry.principal(principal.as_ref());
    if let Ok(raw) = &body {
        entry.request(raw);
    }
    let req: EmbeddingsRequest = match body::parse(body).and_then(validate_embeddings) {
        Ok(r) => r,
        Err(e) => {
            entry.reject(&e).await;
            return e.into_response_for(api);
        }
    };
    let ctx = RequestContext::new(id, api, &req.model);
    entry.attach(&ctx, false, req.user.as_deref());
    let count = || cost::count_embeddings_input(&req.model, &req);
    match auth::admit(&app, principal.as_ref(), &req.model, None, cost::embeddings_input_upper_bound(&req), count).await
    {
        Ok(admitted) => entry.admitted(admitted),
        Err(e) => {
            entry.reject(&e).await;
            return e.into_response_for(api);
        }
    }
    let resp = run(&app, GatewayRequest { ctx, op: Operation::Embeddings(req) }).await;
    let served_by = served_by(&resp.ctx);
    let (mut out, cost) = match resp.result {
        Ok(Output::Embeddings(r)) => {
            let cost = entry.finish(Answer::Embeddings(&r)).await;
            (Json(r).into_response(), cost)
        }
        Ok(_) => (unexpected(), None),
        Err(e) => failed(entry, e, api).await,
    };
    set_served_by(&mut out, served_by);
    set_cost(&mut out, cost);
    out
}

fn validate_embeddings(req: EmbeddingsRequest) -> Result<EmbeddingsRequest, ApiError> {
    if req.model.is_empty() {
        return Err(ApiError::invalid("model: must not be empty", Some("model".into())));
    }
    let empty = match &req.input {
        EmbeddingInput::One(s) => s.is_empty(),
        EmbeddingInput::Many(v) => v.is_empty() || v.iter().any(String::is_empty),
        EmbeddingInput::Tokens(v) => v.is_empty(),
        EmbeddingInput::ManyTokens(v) => v.is_empty() || v.iter().any(Vec::is_empty),
    };
    if empty {
        return Err(ApiError::invalid("input: must not be empty or contain empty strings", Some("input".into())));
    }
    Ok(req)
}

/// Whether the caller may use the model alias `name` (a key may be limited to some).
fn visible(principal: Option<&Principal>, name: &str) -> bool {
    match principal {
        Some(Principal::Key(k)) => k.models.is_empty() || k.models.iter().any(|m| m == name),
        Some(Principal::Admin) | None => true,
    }
}

/// `GET /v1/models`: the configured model aliases the caller may use.
pub(crate) async fn models(State(app): State<AppState>, principal: Option<Extension<Principal>>) -> Json<ModelList> {
    let principal = principal.map(|Extension(p)| p);
    let data =
        app.inner.routes.names().into_iter().filter(|n| visible(principal.as_ref(), n)).map(model_info).collect();
    Json(ModelList { object: "list".into(), data })
}

/// `GET /v1/models/{id}`.
pub(crate) async fn model(
    State(app): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Response {
    let principal = principal.map(|Extension(p)| p);
    if app.inner.routes.targets(&id).is_some() && visible(principal.as_ref(), &id) {
        return Json(model_info(id)).into_response();
    }
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: Some("model_not_found".into()),
        ..ApiError::invalid(format!("The model `{id}` does not exist in this keel gateway."), Some("model".into()))
    }
    .into_response_for(InboundApi::OpenAi)
}

fn model_info(id: String) -> ModelInfo {
    ModelInfo { id, object: "model".into(), created: 0, owned_by: "keel".into() }
}

pub(crate) async fn run(app: &AppState, req: GatewayRequest) -> keel_pipeline::GatewayResponse {
    match app.inner.pipeline.clone().oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// `provider/model` of the attempt that answered (`x-keel-served-by`) and how many attempts the request took
/// (`x-keel-attempts`), for the response headers.
pub(crate) fn served_by(ctx: &RequestContext) -> Option<(HeaderValue, HeaderValue)> {
    let attempts = ctx.attempts.snapshot();
    let a = attempts.iter().rev().find(|a| matches!(a.outcome, keel_pipeline::AttemptOutcome::Ok))?;
    let served = HeaderValue::from_str(&format!("{}/{}", a.provider, a.model)).ok()?;
    Some((served, HeaderValue::from(attempts.len())))
}

/// Sets the headers of [`served_by`] on a response.
pub(crate) fn set_served_by(resp: &mut Response, served: Option<(HeaderValue, HeaderValue)>) {
    if let Some((by, attempts)) = served {
        resp.headers_mut().insert("x-keel-served-by", by);
        resp.headers_mut().insert("x-keel-attempts", attempts);
    }
}

/// The pipeline answered an operation with the output of another: a bug in keel, reported as such.
pub(crate) fn unexpected() -> Response {
    tracing::error!("pipeline returned an output of the wrong kind");
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "server_error",
        ..ApiError::invalid("internal error: unexpected output kind", None)
    }
    .into_response_for(InboundApi::OpenAi)
}
