//! A pool's dispatch state: its workers, the FIFO queue of waiting requests,
//! and the rule that gives every request exactly one answer.
//!
//! The dispatcher is generic over `C`, whatever a request's answer is sent
//! to (in the NIF: the caller's pid and tag), and `W`, a worker it can write
//! frames to (a [`Pipe`]). It never sends anything itself: each method hands
//! back the callers whose answer it decided, and the workers to flush, and the
//! caller of the method (the NIF layer) acts on them after releasing the lock.
//!
//! **One answer.** A request lives in exactly one place: the queue, or the
//! in-flight list of the worker it was written to. Its `C` leaves the
//! dispatcher exactly once: to be answered (a result, an error) or to be
//! dropped because its caller gave up (`cancel`, `dequeue`, `caller_down`).
//! A request whose caller gave up while a worker runs it stays in that
//! worker's list without its `C` until the worker answers (the answer is
//! dropped) or dies. Each request's [`Outcome`] is counted when its `C`
//! leaves, so the counters partition the requests (see [`crate::stats`]).
//!
//! **Dispatch.** The queue is FIFO: each request goes, in queue order, to a
//! worker it may run on. A request goes to an idle worker first, the most
//! recently idle one (at low load the same warm worker keeps serving); then,
//! to the ready worker with the fewest in flight that has room. A worker has
//! `concurrency` *slots*: it runs that many calls at once, and answers them
//! in any order. With `pipeline_depth` > 1, up to `pipeline_depth - 1` more
//! calls are written behind the running ones, so the worker finds its next
//! call in its pipe. A call of a session may run only on the session's worker
//! (`Strict`, `FailFast`), or prefers it (`Hint`): see [`crate::sessions`].
//! With `concurrency` > 1, a `Strict` or `FailFast` call is written to its
//! worker only once no other call of its session is there, so a session's
//! calls run one after another, unless the worker's adapter said in its
//! handshake that they may run at once.
//! After every change, no queued request has a worker it may go to.
//!
//! **Streams.** A streaming request is answered by chunks, then one final
//! answer. Its worker may send at most as many chunks as it has credits: it
//! starts with the request's window and [`Dispatcher::ack`] gives credits
//! back as the caller consumes chunks.
//!
//! **Reclaim.** A call written behind the running ones waits for a slot.
//! When each running call has run `reclaim_after` (see
//! [`Dispatcher::reclaim_due`]), the worker is *stalled*: nothing more is
//! written behind its running calls, and it is asked to give back the calls
//! waiting in its pipe. Those it gives
//! back before starting them ([`Dispatcher::reclaimed`]) are queued again,
//! in submission order, for another worker; those it started by then are
//! answered by it as usual. A worker may ignore the request. Calls of a
//! session bound to the worker (`Strict`, `FailFast`) stay.
//!
//! **Hold.** A running call that waits for an Elixir function (which may
//! call the pool in turn) stalls its worker at once ([`Dispatcher::hold`]):
//! a call written behind it could be the one it waits for. (With
//! `concurrency` > 1 the worker's free slots still take calls; only the
//! pipe behind its running calls is closed, and emptied.)
//!
//! **Worker death.** A worker starts its calls in the order they were
//! written, and frees a slot only after it has answered the slot's call, so
//! its running calls are always the first `concurrency` of those written to
//! it and not answered yet. When it dies, its running calls are answered with
//! an error, and the ones written behind them, which never started, are
//! queued again at the front.

use crate::breaker::{self, Breaker, Transition};
use crate::latency::{Latency, Timing};
use crate::recycle::{Policy, Reason, Vitals};
use crate::sessions::{Affinity, Key, Refusal, SessionRow, Sessions};
use crate::stats::{Outcome, Stats};
use parking_lot::Mutex;
pub use snakepit_wire::outgoing::OutFrame;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A worker's stdin, as the dispatcher sees it.
pub trait Pipe {
    /// Queues a frame for writing, without blocking or any syscall (it is
    /// called under the pool's lock, which keeps frames in dispatch order).
    /// Returns where the frame starts in the stdin stream: the bytes queued
    /// before it since the worker started (a `reclaim` names it, see
    /// [`Dispatcher::reclaim_due`]). A closed stdin hands the frame back.
    fn enqueue(&self, frame: OutFrame) -> Result<u64, OutFrame>;
}

/// Settings fixed when the pool is made.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Workers the pool keeps (0: not known). Age and memory recycling wait
    /// while fewer are registered (see [`crate::recycle::Policy::due`]).
    pub size: usize,
    /// Calls one worker runs at once (its *running* calls; 1: one at a time).
    pub concurrency: usize,
    /// How many calls a worker may have written to it per free slot: up to
    /// `pipeline_depth - 1` wait in its pipe behind the `concurrency` it
    /// runs (1: no pipelining).
    pub pipeline_depth: usize,
    /// Most requests waiting in the queue; past it, `submit` refuses.
    pub max_queue: usize,
    pub recycle: Policy,
    /// Most sessions at once (0: no limit).
    pub max_sessions: usize,
    /// Sessions idle this long are ended (`None`: never).
    pub session_ttl: Option<Duration>,
    /// The circuit breaker's settings (`None`: no breaker).
    pub breaker: Option<breaker::Settings>,
}

/// What a request is, besides its frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Call {
    /// The session it belongs to, and how it picks its worker.
    pub session: Option<(Vec<u8>, Affinity)>,
    /// A streaming call's credit window (at least 1).
    pub stream: Option<u32>,
}

/// How a worker ended a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// `result`: the answer to a plain call.
    Result,
    /// `done`: a streaming call finished.
    Done,
    /// `error`: either kind of call failed.
    Error,
}

/// What a worker is doing, as `list_workers` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Started, handshake not received yet.
    Starting,
    Idle,
    /// Has requests in flight.
    Busy,
    /// Takes no new requests; exits once it has answered those it has.
    Stopping,
}

/// Why `submit` refused a request. Its `C` comes back with it, unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Closed,
    /// The queue holds `max_queue` requests (the number given).
    Full(usize),
    /// A session call that cannot be taken (see [`Refusal`]).
    Session(Refusal),
    /// The circuit breaker is open (see [`crate::breaker`]).
    Circuit(breaker::Refused),
}

/// Why `register` refused a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unregistrable {
    Closed,
    DuplicateId,
}

impl Unregistrable {
    pub fn as_str(self) -> &'static str {
        match self {
            Unregistrable::Closed => "the pool is closed",
            Unregistrable::DuplicateId => "a worker with this id is running",
        }
    }
}

/// What [`start_registered`] can fail with.
#[derive(Debug, PartialEq, Eq)]
pub enum StartError<E> {
    Refused(Unregistrable),
    /// The start function failed; the worker was unregistered.
    Failed(E),
}

