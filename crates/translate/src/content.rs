//! Content pieces shared by both directions: images, text runs, tool arguments and thinking blocks.

use keel_types::anthropic::{ContentBlock, ImageSource};
use keel_types::{Content, ContentPart, Extra};
use serde_json::Value;

use crate::TranslateError;

/// Fields of an Anthropic content block besides its own that keel carries through canonical `extra` maps.
/// Only these go back to Anthropic, which rejects unknown fields.
const BLOCK_KEYS: [&str; 2] = ["cache_control", "citations"];

/// Where a canonical assistant message keeps the signed thinking blocks of an Anthropic answer (the name
/// LiteLLM uses too), so that a client echoing the message back lets Anthropic continue a thinking turn.
pub(crate) const THINKING_BLOCKS: &str = "thinking_blocks";

/// Where canonical messages and deltas carry reasoning text (DeepSeek's name, the most widely used).
pub(crate) const REASONING_CONTENT: &str = "reasoning_content";

/// The fields of `extra` that Anthropic accepts on a content block.
pub(crate) fn block_extra(extra: &Extra) -> Extra {
    extra.iter().filter(|(k, _)| BLOCK_KEYS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// An OpenAI image URL as an Anthropic image source: `data:<mime>;base64,<data>` or an http(s) URL.
pub(crate) fn image_source(url: &str, param: &str) -> Result<ImageSource, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((media_type, data)) = rest.split_once(";base64,") else {
            return Err(TranslateError::at(param, "image data URLs must be base64 encoded (data:<mime>;base64,...)"));
        };
        return Ok(ImageSource::Base64 { media_type: media_type.to_owned(), data: data.to_owned() });
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(ImageSource::Url { url: url.to_owned() });
    }
    Err(TranslateError::at(param, "image URLs must be http(s) URLs or base64 data URLs"))
}

/// An Anthropic image source as an OpenAI image URL.
pub(crate) fn image_url(source: ImageSource) -> String {
    match source {
        ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        ImageSource::Url { url } => url,
    }
}

/// Text parts as canonical content: a plain string when there is one part without extra fields (the form every
/// OpenAI-compatible server accepts), the parts otherwise; `None` when there are none.
pub(crate) fn text_content(mut parts: Vec<ContentPart>) -> Option<Content> {
    match parts.as_mut_slice() {
        [] => None,
        [only] if only.extra.is_empty() => Some(Content::Text(only.text.take().unwrap_or_default())),
        _ => Some(Content::Parts(parts)),
    }
}

/// A text part with the given extra fields.
pub(crate) fn text_part(text: String, extra: Extra) -> ContentPart {
    ContentPart { extra, ..ContentPart::text(text) }
}

/// Tool call arguments as the JSON object Anthropic wants for `input`. Empty arguments, which some servers
/// send for functions without parameters, mean `{}`.
pub(crate) fn parse_arguments(arguments: &str, param: &str) -> Result<Value, TranslateError> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Extra::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(TranslateError::at(param, "tool call arguments must be a JSON object")),
        Err(e) => Err(TranslateError::at(param, format!("tool call arguments are not valid JSON: {e}"))),
    }
}

/// The `type` of a content block, for error messages.
pub(crate) fn block_type(block: &ContentBlock) -> &str {
    match block {
        ContentBlock::Text { .. } => "text",
        ContentBlock::Image { .. } => "image",
        ContentBlock::ToolUse { .. } => "tool_use",
        ContentBlock::ToolResult { .. } => "tool_result",
        ContentBlock::Thinking { .. } => "thinking",
        ContentBlock::Other(v) => v.get("type").and_then(Value::as_str).unwrap_or("unknown"),
    }
}

/// Whether a block is one of Anthropic's thinking blocks (`thinking` or `redacted_thinking`).
pub(crate) fn is_thinking(block: &ContentBlock) -> bool {
    matches!(block, ContentBlock::Thinking { .. }) || block_type(block) == "redacted_thinking"
}

/// The signed thinking blocks kept in a canonical message's `extra`, if any.
pub(crate) fn thinking_blocks(extra: &Extra) -> Vec<ContentBlock> {
    let Some(Value::Array(blocks)) = extra.get(THINKING_BLOCKS) else {
        return Vec::new();
    };
    blocks.iter().filter_map(|b| serde_json::from_value::<ContentBlock>(b.clone()).ok()).filter(is_thinking).collect()
}

/// A thinking block as JSON, to keep in a canonical message's `extra`.
pub(crate) fn thinking_json(block: &ContentBlock) -> Option<Value> {
    serde_json::to_value(block).ok()
}

/// Reasoning text carried by a canonical message or delta, under either name vendors use.
pub(crate) fn reasoning(extra: &Extra) -> Option<&str> {
    [REASONING_CONTENT, "reasoning"].iter().find_map(|k| extra.get(*k).and_then(Value::as_str))
}
