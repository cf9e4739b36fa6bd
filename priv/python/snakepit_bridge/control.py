"""The control pipe: cancellation of running calls, and stream credits.

Calls run on the main thread, which reads them from stdin, one at a time
(:class:`Cancellation`), or with ``concurrency`` > 1 several at once on
threads of their own, each with its :class:`CallScope` (:class:`Calls`).
Frames that must be acted on *while* calls run come on a second pipe,
the control pipe (fd 3, named by ``SNAKEPIT_CONTROL_FD``), served by a
daemon thread:

- ``heartbeat``: answered at once, proving the process and its interpreter
  are alive. A worker frozen, or stuck in C code that holds the GIL, misses
  heartbeats and is replaced by the host.
- ``cancel``: the host gave up on a call (its caller timed out or died).
  If it is running, :class:`CallCancelled` is raised inside the tool (a
  plain function or a generator, at its next Python bytecode; an ``async``
  tool's task is cancelled), so its ``finally`` blocks run and the worker
  answers the call as cancelled and goes on; :func:`cancelled` turns true
  as well, and a stream waiting for credits stops at once. If it has not
  started yet, it is skipped. A tool stuck in native code, which neither
  can reach, is killed with its worker after the pool's ``cancel_grace``.
- ``ack``: the host's consumer took ``n`` chunks of a running stream,
  which may send ``n`` more (see :class:`Credits`).
- ``reclaim``: the host takes back a call written behind a long-running one,
  to run it on another worker. If it has not started, the thread answers
  ``reclaimed`` at once and the call is skipped, unanswered, when the main
  thread reaches it; if it has, the ``reclaim`` is ignored.
- ``elixir_reply``: the outcome of an Elixir function a tool called with
  ``ctx.call_elixir``, handed to the tool waiting for it (see
  :mod:`snakepit_bridge.elixir`); a ``cancel`` wakes such a tool too.
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set, Union

if TYPE_CHECKING:
    from .channel import Channel

__all__ = ["CallCancelled", "CallScope", "Calls", "Cancellation", "Credits", "ControlThread", "cancelled"]

_log = logging.getLogger(__name__)


class CallCancelled(BaseException):
    """Raised inside a running tool when the host cancels its call: its
    caller timed out or died, or stopped consuming its stream.

    A ``BaseException``, like ``asyncio.CancelledError``, so that a tool's
    ``except Exception`` does not swallow it; its ``finally`` blocks run.
    A tool may catch it to clean up, but its call is over either way: the
    worker answers it as cancelled unless the tool returns first."""


_get_ident = threading.get_ident


def _raise_in(thread_id: int, exc: Optional[type]) -> None:
    """Schedules ``exc`` in thread ``thread_id`` at its next bytecode, or,
    with None, takes back one scheduled and not raised yet."""
    arg = ctypes.py_object(exc) if exc is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), arg)


class CallScope:
    """One running call, as a cancel reaches it: whether the host cancelled
    it, the thread running its own code, and how to stop its ``async`` task.

    ``with scope:`` around a tool's own synchronous code (its body, a
    generator's next item) is where a cancel raises :class:`CallCancelled`,
    and nowhere else. :class:`Cancellation` is the scope of a worker that
    runs one call at a time; :class:`Calls` makes one per call."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        # Set only under the lock; read without it, as Event.is_set reads
        # its flag. (Not an Event: nothing waits on it, and Event.clear
        # costs a Condition round trip on every call.)
        self._cancelled = False
        # The thread running the tool's own code now (see __enter__), and
        # how to stop an ``async`` tool's task: what cancel() interrupts.
        self._tool_thread: Optional[int] = None
        self._stop_task: Optional[Callable[[], None]] = None
        # CallCancelled was scheduled in _tool_thread and may not be raised yet.
        self._scheduled = False
        # The credits of the call's stream, if it streams.
        self.credits: Optional["Credits"] = None

    def is_set(self) -> bool:
        return self._cancelled

    def _interrupt(self) -> None:
        """Cancels the call (under the lock): CallCancelled in its tool's
        code, or its task cancelled."""
        self._cancelled = True
        if self._tool_thread is not None and not self._scheduled:
            self._scheduled = True
            _raise_in(self._tool_thread, CallCancelled)
        if self._stop_task is not None:
            self._stop_task()

    def __enter__(self) -> None:
        # No lock: cancel() sets _cancelled, then reads _tool_thread, under
        # the GIL; this sets _tool_thread, then reads _cancelled. One of the
        # two sees the other's write.
        self._tool_thread = _get_ident()
        if self._cancelled:
            self.__exit__(None, None, None)
            raise CallCancelled

    def __exit__(self, _type: Any, _value: Any, _tb: Any) -> None:
        # CallCancelled may be raised in here, at any bytecode: until the
        # lock is taken, cancel() can still schedule it; after that, one not
        # raised yet is taken back. So try until the lock was taken.
        while True:
            try:
                with self._lock:
                    if self._scheduled and self._tool_thread is not None:
                        _raise_in(self._tool_thread, None)
                    self._tool_thread = None
                    self._scheduled = False
                return
            except CallCancelled:
                continue

    def stop_task_with(self, stop: Optional[Callable[[], None]]) -> None:
        """Sets (or, with None, clears) how a cancel stops the ``async``
        tool now running; ``stop`` runs at once if its call is cancelled."""
        with self._lock:
            self._stop_task = stop
            if stop is not None and self._cancelled:
                stop()


