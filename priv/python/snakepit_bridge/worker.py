"""The worker loop: handshake, then one call at a time until stdin closes.

Every ``call`` frame gets exactly one ``result`` or ``error`` frame with the
same id. Errors carry a ``kind`` the host maps to an error category:

- ``exception``: the tool raised (``type``, ``message``, ``traceback``);
- ``unknown_tool``: no tool of that name;
- ``bad_arguments``: the args do not fit the tool's signature;
- ``bad_request``: the call frame itself is not usable;
- ``unencodable_result``: the tool returned something MessagePack can't hold;
- ``cancelled``: the host cancelled the call before it started;
- ``adapter_load`` (id 0, before ``ready``): the adapter failed to load.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from typing import Any, Callable, Dict, Optional, Tuple

from . import codec
from .adapter import BaseAdapter, load_adapter
from .channel import DEFAULT_MAX_FRAME, Channel, ProtocolError
from .control import Cancellation, ControlThread, _state
from .errors import error_body

__all__ = ["PROTOCOL_VERSION", "Worker", "serve", "error_body"]

PROTOCOL_VERSION = 1


class LogForwarder(logging.Handler):
    """Sends Python log records to Elixir's Logger as ``log`` frames."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            body = {
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": self.format(record),
            }
            self.channel.write("log", 0, body)
        except Exception:  # logging must never break the worker
            self.handleError(record)


class Worker:
    """Serves one adapter over one channel."""

    def __init__(self, adapter: BaseAdapter, channel: Channel, cancellation: Cancellation = _state) -> None:
        self.adapter = adapter
        self.channel = channel
        self.cancellation = cancellation
        self.tools: Dict[str, Callable[..., Any]] = adapter.tools()

    def handshake(self, adapter_path: str) -> None:
        self.channel.write(
            "ready",
            0,
            {
                "protocol": PROTOCOL_VERSION,
                "pid": os.getpid(),
                "adapter": adapter_path,
                "tools": sorted(self.tools),
                "codec": codec.NAME,
                "python": sys.version.split()[0],
            },
        )

    def run(self) -> None:
        """Serves frames until stdin closes."""
        while True:
            raw = self.channel.read_raw()
            if raw is None:
                return
            self.handle(raw)

    def handle(self, raw: bytes) -> None:
        try:
            frame = codec.unpackb(raw)
            kind, request_id, body = frame
        except Exception as exc:
            request_id = _salvage_id(raw)
            if request_id:
                self._reply_error(request_id, error_body("bad_request", exc, message=f"undecodable call: {exc}"))
            return
        if kind == "call":
            if not self.cancellation.begin(request_id):
                msg = "the call was cancelled before it started"
                self._reply_error(request_id, error_body("cancelled", message=msg))
                return
            try:
                self.call(request_id, body)
            finally:
                self.cancellation.end()
        elif kind == "heartbeat":
            self.channel.write("heartbeat", request_id, None)
        elif kind == "cancel":
            # Hosts send cancels on the control pipe; one on stdin can only
            # name a call that has not started.
            self.cancellation.cancel(request_id)

    def call(self, request_id: int, body: Any) -> None:
        if not isinstance(body, dict):
            self._reply_error(request_id, error_body("bad_request", message="call body is not a map"))
            return
        name = body.get("tool")
        args = body.get("args")
        fn = self.tools.get(name) if isinstance(name, str) else None
        if fn is None:
            known = ", ".join(sorted(self.tools))
            msg = f"unknown tool {_quote(name)}; this adapter has: {known}"
            self._reply_error(request_id, error_body("unknown_tool", message=msg, tool=_text(name)))
            return
        if args is None:
            args = {}
        if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            msg = "args must be a map with string keys (they become keyword arguments)"
            self._reply_error(request_id, error_body("bad_arguments", message=msg, tool=name))
            return
        try:
            result = fn(**args)
        except TypeError as exc:
            # The call itself failed to bind (missing/extra kwargs), or the
            # tool raised TypeError from inside; only the first is bad_arguments.
            kind = "exception" if _binds(fn, args) else "bad_arguments"
            self._reply_error(request_id, error_body(kind, exc, tool=name))
            return
        except Exception as exc:
            self._reply_error(request_id, error_body("exception", exc, tool=name))
            return
        try:
            self.channel.write_encoded(self.channel.encode("result", request_id, result))
        except Exception as exc:
            msg = f"the result of tool {name!r} cannot be sent: {exc}"
            self._reply_error(request_id, error_body("unencodable_result", exc, message=msg, tool=name))

    def _reply_error(self, request_id: int, body: Dict[str, Any]) -> None:
        self.channel.write("error", request_id, body)


