//! Snakepit's native core, loaded as `Elixir.Snakepit.Native`.
//!
//! It owns the worker OS processes, their pipes and the threads that serve
//! them (`worker.rs`, `writer.rs`), a pool's queue and dispatch (`pool.rs`),
//! and the term <-> MessagePack codec (`codec.rs`). The wire format itself is
//! the `snakepit_wire` crate. Answers go to callers as plain messages:
//! `{tag, :result | :python_error, frame, body_offset}` carrying the worker's
//! raw frame, which the caller decodes with `decode/2` in its own process, or
//! `{tag, :error, {category, message, details}}` for failures found here.
//!
//! Every NIF here returns in microseconds on a normal scheduler, except the
//! two marked dirty: spawning (fork/exec) and encoding large arguments.
//!
//! Bump [`ABI_VERSION`] whenever a NIF's name, arity or return shape changes;
//! `Snakepit.Native` refuses a library built for another version.

mod atoms;
mod codec;
mod orphans;
mod pool;
mod worker;
mod writer;

use pool::{Cancel, PoolConfig, PoolCore, Refused, Request};
use rustler::types::tuple::make_tuple;
use rustler::{Binary, Encoder, Env, LocalPid, NifResult, Resource, ResourceArc, Term};
use snakepit_wire::{frame, protocol};
use std::sync::Arc;
use worker::WorkerSpec;

/// Must equal `@abi_version` in `lib/snakepit/native.ex`.
const ABI_VERSION: u32 = 4;

/// Largest encoded request built on a normal scheduler; bigger ones are
/// re-encoded on a dirty CPU scheduler (`:dirty` tells the caller to retry).
const SCHEDULER_ENCODE_BUDGET: usize = 256 * 1024;

/// The handle Elixir holds. Dropping the last reference (or the owner
/// process dying) shuts the pool down and kills its workers.
pub struct PoolHandle {
    core: Arc<PoolCore>,
}

#[rustler::resource_impl]
impl Resource for PoolHandle {
    /// The owner died (the pool is shut down), or a caller did (its
    /// requests are given up).
    fn down<'a>(&'a self, env: Env<'a>, pid: LocalPid, mon: rustler::Monitor) {
        if pid == self.core.owner {
            shutdown_off_scheduler(&self.core);
        } else {
            self.core.caller_down(env, &mon);
        }
    }
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        shutdown_off_scheduler(&self.core);
    }
}

/// Replies can only be sent from a scheduler thread with the caller's env,
/// which resource callbacks do not have: do the shutdown on a thread.
fn shutdown_off_scheduler(core: &Arc<PoolCore>) {
    let core = Arc::clone(core);
    let _ = std::thread::Builder::new()
        .name("snakepit-shutdown".into())
        .spawn(move || core.shutdown());
}

#[rustler::nif]
fn abi_version() -> u32 {
    ABI_VERSION
}

/// `pool_new/2`'s options; `Snakepit.Config` documents and checks them.
#[derive(rustler::NifMap)]
struct PoolOptions {
    max_frame: usize,
    pipeline_depth: usize,
    max_queue: usize,
    max_requests: u64,
    shepherd: String,
}

#[rustler::nif]
fn pool_new(env: Env, owner: LocalPid, opts: PoolOptions) -> NifResult<Term> {
    if opts.max_frame == 0 || opts.max_frame > u32::MAX as usize || opts.pipeline_depth == 0 {
        return Err(rustler::Error::BadArg);
    }
    let config = PoolConfig {
        max_frame: opts.max_frame,
        pipeline_depth: opts.pipeline_depth,
        max_queue: opts.max_queue,
        max_requests: opts.max_requests,
        shepherd: opts.shepherd,
    };
    let core = Arc::new(PoolCore::new(owner, config));
    let handle = ResourceArc::new(PoolHandle { core });
    handle.monitor(Some(env), &owner);
    Ok(handle.encode(env))
}

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
    if let Some(why) = pool.core.refuse_worker(id) {
        return (atoms::error(), why).encode(env);
    }
    let spec = WorkerSpec {
        id,
        shepherd: pool.core.config.shepherd.clone(),
        program,
        args: argv,
        env: vars,
        cwd,
    };
    match worker::spawn(&pool.core, spec) {
        Ok(w) => (atoms::ok(), w.os_pid).encode(env),
        Err(e) => (atoms::error(), e.to_string()).encode(env),
    }
}

