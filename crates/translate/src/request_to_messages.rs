//! Canonical (OpenAI) chat requests → Anthropic Messages requests, for calling Anthropic upstream.
//!
//! What changes shape on the way:
//! - `system` and `developer` messages, wherever they stand, become the one `system` prompt (a string, joined
//!   with blank lines, or text blocks when a part carries `cache_control`).
//! - `tool` messages become `tool_result` blocks of a user message, and consecutive messages of one role are
//!   merged, because Anthropic wants the results of one turn in one message and roles to alternate. In a merged
//!   user message the tool results come first, as Anthropic requires.
//! - `response_format` has no Anthropic equal: a JSON object or schema request becomes an instruction appended
//!   to the system prompt, so the answer's meaning is kept though it is not enforced by the decoder.
//!
//! What is refused, because it cannot be honoured: `n` > 1, content parts other than text and images, tools
//! other than functions, arguments that are not a JSON object.
//!
//! What is dropped, because Anthropic has no equal and the answer means the same without it: `seed`,
//! `frequency_penalty`, `presence_penalty`, `logit_bias`, `logprobs`/`top_logprobs` (the answer carries none),
//! `stream_options` (Anthropic always reports usage), message `name`s, image `detail`, function `strict`, and
//! every `extra` key other than Anthropic's own request fields ([`ANTHROPIC_FIELDS`], and whatever an Anthropic
//! client sent that keel does not model, named in `ChatRequest::anthropic`), which Anthropic would reject as
//! unknown. `temperature` is passed as it is: Anthropic accepts 0–1 and refuses more, which is an
//! honest answer to a value it cannot honour.

use keel_types::anthropic::{
    AContent, AMessage, AMetadata, ARole, ATool, AToolChoice, ContentBlock, MessagesRequest, SystemPrompt,
    ToolResultContent,
};
use keel_types::{ChatRequest, Content, Extra, Message, ResponseFormat, Role, Stop, Tool, ToolChoice};
use serde_json::{Value, json};

use crate::content::{block_extra, image_source, parse_arguments, thinking_blocks};
use crate::{TranslateError, TranslateErrorKind};

/// Anthropic request fields keel does not model; these `extra` keys of a canonical request are sent along.
const ANTHROPIC_FIELDS: [&str; 5] = ["thinking", "service_tier", "container", "mcp_servers", "context_management"];

/// Translate a canonical request for an Anthropic upstream serving `upstream_model`. Without a token limit in
/// the request, `default_max_tokens` is used, since Anthropic requires one.
///
/// Every refusal is [`TranslateErrorKind::Unsupported`]: the request is valid, Anthropic cannot express it.
pub fn chat_request_to_messages(
    req: &ChatRequest,
    upstream_model: &str,
    default_max_tokens: u32,
) -> Result<MessagesRequest, TranslateError> {
    translate(req, upstream_model, default_max_tokens).map_err(|e| e.of_kind(TranslateErrorKind::Unsupported))
}

