//! The one error of this crate: a request that cannot be translated without changing its meaning.

/// Why a request cannot be translated, and which field of it is to blame.
///
/// `param` uses the request's own field path (`messages[2].content[1]`, `tools[0].type`, `n`), so that the
/// server can return it as the OpenAI error `param` or inside the Anthropic error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TranslateError {
    pub message: String,
    pub param: Option<String>,
}

impl TranslateError {
    /// An error about the field at `param`.
    pub(crate) fn at(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { message: message.into(), param: Some(param.into()) }
    }
}
