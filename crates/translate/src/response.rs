//! Non-streamed responses, both ways: Anthropic answers for canonical clients and canonical answers for
//! Anthropic clients.
//!
//! Ids are kept as the upstream made them (`msg_…` in an OpenAI response, `chatcmpl-…` in an Anthropic one).
//! Anthropic thinking becomes `reasoning_content` (the texts concatenated) plus the signed blocks under
//! `thinking_blocks` in the message's `extra`; the other way, `thinking_blocks` are restored as they were, or
//! else `reasoning_content` becomes an unsigned thinking block. Anthropic server-tool blocks (web search and
//! its results) have no OpenAI equal and are left out of a canonical answer. Anthropic gives no timestamp, so
//! `created` is 0 for the caller to set.

use keel_types::anthropic::{ARole, ContentBlock, MessagesResponse};
use keel_types::{ChatResponse, Choice, Content, Extra, FunctionCall, Message, Role, ToolCall};
use serde_json::Value;

use crate::content::{REASONING_CONTENT, THINKING_BLOCKS, is_thinking, reasoning, thinking_blocks, thinking_json};
use crate::mapping::{anthropic_stop, stop_details, stop_to_finish_reason, usage_to_anthropic, usage_to_chat};

/// Translate an Anthropic answer for a canonical client.
pub fn messages_response_to_chat(resp: MessagesResponse) -> ChatResponse {
    let mut text = String::new();
    let mut reasoning_text = String::new();
    let mut thinking = Vec::new();
    let mut calls = Vec::new();
    for block in resp.content {
        match block {
            ContentBlock::Text { text: t, .. } => text.push_str(&t),
            ContentBlock::ToolUse { id, name, input, .. } => calls.push(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall { name, arguments: input.to_string() },
            }),
            block if is_thinking(&block) => {
                if let ContentBlock::Thinking { thinking: t, .. } = &block {
                    reasoning_text.push_str(t);
                }
                thinking.extend(thinking_json(&block));
            }
            _ => {}
        }
    }

    let mut extra = Extra::new();
    if !thinking.is_empty() {
        extra.insert(REASONING_CONTENT.into(), Value::String(reasoning_text));
        extra.insert(THINKING_BLOCKS.into(), Value::Array(thinking));
    }
    let content = (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text));
    let message = Message {
        content,
        tool_calls: (!calls.is_empty()).then_some(calls),
        extra,
        ..Message::new(Role::Assistant, "")
    };
    ChatResponse {
        id: resp.id,
        object: "chat.completion".into(),
        created: 0,
        model: resp.model,
        choices: vec![Choice {
            index: 0,
            message,
            finish_reason: resp.stop_reason.as_ref().map(stop_to_finish_reason),
            logprobs: None,
            extra: stop_details(resp.stop_reason.as_ref(), resp.stop_sequence),
        }],
        usage: Some(usage_to_chat(&resp.usage)),
        system_fingerprint: None,
        extra: Extra::new(),
    }
}

/// Translate a canonical answer for an Anthropic client. Only the first choice is used (Anthropic has one).
/// Arguments that are not valid JSON, which models do produce, are kept as a JSON string in `input` rather than
/// lost; empty arguments mean `{}`.
pub fn chat_response_to_messages(resp: ChatResponse) -> MessagesResponse {
    let mut content = Vec::new();
    let (mut stop_reason, mut stop_sequence) = (None, None);
    if let Some(choice) = resp.choices.into_iter().min_by_key(|c| c.index) {
        let m = choice.message;
        let signed = thinking_blocks(&m.extra);
        if !signed.is_empty() {
            content.extend(signed);
        } else if let Some(r) = reasoning(&m.extra).filter(|r| !r.is_empty()) {
            content.push(ContentBlock::Thinking { thinking: r.to_owned(), signature: None });
        }
        let text = m.content.as_ref().map(Content::text).unwrap_or_default();
        if let Some(text) = Some(text).filter(|t| !t.is_empty()).or(m.refusal) {
            content.push(ContentBlock::Text { text, extra: Extra::new() });
        }
        let calls = m.tool_calls.unwrap_or_default();
        (stop_reason, stop_sequence) = anthropic_stop(choice.finish_reason.as_ref(), !calls.is_empty(), &choice.extra);
        content.extend(calls.into_iter().map(|call| ContentBlock::ToolUse {
            id: call.id,
            name: call.function.name,
            input: arguments_value(&call.function.arguments),
            extra: Extra::new(),
        }));
    }
    MessagesResponse {
        id: resp.id,
        kind: "message".into(),
        role: ARole::Assistant,
        content,
        model: resp.model,
        stop_reason,
        stop_sequence,
        usage: resp.usage.as_ref().map(usage_to_anthropic).unwrap_or_default(),
    }
}

fn arguments_value(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(Extra::new());
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}
