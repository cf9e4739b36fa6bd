"""An adapter whose worker announces a protocol version other than the one
snakepit_bridge speaks (``PROTOCOL_VERSION + 1``), for tests of the host's
version check.

Importing this module changes what the worker's ``ready`` frame announces, so
it is kept apart from snakepit_test_adapters: use it only as a pool's adapter,
``snakepit_test_other_protocol.OtherProtocolAdapter``.
"""

from __future__ import annotations

from snakepit_bridge import PROTOCOL_VERSION, BaseAdapter, worker

worker.PROTOCOL_VERSION = PROTOCOL_VERSION + 1


class OtherProtocolAdapter(BaseAdapter):
    """Only the built-in tools (``ping``, ``describe``); the host should never call them."""
