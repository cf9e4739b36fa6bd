//! Every transition of the dispatcher, with workers that record what is
//! written to them and callers that are plain numbers.

use super::*;
use crate::sessions::{Affinity, Refusal};
use std::sync::atomic::{AtomicBool, Ordering};

/// A worker's stdin that records frames; each test frame is a request id.
#[derive(Default)]
pub(super) struct FakePipe {
    frames: parking_lot::Mutex<Vec<u64>>,
    closed: AtomicBool,
}

impl FakePipe {
    pub(super) fn written(&self) -> Vec<u64> {
        self.frames.lock().clone()
    }
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

impl Pipe for FakePipe {
    fn enqueue(&self, frame: OutFrame) -> Result<u64, OutFrame> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(frame);
        }
        let id = u64::from_be_bytes(frame.to_vec().try_into().expect("an 8-byte test frame"));
        let mut frames = self.frames.lock();
        frames.push(id);
        // Each test frame is 8 bytes.
        Ok(8 * (frames.len() as u64 - 1))
    }
}

/// A caller: `(process, request id)`.
pub(super) type Caller = (u32, u64);
pub(super) type D = Dispatcher<Caller, FakePipe>;

pub(super) fn config(depth: usize, max_queue: usize) -> Config {
    Config {
        size: 0,
        concurrency: 1,
        pipeline_depth: depth,
        max_queue,
        recycle: Policy::default(),
        max_sessions: 0,
        session_ttl: None,
        breaker: None,
    }
}

/// The callers of the calls a dead worker was running.
pub(super) fn callers(running: &[(Caller, Option<Key>)]) -> Vec<Caller> {
    running.iter().map(|(c, _)| *c).collect()
}

pub(super) fn pool(depth: usize) -> D {
    Dispatcher::new(config(depth, 1_000))
}

pub(super) fn frame(id: u64) -> OutFrame {
    OutFrame::from(id.to_be_bytes().to_vec())
}

/// Submits request `id` from process 0.
pub(super) fn submit(d: &mut D, id: u64) -> Writes<FakePipe> {
    submit_from(d, 0, id)
}

pub(super) fn submit_from(d: &mut D, process: u32, id: u64) -> Writes<FakePipe> {
    match d.submit(id, frame(id), (process, id)) {
        Ok(w) => w,
        Err((why, _)) => panic!("refused: {why:?}"),
    }
}

pub(super) fn add(d: &mut D, id: u64) -> Arc<FakePipe> {
    let w = Arc::new(FakePipe::default());
    d.register(id, Arc::clone(&w), Instant::now()).unwrap();
    w
}

pub(super) fn add_ready(d: &mut D, id: u64) -> Arc<FakePipe> {
    let w = add(d, id);
    d.ready(id).unwrap();
    w
}

pub(super) fn complete(d: &mut D, worker: u64, request: u64) -> Answered<Caller, FakePipe> {
    d.answer(worker, request, Outcome::Completed).unwrap()
}

pub(super) fn invariant(d: &D) {
    let g = d.gauges();
    assert_eq!(
        d.stats().requests,
        d.stats().settled() + g.queued + g.in_flight,
        "requests are partitioned by outcome, queue and in-flight: {:?} {g:?}",
        d.stats()
    );
    // After every change, no queued request has a worker it may go to.
    for req in &d.queue {
        assert_eq!(
            d.pick(req.session.as_ref()),
            None,
            "request {} is queued though a worker may take it",
            req.id
        );
    }
    // Sessions count their live requests and their workers count them.
    let all = d
        .queue
        .iter()
        .chain(d.slots.values().flat_map(|s| s.in_flight.iter()));
    let mut live: HashMap<Vec<u8>, usize> = HashMap::new();
    for req in all {
        if let Some((key, _)) = &req.session {
            *live.entry(key.to_vec()).or_default() += 1;
        }
    }
    let rows = d.sessions(Instant::now());
    for row in &rows {
        assert_eq!(
            row.pending,
            live.remove(&row.id).unwrap_or(0),
            "session {:?} counts its live requests",
            row.id
        );
    }
    assert!(live.is_empty(), "requests of unknown sessions: {live:?}");
    // With concurrency, a Strict or FailFast call never runs beside an
    // earlier call of its session on the same worker.
    for slot in d.slots.values() {
        if d.config.concurrency == 1 || slot.concurrent_sessions {
            continue;
        }
        for (i, req) in slot.in_flight.iter().enumerate() {
            if let Some((key, affinity)) = &req.session {
                assert!(
                    *affinity == Affinity::Hint
                        || !slot
                            .in_flight
                            .iter()
                            .take(i)
                            .any(|r| r.session.as_ref().is_some_and(|(k, _)| k == key)),
                    "request {} of session {key:?} was written behind another of its session",
                    req.id
                );
            }
        }
    }
    for (&id, slot) in &d.slots {
        let bound = rows.iter().filter(|r| r.worker == Some(id)).count();
        assert_eq!(slot.sessions, bound, "worker {id} counts its sessions");
    }
}

// --- dispatch ---

#[test]
fn a_request_waits_in_the_queue_until_a_worker_is_ready() {
    let mut d = pool(1);
    let w = add(&mut d, 1);
    assert!(submit(&mut d, 10).is_empty());
    assert_eq!(d.gauges().queued, 1);
    assert!(w.written().is_empty(), "a starting worker gets nothing");
    let writes = d.ready(1).unwrap();
    assert_eq!(writes.len(), 1);
    assert_eq!(w.written(), [10]);
    assert_eq!(d.gauges().queued, 0);
    invariant(&d);
}

#[test]
fn an_idle_worker_takes_a_request_at_once() {
    let mut d = pool(1);
    let w = add_ready(&mut d, 1);
    let writes = submit(&mut d, 10);
    assert!(Arc::ptr_eq(&writes[0], &w));
    assert_eq!(w.written(), [10]);
    assert_eq!(d.gauges().busy, 1);
}

#[test]
fn the_most_recently_idle_worker_is_taken_first() {
    let mut d = pool(1);
    let w1 = add_ready(&mut d, 1);
    let w2 = add_ready(&mut d, 2);
    submit(&mut d, 10);
    assert_eq!(w2.written(), [10], "worker 2 became idle last");
    complete(&mut d, 2, 10);
    submit(&mut d, 11);
    assert_eq!(w2.written(), [10, 11], "the warm worker keeps serving");
    assert!(w1.written().is_empty());
}

#[test]
fn the_queue_is_first_in_first_out() {
    let mut d = pool(1);
    for id in 10..15 {
        submit(&mut d, id);
    }
    let w = add_ready(&mut d, 1);
    for id in 10..15 {
        assert_eq!(w.written().last(), Some(&id));
        complete(&mut d, 1, id);
    }
    assert_eq!(w.written(), [10, 11, 12, 13, 14]);
}

