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

/// The SSE events of a streamed body, at most `limit` bytes in all. A body that breaks mid-way yields one
/// `StreamIncomplete` error; one that is not UTF-8, or too large, one `Protocol` error; each after the events
/// before it.
fn events<S, E>(
    provider: ProviderId,
    body: S,
    limit: u64,
) -> impl Stream<Item = Result<Event, ProviderError>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let state = Events {
        body: Box::pin(bounded_stream(body, limit)),
        parser: parse::Parser::default(),
        ready: VecDeque::new(),
        error: None,
        done: false,
    };
    futures::stream::unfold(state, move |mut st| {
        let provider = provider.clone();
        async move {
            loop {
                if let Some(event) = st.ready.pop_front() {
                    return Some((Ok(event), st));
                }
                if let Some(e) = st.error.take() {
                    return Some((Err(e), st));
                }
                if st.done {
                    return None;
                }
                match st.body.next().await {
                    Some(Ok(chunk)) => {
                        if let Err(e) = st.parser.feed(&chunk, &mut st.ready) {
                            st.error = Some(ProviderError::new(
                                &provider,
                                ErrorKind::Protocol,
                                format!("invalid UTF-8 in stream: {e}"),
                            ));
                            st.done = true;
                        }
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        st.error = Some(match &e {
                            BoundedError::TooLarge(_) | BoundedError::LineTooLong => {
                                let mut err = ProviderError::new(&provider, ErrorKind::Protocol, e.to_string());
                                err.code = Some("response_too_large".into());
                                err
                            }
                            BoundedError::Transport(_) => {
                                ProviderError::new(&provider, ErrorKind::StreamIncomplete, format!("stream broke: {e}"))
                            }
                        });
                    }
                    None => st.done = true,
                }
            }
        }
    })
}

/// The state of [`events`] between polls.
struct Events<B> {
    body: std::pin::Pin<Box<B>>,
    parser: parse::Parser,
    ready: VecDeque<Event>,
    error: Option<ProviderError>,
    done: bool,
}

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

struct State<S, D> {
    events: S,
    decoder: D,
    pending: VecDeque<ChatChunk>,
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
        events: Box::pin(events(provider.clone(), body, limit)),
        decoder,
        pending: VecDeque::new(),
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
            match st.events.next().await {
                Some(Ok(event)) => {
                    if let Err(e) = st.decoder.event(event, &mut st.pending) {
                        st.error = Some(e);
                        st.finished = true;
                    } else if st.decoder.is_complete() {
                        st.finished = true;
                    }
                }
                Some(Err(e)) => {
                    st.error = Some(e);
                    st.finished = true;
                }
                None => {
                    st.finished = true;
                    if !st.decoder.is_complete() && !st.decoder.end_without_marker(&mut st.pending) {
                        st.error = Some(ProviderError::new(
                            &st.provider,
                            ErrorKind::StreamIncomplete,
                            "stream ended before the answer was complete (no end-of-stream marker)",
                        ));
                    }
                }
            }
        }
    })
    .boxed()
}
