//! Anthropic Messages requests → canonical (OpenAI) chat requests, for clients of keel's `/v1/messages`.
//!
//! What changes shape on the way:
//! - `system` becomes one leading system message.
//! - A user message's `tool_result` blocks become one `tool` message each, in order, followed by a user
//!   message with the remaining blocks, if any. OpenAI tool messages carry only text: images inside a tool
//!   result move to that following user message, ahead of its other content. `is_error` has no OpenAI equal
//!   and is dropped; the result's content, which states the error, is kept as it is, without a prefix.
//! - Assistant `tool_use` blocks become `tool_calls` with the input as compact JSON arguments; thinking blocks
//!   are kept, signed, in the message's `extra` under `thinking_blocks`.
//! - `top_k` and every field keel does not model stay in `extra`. A streamed request asks for usage
//!   (`stream_options.include_usage`), because an Anthropic stream always reports it.
//!
//! Refused, because they have no OpenAI equal: server tools (a tool with a `type` other than `custom`) and
//! content blocks other than text, images, tool uses and tool results (documents, search results, …).

use keel_types::anthropic::{
    AContent, AMessage, ARole, ATool, AToolChoice, ContentBlock, MessagesRequest, SystemPrompt, ToolResultContent,
};
use keel_types::{
    AnthropicOrigin, ChatRequest, Content, ContentPart, Extra, FunctionCall, FunctionDef, FunctionName, ImageUrl,
    Message, NamedToolChoice, Role, Stop, StreamOptions, Tool, ToolCall, ToolChoice,
};
use serde_json::Value;

use crate::TranslateError;
use crate::content::{THINKING_BLOCKS, block_type, image_url, is_thinking, text_content, text_part, thinking_json};

/// Translate a request of an Anthropic client into keel's canonical request.
pub fn messages_request_to_chat(req: MessagesRequest) -> Result<ChatRequest, TranslateError> {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = req.system {
        messages.extend(system_message(system)?);
    }
    for (i, m) in req.messages.into_iter().enumerate() {
        let param = format!("messages[{i}]");
        match m.role {
            ARole::User => user_messages(m, &param, &mut messages)?,
            ARole::Assistant => messages.push(assistant_message(m, &param)?),
        }
    }
    let (tool_choice, parallel_tool_calls) = tool_choice(req.tool_choice);
    // Every field keel does not model is Anthropic's own: it travels on to an Anthropic upstream and is left
    // out for other vendors.
    let origin = AnthropicOrigin { fields: req.extra.keys().cloned().collect(), beta: None };
    let mut extra = req.extra;
    if let Some(top_k) = req.top_k {
        extra.insert("top_k".into(), top_k.into());
    }

    Ok(ChatRequest {
        model: req.model,
        messages,
        stream: req.stream,
        stream_options: req.stream.then(|| StreamOptions { include_usage: true, extra: Extra::new() }),
        tools: req.tools.map(tools).transpose()?,
        tool_choice,
        parallel_tool_calls,
        response_format: None,
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: Some(req.max_tokens),
        max_completion_tokens: None,
        stop: req.stop_sequences.map(Stop::Many),
        seed: None,
        user: req.metadata.and_then(|m| m.user_id),
        metadata: None,
        extra,
        anthropic: Some(Box::new(origin)),
    })
}

fn message(role: Role, content: Option<Content>) -> Message {
    Message { content, ..Message::new(role, "") }
}

fn system_message(system: SystemPrompt) -> Result<Option<Message>, TranslateError> {
    let blocks = match system {
        SystemPrompt::Text(text) => return Ok(Some(Message::new(Role::System, text))),
        SystemPrompt::Blocks(blocks) => blocks,
    };
    let mut parts = Vec::with_capacity(blocks.len());
    for (j, block) in blocks.into_iter().enumerate() {
        let ContentBlock::Text { text, extra } = block else {
            let message = format!("a system prompt holds only text blocks, not `{}`", block_type(&block));
            return Err(TranslateError::at(format!("system[{j}]"), message));
        };
        parts.push(text_part(text, extra));
    }
    Ok(text_content(parts).map(|content| message(Role::System, Some(content))))
}

/// A user message as canonical messages: one `tool` message per tool result, then the rest as a user message.
fn user_messages(m: AMessage, param: &str, out: &mut Vec<Message>) -> Result<(), TranslateError> {
    let blocks = match m.content {
        AContent::Text(text) => {
            out.push(Message::new(Role::User, text));
            return Ok(());
        }
        AContent::Blocks(blocks) => blocks,
    };
    let mut carried = Vec::new();
    let mut parts = Vec::new();
    for (j, block) in blocks.into_iter().enumerate() {
        let param = format!("{param}.content[{j}]");
        match block {
            ContentBlock::ToolResult { tool_use_id, content, is_error: _, extra } => {
                let content = tool_result_content(content, &param, &mut carried)?;
                out.push(Message { tool_call_id: Some(tool_use_id), extra, ..message(Role::Tool, Some(content)) });
            }
            block => parts.push(user_part(block, &param)?),
        }
    }
    carried.extend(parts);
    if !carried.is_empty() {
        let content = if carried.iter().all(|p| p.kind == "text") {
            text_content(carried)
        } else {
            Some(Content::Parts(carried))
        };
        out.push(message(Role::User, content));
    }
    Ok(())
}

