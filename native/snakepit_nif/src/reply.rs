//! Where a call's answer goes: the caller's pid and the tag it waits for.
//!
//! A [`ReplyTo`] is what the dispatcher (`snakepit_dispatch`) holds for each
//! request and hands back exactly once, to be answered or, when the caller
//! gave up, released. A streaming call's chunks go out before that, through
//! its [`Sink`], which the worker's reader thread uses outside the pool's
//! lock; answering or releasing the `ReplyTo` closes the sink first, so no
//! chunk ever follows the final answer or reaches a caller that gave up.

use crate::atoms;
use crate::shm::Framed;
use crate::terms::Failure;
use parking_lot::Mutex;
use rustler::env::{OwnedEnv, SavedTerm};
use rustler::types::tuple::make_tuple;
use rustler::{Encoder, Env, LocalPid, Monitor, Resource, ResourceArc, Term};
use std::sync::Arc;

/// The caller of one request. `R` is the resource that monitors the caller
/// (the pool's handle), so a caller that dies gives up its request.
pub struct ReplyTo<R: Resource> {
    caller: LocalPid,
    /// Holds the caller's tag; the reply is built here.
    env: OwnedEnv,
    tag: SavedTerm,
    /// Released when the request is answered or given up.
    watch: Option<(ResourceArc<R>, Monitor)>,
    /// A streaming call's chunks go here.
    sink: Option<Arc<Sink>>,
    /// The call's shared-memory segments: kept (and sent to whichever
    /// worker runs it) until it is answered or given up.
    /// Boxed: most calls have none, and a reply is moved around a lot.
    shm: Option<Box<crate::shm::Outgoing>>,
}

/// Where a streaming call's chunks go: `{tag, :chunk, frame, body_offset}`
/// to its caller, until it is closed.
pub struct Sink {
    target: Mutex<Option<Target>>,
}

struct Target {
    caller: LocalPid,
    env: OwnedEnv,
    tag: SavedTerm,
}

impl Sink {
    /// Sends a chunk unless the sink is closed. From a thread of ours only
    /// (not a scheduler thread).
    pub fn chunk(&self, frame: Framed, body: usize) {
        let target = self.target.lock();
        let Some(t) = target.as_ref() else {
            return;
        };
        let mut msg = OwnedEnv::new();
        let _ = msg.send_and_clear(&t.caller, |e| {
            let tag = t.env.run(|te| t.tag.load(te).in_env(e));
            let frame = frame.encode(e);
            make_tuple(e, &[tag, atoms::chunk().encode(e), frame, body.encode(e)])
        });
    }

    /// No chunk is sent after this returns (one being sent has arrived).
    fn close(&self) {
        self.target.lock().take();
    }
}

impl<R: Resource> ReplyTo<R> {
    /// `env` is the calling process's: the tag is copied out of it, and the
    /// caller is monitored through `resource`.
    pub fn new(env: Env, tag: Term, resource: &ResourceArc<R>) -> ReplyTo<R> {
        let caller = env.pid();
        let watch = resource
            .monitor(Some(env), &caller)
            .map(|m| (resource.clone(), m));
        let owned = OwnedEnv::new();
        let saved = owned.save(tag);
        ReplyTo {
            caller,
            env: owned,
            tag: saved,
            watch,
            sink: None,
            shm: None,
        }
    }

    /// Whether the caller is monitored: `false` when it was already
    /// exiting as the call was made.
    pub fn watched(&self) -> bool {
        self.watch.is_some()
    }

    /// Keeps the call's segments until it is answered or given up.
    pub fn hold(&mut self, segments: Option<crate::shm::Outgoing>) {
        self.shm = segments.map(Box::new);
    }

