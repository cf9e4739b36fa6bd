//! Sessions and streams: routing by affinity, loss, ending and expiry,
//! recycling around sessions, and stream credits.

use super::tests::{
    add_ready, callers, complete, config, frame, invariant, pool, submit, Caller, D,
};
use super::*;
use crate::sessions::{Affinity, Refusal};

/// An 8-byte `session_end` frame, told apart from requests (small ids).
const END: u64 = u64::MAX;

fn in_session(
    d: &mut D,
    id: u64,
    session: &str,
    affinity: Affinity,
) -> Result<Writes<tests::FakePipe>, Refused> {
    let call = Call {
        session: Some((session.as_bytes().to_vec(), affinity)),
        stream: None,
    };
    d.submit_call(id, frame(id), (0, id), call, Instant::now())
        .map(|s| s.writes)
        .map_err(|(why, _)| why)
}

fn strict(d: &mut D, id: u64, session: &str) {
    in_session(d, id, session, Affinity::Strict).expect("accepted");
}

fn stream(d: &mut D, id: u64, window: u32) {
    let call = Call {
        session: None,
        stream: Some(window),
    };
    d.submit_call(id, frame(id), (0, id), call, Instant::now())
        .unwrap_or_else(|_| panic!("refused"));
}

fn bound(d: &D, session: &str) -> Option<u64> {
    d.session(session.as_bytes(), Instant::now())
        .and_then(|r| r.worker)
}

fn finish(d: &mut D, worker: u64, request: u64, terminal: Terminal) -> Result<Caller, Violation> {
    d.finish(
        worker,
        request,
        Outcome::Completed,
        terminal,
        Instant::now(),
    )
    .map(|a| a.caller.expect("caller waits"))
}

#[test]
fn a_strict_session_waits_for_its_worker_even_when_another_is_idle() {
    let mut d = pool(1);
    let w1 = add_ready(&mut d, 1);
    let w2 = add_ready(&mut d, 2);
    strict(&mut d, 10, "s");
    let first = bound(&d, "s").unwrap();
    let (mine, other) = if first == 1 { (&w1, &w2) } else { (&w2, &w1) };
    strict(&mut d, 11, "s");
    strict(&mut d, 12, "s");
    submit(&mut d, 13);
    assert_eq!(mine.written(), [10]);
    assert_eq!(
        other.written(),
        [13],
        "a call of no session takes the idle one"
    );
    assert_eq!(d.gauges().queued, 2);
    invariant(&d);
    complete(&mut d, first, 10);
    complete(&mut d, first, 11);
    assert_eq!(mine.written(), [10, 11, 12], "in submission order");
    invariant(&d);
}

#[test]
fn strict_calls_are_pipelined_behind_their_workers_calls_in_order() {
    let mut d = pool(2);
    add_ready(&mut d, 1);
    add_ready(&mut d, 2);
    strict(&mut d, 10, "s");
    let first = bound(&d, "s").unwrap();
    strict(&mut d, 11, "s");
    strict(&mut d, 12, "s");
    let written = d.slots[&first].worker.written();
    assert_eq!(written, [10, 11], "depth 2: the second waits in the pipe");
    assert_eq!(d.gauges().queued, 1);
    invariant(&d);
}

#[test]
fn a_hint_call_takes_another_idle_worker_when_its_own_is_busy() {
    let mut d = pool(1);
    let w1 = add_ready(&mut d, 1);
    let w2 = add_ready(&mut d, 2);
    in_session(&mut d, 10, "s", Affinity::Hint).unwrap();
    let first = bound(&d, "s").unwrap();
    in_session(&mut d, 11, "s", Affinity::Hint).unwrap();
    assert_eq!(w1.written().len() + w2.written().len(), 2, "both run now");
    assert_eq!(bound(&d, "s"), Some(first), "the binding stays");
    invariant(&d);
    // Both workers hold state: ending the session tells both.
    let ended = d.end_session(b"s", &frame(END).bytes).unwrap();
    assert_eq!(ended.writes.len(), 2);
    assert!(w1.written().ends_with(&[END]) && w2.written().ends_with(&[END]));
    invariant(&d);
}

