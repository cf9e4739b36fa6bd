"""What users write: an adapter class whose ``@tool`` methods Elixir can call.

    from snakepit_bridge import BaseAdapter, tool

    class MyAdapter(BaseAdapter):
        @tool
        def add(self, a: int, b: int) -> int:
            return a + b

One instance lives as long as its worker process, so it can hold state
(a loaded model, a connection) across calls. ``Snakepit.execute("add",
%{a: 1, b: 2})`` calls ``add(a=1, b=2)``.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, TypeVar, overload

if TYPE_CHECKING:
    from .context import Session

__all__ = ["BaseAdapter", "tool", "load_adapter", "AdapterLoadError"]

F = TypeVar("F", bound=Callable[..., Any])

_TOOL_ATTR = "__snakepit_tool__"


@overload
def tool(fn: F) -> F: ...
@overload
def tool(*, name: Optional[str] = None) -> Callable[[F], F]: ...


def tool(fn: Optional[F] = None, *, name: Optional[str] = None) -> Any:
    """Marks a method as callable from Elixir, under its own name or ``name``."""

    def mark(f: F) -> F:
        setattr(f, _TOOL_ATTR, name or f.__name__)
        return f

    return mark(fn) if fn is not None else mark


class BaseAdapter:
    """Base class for adapters. Subclasses add ``@tool`` methods.

    Built in: ``ping`` and ``describe``. Override ``close`` to release
    resources when the worker stops, and ``on_session_end`` to release a
    session's.
    """

    def tools(self) -> Dict[str, Callable[..., Any]]:
        """Tool name -> bound method, for every ``@tool`` in the class tree."""
        found: Dict[str, Callable[..., Any]] = {}
        for klass in reversed(type(self).__mro__):
            for attr, value in vars(klass).items():
                tool_name = getattr(value, _TOOL_ATTR, None)
                if tool_name is not None:
                    found[tool_name] = getattr(self, attr)
        return found

    @tool
    def ping(self) -> str:
        """Answers "pong": a cheap liveness check."""
        return "pong"

    @tool
    def describe(self) -> Dict[str, Any]:
        """The adapter's tools with their signatures and docs: what a caller
        passes, so without the ``ctx`` parameter the bridge fills in."""
        tools = {}
        for name, fn in sorted(self.tools().items()):
            sig = _signature(fn)
            if "ctx" in sig.parameters:
                sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "ctx"])
            tools[name] = {
                "signature": str(sig),
                "parameters": list(sig.parameters),
                "doc": inspect.getdoc(fn) or "",
            }
        return {"adapter": f"{type(self).__module__}.{type(self).__qualname__}", "tools": tools}

    def close(self) -> None:
        """Called once when the worker stops. Does nothing by default."""

    def on_session_end(self, session: "Session") -> None:
        """Called when the host ends a session this worker holds, just before
        the worker forgets it (and its ``state``). Does nothing by default.

        Runs on the main thread between calls. An exception it raises is
        logged and otherwise ignored. It is not called for the sessions still
        held when the worker stops: ``close`` is.
        """


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    """The signature with string annotations resolved where they can be."""
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:
        return inspect.signature(fn)


class AdapterLoadError(Exception):
    """The adapter named on the command line could not be loaded."""


def load_adapter(path: str) -> BaseAdapter:
    """Imports ``pkg.module.ClassName`` and instantiates it with no arguments."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise AdapterLoadError(f"adapter {path!r} is not of the form 'package.module.ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = _cwd_hint(module_name, exc)
        if hint is None:
            raise
        raise ModuleNotFoundError(f"{exc} ({hint})", name=exc.name, path=exc.path) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise AdapterLoadError(f"module {module_name!r} has no attribute {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, BaseAdapter)):
        raise AdapterLoadError(f"{path!r} is not a subclass of snakepit_bridge.BaseAdapter")
    return cls()


def _cwd_hint(module_name: str, exc: ModuleNotFoundError) -> Optional[str]:
    """Why the adapter's package was not found, if it is in the working directory.

    Workers do not have their working directory on ``sys.path`` (it could
    shadow the bridge's own imports; see docs/python.md), so an adapter that
    lives there must be on the pool's ``:python_path``.
    """
    top = module_name.split(".")[0]
    if exc.name != top:
        return None
    try:
        cwd = os.getcwd()
    except OSError:
        return None
    for candidate in (f"{top}.py", top):
        if os.path.exists(os.path.join(cwd, candidate)):
            return (
                f"the worker's working directory {cwd} has {candidate}, but the working directory "
                "is not on sys.path: add it to the pool's :python_path"
            )
    return None
