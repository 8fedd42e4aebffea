//! Faithful translation between keel's canonical shape (OpenAI chat completions) and the Anthropic Messages API.
//!
//! Pure functions and two small state machines: no IO, no async. Each direction has its own module, named after
//! the shape it produces:
//!
//! | module                | from → to                         | used for                                         |
//! |-----------------------|-----------------------------------|--------------------------------------------------|
//! | `request_to_chat`     | Anthropic request → canonical     | a client of keel's `/v1/messages`                |
//! | `request_to_messages` | canonical request → Anthropic     | keel calling Anthropic for `/v1/chat/completions` |
//! | `response`            | both non-streamed responses       | both                                             |
//! | `stream_to_messages`  | canonical chunks → Anthropic SSE  | streaming to a `/v1/messages` client             |
//! | `stream_to_chat`      | Anthropic SSE → canonical chunks  | streaming from Anthropic                         |
//! | `mapping`             | stop reasons and usage            | all of the above                                 |
//!
//! Invariants: nothing here knows HTTP or SSE framing; an input that cannot be translated without changing its
//! meaning is refused with a [`TranslateError`] naming the offending field, while fields that have no equal on
//! the other side and do not change the answer's meaning are dropped, each listed in its module's docs.
//!
//! Canonical `extra` maps may carry Anthropic's `cache_control` (on content parts, tools and tool messages) and
//! `thinking_blocks` (on assistant messages, the signed thinking blocks of a previous answer), so that an
//! Anthropic client served by Anthropic through keel keeps prompt caching and extended thinking. Providers of
//! vendors that reject unknown fields strip them.

mod content;
mod error;
mod json_scan;
mod mapping;
mod request_to_chat;
mod request_to_messages;
mod response;
mod stream_to_chat;
mod stream_to_messages;

pub use error::{TranslateError, TranslateErrorKind};
pub use mapping::{finish_reason_to_stop, stop_to_finish_reason, usage_to_anthropic, usage_to_chat};
pub use request_to_chat::messages_request_to_chat;
pub use request_to_messages::chat_request_to_messages;
pub use response::{chat_response_to_messages, messages_response_to_chat};
pub use stream_to_chat::MessagesToChatStream;
pub use stream_to_messages::ChatToMessagesStream;
