//! Handlers of the OpenAI API: chat completions, embeddings (each parse → run → encode), models.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_pipeline::{InboundApi, Operation, Principal, Rejection};
use keel_types::models::{ModelInfo, ModelList};
use keel_types::{ChatRequest, EmbeddingInput, EmbeddingsRequest, Role};

use crate::arrival::Arrival;
use crate::body::RawBody;
use crate::{ApiError, AppState, encode};

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(State(app): State<AppState>, mut arrival: Arrival, body: RawBody) -> Response {
    let req = body.parse::<ChatRequest>().and_then(|r| app.template(r, &mut arrival)).and_then(validate_chat);
    let wants_usage = req.as_ref().is_ok_and(ChatRequest::include_usage);
    let resp = app.serve(arrival, body, req.map(Operation::chat)).await;
    encode::openai(resp, wants_usage)
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(State(app): State<AppState>, arrival: Arrival, body: RawBody) -> Response {
    let req = body.parse::<EmbeddingsRequest>().and_then(validate_embeddings);
    let resp = app.serve(arrival, body, req.map(Operation::embeddings)).await;
    encode::openai(resp, false)
}

fn validate_chat(req: ChatRequest) -> Result<ChatRequest, Rejection> {
    if req.model.is_empty() {
        return Err(Rejection::invalid("model: must not be empty", Some("model".into())));
    }
    if req.messages.is_empty() {
        return Err(Rejection::invalid("messages: must contain at least one message", Some("messages".into())));
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
            return Err(Rejection::invalid(
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

fn validate_embeddings(req: EmbeddingsRequest) -> Result<EmbeddingsRequest, Rejection> {
    if req.model.is_empty() {
        return Err(Rejection::invalid("model: must not be empty", Some("model".into())));
    }
    let empty = match &req.input {
        EmbeddingInput::One(s) => s.is_empty(),
        EmbeddingInput::Many(v) => v.is_empty() || v.iter().any(String::is_empty),
        EmbeddingInput::Tokens(v) => v.is_empty(),
        EmbeddingInput::ManyTokens(v) => v.is_empty() || v.iter().any(Vec::is_empty),
    };
    if empty {
        return Err(Rejection::invalid("input: must not be empty or contain empty strings", Some("input".into())));
    }
    Ok(req)
}

/// `GET /v1/models`: the configured model aliases the caller may use.
pub(crate) async fn models(State(app): State<AppState>, principal: Option<Extension<Principal>>) -> Json<ModelList> {
    let principal = principal.map(|Extension(p)| p);
    let data = app
        .inner
        .routes
        .names()
        .into_iter()
        .filter(|n| principal.as_ref().is_none_or(|p| p.may_use(n)))
        .map(model_info)
        .collect();
    Json(ModelList { object: "list".into(), data })
}

/// `GET /v1/models/{id}`.
pub(crate) async fn model(
    State(app): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Response {
    let principal = principal.map(|Extension(p)| p);
    if app.inner.routes.knows(&id) && principal.as_ref().is_none_or(|p| p.may_use(&id)) {
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
