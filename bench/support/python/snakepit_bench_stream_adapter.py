"""The adapter of bench/stream.exs, bench/sessions.exs and
bench/concurrency.exs: generator tools that stream as fast as they can,
``echo``, ``sleep`` (to hold a worker while sessions are bound, or to stand
for an I/O-bound call) and ``async_sleep``.

Each chunk is the same prebuilt ``bytes`` object, so the figures measure
moving chunks, not making them. ``chunks`` is shared with
``port_stream_worker.py`` (the Port baseline), so both sides run the same
generator.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

from snakepit_bridge import BaseAdapter, tool


def chunks(n: int, size: int) -> Iterator[bytes]:
    """``n`` chunks of ``size`` bytes; forever when ``n`` is 0."""
    data = b"x" * size
    if n > 0:
        for _ in range(n):
            yield data
    else:
        while True:
            yield data


class StreamBenchAdapter(BaseAdapter):
    __test__ = False

    @tool
    def small(self, n: int = 0, size: int = 100) -> Iterator[bytes]:
        """``n`` chunks of ``size`` (100) bytes; forever when ``n`` is 0."""
        return chunks(n, size)

    @tool
    def big(self, n: int = 0, size: int = 65536) -> Iterator[bytes]:
        """``n`` chunks of ``size`` (64 KiB) bytes; forever when ``n`` is 0."""
        return chunks(n, size)

    @tool
    def echo(self, value: Any = None) -> Any:
        """Returns its argument unchanged."""
        return value

    @tool
    def sleep(self, ms: int) -> int:
        """Sleeps ``ms`` milliseconds; returns ``ms``."""
        time.sleep(ms / 1000)
        return ms

    @tool
    async def async_sleep(self, ms: int) -> int:
        """Awaits ``asyncio.sleep`` for ``ms`` milliseconds; returns ``ms``."""
        await asyncio.sleep(ms / 1000)
        return ms
