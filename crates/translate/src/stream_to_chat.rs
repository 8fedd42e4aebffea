//! Anthropic stream events → canonical (OpenAI) stream chunks, for streaming from an Anthropic upstream.
//!
//! Tool calls are numbered by OpenAI `index` in the order their `tool_use` blocks start (0, 1, 2, …), whatever
//! the Anthropic block index, since text and thinking blocks take Anthropic indexes too. Argument fragments are
//! routed by their Anthropic block index to that call. Thinking arrives as `reasoning_content` deltas; thinking
//! signatures have no place in a stream chunk and are dropped. Server-tool blocks are left out. An `error` event
//! yields nothing: the caller reports the failure, and [`MessagesToChatStream::is_complete`] stays false.

use keel_types::anthropic::{AUsage, BlockDelta, ContentBlock, StreamEvent};
use keel_types::{ChatChunk, ChunkChoice, Delta, Extra, FinishReason, FunctionCallDelta, Role, ToolCallDelta, Usage};
use serde_json::Value;

use crate::content::REASONING_CONTENT;
use crate::mapping::{stop_details, stop_to_finish_reason, usage_to_chat};

/// Translates one Anthropic event stream into chat chunks, one event at a time.
#[derive(Debug, Default)]
pub struct MessagesToChatStream {
    include_usage: bool,
    created: u64,
    id: String,
    model: String,
    /// `(Anthropic block index, OpenAI tool call index)` of every `tool_use` block so far.
    tools: Vec<(u32, u32)>,
    start_usage: Option<AUsage>,
    delta_usage: Option<AUsage>,
    complete: bool,
}

impl MessagesToChatStream {
    /// A translator whose final chunk carries usage when `include_usage` (the client's `stream_options`).
    pub fn new(include_usage: bool) -> Self {
        Self { include_usage, ..Self::default() }
    }

    /// Set the `created` timestamp of every chunk; Anthropic streams carry none, so it is 0 otherwise.
    pub fn with_created(mut self, created: u64) -> Self {
        self.created = created;
        self
    }

    /// The chunks that stand for one event, often none.
    pub fn push(&mut self, event: StreamEvent) -> Vec<ChatChunk> {
        match event {
            StreamEvent::MessageStart { message } => {
                self.id = message.id;
                self.model = message.model;
                self.start_usage = Some(message.usage);
                let delta = Delta { role: Some(Role::Assistant), content: Some(String::new()), ..Delta::default() };
                vec![self.chunk(delta, None)]
            }
            StreamEvent::ContentBlockStart { index, content_block } => self.block_start(index, content_block),
            StreamEvent::ContentBlockDelta { index, delta } => self.block_delta(index, delta),
            StreamEvent::MessageDelta { delta, usage } => {
                self.delta_usage = Some(usage);
                let Some(reason) = delta.stop_reason.as_ref() else { return Vec::new() };
                let mut chunk = self.chunk(Delta::default(), Some(stop_to_finish_reason(reason)));
                for c in &mut chunk.choices {
                    c.extra = stop_details(Some(reason), delta.stop_sequence.clone());
                }
                vec![chunk]
            }
            StreamEvent::MessageStop if !self.complete => {
                self.complete = true;
                let usage = self.usage().filter(|_| self.include_usage);
                usage.map(|usage| ChatChunk { usage: Some(usage), ..self.chunk_without_choice() }).into_iter().collect()
            }
            StreamEvent::MessageStop
            | StreamEvent::ContentBlockStop { .. }
            | StreamEvent::Ping
            | StreamEvent::Error { .. } => Vec::new(),
        }
    }

    /// Whether `message_stop` was seen: a stream that ends without it was cut short.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The usage so far: input from `message_start`, output (and any updated input counts) from `message_delta`,
    /// whose counts are cumulative.
    pub fn usage(&self) -> Option<Usage> {
        let mut usage = match (&self.start_usage, &self.delta_usage) {
            (None, None) => return None,
            (start, _) => start.clone().unwrap_or_default(),
        };
        if let Some(d) = &self.delta_usage {
            usage.output_tokens = d.output_tokens;
            if d.input_tokens > 0 {
                usage.input_tokens = d.input_tokens;
            }
            usage.cache_read_input_tokens = d.cache_read_input_tokens.or(usage.cache_read_input_tokens);
            usage.cache_creation_input_tokens = d.cache_creation_input_tokens.or(usage.cache_creation_input_tokens);
        }
        Some(usage_to_chat(&usage))
    }

    fn block_start(&mut self, index: u32, block: ContentBlock) -> Vec<ChatChunk> {
        match block {
            ContentBlock::Text { text, .. } => self.text(text),
            ContentBlock::Thinking { thinking, .. } => self.thinking(thinking),
            ContentBlock::ToolUse { id, name, input, .. } => {
                let call = u32::try_from(self.tools.len()).unwrap_or(u32::MAX);
                self.tools.push((index, call));
                // Anthropic starts a tool use with `input: {}` and streams the input; a server that sends the
                // whole input up front gets it passed on as the first fragment.
                let arguments = match input {
                    Value::Object(map) if map.is_empty() => String::new(),
                    input => input.to_string(),
                };
                let delta = ToolCallDelta {
                    index: call,
                    id: Some(id),
                    kind: Some("function".into()),
                    function: Some(FunctionCallDelta { name: Some(name), arguments: Some(arguments) }),
                };
                vec![self.tool_chunk(delta)]
            }
            _ => Vec::new(),
        }
    }

    fn block_delta(&mut self, index: u32, delta: BlockDelta) -> Vec<ChatChunk> {
        match delta {
            BlockDelta::TextDelta { text } => self.text(text),
            BlockDelta::ThinkingDelta { thinking } => self.thinking(thinking),
            BlockDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                let Some(&(_, call)) = self.tools.iter().find(|(block, _)| *block == index) else {
                    return Vec::new();
                };
                let function = FunctionCallDelta { name: None, arguments: Some(partial_json) };
                vec![self.tool_chunk(ToolCallDelta {
                    index: call,
                    function: Some(function),
                    ..ToolCallDelta::default()
                })]
            }
            _ => Vec::new(),
        }
    }

    fn text(&self, text: String) -> Vec<ChatChunk> {
        if text.is_empty() {
            return Vec::new();
        }
        vec![self.chunk(Delta { content: Some(text), ..Delta::default() }, None)]
    }

    fn thinking(&self, thinking: String) -> Vec<ChatChunk> {
        if thinking.is_empty() {
            return Vec::new();
        }
        let mut extra = Extra::new();
        extra.insert(REASONING_CONTENT.into(), Value::String(thinking));
        vec![self.chunk(Delta { extra, ..Delta::default() }, None)]
    }

    fn tool_chunk(&self, call: ToolCallDelta) -> ChatChunk {
        self.chunk(Delta { tool_calls: Some(vec![call]), ..Delta::default() }, None)
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<FinishReason>) -> ChatChunk {
        let choice = ChunkChoice { index: 0, delta, finish_reason, logprobs: None, extra: Extra::new() };
        ChatChunk { choices: vec![choice], ..self.chunk_without_choice() }
    }

    fn chunk_without_choice(&self) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: Vec::new(),
            usage: None,
            system_fingerprint: None,
            extra: Extra::new(),
        }
    }
}