#[test]
fn a_hint_call_prefers_its_idle_worker() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    add_ready(&mut d, 2);
    in_session(&mut d, 10, "s", Affinity::Hint).unwrap();
    let first = bound(&d, "s").unwrap();
    let other = 3 - first;
    complete(&mut d, first, 10);
    submit(&mut d, 11);
    submit(&mut d, 12);
    complete(&mut d, first, 11);
    complete(&mut d, other, 12);
    assert_eq!(
        d.idle.back(),
        Some(&other),
        "the other is most recently idle"
    );
    in_session(&mut d, 13, "s", Affinity::Hint).unwrap();
    assert_eq!(d.slots[&first].in_flight.front().unwrap().id, 13);
    invariant(&d);
}

#[test]
fn a_fail_fast_call_is_refused_while_its_worker_is_busy() {
    let mut d = pool(2);
    add_ready(&mut d, 1);
    add_ready(&mut d, 2);
    in_session(&mut d, 10, "s", Affinity::FailFast).unwrap();
    let first = bound(&d, "s").unwrap();
    assert_eq!(
        in_session(&mut d, 11, "s", Affinity::FailFast).err(),
        Some(Refused::Session(Refusal::Busy))
    );
    assert_eq!(d.stats().rejected, 1);
    complete(&mut d, first, 10);
    in_session(&mut d, 12, "s", Affinity::FailFast).unwrap();
    assert_eq!(d.slots[&first].in_flight.front().unwrap().id, 12);
    invariant(&d);
}

#[test]
fn new_sessions_past_max_sessions_are_refused_and_known_ones_go_on() {
    let mut d: D = Dispatcher::new(Config {
        max_sessions: 2,
        ..config(1, 100)
    });
    add_ready(&mut d, 1);
    strict(&mut d, 10, "a");
    strict(&mut d, 11, "b");
    assert_eq!(
        in_session(&mut d, 12, "c", Affinity::Strict).err(),
        Some(Refused::Session(Refusal::TooMany(2)))
    );
    strict(&mut d, 13, "a");
    assert_eq!(d.gauges().sessions, 2);
    complete(&mut d, 1, 10);
    complete(&mut d, 1, 11);
    d.end_session(b"b", &frame(END).bytes);
    complete(&mut d, 1, 13);
    strict(&mut d, 14, "c");
    invariant(&d);
}

#[test]
fn a_dead_workers_sessions_are_lost_and_their_waiting_calls_told() {
    let mut d = pool(2);
    add_ready(&mut d, 1);
    add_ready(&mut d, 2);
    strict(&mut d, 10, "s");
    let first = bound(&d, "s").unwrap();
    strict(&mut d, 11, "s"); // in its pipe
    strict(&mut d, 12, "s"); // queued
    in_session(&mut d, 13, "s", Affinity::Hint).unwrap(); // to the other
    submit(&mut d, 14);
    invariant(&d);
    let (gone, _) = d.worker_down(first, Exit::Died);
    assert_eq!(callers(&gone.running), [(0, 10)]);
    assert_eq!(gone.running[0].1.as_deref(), Some(&b"s"[..]));
    let lost: Vec<Caller> = gone.lost.into_iter().map(|(c, _)| c).collect();
    assert_eq!(lost, [(0, 11), (0, 12)], "in submission order");
    assert_eq!(d.stats().sessions_lost, 1);
    invariant(&d);
    // The loss was told: the next call starts the session afresh.
    strict(&mut d, 15, "s");
    let other = 3 - first;
    complete(&mut d, other, 13);
    assert_eq!(bound(&d, "s"), Some(other));
    let row = d.session(b"s", Instant::now()).unwrap();
    assert_eq!(row.calls, 1, "counted from the fresh start");
    invariant(&d);
}

#[test]
fn a_lost_session_with_nothing_waiting_fails_its_next_strict_call_once() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    add_ready(&mut d, 2);
    strict(&mut d, 10, "s");
    let first = bound(&d, "s").unwrap();
    complete(&mut d, first, 10);
    let (gone, _) = d.worker_down(first, Exit::Recycled);
    assert!(gone.running.is_empty() && gone.lost.is_empty());
    assert!(d.session(b"s", Instant::now()).unwrap().lost);
    assert_eq!(
        in_session(&mut d, 11, "s", Affinity::Strict).err(),
        Some(Refused::Session(Refusal::Lost))
    );
    assert_eq!(d.stats().worker_errors, 1);
    strict(&mut d, 12, "s");
    assert_eq!(bound(&d, "s"), Some(3 - first));
    invariant(&d);
}

