//! Elixir terms to MessagePack and back.
//!
//! | Elixir                         | MessagePack            | back to Elixir              |
//! |--------------------------------|------------------------|-----------------------------|
//! | `nil`, `true`, `false`         | nil, bool              | same                        |
//! | other atoms                    | str                    | binary (never an atom)      |
//! | integers in i64 or u64 range   | int                    | integer                     |
//! | floats                         | float 64               | float; NaN/±inf as atoms    |
//! | UTF-8 binaries                 | str                    | binary                      |
//! | other binaries                 | bin                    | binary                      |
//! | lists, tuples                  | array                  | list                        |
//! | maps                           | map                    | map                         |
//! | `%Snakepit.Tensor{}`           | ext type 84            | `%Snakepit.Tensor{}`        |
//! | other ext type T               | —                      | `{:msgpack_ext, T, binary}` |
//!
//! Pids, references, ports, funs, improper lists, bitstrings and integers
//! beyond 64 bits are refused with an [`EncodeError`] naming where they were,
//! and so are tensor structs that are not consistent (see [`tensor`]),
//! and so are two keys of one map that Python would take for one (`:x` and
//! `"x"`, `1` and `1.0`, `true` and `1`, `[1]` and `{1.0}`): Python would
//! keep only the last.
//!
//! Decoding runs only in a process env, on a (normal or dirty) scheduler of
//! the process that asked: never on the pool's own threads. OTP 25 crashes
//! when a thread that is not a scheduler builds a large map
//! (erlang/otp#8208, fixed only in 27.3 and later patch releases), and
//! charging the work to the caller is fairer anyway.
//!
//! - `encode.rs`: terms to MessagePack, within a budget;
//! - `keys.rs`: the map keys Python would take for one;
//! - `kept.rs`: binaries kept alive for a frame written after the NIF returns;
//! - `decode.rs`: MessagePack to terms;
//! - `tensor.rs`: `%Snakepit.Tensor{}` on the wire.

mod decode;
mod encode;
mod kept;
mod keys;
mod tensor;

pub use decode::{decode, DecodeFailure};
pub use encode::{encode, encode_with, EncodeError, Limits, BLOB_MIN};

/// Containers nested deeper than this are refused. It bounds the recursion
/// on scheduler stacks (small, fixed-size) as well as on our own threads.
pub const MAX_DEPTH: usize = 256;
