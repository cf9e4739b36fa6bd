"""The worker process end to end, over real pipes."""

from __future__ import annotations

import math
import sys
from typing import Any, List

import pytest

from snakepit_bridge import PROTOCOL_VERSION, codec
from snakepit_bridge.worker import _salvage_id


def test_handshake_announces_protocol_pid_and_tools(spawn):
    w = spawn("snakepit_test_adapters.TestAdapter")
    kind, request_id, body = w.recv()
    assert (kind, request_id) == ("ready", 0)
    assert body["protocol"] == PROTOCOL_VERSION
    assert body["pid"] == w.proc.pid
    assert {"echo", "ping", "describe", "boom"} <= set(body["tools"])
    assert body["codec"] == codec.NAME


def test_other_protocol_test_adapter_announces_another_version(spawn):
    w = spawn("snakepit_test_other_protocol.OtherProtocolAdapter")
    kind, _, body = w.recv()
    assert kind == "ready" and body["protocol"] == PROTOCOL_VERSION + 1


def test_call_returns_result_with_same_id(worker):
    assert worker.call(41, "add", {"a": 1, "b": 2}) == ("result", 41, 3)
    assert worker.call(42, "ping") == ("result", 42, "pong")


def test_state_lives_as_long_as_the_worker(worker):
    assert [worker.call(i, "count")[2] for i in range(1, 4)] == [1, 2, 3]


def test_values_round_trip(worker):
    values = [None, True, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, "héllo ✓", b"\xff\x00"]
    values += [[], {}, [1, [2, {"k": "v"}]], {1: "int key"}]
    for i, v in enumerate(values, start=1):
        assert worker.call(i, "echo", {"value": v}) == ("result", i, v)


def test_non_finite_floats_are_sent_as_floats(worker):
    kind, _, body = worker.call(1, "non_finite")
    assert kind == "result"
    assert math.isnan(body["nan"]) and body["inf"] == math.inf and body["ninf"] == -math.inf


def test_exception_returns_type_message_and_traceback(worker):
    kind, request_id, body = worker.call(7, "boom", {"message": "bad input"})
    assert (kind, request_id) == ("error", 7)
    assert body["kind"] == "exception"
    assert body["type"] == "ValueError"
    assert body["message"] == "bad input"
    assert "Traceback" in body["traceback"] and "raise ValueError(message)" in body["traceback"]


def test_unknown_tool_lists_the_known_ones(worker):
    kind, _, body = worker.call(1, "nope")
    assert kind == "error" and body["kind"] == "unknown_tool"
    assert "'nope'" in body["message"] and "echo" in body["message"]


def test_unknown_tool_quotes_a_huge_name_cut_short(worker):
    name = "x" * 1_000_000
    kind, _, body = worker.call(1, name)
    assert kind == "error" and body["kind"] == "unknown_tool"
    # The list of tools after the quoted name grows with the test adapter.
    quoted = body["message"].partition("; this adapter has: ")[0]
    assert len(quoted) < 512
    assert "'xxxx" in quoted and "(1000000 bytes)" in quoted
    assert "echo" in body["message"]
    assert len(body["tool"]) < 1024 and "(1000000 bytes)" in body["tool"]
    # A name that is not a string is quoted cut short too.
    _, _, body = worker.call(2, list(range(100_000)))
    assert body["kind"] == "unknown_tool" and len(body["message"].partition("; this adapter has: ")[0]) < 512


def test_missing_and_extra_arguments_are_bad_arguments(worker):
    _, _, missing = worker.call(1, "add", {"a": 1})
    _, _, extra = worker.call(2, "add", {"a": 1, "b": 2, "c": 3})
    assert missing["kind"] == "bad_arguments" and "'b'" in missing["message"]
    assert extra["kind"] == "bad_arguments" and "'c'" in extra["message"]


def test_type_error_raised_inside_a_tool_is_an_exception(worker):
    _, _, body = worker.call(1, "inner_type_error")
    assert body["kind"] == "exception" and body["type"] == "TypeError"


def test_unencodable_result_is_an_error_not_a_crash(worker):
    kind, _, body = worker.call(1, "huge_int")
    assert kind == "error" and body["kind"] == "unencodable_result"
    assert worker.call(2, "ping") == ("result", 2, "pong")


def test_print_in_a_call_is_a_log_frame_with_the_correlation_id(worker):
    worker.send("call", 1, {"tool": "noisy", "args": {"text": "hi"}, "correlation_id": "c-1"})
    kind, _, body = worker.recv()
    assert kind == "log"
    assert body == {"level": "info", "logger": "stdout", "message": "printed: hi", "correlation_id": "c-1"}
    assert worker.recv() == ("result", 1, "hi")
    assert worker.call(2, "ping") == ("result", 2, "pong")
    code, stderr = worker.close()
    assert code == 0
    # Writes to fd 1 that bypass sys.stdout still go to stderr, never the protocol.
    assert b"raw fd 1 write" in stderr and b"printed: hi" not in stderr


