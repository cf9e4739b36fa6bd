//! Snakepit's native core, loaded as `Elixir.Snakepit.Native`. This file
//! holds the NIF functions; the modules:
//!
//! - `pool.rs`: a pool: its dispatcher (the `snakepit_dispatch` crate, where
//!   queueing, dispatch, cancel, recycling and counting are decided) under a
//!   lock, and the glue to Erlang processes;
//! - `worker.rs`: one worker OS process, under its shepherd, and its reader
//!   and stderr threads; `writer.rs`: the write end of its stdin, with the
//!   writer thread that finishes writes a full pipe left;
//! - `spawn.rs`: starting a process from inside the BEAM with `posix_spawn`;
//! - `reply.rs`: how a call's answer, and a stream's chunks, reach its caller;
//! - `elixir.rs`: Python calls Elixir (`elixir_call` frames, `elixir_reply/4`);
//! - `codec/`: terms <-> MessagePack, with large binaries sent as blobs
//!   (`encode.rs`, `decode.rs`, `keys.rs` for map keys, `kept.rs` for the
//!   binaries blobs point into); `codec/tensor.rs`: `%Snakepit.Tensor{}` on
//!   the wire;
//! - `shm.rs`: shared-memory segments for payloads of `:shm_threshold` or more;
//! - `terms.rs`: the maps and tuples returned to Elixir; `atoms.rs`: the
//!   atoms the NIF sends;
//! - `orphans.rs`: finding and killing the leftovers of dead BEAMs.
//!
//! The wire format itself is the `snakepit_wire` crate. Answers go to callers
//! as plain messages: `{tag, :result | :done | :python_error | :validation_error, frame,
//! body_offset, meta}`, with `meta = {os_pid, queue_ns, run_ns}`, carrying
//! the worker's raw frame, which the caller decodes with `decode/2` in its
//! own process; a stream's chunks as `{tag, :chunk, frame, body_offset}`;
//! `{tag, :dequeued}` for a call a worker gave back after its queue timeout;
//! or `{tag, :error, {category, message, details}}` for failures found here.
//! A frame that came with shared-memory segments is `{:shm, frame, segments}`
//! (or `{:shm_refused, reason}` over `:shm_max_bytes`).
//!
//! Every NIF here returns in microseconds on a normal scheduler, except those
//! marked `schedule = "Dirty..."`: spawning (fork/exec), encoding large
//! arguments and decoding large answers, and the ones that read `/proc`.
//!
//! Bump [`ABI_VERSION`] whenever a NIF's name, arity or return shape changes;
//! `Snakepit.Native` refuses a library built for another version.
#![deny(clippy::undocumented_unsafe_blocks)]

mod atoms;
mod codec;
mod elixir;
mod orphans;
mod pool;
mod reply;
mod shm;
mod spawn;
mod terms;
mod worker;
mod writer;

use pool::{PoolConfig, PoolCore, PoolHandle, Reply};
use rustler::{Binary, Encoder, Env, LocalPid, NifResult, ResourceArc, Term};
use snakepit_dispatch::breaker;
use snakepit_dispatch::dispatcher::{self, Call};
use snakepit_dispatch::recycle::Policy;
use snakepit_dispatch::sessions::Affinity;
use snakepit_dispatch::stats::Outcome;
use snakepit_wire::outgoing::OutFrame;
use snakepit_wire::{frame, protocol};
use std::sync::Arc;
use std::time::Duration;
use terms::{Details, Failure, PathDetails, PoolStats, SizeDetails, WorkerInfo};

/// Must equal `@abi_version` in `lib/snakepit/native.ex`.
const ABI_VERSION: u32 = 14;

/// Most bytes an encoding on a normal scheduler copies or scans; past it,
/// the request is encoded again on a dirty CPU scheduler (`:dirty` tells
/// the caller to retry). Large binaries are sent as blobs, not copied (see
/// `codec::BLOB_MIN`), so they cost only their UTF-8 check.
const SCHEDULER_ENCODE_BUDGET: usize = 256 * 1024;

#[rustler::nif]
fn abi_version() -> u32 {
    ABI_VERSION
}

