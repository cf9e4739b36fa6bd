"""Python calls Elixir: ``ctx.call_elixir(name, **kwargs)``.

A tool that takes a ``ctx`` runs a function the pool's Elixir side
registered (the pool option ``elixir_tools``, or ``Snakepit.register_tool/3``;
see ``Snakepit.ElixirTools``)::

    @tool
    def greet(self, ctx: Context, user_id: int) -> str:
        user = ctx.call_elixir("lookup_user", id=user_id)
        return f"hello {user['name']}"

    @tool
    async def greet_async(self, ctx: Context, user_id: int) -> str:
        user = await ctx.call_elixir_async("lookup_user", id=user_id, _timeout=2.0)
        return f"hello {user['name']}"

The keyword arguments arrive in Elixir as a map with string keys, encoded as
a result is (a numpy array becomes a ``%Snakepit.Tensor{}``); the function's
value comes back decoded as call arguments are (a tensor as a read-only
numpy array). ``_timeout`` (seconds) bounds the function's run, the pool's
``elixir_tool_timeout`` when it is not given. When the function fails (an
``{:error, _}``, a raise, an exit, a throw), is not registered, or runs out
of time, :class:`ElixirError` is raised with the fields of the Elixir
``%Snakepit.Error{}``: ``category`` (``"elixir_error"``, ``"validation"``,
``"timeout"``, or the category of an error the function returned),
``message`` and ``details``. A cancel of the tool's call interrupts the
wait: :class:`~snakepit_bridge.CallCancelled` is raised in a plain tool (an
``async`` tool's task is cancelled), and the Elixir side stops the function.

On the wire (see docs/protocol.md): the worker writes ``elixir_call`` on
stdout, with an id of its own (a counter), and the host answers with
``elixir_reply`` on the control pipe, which the control thread hands to
:meth:`ElixirCalls.reply`: the thread that called waits for it, since it
cannot read stdin while inside its tool. ``elixir_cancel`` tells the host
that nobody waits any more. Every method is thread-safe: several tools, on
threads or on one event loop, may wait at once.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .control import CallCancelled
from .errors import ToolError

if TYPE_CHECKING:
    from .channel import Channel
    from .control import CallScope

__all__ = ["ElixirError", "ElixirCalls", "calls"]

#: The longest function name the host takes, in bytes.
MAX_NAME_BYTES = 255
#: The longest timeout the host can keep, in milliseconds (2^32 - 1).
MAX_TIMEOUT_MS = 0xFFFF_FFFF
# How much longer than the function's timeout to wait for the host's reply
# before giving up on it here (the host replies at the timeout itself).
_BACKSTOP = 5.0
# A waiting thread looks at its call's cancellation at least this often (a
# cancel also wakes it at once).
_SLICE = 0.25


class ElixirError(ToolError):
    """An Elixir function called with ``ctx.call_elixir`` failed.

    - ``name``: the function's name;
    - ``category``: ``"elixir_error"`` (it returned ``{:error, reason}``,
      raised, exited or threw), ``"validation"`` (no function of that name,
      or a value that cannot cross), ``"timeout"`` (it ran past its
      timeout and was killed), or the category of the ``%Snakepit.Error{}``
      it returned or raised (``"timeout"``, ``"pool"``, ...);
    - ``message``: what went wrong;
    - ``details``: a dict (for a raise: ``"kind"``, ``"exception"``,
      ``"stacktrace"``).

    A :class:`ToolError` whose ``code`` is the category: left uncaught, it
    fails the tool's call with those details for the Elixir caller.
    """

    name: str
    category: str

    def __init__(self, name: str, category: str, message: str, details: Optional[Mapping[Any, Any]] = None) -> None:
        super().__init__(message, code=category, details=details)
        self.name = name
        self.category = category

    def __repr__(self) -> str:
        return f"ElixirError(name={self.name!r}, category={self.category!r}, message={self.message!r})"


# The outcome of a waiter whose call was cancelled before its reply came.
_CANCELLED: Any = object()


class _Sender:
    """Writes ``elixir_call`` and ``elixir_cancel`` frames from a thread of
    its own, in the order they are queued.

    Not from the tool's thread: a cancel raises CallCancelled in that thread
    at any bytecode, and a large frame takes several writes, so a frame cut
    there would break the protocol. Queueing (a C call) cannot be cut; the
    thread then writes whole frames, under the channel's lock."""

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[Tuple[Channel, Any]]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Starts the thread (once; before any tool runs)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="snakepit-elixir", daemon=True)
            self._thread.start()

    def send(self, channel: "Channel", payload: Any) -> None:
        self._queue.put((channel, payload))

    def _run(self) -> None:
        while True:
            channel, payload = self._queue.get()
            try:
                channel.write_encoded(payload)
            except OSError:  # the host is gone; the worker ends at stdin's EOF
                pass


