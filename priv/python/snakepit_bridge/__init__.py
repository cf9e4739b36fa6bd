"""Snakepit's Python worker runtime.

Write an adapter (see ``snakepit_bridge.adapter``) and Snakepit runs it in
workers started as ``python3 <priv>/python/launcher/snakepit_worker.py
--adapter my_pkg.module.ClassName`` (``python3 -m snakepit_bridge`` by hand).
Tools may be generators (streamed item by item) and may take a ``ctx``
parameter (a :class:`Context`, with the call's :class:`Session`, and
``ctx.call_elixir`` to run a function of the Elixir side, which fails with
:class:`ElixirError`). A tool fails with data for its caller by raising
:class:`ToolError`.
"""

from .adapter import BaseAdapter, tool
from .context import Context, Session
from .control import CallCancelled, cancelled
from .elixir import ElixirError
from .errors import ToolError
from .worker import PROTOCOL_VERSION

__all__ = [
    "BaseAdapter",
    "tool",
    "cancelled",
    "CallCancelled",
    "Context",
    "Session",
    "ToolError",
    "ElixirError",
    "PROTOCOL_VERSION",
]
