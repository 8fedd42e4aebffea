//! Integration tests of the mock upstream over real sockets, one binary for all of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod anthropic;
mod binary;
mod control;
mod faults;
mod openai;
mod support;
mod wire;