/// A frame from a worker that does not fit what the dispatcher knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// How a worker ended, as far as dispatch cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited or was killed (its running call gets a `:worker` error).
    Died,
    /// It broke the protocol (its running call gets a `:transport` error).
    BrokeProtocol,
    /// It was retired and drained; it ran nothing when it left.
    Recycled,
}

/// Workers with frames enqueued, to flush once the lock is released.
pub type Writes<W> = Vec<Arc<W>>;

/// What [`Dispatcher::submit_call`] did with an accepted request.
pub struct Submitted<W> {
    pub writes: Writes<W>,
    /// The request started a new session.
    pub new_session: bool,
}

/// What [`Dispatcher::answer`] decided.
pub struct Answered<C, W> {
    /// Whom to send the answer to; `None` if the caller gave up (drop it).
    pub caller: Option<C>,
    pub writes: Writes<W>,
    /// The worker is idle and nothing is queued: a quiet moment.
    pub now_idle: bool,
    /// The worker reached `max_requests`: close its stdin (it takes nothing
    /// new and exits once drained).
    pub retire: Option<(Arc<W>, Reason)>,
    /// How long the request waited and ran.
    pub timing: Timing,
}

/// What [`Dispatcher::worker_down`] decided.
pub struct Gone<C> {
    /// The callers of the calls it was running, to answer with an error,
    /// each with its call's session if that was bound to the worker (its
    /// state is lost).
    pub running: Vec<(C, Option<Key>)>,
    /// Calls of sessions bound to the worker that had not started, with
    /// their session: answer them with a `:worker` error saying it was lost.
    pub lost: Vec<(C, Key)>,
    /// Calls it had in its pipe that cannot be queued again because the
    /// pool is closed: answer them with a `:pool` error.
    pub stopped: Vec<C>,
}

/// What [`Dispatcher::cancel`] found.
pub enum Cancel<C, W> {
    /// Removed from the queue; no answer will be sent.
    Queued(C),
    /// A worker has it: tell the worker to cancel it; its answer will be
    /// dropped.
    Running {
        caller: C,
        worker: Arc<W>,
        worker_id: u64,
    },
    /// Not there any more: its answer has been, or is being, sent.
    Replied,
}

/// The calls [`Dispatcher::reclaim_due`] asks back: per worker, each call's
/// id and where its frame starts in that worker's stdin (see
/// [`Pipe::enqueue`]), which lets the worker tell a call it has not read from
/// one it read long ago.
pub type Asks<W> = Vec<(Arc<W>, Vec<(u64, u64)>)>;

/// What [`Dispatcher::dequeue`] found.
pub enum Dequeue<C, W> {
    /// Taken out of the queue: answer it with a queue timeout.
    Queued(C),
    /// Waiting in a worker's pipe behind a running call. The worker is to be
    /// asked for it back (`Some`; `None`: asked already). If the worker gives
    /// it back, [`Dispatcher::reclaimed`] hands its caller back, to answer
    /// with a queue timeout; if it starts it first, it runs.
    Pipelined(Option<(Arc<W>, u64)>),
    /// Running, answered, or given up: it goes on as it is.
    Started,
}

/// What [`Dispatcher::reclaimed`] did with a call its worker gave back.
pub struct GivenBack<C, W> {
    pub writes: Writes<W>,
    /// The call's `queue_timeout` had passed (see [`Dispatcher::dequeue`]):
    /// answer its caller with a queue timeout.
    pub dequeued: Option<C>,
}

/// Requests given up because their caller died (see `caller_down`).
pub struct GivenUp<C, W> {
    pub queued: Vec<C>,
    /// `(caller, worker, worker id, request id)`: tell each worker to cancel.
    pub running: Vec<(C, Arc<W>, u64, u64)>,
}

/// A heartbeat round (see [`Dispatcher::heartbeat`]).
pub struct Beats<W> {
    /// Send these a heartbeat.
    pub beat: Vec<Arc<W>>,
    /// `(id, worker)` of those that missed too many: kill them.
    pub dead: Vec<(u64, Arc<W>)>,
}

/// One worker, as reported by [`Dispatcher::workers`].
pub struct Row<W> {
    pub id: u64,
    pub worker: Arc<W>,
    pub state: State,
    /// Takes no new requests (a draining worker still reports `Busy`).
    pub stopping: bool,
    pub in_flight: usize,
    /// Of those, the calls it runs (the first `concurrency`).
    pub running: usize,
    pub served: u64,
    pub age: Duration,
    /// Sessions bound to it.
    pub sessions: usize,
}

/// What [`Dispatcher::end_session`] and [`Dispatcher::expire_sessions`] did.
pub struct Ended<W> {
    /// Workers a `session_end` frame was enqueued to.
    pub writes: Writes<W>,
    /// Workers kept past `max_requests` for their sessions, now free to go:
    /// close their stdin.
    pub retire: Vec<(Arc<W>, Reason)>,
    /// Sessions ended (their ids).
    pub ended: Vec<Key>,
}

/// Workers by state and requests by place, right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub workers: u64,
    pub idle: u64,
    pub busy: u64,
    pub starting: u64,
    pub stopping: u64,
    pub queued: u64,
    /// Requests written to workers, their callers waiting.
    pub in_flight: u64,
    pub sessions: u64,
}

impl Gauges {
    /// Every gauge with its name, which the NIF makes a key of
    /// `pool_stats/1`'s map. The pattern names every field: a new gauge
    /// does not compile until it is listed here too.
    pub fn fields(&self) -> impl IntoIterator<Item = (&'static str, u64)> {
        let Gauges {
            workers,
            idle,
            busy,
            starting,
            stopping,
            queued,
            in_flight,
            sessions,
        } = *self;
        [
            ("workers", workers),
            ("idle", idle),
            ("busy", busy),
            ("starting", starting),
            ("stopping", stopping),
            ("queued", queued),
            ("in_flight", in_flight),
            ("sessions", sessions),
        ]
    }
}

struct Request<C> {
    id: u64,
    /// The encoded `call` frame. Taken when written to an idle worker; kept
    /// when written behind a running call, in case it must be queued again.
    frame: OutFrame,
    /// `None` once the caller gave up.
    caller: Option<C>,
    session: Option<(Key, Affinity)>,
    stream: Option<Credits>,
    submitted: Instant,
    /// When it became its worker's running call.
    started: Option<Instant>,
    /// Its worker was asked to give it back (see [`Dispatcher::reclaim_due`]).
    reclaiming: bool,
    /// Where its frame starts in its worker's stdin (see [`Pipe::enqueue`]).
    offset: u64,
    /// Its `queue_timeout` passed while it waited in a worker's pipe: if the
    /// worker gives it back, it ends with a queue timeout instead of being
    /// queued again (see [`Dispatcher::dequeue`]).
    dequeue: bool,
}