/// `pool_new/2`'s options: `Snakepit.Config.native_options/1` builds them
/// (0 means no limit), and documents and checks them.
#[derive(rustler::NifMap)]
struct PoolOptions {
    max_frame_bytes: usize,
    /// Bytes; 0: shared memory is never used.
    shm_threshold: u64,
    shm_max_bytes: u64,
    size: usize,
    concurrency: usize,
    pipeline_depth: usize,
    max_queue: usize,
    max_requests: u64,
    max_age: u64,
    max_memory_mb: u64,
    max_sessions: usize,
    /// Milliseconds; 0: sessions never expire.
    session_ttl: u64,
    /// Failures in a row that open the circuit; 0: no circuit breaker.
    circuit_threshold: u32,
    /// Milliseconds.
    circuit_window: u64,
    /// Milliseconds.
    circuit_cooldown: u64,
    shepherd: String,
    /// The pool's `Snakepit.ElixirTools` process, or nil.
    elixir_handler: Option<LocalPid>,
}

#[rustler::nif]
fn pool_new(env: Env, owner: LocalPid, opts: PoolOptions) -> NifResult<Term> {
    if opts.max_frame_bytes == 0
        || opts.max_frame_bytes > u32::MAX as usize
        || opts.pipeline_depth == 0
        || opts.concurrency == 0
    {
        return Err(rustler::Error::BadArg);
    }
    let config = PoolConfig {
        max_frame: opts.max_frame_bytes,
        shm: shm::Budget::new(
            if opts.shm_threshold == 0 {
                u64::MAX
            } else {
                opts.shm_threshold
            },
            opts.shm_max_bytes,
        ),
        shepherd: opts.shepherd,
        elixir_handler: opts.elixir_handler,
        dispatch: dispatcher::Config {
            size: opts.size,
            concurrency: opts.concurrency,
            pipeline_depth: opts.pipeline_depth,
            max_queue: opts.max_queue,
            recycle: Policy::from_limits(opts.max_requests, opts.max_age, opts.max_memory_mb),
            max_sessions: opts.max_sessions,
            session_ttl: (opts.session_ttl > 0).then(|| Duration::from_millis(opts.session_ttl)),
            breaker: (opts.circuit_threshold > 0).then(|| breaker::Settings {
                threshold: opts.circuit_threshold,
                window: Duration::from_millis(opts.circuit_window),
                cooldown: Duration::from_millis(opts.circuit_cooldown),
            }),
        },
    };
    let core = Arc::new(PoolCore::new(owner, config));
    let handle = ResourceArc::new(PoolHandle { core });
    handle.monitor(Some(env), &owner);
    Ok(handle.encode(env))
}

/// Starts a worker: `{:ok, os_pid}` or `{:error, reason}`.
#[rustler::nif(schedule = "DirtyIo")]
fn pool_start_worker<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolHandle>,
    id: u64,
    program: String,
    argv: Vec<String>,
    vars: Vec<(String, String)>,
    cwd: Option<String>,
) -> Term<'a> {
    match pool.core.start_worker(id, program, argv, vars, cwd) {
        Ok(os_pid) => (atoms::ok(), os_pid).encode(env),
        Err(why) => (atoms::error(), why).encode(env),
    }
}

/// Ends the sessions idle for `:session_ttl` and retires the worker
/// `:max_age` or `:max_memory_mb` says is due, if any: `{{worker_id,
/// reason} | nil, [expired session id]}`. On a dirty I/O scheduler: it reads
/// each worker's `/proc/<pid>/status`.
#[rustler::nif(schedule = "DirtyIo")]
fn pool_maintain(env: Env, pool: ResourceArc<PoolHandle>) -> Term {
    let (retired, expired) = pool.core.maintain();
    let retired = match retired {
        Some((id, reason)) => (id, reason.as_str()).encode(env),
        None => atoms::nil().encode(env),
    };
    let expired: Vec<Term> = expired
        .into_iter()
        .map(|id| terms::Bytes(id).encode(env))
        .collect();
    (retired, expired).encode(env)
}

#[rustler::nif]
fn pool_terminate_all(pool: ResourceArc<PoolHandle>) -> rustler::Atom {
    pool.core.terminate_all();
    atoms::ok()
}

/// Heartbeats every ready worker; returns the ids of those killed for
/// missing more than `max_missed` in a row.
#[rustler::nif]
fn pool_heartbeat(pool: ResourceArc<PoolHandle>, max_missed: u32) -> Vec<u64> {
    pool.core.heartbeat(max_missed)
}

