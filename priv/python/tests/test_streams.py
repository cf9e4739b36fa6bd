"""Streaming calls (``stream`` = a credit window) and generator tools, over real pipes."""

from __future__ import annotations

import pytest

BIG = 2**32  # a window never used up


def await_log(w, prefix):
    """Reads frames up to a log frame whose message starts with ``prefix``,
    and returns that message; fails on any frame but a log before it."""
    while True:
        frame = w.recv()
        assert frame is not None, f"the worker closed stdout before logging {prefix!r}"
        kind, _, body = frame
        if kind == "log" and body["message"].startswith(prefix):
            return body["message"]
        assert kind == "log", f"{frame!r} came before the log {prefix!r}"


def assert_waiting(w, item, probe=900):
    """The bridge pulled ``item`` of a ``told_count`` stream with no credit
    left to send it (its log says so), so it waits for an ack: the next
    frame is the answer to a heartbeat, not the chunk."""
    assert await_log(w, f"yielding {item}:") == f"yielding {item}: 0 credits left"
    w.send_control("heartbeat", probe)
    assert w.recv_frame() == ("heartbeat", probe, None)


def test_chunks_in_order_then_done(worker):
    assert worker.stream(1, "count_up", {"n": 5}) == [
        *[("chunk", 1, i) for i in range(5)],
        ("done", 1, None),
    ]
    assert worker.call(2, "ping") == ("result", 2, "pong")


def test_a_stream_of_no_items_is_just_done(worker):
    assert worker.stream(1, "count_up", {"n": 0}) == [("done", 1, None)]


def test_window_is_respected_and_acks_give_credits_back(extra):
    extra.send_call(1, "told_count", {"n": 6}, stream=2)
    assert [extra.recv_frame() for _ in range(2)] == [("chunk", 1, 0), ("chunk", 1, 1)]
    assert_waiting(extra, 2, 10)
    extra.send_control("ack", 1, 1)
    assert extra.recv_frame() == ("chunk", 1, 2)
    assert_waiting(extra, 3, 11)
    extra.send_control("ack", 1, 2)
    assert [extra.recv_frame() for _ in range(2)] == [("chunk", 1, 3), ("chunk", 1, 4)]
    assert_waiting(extra, 5, 12)
    # The last item needs a credit; the end of the stream does not.
    extra.send_control("ack", 1, 1)
    assert [extra.recv_frame() for _ in range(2)] == [("chunk", 1, 5), ("done", 1, None)]


def test_end_of_stream_needs_no_credit(controlled):
    controlled.send_call(1, "count_up", {"n": 2}, stream=2)
    assert [controlled.recv_frame() for _ in range(3)] == [("chunk", 1, 0), ("chunk", 1, 1), ("done", 1, None)]
    controlled.send_call(2, "fail_after", {"n": 1}, stream=1)
    assert controlled.recv_frame() == ("chunk", 2, 0)
    kind, _, body = controlled.recv_frame()
    assert (kind, body["kind"]) == ("error", "exception")


def test_acks_for_other_requests_and_bad_acks_are_ignored(extra, tmp_path):
    gate = tmp_path / "gate"
    extra.send_call(1, "told_count", {"n": 3, "gate": str(gate)}, stream=1)
    await_log(extra, "yielding 0:")  # the stream has begun; item 0 waits for the gate
    for request_id, n in [(2, 5), (1, 0), (1, -1), (1, "2"), (1, True), (1, None), (1, 1.5)]:
        extra.send_control("ack", request_id, n)
    # Answered once the acks are taken in: a credit one of them gave would
    # be there before item 0 spends the window, and item 1 would not wait.
    extra.send_control("heartbeat", 1)
    assert extra.recv_frame() == ("heartbeat", 1, None)
    gate.touch()
    assert extra.recv_frame() == ("chunk", 1, 0)
    assert_waiting(extra, 1)
    extra.send_control("ack", 1, 5)
    assert [extra.recv_frame() for _ in range(3)] == [("chunk", 1, 1), ("chunk", 1, 2), ("done", 1, None)]