class _Waiter:
    """One call waiting for its reply: a thread blocked on ``lock`` (held
    from the start, released once), or a future of ``loop``."""

    __slots__ = ("request_id", "reply", "lock", "loop", "future")

    def __init__(
        self,
        request_id: int,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        future: "Optional[asyncio.Future[Any]]" = None,
    ) -> None:
        self.request_id = request_id
        # None until settled, under ElixirCalls._lock: the reply's body, or _CANCELLED.
        self.reply: Any = None
        self.loop = loop
        self.future = future
        self.lock = threading.Lock()
        if future is None:
            self.lock.acquire()


class ElixirCalls:
    """The calls this worker's tools are waiting on, by call id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: Dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self._channel: Optional["Channel"] = None
        self._default_ms: Optional[int] = None
        self._sender = _Sender()

    def configure(self, channel: "Channel", default_timeout_ms: Optional[int] = None) -> None:
        """Calls go out on ``channel`` (the worker's stdout). Without a
        default timeout, it is read from ``SNAKEPIT_ELIXIR_TIMEOUT_MS``,
        which a host that serves these calls sets; without either, calls
        fail with an :class:`ElixirError` of category ``"pool"``."""
        if default_timeout_ms is None:
            text = os.environ.get("SNAKEPIT_ELIXIR_TIMEOUT_MS", "")
            default_timeout_ms = int(text) if text.isdigit() and int(text) > 0 else None
        self._channel = channel
        self._default_ms = default_timeout_ms
        self._sender.start()

    def pending(self) -> int:
        """How many calls wait for their reply."""
        with self._lock:
            return len(self._waiters)

    # --- the waiting side (tool threads, the event loop) ---

    def call(
        self,
        request_id: int,
        cancellation: "CallScope",
        name: str,
        args: Dict[str, Any],
        timeout: Optional[float] = None,
    ) -> Any:
        """Runs Elixir function ``name`` with ``args`` and returns its value,
        blocking this thread. ``request_id`` is the tool's call; a cancel of
        it raises :class:`CallCancelled` here."""
        channel, timeout_ms = self._prepare(name, timeout)
        if cancellation.is_set():
            raise CallCancelled()
        waiter = _Waiter(request_id)
        call_id = self._register(waiter)
        sent = False
        try:
            # A cancel that came before the waiter was registered did not wake it.
            if cancellation.is_set():
                raise CallCancelled()
            self._send(channel, call_id, name, args, timeout_ms, request_id)
            sent = True
            deadline = time.monotonic() + timeout_ms / 1000 + _BACKSTOP
            while not waiter.lock.acquire(timeout=min(max(deadline - time.monotonic(), 0.0), _SLICE)):
                if cancellation.is_set():
                    raise CallCancelled()
                if time.monotonic() >= deadline:
                    raise _no_reply(name, timeout_ms)
            if waiter.reply is _CANCELLED:
                raise CallCancelled()
            return _outcome(name, waiter.reply)
        finally:
            self._finish(call_id, sent)

    async def call_async(
        self,
        request_id: int,
        cancellation: "CallScope",
        name: str,
        args: Dict[str, Any],
        timeout: Optional[float] = None,
    ) -> Any:
        """:meth:`call` for a coroutine: awaits the reply on the running
        loop. A cancel of the tool's call cancels the await."""
        channel, timeout_ms = self._prepare(name, timeout)
        if cancellation.is_set():
            raise asyncio.CancelledError()
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[Any]" = loop.create_future()
        call_id = self._register(_Waiter(request_id, loop, future))
        sent = False
        try:
            if cancellation.is_set():
                raise asyncio.CancelledError()
            self._send(channel, call_id, name, args, timeout_ms, request_id)
            sent = True
            try:
                reply = await asyncio.wait_for(future, timeout_ms / 1000 + _BACKSTOP)
            except asyncio.TimeoutError:
                raise _no_reply(name, timeout_ms) from None
            return _outcome(name, reply)
        finally:
            self._finish(call_id, sent)

    def _prepare(self, name: str, timeout: Optional[float]) -> Tuple["Channel", int]:
        if not isinstance(name, str) or not 0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES:
            raise ValueError(f"an Elixir function's name is a str of 1 to {MAX_NAME_BYTES} bytes, got {name!r:.100}")
        channel, default_ms = self._channel, self._default_ms
        if channel is None or default_ms is None:
            msg = "ctx.call_elixir needs a worker started by a Snakepit host that serves it"
            msg += " (SNAKEPIT_ELIXIR_TIMEOUT_MS is not set)"
            raise ElixirError(name, "pool", msg)
        if timeout is None:
            return channel, default_ms
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"_timeout is a number of seconds > 0, got {timeout!r:.100}")
        timeout_ms = math.ceil(timeout * 1000)
        if timeout_ms > MAX_TIMEOUT_MS:
            raise ValueError(f"_timeout is at most {MAX_TIMEOUT_MS / 1000} seconds, got {timeout!r}")
        return channel, timeout_ms

    def _register(self, waiter: _Waiter) -> int:
        with self._lock:
            call_id = next(self._ids)
            self._waiters[call_id] = waiter
        return call_id

    def _send(
        self, channel: "Channel", call_id: int, name: str, args: Dict[str, Any], timeout_ms: int, request_id: int
    ) -> None:
        body = {"name": name, "args": args, "timeout_ms": timeout_ms, "request_id": request_id}
        try:
            payload = channel.encode("elixir_call", call_id, body)
        except Exception as exc:  # nothing was sent
            msg = f"the arguments of Elixir function {name!r} cannot be sent: {exc}"
            raise ElixirError(name, "validation", msg) from exc
        self._sender.send(channel, payload)

    def _finish(self, call_id: int, sent: bool) -> None:
        """The waiter of ``call_id`` is done. If its call was sent and no
        reply came for it, the host is told that nobody waits
        (``elixir_cancel``), so it stops the function."""
        with self._lock:
            abandoned = self._waiters.pop(call_id, None) is not None
        channel = self._channel
        if sent and abandoned and channel is not None:
            self._sender.send(channel, channel.encode("elixir_cancel", call_id, None))

    # --- the control thread's side ---

    def reply(self, call_id: int, body: Any) -> None:
        """The host's ``elixir_reply`` for ``call_id`` (ignored if nobody
        waits for it any more)."""
        with self._lock:
            waiter = self._waiters.pop(call_id, None)
            if waiter is None or waiter.reply is not None:
                return
            waiter.reply = body
        _wake(waiter)

    def cancelled(self, request_id: int) -> None:
        """The host cancelled call ``request_id``: its waiters stop waiting."""
        with self._lock:
            woken: List[_Waiter] = [w for w in self._waiters.values() if w.request_id == request_id and w.reply is None]
            for waiter in woken:
                waiter.reply = _CANCELLED
        for waiter in woken:
            _wake(waiter)