/// Kills `worker_id` if it still runs the cancelled `request_id`:
/// `:killed` or `:ok` (it had stopped).
#[rustler::nif]
fn pool_expire(pool: ResourceArc<PoolHandle>, worker_id: u64, request_id: u64) -> rustler::Atom {
    if pool.core.expire(worker_id, request_id) {
        atoms::killed()
    } else {
        atoms::ok()
    }
}

/// Asks workers stalled on a call running `after_ms` or longer to give back
/// the calls written behind it, which then run elsewhere. Returns `false`
/// when the pool is idle: stop ticking until `:snakepit_reclaim` comes.
#[rustler::nif]
fn pool_reclaim(pool: ResourceArc<PoolHandle>, after_ms: u64) -> bool {
    pool.core.reclaim(Duration::from_millis(after_ms))
}

/// Kills the marked processes of BEAMs that are gone (see `orphans.rs`).
#[rustler::nif(schedule = "DirtyIo")]
fn reap_orphans() -> Vec<i32> {
    orphans::reap()
}

/// The pids of live processes carrying `mark`.
#[rustler::nif(schedule = "DirtyIo")]
fn marked_processes(mark: String) -> Vec<i32> {
    orphans::marked(&mark)
}

/// This BEAM's mark, `SNAKEPIT_OWNER` in every process it starts.
#[rustler::nif]
fn owner_mark() -> &'static str {
    orphans::mark()
}

#[rustler::nif]
fn pool_close(env: Env, pool: ResourceArc<PoolHandle>) -> rustler::Atom {
    pool.core.close(Some(env));
    atoms::ok()
}

#[rustler::nif]
fn pool_kill_all(pool: ResourceArc<PoolHandle>) -> rustler::Atom {
    pool.core.kill_all();
    atoms::ok()
}

/// Counters and gauges; see `snakepit_dispatch::stats` for what they mean.
#[rustler::nif]
fn pool_stats(pool: ResourceArc<PoolHandle>) -> PoolStats {
    pool.core.stats()
}

/// On a dirty I/O scheduler: it reads each worker's `/proc/<pid>/status`.
#[rustler::nif(schedule = "DirtyIo")]
fn pool_workers(pool: ResourceArc<PoolHandle>) -> Vec<WorkerInfo> {
    pool.core.workers()
}

/// Queues a call. Returns `{:ok, request_id}` (`{:ok, request_id,
/// :new_session}` when it started a session), `{:error, {category, message,
/// details}}`, or `:dirty` when the args are too large to encode here.
/// `session` is `nil` or `{session_id, :strict | :hint | :fail_fast}`;
/// `stream` is `nil` (a plain call) or a streaming call's credit window;
/// `correlation_id` is `nil` or a string the worker tags the call's logs with.
// A NIF's arguments are its Elixir arity; they cannot be grouped.
#[allow(clippy::too_many_arguments)]
#[rustler::nif]
fn submit<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolHandle>,
    tag: Term<'a>,
    tool: Binary<'a>,
    call_args: Term<'a>,
    session: Option<(Binary<'a>, rustler::Atom)>,
    stream: Option<u32>,
    correlation_id: Option<Binary<'a>>,
) -> NifResult<Term<'a>> {
    let call = call_spec(session, stream)?;
    Ok(submit_with_budget(
        env,
        &pool,
        tag,
        tool,
        call_args,
        call,
        correlation_id,
        SCHEDULER_ENCODE_BUDGET,
    ))
}

/// `submit/7` for arguments too large to encode on a normal scheduler.
#[allow(clippy::too_many_arguments)]
#[rustler::nif(schedule = "DirtyCpu")]
fn submit_dirty<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolHandle>,
    tag: Term<'a>,
    tool: Binary<'a>,
    call_args: Term<'a>,
    session: Option<(Binary<'a>, rustler::Atom)>,
    stream: Option<u32>,
    correlation_id: Option<Binary<'a>>,
) -> NifResult<Term<'a>> {
    let call = call_spec(session, stream)?;
    Ok(submit_with_budget(
        env,
        &pool,
        tag,
        tool,
        call_args,
        call,
        correlation_id,
        usize::MAX,
    ))
}