def test_acks_of_a_finished_stream_do_not_carry_over(extra):
    extra.send_call(1, "told_count", {"n": 1}, stream=1)
    assert [extra.recv_frame() for _ in range(2)] == [("chunk", 1, 0), ("done", 1, None)]
    extra.send_control("ack", 1, 100)  # late: its consumer took the chunk after the stream ended
    extra.send_control("heartbeat", 1)  # answered once the ack is taken in
    assert extra.recv_frame() == ("heartbeat", 1, None)
    extra.send_call(2, "told_count", {"n": 3}, stream=1)
    assert extra.recv_frame() == ("chunk", 2, 0)
    assert_waiting(extra, 1)
    extra.send_control("ack", 2, 2)
    assert [extra.recv_frame() for _ in range(3)] == [("chunk", 2, 1), ("chunk", 2, 2), ("done", 2, None)]


def test_cancel_while_out_of_credits_closes_the_generator(extra, tmp_path):
    marker = tmp_path / "closed"
    extra.send_call(1, "told_count", {"marker": str(marker)}, stream=2)
    assert [extra.recv_frame() for _ in range(2)] == [("chunk", 1, 0), ("chunk", 1, 1)]
    assert_waiting(extra, 2)
    assert not marker.exists()
    extra.send_control("cancel", 1)
    kind, request_id, body = extra.recv_frame()
    assert (kind, request_id, body["kind"]) == ("error", 1, "cancelled")
    # The generator's finally ran before the answer was sent. It yielded the
    # item it was suspended on, which was never sent: 2 sent, 3 yielded.
    assert marker.read_text() == "3"
    assert extra.call(2, "count") == ("result", 2, 1)
    assert extra.call(3, "sleep", {"ms": 0}) == ("result", 3, 0)


def test_cancel_stops_a_stream_that_has_credits(controlled, tmp_path):
    marker = tmp_path / "closed"
    controlled.send_call(1, "infinite", {"marker": str(marker), "size": 1000}, stream=BIG)
    assert controlled.recv_frame()[0] == "chunk"
    controlled.send_control("cancel", 1)
    frames = [controlled.recv_frame()]
    while frames[-1][0] == "chunk":
        frames.append(controlled.recv_frame())
    kind, _, body = frames[-1]
    assert (kind, body["kind"]) == ("error", "cancelled")
    assert int(marker.read_text()) >= len(frames)
    assert controlled.call(2, "ping") == ("result", 2, "pong")


def test_cancel_of_an_async_generator_closes_it(extra):
    extra.send_call(1, "async_count", {"n": 10}, stream=1)
    assert extra.recv_frame() == ("chunk", 1, 0)
    extra.send_control("cancel", 1)
    kind, _, body = extra.recv_frame()
    assert (kind, body["kind"]) == ("error", "cancelled")
    assert extra.stream(2, "async_count", {"n": 2}) == [("chunk", 2, 0), ("chunk", 2, 1), ("done", 2, None)]


def test_exception_mid_stream_keeps_the_chunks_sent(worker):
    frames = worker.stream(1, "fail_after", {"n": 3})
    assert frames[:3] == [("chunk", 1, 0), ("chunk", 1, 1), ("chunk", 1, 2)]
    kind, request_id, body = frames[3]
    assert (kind, request_id) == ("error", 1)
    assert body["kind"] == "exception" and body["type"] == "ValueError"
    assert body["message"] == "failed after 3" and body["tool"] == "fail_after"
    assert 'raise ValueError(f"failed after {n}")' in body["traceback"]
    assert len(frames) == 4


def test_async_generator_streams(worker):
    assert worker.stream(1, "async_count", {"n": 4}) == [*[("chunk", 1, i) for i in range(4)], ("done", 1, None)]


def test_async_generator_called_plainly_returns_a_list(worker):
    assert worker.call(1, "async_count", {"n": 3}) == ("result", 1, [0, 1, 2])


def test_async_def_tools_are_awaited(extra):
    assert extra.call(1, "async_echo", {"value": [1, "a"]}) == ("result", 1, [1, "a"])
    assert extra.stream(2, "async_echo", {"value": 7}) == [("chunk", 2, 7), ("done", 2, None)]
    kind, _, body = extra.call(3, "async_boom")
    assert kind == "error" and (body["kind"], body["type"]) == ("exception", "KeyError")
    _, _, body = extra.call(4, "async_echo", {"nope": 1})
    assert body["kind"] == "bad_arguments"


