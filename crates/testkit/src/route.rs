//! Which endpoint a request is for, and what a `Reply` looks like on that endpoint.

use serde_json::Value;

use crate::answer::{Answer, Meta, Rendered, last_user_text};
use crate::reply::{Reply, ReplyBody};
use crate::state::{Shared, unix_secs};
use crate::{anthropic, openai};

/// The endpoints the mock serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// OpenAI chat completions; `deployment` is set for the Azure path form.
    Chat {
        deployment: Option<String>,
    },
    Embeddings {
        deployment: Option<String>,
    },
    /// Anthropic messages.
    Messages,
    Models,
    Control(Control),
    NotFound,
}

/// The `/_mock/*` endpoints that script the mock from another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Script,
    Default,
    Attempts,
    Reset,
}

/// The wire format of an endpoint, which decides how errors look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    OpenAi,
    Anthropic,
}

impl Route {
    pub(crate) fn of(method: &str, path: &str) -> Route {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("POST", ["openai", "deployments", d, "chat", "completions"]) => {
                Route::Chat { deployment: Some((*d).to_owned()) }
            }
            ("POST", ["openai", "deployments", d, "embeddings"]) => {
                Route::Embeddings { deployment: Some((*d).to_owned()) }
            }
            // Vendors mount the OpenAI API under a prefix of their own (`/v1`, `/openai/v1`, `/api/v1`, none).
            ("POST", [.., "chat", "completions"]) => Route::Chat { deployment: None },
            ("POST", [.., "embeddings"]) => Route::Embeddings { deployment: None },
            ("POST", ["v1", "messages"]) => Route::Messages,
            ("GET", [.., "models"]) => Route::Models,
            ("POST", ["_mock", "script"]) => Route::Control(Control::Script),
            ("POST", ["_mock", "default"]) => Route::Control(Control::Default),
            ("GET", ["_mock", "attempts"]) => Route::Control(Control::Attempts),
            ("POST", ["_mock", "reset"]) => Route::Control(Control::Reset),
            _ => Route::NotFound,
        }
    }

    fn dialect(&self) -> Dialect {
        match self {
            Route::Messages => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }
}

impl Dialect {
    fn error(self, status: u16, kind: &str, message: &str, code: Option<&str>) -> Rendered {
        let body = match self {
            Dialect::OpenAi => openai::error_body(kind, message, code),
            Dialect::Anthropic => anthropic::error_body(kind, message),
        };
        Rendered::json(status, &body)
    }
}

/// The 404 for any path the mock does not serve, in OpenAI's format.
pub(crate) fn not_found(method: &str, target: &str) -> Rendered {
    let message = format!("Unknown request URL: {method} {target}");
    Dialect::OpenAi.error(404, "invalid_request_error", &message, Some("unknown_url"))
}

/// The response to `reply` on `route`, given the request's JSON body (`None` if it was not JSON).
pub(crate) fn render(route: &Route, request: Option<&Value>, reply: &Reply, shared: &Shared) -> Rendered {
    let dialect = route.dialect();
    let answer = match &reply.body {
        ReplyBody::Error { kind, message, code } => {
            return dialect.error(reply.status, kind, message, code.as_deref());
        }
        ReplyBody::Json(value) => return Rendered::json(reply.status, value),
        ReplyBody::Raw { content_type, body } => {
            return Rendered::Whole {
                status: reply.status,
                content_type: content_type.clone(),
                body: body.clone().into_bytes(),
            };
        }
        ReplyBody::Echo => None,
        ReplyBody::Text(text) => Some(Answer::Text(text.clone())),
        ReplyBody::ToolCalls(calls) => Some(Answer::ToolCalls(calls.clone())),
    };
    if *route == Route::Models {
        return Rendered::json(reply.status, &openai::models());
    }
    let Some(request) = request.filter(|v| v.is_object()) else {
        let message = "The request body is not a JSON object.";
        return dialect.error(400, "invalid_request_error", message, None);
    };
    let meta =
        Meta { seq: shared.next_seq(), created: unix_secs(), model: model(route, request), status: reply.status };
    let answer = answer.unwrap_or_else(|| Answer::echo(&last_user_text(&request["messages"])));
    match route {
        Route::Chat { .. } => openai::chat(request, &answer, &meta),
        Route::Messages => anthropic::messages(request, &answer, &meta),
        Route::Embeddings { .. } => match openai::embeddings(request, &meta) {
            Ok(body) => Rendered::json(reply.status, &body),
            Err(message) => dialect.error(400, "invalid_request_error", &message, None),
        },
        // Models was answered above, and the server answers Control and NotFound itself.
        Route::Models | Route::Control(_) | Route::NotFound => not_found("POST", "/"),
    }
}

/// The request's `model`, else the Azure deployment name, else "mock-model".
fn model(route: &Route, request: &Value) -> String {
    if let Some(model) = request["model"].as_str() {
        return model.to_owned();
    }
    match route {
        Route::Chat { deployment: Some(d) } | Route::Embeddings { deployment: Some(d) } => d.clone(),
        _ => "mock-model".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let chat = Route::Chat { deployment: None };
        assert_eq!(Route::of("POST", "/v1/chat/completions"), chat);
        assert_eq!(Route::of("POST", "/chat/completions"), chat);
        assert_eq!(
            Route::of("POST", "/openai/deployments/gpt4o/chat/completions"),
            Route::Chat { deployment: Some("gpt4o".into()) }
        );
        assert_eq!(Route::of("GET", "/v1/chat/completions"), Route::NotFound);
        assert_eq!(Route::of("POST", "/v1/messages"), Route::Messages);
        assert_eq!(Route::of("POST", "/embeddings"), Route::Embeddings { deployment: None });
        assert_eq!(Route::of("GET", "/v1/models"), Route::Models);
        assert_eq!(Route::of("GET", "/_mock/attempts"), Route::Control(Control::Attempts));
        assert_eq!(Route::of("POST", "/v1/other"), Route::NotFound);
    }
}
