"""The adapter of bench/soak.exs: the test adapter plus a tool that floods.

The test adapter's ``noisy`` prints two lines and ``log`` logs one record;
a soak needs floods, so ``flood`` writes many lines at once. Kept under
bench/ so that the test suite's adapter is not changed for a benchmark.
Needs ``test/support/python`` on ``PYTHONPATH`` too.
"""

from __future__ import annotations

import logging
import os

from snakepit_bridge import tool
from snakepit_test_adapters import TestAdapter

FLOOD_LOG = logging.getLogger("soak_flood")


class SoakAdapter(TestAdapter):
    __test__ = False

    @tool
    def flood(self, lines: int = 200, via: str = "stderr", width: int = 80) -> int:
        """Writes ``lines`` lines "soakflood NNNNNN xxx... end": to stderr in one
        big write (``stderr``), one print() per line (``print``), or as Python
        log records (``log``). Returns ``lines``."""
        pad = "x" * width
        text = [f"soakflood {i:06d} {pad} end" for i in range(lines)]
        if via == "stderr":
            os.write(2, ("\n".join(text) + "\n").encode())
        elif via == "print":
            for line in text:
                print(line)
        elif via == "log":
            for line in text:
                FLOOD_LOG.info(line)
        else:
            raise ValueError(f"unknown via: {via}")
        return lines
