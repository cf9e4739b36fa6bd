//! A pool's dispatch state: its workers, the FIFO queue of waiting requests,
//! and the rule that gives every request exactly one answer.
//!
//! A request lives in exactly one place: the queue, or the `in_flight` list of
//! the worker it was written to. It leaves in one of two ways:
//! - [`PoolCore::cancel`] removes it under the lock; then no reply is ever sent;
//! - a thread (a worker's reader, or `close`) takes it under the lock and then
//!   sends its one reply.
//!
//! So after a caller's timeout, `cancel` answers `cancelled` (nothing will
//! arrive) or `replied` (the reply is in the mailbox or on its way), and the
//! caller never finds a stray reply later. The lock is held only to move
//! requests between those places; writing and sending happen outside it.
//!
//! Dispatch: the queue is strictly FIFO. A request goes to an idle worker
//! first; with `pipeline_depth` > 1, it may also be written to a busy worker
//! that has fewer than that many requests in flight, so the worker finds its
//! next call in its pipe instead of waiting a round trip for it. A worker
//! runs its calls one at a time, in order, so when one dies, the requests
//! behind its running call never started and are queued again at the front.

use crate::atoms;
use crate::worker::{ExitInfo, Retire, Worker};
use crate::PoolHandle;
use parking_lot::Mutex;
use rustler::env::{OwnedEnv, SavedTerm};
use rustler::types::tuple::make_tuple;
use rustler::{Encoder, Env, LocalPid, Monitor, OwnedBinary, ResourceArc, Term};
use snakepit_wire::protocol::{self, Envelope, Kind};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Settings fixed when the pool is made.
pub struct PoolConfig {
    /// Largest frame accepted in either direction, in bytes.
    pub max_frame: usize,
    /// Most requests written to one worker at a time (1: no pipelining).
    pub pipeline_depth: usize,
    /// Most requests waiting in the queue; past it, `submit` refuses.
    pub max_queue: usize,
    /// Requests a worker serves before it is recycled (0: no limit).
    pub max_requests: u64,
    /// Path of the `snakepit_shepherd` executable.
    pub shepherd: String,
}

/// One call on its way through the pool.
pub struct Request {
    pub id: u64,
    caller: LocalPid,
    /// Holds the caller's tag; the reply is built and sent from here.
    env: OwnedEnv,
    tag: SavedTerm,
    /// The encoded `call` frame; empty once written to an idle worker (kept
    /// when written behind a running call, in case it must be requeued).
    frame: Vec<u8>,
    /// The caller gave up while the worker was running it; drop the reply.
    cancelled: bool,
    /// The pool's monitor of the caller, so a caller that dies gives up its
    /// request. Released when the request is answered or cancelled.
    watch: Option<Watch>,
}

/// A monitor of a caller, with the resource that holds it.
pub type Watch = (ResourceArc<PoolHandle>, Monitor);

impl Request {
    pub fn new(
        id: u64,
        caller: LocalPid,
        tag: Term,
        frame: Vec<u8>,
        watch: Option<Watch>,
    ) -> Request {
        let env = OwnedEnv::new();
        let tag = env.save(tag);
        Request {
            id,
            caller,
            env,
            tag,
            frame,
            cancelled: false,
            watch,
        }
    }

    /// Drops the monitor of the caller (`from` as in `reply`).
    fn unwatch(&mut self, from: Option<Env>) {
        if let Some((handle, monitor)) = self.watch.take() {
            handle.demonitor(from, &monitor);
        }
    }

    /// Sends `{tag, ...}` to the caller, consuming the request: `build`
    /// returns the elements that follow the tag.
    ///
    /// `from` is the calling process's env when on a scheduler thread (inside
    /// a NIF), `None` on the pool's own threads.
    pub fn reply<F>(self, from: Option<Env>, build: F)
    where
        F: for<'a> FnOnce(Env<'a>) -> Vec<Term<'a>>,
    {
        let mut this = self;
        this.unwatch(from);
        let Request {
            env, tag, caller, ..
        } = this;
        env.run(|e| {
            let mut items = vec![tag.load(e)];
            items.extend(build(e));
            let msg = make_tuple(e, &items);
            send_raw(from, &caller, e, msg);
        });
    }

    /// Replies `{tag, :error, {category, message, details}}`.
    pub fn reply_error(self, from: Option<Env>, category: rustler::Atom, message: String) {
        self.reply_error_with(from, category, message, rustler::types::map::map_new);
    }

    pub fn reply_error_with<D>(
        self,
        from: Option<Env>,
        category: rustler::Atom,
        message: String,
        details: D,
    ) where
        D: for<'a> FnOnce(Env<'a>) -> Term<'a>,
    {
        self.reply(from, |e| {
            let err = make_tuple(e, &[category.encode(e), message.encode(e), details(e)]);
            vec![atoms::error().encode(e), err]
        });
    }
}

