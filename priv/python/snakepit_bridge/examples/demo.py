"""The demo adapter behind the README's quick start.

    Snakepit.execute("add", %{a: 1, b: 2})          #=> {:ok, 3}
    Snakepit.execute("word_count", %{text: "a b a"}) #=> {:ok, %{"a" => 2, "b" => 1}}

``countdown`` is a generator: streamed, it sends its items one by one;
called plainly, it returns them as a list. ``remember`` keeps state per
session (calls with the same ``session_id``), through its ``ctx`` parameter.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List

from snakepit_bridge import BaseAdapter, Context, tool


class DemoAdapter(BaseAdapter):
    """A few small tools, and a counter that shows state living in the worker."""

    def __init__(self) -> None:
        self.calls = 0

    @tool
    def add(self, a: float, b: float) -> float:
        """Adds two numbers."""
        return a + b

    @tool
    def echo(self, value: Any = None) -> Any:
        """Returns its argument unchanged."""
        return value

    @tool
    def word_count(self, text: str) -> Dict[str, int]:
        """Counts the words of a text."""
        counts: Dict[str, int] = {}
        for word in text.split():
            counts[word] = counts.get(word, 0) + 1
        return counts

    @tool
    def fibonacci(self, n: int) -> List[int]:
        """The first n Fibonacci numbers."""
        out: List[int] = []
        a, b = 0, 1
        for _ in range(n):
            out.append(a)
            a, b = b, a + b
        return out

    @tool
    def counter(self) -> int:
        """How many times this worker's counter was called (state per worker)."""
        self.calls += 1
        return self.calls

    @tool
    def countdown(self, n: int) -> Iterator[int]:
        """Yields n, n-1, ..., 1: a streaming tool (called plainly, the list)."""
        yield from range(n, 0, -1)

    @tool
    def remember(self, ctx: Context, key: str, value: Any = None) -> Any:
        """Stores value under key in the session's state (when value is given),
        and returns what the session holds under key. Needs a session_id."""
        if ctx.session is None:
            raise ValueError("remember needs a session: call it with a session_id")
        if value is not None:
            ctx.session.state[key] = value
        return ctx.session.state.get(key)
