//! keel's architecture, checked: the tests of this crate (`tests/tidy.rs`) fail when a crate depends on what it
//! must not, when a source file lacks its `//!` header, or when the documentation names a file that no longer
//! exists. The crate has no code of its own.
