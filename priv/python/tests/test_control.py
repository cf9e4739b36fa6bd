"""Heartbeats and cancels on the control pipe, while calls run."""

from __future__ import annotations

from snakepit_bridge.control import Cancellation


def test_heartbeat_is_answered_while_a_call_runs(controlled):
    controlled.send("call", 1, {"tool": "sleep", "args": {"ms": 300}})
    controlled.send_control("heartbeat", 0)
    assert controlled.recv() == ("heartbeat", 0, None)
    assert controlled.recv() == ("result", 1, 300)


def test_cancel_reaches_the_running_tool(controlled):
    controlled.send("call", 1, {"tool": "until_cancelled", "args": {}})
    kind, _, body = controlled.recv()  # the tool logs when it starts
    assert kind == "log" and body["message"] == "until_cancelled started"
    controlled.send_control("cancel", 1)
    assert controlled.recv() == ("result", 1, "cancelled")
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
    assert not c.begin(5)
    assert c.begin(6) and not c.is_set()
    c.cancel(7)
    assert not c.is_set()
    c.cancel(6)
    assert c.is_set()
    c.end()
    assert c.begin(8) and not c.is_set()
