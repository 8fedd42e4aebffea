//! Stop reasons and token usage, mapped between the two APIs.

use keel_types::anthropic::{AUsage, StopReason};
use keel_types::{ANTHROPIC_STOP_REASON, Extra, FinishReason, PromptTokensDetails, STOP_SEQUENCE, Usage};
use serde_json::Value;

/// The key under which a canonical [`Usage`] keeps Anthropic's prompt-cache writes. OpenAI has no such field;
/// keeping it makes the mapping lossless and lets cost accounting price cache writes.
const CACHE_CREATION: &str = "cache_creation_input_tokens";

/// OpenAI `finish_reason` → Anthropic `stop_reason`. Unknown vendor reasons are kept as they are.
pub fn finish_reason_to_stop(r: &FinishReason) -> StopReason {
    match r {
        FinishReason::Stop => StopReason::EndTurn,
        FinishReason::Length => StopReason::MaxTokens,
        FinishReason::ToolCalls | FinishReason::FunctionCall => StopReason::ToolUse,
        FinishReason::ContentFilter => StopReason::Refusal,
        FinishReason::Other(s) => StopReason::Other(s.clone()),
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`. `pause_turn` (a server tool paused a long turn) becomes
/// `stop`, the closest OpenAI has; a full context window becomes `length`.
pub fn stop_to_finish_reason(r: &StopReason) -> FinishReason {
    match r {
        StopReason::EndTurn | StopReason::StopSequence | StopReason::PauseTurn => FinishReason::Stop,
        StopReason::MaxTokens => FinishReason::Length,
        StopReason::ToolUse => FinishReason::ToolCalls,
        StopReason::Refusal => FinishReason::ContentFilter,
        StopReason::Other(s) if s == "model_context_window_exceeded" => FinishReason::Length,
        StopReason::Other(s) => FinishReason::Other(s.clone()),
    }
}

/// The stop reason of an OpenAI answer that carries tool calls. OpenAI answers a forced `tool_choice` with
/// `finish_reason: "stop"`, and some vendors always do; Anthropic clients look for `tool_use` to run tools.
pub(crate) fn stop_reason_with_tools(r: Option<&FinishReason>, has_tool_calls: bool) -> Option<StopReason> {
    match r {
        Some(FinishReason::Stop) | None if has_tool_calls => Some(StopReason::ToolUse),
        r => r.map(finish_reason_to_stop),
    }
}

/// Anthropic usage → OpenAI usage. Anthropic counts cached and cache-written prompt tokens apart from
/// `input_tokens`; OpenAI's `prompt_tokens` includes them, with the cached part in `cached_tokens`.
pub fn usage_to_chat(u: &AUsage) -> Usage {
    let read = u.cache_read_input_tokens.unwrap_or(0);
    let creation = u.cache_creation_input_tokens.unwrap_or(0);
    let mut usage = Usage::new(u.input_tokens.saturating_add(read).saturating_add(creation), u.output_tokens);
    if let Some(read) = u.cache_read_input_tokens {
        usage.prompt_tokens_details = Some(PromptTokensDetails { cached_tokens: Some(read), extra: Extra::new() });
    }
    if let Some(creation) = u.cache_creation_input_tokens {
        usage.extra.insert(CACHE_CREATION.into(), creation.into());
    }
    usage
}

/// What an Anthropic stop says beyond its OpenAI `finish_reason`, kept in the canonical choice's `extra`: the
/// stop sequence that matched, and a stop reason OpenAI has no word for (`pause_turn`), so that an Anthropic
/// client served by Anthropic through keel sees exactly what Anthropic said.
pub(crate) fn stop_details(reason: Option<&StopReason>, sequence: Option<String>) -> Extra {
    let mut extra = Extra::new();
    match reason {
        Some(StopReason::StopSequence) => {
            extra.insert(STOP_SEQUENCE.into(), sequence.map_or(Value::Null, Value::String));
        }
        Some(r @ (StopReason::PauseTurn | StopReason::Other(_))) => {
            if let Ok(Value::String(s)) = serde_json::to_value(r) {
                extra.insert(ANTHROPIC_STOP_REASON.into(), Value::String(s));
            }
        }
        _ => {}
    }
    extra
}

/// The Anthropic `stop_reason` and `stop_sequence` of a canonical choice: what [`stop_details`] kept, else the
/// mapping of its finish reason.
pub(crate) fn anthropic_stop(
    finish: Option<&FinishReason>,
    has_tool_calls: bool,
    extra: &Extra,
) -> (Option<StopReason>, Option<String>) {
    if let Some(Value::String(r)) = extra.get(ANTHROPIC_STOP_REASON)
        && let Ok(reason) = serde_json::from_value::<StopReason>(Value::String(r.clone()))
    {
        return (Some(reason), None);
    }
    if !has_tool_calls && matches!(finish, Some(FinishReason::Stop)) {
        match extra.get(STOP_SEQUENCE) {
            Some(Value::String(s)) => return (Some(StopReason::StopSequence), Some(s.clone())),
            Some(Value::Null) => return (Some(StopReason::StopSequence), None),
            _ => {}
        }
    }
    (stop_reason_with_tools(finish, has_tool_calls), None)
}

/// OpenAI usage → Anthropic usage, the inverse of [`usage_to_chat`].
pub fn usage_to_anthropic(u: &Usage) -> AUsage {
    let cached = u.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens);
    let creation = u.extra.get(CACHE_CREATION).and_then(Value::as_u64);
    let not_input = cached.unwrap_or(0).saturating_add(creation.unwrap_or(0));
    AUsage {
        input_tokens: u.prompt_tokens.saturating_sub(not_input),
        output_tokens: u.completion_tokens,
        cache_creation_input_tokens: creation,
        cache_read_input_tokens: cached,
    }
}
