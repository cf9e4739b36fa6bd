//! A pool's dispatch state: its workers, the FIFO queue of waiting requests,
//! and the rule that gives every request exactly one answer.
//!
//! A request lives in exactly one place: the queue, or the `Busy` slot of the
//! worker running it. It leaves in one of two ways:
//! - [`PoolCore::cancel`] removes it under the lock; then no reply is ever sent;
//! - a thread (a worker's reader, or `close`) takes it under the lock and then
//!   sends its one reply.
//!
//! So after a caller's timeout, `cancel` answers `cancelled` (nothing will
//! arrive) or `replied` (the reply is in the mailbox or on its way), and the
//! caller never finds a stray reply later. The lock is held only to move
//! requests between those places; decoding and sending happen outside it.

use crate::atoms;
use crate::worker::{ExitInfo, Worker};
use parking_lot::Mutex;
use rustler::env::{OwnedEnv, SavedTerm};
use rustler::types::tuple::make_tuple;
use rustler::{Encoder, Env, LocalPid, OwnedBinary, Term};
use snakepit_wire::protocol::{self, Envelope, Kind};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Settings fixed when the pool is made.
pub struct PoolConfig {
    /// Largest frame accepted in either direction, in bytes.
    pub max_frame: usize,
}

/// One call on its way through the pool.
pub struct Request {
    pub id: u64,
    caller: LocalPid,
    /// Holds the caller's tag; the reply is built and sent from here.
    env: OwnedEnv,
    tag: SavedTerm,
    /// The encoded `call` frame; empty once handed to a worker.
    frame: Vec<u8>,
    /// The caller gave up while the worker was running it; drop the reply.
    cancelled: bool,
}

impl Request {
    pub fn new(id: u64, caller: LocalPid, tag: Term, frame: Vec<u8>) -> Request {
        let env = OwnedEnv::new();
        let tag = env.save(tag);
        Request {
            id,
            caller,
            env,
            tag,
            frame,
            cancelled: false,
        }
    }

