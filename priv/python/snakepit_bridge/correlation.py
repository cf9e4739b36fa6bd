"""The running call's correlation id, on log records and on what it prints.

The host sends each call's correlation id in its ``call`` frame. While the
call runs:

- every :class:`logging.LogRecord` made in this process has it as
  ``record.correlation_id`` (``None`` outside calls), so a Python logging
  formatter can show it (``%(correlation_id)s``), and the ``log`` frames
  the bridge forwards carry it to Elixir's ``Logger`` metadata;
- ``print()`` and other writes to ``sys.stdout``/``sys.stderr`` are sent
  as ``log`` frames too (logger ``"stdout"``/``"stderr"``, level info), one
  per line, carrying it. Outside calls, and for writes that bypass the
  Python objects (C code, child processes), output goes to stderr as raw
  text, which the host logs without a correlation id.
"""

from __future__ import annotations

import contextvars
import io
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, List, Optional, TextIO, Tuple

if TYPE_CHECKING:
    from .channel import Channel

__all__ = ["current", "install_record_factory", "OutputCapture"]

# Per thread, and per asyncio task: a worker may run several calls at once.
_current: "contextvars.ContextVar[Optional[str]]" = contextvars.ContextVar("snakepit_correlation_id", default=None)


def current() -> Optional[str]:
    """The correlation id of the call that runs now, or None."""
    return _current.get()


def install_record_factory() -> None:
    """Makes every log record carry ``correlation_id`` (idempotent)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_snakepit", False):
        return

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.correlation_id = _current.get()
        return record

    make._snakepit = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make)


class _CallOutput(io.TextIOBase):
    """A text stream that sends each complete line as a ``log`` frame."""

    def __init__(self, send: Callable[[str], None], real: TextIO) -> None:
        super().__init__()
        self._send = send
        self._real = real
        self._partial: List[str] = []
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._real.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            lines = "".join(self._partial + [text]).split("\n")
            last = lines.pop()
            self._partial = [last] if last else []
        for line in lines:
            self._send(line)
        return len(text)

    def flush(self) -> None:
        if not self._partial:
            return
        with self._lock:
            rest = "".join(self._partial)
            self._partial = []
        if rest:
            self._send(rest)


class OutputCapture:
    """Swaps ``sys.stdout``/``sys.stderr`` for line senders while a call runs.

    Made once per worker, so a call pays for two attribute swaps, not for
    new stream objects (this runs on every call). A worker that runs several
    calls at once (``shared``) swaps them once for good, and each line is
    sent with the correlation id of the thread (or task) that ended it."""

    def __init__(self, channel: "Channel", shared: bool = False) -> None:
        self._channel = channel
        self._out = _CallOutput(self._sender("stdout"), sys.stdout)
        self._err = _CallOutput(self._sender("stderr"), sys.stderr)
        self._saved: Optional[Tuple[TextIO, TextIO]] = None
        self._shared = shared
        if shared:
            self._saved = (sys.stdout, sys.stderr)
            sys.stdout, sys.stderr = self._out, self._err

    def _sender(self, logger: str) -> Callable[[str], None]:
        def send(line: str) -> None:
            body = {"level": "info", "logger": logger, "message": line, "correlation_id": _current.get()}
            try:
                self._channel.write("log", 0, body)
            except Exception:  # output must never break the call
                pass

        return send

    def begin(self, correlation_id: Optional[str]) -> "contextvars.Token[Optional[str]]":
        """A call starts: its id is current, its output is captured. Returns
        what :meth:`end` takes."""
        token = _current.set(correlation_id)
        if not self._shared:
            self._saved = (sys.stdout, sys.stderr)
            sys.stdout, sys.stderr = self._out, self._err
        return token

    def end(self, token: "contextvars.Token[Optional[str]]") -> None:
        """The call ended: a last partial line is sent, the streams restored."""
        if not self._shared:
            self._restore()
        _current.reset(token)

    def close(self) -> None:
        """Sends what is left and gives the streams back (a shared capture)."""
        if self._shared:
            self._restore()

    def _restore(self) -> None:
        # Most calls print nothing: skip the flush calls then (this runs on every call).
        if self._out._partial:
            self._out.flush()
        if self._err._partial:
            self._err.flush()
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None
