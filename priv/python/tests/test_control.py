"""Heartbeats and cancels on the control pipe, while calls run."""

from __future__ import annotations

import threading
from typing import Optional

from snakepit_bridge.control import Cancellation, Credits


class WatchedCondition(threading.Condition):
    """A Condition that tells when a thread starts waiting on it. A notify
    made after ``waiting`` is set reaches that thread: ``wait`` holds the
    lock until it has queued the thread as a waiter."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: Optional[float] = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def test_heartbeat_is_answered_while_a_call_runs(controlled):
    controlled.send("call", 1, {"tool": "until_cancelled", "args": {}})
    kind, _, body = controlled.recv()  # the call has started
    assert kind == "log" and body["message"] == "until_cancelled started"
    controlled.send_control("heartbeat", 0)
    assert controlled.recv() == ("heartbeat", 0, None)
    controlled.send_control("cancel", 1)
    kind, request_id, body = controlled.recv()
    assert (kind, request_id, body["kind"]) == ("error", 1, "cancelled")


def test_cancel_reaches_the_running_tool(controlled):
    controlled.send("call", 1, {"tool": "until_cancelled", "args": {}})
    kind, _, body = controlled.recv()  # the tool logs when it starts
    assert kind == "log" and body["message"] == "until_cancelled started"
    controlled.send_control("cancel", 1)
    # CallCancelled is raised in the tool's loop before it sees cancelled().
    kind, request_id, body = controlled.recv()
    assert (kind, request_id, body["kind"]) == ("error", 1, "cancelled")
    # The next call starts uncancelled.
    controlled.send("call", 2, {"tool": "until_cancelled", "args": {"timeout_ms": 50}})
    assert controlled.recv_skipping_logs() == ("result", 2, "never cancelled")


def test_a_call_cancelled_before_it_starts_is_skipped(controlled):
    controlled.send("call", 1, {"tool": "sleep", "args": {"ms": 200}})
    controlled.send("call", 2, {"tool": "count", "args": {}})
    controlled.send_control("cancel", 2)
    assert controlled.recv() == ("result", 1, 200)
    kind, request_id, body = controlled.recv()
    assert (kind, request_id, body["kind"]) == ("error", 2, "cancelled")
    assert controlled.call(3, "count") == ("result", 3, 1)  # 2 never ran


def test_cancellation_state():
    c = Cancellation()
    c.cancel(5)  # not running yet: remembered
    assert c.begin(5) == "cancelled"
    assert c.begin(6) is None and not c.is_set()
    c.cancel(7)
    assert not c.is_set()
    c.cancel(6)
    assert c.is_set()
    c.end()
    assert c.begin(8) is None and not c.is_set()


def test_reclaim_takes_back_only_calls_not_begun():
    c = Cancellation()
    told: list = []
    assert c.begin(1) is None
    assert not c.reclaim(1, lambda: told.append(1)), "running"
    c.end()
    assert not c.reclaim(1, lambda: told.append(1)), "answered"
    assert c.reclaim(2, lambda: told.append(2))
    assert not c.reclaim(2, lambda: told.append(2)), "asked twice while its copy waits: the second is refused"
    assert told == [2], "the host is told once, of the call given back"
    assert c.begin(2) == "reclaimed"
    # A later copy of the same call (queued to this worker again) runs.
    assert c.begin(2) is None


def test_a_reclaimed_call_is_not_skipped_before_the_host_is_told():
    # The main thread must not skip the call (and answer the next) while
    # the control thread has yet to write `reclaimed`: the host would read
    # the next call's answer first and take it for a protocol violation.
    c = Cancellation()
    events: list = []

    def skip() -> None:
        events.append(("begin", c.begin(2)))

    def tell() -> None:
        skipper.start()
        skipper.join(0.05)
        events.append(("told", skipper.is_alive()))

    skipper = threading.Thread(target=skip)
    assert c.reclaim(2, tell)
    skipper.join()
    assert events == [("told", True), ("begin", "reclaimed")]


def test_a_call_reclaimed_before_it_starts_is_given_back_and_skipped(controlled):
    controlled.send("call", 1, {"tool": "until_cancelled", "args": {}})
    kind, _, body = controlled.recv()
    assert kind == "log" and body["message"] == "until_cancelled started"
    controlled.send("call", 2, {"tool": "count", "args": {}})
    controlled.send_control("reclaim", 2)
    controlled.send_control("reclaim", 1)  # running: ignored
    assert controlled.recv() == ("reclaimed", 2, None)
    controlled.send_control("cancel", 1)
    kind, request_id, body = controlled.recv()
    assert (kind, request_id, body["kind"]) == ("error", 1, "cancelled")
    # 2 was skipped without an answer and never ran.
    assert controlled.call(3, "count") == ("result", 3, 1)


def test_credits_count_acks_of_the_running_stream_and_give_way_to_a_cancel():
    cancellation = Cancellation()
    credits = Credits(cancellation)
    cond = credits._cond = WatchedCondition()  # to know when take() waits
    cancellation.begin(1)
    credits.ack(1, 5)  # before begin: not this stream's yet
    credits.begin(1, 1)
    credits.ack(2, 5)  # another request
    assert credits.take() and credits.left() == 0
    credits.ack(1, 2)  # before take waits: kept
    assert credits.take() and credits.take()

    took = []
    waiter = threading.Thread(target=lambda: took.append(credits.take()))
    waiter.start()
    assert cond.waiting.wait(5), "take() with no credit left did not wait"
    credits.ack(1, 1)
    waiter.join(5)
    assert took == [True]

    cond.waiting.clear()
    waiter = threading.Thread(target=lambda: took.append(credits.take()))
    waiter.start()
    assert cond.waiting.wait(5)  # the cancel comes while it waits
    cancellation.cancel(1)
    credits.wake()
    waiter.join(5)
    assert took == [True, False]
    credits.ack(1, 1)
    assert not credits.take()  # cancelled: no credit is spent any more
    credits.end()
    credits.ack(1, 1)
    assert credits.left() == 0


def _log_message(frame) -> str:
    kind, _, body = frame
    assert kind == "log", frame
    return body["message"]


def test_cancel_raises_in_a_loop_that_never_polls_and_the_worker_goes_on(controlled):
    pid = controlled.call(1, "pid")[2]
    controlled.send("call", 2, {"tool": "spin", "args": {}})
    assert _log_message(controlled.recv()) == "spin started"
    controlled.send_control("cancel", 2)
    assert _log_message(controlled.recv()) == "spin finally"
    kind, request_id, body = controlled.recv()
    assert (kind, request_id, body["kind"]) == ("error", 2, "cancelled")
    assert controlled.call(3, "pid") == ("result", 3, pid)


def test_cancel_cancels_an_async_tool_in_its_await(controlled):
    controlled.send("call", 1, {"tool": "async_wait", "args": {}})
    assert _log_message(controlled.recv()) == "async_wait started"
    controlled.send_control("cancel", 1)
    assert _log_message(controlled.recv()) == "async_wait finally"
    kind, request_id, body = controlled.recv()
    assert (kind, request_id, body["kind"]) == ("error", 1, "cancelled")
    # The loop is fine for the next async call.
    assert controlled.call(2, "async_wait", {"seconds": 0}) == ("result", 2, "slept")


def test_cancel_reaches_an_async_generator_stuck_in_await(controlled):
    controlled.send("call", 1, {"tool": "async_stuck", "args": {}, "stream": 8})
    assert controlled.recv_skipping_logs() == ("chunk", 1, 1)
    assert _log_message(controlled.recv()) == "async_stuck waiting"
    controlled.send_control("cancel", 1)
    assert _log_message(controlled.recv()) == "async_stuck finally"
    kind, request_id, body = controlled.recv()
    assert (kind, request_id, body["kind"]) == ("error", 1, "cancelled")



def test_a_reclaim_for_a_call_already_read_is_refused_however_late_it_comes():
    # Found with reclaim_after: 1 ms under load: the control thread, held up,
    # took a reclaim for a call begun more than 256 calls before, no longer
    # among the ids it remembers, and gave it back: the host had its answer
    # long before, and killed the worker for the stale `reclaimed`. The
    # offset the host names settles it.
    c = Cancellation()
    told: list = []
    assert not c.reclaim(5, lambda: told.append(5), unread=lambda: False), "read already"
    assert c.reclaim(6, lambda: told.append(6), unread=lambda: True)
    assert told == [6]


def test_the_control_thread_gives_back_only_calls_stdin_has_not_reached(controlled):
    assert controlled.call(1, "count") == ("result", 1, 1)
    # A call whose frame started at offset 0, which the worker has read past
    # (an id it does not remember having begun): refused.
    controlled.send_control("reclaim", 99, 0)
    controlled.send_control("heartbeat", 0)
    assert controlled.recv() == ("heartbeat", 0, None)
    # An offset far ahead of what it read: given back.
    controlled.send_control("reclaim", 2, 10**9)
    assert controlled.recv() == ("reclaimed", 2, None)