def test_log_records_carry_the_calls_correlation_id(worker):
    args = {"level": "warning", "message": "careful"}
    worker.send("call", 1, {"tool": "log", "args": args, "correlation_id": "req-42"})
    kind, _, body = worker.recv()
    assert kind == "log" and body["correlation_id"] == "req-42"
    assert worker.recv() == ("result", 1, True)
    worker.send("call", 2, {"tool": "log", "args": args})
    kind, _, body = worker.recv()
    assert kind == "log" and body["correlation_id"] is None


def test_ctx_has_the_correlation_id(worker):
    worker.send("call", 1, {"tool": "correlation", "args": {}, "correlation_id": "abc"})
    assert worker.recv_skipping_logs() == ("result", 1, {"ctx": "abc", "record": "abc"})


def test_python_logging_becomes_log_frames(worker):
    worker.send("call", 1, {"tool": "log", "args": {"level": "warning", "message": "careful"}})
    kind, _, body = worker.recv()
    assert kind == "log"
    assert body["level"] == "warning" and body["message"] == "careful"
    assert worker.recv() == ("result", 1, True)


def test_heartbeat_is_echoed_and_stale_cancel_ignored(worker):
    worker.send("cancel", 99, None)
    worker.send("heartbeat", 5, None)
    assert worker.recv() == ("heartbeat", 5, None)


def test_undecodable_call_gets_an_error_with_its_id(worker):
    payload = b"\x93\xa4call\x09\xc1"  # 0xc1 is never valid MessagePack
    worker.send_raw(payload)
    kind, request_id, body = worker.recv()
    assert (kind, request_id) == ("error", 9)
    assert body["kind"] == "bad_request"


@pytest.mark.parametrize("blocked", ["msgpack", "ormsgpack"])
def test_undecodable_call_is_answered_whichever_codec_is_missing(spawn, blocked):
    w = spawn("snakepit_test_adapters.TestAdapter", blocked=[blocked])
    kind, _, ready = w.recv()
    assert kind == "ready" and ready["codec"] != blocked
    w.send_raw(codec.packb(["call", 2**40, None])[:-1] + b"\xc1")  # the body (nil) becomes 0xc1
    w.send("call", 2, {"tool": "ping", "args": {}})  # so a missing answer fails instead of hanging
    kind, request_id, body = w.recv()
    assert (kind, request_id) == ("error", 2**40)
    assert body["kind"] == "bad_request" and "undecodable call" in body["message"]
    assert w.recv() == ("result", 2, "pong")


def test_without_any_codec_the_worker_says_what_to_install(spawn):
    """A venv without msgpack: the last line of the worker's stderr (what its
    pool's error shows) names the interpreter and the pip command."""
    w = spawn("snakepit_test_adapters.TestAdapter", blocked=["msgpack", "ormsgpack"])
    assert w.recv() is None
    code, stderr = w.close()
    last = stderr.decode().strip().splitlines()[-1]
    assert code != 0
    assert last.startswith("ModuleNotFoundError: No module named 'msgpack' (nor 'ormsgpack')")
    assert last.endswith(f"{sys.executable} -m pip install msgpack")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\x93\xa4call\x09\xc1", 9),
        (b"\xdc\x00\x03\xd9\x04call\xcd\x01\x00\xc1", 256),  # array16, str8, uint16
        (b"\xdd\x00\x00\x00\x03\xda\x00\x04call\xce\x00\x01\x00\x00", 65536),  # array32, str16, uint32
        (b"\x93\xdb\x00\x00\x00\x04call\xcc\xff", 255),  # str32, uint8
        (b"\x93\xa4call\xcf" + (2**64 - 1).to_bytes(8, "big") + b"\xc1", 2**64 - 1),
        (b"\x93\xa4call\xce\x00\x01", 0),  # truncated id
        (b"\x93\xa4call", 0),  # no id
        (b"\x93\xa4call\xff\xc1", 0),  # negative id
        (b"\x93\xa4call\xa1x\xc1", 0),  # id is not an integer
        (b"\x93\xa9heartbeat\x09\xc1", 0),  # not a call: nothing to answer
        (b"\x92\xa4call\x09", 0),  # not an array of 3
        (b"", 0),
    ],
)
def test_salvage_id_reads_only_the_envelope(raw, expected):
    assert _salvage_id(raw) == expected


def test_salvage_id_agrees_with_the_codec():
    for request_id in [1, 127, 128, 255, 256, 2**16, 2**32, 2**63, 2**64 - 1]:
        assert _salvage_id(codec.packb(["call", request_id, {"tool": "x"}])) == request_id