#[test]
fn without_pipelining_a_busy_worker_gets_nothing_more() {
    let mut d = pool(1);
    let w = add_ready(&mut d, 1);
    submit(&mut d, 10);
    assert!(submit(&mut d, 11).is_empty());
    assert_eq!(w.written(), [10]);
    assert_eq!(d.gauges().queued, 1);
    let answered = complete(&mut d, 1, 10);
    assert_eq!(answered.caller, Some((0, 10)));
    assert_eq!(
        answered.writes.len(),
        1,
        "the next request goes out with the answer"
    );
    assert!(!answered.now_idle);
    assert_eq!(w.written(), [10, 11]);
}

#[test]
fn pipelining_writes_behind_a_running_call_up_to_the_depth() {
    let mut d = pool(3);
    let w = add_ready(&mut d, 1);
    for id in 10..15 {
        submit(&mut d, id);
    }
    assert_eq!(w.written(), [10, 11, 12]);
    assert_eq!(d.gauges().queued, 2);
    assert_eq!(d.gauges().in_flight, 3);
    complete(&mut d, 1, 10);
    assert_eq!(w.written(), [10, 11, 12, 13]);
    assert_eq!(d.in_flight(1), 3);
    assert_eq!(d.in_flight(99), 0, "an unknown worker has none");
}

#[test]
fn pipelining_uses_idle_workers_before_busy_ones() {
    let mut d = pool(4);
    let w1 = add_ready(&mut d, 1);
    let w2 = add_ready(&mut d, 2);
    submit(&mut d, 10);
    submit(&mut d, 11);
    assert_eq!((w1.written().len(), w2.written().len()), (1, 1));
}

#[test]
fn pipelining_picks_the_worker_with_the_fewest_in_flight() {
    let mut d = pool(3);
    let w1 = add_ready(&mut d, 1);
    let w2 = add_ready(&mut d, 2);
    for id in 10..13 {
        submit(&mut d, id); // 10 -> w2 (idle last), 11 -> w1, 12 -> w1 (tie: lowest id)
    }
    assert_eq!(w2.written(), [10]);
    assert_eq!(w1.written(), [11, 12]);
    submit(&mut d, 13);
    assert_eq!(w2.written(), [10, 13], "w2 had fewer in flight");
}

#[test]
fn a_worker_idle_with_nothing_queued_says_so() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    let answered = complete(&mut d, 1, 10);
    assert!(answered.now_idle);
    assert!(answered.writes.is_empty());
    assert_eq!(d.gauges().idle, 1);
}

#[test]
fn a_worker_whose_stdin_closed_is_skipped_and_the_request_kept() {
    let mut d = pool(1);
    let w1 = add_ready(&mut d, 1);
    let w2 = add_ready(&mut d, 2);
    w2.close();
    let writes = submit(&mut d, 10);
    assert_eq!(w1.written(), [10], "it went to the other worker");
    assert!(Arc::ptr_eq(&writes[0], &w1));
    assert_eq!(d.workers(Instant::now())[1].state, State::Stopping);
    w1.close();
    assert!(complete(&mut d, 1, 10).writes.is_empty());
    submit(&mut d, 11);
    assert_eq!(d.gauges().queued, 1, "no worker can take it: it waits");
    invariant(&d);
}

#[test]
fn a_frame_pipelined_to_a_closed_stdin_is_queued_again_intact() {
    let mut d = pool(2);
    let w1 = add_ready(&mut d, 1);
    submit(&mut d, 10);
    w1.close();
    submit(&mut d, 11);
    let w2 = add_ready(&mut d, 2);
    assert_eq!(w2.written(), [11]);
    invariant(&d);
}

// --- reclaim ---

/// Far enough ahead that every running call is overdue.
fn later() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn asked(asks: &Asks<FakePipe>) -> Vec<u64> {
    asks.iter()
        .flat_map(|(_, ids)| ids.iter().map(|&(id, _)| id))
        .collect()
}

/// Makes `worker`'s running call a minute old.
fn age(d: &mut D, worker: u64) {
    let head = d
        .slots
        .get_mut(&worker)
        .unwrap()
        .in_flight
        .front_mut()
        .unwrap();
    head.started = Instant::now().checked_sub(Duration::from_secs(60));
}

#[test]
fn calls_behind_a_stalled_call_are_given_back_and_run_elsewhere() {
    let mut d = pool(3);
    let w1 = add_ready(&mut d, 1);
    for id in 10..13 {
        submit(&mut d, id);
    }
    assert_eq!(w1.written(), [10, 11, 12]);
    let w2 = add_ready(&mut d, 2);
    assert!(w2.written().is_empty(), "nothing was queued");
    assert!(
        d.reclaim_due(Duration::from_secs(1), Instant::now())
            .is_empty(),
        "not overdue yet"
    );
    let asks = d.reclaim_due(Duration::from_secs(1), later());
    assert_eq!(asks.len(), 1);
    assert!(Arc::ptr_eq(&asks[0].0, &w1));
    assert_eq!(asked(&asks), [11, 12], "the running call stays");
    assert!(
        d.reclaim_due(Duration::from_secs(1), later()).is_empty(),
        "each call is asked for once"
    );
    // Given back out of order: they still run in submission order.
    let writes = d.reclaimed(1, 12).unwrap().writes;
    assert!(Arc::ptr_eq(&writes[0], &w2));
    d.reclaimed(1, 11).unwrap();
    assert_eq!(w2.written(), [12, 11]);
    assert_eq!(d.stats().requeued, 2);
    invariant(&d);
    // The stalled worker gets nothing behind its running call...
    submit(&mut d, 13);
    submit(&mut d, 14);
    assert_eq!(w1.written(), [10, 11, 12]);
    assert_eq!(w2.written(), [12, 11, 13], "w2 is full at depth 3");
    assert_eq!(d.gauges().queued, 1);
    invariant(&d);
    // ...until that call ends.
    complete(&mut d, 1, 10);
    assert_eq!(w1.written(), [10, 11, 12, 14]);
    for id in [12, 11, 13] {
        assert_eq!(complete(&mut d, 2, id).caller, Some((0, id)));
    }
    assert_eq!(complete(&mut d, 1, 14).caller, Some((0, 14)));
    assert_eq!(d.stats().completed, 5);
    invariant(&d);
}

