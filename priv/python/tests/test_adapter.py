"""Adapters and tools, without a process."""

from __future__ import annotations

import pytest

from snakepit_bridge import BaseAdapter, tool
from snakepit_bridge.adapter import AdapterLoadError, load_adapter
from snakepit_bridge.examples.demo import DemoAdapter


class Parent(BaseAdapter):
    @tool
    def shared(self) -> str:
        return "parent"

    @tool(name="renamed")
    def original(self, x: int, *, scale: int = 2) -> int:
        """Scales x."""
        return x * scale


class Child(Parent):
    @tool
    def shared(self) -> str:
        return "child"


def test_tools_are_collected_across_the_class_tree_with_overrides():
    tools = Child().tools()
    assert set(tools) == {"ping", "describe", "shared", "renamed"}
    assert tools["shared"]() == "child"
    assert tools["renamed"](x=3) == 6


def test_describe_gives_signatures_and_docs():
    info = Parent().describe()
    assert info["adapter"].endswith("test_adapter.Parent")
    assert info["tools"]["renamed"]["signature"] == "(x: int, *, scale: int = 2) -> int"
    assert info["tools"]["renamed"]["parameters"] == ["x", "scale"]
    assert info["tools"]["renamed"]["doc"] == "Scales x."


def test_describe_leaves_out_the_ctx_the_bridge_fills_in():
    info = DemoAdapter().describe()["tools"]["remember"]
    assert info["parameters"] == ["key", "value"]
    assert "ctx" not in info["signature"]


def test_load_adapter_by_dotted_path():
    adapter = load_adapter("snakepit_bridge.examples.demo.DemoAdapter")
    assert isinstance(adapter, DemoAdapter)
    assert adapter.tools()["word_count"](text="a b a") == {"a": 2, "b": 1}


@pytest.mark.parametrize(
    "path, fragment",
    [
        ("NoDots", "not of the form"),
        ("snakepit_bridge.examples.demo.Missing", "has no attribute 'Missing'"),
        ("snakepit_bridge.adapter.tool", "not a subclass"),
    ],
)
def test_load_adapter_errors_say_what_is_wrong(path, fragment):
    with pytest.raises(AdapterLoadError, match=fragment):
        load_adapter(path)


def test_an_adapter_only_in_the_working_directory_is_not_imported_and_the_error_says_why(tmp_path, monkeypatch):
    (tmp_path / "snakepit_cwd_only_adapter.py").write_text("raise AssertionError('imported from the cwd')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModuleNotFoundError) as e:
        load_adapter("snakepit_cwd_only_adapter.Adapter")
    assert e.value.name == "snakepit_cwd_only_adapter"
    assert str(e.value) == (
        f"No module named 'snakepit_cwd_only_adapter' (the worker's working directory {tmp_path} has "
        "snakepit_cwd_only_adapter.py, but the working directory is not on sys.path: "
        "add it to the pool's :python_path)"
    )


def test_no_working_directory_hint_when_it_would_not_help(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModuleNotFoundError, match=r"^No module named 'snakepit_nowhere'$"):
        load_adapter("snakepit_nowhere.Adapter")
    # The package was found (elsewhere): what is missing is not in the cwd.
    (tmp_path / "snakepit_bridge").mkdir()
    with pytest.raises(ModuleNotFoundError, match=r"^No module named 'snakepit_bridge.nowhere'$"):
        load_adapter("snakepit_bridge.nowhere.Adapter")


def test_importing_the_package_has_no_side_effects():
    import subprocess
    import sys
    from pathlib import Path

    priv_python = str(Path(__file__).resolve().parent.parent)
    code = "import sys, snakepit_bridge, snakepit_bridge.examples.demo; print(sys.stdout.fileno())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": priv_python}, check=True)
    assert out.stdout.strip() == "1" and out.stderr == ""


def test_msgpack_fallback_codec_round_trips_like_ormsgpack():
    """With ormsgpack missing, the bridge falls back to msgpack, same wire format."""
    import subprocess
    import sys
    from pathlib import Path

    priv_python = str(Path(__file__).resolve().parent.parent)
    code = (
        "import sys; sys.modules['ormsgpack'] = None\n"
        "from snakepit_bridge import codec\n"
        "v = [None, True, 2**64 - 1, -(2**63), 1.5, 'h\\u00e9', b'\\xff', [], {1: {'k': [2]}}]\n"
        "assert codec.NAME == 'msgpack', codec.NAME\n"
        "assert codec.unpackb(codec.packb(v)) == v\n"
        "assert codec.packb({'a': {1, 2}}) == codec.packb({'a': [1, 2]})\n"
    )
    subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": priv_python}, check=True)


def test_demo_streaming_and_session_tools():
    from snakepit_bridge import Context, Session

    tools = DemoAdapter().tools()
    assert list(tools["countdown"](n=3)) == [3, 2, 1]
    ctx = Context(Session("s"), request_id=1, streaming=False)
    assert tools["remember"](ctx=ctx, key="k", value=5) == 5
    assert tools["remember"](ctx=ctx, key="k") == 5
    with pytest.raises(ValueError, match="needs a session"):
        tools["remember"](ctx=Context(None, request_id=2, streaming=False), key="k")
