//! Error bodies of the two inbound APIs: OpenAI's `{"error":{...}}` and Anthropic's `{"type":"error",...}`.

use serde::{Deserialize, Serialize};

/// `{"error": {"message", "type", "param", "code"}}`, the body of every OpenAI API error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiErrorBody {
    pub error: OpenAiError,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiError {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

/// `{"type": "error", "error": {"type", "message"}}`, the body of every Anthropic API error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnthropicErrorBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub error: AnthropicError,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnthropicError {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}
