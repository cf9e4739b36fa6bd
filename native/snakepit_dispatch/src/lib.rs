//! The rules of a Snakepit pool, as plain Rust with no dependency on the
//! Erlang VM, so that every transition can be unit-tested.
//!
//! - [`dispatcher`]: the FIFO queue, the worker slots, dispatch (idle workers
//!   first, then pipelining), requeue on worker death, cancel and dequeue, and
//!   the rule that every request gets exactly one answer.
//! - [`sessions`]: which worker holds each session's state.
//! - [`stats`]: the outcome counters, which partition the requests.
//! - [`recycle`]: when a worker is retired (`max_requests`, `max_age`,
//!   `max_memory_mb`).
//! - [`breaker`]: the circuit breaker.
//! - [`latency`]: percentiles of recent queue and run times.
//! - [`output`]: how much of a worker's stderr and log output reaches Elixir.
//!
//! The NIF (`native/snakepit_nif/src/pool.rs`) holds a [`Dispatcher`] under a
//! lock, with its replies (`C`) being Erlang pids and tags and its workers
//! (`W`) being real processes. Here, tests use plain values for both.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod dispatcher;
pub mod latency;
pub mod output;
pub mod recycle;
pub mod sessions;
pub mod stats;

pub use dispatcher::{Dispatcher, Pipe};
