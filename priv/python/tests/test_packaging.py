"""The in-tree build backend (build_backend/snakepit_build.py) makes the wheel
scripts/check_python_package installs; these check its contents quickly."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import sys
import zipfile
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parent.parent / "build_backend" / "snakepit_build.py"


def _backend():
    spec = importlib.util.spec_from_file_location("snakepit_build", BACKEND)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wheel_holds_the_package_and_py_typed_but_no_tests(tmp_path):
    backend = _backend()
    if sys.version_info >= (3, 11):
        assert backend.get_requires_for_build_wheel() == []  # nothing to download
    with zipfile.ZipFile(tmp_path / backend.build_wheel(str(tmp_path))) as whl:
        names = whl.namelist()
        for expected in ["py.typed", "examples/demo.py", "worker.py"]:
            assert f"snakepit_bridge/{expected}" in names
        assert all(n.startswith(("snakepit_bridge/", "snakepit_bridge-0.1.0.dist-info/")) for n in names), names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        metadata = whl.read("snakepit_bridge-0.1.0.dist-info/METADATA").decode()
        for line in ["Name: snakepit-bridge", "Requires-Python: >=3.9", "Requires-Dist: msgpack>=1.0"]:
            assert line in metadata.splitlines()
        assert 'Requires-Dist: ormsgpack>=1.4; extra == "fast"' in metadata
        record = whl.read("snakepit_bridge-0.1.0.dist-info/RECORD").decode().splitlines()
        for row in record:
            name, digest, size = row.rsplit(",", 2)
            if digest:
                data = whl.read(name)
                expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                assert (digest, int(size)) == (f"sha256={expected}", len(data)), name
        assert len(record) == len(names)


def test_wheels_are_reproducible(tmp_path):
    backend = _backend()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    name = backend.build_wheel(str(tmp_path / "a"))
    backend.build_wheel(str(tmp_path / "b"))
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_unknown_project_keys_are_refused(monkeypatch):
    backend = _backend()
    table = {"name": "snakepit-bridge", "version": "0.1.0", "scripts": {"x": "y:z"}}
    monkeypatch.setattr(backend, "_load_pyproject", lambda: {"project": table})
    with pytest.raises(ValueError, match="scripts"):
        backend.project()


def test_editable_wheel_points_a_pth_file_at_this_tree(tmp_path):
    backend = _backend()
    with zipfile.ZipFile(tmp_path / backend.build_editable(str(tmp_path))) as whl:
        pth = [n for n in whl.namelist() if not n.startswith("snakepit_bridge-0.1.0.dist-info/")]
        assert pth == ["snakepit_bridge.pth"]
        assert whl.read("snakepit_bridge.pth").decode().strip() == str(BACKEND.parent.parent)