fn translate(
    req: &ChatRequest,
    upstream_model: &str,
    default_max_tokens: u32,
) -> Result<MessagesRequest, TranslateError> {
    match req.extra.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => return Err(TranslateError::at("n", "Anthropic models return one choice; `n` must be 1")),
    }

    let mut system = Vec::new();
    let mut messages = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let (role, content) = match m.role {
            Role::System | Role::Developer => {
                system_texts(m, &param, &mut system)?;
                continue;
            }
            Role::User => (ARole::User, user_content(m, &param)?),
            Role::Assistant => {
                let Some(content) = assistant_content(m, &param)? else { continue };
                (ARole::Assistant, content)
            }
            Role::Tool => (ARole::User, tool_result(m, &param)?),
            Role::Function => {
                return Err(TranslateError::at(
                    format!("{param}.role"),
                    "the `function` role is not supported; use `tool` messages",
                ));
            }
        };
        push_merged(&mut messages, role, content);
    }
    for m in &mut messages {
        if let (ARole::User, AContent::Blocks(blocks)) = (m.role, &mut m.content) {
            // A stable sort: tool results first, everything else after them, each in its original order.
            blocks.sort_by_key(|b| !matches!(b, ContentBlock::ToolResult { .. }));
        }
    }
    if let Some(instruction) = req.response_format.as_ref().and_then(format_instruction) {
        system.push((instruction, Extra::new()));
    }

    Ok(MessagesRequest {
        model: upstream_model.to_owned(),
        max_tokens: req.max_output_tokens().unwrap_or(default_max_tokens),
        messages,
        system: system_prompt(system),
        tools: tools(req.tools.as_deref().unwrap_or_default())?,
        tool_choice: tool_choice(req)?,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: top_k(&req.extra)?,
        stop_sequences: req.stop.as_ref().map(Stop::to_vec),
        stream: req.stream,
        metadata: req.user.as_ref().map(|u| AMetadata { user_id: Some(u.clone()) }),
        extra: req
            .extra
            .iter()
            .filter(|(k, _)| {
                ANTHROPIC_FIELDS.contains(&k.as_str())
                    || req.anthropic.as_ref().is_some_and(|a| a.fields.iter().any(|f| f == *k))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

/// Append a message, merging it into the previous one when both have the same role.
fn push_merged(messages: &mut Vec<AMessage>, role: ARole, content: AContent) {
    let Some(last) = messages.last_mut().filter(|m| m.role == role) else {
        messages.push(AMessage { role, content });
        return;
    };
    let mut blocks = into_blocks(std::mem::replace(&mut last.content, AContent::Blocks(Vec::new())));
    blocks.extend(into_blocks(content));
    last.content = AContent::Blocks(blocks);
}

fn into_blocks(content: AContent) -> Vec<ContentBlock> {
    match content {
        AContent::Text(text) => vec![ContentBlock::Text { text, extra: Extra::new() }],
        AContent::Blocks(blocks) => blocks,
    }
}

/// Collect the text of a system or developer message, with each part's Anthropic fields.
fn system_texts(m: &Message, param: &str, out: &mut Vec<(String, Extra)>) -> Result<(), TranslateError> {
    match &m.content {
        None => {}
        Some(Content::Text(text)) => out.push((text.clone(), Extra::new())),
        Some(Content::Parts(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                if p.kind != "text" {
                    let message = format!("content part type `{}` is not supported in a system message", p.kind);
                    return Err(TranslateError::at(format!("{param}.content[{j}]"), message));
                }
                out.push((p.text.clone().unwrap_or_default(), block_extra(&p.extra)));
            }
        }
    }
    Ok(())
}

/// The system prompt: one string when no piece carries Anthropic fields, text blocks otherwise.
fn system_prompt(texts: Vec<(String, Extra)>) -> Option<SystemPrompt> {
    if texts.is_empty() {
        return None;
    }
    if texts.iter().all(|(_, extra)| extra.is_empty()) {
        let texts: Vec<String> = texts.into_iter().map(|(text, _)| text).collect();
        return Some(SystemPrompt::Text(texts.join("\n\n")));
    }
    Some(SystemPrompt::Blocks(texts.into_iter().map(|(text, extra)| ContentBlock::Text { text, extra }).collect()))
}

/// The instruction that stands in for `response_format`, which Anthropic lacks.
fn format_instruction(format: &ResponseFormat) -> Option<String> {
    const ONLY_JSON: &str = "Respond with only a JSON object, without any other text before or after it.";
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(ONLY_JSON.to_owned()),
        ResponseFormat::JsonSchema { json_schema } => {
            let Some(schema) = &json_schema.schema else { return Some(ONLY_JSON.to_owned()) };
            let pretty = serde_json::to_string_pretty(schema).unwrap_or_else(|_| schema.to_string());
            Some(format!(
                "Respond with only a JSON object that conforms to the JSON schema `{}` below, without any other \
                 text before or after it.\n{pretty}",
                json_schema.name
            ))
        }
    }
}

fn user_content(m: &Message, param: &str) -> Result<AContent, TranslateError> {
    let Some(Content::Parts(parts)) = &m.content else {
        return Ok(AContent::Text(m.content.as_ref().map(Content::text).unwrap_or_default()));
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let param = format!("{param}.content[{j}]");
        blocks.push(match p.kind.as_str() {
            "text" => ContentBlock::Text { text: p.text.clone().unwrap_or_default(), extra: block_extra(&p.extra) },
            "image_url" => {
                let Some(image) = &p.image_url else {
                    return Err(TranslateError::at(format!("{param}.image_url"), "missing `image_url`"));
                };
                let source = image_source(&image.url, &format!("{param}.image_url.url"))?;
                ContentBlock::Image { source, extra: block_extra(&p.extra) }
            }
            other => {
                let message = format!("content part type `{other}` is not supported by Anthropic models");
                return Err(TranslateError::at(param, message));
            }
        });
    }
    Ok(AContent::Blocks(blocks))
}

/// An assistant message as Anthropic content: kept thinking blocks, then text, then tool uses. `None` for a
/// message with nothing in it, which Anthropic would refuse.
fn assistant_content(m: &Message, param: &str) -> Result<Option<AContent>, TranslateError> {
    let thinking = thinking_blocks(&m.extra);
    let calls = m.tool_calls.as_deref().unwrap_or_default();
    if let (Some(Content::Text(text)), true, true) = (&m.content, thinking.is_empty(), calls.is_empty()) {
        return Ok((!text.is_empty()).then(|| AContent::Text(text.clone())));
    }

    let mut blocks = thinking;
    match &m.content {
        Some(Content::Text(text)) if !text.is_empty() => {
            blocks.push(ContentBlock::Text { text: text.clone(), extra: Extra::new() });
        }
        None | Some(Content::Text(_)) => {}
        Some(Content::Parts(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                let text = match p.kind.as_str() {
                    "text" => p.text.clone().unwrap_or_default(),
                    "refusal" => p.extra.get("refusal").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    other => {
                        let message = format!("content part type `{other}` is not supported in an assistant message");
                        return Err(TranslateError::at(format!("{param}.content[{j}]"), message));
                    }
                };
                if !text.is_empty() {
                    blocks.push(ContentBlock::Text { text, extra: block_extra(&p.extra) });
                }
            }
        }
    }
    if let Some(refusal) = m.refusal.as_ref().filter(|_| blocks.is_empty()) {
        blocks.push(ContentBlock::Text { text: refusal.clone(), extra: Extra::new() });
    }
    for (j, call) in calls.iter().enumerate() {
        let input = parse_arguments(&call.function.arguments, &format!("{param}.tool_calls[{j}].function.arguments"))?;
        blocks.push(ContentBlock::ToolUse {
            id: call.id.clone(),
            name: call.function.name.clone(),
            input,
            extra: Extra::new(),
        });
    }
    Ok((!blocks.is_empty()).then_some(AContent::Blocks(blocks)))
}

fn tool_result(m: &Message, param: &str) -> Result<AContent, TranslateError> {
    let Some(id) = &m.tool_call_id else {
        return Err(TranslateError::at(format!("{param}.tool_call_id"), "a tool message needs a `tool_call_id`"));
    };
    Ok(AContent::Blocks(vec![ContentBlock::ToolResult {
        tool_use_id: id.clone(),
        content: m.content.as_ref().map(|c| ToolResultContent::Text(c.text())),
        is_error: None,
        extra: block_extra(&m.extra),
    }]))
}

fn tools(tools: &[Tool]) -> Result<Option<Vec<ATool>>, TranslateError> {
    if tools.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            let message = format!("tool type `{}` is not supported by Anthropic models", t.kind);
            return Err(TranslateError::at(format!("tools[{i}].type"), message));
        }
        out.push(ATool {
            name: t.function.name.clone(),
            description: t.function.description.clone(),
            input_schema: t.function.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            extra: block_extra(&t.extra),
        });
    }
    Ok(Some(out))
}

fn tool_choice(req: &ChatRequest) -> Result<Option<AToolChoice>, TranslateError> {
    let disable_parallel_tool_use = (req.parallel_tool_calls == Some(false)).then_some(true);
    let has_tools = req.tools.as_ref().is_some_and(|t| !t.is_empty());
    Ok(match &req.tool_choice {
        None if has_tools && disable_parallel_tool_use.is_some() => {
            Some(AToolChoice::Auto { disable_parallel_tool_use })
        }
        None => None,
        Some(ToolChoice::Mode(mode)) => Some(match mode.as_str() {
            "auto" => AToolChoice::Auto { disable_parallel_tool_use },
            "required" => AToolChoice::Any { disable_parallel_tool_use },
            "none" => AToolChoice::None,
            other => {
                return Err(TranslateError::at("tool_choice", format!("unknown tool_choice `{other}`")));
            }
        }),
        Some(ToolChoice::Named(named)) => {
            Some(AToolChoice::Tool { name: named.function.name.clone(), disable_parallel_tool_use })
        }
    })
}

fn top_k(extra: &Extra) -> Result<Option<u32>, TranslateError> {
    match extra.get("top_k") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().and_then(|k| u32::try_from(k).ok()) {
            Some(k) => Ok(Some(k)),
            None => Err(TranslateError::at("top_k", "`top_k` must be a non-negative integer")),
        },
    }
}