    /// For a streaming call: also makes the sink its chunks go through.
    pub fn new_stream(env: Env, tag: Term, resource: &ResourceArc<R>) -> ReplyTo<R> {
        let mut reply = ReplyTo::new(env, tag, resource);
        let sink_env = OwnedEnv::new();
        let sink_tag = sink_env.save(tag);
        reply.sink = Some(Arc::new(Sink {
            target: Mutex::new(Some(Target {
                caller: reply.caller,
                env: sink_env,
                tag: sink_tag,
            })),
        }));
        reply
    }

    /// The sink of a streaming call.
    pub fn sink(&self) -> Option<Arc<Sink>> {
        self.sink.clone()
    }

    /// Whether this is the request `monitor` watches.
    pub fn watched_by(&self, monitor: &Monitor) -> bool {
        self.watch.as_ref().is_some_and(|(_, m)| m == monitor)
    }

    /// The caller gave up: drops the monitor (`from` as in [`Self::reply`]).
    pub fn release(mut self, from: Option<Env>) {
        if let Some(sink) = self.sink.take() {
            sink.close();
        }
        if let Some((resource, monitor)) = self.watch.take() {
            resource.demonitor(from, &monitor);
        }
    }

    /// Sends `{tag, items...}`; `build` makes the items after the tag.
    ///
    /// `from` is the calling process's env on a scheduler thread (inside a
    /// NIF), `None` on the pool's own threads.
    fn reply<F>(mut self, from: Option<Env>, build: F)
    where
        F: for<'a> FnOnce(Env<'a>) -> Vec<Term<'a>>,
    {
        if let Some(sink) = self.sink.take() {
            sink.close();
        }
        if let Some((resource, monitor)) = self.watch.take() {
            resource.demonitor(from, &monitor);
        }
        let ReplyTo {
            env,
            tag,
            caller,
            shm,
            ..
        } = self;
        env.run(|e| {
            let mut items = vec![tag.load(e)];
            items.extend(build(e));
            let msg = make_tuple(e, &items);
            send_raw(from, &caller, e, msg);
        });
        // After the answer is on its way: the last close of a large segment
        // frees its pages, which takes a while.
        drop(shm);
    }

    /// `{tag, :dequeued}`: the call's `queue_timeout` passed while it waited
    /// in a worker's pipe, and the worker gave it back unstarted. From one
    /// of our threads.
    pub fn dequeued(self) {
        self.reply(None, |e| vec![atoms::dequeued().encode(e)]);
    }

    /// `{tag, :error, {category, message, details}}`.
    pub fn fail(self, from: Option<Env>, failure: &Failure) {
        self.reply(from, |e| vec![atoms::error().encode(e), failure.encode(e)]);
    }

    /// `{tag, status, frame, body_offset, meta}`, status `:result`, `:done`,
    /// `:python_error` (the tool failed) or `:validation_error` (the worker
    /// refused the call): the worker's raw frame, which the caller decodes
    /// itself (see `codec/mod.rs` for why).
    /// `meta` is `{os_pid, queue_ns, run_ns}`: which worker answered, and
    /// how long the call waited and ran (for telemetry).
    pub fn answer(self, status: rustler::Atom, frame: Framed, body: usize, meta: (u32, u64, u64)) {
        self.reply(None, move |e| {
            let frame = frame.encode(e);
            vec![status.encode(e), frame, body.encode(e), meta.encode(e)]
        });
    }
}

/// `enif_send` of a term built in a process-independent env, from either a
/// NIF (`from` is the caller's env) or one of our threads (`from` is `None`).
/// rustler's `send_and_clear` covers only the latter.
pub fn send_raw(from: Option<Env>, to: &LocalPid, msg_env: Env, msg: Term) {
    let caller_env = from.map_or(std::ptr::null_mut(), |e| e.as_c_arg());
    // SAFETY: msg was built in msg_env, a process-independent env; caller_env is
    // the current process's env or null off-scheduler, as enif_send requires.
    unsafe {
        rustler::sys::enif_send(
            caller_env,
            to.as_c_arg(),
            msg_env.as_c_arg(),
            msg.as_c_arg(),
        );
    }
}
