from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

HERE = Path(__file__).resolve().parent
PRIV_PYTHON = HERE.parent
LAUNCHER = PRIV_PYTHON / "launcher" / "snakepit_worker.py"
TEST_ADAPTERS = PRIV_PYTHON.parent.parent / "test" / "support" / "python"

for p in (str(PRIV_PYTHON), str(TEST_ADAPTERS)):
    if p not in sys.path:
        sys.path.insert(0, p)

from snakepit_bridge import codec  # noqa: E402


class WorkerProcess:
    """A real worker process, started as Snakepit starts them (the launcher
    script by absolute path), driven over its pipes."""

    def __init__(
        self,
        adapter: str,
        control: bool = False,
        blocked: Sequence[str] = (),
        cwd: Optional[Path] = None,
        python_path: Sequence[Path] = (),
        extra_env: Optional[Dict[str, str]] = None,
        launcher: Path = LAUNCHER,
    ) -> None:
        """``blocked``: modules the worker cannot import (``sys.modules[name] = None``).
        ``python_path``: directories before the bridge's on PYTHONPATH, like the
        pool's ``:python_path``; ``extra_env``: more environment variables."""
        env = {**os.environ, **(extra_env or {})}
        env["PYTHONPATH"] = os.pathsep.join(map(str, [*python_path, PRIV_PYTHON, TEST_ADAPTERS]))
        pass_fds: Tuple[int, ...] = ()
        self.control_fd: Optional[int] = None
        if control:
            read_end, self.control_fd = os.pipe()
            env["SNAKEPIT_CONTROL_FD"] = str(read_end)
            pass_fds = (read_end,)
        if blocked:
            block = f"import sys; sys.modules.update(dict.fromkeys({list(blocked)!r}))"
            start = ["-c", f"{block}; from snakepit_bridge.__main__ import main; sys.exit(main())"]
        else:
            start = [str(launcher)]
        self.proc = subprocess.Popen(
            [sys.executable, *start, "--adapter", adapter],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            pass_fds=pass_fds,
            cwd=cwd,
        )
        if control:
            os.close(read_end)

    def send_control(self, kind: str, request_id: int, body: Any = None) -> None:
        """A frame on the control pipe, as the host sends heartbeats, cancels and acks."""
        assert self.control_fd is not None
        payload = codec.packb([kind, request_id, body])
        os.write(self.control_fd, len(payload).to_bytes(4, "big") + payload)

    def send(self, kind: str, request_id: int, body: Any) -> None:
        self.send_raw(codec.packb([kind, request_id, body]))

    def send_raw(self, payload: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(len(payload).to_bytes(4, "big") + payload)
        self.proc.stdin.flush()

    def recv(self) -> Optional[Tuple[str, int, Any]]:
        assert self.proc.stdout is not None
        header = self.proc.stdout.read(4)
        if not header:
            return None
        body = self.proc.stdout.read(int.from_bytes(header, "big"))
        kind, request_id, payload = codec.unpackb(body)
        return kind, request_id, payload

    def recv_skipping_logs(self) -> Optional[Tuple[str, int, Any]]:
        while True:
            frame = self.recv()
            if frame is None or frame[0] != "log":
                return frame

    def call(
        self, request_id: int, tool: str, args: Any = None, session_id: Optional[str] = None
    ) -> Tuple[str, int, Any]:
        """A plain call, and its answer."""
        self.send_call(request_id, tool, args, session_id=session_id)
        return self.recv_frame()

    def send_call(
        self,
        request_id: int,
        tool: str,
        args: Any = None,
        session_id: Optional[str] = None,
        stream: Any = None,
    ) -> None:
        body = {"tool": tool, "args": args or {}, "session_id": session_id, "stream": stream}
        self.send("call", request_id, body)

    def recv_frame(self) -> Tuple[str, int, Any]:
        """The next frame that is not a log; fails if the worker closed stdout."""
        frame = self.recv_skipping_logs()
        assert frame is not None
        return frame

    def stream(
        self, request_id: int, tool: str, args: Any = None, session_id: Optional[str] = None
    ) -> List[Tuple[str, int, Any]]:
        """A streaming call with a window so large that it never waits for
        an ack, and every frame that answers it, the last one included."""
        self.send_call(request_id, tool, args, session_id=session_id, stream=2**32)
        frames = [self.recv_frame()]
        while frames[-1][0] == "chunk":
            frames.append(self.recv_frame())
        return frames

    def stop(self) -> None:
        """Kills the process if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> Tuple[int, bytes]:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout=10)
        return code, self.proc.stderr.read()


def _ready_worker(control: bool, adapter: str = "snakepit_test_adapters.TestAdapter") -> Iterator[WorkerProcess]:
    python_path = [HERE] if adapter.startswith("pytest_adapters.") else []
    w = WorkerProcess(adapter, control=control, python_path=python_path)
    ready = w.recv()
    assert ready is not None and ready[0] == "ready"
    yield w
    w.stop()


@pytest.fixture
def worker() -> Iterator[WorkerProcess]:
    yield from _ready_worker(control=False)


@pytest.fixture
def controlled() -> Iterator[WorkerProcess]:
    """A worker with a control pipe, as Snakepit starts them."""
    yield from _ready_worker(control=True)


@pytest.fixture
def extra() -> Iterator[WorkerProcess]:
    """A worker with a control pipe, serving the test adapter's tools plus
    those of ``pytest_adapters.PytestAdapter``."""
    yield from _ready_worker(control=True, adapter="pytest_adapters.PytestAdapter")


@pytest.fixture
def spawn() -> Iterator[Any]:
    started: List[WorkerProcess] = []

    def _spawn(adapter: str, blocked: Sequence[str] = (), **options: Any) -> WorkerProcess:
        w = WorkerProcess(adapter, blocked=blocked, **options)
        started.append(w)
        return w

    yield _spawn
    for w in started:
        w.stop()