#[test]
fn given_back_calls_queue_in_submission_order_ahead_of_later_ones() {
    let mut d = pool(2);
    let w1 = add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    let w2 = add_ready(&mut d, 2);
    for id in 12..15 {
        submit(&mut d, id);
    }
    assert_eq!(w2.written(), [12, 13]);
    assert_eq!(d.gauges().queued, 1);
    age(&mut d, 1);
    let asks = d.reclaim_due(Duration::from_secs(30), Instant::now());
    assert_eq!(asked(&asks), [11], "only w1's call is overdue");
    d.reclaimed(1, 11).unwrap();
    assert_eq!(d.gauges().queued, 2, "no worker has room");
    complete(&mut d, 2, 12);
    complete(&mut d, 2, 13);
    assert_eq!(w2.written(), [12, 13, 11, 14]);
    assert_eq!(w1.written(), [10, 11]);
    invariant(&d);
}

#[test]
fn nothing_is_asked_back_while_no_other_worker_takes_requests() {
    let mut d = pool(2);
    let w1 = add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    assert!(d.reclaim_due(Duration::ZERO, later()).is_empty());
    // Stalled all the same: a new call waits in the queue, not in its pipe.
    complete(&mut d, 1, 10);
    age(&mut d, 1);
    d.reclaim_due(Duration::from_secs(30), Instant::now());
    submit(&mut d, 12);
    assert_eq!(w1.written(), [10, 11]);
    assert_eq!(d.gauges().queued, 1);
    invariant(&d);
}

#[test]
fn a_call_started_before_the_ask_arrived_is_answered_as_usual() {
    let mut d = pool(2);
    let w1 = add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    let w2 = add_ready(&mut d, 2);
    assert_eq!(asked(&d.reclaim_due(Duration::ZERO, later())), [11]);
    // The worker ended 10 and started 11 before it read the ask.
    complete(&mut d, 1, 10);
    submit(&mut d, 12);
    submit(&mut d, 13);
    assert_eq!(w2.written(), [12]);
    assert_eq!(w1.written(), [10, 11, 13], "no longer stalled");
    assert_eq!(complete(&mut d, 1, 11).caller, Some((0, 11)));
    assert!(d.reclaimed(1, 11).is_err(), "it was answered");
    invariant(&d);
}

#[test]
fn a_call_given_back_after_the_one_ahead_ended_leaves_the_next_running() {
    let mut d = pool(3);
    let w1 = add_ready(&mut d, 1);
    for id in 10..13 {
        submit(&mut d, id);
    }
    let w2 = add_ready(&mut d, 2);
    assert_eq!(asked(&d.reclaim_due(Duration::ZERO, later())), [11, 12]);
    complete(&mut d, 1, 10);
    // 11 is at the front now, not started: the worker gives it back.
    d.reclaimed(1, 11).unwrap();
    assert_eq!(w2.written(), [11]);
    // Then 12, which leaves w1 idle: it takes 12 again.
    d.reclaimed(1, 12).unwrap();
    assert_eq!(w1.written(), [10, 11, 12, 12]);
    assert_eq!(d.gauges().queued, 0);
    assert_eq!(complete(&mut d, 2, 11).caller, Some((0, 11)));
    assert_eq!(complete(&mut d, 1, 12).caller, Some((0, 12)));
    invariant(&d);
}

#[test]
fn a_call_given_back_after_its_caller_gave_up_is_dropped() {
    let mut d = pool(2);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    add_ready(&mut d, 2);
    assert_eq!(asked(&d.reclaim_due(Duration::ZERO, later())), [11]);
    assert!(matches!(d.cancel(11), Cancel::Running { .. }));
    d.reclaimed(1, 11).unwrap();
    assert_eq!(d.gauges().queued, 0);
    assert_eq!(d.gauges().in_flight, 1);
    assert_eq!(d.stats().requeued, 0);
    assert_eq!(d.stats().timeouts, 1);
    assert!(d.expired(1, 11).is_none(), "nothing to kill for it");
    invariant(&d);
}

#[test]
fn a_pipelined_call_past_its_queue_timeout_is_asked_back_and_ends_so() {
    let mut d = pool(3);
    let w1 = add_ready(&mut d, 1);
    for id in 10..13 {
        submit(&mut d, id);
    }
    let w2 = add_ready(&mut d, 2);
    match d.dequeue(11) {
        Dequeue::Pipelined(Some((w, _))) => assert!(Arc::ptr_eq(&w, &w1)),
        _ => panic!("11 waits in w1's pipe"),
    }
    assert!(
        matches!(d.dequeue(11), Dequeue::Pipelined(None)),
        "asked once"
    );
    let given = d.reclaimed(1, 11).unwrap();
    assert_eq!(given.dequeued, Some((0, 11)));
    assert!(given.writes.is_empty());
    assert!(w2.written().is_empty(), "it is not queued again");
    assert_eq!(d.stats().queue_timeouts, 1);
    assert_eq!(d.stats().requeued, 0);
    // A reclaim_due ask for 12 later still queues 12 again as usual.
    assert_eq!(asked(&d.reclaim_due(Duration::ZERO, later())), [12]);
    assert!(d.reclaimed(1, 12).unwrap().dequeued.is_none());
    assert_eq!(w2.written(), [12]);
    invariant(&d);
}

#[test]
fn a_dequeued_call_its_worker_started_first_runs_to_its_answer() {
    let mut d = pool(2);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    assert!(matches!(d.dequeue(11), Dequeue::Pipelined(Some(_))));
    complete(&mut d, 1, 10);
    assert_eq!(complete(&mut d, 1, 11).caller, Some((0, 11)));
    assert_eq!(d.stats().queue_timeouts, 0);
    assert_eq!(d.stats().completed, 2);
    invariant(&d);
}

#[test]
fn only_asked_calls_may_be_given_back() {
    let mut d = pool(2);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    assert!(d.reclaimed(1, 11).is_err(), "not asked");
    assert!(d.reclaimed(1, 99).is_err(), "unknown");
    assert!(d.reclaimed(7, 11).is_err(), "unknown worker");
}

#[test]
fn session_calls_bound_to_the_stalled_worker_stay() {
    let mut d = pool(3);
    add_ready(&mut d, 1);
    let session = |affinity| Call {
        session: Some((b"s".to_vec(), affinity)),
        stream: None,
    };
    for (id, call) in [
        (10, session(Affinity::Strict)),
        (11, session(Affinity::Strict)),
        (12, session(Affinity::Hint)),
    ] {
        d.submit_call(id, frame(id), (0, id), call, Instant::now())
            .ok()
            .unwrap();
    }
    add_ready(&mut d, 2);
    assert_eq!(asked(&d.reclaim_due(Duration::ZERO, later())), [12]);
    invariant(&d);
}

#[test]
fn a_worker_that_dies_with_asked_calls_queues_them_again() {
    let mut d = pool(2);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    let w2 = add_ready(&mut d, 2);
    assert_eq!(asked(&d.reclaim_due(Duration::ZERO, later())), [11]);
    d.worker_down(1, Exit::Died);
    assert_eq!(w2.written(), [11]);
    assert!(
        d.reclaim_due(Duration::ZERO, later()).is_empty(),
        "11 runs now; nothing waits behind it"
    );
    invariant(&d);
}