fn call_spec(session: Option<(Binary, rustler::Atom)>, stream: Option<u32>) -> NifResult<Call> {
    let session = match session {
        None => None,
        Some((id, affinity)) => {
            let affinity = if affinity == atoms::strict() {
                Affinity::Strict
            } else if affinity == atoms::hint() {
                Affinity::Hint
            } else if affinity == atoms::fail_fast() {
                Affinity::FailFast
            } else {
                return Err(rustler::Error::BadArg);
            };
            Some((id.as_slice().to_vec(), affinity))
        }
    };
    if stream == Some(0) {
        return Err(rustler::Error::BadArg);
    }
    Ok(Call { session, stream })
}

#[allow(clippy::too_many_arguments)]
fn submit_with_budget<'a>(
    env: Env<'a>,
    pool: &ResourceArc<PoolHandle>,
    tag: Term<'a>,
    tool: Binary<'a>,
    args: Term<'a>,
    call: Call,
    correlation_id: Option<Binary<'a>>,
    budget: usize,
) -> Term<'a> {
    let core = &pool.core;
    let max_frame = core.max_frame;
    let id = core.next_request_id();
    let mut frame = OutFrame::from(protocol::begin_call(
        id,
        tool.as_slice(),
        call.session.as_ref().map(|(s, _)| s.as_slice()),
        call.stream,
        correlation_id.as_ref().map(|c| c.as_slice()),
        64,
    ));
    let limits = codec::Limits {
        budget,
        // Stop encoding a little past the frame limit: that is enough to refuse it.
        size: max_frame.saturating_add(frame::HEADER_LEN + 1),
        blob_min: codec::BLOB_MIN,
    };
    let mut segs = if core.shm.enabled() {
        shm::Making::new(&core.shm)
    } else {
        shm::Making::none()
    };
    let refused = match codec::encode_with(args, &mut frame, limits, &mut segs) {
        Ok(()) => {
            // The limit is on the whole message, blobs included.
            let total = frame.len() - frame::HEADER_LEN;
            if total > max_frame {
                Some(frame_too_large(Some(total), max_frame))
            } else {
                let len = frame.bytes.len() - frame::HEADER_LEN;
                frame.bytes[..frame::HEADER_LEN].copy_from_slice(&frame::header(len));
                None
            }
        }
        Err(codec::EncodeError::OverBudget) => return atoms::dirty().encode(env),
        // Encoding stopped early, so the full size is unknown.
        Err(codec::EncodeError::OverSize) => Some(frame_too_large(None, max_frame)),
        Err(codec::EncodeError::Segment(shm::MakeError::Limit(bytes, in_flight))) => {
            Some(core.shm.refusal(bytes, in_flight, "the call"))
        }
        Err(codec::EncodeError::Segment(shm::MakeError::Io(e))) => Some(Failure::new(
            atoms::pool(),
            format!("a shared-memory segment for the call could not be made: {e}"),
            Details::None,
        )),
        Err(codec::EncodeError::Unsupported { what, path }) => {
            let message = if path.is_empty() {
                format!("cannot send {what} to a worker")
            } else {
                format!("cannot send {what} at args{path} to a worker")
            };
            let details = Details::Path(PathDetails {
                path: format!("args{path}"),
            });
            Some(Failure::new(atoms::validation(), message, details))
        }
    };
    if let Some(failure) = refused {
        core.refuse_invalid();
        return (atoms::error(), failure).encode(env);
    }
    // The `shm` frame goes right before the call, in the same write; the
    // worker's segment socket gets the fds when the pair is queued to it.
    let outgoing = (!segs.fds.is_empty()).then(|| {
        let mut shm_frame = protocol::shm_frame(id, &segs.lengths);
        shm_frame.extend_from_slice(&frame.bytes);
        frame.bytes = shm_frame;
        core.outbox.register(
            id,
            std::mem::take(&mut segs.fds),
            std::mem::take(&mut segs.leases),
        )
    });
    let mut reply = if call.stream.is_some() {
        Reply::new_stream(env, tag, pool)
    } else {
        Reply::new(env, tag, pool)
    };
    reply.hold(outgoing);
    if !reply.watched() {
        // The caller is exiting (killed while this NIF ran, e.g. during a
        // long dirty encode): nobody would take the answer, and nothing
        // would cancel the call when it dies, so it is not submitted.
        let failure = Failure::new(
            atoms::pool(),
            "the caller exited before its call was queued".to_string(),
            Details::None,
        );
        return (atoms::error(), failure).encode(env);
    }
    match core.submit(env, id, frame, reply, call) {
        Ok(false) => (atoms::ok(), id).encode(env),
        Ok(true) => (atoms::ok(), id, atoms::new_session()).encode(env),
        Err(failure) => (atoms::error(), failure).encode(env),
    }
}