def test_a_tool_that_is_not_a_generator_streams_one_chunk(worker):
    assert worker.stream(1, "add", {"a": 1, "b": 2}) == [("chunk", 1, 3), ("done", 1, None)]
    assert worker.stream(2, "echo", {"value": [1, 2]}) == [("chunk", 2, [1, 2]), ("done", 2, None)]
    frames = worker.stream(3, "boom")
    assert len(frames) == 1 and frames[0][0] == "error" and frames[0][2]["kind"] == "exception"


def test_errors_before_a_stream_starts_are_single_frames(worker):
    assert worker.stream(1, "nope")[0][2]["kind"] == "unknown_tool"
    assert worker.stream(2, "count_up", {"m": 1})[0][2]["kind"] == "bad_arguments"


def test_generator_called_plainly_returns_the_list_of_its_items(worker):
    assert worker.call(1, "count_up", {"n": 4}) == ("result", 1, [0, 1, 2, 3])
    assert worker.call(2, "stream_pid", {"n": 2}) == ("result", 2, [worker.proc.pid] * 2)
    kind, _, body = worker.call(3, "fail_after", {"n": 2})
    assert kind == "error" and body["kind"] == "exception" and body["message"] == "failed after 2"


def test_generator_called_plainly_over_the_frame_limit_is_unencodable(spawn):
    w = spawn("snakepit_test_adapters.TestAdapter", extra_env={"SNAKEPIT_MAX_FRAME_BYTES": "10000"})
    assert w.recv()[0] == "ready"
    kind, _, body = w.call(1, "chunks", {"n": 3, "size": 4000})
    assert kind == "error" and body["kind"] == "unencodable_result"
    # Streamed, each item fits in its own frame.
    assert w.stream(2, "chunks", {"n": 3, "size": 4000}) == [
        *[("chunk", 2, bytes(4000))] * 3,
        ("done", 2, None),
    ]
    # An item over the limit ends the stream.
    frames = w.stream(3, "chunks", {"n": 3, "size": 20000})
    assert len(frames) == 1 and frames[0][2]["kind"] == "unencodable_result"


def test_generator_called_plainly_stops_when_cancelled(extra, tmp_path):
    marker = tmp_path / "closed"
    extra.send_call(1, "told_count", {"marker": str(marker), "tell": 1})
    await_log(extra, "yielding 0:")  # running: the cancel stops it, not skips it
    extra.send_control("cancel", 1)
    kind, _, body = extra.recv_frame()
    assert (kind, body["kind"]) == ("error", "cancelled")
    assert int(marker.read_text()) > 0


def test_unencodable_item_closes_the_generator(extra, tmp_path):
    marker = tmp_path / "closed"
    frames = extra.stream(1, "unencodable_after", {"n": 2, "marker": str(marker)})
    assert frames[:2] == [("chunk", 1, 0), ("chunk", 1, 1)]
    kind, _, body = frames[2]
    assert (kind, body["kind"], body["tool"]) == ("error", "unencodable_result", "unencodable_after")
    assert len(frames) == 3
    assert marker.read_text() == "closed"


def test_a_generator_that_refuses_to_close_is_logged_not_fatal(extra):
    extra.send_call(1, "stubborn", stream=1)
    assert extra.recv_frame() == ("chunk", 1, 1)
    extra.send_control("cancel", 1)
    frames = []
    while not frames or frames[-1][0] == "log":
        frames.append(extra.recv())
    logs = [body for kind, _, body in frames if kind == "log"]
    assert any("closing the generator of tool 'stubborn'" in log["message"] for log in logs)
    assert frames[-1][0] == "error" and frames[-1][2]["kind"] == "cancelled"
    assert extra.call(2, "ping") == ("result", 2, "pong")


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2", [2], {"w": 2}])
def test_a_bad_stream_value_is_a_bad_request(worker, bad):
    worker.send_call(1, "count_up", {"n": 2}, stream=bad)
    kind, request_id, body = worker.recv_frame()
    assert (kind, request_id, body["kind"]) == ("error", 1, "bad_request")
    assert "stream" in body["message"]
    assert worker.call(2, "ping") == ("result", 2, "pong")


def test_a_missing_stream_key_is_a_plain_call(worker):
    worker.send("call", 1, {"tool": "count_up", "args": {"n": 2}})
    assert worker.recv_frame() == ("result", 1, [0, 1])
