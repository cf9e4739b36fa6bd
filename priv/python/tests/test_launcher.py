"""launcher/snakepit_worker.py: what a worker's sys.path holds, and that
modules in its working directory never shadow the bridge or its imports."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from conftest import LAUNCHER, PRIV_PYTHON, TEST_ADAPTERS

PROBE = """
import importlib
import sys

from snakepit_bridge import BaseAdapter, tool


class Probe(BaseAdapter):
    @tool
    def sys_path(self):
        return sys.path

    @tool
    def origin(self, module):
        try:
            return importlib.import_module(module).__file__
        except ModuleNotFoundError:
            return None
"""


def _launcher_module():
    spec = importlib.util.spec_from_file_location("snakepit_worker", LAUNCHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def probe_dir(tmp_path):
    d = tmp_path / "probe"
    d.mkdir()
    (d / "path_probe.py").write_text(PROBE)
    return d


def _plant(cwd: Path, relative: str, markers: Path) -> None:
    """A module that leaves a marker and exits 86 if it is ever imported."""
    path = cwd / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = markers / relative.replace("/", ".")
    path.write_text(f"import os\nopen({str(marker)!r}, 'w').close()\nos._exit(86)\n")


def _ready(w):
    frame = w.recv()
    assert frame is not None, w.close()
    assert frame[0] == "ready", frame
    return w


def _call(w, tool, **args):
    kind, _, body = w.call(1, tool, args)
    assert kind == "result", body
    return body


def test_drop_own_dir_removes_the_scripts_real_directory_only(tmp_path):
    drop = _launcher_module().drop_own_dir
    real = tmp_path / "real"
    real.mkdir()
    (real / "s.py").write_text("")
    (tmp_path / "link").symlink_to(real)

    path = [str(real), "/a"]
    assert drop(path, str(tmp_path / "link" / "s.py")) and path == ["/a"]
    # Under -I or PYTHONSAFEPATH Python puts nothing there: keep what is.
    path = ["/a", str(real)]
    assert not drop(path, str(real / "s.py")) and path == ["/a", str(real)]
    assert not drop([], str(real / "s.py"))


HOSTILE = {
    "a snakepit_bridge package": ["snakepit_bridge/__init__.py", "snakepit_bridge/__main__.py"],
    "the codecs": ["ormsgpack.py", "msgpack.py"],
    "stdlib modules": ["logging.py", "argparse.py", "traceback.py", "inspect.py", "json.py", "sitecustomize.py"],
}


@pytest.mark.parametrize("planted", HOSTILE.values(), ids=HOSTILE.keys())
def test_modules_in_the_working_directory_are_never_imported(spawn, probe_dir, tmp_path, planted):
    cwd, markers = tmp_path / "cwd", tmp_path / "markers"
    cwd.mkdir()
    markers.mkdir()
    for relative in planted:
        _plant(cwd, relative, markers)

    w = _ready(spawn("path_probe.Probe", cwd=cwd, python_path=[probe_dir]))
    for module in ["snakepit_bridge", "ormsgpack", "msgpack", "logging", "json"]:
        origin = _call(w, "origin", module=module)  # None: not installed
        assert origin is None or not origin.startswith(str(cwd)), module
    assert str(cwd) not in _call(w, "sys_path")
    assert list(markers.iterdir()) == []


def test_sys_path_is_pythonpath_then_the_interpreters_own(spawn, probe_dir, tmp_path):
    w = _ready(spawn("path_probe.Probe", cwd=tmp_path, python_path=[probe_dir]))
    path = _call(w, "sys_path")
    assert path[:3] == [str(probe_dir), str(PRIV_PYTHON), str(TEST_ADAPTERS)]
    assert str(LAUNCHER.parent) not in path
    assert str(tmp_path) not in path


def test_a_launcher_reached_through_a_symlink_leaves_no_entry(spawn, probe_dir, tmp_path):
    link = tmp_path / "linked_launcher"
    link.symlink_to(LAUNCHER.parent)
    w = _ready(spawn("path_probe.Probe", python_path=[probe_dir], launcher=link / LAUNCHER.name))
    path = _call(w, "sys_path")
    assert path[0] == str(probe_dir)
    assert not ({str(link), str(LAUNCHER.parent), os.path.realpath(LAUNCHER.parent)} & set(path))


def test_safe_path_leaves_the_first_pythonpath_entry_in_place(spawn, probe_dir):
    # PYTHONSAFEPATH (Python >= 3.11; ignored before) puts no script
    # directory on sys.path: the launcher must not remove anything then.
    w = _ready(spawn("path_probe.Probe", python_path=[probe_dir], extra_env={"PYTHONSAFEPATH": "1"}))
    assert _call(w, "sys_path")[:2] == [str(probe_dir), str(PRIV_PYTHON)]


def test_an_adapter_in_the_working_directory_is_not_imported_and_the_error_says_why(spawn, tmp_path):
    (tmp_path / "cwd_adapter.py").write_text("raise AssertionError('imported from the cwd')\n")
    w = spawn("cwd_adapter.Adapter", cwd=tmp_path)
    kind, request_id, body = w.recv()
    assert (kind, request_id, body["kind"], body["type"]) == ("error", 0, "adapter_load", "ModuleNotFoundError")
    assert f"working directory {tmp_path} has cwd_adapter.py" in body["message"]
    assert w.proc.wait(timeout=10) == 3
