//! The one error of this crate: a request that cannot be translated without changing its meaning.

/// Why a request cannot be translated, and which field of it is to blame.
///
/// `param` uses the request's own field path (`messages[2].content[1]`, `tools[0].type`, `n`), so that the
/// server can return it as the OpenAI error `param` or inside the Anthropic error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TranslateError {
    pub kind: TranslateErrorKind,
    pub message: String,
    pub param: Option<String>,
}

/// Whose fault a refusal is, which decides what the caller does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranslateErrorKind {
    /// A valid canonical request that the Anthropic API cannot express (`n` > 1, an audio part, a non-function
    /// tool): another vendor may serve it, so a route falls over.
    Unsupported,
    /// A client's request that keel cannot read as meant (an Anthropic request with a block keel does not
    /// model): the client's to fix.
    Invalid,
}

impl TranslateError {
    /// An error about the field at `param`; its kind is set by the public function that returns it.
    pub(crate) fn at(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind: TranslateErrorKind::Invalid, message: message.into(), param: Some(param.into()) }
    }

    pub(crate) fn of_kind(mut self, kind: TranslateErrorKind) -> Self {
        self.kind = kind;
        self
    }
}
