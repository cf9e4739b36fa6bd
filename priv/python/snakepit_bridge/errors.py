"""The body of ``error`` frames, shared by plain and streaming calls."""

from __future__ import annotations

import traceback
from typing import Any, Dict, Optional

__all__ = ["error_body"]


def error_body(
    kind: str,
    exc: Optional[BaseException] = None,
    *,
    message: Optional[str] = None,
    tool: Optional[str] = None,
) -> Dict[str, Any]:
    """The body of an ``error`` frame."""
    body: Dict[str, Any] = {"kind": kind, "tool": tool}
    if exc is not None:
        body["type"] = type(exc).__name__
        body["message"] = message if message is not None else str(exc)
        body["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    else:
        body["type"] = None
        body["message"] = message or kind
        body["traceback"] = None
    return body
