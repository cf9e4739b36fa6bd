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
//! **Dispatch.** The queue is strictly FIFO. A request goes to an idle worker
//! first, the most recently idle one (at low load the same warm worker keeps
//! serving); with `pipeline_depth` > 1 it may also be written behind a
//! running call, to the ready worker with the fewest in flight, so that
//! worker finds its next call in its pipe. After every change, while the
//! queue is not empty, no worker that takes requests has room.
//!
//! **Worker death.** A worker runs its calls one at a time, in order. When it
//! dies, its running call is answered with an error, and the ones written
//! behind it, which never started, are queued again at the front.

use crate::recycle::{Policy, Reason, Vitals};
use crate::stats::{Outcome, Stats};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A worker's stdin, as the dispatcher sees it.
pub trait Pipe {
    /// Queues a frame for writing, without blocking or any syscall (it is
    /// called under the pool's lock, which keeps frames in dispatch order).
    /// A closed stdin hands the frame back.
    fn enqueue(&self, frame: Vec<u8>) -> Result<(), Vec<u8>>;
}

/// Settings fixed when the pool is made.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Most requests written to one worker at a time (1: no pipelining).
    pub pipeline_depth: usize,
    /// Most requests waiting in the queue; past it, `submit` refuses.
    pub max_queue: usize,
    pub recycle: Policy,
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
}

/// What [`Dispatcher::worker_down`] decided.
pub struct Gone<C> {
    /// The caller of the call it was running, to answer with an error.
    pub running: Option<C>,
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
    pub served: u64,
    pub age: Duration,
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
}

struct Request<C> {
    id: u64,
    /// The encoded `call` frame. Taken when written to an idle worker; kept
    /// when written behind a running call, in case it must be queued again.
    frame: Vec<u8>,
    /// `None` once the caller gave up.
    caller: Option<C>,
}

struct Slot<C, W> {
    worker: Arc<W>,
    /// Handshake received.
    ready: bool,
    /// Takes no new requests; finishes those it has.
    stopping: bool,
    /// Written to the worker: the first runs, the others wait in its pipe.
    /// Never longer than `pipeline_depth`.
    in_flight: VecDeque<Request<C>>,
    served: u64,
    /// Heartbeats sent since the last one it answered.
    missed_heartbeats: u32,
    started: Instant,
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
}

/// A pool's queue and workers. See the module docs.
pub struct Dispatcher<C, W> {
    config: Config,
    slots: HashMap<u64, Slot<C, W>>,
    /// Ready workers with nothing in flight; the most recently idle is last.
    idle: VecDeque<u64>,
    queue: VecDeque<Request<C>>,
    closed: bool,
    stats: Stats,
}

