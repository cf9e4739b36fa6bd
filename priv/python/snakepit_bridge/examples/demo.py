"""The demo adapter behind the README's quick start.

    Snakepit.execute("add", %{a: 1, b: 2})          #=> {:ok, 3}
    Snakepit.execute("word_count", %{text: "a b a"}) #=> {:ok, %{"a" => 2, "b" => 1}}
"""

from __future__ import annotations

from typing import Any, Dict, List

from snakepit_bridge import BaseAdapter, tool


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
