//! Server-sent events from an upstream response body, with transport failures classified.

mod parse;

use std::collections::VecDeque;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use keel_config::ProviderId;
use keel_types::ChatChunk;

use crate::http::{BoundedError, bounded_stream};
use crate::{ChatStream, ErrorKind, ProviderError};

pub(crate) use parse::Event;

/// Turns SSE events into canonical chunks for one vendor's stream format.
pub(crate) trait Decoder: Send + 'static {
    /// Handles one event, appending the chunks it produces. An error ends the stream after those chunks.
    fn event(&mut self, event: Event, out: &mut VecDeque<ChatChunk>) -> Result<(), ProviderError>;

    /// Whether the vendor's end-of-stream marker was seen (`[DONE]`, `message_stop`).
    fn is_complete(&self) -> bool;

    /// Called when the body ends before the end marker: appends what completes the answer and returns true if
    /// the answer itself was complete (a finish reason arrived; only the marker is missing), false if it was
    /// cut short.
    fn end_without_marker(&mut self, out: &mut VecDeque<ChatChunk>) -> bool;
}

/// The state of [`decode`] between polls: the body, the parser's events not yet decoded, the chunks not yet
/// yielded, and how the body ended once it has.
struct State<B, D> {
    body: std::pin::Pin<Box<B>>,
    parser: parse::Parser,
    events: VecDeque<Event>,
    decoder: D,
    pending: VecDeque<ChatChunk>,
    /// `None` while the body is open; then `Ok` for a clean end, or why it broke (after the events before it).
    ended: Option<Result<(), ProviderError>>,
    error: Option<ProviderError>,
    finished: bool,
    provider: ProviderId,
}

/// The canonical chunk stream of an upstream SSE response of at most `limit` bytes. It ends silently only after
/// the vendor's end marker (or a complete answer, see [`Decoder::end_without_marker`]); a body that ends early
/// or breaks yields a final `StreamIncomplete` error, after every chunk already decoded.
pub(crate) fn chat_stream<D: Decoder>(
    provider: ProviderId,
    resp: reqwest::Response,
    limit: u64,
    decoder: D,
) -> ChatStream {
    decode(provider, resp.bytes_stream(), limit, decoder)
}

/// [`chat_stream`] over any byte stream: what the fuzz targets drive with arbitrary bytes.
pub(crate) fn decode<S, E, D>(provider: ProviderId, body: S, limit: u64, decoder: D) -> ChatStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
    D: Decoder,
{
    let state = State {
        body: Box::pin(bounded_stream(body, limit)),
        parser: parse::Parser::default(),
        events: VecDeque::new(),
        decoder,
        pending: VecDeque::new(),
        ended: None,
        error: None,
        finished: false,
        provider,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(chunk) = st.pending.pop_front() {
                return Some((Ok(chunk), st));
            }
            if let Some(e) = st.error.take() {
                return Some((Err(e), st));
            }
            if st.finished {
                return None;
            }
            if let Some(event) = st.events.pop_front() {
                if let Err(e) = st.decoder.event(event, &mut st.pending) {
                    st.error = Some(e);
                    st.finished = true;
                } else if st.decoder.is_complete() {
                    st.finished = true;
                }
                continue;
            }
            match st.ended.take() {
                Some(Err(e)) => {
                    st.error = Some(e);
                    st.finished = true;
                    continue;
                }
                Some(Ok(())) => {
                    st.finished = true;
                    if !st.decoder.is_complete() && !st.decoder.end_without_marker(&mut st.pending) {
                        st.error = Some(ProviderError::new(
                            &st.provider,
                            ErrorKind::StreamIncomplete,
                            "stream ended before the answer was complete (no end-of-stream marker)",
                        ));
                    }
                    continue;
                }
                None => {}
            }
            st.ended = match st.body.next().await {
                Some(Ok(chunk)) => match st.parser.feed(&chunk, &mut st.events) {
                    Ok(()) => None,
                    Err(e) => Some(Err(ProviderError::new(
                        &st.provider,
                        ErrorKind::Protocol,
                        format!("invalid UTF-8 in stream: {e}"),
                    ))),
                },
                Some(Err(e)) => Some(Err(broken(&st.provider, &e))),
                None => Some(Ok(())),
            };
        }
    })
    .boxed()
}

/// The error of a body that could not be read to its end: too large, or broken in transit.
fn broken<E: std::error::Error>(provider: &ProviderId, e: &BoundedError<E>) -> ProviderError {
    match e {
        BoundedError::TooLarge(_) | BoundedError::LineTooLong => {
            let mut err = ProviderError::new(provider, ErrorKind::Protocol, e.to_string());
            err.code = Some("response_too_large".into());
            err
        }
        BoundedError::Transport(_) => {
            ProviderError::new(provider, ErrorKind::StreamIncomplete, format!("stream broke: {e}"))
        }
    }
}