def _wake(waiter: _Waiter) -> None:
    """Hands a settled waiter its outcome: once, from whichever thread settled it."""
    if waiter.future is None:
        waiter.lock.release()
        return
    assert waiter.loop is not None
    try:
        waiter.loop.call_soon_threadsafe(_settle, waiter.future, waiter.reply)
    except RuntimeError:  # the loop is closed: nobody awaits
        pass


def _settle(future: "asyncio.Future[Any]", reply: Any) -> None:
    if future.done():
        return
    if reply is _CANCELLED:
        future.cancel()
    else:
        future.set_result(reply)


def _no_reply(name: str, timeout_ms: int) -> ElixirError:
    msg = f"no reply for Elixir function {name!r} within {timeout_ms} ms and {_BACKSTOP:g} s more"
    return ElixirError(name, "timeout", msg, {"timeout_ms": timeout_ms})


def _outcome(name: str, body: Any) -> Any:
    """The value of an ``elixir_reply`` body, or the ElixirError it says."""
    if isinstance(body, dict):
        if "value" in body:
            return body["value"]
        error = body.get("error")
        if isinstance(error, dict):
            details = error.get("details")
            raise ElixirError(
                name,
                _text(error.get("category")) or "elixir_error",
                _text(error.get("message")) or "the Elixir function failed",
                details if isinstance(details, dict) else None,
            )
    raise ElixirError(name, "transport", f"the host sent a malformed elixir_reply: {body!r:.200}")


def _text(value: Any) -> Optional[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None


def decode_control_frame(raw: bytes, blobs: Sequence[bytes]) -> Tuple[Any, Any, Any]:
    """A control pipe frame as ``(kind, id, body)``. An ``elixir_reply``
    whose value this worker cannot take (a tensor without numpy, say) comes
    out as an error reply, so that its caller gets an :class:`ElixirError`
    and the control thread goes on."""
    from . import codec

    try:
        kind, request_id, body = codec.unpackb_with_blobs(raw, blobs)
        return kind, request_id, body
    except Exception as exc:
        call_id = _reply_id(raw)
        if call_id is None:
            raise
        message = f"the reply could not be decoded in this worker: {exc}"
        return "elixir_reply", call_id, {"error": {"category": "validation", "message": message, "details": {}}}


# The envelope prefix of an `elixir_reply` frame, as the host writes it: an
# array of 3, then the str "elixir_reply", then a uint id.
_REPLY_PREFIX = b"\x93\xacelixir_reply"
_UINT_SIZES = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}


def _reply_id(raw: bytes) -> Optional[int]:
    if not raw.startswith(_REPLY_PREFIX) or len(raw) <= len(_REPLY_PREFIX):
        return None
    pos = len(_REPLY_PREFIX)
    tag = raw[pos]
    if tag <= 0x7F:
        return tag
    size = _UINT_SIZES.get(tag, 0)
    id_bytes = raw[pos + 1 : pos + 1 + size]
    return int.from_bytes(id_bytes, "big") if size and len(id_bytes) == size else None


#: The worker's calls (configured by ``serve``).
calls = ElixirCalls()
