//! Python calls Elixir: a tool's `ctx.call_elixir(name, **kwargs)` runs a
//! function the pool's Elixir side registered (`Snakepit.ElixirTools`).
//!
//! 1. The worker writes `elixir_call` on stdout, with an id of its own
//!    (unique per worker, not a request id). Its reader thread hands it to
//!    [`on_call`], which reads only the body's envelope
//!    (`snakepit_wire::protocol::elixir_call`: name, timeout, where the args
//!    start), records the id as pending on the worker ([`Pending`]), and
//!    *holds* the worker: the dispatcher writes nothing more behind its
//!    running call, and the calls already waiting there are asked back
//!    (`Dispatcher::hold`), since the function may call this pool and its
//!    call must not wait behind the one that waits for it.
//! 2. The pool's `Snakepit.ElixirTools` process gets
//!    `{:snakepit_elixir_call, worker_id, call_id, request_id | nil, name,
//!    timeout_ms | nil, frame, args_offset | nil}` and runs the function in
//!    a process of its own, which decodes the args from the frame (terms
//!    are never built on this thread, see `codec/mod.rs`).
//! 3. The outcome comes back through the `elixir_reply/4` NIF ([`reply`]),
//!    encoded on the calling scheduler (on a dirty one past a budget) with
//!    the codec of calls, so tensors and large binaries (as blobs) cross as
//!    they do in a call. It goes on the worker's control pipe, since the
//!    worker's main thread is inside the tool and does not read stdin, and
//!    only if the call is still pending: each call gets at most one reply,
//!    and none once the worker gave up on it (`elixir_cancel`) or is gone.
//!    The control pipe's writer never drops a reply (see `worker.rs`).

use crate::atoms;
use crate::codec;
use crate::pool::{PoolCore, PoolHandle};
use crate::worker::Worker;
use parking_lot::Mutex;
use rustler::env::OwnedEnv;
use rustler::types::tuple::make_tuple;
use rustler::{Atom, Encoder, Env, OwnedBinary, ResourceArc, Term};
use snakepit_wire::frame::{self, HEADER_LEN};
use snakepit_wire::msgpack::write_str;
use snakepit_wire::outgoing::OutFrame;
use snakepit_wire::protocol::{self, Envelope, Kind};
use std::collections::HashSet;

/// Most `elixir_call`s one worker may have waiting for their reply; past
/// it, a call is answered at once with a `pool` error.
pub const MAX_PENDING: usize = 1024;

/// A worker's `elixir_call`s waiting for their reply.
#[derive(Default)]
pub struct Pending {
    calls: Mutex<HashSet<u64>>,
}

impl Pending {
    /// Records `id` as waiting: `Ok(false)` when [`MAX_PENDING`] already
    /// wait, `Err` if `id` is already waiting (the worker reused it).
    fn begin(&self, id: u64) -> Result<bool, String> {
        let mut calls = self.calls.lock();
        if calls.contains(&id) {
            return Err(format!(
                "sent elixir_call {id} while a call of that id waits for its reply"
            ));
        }
        if calls.len() >= MAX_PENDING {
            return Ok(false);
        }
        calls.insert(id);
        Ok(true)
    }

    /// Takes `id` to reply to it: `false` if it is not waiting (replied
    /// already, given up by the worker, or never made).
    pub fn claim(&self, id: u64) -> bool {
        self.calls.lock().remove(&id)
    }

    fn waiting(&self, id: u64) -> bool {
        self.calls.lock().contains(&id)
    }

    /// Whether any call waits.
    pub fn any(&self) -> bool {
        !self.calls.lock().is_empty()
    }
}

/// An `elixir_call` from `worker` (see the module docs). `Err` when its body
/// breaks the protocol; the worker is then killed.
pub fn on_call(
    core: &PoolCore,
    worker: &Worker,
    envelope: Envelope,
    frame: OwnedBinary,
) -> Result<bool, String> {
    let call = protocol::elixir_call(frame.as_slice(), envelope.body)?;
    let call_id = envelope.id;
    if !worker.elixir.begin(call_id)? {
        refuse(
            worker,
            call_id,
            "pool",
            &format!(
                "worker {} already waits for {MAX_PENDING} Elixir calls",
                worker.id
            ),
        );
        return Ok(false);
    }
    for (held, calls) in core.hold(worker.id) {
        for (id, offset) in calls {
            held.reclaim(id, offset);
        }
    }
    let Some(handler) = core.elixir_handler else {
        refuse(
            worker,
            call_id,
            "pool",
            "this pool serves no Elixir functions",
        );
        return Ok(false);
    };
    let mut env = OwnedEnv::new();
    let _ = env.send_and_clear(&handler, |e| {
        let bin = frame.release(e);
        let name = bin
            .make_subbinary(call.name.start, call.name.len())
            .expect("the range was read from the frame");
        make_tuple(
            e,
            &[
                atoms::snakepit_elixir_call().encode(e),
                worker.id.encode(e),
                call_id.encode(e),
                call.request_id.encode(e),
                name.encode(e),
                call.timeout_ms.encode(e),
                bin.encode(e),
                call.args.encode(e),
            ],
        )
    });
    Ok(false)
}

