//! The format-neutral answer (text or tool calls), its token counts, and the rendered response.
//!
//! Tokens are whitespace-separated words: crude, but deterministic and the same for both wire
//! formats, so tests can predict usage numbers exactly.

use crate::reply::MockToolCall;

/// What the assistant says, before it is put in a wire format.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Text(String),
    ToolCalls(Vec<MockToolCall>),
}

impl Answer {
    /// The echo answer for the text of the last user message.
    pub(crate) fn echo(last_user_text: &str) -> Self {
        Answer::Text(format!("echo: {last_user_text}"))
    }

    /// Completion tokens: words of the text, or words of every arguments string plus one per call.
    pub(crate) fn completion_tokens(&self) -> u64 {
        match self {
            Answer::Text(text) => words(text),
            Answer::ToolCalls(calls) => calls.iter().map(|c| words(&c.arguments) + 1).sum(),
        }
    }
}

/// The per-response facts a format needs besides the answer.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    /// Sequence number for the response id (`chatcmpl-mock-<seq>`, `msg_mock_<seq>`).
    pub seq: u64,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    pub status: u16,
}

/// A response ready to be written: a whole body, or a list of SSE events.
#[derive(Debug, Clone)]
pub(crate) enum Rendered {
    Whole {
        status: u16,
        content_type: String,
        body: Vec<u8>,
    },
    /// Each string is one complete SSE event (ending in a blank line). The last event is the
    /// terminator (`data: [DONE]` or `message_stop`), which `Fault::NoDone` leaves out.
    Stream {
        status: u16,
        events: Vec<String>,
    },
}

impl Rendered {
    pub(crate) fn json(status: u16, value: &serde_json::Value) -> Self {
        Rendered::Whole { status, content_type: "application/json".to_owned(), body: value.to_string().into_bytes() }
    }
}

/// Number of whitespace-separated words.
pub(crate) fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Splits text into one piece per word, each word keeping the whitespace that follows it (and the
/// first one any leading whitespace), so that the pieces concatenate back to the exact text. For
/// single-spaced text this is "each word followed by a space, except the last".
pub(crate) fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    let mut seen_word = false;
    for (i, c) in text.char_indices() {
        let space = c.is_whitespace();
        if !space && !in_word && seen_word {
            pieces.push(&text[start..i]);
            start = i;
        }
        in_word = !space;
        seen_word |= !space;
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// Splits text into pieces of at most `max` characters (not bytes), as streamed tool arguments.
pub(crate) fn char_pieces(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (count, (i, _)) in text.char_indices().enumerate() {
        if count > 0 && count % max == 0 {
            pieces.push(&text[start..i]);
            start = i;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// Text of a message `content`: a string, or the concatenation of the `text` of its parts
/// (OpenAI `{"type":"text"}` parts and Anthropic text blocks alike).
pub(crate) fn content_text(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => {
            parts.iter().filter(|p| p["type"] == "text").filter_map(|p| p["text"].as_str()).collect()
        }
        _ => String::new(),
    }
}

/// Text of the last message whose role is `user`, or "" when there is none.
pub(crate) fn last_user_text(messages: &serde_json::Value) -> String {
    let Some(messages) = messages.as_array() else {
        return String::new();
    };
    messages.iter().rev().find(|m| m["role"] == "user").map(|m| content_text(&m["content"])).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_pieces_concatenate_back() {
        assert_eq!(word_pieces("echo: hello world"), ["echo: ", "hello ", "world"]);
        assert_eq!(word_pieces("  a\n b  "), ["  a\n ", "b  "]);
        assert_eq!(word_pieces(""), Vec::<&str>::new());
        assert_eq!(word_pieces("   "), ["   "]);
    }

    #[test]
    fn char_pieces_respect_char_boundaries() {
        assert_eq!(char_pieces(r#"{"city":"Paris"}"#, 7), [r#"{"city""#, r#":"Paris"#, r#""}"#]);
        assert_eq!(char_pieces("ééééééééé", 7), ["ééééééé", "éé"]);
        assert_eq!(char_pieces("", 7), Vec::<&str>::new());
    }

    #[test]
    fn content_text_handles_parts() {
        let parts = serde_json::json!([
            {"type": "text", "text": "a b"},
            {"type": "image_url", "image_url": {"url": "x"}},
            {"type": "text", "text": " c"}
        ]);
        assert_eq!(content_text(&parts), "a b c");
        assert_eq!(words(&content_text(&parts)), 3);
    }
}
