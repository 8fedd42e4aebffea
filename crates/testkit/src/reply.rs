//! The script: what the mock answers to one request (`Reply`), and the faults it can inject.
//!
//! Every type here is serde-serialisable so that a test in another process can send a script to
//! the `keel-mock-upstream` binary as JSON (`POST /_mock/script`). Durations are plain integer
//! millisecond fields for the same reason.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One scripted answer. Built with [`Reply::echo`], [`Reply::text`], ... and the chained setters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reply {
    /// HTTP status of the answer (default 200).
    pub status: u16,
    /// Extra response headers, written after the mock's own, e.g. `("retry-after", "2")`.
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
    /// Sleep before writing the status line (also before a `ResetBeforeHeaders` fault).
    pub delay_before_headers_ms: u64,
    /// Streams only: sleep after the headers, before the first event.
    pub first_chunk_delay_ms: u64,
    /// Streams only: sleep between two events.
    pub chunk_delay_ms: u64,
    pub fault: Option<Fault>,
}

/// What the answer says. Echo, Text and ToolCalls are rendered in the endpoint's own format
/// (OpenAI or Anthropic, streamed when the request asks for it); Error is rendered in the
/// endpoint's error format; Json and Raw are written as they are, never streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReplyBody {
    /// `"echo: "` followed by the text of the last user message.
    #[default]
    Echo,
    /// An assistant answer with exactly this text.
    Text(String),
    /// An assistant answer that calls these tools.
    ToolCalls(Vec<MockToolCall>),
    /// An error body in the endpoint's format; pair it with a 4xx/5xx status.
    Error { kind: String, message: String, code: Option<String> },
    /// This exact JSON body, whatever the endpoint.
    Json(serde_json::Value),
    /// These exact bytes with this content type (e.g. an HTML error page from a proxy).
    Raw { content_type: String, body: String },
}

/// One tool call of a [`ReplyBody::ToolCalls`] answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text, exactly as OpenAI carries them.
    pub arguments: String,
}

impl MockToolCall {
    pub fn new(id: impl Into<String>, name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self { id: id.into(), name: name.into(), arguments: arguments.into() }
    }
}

/// A connection-level or stream-level fault. Stream faults count *events*: for OpenAI each
/// `data:` line is one event (the role chunk is event 0), for Anthropic each `event:` block
/// including `ping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Read the request, then close the socket with `SO_LINGER` 0 (a TCP RST); no byte written.
    ResetBeforeHeaders,
    /// Read the request and never answer; the socket stays open until the client goes away.
    NoResponse,
    /// Streams: write N events, then close the connection without the terminating chunk, so the
    /// client sees a truncated body.
    /// Non-stream answers: write the headers and half the body, then close.
    CutAfterChunks(u32),
    /// Streams: write N events, then send nothing more while keeping the connection open.
    /// Non-stream answers: write the headers and half the body, then stall.
    StallAfterChunks(u32),
    /// Streams: event N (0-based) is replaced by `data: {not json` (for Anthropic too, so its
    /// `event:` line goes with it) and the rest goes on.
    /// Non-stream answers: the body is replaced by `{not json`.
    MalformedChunkAt(u32),
    /// Streams: end the body cleanly but without `data: [DONE]` (OpenAI) or `message_stop`
    /// (Anthropic). No effect on non-stream answers.
    NoDone,
}

impl Default for Reply {
    fn default() -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: ReplyBody::Echo,
            delay_before_headers_ms: 0,
            first_chunk_delay_ms: 0,
            chunk_delay_ms: 0,
            fault: None,
        }
    }
}

impl Reply {
    /// The default answer: echo the last user message.
    pub fn echo() -> Self {
        Self::default()
    }

    pub fn text(text: impl Into<String>) -> Self {
        Self::with_body(200, ReplyBody::Text(text.into()))
    }

    pub fn tool_calls(calls: Vec<MockToolCall>) -> Self {
        Self::with_body(200, ReplyBody::ToolCalls(calls))
    }

    /// An error in the endpoint's format, e.g. `Reply::error(429, "rate_limit_error", "slow down")`.
    pub fn error(status: u16, kind: impl Into<String>, message: impl Into<String>) -> Self {
        let body = ReplyBody::Error { kind: kind.into(), message: message.into(), code: None };
        Self::with_body(status, body)
    }

    pub fn json(status: u16, value: serde_json::Value) -> Self {
        Self::with_body(status, ReplyBody::Json(value))
    }

    pub fn raw(status: u16, content_type: impl Into<String>, body: impl Into<String>) -> Self {
        let body = ReplyBody::Raw { content_type: content_type.into(), body: body.into() };
        Self::with_body(status, body)
    }

    /// An echo answer that only injects this fault.
    pub fn faulty(fault: Fault) -> Self {
        Self::echo().fault(fault)
    }

    fn with_body(status: u16, body: ReplyBody) -> Self {
        Self { status, body, ..Self::default() }
    }

    /// Sets the `code` of an [`ReplyBody::Error`] body; no effect on other bodies.
    #[must_use]
    pub fn code(mut self, code: impl Into<String>) -> Self {
        if let ReplyBody::Error { code: slot, .. } = &mut self.body {
            *slot = Some(code.into());
        }
        self
    }

    #[must_use]
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    #[must_use]
    pub fn delay_before_headers(mut self, delay: Duration) -> Self {
        self.delay_before_headers_ms = millis(delay);
        self
    }

    #[must_use]
    pub fn first_chunk_delay(mut self, delay: Duration) -> Self {
        self.first_chunk_delay_ms = millis(delay);
        self
    }

    #[must_use]
    pub fn chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay_ms = millis(delay);
        self
    }

    #[must_use]
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }
}

fn millis(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn partial_json_fills_defaults() {
        let reply: Reply = serde_json::from_str(r#"{"body":{"text":"hi"}}"#).unwrap();
        assert_eq!(reply, Reply::text("hi"));
        let reply: Reply = serde_json::from_str(r#"{"fault":{"cut_after_chunks":3}}"#).unwrap();
        assert_eq!(reply, Reply::faulty(Fault::CutAfterChunks(3)));
    }

    #[test]
    fn round_trips_through_json() {
        let reply = Reply::error(429, "rate_limit_error", "slow down")
            .code("rate_limit_exceeded")
            .header("retry-after", "2")
            .chunk_delay(Duration::from_millis(5))
            .fault(Fault::ResetBeforeHeaders);
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), reply);
    }
}
