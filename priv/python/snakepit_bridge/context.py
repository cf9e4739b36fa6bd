"""Sessions, and the context a tool can ask for with a ``ctx`` parameter.

    class MyAdapter(BaseAdapter):
        @tool
        def remember(self, ctx: Context, key: str, value: Any = None) -> Any:
            if value is not None:
                ctx.session.state[key] = value
            return ctx.session.state.get(key)

A tool that declares a parameter named ``ctx`` receives a :class:`Context`
for each call; the caller cannot pass ``ctx`` itself. ``ctx.session`` is the
call's :class:`Session` (``None`` for a call outside any session): its
``state`` lives in this worker from the session's first call until the host
ends the session, when the adapter's ``on_session_end(session)`` runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from . import elixir
from .control import CallScope, _state

__all__ = ["Context", "Session", "Sessions"]


@dataclass(eq=False)
class Session:
    """One session, as this worker knows it.

    - ``id``: the ``session_id`` the caller gave;
    - ``state``: a dict for the tools' own use, kept from call to call until
      the session ends;
    - ``is_new``: True only during the session's first call in this worker;
    - ``calls``: how many calls of the session have run in this worker,
      the current one included;
    - ``created_at``: when this worker first saw the session, in
      ``time.monotonic()`` seconds.
    """

    id: str
    state: Dict[str, Any] = field(default_factory=dict)
    is_new: bool = True
    calls: int = 0
    created_at: float = field(default_factory=time.monotonic)


class Context:
    """What a tool knows about the call it runs.

    - ``session``: the call's :class:`Session`, or None outside a session;
    - ``request_id``: the call's id on the wire (unique per pool);
    - ``streaming``: True if the caller streams the tool's items;
    - ``correlation_id``: the call's correlation id (see
      :mod:`snakepit_bridge.correlation`), or None;
    - ``cancelled()``: True once the host has cancelled the call, as
      :func:`snakepit_bridge.cancelled`;
    - ``call_elixir(name, **kwargs)`` and ``await call_elixir_async(name,
      **kwargs)``: run an Elixir function the pool registered (see
      :mod:`snakepit_bridge.elixir`).
    """

    __slots__ = ("session", "request_id", "streaming", "correlation_id", "_cancellation")

    def __init__(
        self,
        session: Optional[Session],
        request_id: int,
        streaming: bool,
        cancellation: CallScope = _state,
        correlation_id: Optional[str] = None,
    ) -> None:
        self.session = session
        self.request_id = request_id
        self.streaming = streaming
        self.correlation_id = correlation_id
        self._cancellation = cancellation

    def cancelled(self) -> bool:
        """True once the host has cancelled this call."""
        return self._cancellation.is_set()

    def call_elixir(self, name: str, /, *, _timeout: Optional[float] = None, **kwargs: Any) -> Any:
        """Runs the Elixir function the pool registered as ``name`` with
        ``kwargs`` (a map with string keys in Elixir) and returns its value.
        ``_timeout`` is in seconds (default: the pool's
        ``elixir_tool_timeout``). Raises
        :class:`~snakepit_bridge.ElixirError` when the function fails, is
        unknown or runs out of time, and
        :class:`~snakepit_bridge.CallCancelled` when this call is cancelled
        meanwhile. Blocks this thread; see :mod:`snakepit_bridge.elixir`."""
        return elixir.calls.call(self.request_id, self._cancellation, name, kwargs, _timeout)

    async def call_elixir_async(self, name: str, /, *, _timeout: Optional[float] = None, **kwargs: Any) -> Any:
        """:meth:`call_elixir` for an ``async`` tool: awaits the reply
        without blocking the event loop. A cancel of this call cancels the
        await."""
        return await elixir.calls.call_async(self.request_id, self._cancellation, name, kwargs, _timeout)

    def __repr__(self) -> str:
        session = self.session.id if self.session is not None else None
        return f"Context(session={session!r}, request_id={self.request_id}, streaming={self.streaming})"


class Sessions:
    """The sessions this worker holds, by id."""

    def __init__(self) -> None:
        self._by_id: Dict[str, Session] = {}

    def enter(self, session_id: str) -> Session:
        """The session of a call that starts, created on its first call."""
        session = self._by_id.get(session_id)
        if session is None:
            session = self._by_id[session_id] = Session(session_id)
        session.calls += 1
        return session

    def leave(self, session: Session) -> None:
        """A call of ``session`` is over: it is no longer new."""
        session.is_new = False

    def pop(self, session_id: str) -> Optional[Session]:
        """Forgets a session; None if this worker does not hold it."""
        return self._by_id.pop(session_id, None)

    def get(self, session_id: str) -> Optional[Session]:
        return self._by_id.get(session_id)

    def __len__(self) -> int:
        return len(self._by_id)
