"""Adapters used by Snakepit's own tests (ExUnit and pytest)."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List

import snakepit_bridge
from snakepit_bridge import BaseAdapter, tool


class TestAdapter(BaseAdapter):
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.calls = 0
        self.ballast: List[bytes] = []
        fail_file = os.environ.get("SNAKEPIT_TEST_FAIL_IF")
        if fail_file and os.path.exists(fail_file):
            raise RuntimeError(f"{fail_file} exists")
        start_log = os.environ.get("SNAKEPIT_TEST_START_LOG")
        if start_log:
            started = time.monotonic()
            time.sleep(0.05)  # a start that takes a while, so overlaps would show
            with open(start_log, "a") as f:
                f.write(f"{started} {time.monotonic()}\n")

    @tool
    def echo(self, value: Any = None) -> Any:
        return value

    @tool
    def add(self, a: Any, b: Any) -> Any:
        return a + b

    @tool
    def types(self, value: Any) -> str:
        """The Python type name of what arrived."""
        return type(value).__name__

    @tool
    def boom(self, message: str = "boom") -> None:
        raise ValueError(message)

    @tool
    def inner_type_error(self) -> None:
        return len(5)  # type: ignore[arg-type]

    @tool
    def sleep(self, ms: int) -> int:
        time.sleep(ms / 1000)
        return ms

    @tool
    def block_until(self, path: str, timeout_ms: int = 10_000) -> str:
        """Blocks until `path` exists (the test creates it to release the call)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not appear")
            time.sleep(0.002)
        return "released"

    @tool
    def noisy(self, text: str) -> str:
        print(f"printed: {text}")
        os.write(1, b"raw fd 1 write\n")
        return text

    @tool
    def nest(self, depth: int) -> Any:
        """A list nested `depth` levels deep."""
        value: Any = None
        for _ in range(depth):
            value = [value]
        return value

    @tool
    def flood_stderr(self, mb: int, line_bytes: int = 100) -> int:
        """Writes `mb` MiB to stderr in lines of `line_bytes` (newline included)."""
        line = b"f" * (line_bytes - 1) + b"\n"
        block = line * max(1, (1 << 20) // len(line))
        written = 0
        while written < mb << 20:
            view = memoryview(block)
            while view:
                view = view[os.write(2, view) :]
            written += len(block)
        return written

    @tool
    def flood_log(self, records: int) -> int:
        log = logging.getLogger("snakepit_test.flood")
        for i in range(records):
            log.warning("flood %d", i)
        return records

    @tool
    def non_finite(self) -> Dict[str, float]:
        return {"nan": math.nan, "inf": math.inf, "ninf": -math.inf}

    @tool
    def huge_int(self) -> int:
        return 2**70

    @tool
    def make_bytes(self, n: int) -> bytes:
        return bytes(range(256)) * (n // 256) + bytes(range(n % 256))

    @tool
    def log(self, level: str, message: str) -> bool:
        logging.getLogger("snakepit_test").log(getattr(logging, level.upper()), message)
        return True

    @tool
    def count(self) -> int:
        self.calls += 1
        return self.calls

    @tool
    def pid(self) -> int:
        return os.getpid()

    @tool
    def exit_now(self, code: int = 7) -> None:
        os._exit(code)

    @tool
    def kill_self(self, sig: str = "SIGKILL", after_ms: int = 0) -> None:
        time.sleep(after_ms / 1000)
        os.kill(os.getpid(), getattr(signal, sig))
        time.sleep(10)

    @tool
    def until_cancelled(self, timeout_ms: int = 10_000) -> str:
        """Works until the host cancels the call, as a well-behaved long tool does."""
        deadline = time.monotonic() + timeout_ms / 1000
        logging.getLogger("snakepit_test").info("until_cancelled started")
        while not snakepit_bridge.cancelled():
            if time.monotonic() > deadline:
                return "never cancelled"
            time.sleep(0.002)
        return "cancelled"

    @tool
    def hog_gil(self) -> bool:
        """Catastrophic backtracking: C code that holds the GIL for ages."""
        return re.match(r"(a+)+$", "a" * 40 + "b") is not None

    @tool
    def grow(self, mb: int) -> int:
        """Holds `mb` MiB more of resident memory."""
        self.ballast.append(b"x" * (mb * 1024 * 1024))
        return sum(len(b) for b in self.ballast) // (1024 * 1024)

    @tool
    def spawn_children(self) -> List[int]:
        """A child in the worker's group and a setsid daemon that double-forks:
        returns their pids. Neither may outlive the worker."""
        child = subprocess.Popen(["sleep", "600"])
        daemon_code = (
            "import os, sys, time\n"
            "if os.fork(): sys.exit(0)\n"
            "os.setsid()\n"
            "print(os.getpid(), flush=True)\n"
            "os.close(1)\n"
            "time.sleep(600)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", daemon_code], stdout=subprocess.PIPE, text=True, timeout=10
        )
        return [child.pid, int(out.stdout.split()[0])]

    @tool
    def ignore_sigterm(self) -> bool:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return True

    @tool
    def segfault(self) -> None:
        import ctypes

        ctypes.string_at(0)