/// `size` is the encoded size when it is known (encoding may stop early).
fn frame_too_large(size: Option<usize>, max_frame: usize) -> Failure {
    Failure::new(
        atoms::validation(),
        format!("the request is larger than max_frame_bytes ({max_frame} bytes)"),
        Details::Size(SizeDetails {
            limit: max_frame as u64,
            bytes: size.map(|n| n as u64),
        }),
    )
}

/// After a timeout: `:cancelled` (it was still queued; no reply will come),
/// `:running` (a worker has it and was told to cancel; no reply will come)
/// or `:replied` (the reply is in the caller's mailbox or about to be).
#[rustler::nif]
fn cancel(env: Env, pool: ResourceArc<PoolHandle>, request_id: u64) -> rustler::Atom {
    pool.core.cancel(env, request_id, Outcome::Timeout)
}

/// `cancel/2` for a stream whose consumer stopped early: counted as
/// cancelled, not as a timeout (and not a failure for the circuit breaker).
#[rustler::nif]
fn stream_cancel(env: Env, pool: ResourceArc<PoolHandle>, request_id: u64) -> rustler::Atom {
    pool.core.cancel(env, request_id, Outcome::Cancelled)
}

/// The caller of streaming call `request_id` consumed `n` chunks; its
/// worker may send `n` more.
#[rustler::nif]
fn stream_ack(pool: ResourceArc<PoolHandle>, request_id: u64, n: u32) -> rustler::Atom {
    pool.core.ack(request_id, n);
    atoms::ok()
}

/// Ends a session (its workers are sent `session_end`): whether the pool
/// had it.
#[rustler::nif]
fn end_session(pool: ResourceArc<PoolHandle>, session_id: Binary) -> bool {
    pool.core.end_session(session_id.as_slice())
}

/// Every session of the pool, ordered by id.
#[rustler::nif]
fn pool_sessions(pool: ResourceArc<PoolHandle>) -> Vec<terms::SessionInfo> {
    pool.core.sessions()
}

/// One session, or `nil`.
#[rustler::nif]
fn pool_session(pool: ResourceArc<PoolHandle>, session_id: Binary) -> Option<terms::SessionInfo> {
    pool.core.session(session_id.as_slice())
}

/// After a queue timeout: `:dequeued` if the request was still queued (it
/// is removed; no reply will come), `:pending` if it waited in a worker's
/// pipe (asked back: its reply is `{tag, :dequeued}` if given back, else its
/// answer), `:started` if a worker runs it.
#[rustler::nif]
fn dequeue(env: Env, pool: ResourceArc<PoolHandle>, request_id: u64) -> rustler::Atom {
    pool.core.dequeue(env, request_id)
}

/// Replies to a worker's `elixir_call`: `{:ok, value}` or `{:error,
/// %{"category" => _, "message" => _, "details" => _}}`, encoded with the
/// codec of calls and written on the worker's control pipe. Returns `:ok`,
/// `:stale` (no such call waits: the worker gave up on it or is gone),
/// `:dirty` (retry with `elixir_reply_dirty/4`) or `{:error, message}` (the
/// value cannot be sent). See `elixir.rs`.
#[rustler::nif]
fn elixir_reply<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolHandle>,
    worker_id: u64,
    call_id: u64,
    reply: Term<'a>,
) -> NifResult<Term<'a>> {
    elixir::reply(
        env,
        &pool,
        worker_id,
        call_id,
        reply,
        SCHEDULER_ENCODE_BUDGET,
    )
}

/// `elixir_reply/4` for a value too large to encode on a normal scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn elixir_reply_dirty<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolHandle>,
    worker_id: u64,
    call_id: u64,
    reply: Term<'a>,
) -> NifResult<Term<'a>> {
    elixir::reply(env, &pool, worker_id, call_id, reply, usize::MAX)
}