/// A streaming request's flow control.
#[derive(Debug, Clone, Copy)]
struct Credits {
    window: u32,
    /// Chunks its worker may send before the next ack.
    left: u32,
}

struct Slot<C, W> {
    worker: Arc<W>,
    /// Handshake received.
    ready: bool,
    /// Takes no new requests; finishes those it has.
    stopping: bool,
    /// Written to the worker, in the order written: the first `concurrency`
    /// run (or may start at once), the others wait in its pipe. Never longer
    /// than `concurrency + pipeline_depth - 1`.
    in_flight: VecDeque<Request<C>>,
    served: u64,
    /// Heartbeats sent since the last one it answered.
    missed_heartbeats: u32,
    started: Instant,
    /// Sessions bound to it.
    sessions: usize,
    /// Past `max_requests`, kept for its sessions: takes no new session if
    /// another worker can.
    overdue: bool,
    /// Each of its `concurrency` running calls ran past `reclaim_after`, or
    /// the worker waits on the host (see [`Dispatcher::hold`]): nothing more
    /// is written behind them until one ends.
    stalled: bool,
    /// The adapter lets calls of one session run at once (its handshake
    /// said so); otherwise, with `concurrency` > 1, a session's calls are
    /// written to its worker one at a time, so they run in order.
    concurrent_sessions: bool,
}

impl<C, W> Slot<C, W> {
    fn state(&self) -> State {
        if !self.in_flight.is_empty() {
            State::Busy
        } else if self.stopping {
            State::Stopping
        } else if !self.ready {
            State::Starting
        } else {
            State::Idle
        }
    }

    fn takes_requests(&self) -> bool {
        self.ready && !self.stopping
    }

    /// Whether a request may be written to it now: below its capacity
    /// (`concurrency + pipeline_depth - 1`), and, with every slot taken, not
    /// behind calls that stalled.
    fn has_room(&self, config: &Config) -> bool {
        self.takes_requests()
            && self.in_flight.len() < config.capacity()
            && (self.in_flight.len() < config.concurrency || !self.stalled)
    }

    /// One of its running calls left: the first call waiting in its pipe, if
    /// any, takes the slot, and the worker is no longer stalled.
    fn slot_freed(&mut self, concurrency: usize, now: Instant) {
        if let Some(next) = self.in_flight.get_mut(concurrency - 1) {
            next.started.get_or_insert(now);
        }
        self.stalled = false;
    }

    /// Marks the calls waiting behind its running ones to be asked back
    /// (see [`Dispatcher::reclaim_due`]) and returns them (id, offset):
    /// not those asked for already, given up by their caller, or of a
    /// session bound to this worker (`Strict`, `FailFast`).
    fn ask_back(&mut self, concurrency: usize) -> Vec<(u64, u64)> {
        self.in_flight
            .iter_mut()
            .skip(concurrency)
            .filter(|r| {
                !r.reclaiming
                    && r.caller.is_some()
                    && r.session.as_ref().is_none_or(|(_, a)| *a == Affinity::Hint)
            })
            .map(|r| {
                r.reclaiming = true;
                (r.id, r.offset)
            })
            .collect()
    }

    /// Whether `key` has a call here that a call of the same session may
    /// not overtake: with `concurrency` > 1 the worker would run both at once.
    fn runs_session(&self, key: &Key, concurrency: usize) -> bool {
        concurrency > 1
            && !self.concurrent_sessions
            && self
                .in_flight
                .iter()
                .any(|r| r.session.as_ref().is_some_and(|(k, _)| k == key))
    }
}

impl Config {
    /// Most requests written to one worker at a time.
    pub fn capacity(&self) -> usize {
        self.concurrency + self.pipeline_depth - 1
    }
}

/// A pool's queue and workers. See the module docs.
pub struct Dispatcher<C, W> {
    config: Config,
    slots: HashMap<u64, Slot<C, W>>,
    /// Ready workers with nothing in flight; the most recently idle is last.
    idle: VecDeque<u64>,
    queue: VecDeque<Request<C>>,
    sessions: Sessions,
    breaker: Option<Breaker>,
    latency: Latency,
    closed: bool,
    stats: Stats,
}