#[rustler::nif]
fn pool_stop_worker(pool: ResourceArc<PoolHandle>, id: u64) -> rustler::Atom {
    if pool.core.stop_worker(id) {
        atoms::ok()
    } else {
        atoms::not_found()
    }
}

/// Drains a worker and lets it exit; its exit reports it as recycled for `why`.
#[rustler::nif]
fn pool_recycle_worker(pool: ResourceArc<PoolHandle>, id: u64, why: String) -> rustler::Atom {
    if pool.core.recycle(id, &why) {
        atoms::ok()
    } else {
        atoms::not_found()
    }
}

#[rustler::nif]
fn pool_kill_worker(pool: ResourceArc<PoolHandle>, id: u64, why: String) -> rustler::Atom {
    match pool.core.worker(id) {
        Some(w) => {
            w.kill(&why);
            atoms::ok()
        }
        None => atoms::not_found(),
    }
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

#[rustler::nif]
fn pool_stats<'a>(env: Env<'a>, pool: ResourceArc<PoolHandle>) -> Term<'a> {
    pool.core.stats(env)
}

/// On a dirty I/O scheduler: it reads each worker's `/proc/<pid>/status`.
#[rustler::nif(schedule = "DirtyIo")]
fn pool_workers<'a>(env: Env<'a>, pool: ResourceArc<PoolHandle>) -> Term<'a> {
    pool.core.workers(env)
}

/// Queues a call. Returns `{:ok, request_id}`, `{:error, {category, message,
/// details}}`, or `:dirty` when the args are too large to encode here.
#[rustler::nif]
fn submit<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolHandle>,
    tag: Term<'a>,
    tool: Binary<'a>,
    call_args: Term<'a>,
    session_id: Option<Binary<'a>>,
) -> Term<'a> {
    submit_with_budget(
        env,
        &pool,
        tag,
        tool,
        call_args,
        session_id,
        SCHEDULER_ENCODE_BUDGET,
    )
}

/// `submit/5` for arguments too large to encode on a normal scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn submit_dirty<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolHandle>,
    tag: Term<'a>,
    tool: Binary<'a>,
    call_args: Term<'a>,
    session_id: Option<Binary<'a>>,
) -> Term<'a> {
    submit_with_budget(env, &pool, tag, tool, call_args, session_id, usize::MAX)
}

fn submit_with_budget<'a>(
    env: Env<'a>,
    pool_arc: &ResourceArc<PoolHandle>,
    tag: Term<'a>,
    tool: Binary<'a>,
    args: Term<'a>,
    session_id: Option<Binary<'a>>,
    budget: usize,
) -> Term<'a> {
    let core = &pool_arc.core;
    let max_frame = core.config.max_frame;
    let id = core.next_request_id();
    let mut buf = protocol::begin_call(
        id,
        tool.as_slice(),
        session_id.as_ref().map(|s| s.as_slice()),
        64,
    );
    // Stop encoding a little past the frame limit: that is enough to refuse it.
    let limit = budget.min(max_frame.saturating_add(frame::HEADER_LEN + 1));
    match codec::encode(args, &mut buf, limit) {
        Ok(()) => {}
        Err(codec::EncodeError::OverBudget) if limit == budget => {
            return atoms::dirty().encode(env);
        }
        Err(codec::EncodeError::OverBudget) => {
            // Encoding stopped early, so the full size is unknown.
            return frame_too_large(env, None, max_frame);
        }
        Err(codec::EncodeError::Unsupported { what, path }) => {
            let message = if path.is_empty() {
                format!("cannot send {what} to a worker")
            } else {
                format!("cannot send {what} (at args{path}) to a worker")
            };
            let details = Term::map_new(env)
                .map_put(atoms::path(), format!("args{path}"))
                .expect("map");
            return error_tuple(env, atoms::validation(), message, details);
        }
    }
    if frame::finish(&mut buf, max_frame).is_err() {
        return frame_too_large(env, Some(buf.len() - frame::HEADER_LEN), max_frame);
    }
    let caller = env.pid();
    let watch = pool_arc
        .monitor(Some(env), &caller)
        .map(|m| (pool_arc.clone(), m));
    let req = Request::new(id, caller, tag, buf, watch);
    match core.submit(env, req) {
        Ok(()) => (atoms::ok(), id).encode(env),
        Err(Refused::Closed) => error_tuple(
            env,
            atoms::pool(),
            "the pool was stopped".into(),
            Term::map_new(env),
        ),
        Err(Refused::Full(queued)) => {
            let details = Term::map_new(env)
                .map_put(atoms::queued(), queued)
                .and_then(|m| m.map_put(atoms::limit(), core.config.max_queue))
                .expect("map");
            error_tuple(
                env,
                atoms::pool(),
                format!("the pool is saturated: {queued} calls are already queued (:max_queue)"),
                details,
            )
        }
    }
}

