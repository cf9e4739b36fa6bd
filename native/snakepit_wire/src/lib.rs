//! Snakepit's wire format, with no dependency on the Erlang VM so that it can
//! be unit-tested, fuzzed and reused by workers written in Rust.
//!
//! - [`frame`]: 4-byte big-endian length prefix, size limits.
//! - [`msgpack`]: a zero-copy pull reader for MessagePack.
//! - [`outgoing`]: frames on their way out, large parts spliced in.
//! - [`protocol`]: the `[kind, id, body]` envelope and frame builders.

#![forbid(unsafe_code)]

pub mod frame;
pub mod msgpack;
pub mod outgoing;
pub mod protocol;
