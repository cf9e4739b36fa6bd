"""An adapter whose worker announces a protocol version other than the one
snakepit_bridge speaks (``PROTOCOL_VERSION + 1``), for tests of the host's
version check.

Importing this module changes what the worker's ``ready`` frame announces, so
it is kept apart from snakepit_test_adapters: use it only as a pool's adapter,
``snakepit_test_other_protocol.OtherProtocolAdapter``.

With ``SNAKEPIT_TEST_OTHER_PROTOCOL_WHILE=<path>`` in its environment, a
worker announces the other version only if that file exists when it starts,
so a test can switch the replacements of a running pool.
"""

from __future__ import annotations

import os

from snakepit_bridge import PROTOCOL_VERSION, worker
from snakepit_test_adapters import TestAdapter

_switch = os.environ.get("SNAKEPIT_TEST_OTHER_PROTOCOL_WHILE")
if _switch is None or os.path.exists(_switch):
    worker.PROTOCOL_VERSION = PROTOCOL_VERSION + 1


class OtherProtocolAdapter(TestAdapter):
    """The test adapter's tools, for the workers that do speak our version."""