class _Admission:
    """What decides whether a call read from stdin runs: cancels that came
    before it began, and calls given back (``reclaim``) before they began.
    Shared by :class:`Cancellation` and :class:`Calls`; used under their lock."""

    # Cancels of calls not started yet (pipelined ones) are remembered, up to
    # this many; ids are never reused, so a stale entry is harmless.
    _EARLY_LIMIT = 256
    # The ids of the last calls begun: a ``reclaim`` for one of them is
    # refused (the host may ask for a call whose answer it has not read
    # yet). More than the most calls a worker can hold (concurrency + 63).
    _BEGUN_KEPT = 2048

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._early: "OrderedDict[int, None]" = OrderedDict()
        self._begun: List[Optional[int]] = [None] * self._BEGUN_KEPT
        self._next = 0
        self._reclaimed: Set[int] = set()

    def _admit(self, request_id: int) -> Optional[str]:
        """Under the lock: None if ``request_id`` may begin (it is recorded
        as begun), else why not (see :meth:`Cancellation.begin`)."""
        if request_id in self._reclaimed:
            self._reclaimed.discard(request_id)
            return "reclaimed"
        if request_id in self._early:
            del self._early[request_id]
            return "cancelled"
        self._begun[self._next] = request_id
        self._next = (self._next + 1) % self._BEGUN_KEPT
        return None

    def _remember_cancel(self, request_id: int) -> None:
        """Under the lock: a cancel of a call that has not begun."""
        self._early[request_id] = None
        while len(self._early) > self._EARLY_LIMIT:
            self._early.popitem(last=False)

    def reclaim(self, request_id: int, tell: Callable[[], None], unread: Optional[Callable[[], bool]] = None) -> bool:
        """The host asks for ``request_id`` back: True if it has not begun
        (it never will), False if it has, or if an earlier copy of it is
        still waiting to be skipped.

        ``unread`` says whether the call's frame has not been read from stdin
        yet (the host names where it starts): only such a call is given
        back. Without it, a call is taken for begun only if it is among the
        last ones begun, which a control thread held up for long (a busy
        machine) could mistake.

        When it is given back, ``tell`` (which writes ``reclaimed`` to the
        host) runs before the lock is released: the call cannot be begun (and
        skipped), and so no call read after it can be answered, until the
        host has ``reclaimed`` on stdout ahead of that answer. The host
        expects a call's answer only once the calls written before it have
        begun, and one that overtook the ``reclaimed`` would break the
        protocol."""
        with self._lock:
            if request_id in self._reclaimed or request_id in self._begun:
                return False
            if unread is not None and not unread():
                return False
            self._reclaimed.add(request_id)
            tell()
            return True


class Cancellation(_Admission, CallScope):
    """The calls of a worker that runs one at a time: which one runs, its
    scope, and what decides whether the next may begin."""

    def __init__(self) -> None:
        _Admission.__init__(self)
        CallScope.__init__(self, self._lock)
        self._running: Optional[int] = None

    def begin(self, request_id: int) -> Optional[str]:
        """Marks ``request_id`` as running and returns None, or returns why
        it must not run: ``"cancelled"`` (answer it so) or ``"reclaimed"``
        (given back to the host: skip it, without an answer)."""
        with self._lock:
            why = self._admit(request_id)
            if why is None:
                self._running = request_id
                self._cancelled = False
            return why

    def end(self) -> None:
        with self._lock:
            self._running = None

    def cancel(self, request_id: int) -> None:
        with self._lock:
            if self._running == request_id:
                self._interrupt()
            else:
                self._remember_cancel(request_id)

    def ack(self, request_id: int, n: int) -> None:
        """Gives ``n`` credits back to stream ``request_id``, if it runs."""
        if self.credits is not None:
            self.credits.ack(request_id, n)

    def wake(self) -> None:
        """Wakes a stream waiting for credits, to see a cancel."""
        if self.credits is not None:
            self.credits.wake()


