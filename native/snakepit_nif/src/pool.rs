//! A pool as the NIF sees it: its dispatcher (`snakepit_dispatch`, where the
//! queue, dispatch, cancel, recycling and counting rules live) under one lock,
//! the Elixir process that owns it, and the glue that turns the dispatcher's
//! decisions into writes to workers and messages to Erlang processes.
//!
//! The lock is held only while the dispatcher decides; replies, flushes,
//! signals and notifications happen after it is released. Frames are
//! enqueued to a worker's stdin under the lock (no syscall), so they reach
//! each pipe in dispatch order whichever thread flushes.
//!
//! Messages to the owner (`Snakepit.Pool`) are
//! `{:snakepit_worker, worker_id, event, data}`; see `Snakepit.Pool`.

use crate::atoms;
use crate::reply::{send_raw, ReplyTo};
use crate::shm::Framed;
use crate::terms::{
    state_atom, Bytes, CircuitDetails, Details, Failure, HandshakeDetails, PoolStats,
    SessionDetails, SessionInfo, SessionLimitDetails, WorkerInfo,
};
use crate::worker::{self, Events, ExitInfo, Worker, WorkerSpec};
use parking_lot::Mutex;
use rustler::env::OwnedEnv;
use rustler::types::tuple::make_tuple;
use rustler::{Atom, Encoder, Env, LocalPid, Monitor, OwnedBinary, Resource};
use snakepit_dispatch::breaker::{self, Transition};
use snakepit_dispatch::dispatcher::{
    self, Call, Cancel, Dequeue, Ended, Exit, Refused, StartError, Terminal, Writes,
};
use snakepit_dispatch::output::Admit;
use snakepit_dispatch::recycle::Reason;
use snakepit_dispatch::sessions::{Affinity, Refusal, SessionRow};
use snakepit_dispatch::stats::Outcome;
use snakepit_dispatch::Dispatcher;
use snakepit_wire::outgoing::OutFrame;
use snakepit_wire::protocol::{self, Envelope, ErrorKind, HandshakeError, Kind, PROTOCOL_VERSION};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The handle Elixir holds. Dropping the last reference (or the owner
/// process dying) shuts the pool down and kills its workers.
pub struct PoolHandle {
    pub core: Arc<PoolCore>,
}

#[rustler::resource_impl]
impl Resource for PoolHandle {
    /// The owner died (the pool is shut down), or a caller did (its
    /// requests are given up).
    fn down<'a>(&'a self, env: Env<'a>, pid: LocalPid, mon: Monitor) {
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

/// Whom a request's answer goes to.
pub type Reply = ReplyTo<PoolHandle>;

/// Settings fixed when the pool is made.
pub struct PoolConfig {
    /// Largest frame accepted in either direction, in bytes.
    pub max_frame: usize,
    /// Shared-memory threshold, limit and bytes in flight.
    pub shm: Arc<crate::shm::Budget>,
    /// Path of the `snakepit_shepherd` executable.
    pub shepherd: String,
    /// The process that runs the pool's Elixir functions (see `elixir.rs`).
    pub elixir_handler: Option<LocalPid>,
    pub dispatch: dispatcher::Config,
}

/// What a pool's threads and NIFs share.
pub struct PoolCore {
    /// The `Snakepit.Pool` process: gets worker events.
    pub owner: LocalPid,
    pub max_frame: usize,
    pub shm: Arc<crate::shm::Budget>,
    /// Segments of calls not answered yet (Elixir → Python).
    pub outbox: Arc<crate::shm::Outbox>,
    /// Gets the workers' `elixir_call`s (see `elixir.rs`).
    pub elixir_handler: Option<LocalPid>,
    shepherd: String,
    next_request: AtomicU64,
    dispatch: Mutex<Dispatcher<Reply, Worker>>,
    /// The owner stopped its reclaim ticks, the pool being idle: the next
    /// submit sends it `:snakepit_reclaim` to start them again (see
    /// [`PoolCore::reclaim`]). Set and read under the dispatch lock's order.
    reclaim_idle: AtomicBool,
}

fn flush(writes: Writes<Worker>) {
    for worker in writes {
        worker.flush();
    }
}

impl PoolCore {
    pub fn new(owner: LocalPid, config: PoolConfig) -> PoolCore {
        PoolCore {
            owner,
            max_frame: config.max_frame,
            shm: config.shm,
            outbox: Arc::default(),
            elixir_handler: config.elixir_handler,
            shepherd: config.shepherd,
            next_request: AtomicU64::new(1),
            dispatch: Mutex::new(Dispatcher::new(config.dispatch)),
            reclaim_idle: AtomicBool::new(true),
        }
    }

    /// Runs `f` on the dispatcher under the lock, then tells the owner of
    /// any change of the circuit breaker's state that `f` caused.
    /// `from` is the calling process's env inside a NIF, `None` on our threads.
    fn with_dispatch<R>(
        &self,
        from: Option<Env>,
        f: impl FnOnce(&mut Dispatcher<Reply, Worker>) -> R,
    ) -> R {
        let (result, transitions) = {
            let mut d = self.dispatch.lock();
            let result = f(&mut d);
            (result, d.circuit_transitions())
        };
        if !transitions.is_empty() {
            self.circuit_changed(from, transitions);
        }
        result
    }

    /// Sends `{:snakepit_circuit, state, retry_after_ms | nil, failures | nil}`
    /// to the owner for each change.
    fn circuit_changed(&self, from: Option<Env>, transitions: Vec<Transition>) {
        let now = Instant::now();
        for t in transitions {
            let (state, after, failures) = match t {
                Transition::Open { until, failures } => (
                    atoms::open(),
                    Some(until.saturating_duration_since(now).as_millis() as u64),
                    Some(failures),
                ),
                Transition::HalfOpen => (atoms::half_open(), None, None),
                Transition::Close => (atoms::closed(), None, None),
            };
            let env = OwnedEnv::new();
            env.run(|e| {
                let msg = (atoms::snakepit_circuit(), state, after, failures).encode(e);
                send_raw(from, &self.owner, e, msg);
            });
        }
    }

    pub fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts a worker process under its shepherd and serves it; returns its
    /// OS pid. A worker whose threads cannot all start is killed and leaves
    /// no slot behind.
    pub fn start_worker(
        self: &Arc<Self>,
        id: u64,
        program: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
    ) -> Result<u32, String> {
        // start_registered refuses too, but only after the process is spawned.
        if self.dispatch.lock().is_closed() {
            return Err(dispatcher::Unregistrable::Closed.as_str().into());
        }
        let spec = WorkerSpec {
            id,
            shepherd: self.shepherd.clone(),
            program,
            args,
            env,
            cwd,
            outbox: Arc::clone(&self.outbox),
        };
        let launched = worker::launch(spec).map_err(|e| e.to_string())?;
        let worker = Arc::clone(launched.worker());
        let events: Arc<dyn Events> = Arc::clone(self) as Arc<dyn Events>;
        let started = dispatcher::start_registered(&self.dispatch, id, Arc::clone(&worker), || {
            launched.serve(events)
        });
        match started {
            Ok(()) => Ok(worker.os_pid),
            Err(e) => {
                worker.abandon();
                Err(match e {
                    StartError::Refused(why) => why.as_str().to_string(),
                    StartError::Failed(e) => format!("its threads could not start: {e}"),
                })
            }
        }
    }

    /// Queues an encoded call (see `Dispatcher::submit_call`); `Ok(true)`
    /// if it started a new session. On refusal the caller gets the failure
    /// as the NIF's return value.
    // A refused call's reply comes back to be released: a ReplyTo is 128
    // bytes with its shared-memory segments, once per call, on the stack.
    #[allow(clippy::result_large_err)]
    pub fn submit(
        &self,
        env: Env,
        id: u64,
        frame: OutFrame,
        reply: Reply,
        call: Call,
    ) -> Result<bool, Failure> {
        let session = call.session.clone();
        let submitted = self.with_dispatch(Some(env), |d| {
            d.submit_call(id, frame, reply, call, Instant::now())
        });
        // After the lock: a reclaim pass that found the pool idle set the
        // flag before releasing it, so this call is seen by one or the other.
        if self.reclaim_idle.load(Ordering::Relaxed)
            && self.reclaim_idle.swap(false, Ordering::AcqRel)
        {
            let env_out = OwnedEnv::new();
            env_out.run(|e| {
                send_raw(
                    Some(env),
                    &self.owner,
                    e,
                    atoms::snakepit_reclaim().encode(e),
                )
            });
        }
        match submitted {
            Ok(submitted) => {
                flush(submitted.writes);
                Ok(submitted.new_session)
            }
            Err((why, reply)) => {
                reply.release(Some(env));
                Err(match why {
                    Refused::Closed => Failure::stopped(),
                    Refused::Session(refusal) => {
                        let (key, affinity) = session.expect("a session call");
                        session_refused(refusal, key, affinity).retryable()
                    }
                    Refused::Circuit(refused) => circuit_refused(refused),
                    Refused::Full(queued) => {
                        let limit = self.dispatch.lock().config().max_queue;
                        Failure::new(
                            atoms::pool(),
                            format!(
                                "the pool is saturated: {queued} calls are already queued (:max_queue)"
                            ),
                            Details::Queue(crate::terms::QueueDetails {
                                queued: queued as u64,
                                limit: limit as u64,
                            }),
                        )
                        .retryable()
                    }
                })
            }
        }
    }

    /// Counts a call refused before it was queued (bad arguments).
    pub fn refuse_invalid(&self) {
        self.dispatch.lock().refuse_invalid();
    }

    /// The caller of streaming call `request_id` consumed `n` chunks: its
    /// worker may send `n` more.
    pub fn ack(&self, request_id: u64, n: u32) {
        let worker = self.dispatch.lock().ack(request_id, n);
        if let Some(worker) = worker {
            worker.ack(request_id, n);
        }
    }

    /// Ends a session: each worker holding state for it is sent
    /// `session_end`. Returns whether there was such a session.
    pub fn end_session(&self, session_id: &[u8]) -> bool {
        let frame = protocol::session_end_frame(session_id);
        let ended = self.dispatch.lock().end_session(session_id, &frame);
        match ended {
            Some(ended) => {
                apply(ended);
                true
            }
            None => false,
        }
    }

    /// Every session, ordered by id.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.session_infos(|d, now| d.sessions(now))
    }

    /// One session, if the pool has it.
    pub fn session(&self, session_id: &[u8]) -> Option<SessionInfo> {
        self.session_infos(|d, now| d.session(session_id, now).into_iter().collect())
            .pop()
    }

    /// The rows `pick` takes from the dispatcher, with their workers' os pids.
    fn session_infos(
        &self,
        pick: impl FnOnce(&Dispatcher<Reply, Worker>, Instant) -> Vec<SessionRow>,
    ) -> Vec<SessionInfo> {
        let now = Instant::now();
        let (rows, workers) = {
            let d = self.dispatch.lock();
            (pick(&d, now), d.workers(now))
        };
        rows.into_iter()
            .map(|r| {
                let os_pid = r
                    .worker
                    .and_then(|id| workers.iter().find(|w| w.id == id).map(|w| w.worker.os_pid));
                session_info(r, os_pid)
            })
            .collect()
    }

    /// Gives up a request after the caller's timeout, or when it stopped
    /// consuming a stream (`outcome`; `env` is the caller's): `:cancelled`
    /// (it was queued), `:running` (its worker was told to cancel it) or
    /// `:replied` (its answer is sent or on its way).
    pub fn cancel(&self, env: Env, request_id: u64, outcome: Outcome) -> Atom {
        let found = self.with_dispatch(Some(env), |d| d.give_up(request_id, outcome));
        match found {
            Cancel::Queued(reply) => {
                reply.release(Some(env));
                atoms::cancelled()
            }
            Cancel::Running { caller, worker, .. } => {
                caller.release(Some(env));
                self.tell_cancel(Some(env), &worker, request_id);
                atoms::running()
            }
            Cancel::Replied => atoms::replied(),
        }
    }

    /// After a queue timeout: `:dequeued` if the request was still queued
    /// (it is removed, and no answer will come); `:pending` if it waits in a
    /// worker's pipe (its worker is asked for it back: it is answered either
    /// `{tag, :dequeued}`, if given back, or as usual, if it starts first);
    /// `:started` if a worker runs it (or it was answered).
    pub fn dequeue(&self, env: Env, request_id: u64) -> rustler::Atom {
        match self.with_dispatch(Some(env), |d| d.dequeue(request_id)) {
            Dequeue::Queued(reply) => {
                reply.release(Some(env));
                atoms::dequeued()
            }
            Dequeue::Pipelined(worker) => {
                if let Some((worker, offset)) = worker {
                    worker.reclaim(request_id, offset);
                }
                atoms::pending()
            }
            Dequeue::Started => atoms::started(),
        }
    }

    /// The caller behind `monitor` died: its requests are given up. `env` is
    /// the monitor callback's; the monitor has fired, so nothing is released.
    pub fn caller_down(&self, env: Env, monitor: &Monitor) {
        let given_up = self.with_dispatch(Some(env), |d| d.caller_down(|r| r.watched_by(monitor)));
        drop(given_up.queued);
        for (reply, worker, _, request_id) in given_up.running {
            drop(reply);
            self.tell_cancel(Some(env), &worker, request_id);
        }
    }

    /// Holds worker `id` for an `elixir_call` of its running call (see
    /// `Dispatcher::hold`): the calls to ask back.
    pub fn hold(&self, id: u64) -> dispatcher::Asks<Worker> {
        self.dispatch.lock().hold(id)
    }

    /// Worker `id`, if the pool has it.
    pub fn worker(&self, id: u64) -> Option<Arc<Worker>> {
        self.dispatch.lock().worker(id)
    }

    /// Tells a worker to cancel a call, and the owner, which kills the worker
    /// if it still runs the call `:cancel_grace` ms later (see `expire`).
    fn tell_cancel(&self, from: Option<Env>, worker: &Worker, request_id: u64) {
        worker.control(Kind::Cancel, request_id);
        self.notify(from, worker.id, atoms::cancelled(), request_id);
    }

    /// The grace period after cancelling `request_id` is over: kills
    /// `worker_id` if it still has it. Returns whether it did.
    pub fn expire(&self, worker_id: u64, request_id: u64) -> bool {
        let worker = self.dispatch.lock().expired(worker_id, request_id);
        worker
            .map(|w| w.kill("it did not stop a cancelled call within the grace period"))
            .is_some()
    }

    /// Asks each worker whose running call started `after` ago or more to
    /// give back the calls waiting behind it (a `reclaim` per call on its
    /// control pipe; see `Dispatcher::reclaim_due`). Returns `false` when
    /// the pool has no call queued or in flight: the owner then stops its
    /// reclaim ticks, and the next submit sends it `:snakepit_reclaim`.
    pub fn reclaim(&self, after: Duration) -> bool {
        let (asks, idle) = {
            let mut d = self.dispatch.lock();
            let asks = d.reclaim_due(after, Instant::now());
            let g = d.gauges();
            let idle = g.queued == 0 && g.busy == 0;
            if idle {
                self.reclaim_idle.store(true, Ordering::Release);
            }
            (asks, idle)
        };
        for (worker, calls) in asks {
            for (id, offset) in calls {
                worker.reclaim(id, offset);
            }
        }
        !idle
    }

    /// Sends a heartbeat to every ready worker and kills those that missed
    /// more than `max_missed` in a row. Returns the ids of those killed.
    pub fn heartbeat(&self, max_missed: u32) -> Vec<u64> {
        let round = self.dispatch.lock().heartbeat(max_missed);
        for worker in round.beat {
            worker.control(Kind::Heartbeat, 0);
        }
        round
            .dead
            .into_iter()
            .map(|(id, worker)| {
                worker.kill(&format!("it missed {max_missed} heartbeats in a row"));
                id
            })
            .collect()
    }

    /// Ends the sessions idle for `session_ttl` (returned), then retires the
    /// worker that `max_age` or `max_memory_mb` says is due, if any. Reads
    /// `/proc`: call it from a dirty scheduler.
    pub fn maintain(&self) -> (Option<(u64, Reason)>, Vec<Vec<u8>>) {
        let mut ended = self
            .dispatch
            .lock()
            .expire_sessions(Instant::now(), protocol::session_end_frame);
        let expired = std::mem::take(&mut ended.ended)
            .into_iter()
            .map(Vec::from)
            .collect();
        apply(ended);
        (self.retire_due(), expired)
    }

    fn retire_due(&self) -> Option<(u64, Reason)> {
        let (policy, size, rows) = {
            let d = self.dispatch.lock();
            (
                d.config().recycle,
                d.config().size,
                d.workers(Instant::now()),
            )
        };
        if !policy.watches_vitals() {
            return None;
        }
        let vitals = Dispatcher::<Reply, Worker>::vitals(&rows, |w| worker::rss_bytes(w.os_pid));
        let (id, reason) = policy.due(&vitals, size)?;
        let worker = self.dispatch.lock().retire(id)?;
        worker.recycle(reason);
        Some((id, reason))
    }

    /// Stops taking requests, answers the queued ones, and closes every
    /// worker's stdin so each exits after the calls it has.
    pub fn close(&self, from: Option<Env>) {
        let (queued, workers) = self.with_dispatch(from, |d| d.close());
        for reply in queued {
            reply.fail(from, &Failure::stopped());
        }
        for worker in workers {
            worker.close_stdin();
        }
    }

    /// SIGKILLs every worker's process group.
    pub fn kill_all(&self) {
        for w in self.dispatch.lock().all_workers() {
            w.kill("the pool was stopped");
        }
    }

    /// SIGTERMs every worker's process group.
    pub fn terminate_all(&self) {
        for w in self.dispatch.lock().all_workers() {
            w.terminate();
        }
    }

    /// Closes the pool and kills its workers; for when the owner is gone.
    pub fn shutdown(&self) {
        self.close(None);
        self.kill_all();
    }

    pub fn stats(&self) -> PoolStats {
        let (mut stats, workers) = {
            let mut d = self.dispatch.lock();
            let circuit = d.circuit().map(|state| match state {
                breaker::State::Closed => atoms::closed(),
                breaker::State::Open(_) => atoms::open(),
                breaker::State::HalfOpen(_) => atoms::half_open(),
            });
            let latency = d.latency(Instant::now());
            (
                PoolStats::new(d.gauges(), d.stats(), circuit, latency),
                d.all_workers(),
            )
        };
        // Drops are counted by the dispatcher as they are reported; add those
        // not reported yet.
        stats.counters.dropped_output_lines +=
            workers.iter().map(|w| w.pending_drops()).sum::<u64>();
        stats.native.shm_bytes = self.shm.in_flight();
        stats
    }

    /// Every worker, ordered by id. Reads `/proc` for each worker's memory.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let rows = self.dispatch.lock().workers(Instant::now());
        rows.into_iter()
            .map(|r| WorkerInfo {
                worker_id: r.id,
                os_pid: r.worker.os_pid,
                state: state_atom(r.state),
                in_flight: r.in_flight as u64,
                running: r.running as u64,
                requests: r.served,
                age_ms: r.age.as_millis() as u64,
                rss_bytes: worker::rss_bytes(r.worker.os_pid),
                sessions: r.sessions as u64,
            })
            .collect()
    }

    /// Sends `{:snakepit_worker, id, event, value}` to the owner.
    fn notify<T: Encoder>(&self, from: Option<Env>, id: u64, event: Atom, value: T) {
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

    /// Sends `{:snakepit_worker, id, event, {:msgpack, frame, body_offset}}`
    /// to the owner, which decodes the body itself (see `codec/mod.rs`).
    fn notify_with_body(&self, id: u64, event: Atom, frame: OwnedBinary, body: usize) {
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

    /// The handshake: the worker must speak our protocol version before it
    /// is marked ready, so a worker that does not never receives a call.
    fn on_ready(
        &self,
        worker: &Worker,
        envelope: Envelope,
        frame: OwnedBinary,
    ) -> Result<bool, String> {
        if let Err(e) = protocol::check_ready(frame.as_slice(), envelope.body) {
            let protocol = match e {
                HandshakeError::Version(v) => v,
                HandshakeError::Malformed(_) => None,
            };
            let failure = Failure::new(
                atoms::worker(),
                format!(
                    "worker {} (os pid {}) cannot serve: {e}",
                    worker.id, worker.os_pid
                ),
                Details::Handshake(HandshakeDetails {
                    worker_id: worker.id,
                    os_pid: worker.os_pid,
                    expected_protocol: PROTOCOL_VERSION,
                    protocol,
                }),
            );
            self.notify(None, worker.id, atoms::startup_error(), failure);
            return Err(format!("its handshake was refused: {e}"));
        }
        let concurrent_sessions = protocol::concurrent_sessions(frame.as_slice(), envelope.body);
        let writes = {
            let mut d = self.dispatch.lock();
            if concurrent_sessions {
                d.allow_concurrent_sessions(worker.id);
            }
            d.ready(worker.id).map_err(|v| v.0)?
        };
        self.notify_with_body(worker.id, atoms::ready(), frame, envelope.body);
        flush(writes);
        Ok(false)
    }

    fn on_answer(
        &self,
        worker: &Worker,
        envelope: Envelope,
        frame: Framed,
    ) -> Result<bool, String> {
        let (frame, segments) = (frame.frame, frame.segments);
        let (status, outcome, terminal) = match envelope.kind {
            Kind::Result => (atoms::result(), Outcome::Completed, Terminal::Result),
            Kind::Done => (atoms::done(), Outcome::Completed, Terminal::Done),
            _ => match protocol::error_kind(frame.as_slice(), envelope.body) {
                ErrorKind::Refused => (
                    atoms::validation_error(),
                    Outcome::Validation,
                    Terminal::Error,
                ),
                ErrorKind::Failed => (atoms::python_error(), Outcome::PythonError, Terminal::Error),
            },
        };
        let (answered, pipelined) = self
            .with_dispatch(None, |d| {
                let answered =
                    d.finish(worker.id, envelope.id, outcome, terminal, Instant::now())?;
                // Besides the call it runs, the worker holds another, read
                // and waiting: its next answer is one short call away.
                Ok::<_, dispatcher::Violation>((answered, d.in_flight(worker.id) >= 2))
            })
            .map_err(|v| v.0)?;
        // Deliver first: writing the next request wakes the worker, and on a
        // busy machine the kernel then preempts this thread at once, which
        // would hold the reply back for a whole slice.
        if let Some(reply) = answered.caller {
            let timing = answered.timing;
            let meta = (
                worker.os_pid,
                timing.queued.as_nanos() as u64,
                timing.ran.as_nanos() as u64,
            );
            let frame = Framed { frame, segments };
            reply.answer(status, frame, envelope.body, meta);
        }
        flush(answered.writes);
        if let Some((worker, reason)) = answered.retire {
            worker.recycle(reason);
        }
        Ok(answered.now_idle || pipelined)
    }
}

impl Events for PoolCore {
    fn max_frame(&self) -> usize {
        self.max_frame
    }

    fn frame(
        &self,
        worker: &Worker,
        envelope: Envelope,
        frame: OwnedBinary,
    ) -> Result<bool, String> {
        // Bodies that Elixir reads as maps must be maps: a worker that sends
        // anything else broke the protocol (it is killed, its call answered).
        if matches!(envelope.kind, Kind::Error | Kind::Log)
            && !protocol::body_is_map(frame.as_slice(), envelope.body)
        {
            let kind = envelope.kind.as_str();
            let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            return Err(format!(
                "sent {article} {kind} frame whose body is not a map"
            ));
        }
        // Segments announced by an `shm` frame belong to the next frame.
        let segments = worker.shm.take(envelope.id)?;
        if segments.is_some() && !matches!(envelope.kind, Kind::Result | Kind::Error | Kind::Chunk)
        {
            return Err(format!(
                "sent shared-memory segments with a {} frame",
                envelope.kind.as_str()
            ));
        }
        let frame = Framed { frame, segments };
        match envelope.kind {
            Kind::Shm if envelope.id != 0 => {
                let lengths = protocol::shm_lengths(frame.frame.as_slice(), envelope.body)?;
                worker.shm.receive(envelope.id, &lengths, &self.shm)?;
                Ok(false)
            }
            Kind::Ready => self.on_ready(worker, envelope, frame.frame),
            Kind::Result | Kind::Error | Kind::Done if envelope.id != 0 => {
                self.on_answer(worker, envelope, frame)
            }
            Kind::Chunk if envelope.id != 0 => {
                let sink = self
                    .dispatch
                    .lock()
                    .chunk(worker.id, envelope.id)
                    .map_err(|v| v.0)?
                    .and_then(|reply| reply.sink());
                if let Some(sink) = sink {
                    sink.chunk(frame, envelope.body);
                }
                Ok(false)
            }
            Kind::Error => {
                // id 0: the worker could not start (e.g. the adapter failed to import).
                let frame = frame.frame;
                self.notify_with_body(worker.id, atoms::startup_error(), frame, envelope.body);
                Ok(false)
            }
            Kind::Log => {
                let frame = frame.frame;
                match worker.admit_output(frame.len()) {
                    Admit::Yes => {
                        self.notify_with_body(worker.id, atoms::log(), frame, envelope.body)
                    }
                    Admit::No { report: Some(n) } => self.output_dropped(worker.id, n),
                    Admit::No { report: None } => {}
                }
                Ok(false)
            }
            Kind::Heartbeat => {
                self.dispatch.lock().heartbeat_seen(worker.id);
                Ok(false)
            }
            Kind::Reclaimed if envelope.id != 0 => {
                // Through with_dispatch: a dequeued call's queue timeout is an
                // outcome the circuit breaker sees, like any other.
                let given = self
                    .with_dispatch(None, |d| d.reclaimed(worker.id, envelope.id))
                    .map_err(|v| v.0)?;
                if let Some(reply) = given.dequeued {
                    reply.dequeued();
                }
                flush(given.writes);
                Ok(false)
            }
            Kind::Chunk | Kind::Done | Kind::Result | Kind::Reclaimed => Err(format!(
                "sent a {} frame this host does not expect",
                envelope.kind.as_str()
            )),
            Kind::Shm => Err("sent an shm frame with id 0".into()),
            Kind::ElixirCall if envelope.id != 0 => {
                crate::elixir::on_call(self, worker, envelope, frame.frame)
            }
            Kind::ElixirCancel if envelope.id != 0 => {
                crate::elixir::on_cancel(self, worker, envelope.id);
                Ok(false)
            }
            Kind::ElixirCall | Kind::ElixirCancel => Err(format!(
                "sent an {} frame with id 0",
                envelope.kind.as_str()
            )),
            Kind::Call
            | Kind::Cancel
            | Kind::Ack
            | Kind::SessionEnd
            | Kind::Reclaim
            | Kind::ElixirReply => Err(format!(
                "sent a {} frame, which only the host sends",
                envelope.kind.as_str()
            )),
        }
    }

    fn stderr(&self, worker_id: u64, chunk: &[u8]) {
        let mut env = OwnedEnv::new();
        let _ = env.send_and_clear(&self.owner, |e| {
            let mut bin = rustler::NewBinary::new(e, chunk.len());
            bin.as_mut_slice().copy_from_slice(chunk);
            make_tuple(
                e,
                &[
                    atoms::snakepit_worker().encode(e),
                    worker_id.encode(e),
                    atoms::stderr().encode(e),
                    rustler::Binary::from(bin).encode(e),
                ],
            )
        });
    }

    fn output_dropped(&self, worker_id: u64, lines: u64) {
        self.dispatch.lock().output_dropped(lines);
        self.notify(None, worker_id, atoms::dropped_output(), lines);
    }

    /// Answers the worker's running calls, queues again the ones behind them
    /// (they never started), forgets the worker, tells the owner.
    fn exited(&self, worker: &Worker, exit: ExitInfo) {
        let how = if exit.protocol_error.is_some() {
            Exit::BrokeProtocol
        } else if exit.recycled() {
            Exit::Recycled
        } else {
            Exit::Died
        };
        let dropped = worker.unreported_drops();
        if dropped > 0 {
            self.output_dropped(worker.id, dropped);
        }
        let (gone, writes) = self.with_dispatch(None, |d| d.worker_down(worker.id, how));
        flush(writes);
        crate::elixir::on_exit(self, worker);
        let details = exit.details(worker);
        let category = match how {
            Exit::BrokeProtocol => atoms::transport(),
            _ => atoms::worker(),
        };
        for (reply, lost_session) in gone.running {
            let failure = match lost_session {
                Some(key) => Failure::new(
                    category,
                    format!(
                        "{}; session {} was lost with it",
                        exit.describe(worker),
                        excerpt(&key)
                    ),
                    Details::ExitLost(Box::new((details.clone(), Bytes(key.into())))),
                ),
                None => Failure::new(
                    category,
                    exit.describe(worker),
                    Details::Exit(details.clone()),
                ),
            };
            reply.fail(None, &failure);
        }
        for (reply, key) in gone.lost {
            let failure = Failure::new(
                atoms::worker(),
                format!(
                    "session {} was lost: its worker ended before this call started ({})",
                    excerpt(&key),
                    exit.describe(worker)
                ),
                Details::ExitLost(Box::new((details.clone(), Bytes(key.into())))),
            )
            .retryable();
            reply.fail(None, &failure);
        }
        for reply in gone.stopped {
            reply.fail(None, &Failure::stopped());
        }
        self.notify(None, worker.id, atoms::exit(), details);
    }
}

/// Flushes the `session_end` frames of ended sessions and retires the
/// workers they released.
fn apply(ended: Ended<Worker>) {
    flush(ended.writes);
    for (worker, reason) in ended.retire {
        worker.recycle(reason);
    }
}

fn affinity_atom(affinity: Affinity) -> Atom {
    match affinity {
        Affinity::Strict => atoms::strict(),
        Affinity::Hint => atoms::hint(),
        Affinity::FailFast => atoms::fail_fast(),
    }
}

/// A session id for a message: quoted, cut short, lossy.
fn excerpt(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(&key[..key.len().min(64)]);
    let more = if key.len() > 64 { "…" } else { "" };
    format!("{text:?}{more}")
}

/// The failure of a session call refused before it was queued.
fn session_refused(refusal: Refusal, key: Vec<u8>, affinity: Affinity) -> Failure {
    let details = |lost: bool| {
        Details::Session(SessionDetails {
            session_id: Bytes(key.clone()),
            affinity: affinity_atom(affinity),
            session_lost: lost,
        })
    };
    match refusal {
        Refusal::Lost => Failure::new(
            atoms::worker(),
            format!(
                "session {} was lost: its worker ended since its last call; the next call starts it afresh",
                excerpt(&key)
            ),
            details(true),
        ),
        Refusal::Busy => Failure::new(
            atoms::pool(),
            format!(
                "the worker of session {} is busy (affinity: :fail_fast)",
                excerpt(&key)
            ),
            details(false),
        ),
        Refusal::TooMany(max) => Failure::new(
            atoms::pool(),
            format!("the pool already holds {max} sessions (:max_sessions)"),
            Details::SessionLimit(SessionLimitDetails {
                max_sessions: max as u64,
            }),
        ),
    }
}

fn session_info(row: SessionRow, os_pid: Option<u32>) -> SessionInfo {
    SessionInfo {
        os_pid,
        session_id: Bytes(row.id),
        worker_id: row.worker,
        age_ms: row.age.as_millis() as u64,
        idle_ms: row.idle.as_millis() as u64,
        calls: row.calls,
        pending: row.pending as u64,
        lost: row.lost,
    }
}

/// The failure of a call refused by the open (or half-open) circuit.
fn circuit_refused(refused: breaker::Refused) -> Failure {
    let (message, state, after) = match refused.until {
        Some(until) => {
            let ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
            (
                format!(
                    "the pool's circuit breaker is open after repeated worker failures: \
                     calls fail at once for another {ms} ms"
                ),
                atoms::open(),
                Some(ms),
            )
        }
        None => (
            "the pool's circuit breaker is half-open: one probe call is running, \
             others fail at once until it succeeds"
                .to_string(),
            atoms::half_open(),
            None,
        ),
    };
    Failure::new(
        atoms::pool(),
        message,
        Details::Circuit(CircuitDetails {
            circuit: state,
            retry_after_ms: after,
        }),
    )
    .retryable()
}
