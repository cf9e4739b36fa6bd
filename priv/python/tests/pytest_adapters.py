"""Tools only the pytest suite needs, on top of the test adapter's. Workers
find this module when started with ``python_path=[TESTS]`` (see conftest)."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any, Dict, Iterator, Optional

from snakepit_test_adapters import TestAdapter

from snakepit_bridge import Context, Session, tool
from snakepit_bridge.control import Credits


class PytestAdapter(TestAdapter):
    @tool
    async def async_echo(self, value: Any = None) -> Any:
        await asyncio.sleep(0)
        return value

    @tool
    async def async_boom(self) -> None:
        await asyncio.sleep(0)
        raise KeyError("async boom")

    @tool
    def ctx_info(self, value: Any = None, *, ctx: Context) -> Dict[str, Any]:
        """What the context says (ctx is keyword-only here, which works too)."""
        return {
            "request_id": ctx.request_id,
            "streaming": ctx.streaming,
            "session": ctx.session.id if ctx.session else None,
            "cancelled": ctx.cancelled(),
            "value": value,
        }

    @tool
    def unencodable_after(self, n: int, marker: Optional[str] = None) -> Iterator[Any]:
        """0..n-1, then an int MessagePack cannot hold; writes "closed" to
        `marker` when closed."""
        try:
            yield from range(n)
            yield 2**70
            yield "never sent"
        finally:
            if marker is not None:
                with open(marker, "w") as f:
                    f.write("closed")

    @tool
    def stubborn(self) -> Iterator[int]:
        """A generator that yields again when closed (Python raises RuntimeError)."""
        while True:
            try:
                yield 1
            except GeneratorExit:
                yield 2

    @tool
    def told_count(
        self,
        n: Optional[int] = None,
        tell: Optional[int] = None,
        marker: Optional[str] = None,
        gate: Optional[str] = None,
    ) -> Iterator[int]:
        """0, 1, ..., n - 1 (forever if n is None), logging "yielding i: k
        credits left" before each of the first `tell` items (all if None): k
        is what the worker's stream has left to send it with. The log frame
        goes out on stdout in order with the chunks, so a test sees the bridge
        pull each item, and whether it will have to wait for an ack to send
        it. With `gate`, item 0 waits, after its log, until the file `gate`
        exists. When closed, writes to the file `marker` how many it yielded."""
        # The worker's one Credits (white-box: the bridge gives tools no handle on it).
        (credits,) = [o for o in gc.get_objects() if isinstance(o, Credits)]
        yielded = 0
        try:
            while n is None or yielded < n:
                if tell is None or yielded < tell:
                    logging.getLogger("snakepit_test").info("yielding %d: %s credits left", yielded, credits.left())
                if gate is not None and yielded == 0:
                    self.block_until(gate)
                yielded += 1
                yield yielded - 1
        finally:
            if marker is not None:
                with open(marker, "w") as f:
                    f.write(str(yielded))

    def on_session_end(self, session: Session) -> None:
        if session.state.get("raise_on_end"):
            raise RuntimeError(f"on_session_end of {session.id} failed")
        super().on_session_end(session)