// --- hold (a running call waits for an Elixir function) ---

#[test]
fn a_held_worker_gets_nothing_behind_its_call_and_gives_back_what_waits() {
    let mut d = pool(4);
    let w1 = add_ready(&mut d, 1);
    for id in 10..13 {
        submit(&mut d, id);
    }
    assert_eq!(w1.written(), [10, 11, 12]);
    // No other worker yet: asked back all the same (reclaim_due would not).
    let asks = d.hold(1);
    assert_eq!(asks.len(), 1);
    assert!(Arc::ptr_eq(&asks[0].0, &w1));
    assert_eq!(asked(&asks), [11, 12], "the running call stays");
    assert_eq!(
        asks[0]
            .1
            .iter()
            .map(|&(_, offset)| offset)
            .collect::<Vec<_>>(),
        [8, 16],
        "each named by where it starts in stdin"
    );
    assert!(d.hold(1).is_empty(), "each call is asked for once");
    assert!(
        d.reclaim_due(Duration::ZERO, later()).is_empty(),
        "nor asked again by a reclaim pass"
    );
    // The nested call (13) and the given-back ones go to another worker.
    submit(&mut d, 13);
    assert_eq!(w1.written(), [10, 11, 12], "nothing behind the held call");
    assert_eq!(d.gauges().queued, 1);
    invariant(&d);
    let w2 = add_ready(&mut d, 2);
    assert_eq!(w2.written(), [13]);
    d.reclaimed(1, 11).unwrap();
    d.reclaimed(1, 12).unwrap();
    assert_eq!(w2.written(), [13, 11, 12]);
    assert_eq!(complete(&mut d, 2, 13).caller, Some((0, 13)));
    invariant(&d);
    // The held call ends: the worker takes calls behind its next one again.
    assert_eq!(complete(&mut d, 1, 10).caller, Some((0, 10)));
    submit(&mut d, 14);
    submit(&mut d, 15);
    assert_eq!(w1.written(), [10, 11, 12, 14, 15]);
    invariant(&d);
}

#[test]
fn holding_keeps_bound_session_calls_and_ignores_idle_or_unknown_workers() {
    let mut d = pool(3);
    let w1 = add_ready(&mut d, 1);
    assert!(d.hold(1).is_empty(), "idle: nothing to hold");
    assert!(d.hold(9).is_empty(), "unknown");
    submit(&mut d, 9);
    assert_eq!(w1.written(), [9], "an idle worker was not marked");
    complete(&mut d, 1, 9);
    let session = |affinity| Call {
        session: Some((b"s".to_vec(), affinity)),
        stream: None,
    };
    for (id, call) in [
        (10, session(Affinity::Strict)),
        (11, session(Affinity::Strict)),
        (12, session(Affinity::Hint)),
    ] {
        d.submit_call(id, frame(id), (0, id), call, Instant::now())
            .ok()
            .unwrap();
    }
    assert_eq!(asked(&d.hold(1)), [12]);
    assert!(d.worker(1).is_some_and(|w| Arc::ptr_eq(&w, &w1)));
    assert!(d.worker(2).is_none());
    invariant(&d);
}

// --- answers ---

#[test]
fn each_kind_of_answer_is_counted_once() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    for (id, outcome) in [
        (10, Outcome::Completed),
        (11, Outcome::PythonError),
        (12, Outcome::Validation),
    ] {
        submit(&mut d, id);
        let a = d.answer(1, id, outcome).unwrap();
        assert_eq!(a.caller, Some((0, id)));
    }
    let s = d.stats();
    assert_eq!(
        (s.completed, s.python_errors, s.validation_errors),
        (1, 1, 1)
    );
    assert_eq!(s.requests, 3);
    invariant(&d);
}

#[test]
fn an_answer_to_a_call_the_worker_is_not_running_is_a_violation() {
    let mut d = pool(2);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    let err = d.answer(1, 11, Outcome::Completed).err().unwrap();
    assert!(err.0.contains("request 11"), "{err:?}");
    assert!(d.answer(1, 99, Outcome::Completed).is_err());
    assert!(
        d.answer(7, 10, Outcome::Completed).is_err(),
        "unknown worker"
    );
    assert_eq!(d.stats().settled(), 0);
}

#[test]
fn an_idle_worker_that_answers_is_a_violation() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    assert!(d.answer(1, 1, Outcome::Completed).is_err());
}

#[test]
fn a_second_ready_or_one_from_an_unknown_worker_is_a_violation() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    assert_eq!(d.ready(1).err().unwrap().0, "sent a second ready frame");
    assert!(d.ready(2).is_err());
}

// --- worker death ---

#[test]
fn a_dead_workers_running_call_is_answered_and_the_rest_queued_again_in_order() {
    let mut d = pool(3);
    let w1 = add_ready(&mut d, 1);
    for id in 10..14 {
        submit(&mut d, id);
    }
    assert_eq!(w1.written(), [10, 11, 12]);
    let (gone, writes) = d.worker_down(1, Exit::Died);
    assert_eq!(callers(&gone.running), [(0, 10)]);
    assert!(gone.stopped.is_empty());
    assert!(writes.is_empty());
    assert_eq!(d.gauges().queued, 3);
    assert_eq!(d.stats().worker_errors, 1);
    assert_eq!(d.stats().requeued, 2);
    assert_eq!(d.stats().restarts, 1);
    invariant(&d);
    let w2 = add_ready(&mut d, 2);
    assert_eq!(
        w2.written(),
        [11, 12, 13],
        "requeued ahead of later requests"
    );
}

#[test]
fn a_worker_that_broke_the_protocol_gives_a_transport_error() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    let (gone, _) = d.worker_down(1, Exit::BrokeProtocol);
    assert_eq!(callers(&gone.running), [(0, 10)]);
    assert_eq!(
        (d.stats().transport_errors, d.stats().worker_errors),
        (1, 0)
    );
}

#[test]
fn a_given_up_call_is_not_answered_again_when_its_worker_dies() {
    let mut d = pool(2);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    assert!(matches!(d.cancel(10), Cancel::Running { .. }));
    assert!(matches!(d.cancel(11), Cancel::Running { .. }));
    let (gone, _) = d.worker_down(1, Exit::Died);
    assert!(gone.running.is_empty());
    assert_eq!(
        d.gauges().queued,
        0,
        "a given-up request is not queued again"
    );
    assert_eq!(d.stats().timeouts, 2);
    assert_eq!(d.stats().worker_errors, 0);
    invariant(&d);
}

