"""The worker loop: handshake, then calls until stdin closes.

A worker runs one call at a time on its main thread (:class:`Worker`), or,
with the pool's ``concurrency`` N > 1 (``SNAKEPIT_CONCURRENCY``), up to N at
once (:class:`ConcurrentWorker`): each on a thread of its own, the
coroutines of ``async`` tools on one asyncio loop. Either way the main
thread reads stdin only when a call may start, so calls the host wrote
ahead stay in the pipe, where it can take them back (``reclaim``).

Every ``call`` frame gets exactly one ``result`` or ``error`` frame with the
same id; a streaming call (``stream`` = W >= 1) gets ``chunk`` frames first
and ends with ``done`` or ``error`` instead (see ``streaming.py``). Errors
carry a ``kind`` the host maps to an error category:

- ``exception``: the tool raised (``type``, ``message``, ``traceback``);
- ``unknown_tool``: no tool of that name;
- ``bad_arguments``: the args do not fit the tool's signature;
- ``bad_request``: the call frame itself is not usable;
- ``unencodable_result``: the tool returned (or yielded) something
  MessagePack can't hold, or that is over the frame limit;
- ``cancelled``: the host cancelled the call before it started, or while it
  streamed (or collected a generator's items);
- ``adapter_load`` (id 0, before ``ready``): the adapter failed to load.

``session_end`` frames (stdin, id 0) end a session the worker holds (see
``context.py``); nothing answers them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from types import CoroutineType
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import codec, elixir, shm, tensor
from .adapter import BaseAdapter, load_adapter
from .aio import EventLoop, Loop, LoopThread
from .channel import DEFAULT_MAX_FRAME, Channel, ProtocolError
from .context import Context, Sessions
from .control import CallCancelled, Calls, CallScope, Cancellation, ControlThread, Credits, _state, current_scope
from .correlation import OutputCapture, install_record_factory
from .errors import error_body
from .streaming import GENERATOR_TYPES, TOOL_ERRORS, collect, items_of, one_item, stream

__all__ = ["PROTOCOL_VERSION", "ConcurrentWorker", "Worker", "serve", "error_body"]

PROTOCOL_VERSION = 3

_log = logging.getLogger(__name__)


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
                "correlation_id": getattr(record, "correlation_id", None),
            }
            self.channel.write("log", 0, body)
        except Exception:  # logging must never break the worker
            self.handleError(record)


# A ``call`` frame that passed validation: tool, fn, args, session_id,
# window (None: a plain call), wants_ctx, correlation_id. A tuple rather
# than a dataclass: making an object costs as much as 5% of a tiny call.
_Call = Tuple[str, Callable[..., Any], Dict[str, Any], Optional[str], Optional[int], bool, Optional[str]]


class Worker:
    """Serves one adapter over one channel, one call at a time."""

    concurrency = 1

    def __init__(
        self,
        adapter: BaseAdapter,
        channel: Channel,
        cancellation: Cancellation = _state,
        credits: Optional[Credits] = None,
    ) -> None:
        self.adapter = adapter
        self.channel = channel
        self.cancellation = cancellation
        self.credits = credits if credits is not None else Credits(cancellation)
        cancellation.credits = self.credits
        # What the control thread tells of cancels, acks and reclaims.
        self.state: Union[Cancellation, Calls] = cancellation
        self.tools: Dict[str, Callable[..., Any]] = adapter.tools()
        self.sessions = Sessions()
        self.loop: Loop = EventLoop()
        self.output = OutputCapture(channel, shared=self.concurrency > 1)
        self._takes_ctx: Dict[str, bool] = {}
        # Shared-memory segments an `shm` frame announced, for the next frame.
        self._segments: Optional[List[Any]] = None
        self._carried: List[bytes] = []

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
                "concurrency": self.concurrency,
                "concurrent_sessions": bool(getattr(self.adapter, "concurrent_sessions", False)),
            },
        )

    def run(self) -> None:
        """Serves frames until stdin closes."""
        while True:
            raw = self.channel.read_raw()
            if raw is None:
                return
            self.handle(raw, self.channel.take_blobs())

    def close(self) -> None:
        """Closes the event loop, if a call needed one."""
        self.loop.close()

    def handle(self, raw: bytes, blobs: Sequence[bytes] = ()) -> bool:
        """Acts on one frame read from stdin. True if it was a call handed
        to a thread of its own (:class:`ConcurrentWorker`), which frees its
        slot when answered."""
        segments, self._segments = self._segments, None
        if self._carried:  # blobs read before an `shm` frame belong to the frame after it
            blobs, self._carried = [*self._carried, *blobs], []
        try:
            if segments:
                with shm.incoming(segments):
                    frame = codec.unpackb_with_blobs(raw, blobs)
            else:
                frame = codec.unpackb_with_blobs(raw, blobs) if blobs else codec.unpackb(raw)
            kind, request_id, body = frame
        except Exception as exc:
            request_id = _salvage_id(raw)
            if request_id:
                self._reply_error(request_id, error_body("bad_request", exc, message=f"undecodable call: {exc}"))
            return False
        if kind == "call":
            return self.take_call(request_id, body)
        if kind == "shm":
            self._carried = list(blobs)
            try:
                self._segments = shm.receive(body if isinstance(body, list) else [], request_id)
            except (OSError, shm.ShmError) as exc:
                # The call that follows fails to decode, as a bad_request.
                _log.warning("could not receive the shared-memory segments of call %s: %s", request_id, exc)
        elif kind == "session_end":
            self.end_session(body)
        elif kind == "heartbeat":
            self.channel.write("heartbeat", request_id, None)
        elif kind == "cancel":
            # Hosts send cancels on the control pipe; one on stdin can only
            # name a call that has not started.
            self.state.cancel(request_id)
        return False

    def take_call(self, request_id: int, body: Any) -> bool:
        """Runs a ``call`` frame now, unless it was cancelled or given back
        before it began."""
        skip = self.cancellation.begin(request_id)
        if skip is not None:
            self._skip(request_id, skip)
            return False
        try:
            self.call(request_id, body, self.cancellation)
        finally:
            self.cancellation.end()
        return False

    def _skip(self, request_id: int, why: str) -> None:
        if why == "cancelled":
            msg = "the call was cancelled before it started"
            self._reply_error(request_id, error_body("cancelled", message=msg))
        # "reclaimed": the host has it back, and wants no answer

    def call(self, request_id: int, body: Any, scope: CallScope) -> None:
        parsed = self._parse(body)
        if isinstance(parsed, dict):  # the body of the error that answers it
            self._reply_error(request_id, parsed)
            return
        tool, fn, args, session_id, window, wants_ctx, correlation_id = parsed
        session = self.sessions.enter(session_id) if session_id is not None else None
        token = self.output.begin(correlation_id)
        try:
            if wants_ctx:
                ctx = Context(session, request_id, window is not None, scope, correlation_id)
                args = {**args, "ctx": ctx}
            self._run(request_id, tool, fn, args, window, scope)
        finally:
            self.output.end(token)
            if session is not None:
                self.sessions.leave(session)

    def end_session(self, body: Any) -> None:
        """Forgets a session, after the adapter's ``on_session_end`` hook."""
        session_id = body.get("session_id") if isinstance(body, dict) else None
        if not isinstance(session_id, str):
            _log.warning("ignored a session_end whose body has no session_id string: %s", _quote(body))
            return
        session = self.sessions.get(session_id)
        if session is None:
            return
        try:
            self.adapter.on_session_end(session)
        except Exception:
            _log.exception("on_session_end raised for session %s", _quote(session_id))
        finally:
            self.sessions.pop(session_id)

    def _parse(self, body: Any) -> Union[_Call, Dict[str, Any]]:
        """The validated call, or the body of the error that answers it."""
        if not isinstance(body, dict):
            return error_body("bad_request", message="call body is not a map")
        window = body.get("stream")
        if window is not None and not (_is_int(window) and window >= 1):
            msg = f"stream must be nil (a plain call) or an integer >= 1 (a credit window), got {_quote(window)}"
            return error_body("bad_request", message=msg)
        session_id = body.get("session_id")
        if session_id is not None and not isinstance(session_id, str):
            return error_body("bad_request", message=f"session_id must be a string or nil, got {_quote(session_id)}")
        correlation_id = body.get("correlation_id")
        if correlation_id is not None and not isinstance(correlation_id, str):
            msg = f"correlation_id must be a string or nil, got {_quote(correlation_id)}"
            return error_body("bad_request", message=msg)
        name = body.get("tool")
        args = body.get("args")
        fn = self.tools.get(name) if isinstance(name, str) else None
        if fn is None:
            known = ", ".join(sorted(self.tools))
            msg = f"unknown tool {_quote(name)}; this adapter has: {known}"
            return error_body("unknown_tool", message=msg, tool=_text(name))
        assert isinstance(name, str)
        if args is None:
            args = {}
        if not isinstance(args, dict) or not all(map(isinstance, args, _STR)):  # all(isinstance(key, str))
            msg = "args must be a map with string keys (they become keyword arguments)"
            return error_body("bad_arguments", message=msg, tool=name)
        wants_ctx = self._takes_ctx.get(name)
        if wants_ctx is None:
            wants_ctx = self._takes_ctx[name] = _has_ctx_parameter(fn)
        if wants_ctx and "ctx" in args:
            msg = f"tool {name!r} receives the call's context as its ctx parameter: the args cannot have a 'ctx' key"
            return error_body("bad_arguments", message=msg, tool=name)
        return name, fn, args, session_id, window, wants_ctx, correlation_id

    def _run(
        self,
        request_id: int,
        tool: str,
        fn: Callable[..., Any],
        args: Dict[str, Any],
        window: Optional[int],
        scope: CallScope,
    ) -> None:
        """Runs the tool and answers the call (``window``: None for a plain call)."""
        try:
            with scope:  # a cancel raises CallCancelled in the tool
                result = fn(**args)
        except CallCancelled:
            self._reply_cancelled(request_id, tool)
            return
        except TypeError as exc:
            # The call itself failed to bind (missing/extra kwargs), or the
            # tool raised TypeError from inside; only the first is bad_arguments.
            kind = "exception" if _binds(fn, args) else "bad_arguments"
            self._reply_error(request_id, error_body(kind, exc, tool=tool))
            return
        except Exception as exc:
            self._reply_error(request_id, error_body("exception", exc, tool=tool))
            return
        if isinstance(result, CoroutineType):
            try:
                result = self.loop.run(result, scope)
            except TOOL_ERRORS as exc:
                if scope.is_set() and isinstance(exc, asyncio.CancelledError):
                    self._reply_cancelled(request_id, tool)
                else:
                    self._reply_error(request_id, error_body("exception", exc, tool=tool))
                return
        if window is None:
            self._answer(request_id, tool, result, scope)
        else:
            items = items_of(result, self.loop, scope) or one_item(result)
            if scope.credits is None:
                scope.credits = Credits(scope)
            stream(
                request_id,
                tool,
                items,
                window,
                channel=self.channel,
                credits=scope.credits,
                cancellation=scope,
            )

    def _answer(self, request_id: int, name: str, result: Any, scope: CallScope) -> None:
        """Answers a plain call with one ``result`` (a generator's items as a list)."""
        items = items_of(result, self.loop, scope) if isinstance(result, GENERATOR_TYPES) else None
        if items is not None:
            try:
                collected = collect(items, name, scope)
            except CallCancelled:
                collected = None
            except TOOL_ERRORS as exc:
                if not (scope.is_set() and isinstance(exc, asyncio.CancelledError)):
                    self._reply_error(request_id, error_body("exception", exc, tool=name))
                    return
                collected = None
            if collected is None:
                self._reply_cancelled(request_id, name)
                return
            result = collected
        try:
            parts = None
            if getattr(result, "nbytes", 0) >= _DIRECT_BYTES and hasattr(result, "dtype") and not _by_segment(result):
                parts = tensor.encode_parts(result)  # a large numpy array, written from its own memory
            if parts is not None:
                self.channel.write_ext("result", request_id, tensor.EXT_TYPE, *parts)
            elif isinstance(result, (bytes, bytearray)) and len(result) >= _DIRECT_BYTES and not _by_segment(result):
                self.channel.write_bytes("result", request_id, result)
            else:
                self.channel.write_encoded(self.channel.encode("result", request_id, result))
        except Exception as exc:
            msg = f"the result of tool {name!r} cannot be sent: {exc}"
            self._reply_error(request_id, error_body("unencodable_result", exc, message=msg, tool=name))

    def _reply_error(self, request_id: int, body: Dict[str, Any]) -> None:
        self.channel.write("error", request_id, body)

    def _reply_cancelled(self, request_id: int, tool: str) -> None:
        msg = "the call was cancelled while it ran"
        self._reply_error(request_id, error_body("cancelled", message=msg, tool=tool))


