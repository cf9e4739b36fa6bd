"""Adapters used by Snakepit's own tests (ExUnit and pytest)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional

import snakepit_bridge
from snakepit_bridge import BaseAdapter, Context, Session, tool


def _session(ctx: Context, tool_name: str) -> Session:
    if ctx.session is None:
        raise ValueError(f"{tool_name} needs a session")
    return ctx.session


def _elixir_error(e: "snakepit_bridge.ElixirError") -> Dict[str, Any]:
    return {"name": e.name, "category": e.category, "message": e.message, "details": e.details, "code": e.code}


def _plain(value: Any) -> Any:
    """Complex numbers as [real, imag] (MessagePack has no complex)."""
    if isinstance(value, complex):
        return [value.real, value.imag]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


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

    # The commands of Snakepit.Test.MockAdapter, so one test module checks
    # that a mock pool answers as a Python pool does (adapter_contract_test).

    @tool
    def error(self, message: str = "simulated error") -> None:
        raise RuntimeError(message)

    @tool
    def slow(self, ms: int = 1000) -> int:
        time.sleep(ms / 1000)
        return ms

    @tool
    def stream(self, n: int = 3) -> Iterator[int]:
        yield from range(n)

    @tool
    def inner_type_error(self) -> None:
        return len(5)  # type: ignore[arg-type]

    @tool
    def sleep(self, ms: int, started: Optional[str] = None) -> int:
        """Sleeps without looking at cancellation; creates the file `started`
        first, if given, so a test knows the call is running, not queued."""
        if started is not None:
            open(started, "w").close()
        time.sleep(ms / 1000)
        return ms

    @tool
    def nap(self, seconds: float) -> Dict[str, Any]:
        """Sleeps in a thread; when it started and ended (this process's
        monotonic clock), and its thread, so a test can see overlaps."""
        start = time.monotonic()
        time.sleep(seconds)
        return {"start": start, "end": time.monotonic(), "pid": os.getpid(), "thread": threading.get_ident()}

    @tool
    async def async_nap(self, seconds: float) -> Dict[str, Any]:
        """Awaits asyncio.sleep; as nap, with the thread of the event loop."""
        start = time.monotonic()
        await asyncio.sleep(seconds)
        return {"start": start, "end": time.monotonic(), "pid": os.getpid(), "thread": threading.get_ident()}

    @tool
    def session_append(self, ctx: Context, item: Any, seconds: float = 0.0) -> List[Any]:
        """Appends `item` to the session's list after `seconds`: with calls of
        one session run at once, items would be lost or reordered."""
        session = _session(ctx, "session_append")
        items = list(session.state.get("items", []))
        time.sleep(seconds)
        items.append(item)
        session.state["items"] = items
        return items

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
    def sys_exit(self, code: int = 9) -> None:
        """Raises SystemExit, which the bridge does not answer: the worker exits."""
        sys.exit(code)

    @tool
    def kill_self(self, sig: str = "SIGKILL", after_ms: int = 0) -> None:
        time.sleep(after_ms / 1000)
        os.kill(os.getpid(), getattr(signal, sig))
        time.sleep(10)

    @tool
    def spin(self, finished: Optional[str] = None) -> int:
        """A pure-Python loop that never looks at cancellation, and whose
        `except Exception` must not swallow CallCancelled. Logs when it
        starts; creates the file `finished`, if given, in its `finally`."""
        log = logging.getLogger("snakepit_test")
        n = 0
        try:
            # In the try: a cancel that comes as soon as the line is out may
            # be raised before log.info returns.
            log.info("spin started")
            while True:
                try:
                    n += 1
                except Exception:
                    pass
        finally:
            log.info("spin finally")
            if finished is not None:
                open(finished, "w").close()

    @tool
    async def async_wait(self, seconds: float = 100.0) -> str:
        """Awaits for `seconds`; logs when it starts and in its `finally`."""
        log = logging.getLogger("snakepit_test")
        log.info("async_wait started")
        try:
            await asyncio.sleep(seconds)
            return "slept"
        finally:
            log.info("async_wait finally")

    @tool
    async def async_stuck(self) -> AsyncIterator[int]:
        """An async generator that yields once, then awaits forever."""
        log = logging.getLogger("snakepit_test")
        try:
            yield 1
            log.info("async_stuck waiting")
            await asyncio.sleep(3600)
            yield 2
        finally:
            log.info("async_stuck finally")

    # Python calls Elixir (see test/snakepit/elixir_tools_test.exs).

    @tool
    def elixir(
        self,
        ctx: Context,
        name: str,
        args: Optional[Dict[str, Any]] = None,
        timeout: Optional[float] = None,
        wait_for: Optional[str] = None,
    ) -> Any:
        """ctx.call_elixir(name, **args): its value; an ElixirError's fields
        as {"error": {...}} (caught, as a tool that handles it does). With
        `wait_for`, waits until that file exists first."""
        while wait_for is not None and not os.path.exists(wait_for):
            time.sleep(0.002)
        try:
            return ctx.call_elixir(name, _timeout=timeout, **(args or {}))
        except snakepit_bridge.ElixirError as e:
            return {"error": _elixir_error(e)}

    @tool
    async def elixir_async(
        self, ctx: Context, name: str, args: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None
    ) -> Any:
        """elixir, awaiting ctx.call_elixir_async."""
        try:
            return await ctx.call_elixir_async(name, _timeout=timeout, **(args or {}))
        except snakepit_bridge.ElixirError as e:
            return {"error": _elixir_error(e)}

    @tool
    def elixir_uncaught(self, ctx: Context, name: str, args: Optional[Dict[str, Any]] = None) -> Any:
        """ctx.call_elixir(name, **args), letting an ElixirError fail the call."""
        return ctx.call_elixir(name, **(args or {}))

    @tool
    def elixir_cancellable(self, ctx: Context, name: str, marker: str) -> str:
        """Waits in ctx.call_elixir(name) and writes to the file `marker` what
        ended the wait: "cancelled" (CallCancelled), else "returned"."""
        outcome = "raised"
        try:
            ctx.call_elixir(name)
            outcome = "returned"
        except snakepit_bridge.CallCancelled:
            outcome = "cancelled"
            raise
        finally:
            with open(marker, "w") as f:
                f.write(outcome)
        return outcome

    @tool
    async def elixir_cancellable_async(self, ctx: Context, name: str, marker: str) -> str:
        """elixir_cancellable with call_elixir_async: "cancelled" is the
        task's CancelledError."""
        outcome = "raised"
        try:
            await ctx.call_elixir_async(name)
            outcome = "returned"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            with open(marker, "w") as f:
                f.write(outcome)
        return outcome

    @tool
    def elixir_tensor(self, ctx: Context, name: str, n: int) -> Dict[str, Any]:
        """Sends a float32 arange(n) and bytes(range(256)) to `name`; returns
        what came back, described (type, dtype, shape, sum) and as it is."""
        import numpy as np

        back = ctx.call_elixir(name, t=np.arange(n, dtype=np.float32), b=bytes(range(256)))
        out: Dict[str, Any] = {"returned": back}
        for key, value in (back.items() if isinstance(back, dict) else []):
            if isinstance(value, np.ndarray):
                out[key] = {
                    "type": "ndarray",
                    "dtype": str(value.dtype),
                    "shape": list(value.shape),
                    "sum": value.sum().item(),
                }
            else:
                out[key] = {"type": type(value).__name__}
        return out

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

    # Sessions: these take the call's context as `ctx`.

    @tool
    def session_counter(self, ctx: Context) -> Dict[str, Any]:
        """Counts the session's calls in its state: n is 1 on its first call."""
        session = _session(ctx, "session_counter")
        n = session.state.get("n", 0) + 1
        session.state["n"] = n
        return {"n": n, "pid": os.getpid(), "new": session.is_new, "calls": session.calls}

    @tool
    def session_put(self, ctx: Context, key: str, value: Any) -> None:
        _session(ctx, "session_put").state[key] = value

    @tool
    def session_get(self, ctx: Context, key: str) -> Any:
        return _session(ctx, "session_get").state.get(key)

    @tool
    def session_info(self, ctx: Context) -> Optional[Dict[str, Any]]:
        """None outside a session."""
        session = ctx.session
        if session is None:
            return None
        return {
            "id": session.id,
            "new": session.is_new,
            "calls": session.calls,
            "pid": os.getpid(),
            "keys": sorted(session.state),
        }

    def on_session_end(self, session: Session) -> None:
        """With a "marker_dir" in the session's state, creates the empty file
        <marker_dir>/session_end-<hex of the session id's UTF-8>."""
        marker_dir = session.state.get("marker_dir")
        if marker_dir is not None:
            open(os.path.join(marker_dir, f"session_end-{session.id.encode().hex()}"), "w").close()

    # Streams: generators and async generators.

    @tool
    def count_up(self, n: int, delay: float = 0.0) -> Iterator[int]:
        """0..n-1, sleeping `delay` seconds before each."""
        for i in range(n):
            if delay > 0:
                time.sleep(delay)
            yield i

    @tool
    def infinite(self, marker: Optional[str] = None, size: int = 0) -> Iterator[Any]:
        """0, 1, 2... (or `bytes(size)` each time when size > 0), forever. When
        closed, writes to the file `marker` how many items it yielded. (The
        bridge pulls an item before it waits for the credit to send it, so a
        stream cancelled while out of credits has yielded one item more than
        it sent.)"""
        yielded = 0
        try:
            while True:
                item = yielded if size == 0 else bytes(size)
                yielded += 1
                yield item
        finally:
            if marker is not None:
                with open(marker, "w") as f:
                    f.write(str(yielded))

    @tool
    def fail_after(self, n: int) -> Iterator[int]:
        yield from range(n)
        raise ValueError(f"failed after {n}")

    @tool
    async def async_count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            if i:
                await asyncio.sleep(0)
            yield i

    @tool
    def chunks(self, n: int, size: int) -> Iterator[bytes]:
        for _ in range(n):
            yield bytes(size)

    @tool
    def stream_pid(self, n: int) -> Iterator[int]:
        for _ in range(n):
            yield os.getpid()

    @tool
    def raise_tool_error(
        self,
        code: Any,
        retryable: bool = False,
        details: Optional[Dict[str, Any]] = None,
        message: str = "the tool failed on purpose",
    ) -> None:
        """Raises a ToolError, for the tests of structured errors."""
        raise snakepit_bridge.ToolError(message, code=code, details=details, retryable=retryable)

    @tool
    def correlation(self, ctx: Context) -> Dict[str, Any]:
        """The call's correlation id, as ctx and as a log record see it."""
        record = logging.getLogger("snakepit_test").makeRecord("t", logging.INFO, "f", 1, "m", None, None)
        return {"ctx": ctx.correlation_id, "record": getattr(record, "correlation_id", None)}

    @tool
    def flaky(self, key: str, failures: int, retryable: bool = True) -> int:
        """Fails its first `failures` calls for `key` (with a ToolError, retryable
        or not), then returns how many calls it took."""
        counts = self.__dict__.setdefault("_flaky", {})
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= failures:
            raise snakepit_bridge.ToolError(f"attempt {counts[key]} fails", code="flaky", retryable=retryable)
        return int(counts[key])

    # Tensors (numpy is imported by the tools that need it, so the adapter
    # loads without numpy).

    @tool
    def tensor_echo(self, t: Any) -> Any:
        """Returns its argument as it arrived."""
        return t

    @tool
    def make_tensor(self, dtype: str, shape: List[int]) -> Any:
        """np.arange over `shape` in `dtype` (bool: alternating, from False)."""
        import numpy as np

        n = int(np.prod(shape, dtype=np.int64))
        if dtype == "bool":
            return (np.arange(n) % 2 == 1).reshape(shape)
        return np.arange(n).astype(dtype).reshape(shape)

    @tool
    def strided(self) -> Any:
        """A non-contiguous view: every other column of a 4x6 int32 arange,
        transposed (shape (3, 4))."""
        import numpy as np

        return np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2].T

    @tool
    def big_endian(self) -> Any:
        """A big-endian float64 array: [1.5, -2.0, 3.25]."""
        import numpy as np

        return np.array([1.5, -2.0, 3.25], dtype=">f8")

    @tool
    def numpy_values(self) -> Dict[str, Any]:
        """A list, a numpy scalar and a 0-d array side by side."""
        import numpy as np

        return {"list": [1, 2, 3], "scalar": np.float32(1.5), "zero_d": np.array(7, dtype=np.int16)}

    @tool
    def unsendable_array(self, dtype: str) -> Any:
        import numpy as np

        return np.array([1, 2], dtype=dtype) if dtype != "object" else np.array([object()], dtype=object)

    @tool
    def big_tensor(self, n: int) -> Dict[str, Any]:
        """A float32 array of n elements, next to other values in the frame."""
        import numpy as np

        return {"before": "x" * 10, "t": np.ones(n, dtype=np.float32), "after": list(range(5))}

    @tool
    def tensor_info(self, t: Any) -> Dict[str, Any]:
        """What arrived: type, dtype, shape, flags, sum and values as a list."""
        import numpy as np

        if not isinstance(t, np.ndarray):
            return {"type": type(t).__name__}
        return {
            "type": "ndarray",
            "dtype": str(t.dtype),
            "byteorder": t.dtype.byteorder,
            "shape": list(t.shape),
            "c_contiguous": bool(t.flags.c_contiguous),
            "writeable": bool(t.flags.writeable),
            "aligned": bool(t.flags.aligned),
            "sum": _plain(t.sum().item() if t.dtype.kind != "b" else int(t.sum())),
            "list": _plain(t.tolist()) if t.size <= 64 else None,
        }

    @tool
    def bad_tensor(self, payload: Any) -> Any:
        """An ext 84 with whatever payload it is given (a malformed tensor)."""
        from snakepit_bridge import codec

        if isinstance(payload, str):  # UTF-8 binaries arrive as str
            payload = payload.encode()

        if codec.NAME == "ormsgpack":
            import ormsgpack

            return ormsgpack.Ext(84, payload)
        import msgpack  # type: ignore[import-untyped]

        return msgpack.ExtType(84, payload)

    @tool
    def cached_tensor(self, n: int) -> Any:
        """A float32 array of n elements, made once per worker (for timing
        the transfer alone)."""
        import numpy as np

        cache = self.__dict__.setdefault("_cached_tensors", {})
        if n not in cache:
            cache[n] = np.ones(n, dtype=np.float32)
        return cache[n]

    @tool
    def tensor_stream(self, n: int, size: int) -> Any:
        """Yields n fresh float32 arrays of `size` elements, the i-th filled with i."""
        import numpy as np

        for i in range(n):
            yield np.full(size, i, dtype=np.float32)

    @tool
    def tensor_nbytes(self, t: Any) -> int:
        """The size of the array it was given (nothing else is looked at)."""
        return int(t.nbytes)

    # Shared memory (see test/snakepit/shm_test.exs).

    @tool
    def shm_arg_info(self, value: Any) -> Dict[str, Any]:
        """How an argument arrived: its type, size, a checksum, and for an
        array whether it views a read-only mapping (shared memory)."""
        import mmap
        import zlib

        info: Dict[str, Any] = {"type": type(value).__name__}
        if isinstance(value, bytes):
            info.update(size=len(value), crc=zlib.crc32(value))
        elif hasattr(value, "nbytes"):
            base = value
            while getattr(base, "base", None) is not None:
                base = base.base
            if isinstance(base, memoryview):
                base = base.obj
            info.update(
                size=int(value.nbytes),
                crc=zlib.crc32(memoryview(value).cast("B")),
                mapped=isinstance(base, mmap.mmap),
            )
        return info

    @tool
    def memfds(self) -> int:
        """How many memfd segments this worker holds open or mapped."""
        import os

        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                count += "memfd:snakepit" in os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        with open("/proc/self/maps") as maps:
            count += sum("memfd:snakepit" in line for line in maps)
        return count

    @tool
    def shm_pair(self, n: int) -> Dict[str, Any]:
        """Two large float32 arrays and small values around them."""
        import numpy as np

        return {"a": np.arange(n, dtype=np.float32), "b": np.full(n, 2.5, dtype=np.float32), "x": 1}

    @tool
    def shm_chunks(self, n: int, size: int) -> Iterator[bytes]:
        """n bytes chunks of `size` bytes each: chunk i is all byte i."""
        for i in range(n):
            yield bytes([i % 256]) * size

    @tool
    def shm_hold(self, n: int, path: str, timeout_ms: int = 30_000) -> Any:
        """Makes an n-byte result, then waits until `path` exists (so a test
        can kill whoever it likes meanwhile), then returns it."""
        import os
        import time

        data = bytes(n)
        deadline = time.monotonic() + timeout_ms / 1000
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)
        return data

    @tool
    def filled_tensor(self, n: int, value: float = 1.0) -> Any:
        """A float32 array of n elements, all `value`."""
        import numpy as np

        return np.full(n, value, dtype=np.float32)

    @tool
    def hold_arg(self, value: Any, path: str, timeout_ms: int = 30_000) -> int:
        """Holds its (large) argument until `path` exists; returns its size."""
        import os
        import time

        deadline = time.monotonic() + timeout_ms / 1000
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)
        return int(getattr(value, "nbytes", None) or len(value))

    @tool
    def shm_then_die(self, ctx: Context, n: int) -> None:
        """Sends an n-byte segment and its shm frame, then SIGKILLs itself
        before the result that would use them."""
        import gc
        import os
        import signal

        from snakepit_bridge import codec, shm
        from snakepit_bridge.channel import Channel

        channel = next(o for o in gc.get_objects() if isinstance(o, Channel) and o.max_frame and o._out_fd > 2)
        out = shm.Outgoing()
        out.add(memoryview(bytes(n)))
        out.send()
        announce = codec.packb(["shm", ctx.request_id, out.lengths])
        os.write(channel._out_fd, len(announce).to_bytes(4, "big") + announce)
        os.kill(os.getpid(), signal.SIGKILL)