#[test]
fn an_idle_worker_dying_only_leaves_the_rotation() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    let w2 = add_ready(&mut d, 2);
    d.worker_down(1, Exit::Died);
    submit(&mut d, 10);
    assert_eq!(w2.written(), [10]);
    assert_eq!(d.stats().restarts, 1);
}

#[test]
fn a_worker_gone_twice_or_unknown_changes_nothing() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    d.worker_down(1, Exit::Died);
    let (gone, writes) = d.worker_down(1, Exit::Died);
    assert!(gone.running.is_empty() && writes.is_empty());
    assert_eq!(d.stats().restarts, 1);
}

#[test]
fn recycled_exits_count_as_recycles_and_exits_after_close_as_neither() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    add_ready(&mut d, 2);
    d.worker_down(1, Exit::Recycled);
    assert_eq!((d.stats().recycles, d.stats().restarts), (1, 0));
    d.close();
    d.worker_down(2, Exit::Died);
    assert_eq!((d.stats().recycles, d.stats().restarts), (1, 0));
}

#[test]
fn after_close_a_dead_workers_pipelined_calls_are_stopped_not_queued() {
    let mut d = pool(3);
    add_ready(&mut d, 1);
    for id in 10..13 {
        submit(&mut d, id);
    }
    d.close();
    let (gone, _) = d.worker_down(1, Exit::Died);
    assert_eq!(callers(&gone.running), [(0, 10)]);
    assert_eq!(gone.stopped, [(0, 11), (0, 12)]);
    assert_eq!(d.stats().stopped, 2);
    assert_eq!(d.gauges().queued, 0);
    invariant(&d);
}

// --- cancel, dequeue, dead callers ---

#[test]
fn cancelling_a_queued_request_removes_it_before_any_worker_sees_it() {
    let mut d = pool(1);
    submit(&mut d, 10);
    assert!(matches!(d.cancel(10), Cancel::Queued((0, 10))));
    let w = add_ready(&mut d, 1);
    assert!(w.written().is_empty());
    assert_eq!(d.stats().timeouts, 1);
    invariant(&d);
}

#[test]
fn cancelling_a_running_request_drops_its_later_answer() {
    let mut d = pool(1);
    let w = add_ready(&mut d, 1);
    submit(&mut d, 10);
    let Cancel::Running {
        caller,
        worker,
        worker_id,
    } = d.cancel(10)
    else {
        panic!("expected Running")
    };
    assert_eq!((caller, worker_id), ((0, 10), 1));
    assert!(Arc::ptr_eq(&worker, &w));
    assert_eq!(d.gauges().busy, 1, "the worker still runs it");
    assert_eq!(d.gauges().in_flight, 0, "nobody waits for it");
    let answered = complete(&mut d, 1, 10);
    assert_eq!(answered.caller, None, "the answer is dropped");
    assert_eq!(
        d.stats().completed,
        0,
        "a timed-out call is not also completed"
    );
    assert_eq!(d.stats().timeouts, 1);
    assert_eq!(d.gauges().idle, 1);
    invariant(&d);
}

#[test]
fn cancelling_after_the_answer_or_twice_reports_replied() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    complete(&mut d, 1, 10);
    assert!(matches!(d.cancel(10), Cancel::Replied));
    submit(&mut d, 11);
    assert!(matches!(d.cancel(11), Cancel::Running { .. }));
    assert!(matches!(d.cancel(11), Cancel::Replied));
    assert!(matches!(d.cancel(999), Cancel::Replied));
    assert_eq!(d.stats().timeouts, 1);
}

#[test]
fn a_cancelled_pipelined_request_is_still_answered_by_the_worker_and_dropped() {
    let mut d = pool(2);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    assert!(matches!(d.cancel(11), Cancel::Running { .. }));
    assert_eq!(complete(&mut d, 1, 10).caller, Some((0, 10)));
    let late = d.answer(1, 11, Outcome::Validation).unwrap();
    assert_eq!(late.caller, None);
    assert!(late.now_idle);
    assert_eq!(d.stats().validation_errors, 0);
    invariant(&d);
}

#[test]
fn dequeue_takes_only_queued_requests() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    assert!(
        matches!(d.dequeue(10), Dequeue::Started),
        "a worker runs it"
    );
    assert!(matches!(d.dequeue(11), Dequeue::Queued((0, 11))));
    assert!(matches!(d.dequeue(11), Dequeue::Started));
    assert_eq!(d.stats().queue_timeouts, 1);
    complete(&mut d, 1, 10);
    assert_eq!(d.gauges().queued, 0);
    invariant(&d);
}

#[test]
fn a_dead_callers_requests_are_given_up_wherever_they_are() {
    let mut d = pool(2);
    let w = add_ready(&mut d, 1);
    submit_from(&mut d, 7, 10); // running
    submit_from(&mut d, 8, 11); // pipelined behind it
    submit_from(&mut d, 7, 12); // queued
    submit_from(&mut d, 8, 13); // queued
    let up = d.caller_down(|c| c.0 == 7);
    assert_eq!(up.queued, [(7, 12)]);
    assert_eq!(up.running.len(), 1);
    let (caller, worker, worker_id, request_id) = &up.running[0];
    assert_eq!((*caller, *worker_id, *request_id), ((7, 10), 1, 10));
    assert!(Arc::ptr_eq(worker, &w));
    assert_eq!(d.stats().cancelled, 2);
    assert_eq!(complete(&mut d, 1, 10).caller, None);
    assert_eq!(complete(&mut d, 1, 11).caller, Some((8, 11)));
    assert_eq!(w.written(), [10, 11, 13], "12 never reached a worker");
    invariant(&d);
}

#[test]
fn a_caller_down_with_nothing_pending_changes_nothing() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    submit_from(&mut d, 1, 10);
    let up = d.caller_down(|c| c.0 == 2);
    assert!(up.queued.is_empty() && up.running.is_empty());
    assert_eq!(d.stats().cancelled, 0);
}

#[test]
fn expired_names_the_worker_only_while_it_still_has_the_request() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    d.cancel(10);
    assert!(d.expired(1, 10).is_some());
    assert!(d.expired(2, 10).is_none());
    complete(&mut d, 1, 10);
    assert!(d.expired(1, 10).is_none());
}

// --- limits ---

#[test]
fn a_full_queue_refuses_with_its_length_and_hands_the_caller_back() {
    let mut d = Dispatcher::new(config(1, 2));
    submit(&mut d, 10);
    submit(&mut d, 11);
    let Err((why, caller)) = d.submit(12, frame(12), (0, 12)) else {
        panic!("accepted")
    };
    assert_eq!((why, caller), (Refused::Full(2), (0, 12)));
    assert_eq!(d.stats().rejected, 1);
    invariant(&d);
}

