"""Adapters used by Snakepit's own tests (ExUnit and pytest)."""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import Any, Dict

from snakepit_bridge import BaseAdapter, tool


class TestAdapter(BaseAdapter):
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.calls = 0

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
