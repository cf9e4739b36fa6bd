//! Workers with `concurrency` > 1: several running calls, answered in any
//! order, failed together, reclaimed behind, and sessions kept in order.

use super::tests::{add_ready, callers, complete, config, frame, invariant, submit, Caller, D};
use super::*;
use crate::sessions::Affinity;

fn pool(concurrency: usize, depth: usize) -> D {
    Dispatcher::new(Config {
        concurrency,
        ..config(depth, 1_000)
    })
}

fn submit_session(d: &mut D, id: u64, key: &[u8], affinity: Affinity) {
    let call = Call {
        session: Some((key.to_vec(), affinity)),
        stream: None,
    };
    let caller: Caller = (0, id);
    if d.submit_call(id, frame(id), caller, call, Instant::now())
        .is_err()
    {
        panic!("refused");
    }
}

#[test]
fn a_worker_takes_as_many_calls_as_its_slots_and_answers_them_in_any_order() {
    let mut d = pool(3, 1);
    let w = add_ready(&mut d, 1);
    for id in 1..=4 {
        submit(&mut d, id);
    }
    assert_eq!(w.written(), [1, 2, 3]);
    assert_eq!(d.gauges().queued, 1);
    // The last one written ends first; the queued call takes its slot.
    assert_eq!(complete(&mut d, 1, 3).caller, Some((0, 3)));
    assert_eq!(w.written(), [1, 2, 3, 4]);
    assert_eq!(complete(&mut d, 1, 4).caller, Some((0, 4)));
    assert_eq!(complete(&mut d, 1, 1).caller, Some((0, 1)));
    assert!(complete(&mut d, 1, 2).now_idle);
    invariant(&d);
}

#[test]
fn an_answer_from_behind_the_running_calls_breaks_the_protocol() {
    let mut d = pool(2, 2);
    let w = add_ready(&mut d, 1);
    for id in 1..=3 {
        submit(&mut d, id);
    }
    // Capacity 2 + 2 - 1: call 3 waits in the pipe behind two running ones.
    assert_eq!(w.written(), [1, 2, 3]);
    assert!(d.answer(1, 3, Outcome::Completed).is_err());
    complete(&mut d, 1, 2);
    // Now it holds a slot.
    assert_eq!(complete(&mut d, 1, 3).caller, Some((0, 3)));
}

#[test]
fn a_dead_worker_fails_every_running_call_and_queues_those_behind() {
    let mut d = pool(2, 2);
    add_ready(&mut d, 1);
    for id in 1..=3 {
        submit(&mut d, id);
    }
    let (gone, _) = d.worker_down(1, Exit::Died);
    assert_eq!(callers(&gone.running), [(0, 1), (0, 2)]);
    assert_eq!(d.gauges().queued, 1);
    let w = add_ready(&mut d, 2);
    assert_eq!(w.written(), [3]);
    invariant(&d);
}

#[test]
fn calls_spread_over_idle_workers_before_sharing_one() {
    let mut d = pool(4, 1);
    let a = add_ready(&mut d, 1);
    let b = add_ready(&mut d, 2);
    for id in 1..=4 {
        submit(&mut d, id);
    }
    assert_eq!(a.written().len() + b.written().len(), 4);
    assert_eq!(a.written().len(), 2, "the roomiest takes the next call");
}

#[test]
fn a_sessions_calls_go_to_its_worker_one_at_a_time() {
    let mut d = pool(4, 1);
    let w = add_ready(&mut d, 1);
    submit_session(&mut d, 1, b"s", Affinity::Strict);
    submit_session(&mut d, 2, b"s", Affinity::Strict);
    submit(&mut d, 3);
    // Call 2 waits for call 1; the plain call 3 does not wait for it.
    assert_eq!(w.written(), [1, 3]);
    complete(&mut d, 1, 1);
    assert_eq!(w.written(), [1, 3, 2]);
    invariant(&d);
}

#[test]
fn an_adapter_may_let_a_sessions_calls_run_at_once() {
    let mut d = pool(4, 1);
    let w = Arc::new(super::tests::FakePipe::default());
    d.register(1, Arc::clone(&w), Instant::now()).unwrap();
    d.allow_concurrent_sessions(1);
    d.ready(1).unwrap();
    submit_session(&mut d, 1, b"s", Affinity::Strict);
    submit_session(&mut d, 2, b"s", Affinity::Strict);
    assert_eq!(w.written(), [1, 2]);
}

#[test]
fn a_worker_stalls_only_when_every_slot_ran_too_long() {
    let mut d = pool(2, 2);
    let w = add_ready(&mut d, 1);
    for id in 1..=3 {
        submit(&mut d, id);
    }
    assert_eq!(w.written(), [1, 2, 3]);
    let _other = add_ready(&mut d, 2);
    let later = Instant::now() + Duration::from_secs(1);
    // Both running calls (1, 2) ran past it: call 3 is asked back.
    let asks = d.reclaim_due(Duration::from_millis(500), later);
    assert_eq!(asks.len(), 1);
    assert_eq!(asks[0].1.iter().map(|&(id, _)| id).collect::<Vec<_>>(), [3]);
    assert!(d.slots[&1].stalled);
    // One ends: the worker has a free slot and is no longer stalled.
    complete(&mut d, 1, 2);
    assert!(!d.slots[&1].stalled);
    invariant(&d);
}

#[test]
fn one_long_call_does_not_stall_a_worker_with_a_free_slot() {
    let mut d = pool(2, 2);
    add_ready(&mut d, 1);
    submit(&mut d, 1);
    let _other = add_ready(&mut d, 2);
    let later = Instant::now() + Duration::from_secs(1);
    assert!(d.reclaim_due(Duration::from_millis(500), later).is_empty());
    assert!(!d.slots[&1].stalled);
}