class ConcurrentWorker(Worker):
    """Serves one adapter, running up to ``concurrency`` calls at once.

    The main thread takes a slot before it reads a frame from stdin, so at
    most ``concurrency`` calls have been read and not answered, and the
    calls the host wrote behind them stay in the pipe (where a ``reclaim``
    can take them back). Each call runs on a thread of a pool of
    ``concurrency`` threads, with a :class:`CallScope` of its own; an
    ``async`` tool's coroutine runs on the worker's one asyncio loop
    (:class:`LoopThread`) while its thread waits. A call frees its slot
    only after its answer is written: the host relies on it (a call's
    answer comes only once every call written before it has begun)."""

    def __init__(self, adapter: BaseAdapter, channel: Channel, concurrency: int) -> None:
        self.concurrency = concurrency
        super().__init__(adapter, channel, Cancellation())
        self.calls = Calls()
        self.state = self.calls
        self.loop = LoopThread()
        self._slots = threading.BoundedSemaphore(concurrency)
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="snakepit-call")

    def run(self) -> None:
        """Serves frames until stdin closes, then waits for the calls running."""
        try:
            while True:
                self._slots.acquire()
                raw = self.channel.read_raw()
                if raw is None:
                    self._slots.release()
                    return
                if not self.handle(raw, self.channel.take_blobs()):
                    self._slots.release()
        finally:
            for _ in range(self.concurrency):
                self._slots.acquire()
            self._threads.shutdown()

    def close(self) -> None:
        try:
            self.output.close()
        finally:
            super().close()

    def take_call(self, request_id: int, body: Any) -> bool:
        scope = self.calls.begin(request_id)
        if isinstance(scope, str):
            self._skip(request_id, scope)
            return False
        self._threads.submit(self._serve, request_id, body, scope)
        return True

    def _serve(self, request_id: int, body: Any, scope: CallScope) -> None:
        token = current_scope.set(scope)
        try:
            self.call(request_id, body, scope)
        except BaseException as exc:  # noqa: BLE001
            # A tool raised SystemExit (or another BaseException the bridge
            # does not answer): on the main thread of a Worker it would end
            # the process, so it does here too. The host fails every call
            # the worker was running with a :worker error.
            _log.critical("call %s raised %r: the worker exits", request_id, exc)
            code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
            os._exit(code)
        finally:
            self.calls.end(request_id)
            current_scope.reset(token)
            self._slots.release()