def _binds(fn: Callable[..., Any], args: Dict[str, Any]) -> bool:
    try:
        inspect.signature(fn).bind(**args)
        return True
    except TypeError:
        return False
    except ValueError:  # no signature available (builtins)
        return True


_QUOTE_LIMIT = 200


def _quote(value: Any) -> str:
    """``repr(value)`` for an error message, cut short: the caller's data can
    be of any size, and the message is sent back and logged."""
    if isinstance(value, (str, bytes)) and len(value) > _QUOTE_LIMIT:
        size = len(value.encode("utf-8", "replace")) if isinstance(value, str) else len(value)
        return f"{value[:_QUOTE_LIMIT]!r}\u2026 ({size} bytes)"
    text = repr(value)
    return text if len(text) <= _QUOTE_LIMIT else f"{text[:_QUOTE_LIMIT]}\u2026 ({len(text)} characters)"


def _text(value: Any) -> Optional[str]:
    """A string field of an error body (e.g. ``tool``), cut like quotes are."""
    if not isinstance(value, str):
        return None
    return value if len(value) <= _QUOTE_LIMIT else _quote(value)


# The envelope prefix of a call frame, in each MessagePack form an encoder may
# choose: an array of 3, then the str "call".
_ARRAY_OF_3 = (b"\x93", b"\xdc\x00\x03", b"\xdd\x00\x00\x00\x03")
_CALL = (b"\xa4call", b"\xd9\x04call", b"\xda\x00\x04call", b"\xdb\x00\x00\x00\x04call")
_UINT_SIZES = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}


def _salvage_id(raw: bytes) -> int:
    """The id of a ``call`` frame whose body cannot be decoded, or 0.

    Parsed by hand, so it works whichever codec is installed: an array of 3,
    the str ``call``, then a uint id; what follows is not looked at."""
    pos = _after_prefix(raw, 0, _ARRAY_OF_3)
    pos = _after_prefix(raw, pos, _CALL) if pos >= 0 else -1
    if pos < 0 or pos >= len(raw):
        return 0
    tag = raw[pos]
    if tag <= 0x7F:  # positive fixint
        return tag
    size = _UINT_SIZES.get(tag, 0)
    id_bytes = raw[pos + 1 : pos + 1 + size]
    return int.from_bytes(id_bytes, "big") if size and len(id_bytes) == size else 0


def _after_prefix(raw: bytes, pos: int, prefixes: Tuple[bytes, ...]) -> int:
    """The position after whichever of ``prefixes`` is at ``pos``, or -1."""
    for prefix in prefixes:
        if raw.startswith(prefix, pos):
            return pos + len(prefix)
    return -1


def serve(adapter_path: str, in_fd: int, out_fd: int) -> int:
    """Loads the adapter, sends ``ready`` and serves calls. Returns the exit code."""
    max_frame = int(os.environ.get("SNAKEPIT_MAX_FRAME_BYTES", DEFAULT_MAX_FRAME))
    channel = Channel(in_fd, out_fd, max_frame)
    try:
        adapter = load_adapter(adapter_path)
    except Exception as exc:
        channel.write("error", 0, error_body("adapter_load", exc))
        return 3
    root = logging.getLogger()
    root.addHandler(LogForwarder(channel))
    if root.level == logging.WARNING:  # untouched default
        root.setLevel(logging.INFO)
    worker = Worker(adapter, channel)
    control_fd = os.environ.pop("SNAKEPIT_CONTROL_FD", None)
    if control_fd is not None:
        fd = int(control_fd)
        os.set_inheritable(fd, False)
        ControlThread(Channel(fd, out_fd, max_frame), channel).start()
    worker.handshake(adapter_path)
    try:
        worker.run()
    except ProtocolError as exc:
        print(f"snakepit_bridge: {exc}", file=sys.stderr)
        return 4
    finally:
        adapter.close()
    return 0