#[test]
fn a_hint_call_starts_a_lost_session_afresh_without_an_error() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    add_ready(&mut d, 2);
    strict(&mut d, 10, "s");
    let first = bound(&d, "s").unwrap();
    complete(&mut d, first, 10);
    d.worker_down(first, Exit::Died);
    in_session(&mut d, 11, "s", Affinity::Hint).unwrap();
    assert_eq!(bound(&d, "s"), Some(3 - first));
    let row = d.session(b"s", Instant::now()).unwrap();
    assert!(!row.lost);
    assert_eq!(row.calls, 1, "counted from the fresh start");
    invariant(&d);
}

#[test]
fn idle_sessions_expire_after_the_ttl_but_not_while_they_have_calls() {
    let mut d: D = Dispatcher::new(Config {
        session_ttl: Some(Duration::from_secs(60)),
        ..config(1, 100)
    });
    let w = add_ready(&mut d, 1);
    strict(&mut d, 10, "busy");
    strict(&mut d, 11, "idle");
    let later = Instant::now() + Duration::from_secs(61);
    let ended = d.expire_sessions(later, |_| frame(END).bytes);
    assert!(ended.ended.is_empty(), "both have a call live");
    complete(&mut d, 1, 10);
    complete(&mut d, 1, 11);
    strict(&mut d, 12, "busy");
    let ended = d.expire_sessions(later, |_| frame(END).bytes);
    assert_eq!(ended.ended, [b"idle".to_vec().into_boxed_slice()]);
    assert_eq!(w.written(), [10, 11, 12, END]);
    assert!(d.session(b"idle", later).is_none());
    assert!(d.session(b"busy", later).is_some());
    assert_eq!(d.stats().sessions_expired, 1);
    invariant(&d);
}

#[test]
fn ending_a_session_with_queued_calls_starts_it_afresh_for_them() {
    let mut d = pool(1);
    let w = add_ready(&mut d, 1);
    strict(&mut d, 10, "s");
    strict(&mut d, 11, "s");
    d.end_session(b"s", &frame(END).bytes).unwrap();
    assert_eq!(w.written(), [10, END], "the end follows the calls written");
    assert_eq!(bound(&d, "s"), None);
    complete(&mut d, 1, 10);
    assert_eq!(w.written(), [10, END, 11]);
    assert_eq!(bound(&d, "s"), Some(1), "bound afresh");
    assert!(d.end_session(b"nope", &frame(END).bytes).is_none());
    invariant(&d);
}

#[test]
fn max_requests_waits_for_a_workers_sessions_up_to_twice_the_limit() {
    let mut d: D = Dispatcher::new(Config {
        recycle: Policy::from_limits(2, 0, 0),
        ..config(1, 100)
    });
    add_ready(&mut d, 1);
    strict(&mut d, 10, "s");
    assert!(complete(&mut d, 1, 10).retire.is_none());
    strict(&mut d, 11, "s");
    assert!(
        complete(&mut d, 1, 11).retire.is_none(),
        "kept for its session"
    );
    assert!(d.slots[&1].overdue);
    strict(&mut d, 12, "s");
    assert!(complete(&mut d, 1, 12).retire.is_none());
    strict(&mut d, 13, "s");
    let a = complete(&mut d, 1, 13);
    assert_eq!(a.retire.map(|(_, r)| r), Some(Reason::MaxRequests));
    invariant(&d);
}

#[test]
fn a_worker_kept_for_its_sessions_is_retired_when_the_last_one_ends() {
    let mut d: D = Dispatcher::new(Config {
        recycle: Policy::from_limits(1, 0, 0),
        ..config(1, 100)
    });
    add_ready(&mut d, 1);
    strict(&mut d, 10, "s");
    assert!(complete(&mut d, 1, 10).retire.is_none());
    let ended = d.end_session(b"s", &frame(END).bytes).unwrap();
    assert_eq!(ended.retire.len(), 1);
    assert_eq!(d.workers(Instant::now())[0].state, State::Stopping);
    invariant(&d);
}

#[test]
fn a_new_session_avoids_a_worker_kept_only_for_its_sessions() {
    let mut d: D = Dispatcher::new(Config {
        recycle: Policy::from_limits(1, 0, 0),
        ..config(1, 100)
    });
    add_ready(&mut d, 1);
    strict(&mut d, 10, "old");
    complete(&mut d, 1, 10);
    add_ready(&mut d, 2);
    strict(&mut d, 11, "old");
    complete(&mut d, 1, 11);
    // Worker 1 is overdue and most recently idle; a new session goes to 2.
    strict(&mut d, 12, "new");
    assert_eq!(bound(&d, "new"), Some(2));
    invariant(&d);
}

