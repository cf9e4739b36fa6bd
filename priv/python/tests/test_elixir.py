"""ctx.call_elixir: the waiter table on its own, then a real worker driven
over its pipes as the host drives it (elixir_call on stdout, elixir_reply
on the control pipe)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Iterator, List, Tuple

import pytest
from conftest import WorkerProcess

from snakepit_bridge import CallCancelled, ElixirError, codec
from snakepit_bridge import elixir as elixir_module
from snakepit_bridge.control import Cancellation
from snakepit_bridge.elixir import ElixirCalls, decode_control_frame


class RecordingChannel:
    """Stands for the worker's stdout: keeps the frames written."""

    max_frame = 1 << 20

    def __init__(self) -> None:
        self.frames: List[Tuple[str, int, Any]] = []
        self.written = threading.Condition()

    def encode(self, kind: str, request_id: int, body: Any) -> bytes:
        return codec.packb([kind, request_id, body])

    def write_encoded(self, payload: bytes) -> None:
        with self.written:
            self.frames.append(tuple(codec.unpackb(payload)))  # type: ignore[arg-type]
            self.written.notify_all()

    def write(self, kind: str, request_id: int, body: Any) -> None:
        self.write_encoded(self.encode(kind, request_id, body))

    def wait_for(self, kind: str, timeout: float = 5.0) -> Tuple[str, int, Any]:
        with self.written:
            ok = self.written.wait_for(lambda: any(f[0] == kind for f in self.frames), timeout)
            assert ok, f"no {kind} frame in {self.frames}"
            return next(f for f in self.frames if f[0] == kind)


class Running(Cancellation):
    """A cancellation state with call `request_id` running."""

    def __init__(self, request_id: int = 7) -> None:
        super().__init__()
        assert self.begin(request_id) is None