/// A tool result's content as the text of a `tool` message; its images go to `carried`.
fn tool_result_content(
    content: Option<ToolResultContent>,
    param: &str,
    carried: &mut Vec<ContentPart>,
) -> Result<Content, TranslateError> {
    let blocks = match content {
        None => return Ok(Content::Text(String::new())),
        Some(ToolResultContent::Text(text)) => return Ok(Content::Text(text)),
        Some(ToolResultContent::Blocks(blocks)) => blocks,
    };
    let mut texts = Vec::new();
    for (k, block) in blocks.into_iter().enumerate() {
        match block {
            ContentBlock::Text { text, extra } => texts.push(text_part(text, extra)),
            block @ ContentBlock::Image { .. } => carried.push(user_part(block, &format!("{param}.content[{k}]"))?),
            block => {
                let message = format!("content block type `{}` is not supported in a tool result", block_type(&block));
                return Err(TranslateError::at(format!("{param}.content[{k}]"), message));
            }
        }
    }
    Ok(text_content(texts).unwrap_or_else(|| Content::Text(String::new())))
}

fn user_part(block: ContentBlock, param: &str) -> Result<ContentPart, TranslateError> {
    match block {
        ContentBlock::Text { text, extra } => Ok(text_part(text, extra)),
        ContentBlock::Image { source, extra } => Ok(ContentPart {
            kind: "image_url".into(),
            text: None,
            image_url: Some(ImageUrl { url: image_url(source), detail: None }),
            extra,
        }),
        block => {
            let message = format!("content block type `{}` is not supported in a user message", block_type(&block));
            Err(TranslateError::at(param, message))
        }
    }
}

fn assistant_message(m: AMessage, param: &str) -> Result<Message, TranslateError> {
    let blocks = match m.content {
        AContent::Text(text) => return Ok(Message::new(Role::Assistant, text)),
        AContent::Blocks(blocks) => blocks,
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    let mut thinking = Vec::new();
    for (j, block) in blocks.into_iter().enumerate() {
        match block {
            ContentBlock::Text { text, extra } => parts.push(text_part(text, extra)),
            ContentBlock::ToolUse { id, name, input, extra: _ } => calls.push(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall { name, arguments: input.to_string() },
            }),
            block if is_thinking(&block) => thinking.extend(thinking_json(&block)),
            block => {
                let message =
                    format!("content block type `{}` is not supported in an assistant message", block_type(&block));
                return Err(TranslateError::at(format!("{param}.content[{j}]"), message));
            }
        }
    }
    let mut extra = Extra::new();
    if !thinking.is_empty() {
        extra.insert(THINKING_BLOCKS.into(), Value::Array(thinking));
    }
    let content = text_content(parts).or_else(|| calls.is_empty().then(|| Content::Text(String::new())));
    Ok(Message { tool_calls: (!calls.is_empty()).then_some(calls), extra, ..message(Role::Assistant, content) })
}

fn tools(tools: Vec<ATool>) -> Result<Vec<Tool>, TranslateError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if let Some(kind) = t.extra.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
                let message = format!("server tool `{kind}` is not supported by this model's provider");
                return Err(TranslateError::at(format!("tools[{i}].type"), message));
            }
            let extra = t.extra.into_iter().filter(|(k, _)| k == "cache_control").collect();
            Ok(Tool {
                kind: "function".into(),
                function: FunctionDef {
                    name: t.name,
                    description: t.description,
                    parameters: Some(t.input_schema),
                    strict: None,
                },
                extra,
            })
        })
        .collect()
}

/// `tool_choice` and `parallel_tool_calls` of an Anthropic tool choice.
fn tool_choice(choice: Option<AToolChoice>) -> (Option<ToolChoice>, Option<bool>) {
    let (choice, disable) = match choice {
        None => return (None, None),
        Some(AToolChoice::Auto { disable_parallel_tool_use }) => {
            (ToolChoice::Mode("auto".into()), disable_parallel_tool_use)
        }
        Some(AToolChoice::Any { disable_parallel_tool_use }) => {
            (ToolChoice::Mode("required".into()), disable_parallel_tool_use)
        }
        Some(AToolChoice::None) => (ToolChoice::Mode("none".into()), None),
        Some(AToolChoice::Tool { name, disable_parallel_tool_use }) => (
            ToolChoice::Named(NamedToolChoice { kind: "function".into(), function: FunctionName { name } }),
            disable_parallel_tool_use,
        ),
    };
    (Some(choice), disable.filter(|d| *d).map(|_| false))
}
