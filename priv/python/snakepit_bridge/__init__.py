"""Snakepit's Python worker runtime.

Write an adapter (see ``snakepit_bridge.adapter``) and Snakepit runs it in
workers started as ``python3 <priv>/python/launcher/snakepit_worker.py
--adapter my_pkg.module.ClassName`` (``python3 -m snakepit_bridge`` by hand).
"""

from .adapter import BaseAdapter, tool
from .control import cancelled
from .worker import PROTOCOL_VERSION

__all__ = ["BaseAdapter", "tool", "cancelled", "PROTOCOL_VERSION"]
