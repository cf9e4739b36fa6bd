"""ToolError and the error frame bodies it makes."""

from __future__ import annotations

from typing import Any

import pytest

import snakepit_bridge
from snakepit_bridge import ToolError, codec
from snakepit_bridge.errors import MAX_DETAILS_BYTES, error_body


def _raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as the worker catches it."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_tool_error_is_exported_and_an_exception() -> None:
    assert snakepit_bridge.ToolError is ToolError
    assert "ToolError" in snakepit_bridge.__all__
    assert issubclass(ToolError, Exception)
    e = ToolError("no such user")
    assert (str(e), e.message, e.code, e.details, e.retryable) == ("no such user", "no such user", None, {}, False)


def test_tool_error_body_has_code_details_and_retryable() -> None:
    exc = _raised(ToolError("no such user", code="not_found", details={"user_id": 7}, retryable=True))
    body = error_body("exception", exc, tool="lookup")
    assert body["kind"] == "exception"
    assert body["tool"] == "lookup"
    assert body["type"] == "ToolError"
    assert body["message"] == "no such user"
    assert "Traceback" in body["traceback"] and "ToolError: no such user" in body["traceback"]
    assert body["code"] == "not_found"
    assert body["details"] == {"user_id": 7}
    assert body["retryable"] is True
    # It goes on the wire as it is.
    assert codec.unpackb(codec.packb(body)) == body


def test_defaults_and_integer_codes() -> None:
    body = error_body("exception", _raised(ToolError("busy", code=429)))
    assert (body["code"], body["details"], body["retryable"]) == (429, {}, False)
    body = error_body("exception", _raised(ToolError("plain")))
    assert (body["code"], body["details"], body["retryable"]) == (None, {}, False)


def test_other_exceptions_have_no_tool_error_fields() -> None:
    body = error_body("exception", _raised(ValueError("bad")), tool="t")
    assert set(body) == {"kind", "tool", "type", "message", "traceback"}
    assert set(error_body("cancelled", message="gone")) == {"kind", "tool", "type", "message", "traceback"}


def test_subclasses_keep_their_name_and_fields() -> None:
    class NotFound(ToolError):
        pass

    body = error_body("exception", _raised(NotFound("gone", code="not_found")))
    assert (body["type"], body["code"]) == ("NotFound", "not_found")


def test_details_are_copied() -> None:
    details = {"a": 1}
    e = ToolError("x", details=details)
    details["a"] = 2
    assert e.details == {"a": 1}


@pytest.mark.parametrize(
    "kwargs",
    [{"code": 1.5}, {"code": True}, {"code": ["x"]}, {"details": [1, 2]}, {"details": "x"}, {"retryable": 1}],
)
def test_bad_fields_are_refused_when_raised(kwargs: Any) -> None:
    with pytest.raises(TypeError, match="ToolError"):
        ToolError("x", **kwargs)


def test_unencodable_details_are_sent_as_their_repr() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    exc = _raised(ToolError("x", details={"ok": [1, "two"], "obj": Opaque(), "n": 2**70}))
    body = error_body("exception", exc)
    assert body["details"] == {"ok": [1, "two"], "obj": "<opaque>", "n": repr(2**70)}
    codec.packb(body)


def test_fields_changed_after_the_error_was_made_still_send() -> None:
    exc = ToolError("x")
    exc.code = object()  # type: ignore[assignment]
    exc.details = [1, 2]  # type: ignore[assignment]
    exc.retryable = "yes"  # type: ignore[assignment]
    body = error_body("exception", _raised(exc))
    assert body["code"].startswith("<object object")
    assert body["details"] == {"details": "[1, 2]"}
    assert body["retryable"] is False
    codec.packb(body)


def test_huge_details_are_left_out() -> None:
    exc = _raised(ToolError("x", details={"blob": b"\0" * (MAX_DETAILS_BYTES + 1)}))
    body = error_body("exception", exc)
    assert list(body["details"]) == ["details_omitted"]
    assert "over the" in body["details"]["details_omitted"]


def test_a_worker_sends_a_tool_error(worker: Any) -> None:
    kind, request_id, body = worker.call(
        3, "raise_tool_error", {"code": "rate_limited", "retryable": True, "details": {"wait_ms": 50}}
    )
    assert (kind, request_id) == ("error", 3)
    assert body["kind"] == "exception"
    assert body["tool"] == "raise_tool_error"
    assert body["type"] == "ToolError"
    assert body["message"] == "the tool failed on purpose"
    assert (body["code"], body["details"], body["retryable"]) == ("rate_limited", {"wait_ms": 50}, True)
    # The worker carries on.
    assert worker.call(4, "add", {"a": 1, "b": 2}) == ("result", 4, 3)


def test_a_stream_ends_with_a_tool_error(worker: Any) -> None:
    frames = worker.stream(5, "raise_tool_error", {"code": 7})
    assert len(frames) == 1
    kind, _, body = frames[0]
    assert kind == "error" and (body["code"], body["retryable"]) == (7, False)