#[test]
fn a_queued_call_that_can_run_now_is_taken_even_when_the_queue_is_full() {
    let mut d: D = Dispatcher::new(config(1, 1));
    add_ready(&mut d, 1);
    add_ready(&mut d, 2);
    strict(&mut d, 10, "s");
    let first = bound(&d, "s").unwrap();
    strict(&mut d, 11, "s"); // queued: the queue is full
    assert_eq!(d.gauges().queued, 1);
    submit(&mut d, 12); // the other worker is idle: taken
    assert!(matches!(
        in_session(&mut d, 13, "s", Affinity::Strict),
        Err(Refused::Full(1))
    ));
    complete(&mut d, first, 10);
    invariant(&d);
}

// --- streams ---

#[test]
fn a_stream_sends_chunks_up_to_its_credits_and_acks_give_more() {
    let mut d = pool(1);
    let w = add_ready(&mut d, 1);
    stream(&mut d, 10, 2);
    assert_eq!(w.written(), [10]);
    assert_eq!(d.chunk(1, 10).unwrap(), Some(&(0, 10)));
    assert!(d.chunk(1, 10).unwrap().is_some());
    let over = d.chunk(1, 10).err().unwrap();
    assert!(over.0.contains("beyond its 2 credits"), "{}", over.0);
    assert!(d.ack(10, 1).is_some());
    assert!(d.chunk(1, 10).is_ok());
    assert!(d.ack(10, 5).is_some());
    d.chunk(1, 10).unwrap();
    d.chunk(1, 10).unwrap();
    assert!(d.chunk(1, 10).is_err(), "credits never exceed the window");
    assert_eq!(d.stats().chunks, 5);
    assert_eq!(finish(&mut d, 1, 10, Terminal::Done), Ok((0, 10)));
    assert!(d.ack(10, 1).is_none(), "nothing to ack once it ended");
    invariant(&d);
}

#[test]
fn answers_must_fit_the_kind_of_call() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    stream(&mut d, 10, 4);
    let e = finish(&mut d, 1, 10, Terminal::Result).unwrap_err();
    assert!(e.0.contains("result to streaming call 10"), "{}", e.0);
    assert_eq!(finish(&mut d, 1, 10, Terminal::Error), Ok((0, 10)));
    submit(&mut d, 11);
    let e = d.chunk(1, 11).unwrap_err();
    assert!(e.0.contains("not a stream"), "{}", e.0);
    let e = finish(&mut d, 1, 11, Terminal::Done).unwrap_err();
    assert!(e.0.contains("not a stream"), "{}", e.0);
    assert!(
        d.chunk(1, 99).is_err(),
        "a chunk of a call it is not running"
    );
    invariant(&d);
}

#[test]
fn chunks_of_a_stream_whose_caller_gave_up_are_dropped() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    stream(&mut d, 10, 1);
    assert!(matches!(d.cancel(10), Cancel::Running { .. }));
    assert_eq!(d.chunk(1, 10).unwrap(), None);
    assert_eq!(d.stats().chunks, 0);
    let a = d
        .finish(1, 10, Outcome::Completed, Terminal::Done, Instant::now())
        .unwrap();
    assert!(a.caller.is_none());
    invariant(&d);
}

#[test]
fn a_stream_queued_again_after_its_worker_died_starts_with_full_credits() {
    let mut d = pool(2);
    add_ready(&mut d, 1);
    submit(&mut d, 10);
    stream(&mut d, 11, 1);
    let (gone, _) = d.worker_down(1, Exit::Died);
    assert_eq!(callers(&gone.running), [(0, 10)]);
    add_ready(&mut d, 2);
    d.chunk(2, 11).unwrap();
    assert!(d.chunk(2, 11).is_err());
    invariant(&d);
}

#[test]
fn new_sessions_spread_over_idle_workers_by_their_session_count() {
    let mut d = pool(1);
    add_ready(&mut d, 1);
    add_ready(&mut d, 2);
    add_ready(&mut d, 3);
    for (i, s) in ["a", "b", "c"].iter().enumerate() {
        strict(&mut d, 10 + i as u64, s);
        let w = bound(&d, s).unwrap();
        complete(&mut d, w, 10 + i as u64);
    }
    let mut workers: Vec<u64> = ["a", "b", "c"]
        .iter()
        .map(|s| bound(&d, s).unwrap())
        .collect();
    workers.sort();
    assert_eq!(workers, [1, 2, 3], "one session per worker");
    invariant(&d);
}
