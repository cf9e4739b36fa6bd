//! Property tests of the wire format: the frame reader, the MessagePack
//! reader and the `[kind, id, body]` envelope.
//!
//! Each property runs a modest number of cases so that `cargo test` stays
//! fast; set `PROPTEST_CASES` to run more, e.g.
//! `PROPTEST_CASES=20000 cargo test --release -p snakepit_wire --test properties`.
//! For a much longer search, see `examples/fuzz.rs`.

mod frame;
mod msgpack;
mod protocol;
mod support;