impl<C, W: Pipe> Dispatcher<C, W> {
    pub fn new(config: Config) -> Self {
        assert!(config.pipeline_depth > 0, "pipeline_depth must be positive");
        assert!(config.concurrency > 0, "concurrency must be positive");
        Dispatcher {
            config,
            slots: HashMap::new(),
            idle: VecDeque::new(),
            queue: VecDeque::new(),
            sessions: Sessions::new(config.max_sessions),
            breaker: config.breaker.map(Breaker::new),
            latency: Latency::new(Instant::now()),
            closed: false,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds a freshly started worker, not ready until its handshake.
    pub fn register(&mut self, id: u64, worker: Arc<W>, now: Instant) -> Result<(), Unregistrable> {
        if self.closed {
            return Err(Unregistrable::Closed);
        }
        if self.slots.contains_key(&id) {
            return Err(Unregistrable::DuplicateId);
        }
        let slot = Slot {
            worker,
            ready: false,
            stopping: false,
            in_flight: VecDeque::new(),
            served: 0,
            missed_heartbeats: 0,
            started: now,
            sessions: 0,
            overdue: false,
            stalled: false,
            concurrent_sessions: false,
        };
        self.slots.insert(id, slot);
        Ok(())
    }

    /// Forgets a worker that never became ready (its start failed). Returns
    /// whether it was there.
    pub fn unregister(&mut self, id: u64) -> bool {
        match self.slots.get(&id) {
            Some(slot) if !slot.ready => {
                debug_assert!(slot.in_flight.is_empty());
                self.slots.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// Queues a plain request (see [`Self::submit_call`]).
    pub fn submit(
        &mut self,
        id: u64,
        frame: OutFrame,
        caller: C,
    ) -> Result<Writes<W>, (Refused, C)> {
        self.submit_call(id, frame, caller, Call::default(), Instant::now())
            .map(|s| s.writes)
    }

    /// Queues a request behind those already waiting and dispatches what can
    /// be. A refused request's caller comes back with the reason.
    pub fn submit_call(
        &mut self,
        id: u64,
        frame: OutFrame,
        caller: C,
        call: Call,
        now: Instant,
    ) -> Result<Submitted<W>, (Refused, C)> {
        self.stats.requests += 1;
        if self.closed {
            self.stats.record(Outcome::Stopped);
            return Err((Refused::Closed, caller));
        }
        let session = call.session.map(|(k, a)| (k.into_boxed_slice(), a));
        if self.queue.len() >= self.config.max_queue && self.pick(session.as_ref()).is_none() {
            self.stats.record(Outcome::Rejected);
            return Err((Refused::Full(self.queue.len()), caller));
        }
        let mut new_session = false;
        if let Some((key, affinity)) = &session {
            let slots = &self.slots;
            let concurrency = self.config.concurrency;
            let busy = |w: u64| {
                slots
                    .get(&w)
                    .is_none_or(|s| s.in_flight.len() >= concurrency || !s.takes_requests())
            };
            match self.sessions.admit(key, *affinity, busy, now) {
                Ok(created) => new_session = created,
                Err(why) => {
                    self.stats.record(match why {
                        Refusal::Lost => Outcome::WorkerError,
                        Refusal::Busy | Refusal::TooMany(_) => Outcome::Rejected,
                    });
                    return Err((Refused::Session(why), caller));
                }
            }
        }
        if let Some(breaker) = self.breaker.as_mut() {
            if let Err(refused) = breaker.admit(id, now) {
                if let Some((key, _)) = &session {
                    self.sessions.leave(key, now);
                }
                self.stats.record(Outcome::Rejected);
                return Err((Refused::Circuit(refused), caller));
            }
        }
        self.queue.push_back(Request {
            id,
            frame,
            caller: Some(caller),
            session,
            stream: call.stream.map(|window| Credits {
                window: window.max(1),
                left: window.max(1),
            }),
            submitted: now,
            started: None,
            reclaiming: false,
            offset: 0,
            dequeue: false,
        });
        Ok(Submitted {
            writes: self.fill(),
            new_session,
        })
    }

    /// Counts lines of worker output dropped over the output budget.
    pub fn output_dropped(&mut self, lines: u64) {
        self.stats.dropped_output_lines += lines;
    }

    /// Counts a request refused before it could be queued (its arguments
    /// could not be encoded, or are over the frame limit).
    pub fn refuse_invalid(&mut self) {
        self.stats.requests += 1;
        self.stats.record(Outcome::Validation);
    }

    /// The worker's handshake arrived: it takes requests from now on.
    pub fn ready(&mut self, id: u64) -> Result<Writes<W>, Violation> {
        let slot = self
            .slots
            .get_mut(&id)
            .ok_or_else(|| Violation("sent ready after removal".into()))?;
        if slot.ready {
            return Err(Violation("sent a second ready frame".into()));
        }
        slot.ready = true;
        self.settle(id);
        Ok(self.fill())
    }

    /// The worker's adapter lets a session's calls run at once (its
    /// handshake said so): with `concurrency` > 1 they are no longer written
    /// to it one at a time. Call before [`Self::ready`].
    pub fn allow_concurrent_sessions(&mut self, id: u64) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.concurrent_sessions = true;
        }
    }

    /// The worker answered `request_id` with a `result` (see [`Self::finish`]).
    pub fn answer(
        &mut self,
        worker_id: u64,
        request_id: u64,
        outcome: Outcome,
    ) -> Result<Answered<C, W>, Violation> {
        let terminal = match outcome {
            Outcome::Completed => Terminal::Result,
            _ => Terminal::Error,
        };
        self.finish(worker_id, request_id, outcome, terminal, Instant::now())
    }

    /// The worker ended `request_id` (with `outcome`: `Completed`,
    /// `PythonError` or `Validation`). It must be one of the calls it runs,
    /// and `terminal` must fit it: `Result` a plain call, `Done` a stream.
    pub fn finish(
        &mut self,
        worker_id: u64,
        request_id: u64,
        outcome: Outcome,
        terminal: Terminal,
        now: Instant,
    ) -> Result<Answered<C, W>, Violation> {
        let concurrency = self.config.concurrency;
        let (slot, pos) = running(&mut self.slots, concurrency, worker_id, request_id)?;
        let streaming = slot.in_flight[pos].stream.is_some();
        match (terminal, streaming) {
            (Terminal::Result, true) => {
                return Err(Violation(format!(
                    "sent a result to streaming call {request_id}"
                )))
            }
            (Terminal::Done, false) => {
                return Err(Violation(format!(
                    "sent done to call {request_id}, which is not a stream"
                )))
            }
            _ => {}
        }
        let req = slot.in_flight.remove(pos).expect("checked above");
        slot.slot_freed(concurrency, now);
        slot.served += 1;
        let retire = match self
            .config
            .recycle
            .after_answer(slot.served, slot.sessions > 0)
        {
            Some(reason) if !slot.stopping => {
                slot.stopping = true;
                Some((Arc::clone(&slot.worker), reason))
            }
            _ => {
                slot.overdue = self.config.recycle.overdue(slot.served);
                None
            }
        };
        if req.caller.is_some() {
            self.ended(req.id, outcome, now);
        }
        let started = req.started.unwrap_or(req.submitted);
        let timing = Timing {
            queued: started.saturating_duration_since(req.submitted),
            ran: now.saturating_duration_since(started),
        };
        self.latency.record(timing, now);
        self.leave(&req, now);
        self.settle(worker_id);
        let writes = self.fill();
        let now_idle = self
            .slots
            .get(&worker_id)
            .is_some_and(|s| s.in_flight.is_empty());
        Ok(Answered {
            caller: req.caller,
            writes,
            now_idle,
            retire,
            timing,
        })
    }

    /// The worker sent a chunk of the streaming call `request_id`, which it
    /// must be running and have a credit for. Returns its caller, if it
    /// still waits (else the chunk is dropped).
    pub fn chunk(&mut self, worker_id: u64, request_id: u64) -> Result<Option<&C>, Violation> {
        let (slot, pos) = running(
            &mut self.slots,
            self.config.concurrency,
            worker_id,
            request_id,
        )?;
        let req = &mut slot.in_flight[pos];
        let Some(credits) = req.stream.as_mut() else {
            return Err(Violation(format!(
                "sent a chunk to call {request_id}, which is not a stream"
            )));
        };
        if credits.left == 0 {
            return Err(Violation(format!(
                "sent a chunk of stream {request_id} beyond its {} credits",
                credits.window
            )));
        }
        credits.left -= 1;
        if req.caller.is_some() {
            self.stats.chunks += 1;
        }
        Ok(req.caller.as_ref())
    }

    /// The caller of streaming call `request_id` consumed `n` chunks: its
    /// worker gets `n` credits back. Returns the worker, to send it an
    /// `ack`, if a worker has the call.
    pub fn ack(&mut self, request_id: u64, n: u32) -> Option<Arc<W>> {
        self.slots.values_mut().find_map(|slot| {
            let req = slot.in_flight.iter_mut().find(|r| r.id == request_id)?;
            let credits = req.stream.as_mut()?;
            credits.left = credits.left.saturating_add(n).min(credits.window);
            Some(Arc::clone(&slot.worker))
        })
    }

    /// The worker's process is gone: its running calls are answered, the ones
    /// behind them are queued again (or stopped, if the pool is closed), and it
    /// is forgotten. Sessions bound to it are lost: their calls that had not
    /// started (`Strict` and `FailFast`, queued or in its pipe) are answered
    /// with an error saying so; `Hint` calls are queued again.
    pub fn worker_down(&mut self, id: u64, exit: Exit) -> (Gone<C>, Writes<W>) {
        let now = Instant::now();
        self.idle.retain(|&w| w != id);
        let Some(slot) = self.slots.remove(&id) else {
            return (
                Gone {
                    running: Vec::new(),
                    lost: Vec::new(),
                    stopped: Vec::new(),
                },
                Vec::new(),
            );
        };
        match exit {
            Exit::Recycled => self.stats.recycles += 1,
            _ if !self.closed => self.stats.restarts += 1,
            _ => {}
        }
        let lost_keys: HashSet<Key> = self.sessions.worker_gone(id, now).into_iter().collect();
        self.stats.sessions_lost += lost_keys.len() as u64;
        let mut told: HashSet<Key> = HashSet::new();
        let pinned = |req: &Request<C>| {
            req.session
                .as_ref()
                .is_some_and(|(k, a)| *a != Affinity::Hint && lost_keys.contains(k))
        };
        let mut in_flight = slot.in_flight;
        let waiting = in_flight.split_off(in_flight.len().min(self.config.concurrency));
        let mut running = Vec::new();
        for req in in_flight {
            let mut lost_session = None;
            if let Some((key, _)) = &req.session {
                if lost_keys.contains(key) {
                    lost_session = Some(key.clone());
                    told.insert(key.clone());
                }
            }
            if req.caller.is_some() {
                let outcome = match exit {
                    Exit::BrokeProtocol => Outcome::TransportError,
                    _ => Outcome::WorkerError,
                };
                self.ended(req.id, outcome, now);
            }
            self.leave(&req, now);
            if let Some(caller) = req.caller {
                running.push((caller, lost_session));
            }
        }
        let mut lost = Vec::new();
        let mut stopped = Vec::new();
        for mut req in waiting.into_iter().rev() {
            if pinned(&req) || self.closed || req.caller.is_none() {
                if let Some(caller) = req.caller.take() {
                    if self.closed {
                        self.ended(req.id, Outcome::Stopped, now);
                        stopped.push(caller);
                    } else {
                        self.ended(req.id, Outcome::WorkerError, now);
                        let key = req.session.as_ref().expect("pinned").0.clone();
                        told.insert(key.clone());
                        lost.push((caller, key));
                    }
                }
                self.leave(&req, now);
            } else {
                debug_assert!(
                    !req.frame.is_empty(),
                    "prefetched requests keep their frame"
                );
                self.stats.requeued += 1;
                req.started = None;
                req.reclaiming = false;
                req.dequeue = false;
                if let Some(credits) = req.stream.as_mut() {
                    credits.left = credits.window;
                }
                self.queue.push_front(req);
            }
        }
        stopped.reverse();
        lost.reverse();
        if !lost_keys.is_empty() && self.queue.iter().any(pinned) {
            let mut kept = VecDeque::with_capacity(self.queue.len());
            let mut purged = Vec::new();
            for req in std::mem::take(&mut self.queue) {
                if pinned(&req) {
                    purged.push(req);
                } else {
                    kept.push_back(req);
                }
            }
            self.queue = kept;
            for mut req in purged {
                if let Some(caller) = req.caller.take() {
                    self.ended(req.id, Outcome::WorkerError, now);
                    let key = req.session.as_ref().expect("pinned").0.clone();
                    told.insert(key.clone());
                    lost.push((caller, key));
                }
                self.leave(&req, now);
            }
        }
        for key in told {
            self.sessions.told(&key);
        }
        let writes = self.fill();
        (
            Gone {
                running,
                lost,
                stopped,
            },
            writes,
        )
    }

    /// Workers whose running calls (all `concurrency` of them) started at
    /// least `after` before `now` are marked stalled (nothing more is written
    /// behind those calls until one ends). Returns the stalled workers with
    /// the calls waiting behind their running calls that they are to be
    /// asked to give back (see [`Asks`]),
    /// each asked once; none while no other worker takes requests. Calls of
    /// a session bound to the worker (`Strict`, `FailFast`) and calls whose
    /// caller gave up are left where they are.
    pub fn reclaim_due(&mut self, after: Duration, now: Instant) -> Asks<W> {
        let concurrency = self.config.concurrency;
        for slot in self.slots.values_mut() {
            if slot.in_flight.len() >= concurrency
                && slot.in_flight.iter().take(concurrency).all(|r| {
                    r.started
                        .is_some_and(|t| now.saturating_duration_since(t) >= after)
                })
            {
                slot.stalled = true;
            }
        }
        // Calls given back when every worker is stalled would only wait in
        // the queue instead of a pipe.
        if !self
            .slots
            .values()
            .any(|s| s.takes_requests() && !s.stalled)
        {
            return Vec::new();
        }
        let mut asks = Vec::new();
        for slot in self.slots.values_mut().filter(|s| s.stalled) {
            let ids = slot.ask_back(concurrency);
            if !ids.is_empty() {
                asks.push((Arc::clone(&slot.worker), ids));
            }
        }
        asks
    }

    /// One of worker `worker_id`'s running calls waits for something that
    /// may need the pool itself (an Elixir function it called, which may
    /// call the pool in turn): the worker is marked stalled at once, so
    /// nothing more is written behind its running calls until one ends
    /// (its free slots, if it has `concurrency` > 1, still take calls: they
    /// start at once), and the calls already waiting behind them are
    /// returned, to be asked back (as
    /// [`Self::reclaim_due`] does, with the same exceptions: calls of a
    /// session bound to the worker, calls whose caller gave up, calls asked
    /// for already), whether or not another worker takes requests now. A
    /// call written behind the waiting one could otherwise be the very call
    /// it waits for. Nothing if the worker is unknown or runs nothing.
    pub fn hold(&mut self, worker_id: u64) -> Asks<W> {
        let Some(slot) = self.slots.get_mut(&worker_id) else {
            return Vec::new();
        };
        if slot.in_flight.is_empty() {
            return Vec::new();
        }
        slot.stalled = true;
        let ids = slot.ask_back(self.config.concurrency);
        if ids.is_empty() {
            Vec::new()
        } else {
            vec![(Arc::clone(&slot.worker), ids)]
        }
    }

    /// Worker `id`, if the pool has it.
    pub fn worker(&self, id: u64) -> Option<Arc<W>> {
        self.slots.get(&id).map(|s| Arc::clone(&s.worker))
    }

    /// The worker gave back `request_id`, which it was asked for and will
    /// never start: it is queued again in submission order (or dropped, if
    /// its caller gave up meanwhile, or handed back to be answered with a
    /// queue timeout if it was dequeued), and the queue is dispatched.
    pub fn reclaimed(
        &mut self,
        worker_id: u64,
        request_id: u64,
    ) -> Result<GivenBack<C, W>, Violation> {
        let now = Instant::now();
        let slot = self
            .slots
            .get_mut(&worker_id)
            .ok_or_else(|| Violation("gave back a call after removal".into()))?;
        let Some(pos) = slot
            .in_flight
            .iter()
            .position(|r| r.id == request_id && r.reclaiming)
        else {
            return Err(Violation(format!(
                "gave back call {request_id}, which it was not asked to give back"
            )));
        };
        let mut req = slot.in_flight.remove(pos).expect("found above");
        if pos < self.config.concurrency {
            // It ended a call ahead and gave this one back before starting it.
            slot.slot_freed(self.config.concurrency, now);
        }
        req.reclaiming = false;
        req.started = None;
        let mut dequeued = None;
        if req.caller.is_none() {
            self.leave(&req, now);
        } else if req.dequeue {
            self.ended(req.id, Outcome::QueueTimeout, now);
            self.leave(&req, now);
            dequeued = req.caller.take();
        } else {
            debug_assert!(
                !req.frame.is_empty(),
                "a call written behind another keeps its frame"
            );
            self.stats.requeued += 1;
            let at = self
                .queue
                .iter()
                .position(|q| q.id > req.id)
                .unwrap_or(self.queue.len());
            self.queue.insert(at, req);
        }
        self.settle(worker_id);
        Ok(GivenBack {
            writes: self.fill(),
            dequeued,
        })
    }

    /// The caller timed out: gives up its request, wherever it is.
    pub fn cancel(&mut self, request_id: u64) -> Cancel<C, W> {
        self.give_up(request_id, Outcome::Timeout)
    }

    /// The caller gave up its request (`outcome`: `Timeout`, or `Cancelled`
    /// when it stopped consuming a stream), wherever the request is.
    pub fn give_up(&mut self, request_id: u64, outcome: Outcome) -> Cancel<C, W> {
        let now = Instant::now();
        if let Some(caller) = self.take_queued(request_id) {
            self.ended(request_id, outcome, now);
            return Cancel::Queued(caller);
        }
        let mut found = None;
        for (&worker_id, slot) in self.slots.iter_mut() {
            let Some(req) = slot.in_flight.iter_mut().find(|r| r.id == request_id) else {
                continue;
            };
            found = Some(
                req.caller
                    .take()
                    .map(|caller| (caller, Arc::clone(&slot.worker), worker_id)),
            );
            break;
        }
        match found {
            Some(Some((caller, worker, worker_id))) => {
                self.ended(request_id, outcome, now);
                Cancel::Running {
                    caller,
                    worker,
                    worker_id,
                }
            }
            _ => Cancel::Replied,
        }
    }

    /// The caller's `queue_timeout` passed: takes its request out of the
    /// queue if it is still there, or asks for it back if it waits in a
    /// worker's pipe (see [`Dequeue`]).
    pub fn dequeue(&mut self, request_id: u64) -> Dequeue<C, W> {
        if let Some(caller) = self.take_queued(request_id) {
            self.ended(request_id, Outcome::QueueTimeout, Instant::now());
            return Dequeue::Queued(caller);
        }
        let concurrency = self.config.concurrency;
        for slot in self.slots.values_mut() {
            let Some(req) = slot
                .in_flight
                .iter_mut()
                .skip(concurrency)
                .find(|r| r.id == request_id)
            else {
                continue;
            };
            if req.caller.is_none() {
                return Dequeue::Started;
            }
            req.dequeue = true;
            if req.reclaiming {
                return Dequeue::Pipelined(None);
            }
            req.reclaiming = true;
            return Dequeue::Pipelined(Some((Arc::clone(&slot.worker), req.offset)));
        }
        Dequeue::Started
    }

    fn take_queued(&mut self, request_id: u64) -> Option<C> {
        let pos = self.queue.iter().position(|r| r.id == request_id)?;
        let req = self.queue.remove(pos)?;
        self.leave(&req, Instant::now());
        req.caller
    }

    /// Request `id`'s caller has its outcome: counted, and seen by the
    /// circuit breaker.
    fn ended(&mut self, id: u64, outcome: Outcome, now: Instant) {
        self.stats.record(outcome);
        if let Some(breaker) = self.breaker.as_mut() {
            breaker.observe(id, outcome, now);
        }
    }

    /// The circuit breaker's state, if the pool has one.
    pub fn circuit(&self) -> Option<breaker::State> {
        self.breaker.as_ref().map(Breaker::state)
    }

    /// The circuit breaker's changes since the last call.
    pub fn circuit_transitions(&mut self) -> Vec<Transition> {
        self.breaker
            .as_mut()
            .map(Breaker::take_transitions)
            .unwrap_or_default()
    }

    /// Percentiles of recent queue and run times.
    pub fn latency(&mut self, now: Instant) -> crate::latency::Summary {
        self.latency.summary(now)
    }

    /// A request left the queue or its worker for good.
    fn leave(&mut self, req: &Request<C>, now: Instant) {
        if let Some((key, _)) = &req.session {
            self.sessions.leave(key, now);
        }
    }

    /// The callers that `dead` picks died: their requests are given up.
    pub fn caller_down(&mut self, dead: impl Fn(&C) -> bool) -> GivenUp<C, W> {
        let now = Instant::now();
        let mut queued = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for mut req in std::mem::take(&mut self.queue) {
            match req.caller.take() {
                Some(c) if dead(&c) => {
                    self.leave(&req, now);
                    self.ended(req.id, Outcome::Cancelled, now);
                    queued.push(c);
                }
                caller => {
                    req.caller = caller;
                    kept.push_back(req);
                }
            }
        }
        self.queue = kept;
        let mut running = Vec::new();
        for (&worker_id, slot) in self.slots.iter_mut() {
            for req in slot.in_flight.iter_mut() {
                if req.caller.as_ref().is_some_and(&dead) {
                    let caller = req.caller.take().expect("checked");
                    running.push((caller, Arc::clone(&slot.worker), worker_id, req.id));
                }
            }
        }
        for &(_, _, _, id) in &running {
            self.ended(id, Outcome::Cancelled, now);
        }
        GivenUp { queued, running }
    }

    /// The grace period after cancelling `request_id` is over: the worker,
    /// if it still has the request (then it must be killed).
    pub fn expired(&self, worker_id: u64, request_id: u64) -> Option<Arc<W>> {
        self.slots
            .get(&worker_id)
            .filter(|s| s.in_flight.iter().any(|r| r.id == request_id))
            .map(|s| Arc::clone(&s.worker))
    }

    /// A heartbeat round: returns the ready workers to send one to, and
    /// those that missed more than `max_missed` in a row (to kill).
    pub fn heartbeat(&mut self, max_missed: u32) -> Beats<W> {
        let mut beat = Vec::new();
        let mut dead = Vec::new();
        for (&id, slot) in self.slots.iter_mut().filter(|(_, s)| s.takes_requests()) {
            slot.missed_heartbeats += 1;
            if slot.missed_heartbeats > max_missed {
                dead.push((id, Arc::clone(&slot.worker)));
            } else {
                beat.push(Arc::clone(&slot.worker));
            }
        }
        Beats { beat, dead }
    }

    /// The worker answered a heartbeat.
    pub fn heartbeat_seen(&mut self, id: u64) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.missed_heartbeats = 0;
        }
    }

    /// Takes a worker out of the rotation; it finishes what it has. Returns
    /// it (to close its stdin), unless it is unknown or already stopping.
    pub fn retire(&mut self, id: u64) -> Option<Arc<W>> {
        let slot = self.slots.get_mut(&id).filter(|s| !s.stopping)?;
        slot.stopping = true;
        let worker = Arc::clone(&slot.worker);
        self.idle.retain(|&w| w != id);
        Some(worker)
    }

    /// Stops taking requests: returns the queued callers (to answer with a
    /// `:pool` error) and every worker (to close its stdin).
    pub fn close(&mut self) -> (Vec<C>, Vec<Arc<W>>) {
        self.closed = true;
        self.idle.clear();
        let now = Instant::now();
        let mut queued = Vec::new();
        for req in std::mem::take(&mut self.queue) {
            self.leave(&req, now);
            if req.caller.is_some() {
                self.ended(req.id, Outcome::Stopped, now);
            }
            queued.extend(req.caller);
        }
        let workers = self
            .slots
            .values_mut()
            .map(|s| {
                s.stopping = true;
                Arc::clone(&s.worker)
            })
            .collect();
        (queued, workers)
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Requests written to worker `id` and not answered yet (0 if unknown).
    pub fn in_flight(&self, id: u64) -> usize {
        self.slots.get(&id).map_or(0, |s| s.in_flight.len())
    }

    pub fn all_workers(&self) -> Vec<Arc<W>> {
        self.slots.values().map(|s| Arc::clone(&s.worker)).collect()
    }

    /// Every worker, ordered by id.
    pub fn workers(&self, now: Instant) -> Vec<Row<W>> {
        let mut rows: Vec<Row<W>> = self
            .slots
            .iter()
            .map(|(&id, s)| Row {
                id,
                worker: Arc::clone(&s.worker),
                state: s.state(),
                stopping: s.stopping,
                in_flight: s.in_flight.len(),
                running: s.in_flight.len().min(self.config.concurrency),
                served: s.served,
                age: now.saturating_duration_since(s.started),
                sessions: s.sessions,
            })
            .collect();
        rows.sort_by_key(|r| r.id);
        rows
    }

    /// What `Policy::due` needs of every worker, ordered by id; `rss` reads
    /// a worker's memory (call it outside the lock if it is slow: see
    /// `Row`).
    pub fn vitals(rows: &[Row<W>], rss: impl Fn(&W) -> Option<u64>) -> Vec<Vitals> {
        rows.iter()
            .map(|r| Vitals {
                id: r.id,
                settled: matches!(r.state, State::Idle | State::Busy) && !r.stopping,
                holds_sessions: r.sessions > 0,
                age: r.age,
                rss_bytes: rss(&r.worker),
            })
            .collect()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            workers: self.slots.len() as u64,
            queued: self.queue.len() as u64,
            sessions: self.sessions.len() as u64,
            ..Gauges::default()
        };
        for slot in self.slots.values() {
            g.in_flight += slot.in_flight.iter().filter(|r| r.caller.is_some()).count() as u64;
            match slot.state() {
                State::Starting => g.starting += 1,
                State::Idle => g.idle += 1,
                State::Busy => g.busy += 1,
                State::Stopping => g.stopping += 1,
            }
        }
        g
    }

    /// Moves queued requests to workers (see the module docs) and returns
    /// the workers to flush.
    fn fill(&mut self) -> Writes<W> {
        let mut writes: Vec<(u64, Arc<W>)> = Vec::new();
        let mut i = 0;
        while i < self.queue.len() && self.any_room() {
            let Some(target) = self.pick(self.queue[i].session.as_ref()) else {
                i += 1;
                continue;
            };
            let req = self.queue.remove(i).expect("index in range");
            match self.place(target, req) {
                Ok(worker) => {
                    if !writes.iter().any(|(id, _)| *id == target) {
                        writes.push((target, worker));
                    }
                }
                // Its stdin is closed: it is on its way out and its exit will
                // be reported. The request never reached it.
                Err(req) => self.queue.insert(i, req),
            }
        }
        writes.into_iter().map(|(_, w)| w).collect()
    }

    /// Writes `req` to `target`, or hands it back if its stdin is closed.
    fn place(&mut self, target: u64, mut req: Request<C>) -> Result<Arc<W>, Request<C>> {
        let slot = self.slots.get_mut(&target).expect("target has a slot");
        // A call that starts at once is never queued again (if its worker
        // dies, it fails with it): its frame is not kept.
        let starts = slot.in_flight.len() < self.config.concurrency;
        let frame = if starts {
            std::mem::take(&mut req.frame)
        } else {
            req.frame.clone()
        };
        self.idle.retain(|&id| id != target);
        match slot.worker.enqueue(frame) {
            Ok(offset) => req.offset = offset,
            Err(frame) => {
                slot.stopping = true;
                req.frame = frame;
                return Err(req);
            }
        }
        if let Some((key, _)) = &req.session {
            if self.sessions.ran_on(key, target) {
                slot.sessions += 1;
            }
        }
        if starts {
            req.started = Some(Instant::now());
        }
        slot.in_flight.push_back(req);
        Ok(Arc::clone(&slot.worker))
    }

    /// Whether some worker could take a request that may run anywhere.
    fn any_room(&self) -> bool {
        !self.idle.is_empty() || self.roomiest().is_some()
    }

    /// The worker a request of `session` (or of none) goes to now, if any.
    fn pick(&self, session: Option<&(Key, Affinity)>) -> Option<u64> {
        let Some((key, affinity)) = session else {
            return self.pick_any();
        };
        match (self.sessions.worker_of(key), affinity) {
            (Some(w), Affinity::Hint) if self.has_room(w) => Some(w),
            (Some(_), Affinity::Hint) => self.pick_any(),
            (Some(w), _) => self.has_room_for(w, key).then_some(w),
            // A new session: the idle worker holding the fewest sessions
            // (most recently idle first among equals), so sessions started
            // together spread out; never one kept only for its sessions if
            // another can take it.
            // (Calls of it may still run where it was before it ended or
            // lost its worker: a worker running one is not picked.)
            (None, _) => self
                .idle
                .iter()
                .rev()
                .min_by_key(|id| {
                    let slot = &self.slots[id];
                    (slot.overdue, slot.sessions)
                })
                .copied()
                .or_else(|| match affinity {
                    Affinity::Hint => self.pick_any(),
                    _ => self.roomiest_for(Some(key)),
                }),
        }
    }

    /// The most recently idle worker, else (concurrency, pipelining) the
    /// roomiest.
    fn pick_any(&self) -> Option<u64> {
        match self.idle.back() {
            Some(&id) => Some(id),
            None => self.roomiest(),
        }
    }

    fn has_room(&self, id: u64) -> bool {
        self.slots
            .get(&id)
            .is_some_and(|s| s.has_room(&self.config))
    }

    /// Whether a call of session `key` may be written to worker `id` now.
    fn has_room_for(&self, id: u64, key: &Key) -> bool {
        self.slots.get(&id).is_some_and(|s| {
            s.has_room(&self.config) && !s.runs_session(key, self.config.concurrency)
        })
    }

    /// The ready worker with the fewest requests in flight, below its
    /// capacity.
    fn roomiest(&self) -> Option<u64> {
        self.roomiest_for(None)
    }

    /// [`Self::roomiest`], among those that may take a call of session
    /// `key` (see [`Slot::runs_session`]).
    fn roomiest_for(&self, key: Option<&Key>) -> Option<u64> {
        let config = &self.config;
        if config.capacity() == 1 {
            return None; // a worker with room is idle
        }
        self.slots
            .iter()
            .filter(|(_, s)| {
                s.has_room(config) && key.is_none_or(|k| !s.runs_session(k, config.concurrency))
            })
            .min_by_key(|(id, s)| (s.in_flight.len(), **id))
            .map(|(id, _)| *id)
    }

    /// Ends the session `key`: enqueues `frame` (a `session_end`) to each
    /// worker holding state for it and unbinds it. Calls of it still queued
    /// start it afresh. `None` if there is no such session.
    pub fn end_session(&mut self, key: &[u8], frame: &[u8]) -> Option<Ended<W>> {
        let (bound, seen) = self.sessions.end(key, Instant::now())?;
        let mut ended = Ended {
            writes: Vec::new(),
            retire: Vec::new(),
            ended: vec![key.into()],
        };
        for w in seen {
            if let Some(slot) = self.slots.get(&w) {
                if slot.worker.enqueue(OutFrame::from(frame.to_vec())).is_ok() {
                    ended.writes.push(Arc::clone(&slot.worker));
                }
            }
        }
        if let Some(w) = bound {
            ended.retire.extend(self.unbind(w));
        }
        // Its queued calls may now go to any worker.
        for w in self.fill() {
            if !ended.writes.iter().any(|x| Arc::ptr_eq(x, &w)) {
                ended.writes.push(w);
            }
        }
        Some(ended)
    }

    /// Ends the sessions idle for `session_ttl`, as [`Self::end_session`];
    /// `frame` makes each one's `session_end`.
    pub fn expire_sessions(&mut self, now: Instant, frame: impl Fn(&[u8]) -> Vec<u8>) -> Ended<W> {
        let mut all = Ended {
            writes: Vec::new(),
            retire: Vec::new(),
            ended: Vec::new(),
        };
        let Some(ttl) = self.config.session_ttl else {
            return all;
        };
        for key in self.sessions.idle_for(ttl, now) {
            let lost = self.sessions.get(&key).is_some_and(|s| s.lost);
            if let Some(ended) = self.end_session(&key, &frame(&key)) {
                if !lost {
                    all.ended.extend(ended.ended);
                }
                for w in ended.writes {
                    if !all.writes.iter().any(|x| Arc::ptr_eq(x, &w)) {
                        all.writes.push(w);
                    }
                }
                all.retire.extend(ended.retire);
            }
        }
        self.stats.sessions_expired += all.ended.len() as u64;
        all
    }

    /// A session bound to `id` ended: if it was the last one keeping the
    /// worker past `max_requests`, the worker is retired.
    fn unbind(&mut self, id: u64) -> Option<(Arc<W>, Reason)> {
        let slot = self.slots.get_mut(&id)?;
        slot.sessions = slot.sessions.saturating_sub(1);
        if slot.sessions > 0 || slot.stopping {
            return None;
        }
        let reason = self.config.recycle.after_answer(slot.served, false)?;
        slot.stopping = true;
        self.idle.retain(|&w| w != id);
        Some((Arc::clone(&slot.worker), reason))
    }

    /// Every session, ordered by id.
    pub fn sessions(&self, now: Instant) -> Vec<SessionRow> {
        self.sessions.rows(now)
    }

    pub fn session(&self, key: &[u8], now: Instant) -> Option<SessionRow> {
        self.sessions.row(key, now)
    }

    /// After a worker's in-flight list shrank: idle again, if it takes requests.
    fn settle(&mut self, id: u64) {
        if let Some(slot) = self.slots.get(&id) {
            if slot.takes_requests() && slot.in_flight.is_empty() && !self.idle.contains(&id) {
                self.idle.push_back(id);
            }
        }
    }
}

/// The slot of `worker_id`, which must be running `request_id`: one of
/// its first `concurrency` calls (a worker starts calls in the order they
/// were written and frees a slot only after answering its call, so an answer
/// from further back breaks the protocol). Returns the call's position.
fn running<C, W>(
    slots: &mut HashMap<u64, Slot<C, W>>,
    concurrency: usize,
    worker_id: u64,
    request_id: u64,
) -> Result<(&mut Slot<C, W>, usize), Violation> {
    let slot = slots
        .get_mut(&worker_id)
        .ok_or_else(|| Violation("answered after removal".into()))?;
    let Some(pos) = slot
        .in_flight
        .iter()
        .take(concurrency)
        .position(|r| r.id == request_id)
    else {
        return Err(Violation(format!(
            "answered request {request_id} that it was not running"
        )));
    };
    Ok((slot, pos))
}

/// Registers a worker, then runs `start` (which starts the threads that
/// serve it). If `start` fails, the worker is unregistered before this
/// returns, so a half-started worker never holds a slot.
pub fn start_registered<C, W: Pipe, T, E>(
    dispatcher: &Mutex<Dispatcher<C, W>>,
    id: u64,
    worker: Arc<W>,
    start: impl FnOnce() -> Result<T, E>,
) -> Result<T, StartError<E>> {
    dispatcher
        .lock()
        .register(id, worker, Instant::now())
        .map_err(StartError::Refused)?;
    start().map_err(|e| {
        dispatcher.lock().unregister(id);
        StartError::Failed(e)
    })
}

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod tests;
