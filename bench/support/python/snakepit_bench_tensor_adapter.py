"""The adapter of bench/tensor.exs: float32 arrays to and from Elixir,
with nothing but the transfer timed.

``cached_tensor`` makes its array once per worker and size (the same tool
as in test/support/python/snakepit_test_adapters.py), so a timed call
moves an array that already exists; ``tensor_nbytes`` answers with the
size of the array it got and looks at nothing else; ``tensor_echo``
returns its argument as it arrived.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from snakepit_bridge import BaseAdapter, tool


class TensorBenchAdapter(BaseAdapter):
    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self._cached: Dict[int, Any] = {}

    @tool
    def cached_tensor(self, n: int) -> Any:
        """A float32 array of ``n`` elements, made on the first call only."""
        if n not in self._cached:
            self._cached[n] = np.ones(n, dtype=np.float32)
        return self._cached[n]

    @tool
    def drop_cache(self) -> int:
        """Forgets the cached arrays (so a 1 GB one does not outlive its size)."""
        self._cached.clear()
        return 0

    @tool
    def tensor_nbytes(self, t: Any) -> int:
        """The size of the array it was given."""
        return int(t.nbytes)

    @tool
    def tensor_echo(self, t: Any) -> Any:
        """Returns its argument as it arrived."""
        return t
