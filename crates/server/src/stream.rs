//! Server-sent event bodies for both APIs. A stream ends with its API's end marker only after a complete answer;
//! a failed one ends with an explicit error event instead, never with a silent truncation.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures::StreamExt;
use keel_pipeline::RequestId;
use keel_providers::{ChatStream, ProviderError};
use keel_translate::ChatToMessagesStream;
use keel_types::anthropic::StreamEvent;
use serde::Serialize;

use crate::ApiError;

/// An OpenAI stream: `data: <chunk>` per chunk, `data: [DONE]` after a complete answer, or a final
/// `data: {"error": …}` when the answer cannot be completed. Keel always asks upstreams for usage; the usage
/// chunk reaches the client only when it asked for it (`stream_options.include_usage`).
/// `sources` (a grounded answer's passages) ride on the first chunk.
pub(crate) fn openai(upstream: ChatStream, wants_usage: bool, mut sources: Option<serde_json::Value>) -> Response {
    let body = async_stream(upstream, move |item, out| match item {
        Some(Ok(mut chunk)) => {
            if let Some(s) = sources.take() {
                chunk.extra.insert("sources".into(), s);
            }
            if !wants_usage {
                if chunk.choices.is_empty() && chunk.usage.is_some() {
                    return false;
                }
                chunk.usage = None;
            }
            data(out, &chunk);
            false
        }
        Some(Err(e)) => {
            data(out, &ApiError::from(keel_pipeline::GatewayError::from(e)).openai_body());
            true
        }
        None => {
            out.extend_from_slice(b"data: [DONE]\n\n");
            true
        }
    });
    sse(body)
}

/// An Anthropic stream: the canonical chunks translated to `message_start … message_stop`, or ending with an
/// `error` event. `sources` (a grounded answer's passages) ride on the `message_start` event's message.
pub(crate) fn anthropic(
    upstream: ChatStream,
    id: RequestId,
    model: String,
    mut sources: Option<serde_json::Value>,
) -> Response {
    let mut translator: Option<ChatToMessagesStream> = None;
    let body = async_stream(upstream, move |item, out| {
        // The message is named after the model that actually answers, known from the first chunk.
        let t = translator.get_or_insert_with(|| {
            let served = match &item {
                Some(Ok(chunk)) if !chunk.model.is_empty() => chunk.model.clone(),
                _ => model.clone(),
            };
            ChatToMessagesStream::new(format!("msg_{}", id.0.replace('-', "")), served, 0)
        });
        let (events, last) = match item {
            Some(Ok(chunk)) => (t.push(chunk), false),
            Some(Err(e)) => {
                let err = failure(e);
                (t.fail(err.anthropic_body().error.kind.as_str(), &err.message), true)
            }
            None => (t.finish(), true),
        };
        for ev in &events {
            match (ev, sources.take()) {
                (StreamEvent::MessageStart { .. }, Some(s)) => start_with_sources(out, ev, s),
                (_, taken) => {
                    sources = taken;
                    event(out, ev);
                }
            }
        }
        last
    });
    sse(body)
}

fn failure(e: ProviderError) -> ApiError {
    ApiError::from(keel_pipeline::GatewayError::from(e))
}

/// Drives `upstream` and encodes each item with `encode`, which appends SSE bytes and says whether the body
/// ends there. After the upstream's last item, `encode` sees `None` once.
fn async_stream<F>(upstream: ChatStream, mut encode: F) -> Body
where
    F: FnMut(Option<Result<keel_types::ChatChunk, ProviderError>>, &mut Vec<u8>) -> bool + Send + 'static,
{
    let items = upstream.map(Some).chain(futures::stream::once(futures::future::ready(None)));
    // Items that are already available are encoded into one body frame: one write instead of one per chunk
    // when the upstream sends in bursts, and no added wait when it does not.
    let mut finished = false;
    let body = items.ready_chunks(64).scan((), move |_, batch| {
        if finished {
            return futures::future::ready(None);
        }
        let mut out = Vec::with_capacity(256 * batch.len());
        for item in batch {
            finished = encode(item, &mut out);
            if finished {
                break;
            }
        }
        futures::future::ready(Some(Bytes::from(out)))
    });
    let body = body.filter(|b| futures::future::ready(!b.is_empty())).map(Ok::<Bytes, std::convert::Infallible>);
    Body::from_stream(body)
}

fn sse(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn data(out: &mut Vec<u8>, value: &impl Serialize) {
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(br#"{"error":{"message":"keel could not encode a stream chunk","type":"server_error"}}"#);
    }
    out.extend_from_slice(b"\n\n");
}

/// `message_start` with `message.sources` added.
fn start_with_sources(out: &mut Vec<u8>, ev: &StreamEvent, sources: serde_json::Value) {
    match serde_json::to_value(ev) {
        Ok(mut v) => {
            if let Some(m) = v.get_mut("message").and_then(serde_json::Value::as_object_mut) {
                m.insert("sources".into(), sources);
            }
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(ev.name().as_bytes());
            out.extend_from_slice(b"\n");
            data(out, &v);
        }
        Err(_) => event(out, ev),
    }
}

fn event(out: &mut Vec<u8>, ev: &StreamEvent) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(ev.name().as_bytes());
    out.extend_from_slice(b"\n");
    data(out, ev);
}
