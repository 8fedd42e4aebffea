//! What the cache keeps: a complete answer in keel's canonical shape, whether it was first streamed or not,
//! and how it is given back: as it was, or replayed as a stream of the same shape an upstream would send.

use std::collections::BTreeMap;

use keel_types::{
    ChatChunk, ChatResponse, Choice, ChunkChoice, Content, Delta, FinishReason, FunctionCall, FunctionCallDelta,
    Message, Role, ToolCall, ToolCallDelta, Usage,
};
use serde::{Deserialize, Serialize};

/// A complete answer and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub response: ChatResponse,
    /// The provider and model that produced it, for the cost a hit saves.
    pub provider: String,
    pub model: String,
    pub created_ms: i64,
}

impl CachedAnswer {
    /// An approximate size in bytes, for the memory bound.
    pub fn weight(&self) -> u32 {
        let text: usize = self
            .response
            .choices
            .iter()
            .map(|c| {
                c.message.content.as_ref().map_or(0, |t| t.text().len())
                    + c.message
                        .tool_calls
                        .as_ref()
                        .map_or(0, |v| v.iter().map(|t| t.function.arguments.len() + 64).sum())
            })
            .sum();
        u32::try_from(text + 512).unwrap_or(u32::MAX)
    }
}

/// Whether an answer may be stored: every choice ended on its own (`stop`, or a tool call), never cut by the
/// token limit or a content filter, and there is at least one choice.
pub fn storable(resp: &ChatResponse) -> bool {
    !resp.choices.is_empty()
        && resp.choices.iter().all(|c| {
            matches!(c.finish_reason, Some(FinishReason::Stop | FinishReason::ToolCalls | FinishReason::FunctionCall))
        })
}

/// Rebuilds the complete answer from a stream's chunks.
#[derive(Debug, Default)]
pub struct Assembler {
    id: String,
    model: String,
    created: u64,
    system_fingerprint: Option<String>,
    usage: Option<Usage>,
    choices: BTreeMap<u32, PartialChoice>,
}

#[derive(Debug, Default)]
struct PartialChoice {
    content: String,
    has_content: bool,
    refusal: Option<String>,
    tool_calls: BTreeMap<u32, ToolCall>,
    finish_reason: Option<FinishReason>,
    /// The choice's vendor fields (the stop sequence it stopped on).
    extra: keel_types::Extra,
}

