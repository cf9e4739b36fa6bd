"""Snakepit's Python worker runtime.

Write an adapter (see ``snakepit_bridge.adapter``) and Snakepit runs it with
``python3 -m snakepit_bridge --adapter my_pkg.module.ClassName``.
"""

from .adapter import BaseAdapter, tool
from .control import cancelled
from .worker import PROTOCOL_VERSION

__all__ = ["BaseAdapter", "tool", "cancelled", "PROTOCOL_VERSION"]