# A bytes result this large is written straight from its buffer rather
# than encoded into a new one (a 1 MiB packb costs ~0.6 ms: bench/payload.exs).
_DIRECT_BYTES = 64 * 1024


def _by_segment(value: Any) -> bool:
    """A value at least the shared-memory threshold: it goes by segment."""
    limit = shm.threshold()
    return bool(limit) and getattr(value, "nbytes", len(value) if isinstance(value, (bytes, bytearray)) else 0) >= limit


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_ctx_parameter(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes a ``ctx`` argument by keyword."""
    try:
        param = inspect.signature(fn).parameters.get("ctx")
    except (TypeError, ValueError):  # no signature available (builtins)
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def _binds(fn: Callable[..., Any], args: Dict[str, Any]) -> bool:
    try:
        inspect.signature(fn).bind(**args)
        return True
    except TypeError:
        return False
    except ValueError:  # no signature available (builtins)
        return True


# `str` for ever: all(map(isinstance, keys, _STR)) checks keys without a
# generator, whose frame would cost more than the rest of the check.
_STR = repeat(str)

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


def _concurrency(text: Optional[str]) -> int:
    """The calls to run at once, from ``SNAKEPIT_CONCURRENCY`` (1 if unset)."""
    try:
        n = int(text) if text else 1
    except ValueError:
        n = 0
    if n < 1:
        _log.warning("ignored SNAKEPIT_CONCURRENCY=%r: not an integer >= 1", text)
        return 1
    return n


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
    install_record_factory()
    root.addHandler(LogForwarder(channel))
    if root.level == logging.WARNING:  # untouched default
        root.setLevel(logging.INFO)
    concurrency = _concurrency(os.environ.get("SNAKEPIT_CONCURRENCY"))
    worker = Worker(adapter, channel) if concurrency == 1 else ConcurrentWorker(adapter, channel, concurrency)
    elixir.calls.configure(channel)  # ctx.call_elixir writes on stdout
    shm_fd = os.environ.pop("SNAKEPIT_SHM_FD", None)
    shm.configure(int(shm_fd) if shm_fd else None, int(os.environ.get("SNAKEPIT_SHM_THRESHOLD") or 0))
    control_fd = os.environ.pop("SNAKEPIT_CONTROL_FD", None)
    if control_fd is not None:
        fd = int(control_fd)
        os.set_inheritable(fd, False)
        control = Channel(fd, out_fd, max_frame)
        ControlThread(control, channel, worker.state).start()
    worker.handshake(adapter_path)
    try:
        worker.run()
    except ProtocolError as exc:
        print(f"snakepit_bridge: {exc}", file=sys.stderr)
        return 4
    finally:
        try:
            adapter.close()
        finally:
            worker.close()
    return 0
