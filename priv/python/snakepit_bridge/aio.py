"""The worker's one asyncio event loop, for ``async def`` tools and async
generators. Created on first need, on the main thread, which runs every call;
nothing runs on it between calls. A cancel of the running call cancels the
task it runs (see :class:`~snakepit_bridge.control.Cancellation`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Awaitable, Optional, TypeVar

if TYPE_CHECKING:
    from .control import Cancellation

__all__ = ["EventLoop"]

T = TypeVar("T")


class EventLoop:
    """Runs awaitables to completion on a loop made the first time one comes."""

    def __init__(self, cancellation: Optional["Cancellation"] = None) -> None:
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._cancellation = cancellation

    def run(self, awaitable: Awaitable[T], cancellable: bool = True) -> T:
        """Runs ``awaitable`` to its end. If ``cancellable``, a cancel of the
        running call cancels it: ``asyncio.CancelledError`` comes out."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        loop, cancellation = self._loop, self._cancellation
        if cancellation is None or not cancellable:
            return loop.run_until_complete(awaitable)
        task = asyncio.ensure_future(awaitable, loop=loop)

        def stop() -> None:  # from the control thread
            loop.call_soon_threadsafe(task.cancel)

        cancellation.stop_task_with(stop)
        try:
            return loop.run_until_complete(task)
        finally:
            cancellation.stop_task_with(None)

    def close(self) -> None:
        """Finalizes async generators left open and closes the loop, if any."""
        loop, self._loop = self._loop, None
        if loop is not None:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
