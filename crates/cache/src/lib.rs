//! keel's response cache: exact and semantic, correct by construction.
//!
//! - [`key`]: the exact key, a canonical hash of everything that can change an answer (and the semantic
//!   scope: the same without the user's text).
//! - [`answer`]: what is kept (complete answers only) and how a stream is rebuilt from it.
//! - [`exact`]: the exact cache's backends, in-process (bounded in bytes) or Redis.
//! - [`semantic`], [`guards`] and [`contrast`]: earlier requests by meaning, within the same scope, behind
//!   guards against the typical false hits (numbers, dates, names, identifiers, negation, and wording that
//!   asks for something different: safe / unsafe, time / space complexity).
//!
//! The pipeline stage that uses them is `keel_pipeline`'s cache stage; this crate does no HTTP and knows no
//! provider.

pub mod answer;
pub mod channel;
pub mod contrast;
pub mod exact;
pub mod guards;
pub mod key;
pub mod semantic;

pub use answer::{Assembler, CachedAnswer, replay, storable};
pub use channel::Channel;
pub use exact::{ExactBackend, MemoryBackend, RedisBackend};
pub use key::{Key, Scope};
pub use semantic::{Lookup, SemanticIndex, Turn};

#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("cache backend: {0}")]
    Backend(String),
}
