//! A gateway response in the shape of the API the client called: the answer whole (JSON) or as server-sent
//! events, or the error in the API's error format; with keel's response headers (`x-keel-served-by`,
//! `x-keel-attempts`, `x-keel-cost-usd`, `x-keel-cache`, `x-keel-cache-similarity`, `x-keel-template`: the prompt template and its version, `x-keel-route` and `x-keel-route-reason`: a router's choice and why, `x-keel-guard`: the guards'
//! verdicts known when the headers leave, those of the input and of a whole answer). A grounded answer carries
//! the passages it was given as `sources`: a field of the completion (OpenAI) or message (Anthropic), and of
//! the first chunk (OpenAI) or the `message_start` event's message (Anthropic) of a stream.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_pipeline::{AttemptOutcome, CacheOutcome, GatewayResponse, InboundApi, Output, RequestContext};

use crate::{ApiError, stream};

/// An answer of the OpenAI API: a chat completion (or its chunks), embeddings, or an error. The usage chunk of a
/// stream reaches the client only when it asked for it (`wants_usage`).
pub(crate) fn openai(resp: GatewayResponse, wants_usage: bool) -> Response {
    let GatewayResponse { ctx, result } = resp;
    let sources = sources(&ctx);
    let mut out = match result {
        Ok(Output::Chat(mut r)) => {
            if let Some(s) = sources {
                r.extra.insert("sources".into(), s);
            }
            Json(r).into_response()
        }
        Ok(Output::ChatStream(s)) => stream::openai(s, wants_usage, sources),
        Ok(Output::Embeddings(r)) => Json(r).into_response(),
        Err(e) => ApiError::from(e).into_response_for(InboundApi::OpenAi),
    };
    headers(&mut out, &ctx);
    out
}

/// An answer of the Anthropic Messages API: the canonical answer translated back (whole or as events), or an
/// error.
pub(crate) fn anthropic(resp: GatewayResponse) -> Response {
    let GatewayResponse { ctx, result } = resp;
    let sources = sources(&ctx);
    let mut out = match result {
        Ok(Output::Chat(r)) => {
            let message = keel_translate::chat_response_to_messages(r);
            match (sources, serde_json::to_value(&message)) {
                (Some(s), Ok(serde_json::Value::Object(mut m))) => {
                    m.insert("sources".into(), s);
                    Json(m).into_response()
                }
                _ => Json(message).into_response(),
            }
        }
        Ok(Output::ChatStream(s)) => stream::anthropic(s, ctx.id.clone(), ctx.requested_model.clone(), sources),
        Ok(Output::Embeddings(_)) => internal("the pipeline answered a Messages request with embeddings"),
        Err(e) => ApiError::from(e).into_response_for(InboundApi::Anthropic),
    };
    headers(&mut out, &ctx);
    out
}

/// The passages of a grounded answer, as JSON.
fn sources(ctx: &RequestContext) -> Option<serde_json::Value> {
    ctx.sources.as_ref().and_then(|s| serde_json::to_value(&**s).ok())
}

/// A bug in keel, reported as one (500 in the OpenAI error format) and logged.
pub(crate) fn internal(what: &str) -> Response {
    tracing::error!(what, "internal error");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", format!("internal error: {what}"))
        .into_response_for(InboundApi::OpenAi)
}

/// keel's headers: which attempt answered and how many were made, the cost when known, how the cache served it.
fn headers(resp: &mut Response, ctx: &RequestContext) {
    let h = resp.headers_mut();
    if let Some(v) = ctx.guard.header().and_then(|v| HeaderValue::from_str(&v).ok()) {
        h.insert("x-keel-guard", v);
    }
    if let Some(t) = &ctx.template
        && let Ok(v) = HeaderValue::from_str(&format!("{}@{}", t.name, t.version))
    {
        h.insert("x-keel-template", v);
    }
    if let Some(d) = &ctx.routing {
        // Header values are visible ASCII: anything else in a name or a reason is shown as '?'.
        let ascii =
            |s: &str| s.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect::<String>();
        if let Ok(v) = HeaderValue::from_str(&ascii(&d.to)) {
            h.insert("x-keel-route", v);
        }
        if let Ok(v) = HeaderValue::from_str(&ascii(&d.reason)) {
            h.insert("x-keel-route-reason", v);
        }
    }
    let attempts = ctx.attempts.snapshot();
    if let Some(a) = attempts.iter().rev().find(|a| matches!(a.outcome, AttemptOutcome::Ok))
        && let Ok(by) = HeaderValue::from_str(&format!("{}/{}", a.provider, a.model))
    {
        h.insert("x-keel-served-by", by);
        h.insert("x-keel-attempts", HeaderValue::from(attempts.len()));
    }
    if let Some(v) = ctx.cost_usd.and_then(|c| HeaderValue::from_str(&format!("{c:.8}")).ok()) {
        h.insert("x-keel-cost-usd", v);
    }
    if let Some(outcome) = &ctx.cache {
        h.insert("x-keel-cache", HeaderValue::from_static(outcome.as_str()));
        if let CacheOutcome::Hit { similarity: Some(s), .. } = outcome
            && let Ok(v) = HeaderValue::from_str(&format!("{s:.4}"))
        {
            h.insert("x-keel-cache-similarity", v);
        }
    }
}