/// `size` is the encoded size when it is known (encoding may stop early).
fn frame_too_large(env: Env, size: Option<usize>, max_frame: usize) -> Term {
    let mut details = Term::map_new(env)
        .map_put(atoms::limit(), max_frame)
        .expect("map");
    if let Some(size) = size {
        details = details.map_put(atoms::bytes(), size).expect("map");
    }
    error_tuple(
        env,
        atoms::validation(),
        format!("the request is larger than max_frame_bytes ({max_frame} bytes)"),
        details,
    )
}

fn error_tuple<'a>(
    env: Env<'a>,
    category: rustler::Atom,
    message: String,
    details: Term<'a>,
) -> Term<'a> {
    let err = make_tuple(env, &[category.encode(env), message.encode(env), details]);
    (atoms::error(), err).encode(env)
}

/// After a timeout: `:cancelled` (it was still queued; no reply will come),
/// `:running` (a worker has it and was told to cancel; no reply will come)
/// or `:replied` (the reply is in the caller's mailbox or about to be).
#[rustler::nif]
fn cancel(env: Env, pool: ResourceArc<PoolHandle>, request_id: u64) -> rustler::Atom {
    match pool.core.cancel(env, request_id) {
        Cancel::Cancelled => atoms::cancelled(),
        Cancel::Running => atoms::running(),
        Cancel::Replied => atoms::replied(),
    }
}

/// After a queue timeout: `true` if the request was still queued (it is
/// removed; no reply will come), `false` if a worker has it.
#[rustler::nif]
fn dequeue(env: Env, pool: ResourceArc<PoolHandle>, request_id: u64) -> bool {
    pool.core.dequeue(env, request_id)
}

/// Encodes a term as a worker would receive it and decodes it back, without
/// a worker: lets tests check the codec directly.
#[rustler::nif(schedule = "DirtyCpu")]
fn codec_roundtrip<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    let mut buf = Vec::new();
    match codec::encode(term, &mut buf, usize::MAX) {
        Ok(()) => {
            let mut bin = rustler::OwnedBinary::new(buf.len());
            bin.as_mut_slice().copy_from_slice(&buf);
            let bin = bin.release(env);
            match codec::decode(env, bin, 0) {
                Ok(t) => (atoms::ok(), t).encode(env),
                Err(e) => (atoms::error(), e.to_string()).encode(env),
            }
        }
        Err(codec::EncodeError::Unsupported { what, path }) => {
            (atoms::error(), format!("{what} at {path}")).encode(env)
        }
        Err(codec::EncodeError::OverBudget) => unreachable!("no budget"),
    }
}

/// Decodes the MessagePack item at `offset` of `data` into a term, in the
/// calling process. Replies carry raw frames and callers decode them here:
/// terms are never built on the pool's own threads (see `codec.rs`).
/// For frames up to 64 KiB; larger ones go to `decode_dirty/2`.
#[rustler::nif]
fn decode<'a>(env: Env<'a>, data: Binary<'a>, offset: usize) -> Term<'a> {
    decode_at(env, data, offset)
}

/// `decode/2` on a dirty CPU scheduler, for large frames.
#[rustler::nif(schedule = "DirtyCpu")]
fn decode_dirty<'a>(env: Env<'a>, data: Binary<'a>, offset: usize) -> Term<'a> {
    decode_at(env, data, offset)
}

fn decode_at<'a>(env: Env<'a>, data: Binary<'a>, offset: usize) -> Term<'a> {
    if offset > data.len() {
        return (atoms::error(), "offset beyond the data").encode(env);
    }
    match codec::decode(env, data, offset) {
        Ok(t) => (atoms::ok(), t).encode(env),
        Err(e) => (atoms::error(), e.to_string()).encode(env),
    }
}

rustler::init!("Elixir.Snakepit.Native");