/// The worker gave up waiting for `call_id` (`elixir_cancel`): a reply
/// would be dropped, so none is sent, and the process running the
/// function is told to stop.
pub fn on_cancel(core: &PoolCore, worker: &Worker, call_id: u64) {
    if worker.elixir.claim(call_id) {
        tell(core, |e| {
            make_tuple(
                e,
                &[
                    atoms::snakepit_elixir_cancel().encode(e),
                    worker.id.encode(e),
                    call_id.encode(e),
                ],
            )
        });
    }
}

/// `worker` is gone: the processes running its Elixir calls may stop.
pub fn on_exit(core: &PoolCore, worker: &Worker) {
    if worker.elixir.any() {
        tell(core, |e| {
            make_tuple(
                e,
                &[atoms::snakepit_elixir_down().encode(e), worker.id.encode(e)],
            )
        });
    }
}

fn tell(core: &PoolCore, build: impl for<'a> FnOnce(Env<'a>) -> Term<'a>) {
    if let Some(handler) = core.elixir_handler {
        let mut env = OwnedEnv::new();
        let _ = env.send_and_clear(&handler, build);
    }
}

/// Replies at once with an error of `category` (a string the Python side
/// shows), from the reader thread: no term is involved.
fn refuse(worker: &Worker, call_id: u64, category: &str, message: &str) {
    let mut buf = protocol::begin_frame(Kind::ElixirReply, call_id, message.len() + 64);
    rmp::encode::write_map_len(&mut buf, 1).expect("Vec write");
    write_str(&mut buf, b"error");
    rmp::encode::write_map_len(&mut buf, 3).expect("Vec write");
    write_str(&mut buf, b"category");
    write_str(&mut buf, category.as_bytes());
    write_str(&mut buf, b"message");
    write_str(&mut buf, message.as_bytes());
    write_str(&mut buf, b"details");
    rmp::encode::write_map_len(&mut buf, 0).expect("Vec write");
    frame::finish(&mut buf, frame::DEFAULT_MAX_FRAME).expect("a small frame");
    worker.elixir_reply(call_id, OutFrame::from(buf));
}

/// The `elixir_reply/4` NIF: sends `{:ok, value}` or `{:error, error}` (a
/// map of `"category"`, `"message"` and `"details"`) to `worker_id` as the
/// reply to `call_id`. Returns `:ok` (queued), `:stale` (nothing waits for
/// it: the worker gave up, is gone, or was replied to), `:dirty` (too much
/// work for this scheduler: retry with `elixir_reply_dirty/4`), or
/// `{:error, message}` when the value cannot be sent (reply with an error
/// instead).
pub fn reply<'a>(
    env: Env<'a>,
    pool: &ResourceArc<PoolHandle>,
    worker_id: u64,
    call_id: u64,
    outcome: Term<'a>,
    budget: usize,
) -> rustler::NifResult<Term<'a>> {
    let (tag, value): (Atom, Term) = outcome.decode()?;
    let key: &[u8] = if tag == atoms::ok() {
        b"value"
    } else if tag == atoms::error() {
        b"error"
    } else {
        return Err(rustler::Error::BadArg);
    };
    let core = &pool.core;
    let Some(worker) = core.worker(worker_id) else {
        return Ok(atoms::stale().encode(env));
    };
    if !worker.elixir.waiting(call_id) {
        return Ok(atoms::stale().encode(env));
    }
    let max_frame = core.max_frame;
    let mut buf = protocol::begin_frame(Kind::ElixirReply, call_id, 64);
    rmp::encode::write_map_len(&mut buf, 1).expect("Vec write");
    write_str(&mut buf, key);
    let mut out = OutFrame::from(buf);
    let limits = codec::Limits {
        budget,
        // A little past the frame limit is enough to refuse it.
        size: max_frame.saturating_add(HEADER_LEN + 1),
        blob_min: codec::BLOB_MIN,
    };
    let refused = match codec::encode(value, &mut out, limits) {
        Ok(()) if out.len() - HEADER_LEN > max_frame => Some(format!(
            "the result is {} bytes, larger than max_frame_bytes ({max_frame} bytes)",
            out.len() - HEADER_LEN
        )),
        Ok(()) => None,
        Err(codec::EncodeError::OverBudget) => return Ok(atoms::dirty().encode(env)),
        Err(codec::EncodeError::OverSize) => Some(format!(
            "the result is larger than max_frame_bytes ({max_frame} bytes)"
        )),
        Err(codec::EncodeError::Unsupported { what, path }) => {
            Some(format!("cannot send {what} at result{path} to Python"))
        }
        Err(codec::EncodeError::Segment(_)) => unreachable!("no segments are made"),
    };
    if let Some(message) = refused {
        return Ok((atoms::error(), message).encode(env));
    }
    let len = out.bytes.len() - HEADER_LEN;
    out.bytes[..HEADER_LEN].copy_from_slice(&frame::header(len));
    let sent = if worker.elixir_reply(call_id, out) {
        atoms::ok()
    } else {
        atoms::stale()
    };
    Ok(sent.encode(env))
}
