"""A worker that runs several calls at once (SNAKEPIT_CONCURRENCY > 1)."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import pytest
from conftest import WorkerProcess

from snakepit_bridge.control import Calls, CallScope
from snakepit_bridge.worker import _concurrency


def _started(n: int) -> Iterator[WorkerProcess]:
    w = WorkerProcess("snakepit_test_adapters.TestAdapter", control=True, extra_env={"SNAKEPIT_CONCURRENCY": str(n)})
    ready = w.recv()
    assert ready is not None and ready[0] == "ready"
    assert ready[2]["concurrency"] == n and ready[2]["concurrent_sessions"] is False
    yield w
    w.stop()


@pytest.fixture
def four() -> Iterator[WorkerProcess]:
    yield from _started(4)


def _answers(w: WorkerProcess, n: int) -> Dict[int, Tuple[str, Any]]:
    out: Dict[int, Tuple[str, Any]] = {}
    while len(out) < n:
        kind, request_id, body = w.recv_frame()
        assert request_id not in out, f"answered {request_id} twice"
        out[request_id] = (kind, body)
    return out


def test_calls_run_at_once_and_are_answered_as_they_end(four: WorkerProcess) -> None:
    four.send_call(1, "nap", {"seconds": 0.4})
    four.send_call(2, "nap", {"seconds": 0.05})
    four.send_call(3, "async_nap", {"seconds": 0.2})
    order = [four.recv_frame()[1] for _ in range(3)]
    assert order == [2, 3, 1]


def test_at_most_n_run_and_the_rest_stay_in_the_pipe(four: WorkerProcess) -> None:
    for i in range(1, 7):
        four.send_call(i, "nap", {"seconds": 0.3})
    answers = _answers(four, 6)
    starts = sorted(answers[i][1]["start"] for i in range(1, 7))
    ends = sorted(answers[i][1]["end"] for i in range(1, 7))
    # Calls 5 and 6 start only once some of the first four have ended.
    assert starts[4] >= ends[0]
    assert starts[3] < ends[0]


def test_a_cancel_stops_only_its_call(four: WorkerProcess) -> None:
    four.send_call(1, "spin", {})
    four.send_call(2, "nap", {"seconds": 0.3})
    kind, _, body = four.recv()
    assert kind == "log" and body["message"] == "spin started"
    four.send_control("cancel", 1)
    answers = _answers(four, 2)
    assert answers[1][0] == "error" and answers[1][1]["kind"] == "cancelled"
    assert answers[2][0] == "result"


def test_a_cancel_before_a_call_begins_skips_it(four: WorkerProcess) -> None:
    for i in range(1, 5):
        four.send_call(i, "nap", {"seconds": 0.3})
    four.send_call(5, "count", {})
    four.send_control("cancel", 5)
    answers = _answers(four, 5)
    assert answers[5][0] == "error" and answers[5][1]["kind"] == "cancelled"
    assert four.call(6, "count") == ("result", 6, 1)  # 5 never ran


def test_a_reclaim_gives_back_a_call_still_in_the_pipe(four: WorkerProcess) -> None:
    for i in range(1, 5):
        four.send_call(i, "nap", {"seconds": 0.3})
    four.send_call(5, "count", {})
    # No offset: the bridge decides by the ids it began (5 has not).
    four.send_control("reclaim", 5)
    frames: List[Tuple[str, int, Any]] = [four.recv_frame() for _ in range(5)]
    assert frames[0] == ("reclaimed", 5, None)
    assert sorted(f[1] for f in frames[1:]) == [1, 2, 3, 4]
    assert four.call(6, "count") == ("result", 6, 1)  # 5 never ran


def test_streams_run_at_once_each_within_its_credits(four: WorkerProcess) -> None:
    four.send_call(1, "count_up", {"n": 3}, stream=1)
    four.send_call(2, "count_up", {"n": 3}, stream=1)
    got: Dict[int, List[Any]] = {1: [], 2: []}
    # One chunk each, then each waits for its own ack.
    for _ in range(2):
        kind, request_id, item = four.recv_frame()
        assert kind == "chunk"
        got[request_id].append(item)
    for _ in range(2):
        four.send_control("ack", 1, 1)
        assert four.recv_frame() == ("chunk", 1, len(got[1]))
        got[1].append(len(got[1]))
    assert four.recv_frame() == ("done", 1, None)
    four.send_control("ack", 2, 2)
    assert [four.recv_frame() for _ in range(3)] == [("chunk", 2, 1), ("chunk", 2, 2), ("done", 2, None)]


def test_each_call_logs_with_its_own_correlation_id(four: WorkerProcess) -> None:
    for i, cid in ((1, "a"), (2, "b")):
        four.send("call", i, {"tool": "noisy", "args": {"text": f"from {cid}"}, "correlation_id": cid})
    seen = {}
    answered = 0
    while answered < 2:
        frame = four.recv()
        assert frame is not None
        kind, _, body = frame
        if kind == "log":
            seen[body["message"]] = body["correlation_id"]
        else:
            answered += 1
    # noisy prints its text (a stdout line) and returns it.
    assert seen == {"printed: from a": "a", "printed: from b": "b"}


def test_stdin_closing_waits_for_the_running_calls(four: WorkerProcess) -> None:
    four.send_call(1, "nap", {"seconds": 0.2})
    four.send_call(2, "async_nap", {"seconds": 0.2})
    assert four.proc.stdin is not None
    four.proc.stdin.close()
    answers = _answers(four, 2)
    assert {k for k, _ in answers.values()} == {"result"}
    assert four.proc.wait(timeout=10) == 0


def test_calls_registry_scopes_each_call() -> None:
    calls = Calls()
    a = calls.begin(1)
    b = calls.begin(2)
    assert isinstance(a, CallScope) and isinstance(b, CallScope)
    calls.cancel(2)
    assert b.is_set() and not a.is_set()
    calls.cancel(3)  # before it begins
    assert calls.begin(3) == "cancelled"
    calls.end(1)
    calls.end(2)
    assert len(calls) == 0


def test_concurrency_from_the_environment() -> None:
    assert _concurrency(None) == 1
    assert _concurrency("8") == 8
    assert _concurrency("0") == 1
    assert _concurrency("many") == 1


def test_the_pid_is_the_workers(four: WorkerProcess) -> None:
    assert four.call(1, "pid") == ("result", 1, four.proc.pid)