impl Assembler {
    pub fn push(&mut self, chunk: &ChatChunk) {
        if self.id.is_empty() {
            self.id.clone_from(&chunk.id);
            self.created = chunk.created;
        }
        if self.model.is_empty() {
            self.model.clone_from(&chunk.model);
        }
        if chunk.system_fingerprint.is_some() {
            self.system_fingerprint.clone_from(&chunk.system_fingerprint);
        }
        if let Some(u) = &chunk.usage {
            self.usage = Some(u.clone());
        }
        for c in &chunk.choices {
            let p = self.choices.entry(c.index).or_default();
            if let Some(t) = &c.delta.content {
                p.content.push_str(t);
                p.has_content = true;
            }
            if let Some(r) = &c.delta.refusal {
                p.refusal.get_or_insert_with(String::new).push_str(r);
            }
            for t in c.delta.tool_calls.iter().flatten() {
                let call = p.tool_calls.entry(t.index).or_insert_with(|| ToolCall {
                    id: String::new(),
                    kind: "function".into(),
                    function: FunctionCall { name: String::new(), arguments: String::new() },
                });
                if let Some(id) = &t.id {
                    call.id.clone_from(id);
                }
                if let Some(k) = &t.kind {
                    call.kind.clone_from(k);
                }
                if let Some(f) = &t.function {
                    if let Some(n) = &f.name {
                        call.function.name.push_str(n);
                    }
                    if let Some(a) = &f.arguments {
                        call.function.arguments.push_str(a);
                    }
                }
            }
            if c.finish_reason.is_some() {
                p.finish_reason.clone_from(&c.finish_reason);
            }
            p.extra.extend(c.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }

    /// The complete answer; call only after the stream's end marker.
    pub fn finish(self) -> ChatResponse {
        let choices = self
            .choices
            .into_iter()
            .map(|(index, p)| {
                let tool_calls: Vec<ToolCall> = p.tool_calls.into_values().collect();
                let mut message = Message::new(Role::Assistant, p.content);
                if !p.has_content {
                    message.content = None;
                }
                message.refusal = p.refusal;
                message.tool_calls = (!tool_calls.is_empty()).then_some(tool_calls);
                Choice { index, message, finish_reason: p.finish_reason, logprobs: None, extra: p.extra }
            })
            .collect();
        ChatResponse {
            id: self.id,
            object: "chat.completion".into(),
            created: self.created,
            model: self.model,
            choices,
            usage: self.usage,
            system_fingerprint: self.system_fingerprint,
            extra: Default::default(),
        }
    }
}

/// The chunks of a stream that delivers `resp`: per choice a role chunk, the text in pieces, the tool calls, the
/// finish reason; then a usage chunk (the server forwards it only to clients that asked for usage).
pub fn replay(resp: &ChatResponse) -> Vec<ChatChunk> {
    let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>| ChatChunk {
        id: resp.id.clone(),
        object: "chat.completion.chunk".into(),
        created: resp.created,
        model: resp.model.clone(),
        choices,
        usage,
        system_fingerprint: resp.system_fingerprint.clone(),
        extra: Default::default(),
    };
    let one = |index: u32, delta: Delta, finish_reason: Option<FinishReason>| {
        vec![ChunkChoice { index, delta, finish_reason, logprobs: None, extra: Default::default() }]
    };
    let mut out = Vec::new();
    for c in &resp.choices {
        out.push(chunk(one(c.index, Delta { role: Some(Role::Assistant), ..Delta::default() }, None), None));
        if let Some(text) = c.message.content.as_ref().map(Content::text) {
            for piece in pieces(&text) {
                out.push(chunk(
                    one(c.index, Delta { content: Some(piece.to_string()), ..Delta::default() }, None),
                    None,
                ));
            }
        }
        if let Some(r) = &c.message.refusal {
            out.push(chunk(one(c.index, Delta { refusal: Some(r.clone()), ..Delta::default() }, None), None));
        }
        for (i, t) in c.message.tool_calls.iter().flatten().enumerate() {
            let delta = ToolCallDelta {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                id: Some(t.id.clone()),
                kind: Some(t.kind.clone()),
                function: Some(FunctionCallDelta {
                    name: Some(t.function.name.clone()),
                    arguments: Some(t.function.arguments.clone()),
                }),
            };
            out.push(chunk(one(c.index, Delta { tool_calls: Some(vec![delta]), ..Delta::default() }, None), None));
        }
        let mut last = one(c.index, Delta::default(), c.finish_reason.clone());
        for l in &mut last {
            l.extra.clone_from(&c.extra);
        }
        out.push(chunk(last, None));
    }
    if resp.usage.is_some() {
        out.push(chunk(Vec::new(), resp.usage.clone()));
    }
    out
}

/// Splits text into pieces of about 32 bytes at word boundaries (never inside a character), the way a model's
/// tokens arrive, so that clients rendering incrementally behave as they do on a live stream.
fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, ch) in text.char_indices() {
        if ch.is_whitespace() && i - start >= 32 {
            out.push(&text[start..i]);
            start = i;
        }
    }
    if start < text.len() || out.is_empty() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn response() -> ChatResponse {
        serde_json::from_value(serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": "gpt-x",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Paris is the capital of France, and it has been for a very long time — since 987."}, "finish_reason": "stop"},
                {"index": 1, "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}}
                ]}, "finish_reason": "tool_calls"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
            "system_fingerprint": "fp_1"
        }))
        .unwrap()
    }

    #[test]
    fn a_replayed_stream_assembles_to_the_same_answer() {
        let resp = response();
        let chunks = replay(&resp);
        assert!(chunks.len() > 6, "text arrives in several pieces: {}", chunks.len());
        let mut a = Assembler::default();
        chunks.iter().for_each(|c| a.push(c));
        assert_eq!(a.finish(), resp);
    }

    #[test]
    fn only_complete_answers_are_storable() {
        let mut r = response();
        assert!(storable(&r));
        r.choices[0].finish_reason = Some(FinishReason::Length);
        assert!(!storable(&r), "cut by the token limit");
        r.choices[0].finish_reason = Some(FinishReason::ContentFilter);
        assert!(!storable(&r));
        r.choices[0].finish_reason = None;
        assert!(!storable(&r), "no finish reason: never finished");
        r.choices.clear();
        assert!(!storable(&r));
    }

    #[test]
    fn pieces_cover_the_text_at_character_boundaries() {
        let text = "Grüße aus Köln — ein längerer Satz mit Umlauten, der in mehrere Stücke geteilt wird.";
        let p = pieces(text);
        assert!(p.len() > 1);
        assert_eq!(p.concat(), text);
        assert_eq!(pieces(""), vec![""]);
    }
}
