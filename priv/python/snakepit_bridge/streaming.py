"""Tools that produce items: generators and async generators.

A **streaming call** (a ``call`` whose ``stream`` is a window W >= 1) is
answered with one ``chunk`` per item, then ``done``, or ``error`` if the
tool raised (the chunks already sent stay sent). A tool that is not a
generator sends its return value as one chunk. Chunks are sent within
credits (see :class:`~snakepit_bridge.control.Credits`): with none left the
generator stays suspended in ``yield`` until the host acks or cancels. A
cancel closes the generator (its ``finally`` blocks run) and is answered
with ``error`` kind ``cancelled``.

A **plain call** of a generator tool runs it to its end and answers one
``result`` holding the list of its items.

The loop pulls an item before it waits for a credit to send it, so the end
of a stream (``done``, or the generator's exception) never waits for an
ack; the generator is at most one item ahead of what was sent.
"""

from __future__ import annotations

import asyncio
import logging
from types import AsyncGeneratorType, GeneratorType
from typing import Any, AsyncGenerator, Dict, Generator, List, Optional, Tuple, Type

from .aio import Loop
from .channel import Channel
from .control import CallCancelled, CallScope, Credits
from .errors import error_body

__all__ = ["END", "GENERATOR_TYPES", "Items", "items_of", "one_item", "stream", "collect"]

_log = logging.getLogger(__name__)

END: Any = object()
"""What :meth:`Items.pull` returns after the last item."""

# What a tool's code may raise that answers its call with an ``exception``
# error. asyncio.CancelledError is a BaseException, but raised by a tool's
# coroutine it is the tool's own failure, not a reason to stop the worker.
TOOL_ERRORS: Tuple[Type[BaseException], ...] = (Exception, asyncio.CancelledError)


class Items:
    """The items of one call, pulled one at a time by the thread serving it."""

    def pull(self) -> Any:
        """The next item, or :data:`END`. Raises what the tool raises."""
        raise NotImplementedError

    def close(self) -> None:
        """Stops the producer early (its ``finally`` blocks run)."""


class _GeneratorItems(Items):
    def __init__(self, gen: Generator[Any, Any, Any], cancellation: CallScope) -> None:
        self._gen = gen
        self._cancellation = cancellation

    def pull(self) -> Any:
        with self._cancellation:  # a cancel raises CallCancelled in the generator's code
            return next(self._gen, END)

    def close(self) -> None:
        self._gen.close()


class _AsyncGeneratorItems(Items):
    def __init__(self, agen: AsyncGenerator[Any, Any], loop: Loop, cancellation: CallScope) -> None:
        self._agen = agen
        self._loop = loop
        self._cancellation = cancellation

    def pull(self) -> Any:
        return self._loop.run(_anext(self._agen), self._cancellation)

    def close(self) -> None:
        self._loop.run(self._agen.aclose())


async def _anext(agen: AsyncGenerator[Any, Any]) -> Any:
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        return END


class _OneItem(Items):
    def __init__(self, value: Any) -> None:
        self._value = value
        self._pulled = False

    def pull(self) -> Any:
        if self._pulled:
            return END
        self._pulled = True
        return self._value


# The return values items_of finds items in: a caller that tests for these
# first spares the call for every other value.
GENERATOR_TYPES = (GeneratorType, AsyncGeneratorType)


def items_of(value: Any, loop: Loop, cancellation: CallScope) -> Optional[Items]:
    """The items of a tool's return value if it is a generator or an async
    generator, else None."""
    if isinstance(value, GeneratorType):
        return _GeneratorItems(value, cancellation)
    if isinstance(value, AsyncGeneratorType):
        return _AsyncGeneratorItems(value, loop, cancellation)
    return None


def one_item(value: Any) -> Items:
    """A return value that is not a generator, streamed as one item."""
    return _OneItem(value)


def stream(
    request_id: int,
    tool: str,
    items: Items,
    window: int,
    *,
    channel: Channel,
    credits: Credits,
    cancellation: CallScope,
) -> None:
    """Answers a streaming call: chunks within credits, then ``done`` or
    ``error``. Closes ``items`` before the last frame, so a generator's
    ``finally`` has run by the time the host sees the stream's end."""
    credits.begin(request_id, window)
    try:
        kind, body = _pump(request_id, tool, items, channel, credits, cancellation)
    finally:
        credits.end()
        _close(items, tool)
    channel.write(kind, request_id, body)


def _pump(
    request_id: int,
    tool: str,
    items: Items,
    channel: Channel,
    credits: Credits,
    cancellation: CallScope,
) -> Tuple[str, Optional[Dict[str, Any]]]:
    """Sends chunks until the stream ends; the frame that ends it."""
    while True:
        if cancellation.is_set():
            return "error", _cancelled()
        try:
            item = items.pull()
        except CallCancelled:
            return "error", _cancelled()
        except TOOL_ERRORS as exc:
            if cancellation.is_set() and isinstance(exc, asyncio.CancelledError):
                return "error", _cancelled()
            return "error", error_body("exception", exc, tool=tool)
        if item is END:
            return "done", None
        try:
            payload = channel.encode("chunk", request_id, item)
        except Exception as exc:
            msg = f"an item of tool {tool!r} cannot be sent: {exc}"
            return "error", error_body("unencodable_result", exc, message=msg, tool=tool)
        if not credits.take():
            return "error", _cancelled()
        channel.write_encoded(payload)


def collect(items: Items, tool: str, cancellation: CallScope) -> Optional[List[Any]]:
    """All the items, for a plain call; None if the call was cancelled first.
    Raises what the tool raises. Closes ``items`` in any case."""
    out: List[Any] = []
    try:
        while not cancellation.is_set():
            item = items.pull()
            if item is END:
                return out
            out.append(item)
        return None
    finally:
        _close(items, tool)


def _cancelled() -> Dict[str, Any]:
    return error_body("cancelled", message="the call was cancelled while it ran")


def _close(items: Items, tool: str) -> None:
    try:
        items.close()
    except TOOL_ERRORS:  # a `finally` that raises, a generator that ignores GeneratorExit
        _log.warning("closing the generator of tool %r raised", tool, exc_info=True)