class Calls(_Admission):
    """The calls of a worker that runs several at once (``concurrency`` > 1):
    a :class:`CallScope` for each running call, by id."""

    def __init__(self) -> None:
        super().__init__()
        self._running: Dict[int, CallScope] = {}

    def begin(self, request_id: int) -> Union[CallScope, str]:
        """The scope of ``request_id``, now running, or why it must not run
        (as :meth:`Cancellation.begin`)."""
        with self._lock:
            why = self._admit(request_id)
            if why is not None:
                return why
            scope = self._running[request_id] = CallScope(self._lock)
            return scope

    def end(self, request_id: int) -> None:
        with self._lock:
            self._running.pop(request_id, None)

    def cancel(self, request_id: int) -> None:
        with self._lock:
            scope = self._running.get(request_id)
            if scope is not None:
                scope._interrupt()
            else:
                self._remember_cancel(request_id)
        if scope is not None and scope.credits is not None:
            scope.credits.wake()

    def ack(self, request_id: int, n: int) -> None:
        """Gives ``n`` credits back to stream ``request_id``, if it runs."""
        scope = self._running.get(request_id)
        if scope is not None and scope.credits is not None:
            scope.credits.ack(request_id, n)

    def wake(self) -> None:
        """Nothing to do: :meth:`cancel` wakes the stream it cancels."""

    def __len__(self) -> int:
        return len(self._running)


class Credits:
    """The credits of the running stream: how many chunks it may still send.

    The main thread calls :meth:`begin` with the call's window before its
    first chunk, :meth:`take` before each chunk, and :meth:`end` when the
    stream is over. The control thread calls :meth:`ack` for each ``ack``
    and :meth:`wake` after each ``cancel``. Acks count from :meth:`begin`
    on, whether or not :meth:`take` is waiting yet, so none is lost; acks
    for any other request (a stream already over, a plain call) are ignored.
    """

    def __init__(self, cancellation: CallScope) -> None:
        self._cond = threading.Condition()
        self._cancellation = cancellation
        self._stream: Optional[int] = None
        self._left = 0

    def begin(self, request_id: int, window: int) -> None:
        with self._cond:
            self._stream = request_id
            self._left = window

    def end(self) -> None:
        with self._cond:
            self._stream = None
            self._left = 0

    def ack(self, request_id: int, n: int) -> None:
        """Gives ``n`` credits back to stream ``request_id``, if it is running."""
        with self._cond:
            if self._stream == request_id:
                self._left += n
                self._cond.notify_all()

    def wake(self) -> None:
        """Wakes :meth:`take` so it sees a cancel (set on the Cancellation first)."""
        with self._cond:
            self._cond.notify_all()

    def take(self) -> bool:
        """Spends one credit, waiting until there is one. False, without
        spending, once the running call is cancelled (even while waiting)."""
        with self._cond:
            while True:
                if self._cancellation.is_set():
                    return False
                if self._left > 0:
                    self._left -= 1
                    return True
                self._cond.wait()

    def left(self) -> int:
        with self._cond:
            return self._left


_state = Cancellation()

# The scope of the call this thread (or asyncio task) runs, in a worker that
# runs several at once; unset in one that runs one at a time (see _state).
current_scope: "contextvars.ContextVar[Optional[CallScope]]" = contextvars.ContextVar(
    "snakepit_call_scope", default=None
)


def cancelled() -> bool:
    """True once the host has cancelled the call that is running.

    A long-running tool can check it now and then and give up early::

        for chunk in work:
            if snakepit_bridge.cancelled():
                return None  # the answer is dropped anyway
            ...

    A streaming tool need not: the bridge checks before each item, and
    closes the generator when the stream is cancelled.
    """
    scope = current_scope.get()
    return (scope if scope is not None else _state).is_set()


class ControlThread(threading.Thread):
    """Serves the control pipe until it closes."""

    def __init__(
        self,
        control: "Channel",
        replies: "Channel",
        state: Union[Cancellation, "Calls"] = _state,
    ) -> None:
        super().__init__(name="snakepit-control", daemon=True)
        self.control = control
        self.replies = replies
        self.state = state

    def run(self) -> None:
        from . import elixir

        try:
            while True:
                raw = self.control.read_raw()
                if raw is None:
                    return
                kind, request_id, body = elixir.decode_control_frame(raw, self.control.take_blobs())
                if kind == "heartbeat":
                    self.replies.write("heartbeat", request_id, None)
                elif kind == "cancel":
                    self.state.cancel(request_id)
                    self.state.wake()
                    elixir.calls.cancelled(request_id)
                elif kind == "reclaim":
                    tell = functools.partial(self.replies.write, "reclaimed", request_id, None)
                    self.state.reclaim(request_id, tell, self._unread(body))
                elif kind == "ack":
                    self._ack(request_id, body)
                elif kind == "elixir_reply":
                    elixir.calls.reply(request_id, body)
        except Exception:  # a broken control pipe shows as missed heartbeats
            return

    def _unread(self, offset: Any) -> Optional[Callable[[], bool]]:
        """For a ``reclaim`` naming the offset of its call in stdin: whether
        the main thread has not read that far yet. (The main channel reads
        stdin; this thread writes to it as ``replies``.)"""
        if not isinstance(offset, int) or isinstance(offset, bool):
            return None
        channel = self.replies
        return lambda: channel.consumed <= offset

    def _ack(self, request_id: Any, n: Any) -> None:
        if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
            self.state.ack(request_id, n)
        else:
            _log.warning("ignored an ack for request %r whose count is not an int >= 1: %.100r", request_id, n)
