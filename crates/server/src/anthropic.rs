//! The handler of the Anthropic Messages API (parse → run → encode): requests are translated to the canonical
//! shape, served by the same request path as every other request, and the answer translated back.

use axum::extract::State;
use axum::response::Response;
use keel_pipeline::{Operation, Rejection};
use keel_types::ChatRequest;
use keel_types::anthropic::MessagesRequest;

use crate::arrival::Arrival;
use crate::body::RawBody;
use crate::{AppState, encode};

/// `POST /v1/messages`.
pub(crate) async fn messages(State(app): State<AppState>, mut arrival: Arrival, body: RawBody) -> Response {
    let req = body
        .parse::<MessagesRequest>()
        .and_then(|m| translate(m, arrival.anthropic_beta.as_deref()))
        .and_then(|r| app.template(r, &mut arrival))
        .and_then(|r| {
            if r.messages.is_empty() {
                return Err(Rejection::invalid("messages: must contain at least one message", Some("messages".into())));
            }
            Ok(r)
        });
    let resp = app.serve(arrival, body, req.map(Operation::chat)).await;
    encode::anthropic(resp)
}

/// The canonical request of a Messages request; Anthropic's own fields and betas travel with it, for Anthropic
/// upstreams only.
fn translate(req: MessagesRequest, beta: Option<&str>) -> Result<ChatRequest, Rejection> {
    if req.model.is_empty() {
        return Err(Rejection::invalid("model: must not be empty", Some("model".into())));
    }
    let mut chat = keel_translate::messages_request_to_chat(req).map_err(|e| Rejection::invalid(e.message, e.param))?;
    if let (Some(origin), Some(beta)) = (chat.anthropic.as_mut(), beta) {
        origin.beta = Some(beta.to_string());
    }
    Ok(chat)
}
