//! Canonical (OpenAI) stream chunks → Anthropic stream events, for serving `/v1/messages` from any provider.
//!
//! # One open block at a time
//!
//! An Anthropic stream opens, fills and closes one content block at a time, and a closed block cannot reopen.
//! An OpenAI stream addresses tool calls by `index`, and nothing in its format stops a fragment of call 0 from
//! arriving after call 1 started. The OpenAI API never does that, but OpenAI-compatible servers vary. A
//! translator that closes call 0 when call 1 appears has nowhere to put such a late fragment, and one that
//! writes it to "the current block" corrupts call 1.
//!
//! So pieces (a run of text, a run of reasoning, each tool call) wait in a queue in the order they first
//! appear, and every fragment is routed to its piece by tool `index` (and `id`), never by position. The front
//! of the queue is the one open block and streams live; pieces behind it buffer. The front closes only when a
//! piece waits behind it and the front is finished: text and reasoning are finished as soon as anything follows
//! them, a tool call once its arguments form a complete JSON value (see `JsonScan`). The next piece then opens
//! with its buffer as one delta and streams live in turn. A well-behaved stream thus streams everything live;
//! an interleaved one holds a later call back until the earlier one completes; [`ChatToMessagesStream::finish`]
//! flushes what is left, in order.
//!
//! The one loss: a fragment for a call whose arguments were already complete and whose block was already
//! closed is dropped. It would have made the arguments invalid JSON.
//!
//! Other choices: only choice 0 is translated (Anthropic has one); reasoning (`reasoning_content` or
//! `reasoning` deltas) becomes an unsigned thinking block; refusals become text; a tool call without an `id`
//! gets one derived from the message id; `finish_reason: "stop"` with tool calls becomes `tool_use` (OpenAI
//! answers a forced tool choice so), and a stream without a finish reason ends with `end_turn`, or `tool_use`
//! when it called tools.

use std::collections::VecDeque;

use keel_types::anthropic::{
    ARole, AUsage, BlockDelta, ContentBlock, MessageDeltaBody, MessagesResponse, StopReason, StreamEvent,
};
use keel_types::error::AnthropicError;
use keel_types::{ChatChunk, Extra, FinishReason, ToolCallDelta, Usage};
use serde_json::Value;

use crate::content::reasoning;
use crate::json_scan::JsonScan;
use crate::mapping::{anthropic_stop, usage_to_anthropic};

/// Translates one canonical chunk stream into Anthropic events, one chunk at a time.
#[derive(Debug)]
pub struct ChatToMessagesStream {
    message_id: String,
    model: String,
    input_tokens_hint: u64,
    phase: Phase,
    /// Pieces in order of first appearance; the front one is the open block.
    queue: VecDeque<Piece>,
    /// The Anthropic index the next opened block gets.
    next_block: u32,
    /// `(OpenAI index, id)` of tool calls whose block is closed.
    closed: Vec<(u32, String)>,
    tool_calls: u32,
    finish_reason: Option<FinishReason>,
    /// The finishing choice's vendor fields (the stop sequence that matched).
    finish_extra: Extra,
    usage: Option<Usage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotStarted,
    Streaming,
    Ended,
}

#[derive(Debug)]
struct Piece {
    kind: Kind,
    /// Content that arrived while the piece was not the open block.
    buffer: String,
}

#[derive(Debug)]
enum Kind {
    Text,
    Thinking,
    Tool { index: u32, id: String, name: String, scan: JsonScan },
}

impl Piece {
    fn tool_index(&self) -> Option<u32> {
        match &self.kind {
            Kind::Tool { index, .. } => Some(*index),
            Kind::Text | Kind::Thinking => None,
        }
    }

    /// Whether the piece may close once another waits behind it.
    fn is_finished(&self) -> bool {
        match &self.kind {
            Kind::Text | Kind::Thinking => true,
            Kind::Tool { scan, .. } => scan.is_complete(),
        }
    }
}