#[test]
fn a_full_queue_still_accepts_when_a_worker_is_idle() {
    let mut d: D = Dispatcher::new(config(1, 1));
    let w = add(&mut d, 1);
    submit(&mut d, 10);
    d.ready(1).unwrap();
    complete(&mut d, 1, 10);
    submit(&mut d, 11);
    assert_eq!(w.written(), [10, 11]);
}

#[test]
fn invalid_requests_count_as_requests_and_validation_errors() {
    let mut d = pool(1);
    d.refuse_invalid();
    assert_eq!((d.stats().requests, d.stats().validation_errors), (1, 1));
    invariant(&d);
}

// --- recycling ---

#[test]
fn max_requests_retires_a_worker_once_and_it_takes_nothing_new() {
    let mut d: D = Dispatcher::new(Config {
        recycle: Policy::from_limits(2, 0, 0),
        ..config(1, 100)
    });
    let w1 = add_ready(&mut d, 1);
    submit(&mut d, 10);
    assert!(complete(&mut d, 1, 10).retire.is_none());
    submit(&mut d, 11);
    let (worker, reason) = complete(&mut d, 1, 11).retire.expect("retired");
    assert!(Arc::ptr_eq(&worker, &w1));
    assert_eq!(reason, Reason::MaxRequests);
    submit(&mut d, 12);
    assert_eq!(w1.written(), [10, 11]);
    assert_eq!(d.gauges().stopping, 1);
    let w2 = add_ready(&mut d, 2);
    assert_eq!(w2.written(), [12]);
}

#[test]
fn a_pipelined_worker_at_max_requests_finishes_what_it_has() {
    let mut d: D = Dispatcher::new(Config {
        recycle: Policy::from_limits(1, 0, 0),
        ..config(2, 100)
    });
    let w = add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    assert!(complete(&mut d, 1, 10).retire.is_some());
    let second = complete(&mut d, 1, 11);
    assert_eq!(second.caller, Some((0, 11)));
    assert!(second.retire.is_none(), "retired once");
    assert_eq!(w.written(), [10, 11]);
    assert_eq!(d.gauges().stopping, 1);
}

#[test]
fn retire_takes_a_worker_out_of_the_rotation_once() {
    let mut d = pool(1);
    let w1 = add_ready(&mut d, 1);
    let w2 = add_ready(&mut d, 2);
    assert!(d.retire(2).is_some());
    assert!(d.retire(2).is_none());
    assert!(d.retire(9).is_none());
    submit(&mut d, 10);
    submit(&mut d, 11);
    assert_eq!(w1.written(), [10]);
    assert!(w2.written().is_empty());
    assert_eq!(d.gauges().queued, 1);
}

#[test]
fn vitals_hold_recycling_back_while_a_worker_starts() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    add(&mut d, 2);
    let rows = d.workers(Instant::now());
    let vitals = D::vitals(&rows, |_| Some(7));
    assert_eq!(
        vitals.iter().map(|v| v.settled).collect::<Vec<_>>(),
        [true, false]
    );
    assert_eq!(vitals[0].rss_bytes, Some(7));
    let policy = Policy::from_limits(0, 1, 0);
    assert_eq!(policy.due(&vitals, 0), None);
    d.worker_down(2, Exit::Died);
    let later = Instant::now() + Duration::from_millis(5);
    let vitals = D::vitals(&d.workers(later), |_| None);
    assert_eq!(policy.due(&vitals, 0), Some((1, Reason::MaxAge)));
}

#[test]
fn a_worker_draining_its_calls_holds_recycling_back_too() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    add_ready(&mut d, 2);
    submit(&mut d, 10); // to worker 2
    d.retire(2);
    let rows = d.workers(Instant::now());
    assert_eq!(rows[1].state, State::Busy, "it still runs its call");
    let policy = Policy::from_limits(0, 0, 1);
    let vitals = D::vitals(&rows, |_| Some(1 << 30));
    assert_eq!(policy.due(&vitals, 0), None, "one worker at a time");
    complete(&mut d, 2, 10);
    d.worker_down(2, Exit::Recycled);
    let vitals = D::vitals(&d.workers(Instant::now()), |_| Some(1 << 30));
    assert_eq!(policy.due(&vitals, 0), Some((1, Reason::MaxMemory)));
}

// --- heartbeats ---

#[test]
fn heartbeats_go_to_ready_workers_and_kill_after_too_many_misses() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    add_ready(&mut d, 2);
    add(&mut d, 3); // starting: not probed
    let round = d.heartbeat(2);
    assert_eq!((round.beat.len(), round.dead.len()), (2, 0));
    d.heartbeat_seen(1);
    d.heartbeat(2);
    let round = d.heartbeat(2);
    assert_eq!(round.beat.len(), 1, "worker 1 answered in time");
    assert_eq!(
        round.dead.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [2]
    );
    d.retire(1);
    assert_eq!(
        d.heartbeat(2).beat.len(),
        0,
        "a stopping worker is not probed"
    );
}

// --- lifecycle ---

#[test]
fn register_refuses_a_duplicate_id_and_a_closed_pool() {
    let mut d = pool(1);
    add(&mut d, 1);
    let w = Arc::new(FakePipe::default());
    assert_eq!(
        d.register(1, Arc::clone(&w), Instant::now()),
        Err(Unregistrable::DuplicateId)
    );
    d.close();
    assert_eq!(d.register(2, w, Instant::now()), Err(Unregistrable::Closed));
}

#[test]
fn unregister_forgets_only_a_worker_that_never_became_ready() {
    let mut d = pool(1);
    add(&mut d, 1);
    add_ready(&mut d, 2);
    assert!(d.unregister(1));
    assert!(!d.unregister(1));
    assert!(!d.unregister(2));
    assert_eq!(d.gauges().workers, 1);
}

#[test]
fn a_start_that_fails_leaves_no_slot() {
    let d: Mutex<D> = Mutex::new(pool(1));
    let w = Arc::new(FakePipe::default());
    let r: Result<(), _> = start_registered(&d, 1, Arc::clone(&w), || {
        assert_eq!(d.lock().gauges().starting, 1, "registered while starting");
        Err("its reader thread could not start")
    });
    assert_eq!(
        r,
        Err(StartError::Failed("its reader thread could not start"))
    );
    assert_eq!(d.lock().gauges().workers, 0);
    assert_eq!(
        Arc::strong_count(&w),
        1,
        "nothing holds the worker any more"
    );
    assert!(
        d.lock().register(1, w, Instant::now()).is_ok(),
        "its id is free"
    );
}

#[test]
fn a_start_that_succeeds_keeps_the_slot_and_a_refused_one_never_starts() {
    let d: Mutex<D> = Mutex::new(pool(1));
    let w = Arc::new(FakePipe::default());
    assert_eq!(
        start_registered::<_, _, _, ()>(&d, 1, Arc::clone(&w), || Ok(5)),
        Ok(5)
    );
    assert_eq!(d.lock().gauges().starting, 1);
    let r = start_registered::<_, _, (), ()>(&d, 1, w, || panic!("must not start"));
    assert_eq!(r, Err(StartError::Refused(Unregistrable::DuplicateId)));
}