/// Encodes a term as a worker would receive it and decodes it back, without
/// a worker: lets tests check the codec directly.
#[rustler::nif(schedule = "DirtyCpu")]
fn codec_roundtrip<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    let mut frame = OutFrame::default();
    match codec::encode(term, &mut frame, codec::Limits::UNBOUNDED) {
        Ok(()) => {
            let buf = frame.bytes;
            let mut bin = rustler::OwnedBinary::new(buf.len());
            bin.as_mut_slice().copy_from_slice(&buf);
            let bin = bin.release(env);
            match codec::decode(env, bin, 0, usize::MAX, &[]) {
                Ok(t) => (atoms::ok(), t).encode(env),
                Err(e) => (atoms::error(), e.to_string()).encode(env),
            }
        }
        Err(codec::EncodeError::Unsupported { what, path }) => {
            (atoms::error(), format!("{what} at {path}")).encode(env)
        }
        Err(
            codec::EncodeError::OverBudget
            | codec::EncodeError::OverSize
            | codec::EncodeError::Segment(_),
        ) => {
            unreachable!("no limits, no segments")
        }
    }
}

/// Decodes the MessagePack item at `offset` of `data` into a term, in the
/// calling process. Replies carry raw frames and callers decode them here:
/// terms are never built on the pool's own threads (see `codec/mod.rs`).
/// Returns `:dirty` when the frame needs more work than a normal scheduler
/// should do (many values or many short strings; a large binary costs next
/// to nothing): the caller then calls `decode_dirty/2`.
#[rustler::nif]
fn decode<'a>(env: Env<'a>, data: Binary<'a>, offset: usize) -> Term<'a> {
    decode_at(env, data, offset, SCHEDULER_DECODE_BUDGET)
}

/// `decode/2` on a dirty CPU scheduler, with no budget.
#[rustler::nif(schedule = "DirtyCpu")]
fn decode_dirty<'a>(env: Env<'a>, data: Binary<'a>, offset: usize) -> Term<'a> {
    decode_at(env, data, offset, usize::MAX)
}

/// `decode/2` for a frame that came with shared-memory segments
/// (`{:shm, frame, segments}`): its handles become those binaries.
#[rustler::nif]
fn decode_shm<'a>(
    env: Env<'a>,
    data: Binary<'a>,
    offset: usize,
    segments: Vec<Binary<'a>>,
) -> Term<'a> {
    decode_with(env, data, offset, SCHEDULER_DECODE_BUDGET, &segments)
}

/// `decode_shm/3` on a dirty CPU scheduler, with no budget.
#[rustler::nif(schedule = "DirtyCpu")]
fn decode_shm_dirty<'a>(
    env: Env<'a>,
    data: Binary<'a>,
    offset: usize,
    segments: Vec<Binary<'a>>,
) -> Term<'a> {
    decode_with(env, data, offset, usize::MAX, &segments)
}

/// Work units (values, and bytes of short strings copied) a decode on a
/// normal scheduler may do: roughly what a 64 KiB frame needs at most.
const SCHEDULER_DECODE_BUDGET: usize = 64 * 1024;

fn decode_at<'a>(env: Env<'a>, data: Binary<'a>, offset: usize, budget: usize) -> Term<'a> {
    decode_with(env, data, offset, budget, &[])
}

fn decode_with<'a>(
    env: Env<'a>,
    data: Binary<'a>,
    offset: usize,
    budget: usize,
    segments: &[Binary<'a>],
) -> Term<'a> {
    if offset > data.len() {
        return (atoms::error(), "offset beyond the data").encode(env);
    }
    match codec::decode(env, data, offset, budget, segments) {
        Ok(t) => (atoms::ok(), t).encode(env),
        Err(codec::DecodeFailure::OverBudget) => atoms::dirty().encode(env),
        Err(e) => (atoms::error(), e.to_string()).encode(env),
    }
}

/// The category of a worker's `error` body whose `kind` is `kind` (a
/// string, or nil): `:validation` for a call refused before its tool ran,
/// `:python_error` otherwise. The rule is `protocol::ErrorKind::of`'s, the
/// one the pool answers and counts calls by.
#[rustler::nif]
fn error_category(kind: Option<Binary>) -> rustler::Atom {
    match protocol::ErrorKind::of(kind.as_ref().map(|k| k.as_slice())) {
        protocol::ErrorKind::Refused => atoms::validation(),
        protocol::ErrorKind::Failed => atoms::python_error(),
    }
}

rustler::init!("Elixir.Snakepit.Native");