impl ChatToMessagesStream {
    /// A translator for the message `message_id` of `model`; `message_start` reports `input_tokens_hint` input
    /// tokens, since real usage arrives only at the end of a canonical stream.
    pub fn new(message_id: String, model: String, input_tokens_hint: u64) -> Self {
        Self {
            message_id,
            model,
            input_tokens_hint,
            phase: Phase::NotStarted,
            queue: VecDeque::new(),
            next_block: 0,
            closed: Vec::new(),
            tool_calls: 0,
            finish_reason: None,
            finish_extra: Extra::new(),
            usage: None,
        }
    }

    /// The events that stand for one chunk. The first chunk also yields `message_start` and a `ping`.
    pub fn push(&mut self, chunk: ChatChunk) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if !self.begin(&mut out) {
            return out;
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            let delta = choice.delta;
            if let Some(text) = reasoning(&delta.extra) {
                self.prose(Prose::Thinking, text, &mut out);
            }
            for text in [&delta.content, &delta.refusal].into_iter().flatten() {
                self.prose(Prose::Text, text, &mut out);
            }
            for call in delta.tool_calls.unwrap_or_default() {
                self.tool(call, &mut out);
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
                self.finish_extra = choice.extra;
            }
        }
        out
    }

    /// The end of a stream that ended normally: the remaining blocks, `message_delta` with the stop reason and
    /// usage, and `message_stop`. Nothing after the first call, nor after [`Self::fail`].
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if !self.begin(&mut out) {
            return out;
        }
        while !self.queue.is_empty() {
            self.close_front(&mut out);
            self.open_front(&mut out);
        }
        let (stop_reason, stop_sequence) =
            anthropic_stop(self.finish_reason.as_ref(), self.tool_calls > 0, &self.finish_extra);
        let stop_reason = stop_reason.or(Some(StopReason::EndTurn));
        // Without real usage the hint is repeated: clients copy `input_tokens` of `message_delta` when present.
        let usage = self
            .usage
            .as_ref()
            .map(usage_to_anthropic)
            .unwrap_or(AUsage { input_tokens: self.input_tokens_hint, ..AUsage::default() });
        out.push(StreamEvent::MessageDelta { delta: MessageDeltaBody { stop_reason, stop_sequence }, usage });
        out.push(StreamEvent::MessageStop);
        self.phase = Phase::Ended;
        out
    }

    /// The end of a stream that failed: an `error` event and no `message_stop`, so the client cannot take a
    /// partial answer for a whole one. Nothing after the stream ended.
    pub fn fail(&mut self, kind: &str, message: &str) -> Vec<StreamEvent> {
        if self.phase == Phase::Ended {
            return Vec::new();
        }
        self.phase = Phase::Ended;
        let error = AnthropicError { kind: kind.to_owned(), message: message.to_owned() };
        vec![StreamEvent::Error { error }]
    }

    /// Emit `message_start` and `ping` on the first call; false once the stream ended.
    fn begin(&mut self, out: &mut Vec<StreamEvent>) -> bool {
        match self.phase {
            Phase::Ended => return false,
            Phase::Streaming => return true,
            Phase::NotStarted => self.phase = Phase::Streaming,
        }
        let message = MessagesResponse {
            id: self.message_id.clone(),
            kind: "message".into(),
            role: ARole::Assistant,
            content: Vec::new(),
            model: self.model.clone(),
            stop_reason: None,
            stop_sequence: None,
            usage: AUsage { input_tokens: self.input_tokens_hint, ..AUsage::default() },
        };
        out.push(StreamEvent::MessageStart { message });
        out.push(StreamEvent::Ping);
        true
    }

    /// Text or reasoning: appended to the last piece when it is of the same kind, else a new piece.
    fn prose(&mut self, prose: Prose, text: &str, out: &mut Vec<StreamEvent>) {
        if text.is_empty() {
            return;
        }
        let last_matches = self
            .queue
            .back()
            .is_some_and(|p| matches!((&p.kind, prose), (Kind::Text, Prose::Text) | (Kind::Thinking, Prose::Thinking)));
        if !last_matches {
            let kind = match prose {
                Prose::Text => Kind::Text,
                Prose::Thinking => Kind::Thinking,
            };
            self.enqueue(kind, out);
        }
        self.append(self.queue.len() - 1, text, out);
        self.advance(out);
    }

    /// A tool call fragment, routed to its call by `index`: the latest call with that index, unless the fragment
    /// names another `id`, which some servers use to start a new call under a reused index.
    fn tool(&mut self, call: ToolCallDelta, out: &mut Vec<StreamEvent>) {
        let id = call.id.filter(|id| !id.is_empty());
        let (name, arguments) = call.function.map(|f| (f.name, f.arguments)).unwrap_or_default();
        let same_call = |known: &str| id.as_deref().is_none_or(|id| id == known);

        let queued = self.queue.iter().rposition(|p| p.tool_index() == Some(call.index));
        let position = match queued {
            Some(pos) if matches!(&self.queue[pos].kind, Kind::Tool { id, .. } if same_call(id)) => pos,
            None if self.closed.iter().rev().find(|(i, _)| *i == call.index).is_some_and(|(_, id)| same_call(id)) => {
                // A late fragment of a closed call: see the module docs.
                return;
            }
            _ => {
                let id = id.unwrap_or_else(|| format!("toolu_{}_{}", self.message_id, self.tool_calls));
                let name = name.unwrap_or_default();
                self.tool_calls += 1;
                self.enqueue(Kind::Tool { index: call.index, id, name, scan: JsonScan::default() }, out);
                self.queue.len() - 1
            }
        };
        if let Some(arguments) = arguments.filter(|a| !a.is_empty()) {
            if let Some(Piece { kind: Kind::Tool { scan, .. }, .. }) = self.queue.get_mut(position) {
                scan.feed(&arguments);
            }
            self.append(position, &arguments, out);
        }
        self.advance(out);
    }

    fn enqueue(&mut self, kind: Kind, out: &mut Vec<StreamEvent>) {
        self.queue.push_back(Piece { kind, buffer: String::new() });
        if self.queue.len() == 1 {
            self.open_front(out);
        }
    }

    /// Content for the piece at `position`: streamed when it is the open block, buffered otherwise.
    fn append(&mut self, position: usize, content: &str, out: &mut Vec<StreamEvent>) {
        if position == 0 {
            if let Some(front) = self.queue.front() {
                out.push(StreamEvent::ContentBlockDelta {
                    index: self.next_block.saturating_sub(1),
                    delta: delta(&front.kind, content.to_owned()),
                });
            }
        } else if let Some(piece) = self.queue.get_mut(position) {
            piece.buffer.push_str(content);
        }
    }

    /// Close finished front pieces while others wait behind them.
    fn advance(&mut self, out: &mut Vec<StreamEvent>) {
        while self.queue.len() > 1 && self.queue.front().is_some_and(Piece::is_finished) {
            self.close_front(out);
            self.open_front(out);
        }
    }

    fn close_front(&mut self, out: &mut Vec<StreamEvent>) {
        let Some(piece) = self.queue.pop_front() else { return };
        out.push(StreamEvent::ContentBlockStop { index: self.next_block.saturating_sub(1) });
        if let Kind::Tool { index, id, .. } = piece.kind {
            self.closed.push((index, id));
        }
    }

    /// Open the front piece as the next block, with what it buffered as one delta.
    fn open_front(&mut self, out: &mut Vec<StreamEvent>) {
        let Some(front) = self.queue.front_mut() else { return };
        let index = self.next_block;
        self.next_block += 1;
        let content_block = match &front.kind {
            Kind::Text => ContentBlock::Text { text: String::new(), extra: Extra::new() },
            Kind::Thinking => ContentBlock::Thinking { thinking: String::new(), signature: None },
            Kind::Tool { id, name, .. } => ContentBlock::ToolUse {
                id: id.clone(),
                name: name.clone(),
                input: Value::Object(Extra::new()),
                extra: Extra::new(),
            },
        };
        out.push(StreamEvent::ContentBlockStart { index, content_block });
        if !front.buffer.is_empty() {
            let buffered = std::mem::take(&mut front.buffer);
            out.push(StreamEvent::ContentBlockDelta { index, delta: delta(&front.kind, buffered) });
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Prose {
    Text,
    Thinking,
}

fn delta(kind: &Kind, content: String) -> BlockDelta {
    match kind {
        Kind::Text => BlockDelta::TextDelta { text: content },
        Kind::Thinking => BlockDelta::ThinkingDelta { thinking: content },
        Kind::Tool { .. } => BlockDelta::InputJsonDelta { partial_json: content },
    }
}
