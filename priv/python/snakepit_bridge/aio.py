"""The worker's one asyncio event loop, for ``async def`` tools and async
generators.

- :class:`EventLoop` (a worker that runs one call at a time): the loop is
  made on first need and runs on the main thread, which runs every call;
  nothing runs on it between calls.
- :class:`LoopThread` (``concurrency`` > 1): the loop runs for good on a
  thread of its own, and every call's coroutines run on it together; the
  thread that serves a call waits for its coroutine's result.

Either way a cancel of a call cancels the task it runs (see
:class:`~snakepit_bridge.control.CallScope`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import TYPE_CHECKING, Awaitable, Optional, TypeVar, Union

from .control import current_scope

if TYPE_CHECKING:
    from .control import CallScope

__all__ = ["EventLoop", "LoopThread", "Loop"]

T = TypeVar("T")


class EventLoop:
    """Runs awaitables to completion on a loop made the first time one comes."""

    def __init__(self) -> None:
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def run(self, awaitable: Awaitable[T], scope: Optional["CallScope"] = None) -> T:
        """Runs ``awaitable`` to its end. With a ``scope``, a cancel of its
        call cancels it: ``asyncio.CancelledError`` comes out."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        if scope is None:
            return loop.run_until_complete(awaitable)
        task = asyncio.ensure_future(awaitable, loop=loop)

        def stop() -> None:  # from the control thread
            loop.call_soon_threadsafe(task.cancel)

        scope.stop_task_with(stop)
        try:
            return loop.run_until_complete(task)
        finally:
            scope.stop_task_with(None)

    def close(self) -> None:
        """Finalizes async generators left open and closes the loop, if any."""
        loop, self._loop = self._loop, None
        if loop is not None:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()


class LoopThread:
    """One event loop on a thread of its own, shared by the calls of a
    worker that runs several at once; started the first time it is needed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="snakepit-asyncio", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, awaitable: Awaitable[T], scope: Optional["CallScope"] = None) -> T:
        """Runs ``awaitable`` on the loop and waits for its result. With a
        ``scope``, a cancel of its call cancels its task:
        ``asyncio.CancelledError`` comes out. The task sees ``scope`` as
        :data:`~snakepit_bridge.control.current_scope`."""
        future = asyncio.run_coroutine_threadsafe(_in_scope(awaitable, scope), self._started())

        def stop() -> None:  # from the control thread
            future.cancel()

        if scope is not None:
            scope.stop_task_with(stop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise asyncio.CancelledError() from None
        finally:
            if scope is not None:
                scope.stop_task_with(None)

    def close(self) -> None:
        """Finalizes async generators left open, stops the loop and its thread."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(timeout=5)
        except Exception:  # noqa: BLE001 - closing must not fail the worker's exit
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()


async def _in_scope(awaitable: Awaitable[T], scope: Optional["CallScope"]) -> T:
    # A task runs in a copy of the context: this sets the scope for it alone.
    current_scope.set(scope)
    return await awaitable


Loop = Union[EventLoop, LoopThread]
"""Either loop: what a worker runs its calls' coroutines on."""