def test_exits_cleanly_when_stdin_closes(worker):
    code, _ = worker.close()
    assert code == 0


def test_unimportable_adapter_reports_before_ready_and_exits(spawn):
    w = spawn("snakepit_test_broken.Adapter")
    kind, request_id, body = w.recv()
    assert (kind, request_id) == ("error", 0)
    assert body["kind"] == "adapter_load"
    assert body["type"] == "ModuleNotFoundError"
    assert "snakepit_module_that_does_not_exist" in body["message"]
    assert w.proc.wait(timeout=10) == 3


def test_adapter_that_is_not_a_base_adapter_is_refused(spawn):
    w = spawn("os.path")
    kind, _, body = w.recv()
    assert kind == "error" and body["kind"] == "adapter_load"
    assert "not of the form" not in body["message"]


def test_large_bytes_results_are_written_without_reencoding(worker):
    data = bytes(range(256)) * 400  # 100 KiB: above the direct-write threshold
    assert worker.call(1, "echo", {"value": data}) == ("result", 1, data)
    assert worker.call(2, "echo", {"value": bytearray(b"ab" * 40_000)}) == ("result", 2, b"ab" * 40_000)


def test_large_array_results_are_written_from_the_arrays_memory(worker):
    np = pytest.importorskip("numpy")
    kind, _, body = worker.call(1, "make_tensor", {"dtype": "float32", "shape": [300, 100]})
    assert kind == "result"
    assert body.dtype == np.float32 and body.shape == (300, 100)
    assert np.array_equal(body, np.arange(30_000, dtype=np.float32).reshape(300, 100))


def _blob(data: bytes) -> bytes:
    """A blob frame, as the host sends large binaries before their call."""
    return (len(data) | 0x8000_0000).to_bytes(4, "big") + data


def _blob_ref(index: int, tag: bytes) -> Any:
    return codec_ext(codec.BLOB_EXT, index.to_bytes(4, "big") + tag)


def codec_ext(code: int, data: bytes) -> Any:
    try:
        import ormsgpack

        return ormsgpack.Ext(code, data)
    except ImportError:  # pragma: no cover
        import msgpack

        return msgpack.ExtType(code, data)


def _call_with_blobs(worker: Any, request_id: int, tool: str, args: Any, blobs: List[bytes]) -> Any:
    body = {"tool": tool, "session_id": None, "stream": None, "correlation_id": None, "args": args}
    frame = codec.packb(["call", request_id, body])
    assert worker.proc.stdin is not None
    worker.proc.stdin.write(b"".join(_blob(b) for b in blobs) + len(frame).to_bytes(4, "big") + frame)
    worker.proc.stdin.flush()
    return worker.recv_frame()


def test_blobs_become_bytes_and_text_of_the_call_that_follows_them(worker):
    data, text = bytes(range(256)) * 1000, "héllo " * 20_000
    args = {"value": [_blob_ref(0, b"b"), _blob_ref(1, b"s"), _blob_ref(0, b"b")]}
    answer = _call_with_blobs(worker, 1, "echo", args, [data, text.encode()])
    assert answer == ("result", 1, [data, text, data])
    # Blobs belong to one frame only: the next call has none.
    kind, _, body = _call_with_blobs(worker, 2, "echo", {"value": _blob_ref(0, b"b")}, [])
    assert kind == "error" and body["kind"] == "bad_request"
    assert "blob reference 0, but 0 blobs came with the frame" in body["message"]


def test_a_tensor_blob_is_a_read_only_array_over_the_blob(worker):
    np = pytest.importorskip("numpy")
    from snakepit_bridge import tensor

    arr = np.arange(50_000, dtype=np.float32).reshape(500, 100)
    head, data = tensor.encode_parts(arr)
    ref = _blob_ref(0, b"t" + head)
    kind, _, info = _call_with_blobs(worker, 1, "tensor_info", {"t": ref}, [bytes(data)])
    assert kind == "result", info
    assert info["dtype"] == "float32" and info["shape"] == [500, 100]
    assert info["sum"] == float(arr.sum()) and info["writeable"] is False
    # A header that does not match the blob's size is refused, not misread.
    kind, _, body = _call_with_blobs(worker, 2, "tensor_info", {"t": ref}, [bytes(data)[:-4]])
    assert kind == "error" and "malformed tensor" in body["message"]


def test_malformed_blob_references_are_bad_requests(worker):
    for request_id, ref in enumerate([codec_ext(codec.BLOB_EXT, b"\x00"), _blob_ref(0, b"x")], start=1):
        kind, _, body = _call_with_blobs(worker, request_id, "echo", {"value": ref}, [b"data"])
        assert kind == "error" and body["kind"] == "bad_request", body
