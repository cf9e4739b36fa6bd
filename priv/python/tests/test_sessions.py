"""Sessions, ``session_end`` and the ``ctx`` parameter, over real pipes."""

from __future__ import annotations

import time

from snakepit_bridge import Context, Session
from snakepit_bridge.context import Sessions


def end_session(w, session_id):
    w.send("session_end", 0, {"session_id": session_id})


def test_state_lives_across_the_calls_of_a_session(worker):
    assert worker.call(1, "session_put", {"key": "k", "value": [1, 2]}, session_id="a") == ("result", 1, None)
    assert worker.call(2, "session_get", {"key": "k"}, session_id="a") == ("result", 2, [1, 2])
    assert worker.call(3, "session_get", {"key": "k"}, session_id="b") == ("result", 3, None)
    assert worker.call(4, "session_get", {"key": "other"}, session_id="a") == ("result", 4, None)


def test_is_new_only_during_the_first_call_and_calls_count(worker):
    answers = [worker.call(i, "session_counter", session_id="s")[2] for i in range(1, 4)]
    pid = worker.proc.pid
    assert answers == [
        {"n": 1, "pid": pid, "new": True, "calls": 1},
        {"n": 2, "pid": pid, "new": False, "calls": 2},
        {"n": 3, "pid": pid, "new": False, "calls": 3},
    ]
    # Another session starts afresh; calls outside sessions do not count.
    assert worker.call(4, "ping", session_id="s") == ("result", 4, "pong")
    assert worker.call(5, "session_counter", session_id="t")[2]["new"] is True
    assert worker.call(6, "session_counter", session_id="s")[2] == {"n": 4, "pid": pid, "new": False, "calls": 5}


def test_a_failed_first_call_still_makes_the_session_old(worker):
    kind, _, _ = worker.call(1, "boom", session_id="s")
    assert kind == "error"
    assert worker.call(2, "session_counter", session_id="s")[2]["new"] is False


def test_calls_rejected_before_the_tool_runs_do_not_touch_the_session(worker):
    worker.call(1, "nope", session_id="s")
    worker.call(2, "session_get", {"key": "k", "ctx": 1}, session_id="s")
    assert worker.call(3, "session_counter", session_id="s")[2]["calls"] == 1


def test_session_tools_outside_a_session(worker):
    assert worker.call(1, "session_info") == ("result", 1, None)
    kind, _, body = worker.call(2, "session_counter")
    assert kind == "error" and body["kind"] == "exception"
    assert body["type"] == "ValueError" and body["message"] == "session_counter needs a session"


def test_session_info(worker):
    worker.call(1, "session_put", {"key": "z", "value": 1}, session_id="i")
    worker.call(2, "session_put", {"key": "a", "value": 2}, session_id="i")
    kind, _, info = worker.call(3, "session_info", session_id="i")
    assert kind == "result"
    assert info == {"id": "i", "new": False, "calls": 3, "pid": worker.proc.pid, "keys": ["a", "z"]}


def test_session_end_calls_the_hook_and_forgets_the_state(worker, tmp_path):
    session_id = "sé/1"
    worker.call(1, "session_put", {"key": "marker_dir", "value": str(tmp_path)}, session_id=session_id)
    worker.call(2, "session_counter", session_id=session_id)
    worker.call(3, "session_put", {"key": "marker_dir", "value": str(tmp_path)}, session_id="other")
    end_session(worker, session_id)
    # No frame answers a session_end: the next call's answer shows it was handled.
    assert worker.call(4, "session_counter", session_id=session_id)[2] == {
        "n": 1,
        "pid": worker.proc.pid,
        "new": True,
        "calls": 1,
    }
    assert [p.name for p in tmp_path.iterdir()] == [f"session_end-{session_id.encode().hex()}"]
    assert worker.call(5, "session_get", {"key": "marker_dir"}, session_id="other") == ("result", 5, str(tmp_path))


def test_session_end_of_an_unknown_session_or_a_bad_body_is_ignored(worker):
    end_session(worker, "never seen")
    worker.send("session_end", 0, None)
    worker.send("session_end", 0, {"session_id": 5})
    worker.send("session_end", 0, "s")
    frames = [worker.recv() for _ in range(3)]  # a warning for each bad body, nothing else
    assert [(kind, body["level"]) for kind, _, body in frames] == [("log", "warning")] * 3
    assert worker.call(1, "ping") == ("result", 1, "pong")


def test_an_on_session_end_that_raises_is_logged_and_the_session_still_ends(extra):
    extra.call(1, "session_put", {"key": "raise_on_end", "value": True}, session_id="r")
    end_session(extra, "r")
    kind, _, log = extra.recv()
    assert kind == "log" and log["level"] == "error"
    assert "on_session_end raised for session 'r'" in log["message"]
    assert "RuntimeError: on_session_end of r failed" in log["message"]
    assert extra.call(2, "session_get", {"key": "raise_on_end"}, session_id="r") == ("result", 2, None)


def test_ctx_in_the_args_of_a_tool_that_takes_ctx_is_bad_arguments(worker):
    kind, _, body = worker.call(1, "session_info", {"ctx": {"session": "forged"}}, session_id="s")
    assert kind == "error" and body["kind"] == "bad_arguments" and body["tool"] == "session_info"
    assert "ctx" in body["message"] and "context" in body["message"]
    # A tool without a ctx parameter is unaffected: ctx is an unknown argument like any.
    _, _, body = worker.call(2, "ping", {"ctx": 1})
    assert body["kind"] == "bad_arguments" and "'ctx'" in body["message"]


def test_context_fields(extra):
    assert extra.call(7, "ctx_info", {"value": 1}) == (
        "result",
        7,
        {"request_id": 7, "streaming": False, "session": None, "cancelled": False, "value": 1},
    )
    assert extra.stream(8, "ctx_info", session_id="s") == [
        ("chunk", 8, {"request_id": 8, "streaming": True, "session": "s", "cancelled": False, "value": None}),
        ("done", 8, None),
    ]


def test_streaming_calls_belong_to_their_session(worker):
    assert worker.stream(1, "session_counter", session_id="s")[0][2]["new"] is True
    assert worker.call(2, "session_counter", session_id="s")[2] == {
        "n": 2,
        "pid": worker.proc.pid,
        "new": False,
        "calls": 2,
    }


def test_a_bad_session_id_is_a_bad_request(worker):
    worker.send("call", 1, {"tool": "ping", "args": {}, "session_id": 5, "stream": None})
    kind, _, body = worker.recv_frame()
    assert (kind, body["kind"]) == ("error", "bad_request") and "session_id" in body["message"]


def test_sessions_table():
    sessions = Sessions()
    before = time.monotonic()
    s = sessions.enter("x")
    assert (s.id, s.state, s.is_new, s.calls) == ("x", {}, True, 1)
    assert before <= s.created_at <= time.monotonic()
    sessions.leave(s)
    assert sessions.enter("x") is s and (s.is_new, s.calls) == (False, 2)
    assert sessions.pop("x") is s and sessions.pop("x") is None and len(sessions) == 0


def test_context_can_be_made_by_hand_for_unit_tests():
    ctx = Context(Session("u"), request_id=3, streaming=False)
    assert ctx.session is not None and ctx.session.id == "u" and not ctx.cancelled()
    assert repr(ctx) == "Context(session='u', request_id=3, streaming=False)"