#[test]
fn close_answers_the_queue_and_stops_every_worker() {
    let mut d = pool(1);
    let w = add_ready(&mut d, 1);
    submit(&mut d, 10);
    submit(&mut d, 11);
    let (queued, workers) = d.close();
    assert_eq!(queued, [(0, 11)]);
    assert_eq!(workers.len(), 1);
    assert!(d.is_closed());
    assert_eq!(d.stats().stopped, 1);
    assert_eq!(
        complete(&mut d, 1, 10).caller,
        Some((0, 10)),
        "running calls finish"
    );
    assert!(matches!(
        d.submit(12, frame(12), (0, 12)),
        Err((Refused::Closed, (0, 12)))
    ));
    assert_eq!(w.written(), [10]);
    assert_eq!(d.stats().stopped, 2);
    invariant(&d);
}

#[test]
fn gauges_and_rows_report_each_state() {
    let mut d = pool(1);
    add(&mut d, 3);
    add_ready(&mut d, 1);
    add_ready(&mut d, 2);
    add_ready(&mut d, 4);
    submit(&mut d, 10); // to 4
    d.retire(2);
    let g = d.gauges();
    assert_eq!(
        (
            g.workers,
            g.starting,
            g.idle,
            g.busy,
            g.stopping,
            g.in_flight
        ),
        (4, 1, 1, 1, 1, 1)
    );
    let rows = d.workers(Instant::now());
    let states: Vec<_> = rows.iter().map(|r| (r.id, r.state)).collect();
    assert_eq!(
        states,
        [
            (1, State::Idle),
            (2, State::Stopping),
            (3, State::Starting),
            (4, State::Busy)
        ]
    );
    complete(&mut d, 4, 10);
    assert_eq!(d.workers(Instant::now())[3].served, 1);
}

// --- the one-answer rule, under random operations ---

/// Whether `sub` appears in `seq` in order (not necessarily adjacent).
fn is_subsequence(sub: &[u64], seq: &[u64]) -> bool {
    let mut it = seq.iter();
    sub.iter().all(|x| it.any(|y| y == x))
}