    /// Sends `{tag, status, payload}` to the caller, consuming the request.
    ///
    /// `from` is the calling process's env when on a scheduler thread (inside
    /// a NIF), `None` on the pool's own threads.
    /// `build` returns the status and a tuple of payload elements, which
    /// are appended to the message after the tag and status.
    pub fn reply<F>(self, from: Option<Env>, build: F)
    where
        F: for<'a> FnOnce(Env<'a>) -> (rustler::Atom, Term<'a>),
    {
        let Request {
            env, tag, caller, ..
        } = self;
        env.run(|e| {
            let (status, payload) = build(e);
            let mut items = vec![tag.load(e), status.encode(e)];
            items.extend(rustler::types::tuple::get_tuple(payload).expect("payload tuple"));
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
            (atoms::error(), make_tuple(e, &[err]))
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

enum SlotState {
    /// Spawned, handshake not yet received.
    Starting,
    Idle,
    Busy(Request),
    /// stdin closed; it finishes what it runs, then exits.
    Stopping,
}

struct Slot {
    worker: Arc<Worker>,
    state: SlotState,
    requests: u64,
    /// Leaves the rotation once its current call (if any) is answered.
    stopping: bool,
}

#[derive(Default)]
struct Stats {
    requests: u64,
    completed: u64,
    python_errors: u64,
    worker_errors: u64,
    transport_errors: u64,
    cancelled: u64,
}

struct PoolState {
    workers: HashMap<u64, Slot>,
    idle: VecDeque<u64>,
    queue: VecDeque<Request>,
    closed: bool,
    stats: Stats,
}

/// What a pool's threads and NIFs share.
pub struct PoolCore {
    pub config: PoolConfig,
    /// The `Snakepit.Pool` process: gets worker events.
    pub owner: LocalPid,
    next_request: AtomicU64,
    state: Mutex<PoolState>,
}

/// `submit` found the pool closed; the request was dropped unanswered and
/// the caller gets the error as the NIF's return value instead.
pub struct Closed;

/// What `cancel` found.
pub enum Cancel {
    /// Removed before any reply; none will be sent.
    Cancelled,
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

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Hands a request to an idle worker, or queues it.
    pub fn submit(&self, mut req: Request) -> Result<(), Closed> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Closed);
        }
        st.stats.requests += 1;
        let Some(id) = st.idle.pop_front() else {
            st.queue.push_back(req);
            return Ok(());
        };
        let frame = std::mem::take(&mut req.frame);
        let slot = st.workers.get_mut(&id).expect("idle worker has a slot");
        slot.state = SlotState::Busy(req);
        let worker = Arc::clone(&slot.worker);
        drop(st);
        // A failed write means the worker is gone: its reader sees EOF and
        // answers the request with the exit status.
        let _ = worker.writer.send(frame);
        Ok(())
    }

    /// Gives up on a request after the caller's timeout.
    pub fn cancel(&self, request_id: u64) -> Cancel {
        let mut st = self.state.lock();
        if let Some(pos) = st.queue.iter().position(|r| r.id == request_id) {
            st.queue.remove(pos);
            st.stats.cancelled += 1;
            return Cancel::Cancelled;
        }
        let running = st
            .workers
            .values_mut()
            .find_map(|slot| match &mut slot.state {
                SlotState::Busy(req) if req.id == request_id && !req.cancelled => {
                    req.cancelled = true;
                    Some(Arc::clone(&slot.worker))
                }
                _ => None,
            });
        match running {
            Some(worker) => {
                st.stats.cancelled += 1;
                drop(st);
                let _ = worker
                    .writer
                    .send(protocol::control_frame(Kind::Cancel, request_id));
                Cancel::Cancelled
            }
            None => Cancel::Replied,
        }
    }

    /// Registers a freshly spawned worker, before its reader thread starts.
    pub fn add_worker(&self, worker: Arc<Worker>) {
        let mut st = self.state.lock();
        st.workers.insert(
            worker.id,
            Slot {
                worker,
                state: SlotState::Starting,
                requests: 0,
                stopping: false,
            },
        );
    }

    pub fn has_worker(&self, id: u64) -> bool {
        self.state.lock().workers.contains_key(&id)
    }

    pub fn worker(&self, id: u64) -> Option<Arc<Worker>> {
        self.state
            .lock()
            .workers
            .get(&id)
            .map(|s| Arc::clone(&s.worker))
    }

    /// Marks a worker idle (or gives it the next queued request) and writes
    /// that request outside the lock.
    fn release(&self, st: &mut PoolState, id: u64) -> Option<(Arc<Worker>, Vec<u8>)> {
        let slot = st.workers.get_mut(&id)?;
        if slot.stopping {
            slot.state = SlotState::Stopping;
            return None;
        }
        match st.queue.pop_front() {
            Some(mut next) => {
                let frame = std::mem::take(&mut next.frame);
                slot.state = SlotState::Busy(next);
                Some((Arc::clone(&slot.worker), frame))
            }
            None => {
                slot.state = SlotState::Idle;
                st.idle.push_back(id);
                None
            }
        }
    }

    /// Handles one frame from a worker. An `Err` means the worker broke the
    /// protocol; its reader then treats it as broken.
    pub fn on_frame(
        &self,
        worker: &Worker,
        envelope: Envelope,
        frame: OwnedBinary,
    ) -> Result<(), String> {
        match envelope.kind {
            Kind::Ready => {
                let next = {
                    let mut st = self.state.lock();
                    match st.workers.get(&worker.id).map(|s| &s.state) {
                        Some(SlotState::Starting) => {}
                        _ => return Err("sent a second ready frame".into()),
                    }
                    self.release(&mut st, worker.id)
                };
                self.notify_with_body(worker.id, atoms::ready(), frame, envelope.body);
                if let Some((w, f)) = next {
                    let _ = w.writer.send(f);
                }
                Ok(())
            }
            Kind::Result | Kind::Error if envelope.id != 0 => {
                let (req, next) = {
                    let mut st = self.state.lock();
                    let slot = st
                        .workers
                        .get_mut(&worker.id)
                        .ok_or("answered after removal")?;
                    let req = match std::mem::replace(&mut slot.state, SlotState::Idle) {
                        SlotState::Busy(req) if req.id == envelope.id => req,
                        SlotState::Stopping => {
                            // Stopping while busy keeps no request; answer
                            // frames of the call it was running are dropped.
                            slot.state = SlotState::Stopping;
                            return Ok(());
                        }
                        other => {
                            slot.state = other;
                            return Err(format!(
                                "answered request {} that it was not running",
                                envelope.id
                            ));
                        }
                    };
                    slot.requests += 1;
                    if envelope.kind == Kind::Result {
                        st.stats.completed += 1;
                    } else {
                        st.stats.python_errors += 1;
                    }
                    let next = self.release(&mut st, worker.id);
                    (req, next)
                };
                // Deliver first: writing the next request wakes the worker,
                // and on a busy machine the kernel then preempts this thread
                // at once, which would hold the reply back for a whole slice.
                if !req.cancelled {
                    deliver(req, envelope, frame);
                }
                if let Some((w, f)) = next {
                    let _ = w.writer.send(f);
                }
                Ok(())
            }
            Kind::Error => {
                // id 0: the worker could not start (e.g. the adapter failed to import).
                self.notify_with_body(worker.id, atoms::startup_error(), frame, envelope.body);
                Ok(())
            }
            Kind::Log => {
                self.notify_with_body(worker.id, atoms::log(), frame, envelope.body);
                Ok(())
            }
            Kind::Heartbeat => Ok(()),
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

    /// The worker's process is gone: answer its call, forget it, tell the owner.
    pub fn on_worker_down(&self, worker: &Worker, exit: &ExitInfo) {
        let (req, last_gone) = {
            let mut st = self.state.lock();
            let slot = st.workers.remove(&worker.id);
            st.idle.retain(|&id| id != worker.id);
            let req = match slot.map(|s| s.state) {
                Some(SlotState::Busy(req)) => {
                    if exit.protocol_error.is_some() {
                        st.stats.transport_errors += 1;
                    } else {
                        st.stats.worker_errors += 1;
                    }
                    Some(req)
                }
                _ => None,
            };
            let last_gone = st.closed && st.workers.is_empty();
            (req, last_gone)
        };
        if let Some(req) = req.filter(|r| !r.cancelled) {
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
    /// worker's stdin so each exits after its current call.
    pub fn close(&self, from: Option<Env>) {
        let workers: Vec<Arc<Worker>> = {
            let mut st = self.state.lock();
            st.closed = true;
            st.idle.clear();
            st.workers.values().map(|s| Arc::clone(&s.worker)).collect()
        };
        self.fail_queue(from, "the pool was stopped");
        for w in workers {
            w.writer.close();
        }
    }

    /// Closes stdin of one worker; it leaves the rotation now and exits after
    /// its current call.
    pub fn stop_worker(&self, id: u64) -> bool {
        let worker = {
            let mut st = self.state.lock();
            st.idle.retain(|&w| w != id);
            let Some(slot) = st.workers.get_mut(&id) else {
                return false;
            };
            slot.stopping = true;
            // A busy worker stays Busy so its caller still gets the answer.
            if !matches!(slot.state, SlotState::Busy(_)) {
                slot.state = SlotState::Stopping;
            }
            Arc::clone(&slot.worker)
        };
        worker.writer.close();
        true
    }

    /// SIGKILLs every worker's process group.
    pub fn kill_all(&self) {
        let workers: Vec<Arc<Worker>> = self
            .state
            .lock()
            .workers
            .values()
            .map(|s| Arc::clone(&s.worker))
            .collect();
        for w in workers {
            w.kill();
        }
    }

    /// Closes the pool and kills its workers; for when the owner is gone.
    pub fn shutdown(&self) {
        self.close(None);
        self.kill_all();
    }

    pub fn stats<'a>(&self, env: Env<'a>) -> Term<'a> {
        let st = self.state.lock();
        let (mut starting, mut busy, mut stopping) = (0u64, 0u64, 0u64);
        for slot in st.workers.values() {
            match slot.state {
                SlotState::Starting => starting += 1,
                SlotState::Busy(_) => busy += 1,
                SlotState::Stopping => stopping += 1,
                SlotState::Idle => {}
            }
        }
        let s = &st.stats;
        let pairs: [(rustler::Atom, u64); 12] = [
            (atoms::workers(), st.workers.len() as u64),
            (atoms::idle(), st.idle.len() as u64),
            (atoms::busy(), busy),
            (atoms::starting(), starting),
            (atoms::stopping(), stopping),
            (atoms::queued(), st.queue.len() as u64),
            (atoms::requests(), s.requests),
            (atoms::completed(), s.completed),
            (atoms::python_errors(), s.python_errors),
            (atoms::worker_errors(), s.worker_errors),
            (atoms::transport_errors(), s.transport_errors),
            (atoms::cancelled(), s.cancelled),
        ];
        pairs.iter().fold(Term::map_new(env), |m, (k, v)| {
            m.map_put(k.encode(env), v.encode(env)).expect("map")
        })
    }

    pub fn workers<'a>(&self, env: Env<'a>) -> Term<'a> {
        let st = self.state.lock();
        let mut slots: Vec<&Slot> = st.workers.values().collect();
        slots.sort_by_key(|s| s.worker.id);
        let list: Vec<Term<'a>> = slots
            .into_iter()
            .map(|slot| {
                let state = match slot.state {
                    SlotState::Starting => atoms::starting(),
                    SlotState::Idle => atoms::idle(),
                    SlotState::Busy(_) => atoms::busy(),
                    SlotState::Stopping => atoms::stopping(),
                };
                let age = Instant::now()
                    .duration_since(slot.worker.started)
                    .as_millis() as u64;
                Term::map_new(env)
                    .map_put(atoms::worker_id(), slot.worker.id)
                    .and_then(|m| m.map_put(atoms::os_pid(), slot.worker.os_pid))
                    .and_then(|m| m.map_put(atoms::state(), state))
                    .and_then(|m| m.map_put(atoms::requests(), slot.requests))
                    .and_then(|m| m.map_put(atoms::age_ms(), age))
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
        let bin = frame.release(e).encode(e);
        (status, make_tuple(e, &[bin, envelope.body.encode(e)]))
    });
}