/// `enif_send` of a term built in a process-independent env, from either a
/// NIF (`from` is the caller's env) or one of our threads (`from` is `None`).
/// rustler's `send_and_clear` covers only the latter.
fn send_raw(from: Option<Env>, to: &LocalPid, msg_env: Env, msg: Term) {
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

struct Slot {
    worker: Arc<Worker>,
    /// Handshake received.
    ready: bool,
    /// stdin closed: takes no new requests, finishes those it has.
    stopping: bool,
    /// Requests written to the worker: the first is running, the others wait
    /// in its pipe. Never longer than `pipeline_depth`.
    in_flight: VecDeque<Request>,
    requests: u64,
    /// Heartbeats sent since the last answer to one.
    missed_heartbeats: u32,
}

impl Slot {
    fn state(&self) -> rustler::Atom {
        if !self.in_flight.is_empty() {
            atoms::busy()
        } else if self.stopping {
            atoms::stopping()
        } else if !self.ready {
            atoms::starting()
        } else {
            atoms::idle()
        }
    }
}

#[derive(Default)]
struct Stats {
    requests: u64,
    completed: u64,
    python_errors: u64,
    worker_errors: u64,
    transport_errors: u64,
    cancelled: u64,
    requeued: u64,
    /// Refused because the queue was full.
    rejected: u64,
}

struct PoolState {
    workers: HashMap<u64, Slot>,
    /// Ready workers with nothing in flight. Taken most recently idle first
    /// (LIFO): at low load the same warm worker keeps serving.
    idle: VecDeque<u64>,
    queue: VecDeque<Request>,
    closed: bool,
    stats: Stats,
}

/// Workers whose stdin has frames enqueued, to flush once the lock is released.
type Writes = Vec<Arc<Worker>>;

impl PoolState {
    /// Moves queued requests to workers (idle ones first, the most recently
    /// idle of them first, then, when
    /// pipelining, the least loaded one with room) and returns the frames to
    /// write. Keeps the invariant: while the queue is not empty, no worker
    /// that takes requests has room.
    fn fill(&mut self, depth: usize) -> Writes {
        let mut writes: Writes = Vec::new();
        while !self.queue.is_empty() {
            let target = match self.idle.pop_back() {
                Some(id) => id,
                None if depth > 1 => match self.roomiest(depth) {
                    Some(id) => id,
                    None => break,
                },
                None => break,
            };
            let mut req = self.queue.pop_front().expect("queue not empty");
            let slot = self.workers.get_mut(&target).expect("target has a slot");
            // A request written behind a running call keeps its bytes: if the
            // worker dies first, it is queued again and written elsewhere.
            let frame = if slot.in_flight.is_empty() {
                std::mem::take(&mut req.frame)
            } else {
                req.frame.clone()
            };
            // Enqueued under the pool's lock, so frames reach each pipe in the
            // order of `in_flight`.
            if let Err(frame) = slot.worker.writer.enqueue(frame) {
                // Its stdin is closed: the worker is on its way out (its reader
                // reports the exit). The request never reached it: put it
                // back and take this worker out of the rotation.
                slot.stopping = true;
                req.frame = frame;
                self.queue.push_front(req);
                self.idle.retain(|&id| id != target);
                continue;
            }
            slot.in_flight.push_back(req);
            if !writes.iter().any(|w| w.id == target) {
                writes.push(Arc::clone(&slot.worker));
            }
        }
        writes
    }

    /// The busy worker with the fewest requests in flight, below `depth`.
    fn roomiest(&self, depth: usize) -> Option<u64> {
        self.workers
            .iter()
            .filter(|(_, s)| s.ready && !s.stopping && s.in_flight.len() < depth)
            .min_by_key(|(id, s)| (s.in_flight.len(), **id))
            .map(|(id, _)| *id)
    }

    /// After a worker's in-flight list shrank: idle again, or stopping.
    fn settle(&mut self, id: u64) {
        if let Some(slot) = self.workers.get(&id) {
            if slot.ready && !slot.stopping && slot.in_flight.is_empty() {
                self.idle.push_back(id);
            }
        }
    }
}

fn write_all(writes: Writes) {
    for worker in writes {
        worker.writer.flush();
    }
}

/// What a pool's threads and NIFs share.
pub struct PoolCore {
    pub config: PoolConfig,
    /// The `Snakepit.Pool` process: gets worker events.
    pub owner: LocalPid,
    next_request: AtomicU64,
    state: Mutex<PoolState>,
}

/// Why `submit` refused a request. It was dropped unanswered: the caller
/// gets the error as the NIF's return value instead.
pub enum Refused {
    Closed,
    /// The queue holds `max_queue` requests.
    Full(usize),
}

/// What `cancel` found.
pub enum Cancel {
    /// Removed from the queue before any reply; none will be sent.
    Cancelled,
    /// Running (or written to) a worker, which was told to cancel it; its
    /// answer will be dropped.
    Running,
    /// Not there any more: its reply has been or is being sent.
    Replied,
}

impl PoolCore {
    pub fn new(owner: LocalPid, config: PoolConfig) -> PoolCore {
        PoolCore {
            config,
            owner,
            next_request: AtomicU64::new(1),
            state: Mutex::new(PoolState {
                workers: HashMap::new(),
                idle: VecDeque::new(),
                queue: VecDeque::new(),
                closed: false,
                stats: Stats::default(),
            }),
        }
    }

    pub fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Why a worker with this id cannot be started now, if it cannot.
    pub fn refuse_worker(&self, id: u64) -> Option<&'static str> {
        let st = self.state.lock();
        if st.closed {
            Some("the pool is closed")
        } else if st.workers.contains_key(&id) {
            Some("a worker with this id is running")
        } else {
            None
        }
    }

    /// Queues a request behind those already waiting and dispatches what can be.
    pub fn submit(&self, from: Env, mut req: Request) -> Result<(), Refused> {
        let writes = {
            let mut st = self.state.lock();
            let refused = if st.closed {
                Some(Refused::Closed)
            } else if st.queue.len() >= self.config.max_queue && st.idle.is_empty() {
                st.stats.rejected += 1;
                Some(Refused::Full(st.queue.len()))
            } else {
                None
            };
            if let Some(refused) = refused {
                drop(st);
                req.unwatch(Some(from));
                return Err(refused);
            }
            st.stats.requests += 1;
            st.queue.push_back(req);
            st.fill(self.config.pipeline_depth)
        };
        write_all(writes);
        Ok(())
    }

    /// Gives up on a request after the caller's timeout (`from` is the
    /// caller's env).
    pub fn cancel(&self, from: Env, request_id: u64) -> Cancel {
        let st = self.state.lock();
        let Err(st) = Self::take_queued(st, from, request_id) else {
            return Cancel::Cancelled;
        };
        match self.cancel_written(st, Some(from), true, |r| r.id == request_id) {
            0 => Cancel::Replied,
            _ => Cancel::Running,
        }
    }

    /// Takes a request out of the queue, if it is still there: the caller
    /// waited its `queue_timeout`. `false` means a worker has it.
    pub fn dequeue(&self, from: Env, request_id: u64) -> bool {
        Self::take_queued(self.state.lock(), from, request_id).is_ok()
    }

    /// Removes a queued request (no reply will be sent), or hands the lock
    /// back if it is not in the queue.
    fn take_queued<'g>(
        mut st: parking_lot::MutexGuard<'g, PoolState>,
        from: Env,
        request_id: u64,
    ) -> Result<(), parking_lot::MutexGuard<'g, PoolState>> {
        let Some(pos) = st.queue.iter().position(|r| r.id == request_id) else {
            return Err(st);
        };
        let mut req = st.queue.remove(pos).expect("found");
        st.stats.cancelled += 1;
        drop(st);
        req.unwatch(Some(from));
        Ok(())
    }

    /// The caller behind `monitor` died: its requests are given up, as if
    /// it had cancelled them. `env` is the monitor callback's.
    pub fn caller_down(&self, env: Env, monitor: &Monitor) {
        let is_its = |r: &Request| r.watch.as_ref().is_some_and(|(_, m)| m == monitor);
        let mut st = self.state.lock();
        let before = st.queue.len();
        st.queue.retain(|r| !is_its(r));
        let removed = (before - st.queue.len()) as u64;
        st.stats.cancelled += removed;
        // The monitor has fired: nothing to release.
        self.cancel_written(st, Some(env), false, is_its);
    }

    /// Marks the written requests that `which` picks as cancelled, tells
    /// their workers, and tells the owner, which kills a worker that is not
    /// free again within the grace period (see `expire`). `from` is the
    /// current process's or callback's env (as in `Request::reply`); with
    /// `demonitor`, their monitors are released (it must then be the
    /// calling process's). Returns how many it found.
    fn cancel_written(
        &self,
        mut st: parking_lot::MutexGuard<'_, PoolState>,
        from: Option<Env>,
        demonitor: bool,
        which: impl Fn(&Request) -> bool,
    ) -> usize {
        let mut found: Vec<(Arc<Worker>, u64, Option<Watch>)> = Vec::new();
        for slot in st.workers.values_mut() {
            for req in slot.in_flight.iter_mut() {
                if !req.cancelled && which(req) {
                    req.cancelled = true;
                    found.push((Arc::clone(&slot.worker), req.id, req.watch.take()));
                }
            }
        }
        st.stats.cancelled += found.len() as u64;
        drop(st);
        let count = found.len();
        for (worker, request_id, watch) in found {
            if let (true, Some((handle, monitor))) = (demonitor, watch) {
                handle.demonitor(from, &monitor);
            }
            // The worker still answers it (that frees its place); the answer
            // is dropped.
            worker.control(&protocol::control_frame(Kind::Cancel, request_id));
            self.notify(from, worker.id, atoms::cancelled(), request_id);
        }
        count
    }

    /// The grace period after cancelling `request_id` is over: if `worker_id`
    /// still has it, the worker is killed. Returns whether it was.
    pub fn expire(&self, worker_id: u64, request_id: u64) -> bool {
        let worker = {
            let st = self.state.lock();
            st.workers
                .get(&worker_id)
                .filter(|s| s.in_flight.iter().any(|r| r.id == request_id))
                .map(|s| Arc::clone(&s.worker))
        };
        match worker {
            Some(w) => {
                w.kill("it did not stop a cancelled call within the grace period");
                true
            }
            None => false,
        }
    }

    /// Sends a heartbeat to every ready worker, and kills those that have
    /// not answered the last `max_missed`. Returns the ids of those killed.
    pub fn heartbeat(&self, max_missed: u32) -> Vec<u64> {
        let (beat, dead): (Vec<_>, Vec<_>) = {
            let mut st = self.state.lock();
            st.workers
                .values_mut()
                .filter(|s| s.ready && !s.stopping)
                .map(|s| {
                    s.missed_heartbeats += 1;
                    (Arc::clone(&s.worker), s.missed_heartbeats > max_missed)
                })
                .partition(|(_, dead)| !dead)
        };
        let frame = protocol::control_frame(Kind::Heartbeat, 0);
        for (worker, _) in &beat {
            worker.control(&frame);
        }
        dead.into_iter()
            .map(|(worker, _)| {
                worker.kill(&format!("it missed {max_missed} heartbeats in a row"));
                worker.id
            })
            .collect()
    }

    /// Takes a worker out of the rotation and closes its stdin: it finishes
    /// the calls it has, then exits. Its exit reports it as recycled.
    pub fn recycle(&self, id: u64, why: &str) -> bool {
        match self.worker(id) {
            Some(w) => {
                w.set_retire(Retire::Recycled(why.to_string()));
                self.stop_worker(id)
            }
            None => false,
        }
    }

    /// Sends `{:snakepit_worker, id, event, value}` to the owner.
    fn notify(&self, from: Option<Env>, id: u64, event: rustler::Atom, value: u64) {
        let env = OwnedEnv::new();
        env.run(|e| {
            let msg = make_tuple(
                e,
                &[
                    atoms::snakepit_worker().encode(e),
                    id.encode(e),
                    event.encode(e),
                    value.encode(e),
                ],
            );
            send_raw(from, &self.owner, e, msg);
        });
    }

    /// Registers a freshly spawned worker, before its reader thread starts.
    pub fn add_worker(&self, worker: Arc<Worker>) {
        let mut st = self.state.lock();
        st.workers.insert(
            worker.id,
            Slot {
                worker,
                ready: false,
                stopping: false,
                in_flight: VecDeque::new(),
                requests: 0,
                missed_heartbeats: 0,
            },
        );
    }

    pub fn worker(&self, id: u64) -> Option<Arc<Worker>> {
        self.state
            .lock()
            .workers
            .get(&id)
            .map(|s| Arc::clone(&s.worker))
    }

    /// Handles one frame from a worker. `Ok(true)` means the frame left the
    /// worker idle with nothing queued: a moment when its reader may briefly
    /// poll for the next answer instead of sleeping (see `worker.rs`). An
    /// `Err` means the worker broke the protocol; its reader then treats it
    /// as broken.
    pub fn on_frame(
        &self,
        worker: &Worker,
        envelope: Envelope,
        frame: OwnedBinary,
    ) -> Result<bool, String> {
        let depth = self.config.pipeline_depth;
        match envelope.kind {
            Kind::Ready => {
                let writes = {
                    let mut st = self.state.lock();
                    let slot = st
                        .workers
                        .get_mut(&worker.id)
                        .ok_or("sent ready after removal")?;
                    if slot.ready {
                        return Err("sent a second ready frame".into());
                    }
                    slot.ready = true;
                    st.settle(worker.id);
                    st.fill(depth)
                };
                self.notify_with_body(worker.id, atoms::ready(), frame, envelope.body);
                write_all(writes);
                Ok(false)
            }
            Kind::Result | Kind::Error if envelope.id != 0 => {
                let (req, writes, now_idle) = {
                    let mut st = self.state.lock();
                    let slot = st
                        .workers
                        .get_mut(&worker.id)
                        .ok_or("answered after removal")?;
                    match slot.in_flight.front() {
                        Some(running) if running.id == envelope.id => {}
                        _ => {
                            return Err(format!(
                                "answered request {} that it was not running",
                                envelope.id
                            ))
                        }
                    }
                    let req = slot.in_flight.pop_front().expect("checked above");
                    slot.requests += 1;
                    let max = self.config.max_requests;
                    if max > 0 && slot.requests >= max && !slot.stopping {
                        // Recycled: takes nothing new; exits once drained.
                        slot.stopping = true;
                        slot.worker
                            .set_retire(Retire::Recycled("max_requests".to_string()));
                        slot.worker.writer.close();
                    }
                    if envelope.kind == Kind::Result {
                        st.stats.completed += 1;
                    } else {
                        st.stats.python_errors += 1;
                    }
                    st.settle(worker.id);
                    let writes = st.fill(depth);
                    let now_idle = st
                        .workers
                        .get(&worker.id)
                        .is_some_and(|s| s.in_flight.is_empty());
                    (req, writes, now_idle)
                };
                // Deliver first: writing the next request wakes the worker,
                // and on a busy machine the kernel then preempts this thread
                // at once, which would hold the reply back for a whole slice.
                if !req.cancelled {
                    deliver(req, envelope, frame);
                }
                write_all(writes);
                Ok(now_idle)
            }
            Kind::Error => {
                // id 0: the worker could not start (e.g. the adapter failed to import).
                self.notify_with_body(worker.id, atoms::startup_error(), frame, envelope.body);
                Ok(false)
            }
            Kind::Log => {
                self.notify_with_body(worker.id, atoms::log(), frame, envelope.body);
                Ok(false)
            }
            Kind::Heartbeat => {
                if let Some(slot) = self.state.lock().workers.get_mut(&worker.id) {
                    slot.missed_heartbeats = 0;
                }
                Ok(false)
            }
            Kind::Chunk | Kind::Done | Kind::Result => Err(format!(
                "sent a {} frame this host does not expect",
                envelope.kind.as_str()
            )),
            Kind::Call | Kind::Cancel => Err(format!(
                "sent a {} frame, which only the host sends",
                envelope.kind.as_str()
            )),
        }
    }

    /// The worker's process is gone: answer its running call, queue again the
    /// ones behind it (they never started), forget it, tell the owner.
    pub fn on_worker_down(&self, worker: &Worker, exit: &ExitInfo) {
        let (running, writes, last_gone) = {
            let mut st = self.state.lock();
            st.idle.retain(|&id| id != worker.id);
            let mut in_flight = st
                .workers
                .remove(&worker.id)
                .map(|s| s.in_flight)
                .unwrap_or_default();
            let running = in_flight.pop_front();
            if running.is_some() {
                if exit.protocol_error.is_some() {
                    st.stats.transport_errors += 1;
                } else {
                    st.stats.worker_errors += 1;
                }
            }
            for req in in_flight.into_iter().rev().filter(|r| !r.cancelled) {
                debug_assert!(
                    !req.frame.is_empty(),
                    "prefetched requests keep their frame"
                );
                st.stats.requeued += 1;
                st.queue.push_front(req);
            }
            let last_gone = st.closed && st.workers.is_empty();
            let writes = st.fill(self.config.pipeline_depth);
            (running, writes, last_gone)
        };
        write_all(writes);
        if let Some(req) = running.filter(|r| !r.cancelled) {
            let category = if exit.protocol_error.is_some() {
                atoms::transport()
            } else {
                atoms::worker()
            };
            let message = exit.describe(worker);
            req.reply_error_with(None, category, message, |e| exit.details(e, worker));
        }
        if last_gone {
            self.fail_queue(None, "the pool was stopped");
        }
        let mut env = OwnedEnv::new();
        let _ = env.send_and_clear(&self.owner, |e| {
            make_tuple(
                e,
                &[
                    atoms::snakepit_worker().encode(e),
                    worker.id.encode(e),
                    atoms::exit().encode(e),
                    exit.details(e, worker),
                ],
            )
        });
    }

    /// Sends `{:snakepit_worker, id, event, {:msgpack, frame, body_offset}}`
    /// to the owner, which decodes the body itself (see `codec.rs`).
    fn notify_with_body(&self, id: u64, event: rustler::Atom, frame: OwnedBinary, body: usize) {
        let mut env = OwnedEnv::new();
        let _ = env.send_and_clear(&self.owner, |e| {
            let frame = frame.release(e).encode(e);
            let body = make_tuple(e, &[atoms::msgpack().encode(e), frame, body.encode(e)]);
            make_tuple(
                e,
                &[
                    atoms::snakepit_worker().encode(e),
                    id.encode(e),
                    event.encode(e),
                    body,
                ],
            )
        });
    }

    /// Answers every queued request with a `:pool` error.
    fn fail_queue(&self, from: Option<Env>, why: &str) {
        let queued: Vec<Request> = self.state.lock().queue.drain(..).collect();
        for req in queued {
            req.reply_error(from, atoms::pool(), why.to_string());
        }
    }

    /// Stops taking requests, answers the queued ones, and closes every
    /// worker's stdin so each exits after the calls it has.
    pub fn close(&self, from: Option<Env>) {
        let workers: Vec<Arc<Worker>> = {
            let mut st = self.state.lock();
            st.closed = true;
            st.idle.clear();
            st.workers
                .values_mut()
                .map(|s| {
                    s.stopping = true;
                    Arc::clone(&s.worker)
                })
                .collect()
        };
        self.fail_queue(from, "the pool was stopped");
        for w in workers {
            w.writer.close();
        }
    }

    /// Closes stdin of one worker; it leaves the rotation now and exits after
    /// the calls it has.
    pub fn stop_worker(&self, id: u64) -> bool {
        let worker = {
            let mut st = self.state.lock();
            st.idle.retain(|&w| w != id);
            let Some(slot) = st.workers.get_mut(&id) else {
                return false;
            };
            slot.stopping = true;
            Arc::clone(&slot.worker)
        };
        worker.writer.close();
        true
    }

    fn all_workers(&self) -> Vec<Arc<Worker>> {
        let st = self.state.lock();
        st.workers.values().map(|s| Arc::clone(&s.worker)).collect()
    }

    /// SIGKILLs every worker's process group.
    pub fn kill_all(&self) {
        for w in self.all_workers() {
            w.kill("the pool was stopped");
        }
    }

    /// SIGTERMs every worker's process group.
    pub fn terminate_all(&self) {
        for w in self.all_workers() {
            w.terminate();
        }
    }

    /// Closes the pool and kills its workers; for when the owner is gone.
    pub fn shutdown(&self) {
        self.close(None);
        self.kill_all();
    }

    pub fn stats<'a>(&self, env: Env<'a>) -> Term<'a> {
        let st = self.state.lock();
        let (mut starting, mut busy, mut stopping, mut in_flight) = (0u64, 0u64, 0u64, 0u64);
        for slot in st.workers.values() {
            in_flight += slot.in_flight.len() as u64;
            let state = slot.state();
            if state == atoms::starting() {
                starting += 1;
            } else if state == atoms::busy() {
                busy += 1;
            } else if state == atoms::stopping() {
                stopping += 1;
            }
        }
        let s = &st.stats;
        let pairs: [(rustler::Atom, u64); 15] = [
            (atoms::workers(), st.workers.len() as u64),
            (atoms::idle(), st.idle.len() as u64),
            (atoms::busy(), busy),
            (atoms::starting(), starting),
            (atoms::stopping(), stopping),
            (atoms::in_flight(), in_flight),
            (atoms::queued(), st.queue.len() as u64),
            (atoms::requests(), s.requests),
            (atoms::completed(), s.completed),
            (atoms::python_errors(), s.python_errors),
            (atoms::worker_errors(), s.worker_errors),
            (atoms::transport_errors(), s.transport_errors),
            (atoms::cancelled(), s.cancelled),
            (atoms::requeued(), s.requeued),
            (atoms::rejected(), s.rejected),
        ];
        pairs.iter().fold(Term::map_new(env), |m, (k, v)| {
            m.map_put(k.encode(env), v.encode(env)).expect("map")
        })
    }

    pub fn workers<'a>(&self, env: Env<'a>) -> Term<'a> {
        let mut rows: Vec<(u64, u32, rustler::Atom, usize, u64, u64)> = {
            let st = self.state.lock();
            st.workers
                .values()
                .map(|slot| {
                    let age = slot.worker.started.elapsed().as_millis() as u64;
                    let w = &slot.worker;
                    let n = slot.in_flight.len();
                    (w.id, w.os_pid, slot.state(), n, slot.requests, age)
                })
                .collect()
        };
        rows.sort_by_key(|r| r.0);
        let nil = atoms::nil().encode(env);
        let list: Vec<Term<'a>> = rows
            .into_iter()
            .map(|(id, os_pid, state, in_flight, requests, age)| {
                let rss = crate::worker::rss_bytes(os_pid).map_or(nil, |b| b.encode(env));
                Term::map_new(env)
                    .map_put(atoms::worker_id(), id)
                    .and_then(|m| m.map_put(atoms::os_pid(), os_pid))
                    .and_then(|m| m.map_put(atoms::state(), state))
                    .and_then(|m| m.map_put(atoms::in_flight(), in_flight))
                    .and_then(|m| m.map_put(atoms::requests(), requests))
                    .and_then(|m| m.map_put(atoms::age_ms(), age))
                    .and_then(|m| m.map_put(atoms::rss_bytes(), rss))
                    .expect("map")
            })
            .collect();
        list.encode(env)
    }
}

/// Sends `{tag, :result | :python_error, frame, body_offset}`: the caller
/// decodes the body itself (see `codec.rs` for why not here).
fn deliver(req: Request, envelope: Envelope, frame: OwnedBinary) {
    req.reply(None, move |e| {
        let status = if envelope.kind == Kind::Result {
            atoms::result()
        } else {
            atoms::python_error()
        };
        let frame = frame.release(e).encode(e);
        vec![status.encode(e), frame, envelope.body.encode(e)]
    });
}