/// A small deterministic generator (xorshift64*): no dependency, repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every submitted caller leaves the dispatcher exactly once, the partition
/// invariant holds after every step, and a worker's frames are exactly the
/// requests it was given, in order.
#[test]
fn every_caller_leaves_exactly_once_whatever_happens() {
    let mut ways: HashMap<&'static str, u64> = HashMap::new();
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let depth = 1 + rng.below(3) as usize;
        let concurrency = 1 + rng.below(3) as usize;
        let mut d: D = Dispatcher::new(Config {
            concurrency,
            recycle: Policy::from_limits(rng.below(4), 0, 0),
            max_sessions: rng.below(4) as usize,
            session_ttl: Some(Duration::from_secs(1)),
            breaker: (rng.below(2) == 0).then(|| crate::breaker::Settings {
                threshold: 1 + rng.below(3) as u32,
                window: Duration::from_secs(10),
                cooldown: Duration::from_millis(rng.below(2)),
            }),
            ..config(depth, 1 + rng.below(8) as usize)
        });
        let mut workers: Vec<(u64, Arc<FakePipe>)> = Vec::new();
        let mut left: HashMap<u64, &'static str> = HashMap::new();
        let mut submitted = 0u64;
        let mut next_worker = 1u64;
        // Calls each worker was asked to give back, and those it gave back.
        let mut asked_of: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut gave_back: HashSet<u64> = HashSet::new();
        let leave = |c: Caller, how: &'static str, left: &mut HashMap<u64, &'static str>| {
            if let Some(before) = left.insert(c.1, how) {
                panic!(
                    "seed {seed}: request {} left twice ({before}, then {how})",
                    c.1
                );
            }
        };
        for step in 0..400 {
            match rng.below(11) {
                0..=2 => {
                    submitted += 1;
                    let id = submitted;
                    let process = rng.below(4) as u32;
                    let affinity = [Affinity::Strict, Affinity::Hint, Affinity::FailFast]
                        [rng.below(3) as usize];
                    let call = Call {
                        session: (rng.below(2) == 0)
                            .then(|| (vec![b'a' + rng.below(3) as u8], affinity)),
                        stream: (rng.below(3) == 0).then(|| 1 + rng.below(3) as u32),
                    };
                    if let Err((why, c)) =
                        d.submit_call(id, frame(id), (process, id), call, Instant::now())
                    {
                        let how = match why {
                            Refused::Session(Refusal::Lost) => "session lost",
                            _ => "refused",
                        };
                        leave(c, how, &mut left);
                    }
                }
                3 if workers.len() < 4 => {
                    let id = next_worker;
                    next_worker += 1;
                    let w = Arc::new(FakePipe::default());
                    d.register(id, Arc::clone(&w), Instant::now()).ok();
                    if rng.below(4) > 0 {
                        d.ready(id).ok();
                    }
                    workers.push((id, w));
                }
                4..=6 if !workers.is_empty() => {
                    let (id, _) = workers[rng.below(workers.len() as u64) as usize];
                    let running = d
                        .workers(Instant::now())
                        .into_iter()
                        .find(|r| r.id == id && r.in_flight > 0)
                        .map(|_| ());
                    if running.is_some() {
                        // Any of its running calls may end first.
                        let slot = &d.slots[&id];
                        let pos = rng.below(slot.in_flight.len().min(concurrency) as u64) as usize;
                        let front = slot.in_flight[pos].id;
                        let outcome = [
                            Outcome::Completed,
                            Outcome::PythonError,
                            Outcome::Validation,
                        ][rng.below(3) as usize];
                        let req = &d.slots[&id].in_flight[pos];
                        let terminal = match (req.stream.is_some(), outcome) {
                            (true, Outcome::Completed) => Terminal::Done,
                            (false, Outcome::Completed) => Terminal::Result,
                            _ => Terminal::Error,
                        };
                        if let (Some(credits), 0) = (req.stream, rng.below(2)) {
                            // A chunk instead, if it has a credit.
                            let sent = d.chunk(id, front);
                            assert_eq!(sent.is_ok(), credits.left > 0, "seed {seed}");
                            continue;
                        }
                        let a = d
                            .finish(id, front, outcome, terminal, Instant::now())
                            .unwrap();
                        if let Some(c) = a.caller {
                            leave(c, "answered", &mut left);
                        }
                    }
                }
                7 if !workers.is_empty() => {
                    let i = rng.below(workers.len() as u64) as usize;
                    let (id, _) = workers.remove(i);
                    let exit =
                        [Exit::Died, Exit::BrokeProtocol, Exit::Recycled][rng.below(3) as usize];
                    let (gone, _) = d.worker_down(id, exit);
                    gone.running
                        .into_iter()
                        .for_each(|(c, _)| leave(c, "worker down", &mut left));
                    gone.stopped
                        .into_iter()
                        .for_each(|c| leave(c, "stopped", &mut left));
                    gone.lost
                        .into_iter()
                        .for_each(|(c, _)| leave(c, "session lost", &mut left));
                }
                8 if submitted > 0 && rng.below(3) == 0 => {
                    let key = [b'a' + rng.below(3) as u8];
                    match rng.below(3) {
                        0 => {
                            d.end_session(&key, &frame(u64::MAX).bytes);
                        }
                        1 => {
                            let later = Instant::now() + Duration::from_secs(rng.below(3));
                            d.expire_sessions(later, |_| frame(u64::MAX).bytes);
                        }
                        _ => {
                            d.ack(1 + rng.below(submitted), 1 + rng.below(2) as u32);
                        }
                    }
                }
                8 if submitted > 0 => {
                    let id = 1 + rng.below(submitted);
                    match d.cancel(id) {
                        Cancel::Queued(c) => leave(c, "cancel queued", &mut left),
                        Cancel::Running { caller, .. } => {
                            leave(caller, "cancel running", &mut left)
                        }
                        Cancel::Replied => assert!(
                            left.contains_key(&id) || matches!(d.dequeue(id), Dequeue::Started),
                            "seed {seed}: cancel said replied for a pending request"
                        ),
                    }
                }
                9 if submitted > 0 && rng.below(2) == 0 => {
                    let id = 1 + rng.below(submitted);
                    match d.dequeue(id) {
                        Dequeue::Queued(c) => leave(c, "dequeued", &mut left),
                        Dequeue::Pipelined(Some((w, _))) => {
                            let (wid, _) = workers
                                .iter()
                                .find(|(_, p)| Arc::ptr_eq(p, &w))
                                .expect("a known worker");
                            asked_of.entry(*wid).or_default().push(id);
                        }
                        Dequeue::Pipelined(None) | Dequeue::Started => {}
                    }
                }
                9 => {
                    // Reclaim: ask, or have a worker give back an asked call
                    // it has not started (a pipelined one, or the front one
                    // if the call ahead of it just ended).
                    if rng.below(2) == 0 {
                        let after = Duration::from_millis(rng.below(2));
                        for (w, ids) in d.reclaim_due(after, Instant::now()) {
                            let (id, _) = workers
                                .iter()
                                .find(|(_, p)| Arc::ptr_eq(p, &w))
                                .expect("a known worker");
                            asked_of
                                .entry(*id)
                                .or_default()
                                .extend(ids.iter().map(|&(call, _)| call));
                        }
                    } else if !workers.is_empty() {
                        let (id, _) = workers[rng.below(workers.len() as u64) as usize];
                        let pending = d
                            .slots
                            .get(&id)
                            .map(|s| s.in_flight.iter().map(|r| r.id).collect::<Vec<u64>>());
                        let asked = asked_of.entry(id).or_default();
                        if let (Some(pending), false) = (pending, asked.is_empty()) {
                            let req = asked.remove(rng.below(asked.len() as u64) as usize);
                            match pending.iter().position(|&r| r == req) {
                                // Answered already: the host refuses it.
                                None => assert!(d.reclaimed(id, req).is_err(), "seed {seed}"),
                                // The worker started it: it answers instead.
                                Some(p) if p < concurrency && rng.below(2) == 0 => {}
                                Some(_) => {
                                    let given = d.reclaimed(id, req).unwrap_or_else(|v| {
                                        panic!("seed {seed}: {req} of {pending:?}: {v:?}")
                                    });
                                    if let Some(c) = given.dequeued {
                                        leave(c, "dequeued", &mut left);
                                    }
                                    gave_back.insert(id);
                                }
                            }
                        }
                    }
                }
                10 => {
                    let process = rng.below(4) as u32;
                    let up = d.caller_down(|c| c.0 == process);
                    up.queued
                        .into_iter()
                        .for_each(|c| leave(c, "caller down", &mut left));
                    for (c, ..) in up.running {
                        leave(c, "caller down", &mut left);
                    }
                }
                _ => {
                    if step == 350 && rng.below(2) == 0 {
                        let (queued, _) = d.close();
                        queued
                            .into_iter()
                            .for_each(|c| leave(c, "closed", &mut left));
                    }
                }
            }
            invariant(&d);
            for (id, w) in &workers {
                if let Some(slot) = d.slots.get(id) {
                    let written: Vec<u64> =
                        w.written().into_iter().filter(|&f| f != u64::MAX).collect();
                    let pending: Vec<u64> = slot.in_flight.iter().map(|r| r.id).collect();
                    // A worker that gave calls back skips them in its pipe;
                    // one that runs several answers them in any order.
                    let fits = if gave_back.contains(id) || concurrency > 1 {
                        is_subsequence(&pending, &written)
                    } else {
                        written.ends_with(&pending)
                    };
                    assert!(
                        fits,
                        "seed {seed}: worker {id} was written {written:?}, has {pending:?}"
                    );
                }
            }
        }
        // Wind down: stop the pool and let every worker die.
        let (queued, _) = d.close();
        queued
            .into_iter()
            .for_each(|c| leave(c, "closed", &mut left));
        for (id, _) in workers.drain(..) {
            let (gone, _) = d.worker_down(id, Exit::Died);
            assert!(gone.lost.is_empty(), "a closed pool stops, never loses");
            gone.running
                .into_iter()
                .for_each(|(c, _)| leave(c, "worker down", &mut left));
            gone.stopped
                .into_iter()
                .for_each(|c| leave(c, "stopped", &mut left));
        }
        assert_eq!(d.gauges().queued + d.gauges().in_flight, 0, "seed {seed}");
        assert_eq!(
            left.len() as u64,
            submitted,
            "seed {seed}: a caller never left"
        );
        assert_eq!(d.stats().requests, d.stats().settled(), "seed {seed}");
        for how in left.values() {
            *ways.entry(how).or_default() += 1;
        }
        *ways.entry("(gave back)").or_default() += gave_back.len() as u64;
    }
    assert!(
        ways.remove("(gave back)").unwrap_or(0) > 0,
        "calls were given back"
    );
    let mut seen: Vec<_> = ways.keys().copied().collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "answered",
            "caller down",
            "cancel queued",
            "cancel running",
            "closed",
            "dequeued",
            "refused",
            "session lost",
            "stopped",
            "worker down"
        ],
        "every way out was exercised: {ways:?}"
    );
}
