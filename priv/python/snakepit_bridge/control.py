"""The control pipe, and cancellation of the running call.

Calls run one at a time on the main thread, which reads them from stdin.
Frames that must be acted on *while* a call runs come on a second pipe,
the control pipe (fd 3, named by ``SNAKEPIT_CONTROL_FD``), served by a
daemon thread:

- ``heartbeat``: answered at once, proving the process and its interpreter
  are alive. A worker frozen, or stuck in C code that holds the GIL, misses
  heartbeats and is replaced by the host.
- ``cancel``: the host gave up on a call (its caller timed out or died).
  If it is running, :func:`cancelled` turns true, so a long tool can stop
  early; if it has not started yet, it is skipped. A tool that does not stop
  is killed after the pool's ``cancel_grace``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .channel import Channel

__all__ = ["Cancellation", "ControlThread", "cancelled"]


class Cancellation:
    """Which call runs, and whether the host cancelled it."""

    # Cancels of calls not started yet (pipelined ones) are remembered, up to
    # this many; ids are never reused, so a stale entry is harmless.
    _EARLY_LIMIT = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: Optional[int] = None
        self._event = threading.Event()
        self._early: "OrderedDict[int, None]" = OrderedDict()

    def begin(self, request_id: int) -> bool:
        """Marks ``request_id`` as running; False if it was cancelled already."""
        with self._lock:
            if request_id in self._early:
                del self._early[request_id]
                return False
            self._running = request_id
            self._event.clear()
            return True

    def end(self) -> None:
        with self._lock:
            self._running = None

    def cancel(self, request_id: int) -> None:
        with self._lock:
            if self._running == request_id:
                self._event.set()
            else:
                self._early[request_id] = None
                while len(self._early) > self._EARLY_LIMIT:
                    self._early.popitem(last=False)

    def is_set(self) -> bool:
        return self._event.is_set()


_state = Cancellation()


def cancelled() -> bool:
    """True once the host has cancelled the call that is running.

    A long-running tool can check it now and then and give up early::

        for chunk in work:
            if snakepit_bridge.cancelled():
                return None  # the answer is dropped anyway
            ...
    """
    return _state.is_set()


class ControlThread(threading.Thread):
    """Serves the control pipe until it closes."""

    def __init__(self, control: "Channel", replies: "Channel", state: Cancellation = _state) -> None:
        super().__init__(name="snakepit-control", daemon=True)
        self.control = control
        self.replies = replies
        self.state = state

    def run(self) -> None:
        from . import codec

        try:
            while True:
                raw = self.control.read_raw()
                if raw is None:
                    return
                kind, request_id, _body = codec.unpackb(raw)
                if kind == "heartbeat":
                    self.replies.write("heartbeat", request_id, None)
                elif kind == "cancel":
                    self.state.cancel(request_id)
        except Exception:  # a broken control pipe shows as missed heartbeats
            return
