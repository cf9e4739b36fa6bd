"""The worker's one asyncio event loop, for ``async def`` tools and async
generators. Created on first need, on the main thread, which runs every call;
nothing runs on it between calls."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Optional, TypeVar

__all__ = ["EventLoop"]

T = TypeVar("T")


class EventLoop:
    """Runs awaitables to completion on a loop made the first time one comes."""

    def __init__(self) -> None:
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def run(self, awaitable: Awaitable[T]) -> T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)

    def close(self) -> None:
        """Finalizes async generators left open and closes the loop, if any."""
        loop, self._loop = self._loop, None
        if loop is not None:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
