"""The body of ``error`` frames, shared by plain and streaming calls, and
:class:`ToolError`, the exception a tool raises to fail with data."""

from __future__ import annotations

import traceback
from typing import Any, Dict, Mapping, Optional, Union

from . import codec

__all__ = ["ToolError", "error_body", "MAX_DETAILS_BYTES"]

#: The most a :class:`ToolError`'s details may take, MessagePack-encoded;
#: larger details are replaced by a note (an error frame must fit the frame
#: limit, and an error is no place for bulk data).
MAX_DETAILS_BYTES = 64 * 1024


class ToolError(Exception):
    """An error a tool raises on purpose, with data for the caller.

    ``raise ToolError("no such user", code="not_found", details={"user_id": 7})``
    fails the call with a ``:python_error`` whose ``details`` hold
    ``code: "not_found"`` and ``"user_id" => 7`` (see ``Snakepit.Error``).

    - ``code``: a string or an integer that names the failure, for the
      caller to match on (``None``: no code).
    - ``details``: a mapping of facts about the failure, sent as a map
      (values MessagePack can encode; others are sent as their ``repr``).
      Keys named like secrets (``password``, ``token``, ...) are masked by
      Snakepit before the error is shown.
    - ``retryable``: ``True`` if running the call again is safe and may
      succeed (a resource was busy, a rate limit was hit):
      ``Snakepit.Error.retryable?/1`` is then true and ``Snakepit.Retry``
      retries the call.

    Subclasses keep these fields; the caller sees the subclass's name as
    the exception type.
    """

    code: Optional[Union[str, int]]
    details: Dict[Any, Any]
    retryable: bool

    def __init__(
        self,
        message: str,
        code: Optional[Union[str, int]] = None,
        details: Optional[Mapping[Any, Any]] = None,
        retryable: bool = False,
    ) -> None:
        if code is not None and (isinstance(code, bool) or not isinstance(code, (str, int))):
            raise TypeError(f"ToolError code must be a str, an int or None, got {type(code).__name__}")
        if details is not None and not isinstance(details, Mapping):
            raise TypeError(f"ToolError details must be a mapping or None, got {type(details).__name__}")
        if not isinstance(retryable, bool):
            raise TypeError(f"ToolError retryable must be a bool, got {type(retryable).__name__}")
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = dict(details) if details is not None else {}
        self.retryable = retryable


def error_body(
    kind: str,
    exc: Optional[BaseException] = None,
    *,
    message: Optional[str] = None,
    tool: Optional[str] = None,
) -> Dict[str, Any]:
    """The body of an ``error`` frame. For a :class:`ToolError`, it also has
    ``code``, ``details`` (a map) and ``retryable`` (a bool)."""
    body: Dict[str, Any] = {"kind": kind, "tool": tool}
    if exc is not None:
        body["type"] = type(exc).__name__
        body["message"] = message if message is not None else str(exc)
        body["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    else:
        body["type"] = None
        body["message"] = message or kind
        body["traceback"] = None
    if isinstance(exc, ToolError):
        # The fields may have been changed since the ToolError was made:
        # send what can be sent, so that the error frame itself never fails.
        body["code"] = _code(getattr(exc, "code", None))
        body["details"] = _details(getattr(exc, "details", None))
        body["retryable"] = getattr(exc, "retryable", False) is True
    return body


def _code(code: Any) -> Union[str, int, None]:
    if code is None or isinstance(code, str):
        return code
    if isinstance(code, int) and not isinstance(code, bool) and -(2**63) <= code < 2**64:
        return code
    return _repr(code)


def _details(details: Any) -> Dict[Any, Any]:
    if details is None:
        return {}
    if not isinstance(details, Mapping):
        return {"details": _repr(details)}
    out = dict(details)
    size = _size(out)
    if size is None:
        out = {_key(k): _value(v) for k, v in out.items()}
        size = _size(out)
    if size is None:
        return {"details_omitted": "the details cannot be encoded"}
    if size > MAX_DETAILS_BYTES:
        return {"details_omitted": f"the details took {size} bytes, over the {MAX_DETAILS_BYTES} allowed"}
    return out


def _key(key: Any) -> Any:
    if isinstance(key, (str, bytes, float)) or (isinstance(key, int) and _encodes(key)):
        return key
    return _repr(key)


def _value(value: Any) -> Any:
    return value if _encodes(value) else _repr(value)


def _encodes(value: Any) -> bool:
    return _size(value) is not None


def _size(value: Any) -> Optional[int]:
    """The size of ``value`` MessagePack-encoded; None if it cannot be."""
    try:
        return len(codec.packb(value))
    except Exception:
        return None


def _repr(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a __repr__ that raises
        text = f"<{type(value).__name__} (repr failed: {type(exc).__name__})>"
    return text if len(text) <= limit else text[:limit] + "..."