impl<C, W: Pipe> Dispatcher<C, W> {
    pub fn new(config: Config) -> Self {
        assert!(config.pipeline_depth > 0, "pipeline_depth must be positive");
        Dispatcher {
            config,
            slots: HashMap::new(),
            idle: VecDeque::new(),
            queue: VecDeque::new(),
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

    /// Queues a request behind those already waiting and dispatches what can
    /// be. A refused request's caller comes back with the reason.
    pub fn submit(
        &mut self,
        id: u64,
        frame: Vec<u8>,
        caller: C,
    ) -> Result<Writes<W>, (Refused, C)> {
        self.stats.requests += 1;
        if self.closed {
            self.stats.record(Outcome::Stopped);
            return Err((Refused::Closed, caller));
        }
        if self.queue.len() >= self.config.max_queue && self.idle.is_empty() {
            self.stats.record(Outcome::Rejected);
            return Err((Refused::Full(self.queue.len()), caller));
        }
        self.queue.push_back(Request {
            id,
            frame,
            caller: Some(caller),
        });
        Ok(self.fill())
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

    /// The worker answered `request_id` (with `outcome`: `Completed`,
    /// `PythonError` or `Validation`). It must be the call it is running.
    pub fn answer(
        &mut self,
        worker_id: u64,
        request_id: u64,
        outcome: Outcome,
    ) -> Result<Answered<C, W>, Violation> {
        let slot = self
            .slots
            .get_mut(&worker_id)
            .ok_or_else(|| Violation("answered after removal".into()))?;
        if slot.in_flight.front().map(|r| r.id) != Some(request_id) {
            return Err(Violation(format!(
                "answered request {request_id} that it was not running"
            )));
        }
        let req = slot.in_flight.pop_front().expect("checked above");
        slot.served += 1;
        let retire = match self.config.recycle.after_answer(slot.served) {
            Some(reason) if !slot.stopping => {
                slot.stopping = true;
                Some((Arc::clone(&slot.worker), reason))
            }
            _ => None,
        };
        if req.caller.is_some() {
            self.stats.record(outcome);
        }
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
        })
    }

    /// The worker's process is gone: its running call is answered, the ones
    /// behind it are queued again (or stopped, if the pool is closed), and it
    /// is forgotten.
    pub fn worker_down(&mut self, id: u64, exit: Exit) -> (Gone<C>, Writes<W>) {
        self.idle.retain(|&w| w != id);
        let Some(slot) = self.slots.remove(&id) else {
            return (
                Gone {
                    running: None,
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
        let mut in_flight = slot.in_flight;
        let running = in_flight.pop_front().and_then(|r| r.caller);
        if running.is_some() {
            self.stats.record(match exit {
                Exit::BrokeProtocol => Outcome::TransportError,
                _ => Outcome::WorkerError,
            });
        }
        let mut stopped = Vec::new();
        for req in in_flight.into_iter().rev() {
            let Some(caller) = req.caller else { continue };
            if self.closed {
                self.stats.record(Outcome::Stopped);
                stopped.push(caller);
            } else {
                debug_assert!(
                    !req.frame.is_empty(),
                    "prefetched requests keep their frame"
                );
                self.stats.requeued += 1;
                self.queue.push_front(Request {
                    caller: Some(caller),
                    ..req
                });
            }
        }
        stopped.reverse();
        let writes = self.fill();
        (Gone { running, stopped }, writes)
    }

    /// The caller timed out: gives up its request, wherever it is.
    pub fn cancel(&mut self, request_id: u64) -> Cancel<C, W> {
        if let Some(caller) = self.take_queued(request_id) {
            self.stats.record(Outcome::Timeout);
            return Cancel::Queued(caller);
        }
        for (&worker_id, slot) in self.slots.iter_mut() {
            let Some(req) = slot.in_flight.iter_mut().find(|r| r.id == request_id) else {
                continue;
            };
            return match req.caller.take() {
                Some(caller) => {
                    self.stats.record(Outcome::Timeout);
                    Cancel::Running {
                        caller,
                        worker: Arc::clone(&slot.worker),
                        worker_id,
                    }
                }
                None => Cancel::Replied,
            };
        }
        Cancel::Replied
    }

    /// The caller's `queue_timeout` passed: takes its request out of the
    /// queue if it is still there. `None` means a worker has it (or it was
    /// answered).
    pub fn dequeue(&mut self, request_id: u64) -> Option<C> {
        let caller = self.take_queued(request_id)?;
        self.stats.record(Outcome::QueueTimeout);
        Some(caller)
    }

    fn take_queued(&mut self, request_id: u64) -> Option<C> {
        let pos = self.queue.iter().position(|r| r.id == request_id)?;
        self.queue.remove(pos).and_then(|r| r.caller)
    }

    /// The callers that `dead` picks died: their requests are given up.
    pub fn caller_down(&mut self, dead: impl Fn(&C) -> bool) -> GivenUp<C, W> {
        let mut queued = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for req in self.queue.drain(..) {
            match req.caller {
                Some(c) if dead(&c) => queued.push(c),
                _ => kept.push_back(req),
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
        for _ in 0..queued.len() + running.len() {
            self.stats.record(Outcome::Cancelled);
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
        let queued: Vec<C> = self.queue.drain(..).filter_map(|r| r.caller).collect();
        for _ in &queued {
            self.stats.record(Outcome::Stopped);
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
                served: s.served,
                age: now.saturating_duration_since(s.started),
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
        let depth = self.config.pipeline_depth;
        let mut writes: Vec<(u64, Arc<W>)> = Vec::new();
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
            let slot = self.slots.get_mut(&target).expect("target has a slot");
            let frame = if slot.in_flight.is_empty() {
                std::mem::take(&mut req.frame)
            } else {
                req.frame.clone()
            };
            if let Err(frame) = slot.worker.enqueue(frame) {
                // Its stdin is closed: it is on its way out and its exit will
                // be reported. The request never reached it.
                slot.stopping = true;
                req.frame = frame;
                self.queue.push_front(req);
                self.idle.retain(|&id| id != target);
                continue;
            }
            slot.in_flight.push_back(req);
            if !writes.iter().any(|(id, _)| *id == target) {
                writes.push((target, Arc::clone(&slot.worker)));
            }
        }
        writes.into_iter().map(|(_, w)| w).collect()
    }

    /// The ready worker with the fewest requests in flight, below `depth`.
    fn roomiest(&self, depth: usize) -> Option<u64> {
        self.slots
            .iter()
            .filter(|(_, s)| s.takes_requests() && s.in_flight.len() < depth)
            .min_by_key(|(id, s)| (s.in_flight.len(), **id))
            .map(|(id, _)| *id)
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
mod tests;