def in_thread(fn: Any) -> Tuple[threading.Thread, List[Any]]:
    """Runs fn() on a thread; the list gets ("ok", value) or ("raised", exc)."""
    out: List[Any] = []

    def run() -> None:
        try:
            out.append(("ok", fn()))
        except BaseException as exc:  # CallCancelled is a BaseException
            out.append(("raised", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.fixture
def calls() -> Tuple[ElixirCalls, RecordingChannel]:
    c = ElixirCalls()
    channel = RecordingChannel()
    c.configure(channel, default_timeout_ms=5_000)  # type: ignore[arg-type]
    return c, channel


def test_a_reply_reaches_the_thread_that_waits(calls):
    c, channel = calls
    state = Running(7)
    t, out = in_thread(lambda: c.call(7, state, "lookup", {"id": 3}))
    kind, call_id, body = channel.wait_for("elixir_call")
    assert body == {"name": "lookup", "args": {"id": 3}, "timeout_ms": 5_000, "request_id": 7}
    c.reply(call_id, {"value": {"name": "x"}})
    t.join(5)
    assert out == [("ok", {"name": "x"})]
    assert c.pending() == 0
    # The next call's frame comes after nothing else: no elixir_cancel.
    t2, out2 = in_thread(lambda: c.call(7, state, "again", {}))
    with channel.written:
        channel.written.wait_for(lambda: len(channel.frames) == 2, 5)
    assert [f[0] for f in channel.frames] == ["elixir_call", "elixir_call"], "no elixir_cancel after a reply"
    c.reply(channel.frames[1][1], {"value": None})
    t2.join(5)
    assert out2 == [("ok", None)]


def test_an_error_reply_raises_elixir_error_with_its_fields(calls):
    c, channel = calls
    t, out = in_thread(lambda: c.call(7, Running(7), "f", {}, timeout=0.25))
    _, call_id, body = channel.wait_for("elixir_call")
    assert body["timeout_ms"] == 250
    error = {"category": "elixir_error", "message": "** (RuntimeError) boom", "details": {"kind": "error"}}
    c.reply(call_id, {"error": error})
    t.join(5)
    [(how, exc)] = out
    assert how == "raised" and isinstance(exc, ElixirError)
    assert (exc.name, exc.category, exc.message) == ("f", "elixir_error", error["message"])
    assert exc.details == {"kind": "error"}
    assert exc.code == "elixir_error" and str(exc) == error["message"]


def test_concurrent_waiters_get_their_own_replies_in_any_order(calls):
    c, channel = calls
    state = Running(7)
    threads = [in_thread(lambda i=i: c.call(7, state, "echo", {"i": i})) for i in range(8)]
    with channel.written:
        channel.written.wait_for(lambda: len(channel.frames) == 8, 5)
    for _, call_id, body in reversed(channel.frames):
        c.reply(call_id, {"value": body["args"]["i"] * 10})
    for i, (t, out) in enumerate(threads):
        t.join(5)
        assert out == [("ok", i * 10)]
    assert len({f[1] for f in channel.frames}) == 8, "each call has its own id"


def test_a_cancel_of_the_call_wakes_its_waiter_and_tells_the_host(calls):
    c, channel = calls
    state = Running(7)
    other = in_thread(lambda: c.call(8, Running(8), "g", {}))
    t, out = in_thread(lambda: c.call(7, state, "f", {}))
    channel.wait_for("elixir_call")
    with channel.written:
        channel.written.wait_for(lambda: len(channel.frames) == 2, 5)
    waiting = next(f[1] for f in channel.frames if f[2]["request_id"] == 7)
    started = time.monotonic()
    state.cancel(7)
    c.cancelled(7)
    t.join(5)
    assert time.monotonic() - started < 0.2, "woken, not polled"
    [(how, exc)] = out
    assert how == "raised" and isinstance(exc, CallCancelled)
    assert channel.wait_for("elixir_cancel")[1] == waiting
    c.reply(waiting, {"value": 1})  # late: nobody waits, ignored
    assert not other[1], "the other call still waits"
    other_id = next(f[1] for f in channel.frames if f[0] == "elixir_call" and f[2]["request_id"] == 8)
    c.reply(other_id, {"value": 2})
    other[0].join(5)
    assert other[1] == [("ok", 2)]


def test_a_call_cancelled_before_it_is_sent_sends_nothing(calls):
    c, channel = calls
    state = Running(7)
    state.cancel(7)
    with pytest.raises(CallCancelled):
        c.call(7, state, "f", {})
    assert channel.frames == []


def test_no_reply_at_all_ends_in_a_timeout_error(calls, monkeypatch):
    c, channel = calls
    monkeypatch.setattr(elixir_module, "_BACKSTOP", 0.05)
    with pytest.raises(ElixirError) as e:
        c.call(7, Running(7), "f", {}, timeout=0.01)
    assert e.value.category == "timeout"
    channel.wait_for("elixir_cancel")
    assert [f[0] for f in channel.frames] == ["elixir_call", "elixir_cancel"]


def test_bad_arguments_are_refused_before_anything_is_sent(calls):
    c, channel = calls
    with pytest.raises(ElixirError) as e:
        c.call(7, Running(7), "f", {"x": object()})
    assert e.value.category == "validation" and "cannot be sent" in e.value.message
    for name in ["", "x" * 256, 3]:
        with pytest.raises(ValueError):
            c.call(7, Running(7), name, {})  # type: ignore[arg-type]
    for timeout in [0, -1, True, "1", 5_000_000]:
        with pytest.raises(ValueError):
            c.call(7, Running(7), "f", {}, timeout=timeout)  # type: ignore[arg-type]
    assert channel.frames == [] and c.pending() == 0


def test_a_worker_without_a_host_that_serves_it_says_so():
    c = ElixirCalls()
    with pytest.raises(ElixirError) as e:
        c.call(7, Running(7), "f", {})
    assert e.value.category == "pool"


def test_the_async_variant_awaits_without_blocking_the_loop(calls):
    c, channel = calls

    async def main() -> Any:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.ensure_future(tick())
        task = asyncio.ensure_future(c.call_async(7, Running(7), "f", {"a": 1}))
        _, call_id, _ = await asyncio.get_running_loop().run_in_executor(None, channel.wait_for, "elixir_call")
        threading.Timer(0.05, c.reply, (call_id, {"value": "done"})).start()
        value = await task
        ticker.cancel()
        return value, ticks

    value, ticks = asyncio.run(main())
    assert value == "done" and ticks > 5


def test_an_async_wait_is_cancelled_by_a_cancel_of_its_call(calls):
    c, channel = calls
    state = Running(7)

    async def main() -> None:
        task = asyncio.ensure_future(c.call_async(7, state, "f", {}))
        await asyncio.get_running_loop().run_in_executor(None, channel.wait_for, "elixir_call")
        state.cancel(7)
        c.cancelled(7)  # from the control thread, as a cancel frame does
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    channel.wait_for("elixir_cancel")
    assert [f[0] for f in channel.frames] == ["elixir_call", "elixir_cancel"]
    assert c.pending() == 0


def test_an_undecodable_reply_becomes_an_error_for_its_waiter():
    raw = codec.packb(["elixir_reply", 300, {"value": 1}])[:-1] + b"\xc1"  # 0xc1: never valid
    kind, call_id, body = decode_control_frame(raw, ())
    assert (kind, call_id, body["error"]["category"]) == ("elixir_reply", 300, "validation")
    with pytest.raises(ValueError):  # any other frame: the codec's error, as before
        decode_control_frame(codec.packb(["cancel", 300, None])[:-1] + b"\xc1", ())


# --- a real worker, with the test driving it as the host does ---


@pytest.fixture
def host() -> Iterator[WorkerProcess]:
    w = WorkerProcess(
        "snakepit_test_adapters.TestAdapter", control=True, extra_env={"SNAKEPIT_ELIXIR_TIMEOUT_MS": "4000"}
    )
    ready = w.recv()
    assert ready is not None and ready[0] == "ready"
    yield w
    w.stop()


def elixir_call_of(w: WorkerProcess) -> Tuple[int, Any]:
    kind, call_id, body = w.recv_frame()
    assert kind == "elixir_call", (kind, body)
    return call_id, body


def test_a_tool_gets_the_value_of_the_elixir_function(host):
    host.send_call(1, "elixir", {"name": "double", "args": {"x": 21}})
    call_id, body = elixir_call_of(host)
    assert body == {"name": "double", "args": {"x": 21}, "timeout_ms": 4000, "request_id": 1}
    host.send_control("elixir_reply", call_id, {"value": 42})
    assert host.recv_frame() == ("result", 1, 42)
    # A second call gets a new id.
    host.send_call(2, "elixir", {"name": "double", "args": {"x": 1}, "timeout": 1.5})
    call_id_2, body = elixir_call_of(host)
    assert call_id_2 != call_id and body["timeout_ms"] == 1500
    host.send_control("elixir_reply", call_id_2, {"error": {"category": "timeout", "message": "late", "details": {}}})
    kind, _, result = host.recv_frame()
    assert result["error"]["category"] == "timeout" and result["error"]["code"] == "timeout"


def test_an_uncaught_elixir_error_fails_the_call_as_a_tool_error(host):
    host.send_call(1, "elixir_uncaught", {"name": "f"})
    call_id, _ = elixir_call_of(host)
    error = {"category": "elixir_error", "message": "boom", "details": {"kind": "throw"}}
    host.send_control("elixir_reply", call_id, {"error": error})
    kind, request_id, body = host.recv_frame()
    assert (kind, request_id, body["type"], body["code"]) == ("error", 1, "ElixirError", "elixir_error")
    assert body["details"] == {"kind": "throw"}


def test_a_cancel_interrupts_the_wait_and_the_worker_goes_on(host, tmp_path):
    for tool in ["elixir_cancellable", "elixir_cancellable_async"]:
        marker = tmp_path / tool
        host.send_call(1, tool, {"name": "slow", "marker": str(marker)})
        call_id, _ = elixir_call_of(host)
        host.send_control("cancel", 1)
        # The elixir_cancel comes from another thread: before or after the answer.
        frames = {frame[0]: frame for frame in [host.recv_frame(), host.recv_frame()]}
        assert frames["elixir_cancel"] == ("elixir_cancel", call_id, None)
        kind, request_id, body = frames["error"]
        assert (kind, request_id, body["kind"]) == ("error", 1, "cancelled")
        assert marker.read_text() == "cancelled"
        host.send_control("elixir_reply", call_id, {"value": "late"})  # ignored
        assert host.call(2, "echo", {"value": tool}) == ("result", 2, tool)


def test_tensors_and_bytes_cross_both_ways(host):
    np = pytest.importorskip("numpy")
    host.send_call(1, "elixir_tensor", {"name": "tensors", "n": 5})
    call_id, body = elixir_call_of(host)
    t = body["args"]["t"]
    assert isinstance(t, np.ndarray) and t.dtype == np.float32 and t.tolist() == [0, 1, 2, 3, 4]
    assert body["args"]["b"] == bytes(range(256))
    # As the host sends a tensor back: ext 84, little-endian float64 [1.5, 2.5].
    back = np.array([1.5, 2.5], dtype="<f8")
    host.send_control("elixir_reply", call_id, {"value": {"t": back, "b": b"\x00\xff"}})
    kind, _, result = host.recv_frame()
    assert kind == "result", result
    assert result["t"] == {"type": "ndarray", "dtype": "float64", "shape": [2], "sum": 4.0}
    assert result["b"] == {"type": "bytes"}


def test_a_worker_whose_host_does_not_serve_it_sends_nothing():
    w = WorkerProcess("snakepit_test_adapters.TestAdapter", control=True)
    try:
        assert w.recv() is not None
        w.send_call(1, "elixir", {"name": "f"})
        kind, _, result = w.recv_frame()
        assert kind == "result" and result["error"]["category"] == "pool", "no elixir_call is sent"
    finally:
        w.stop()

