"""The PEP 517/660 build backend of snakepit-bridge: standard library only.

Why not setuptools: the setuptools in a fresh ``python3 -m venv`` of Python
3.11 (65.5) cannot build a wheel without the ``wheel`` package, and venvs of
Python >= 3.12 have no setuptools at all, so every install would need PyPI.
With this backend ``requires = []``: pip's isolated build environment needs
nothing, and ``pip install ./priv/python`` builds offline (on Python < 3.11 it
asks for ``tomli`` to read pyproject.toml).

It reads only the ``[project]`` keys this package uses and refuses any other,
so a new key fails loudly instead of being ignored. A wheel holds the
``snakepit_bridge`` package (every file but caches, so ``py.typed`` too) and
its dist-info, nothing else; wheels are reproducible (fixed timestamps,
sorted entries).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
_KNOWN_KEYS = {"name", "version", "description", "requires-python", "dependencies", "optional-dependencies"}
_EPOCH = (1980, 1, 1, 0, 0, 0)
_WHEEL = "Wheel-Version: 1.0\nGenerator: snakepit_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"

Settings = Optional[Mapping[str, Any]]
Files = List[Tuple[str, bytes]]


class Project(NamedTuple):
    dist: str  # normalized name: file names and the import package
    version: str
    metadata: str  # core metadata (METADATA in wheels, PKG-INFO in sdists)


def _load_pyproject() -> Dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.9 and 3.10
        import tomli as tomllib
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def project() -> Project:
    """The ``[project]`` table as core metadata 2.1."""
    table: Dict[str, Any] = _load_pyproject()["project"]
    unknown = sorted(set(table) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"build_backend/snakepit_build.py does not handle [project] keys {unknown}")
    lines = ["Metadata-Version: 2.1", f"Name: {table['name']}", f"Version: {table['version']}"]
    if "description" in table:
        lines.append(f"Summary: {table['description']}")
    if "requires-python" in table:
        lines.append(f"Requires-Python: {table['requires-python']}")
    lines += [f"Requires-Dist: {req}" for req in table.get("dependencies", [])]
    for extra, reqs in table.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        for req in reqs:
            spec, _, marker = (part.strip() for part in req.partition(";"))
            condition = f'({marker}) and extra == "{extra}"' if marker else f'extra == "{extra}"'
            lines.append(f"Requires-Dist: {spec}; {condition}")
    dist = re.sub(r"[-_.]+", "_", table["name"]).lower()
    return Project(dist, table["version"], "\n".join(lines) + "\n")


def package_files() -> Files:
    """Every file of the import package, by its path relative to ROOT."""
    paths = (ROOT / project().dist).rglob("*")
    return sorted(
        (p.relative_to(ROOT).as_posix(), p.read_bytes())
        for p in paths
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def _write_wheel(wheel_directory: str, files: Files) -> str:
    proj = project()
    dist_info = f"{proj.dist}-{proj.version}.dist-info"
    files = files + [(f"{dist_info}/METADATA", proj.metadata.encode()), (f"{dist_info}/WHEEL", _WHEEL.encode())]
    record = []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            _add_to_zip(zf, name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        _add_to_zip(zf, f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode())
    filename = f"{proj.dist}-{proj.version}-py3-none-any.whl"
    Path(wheel_directory, filename).write_bytes(buf.getvalue())
    return filename


def _add_to_zip(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def get_requires_for_build_wheel(config_settings: Settings = None) -> List[str]:
    return [] if sys.version_info >= (3, 11) else ["tomli>=1.1"]


get_requires_for_build_sdist = get_requires_for_build_editable = get_requires_for_build_wheel


def build_wheel(
    wheel_directory: str, config_settings: Settings = None, metadata_directory: Optional[str] = None
) -> str:
    return _write_wheel(wheel_directory, package_files())


def build_editable(
    wheel_directory: str, config_settings: Settings = None, metadata_directory: Optional[str] = None
) -> str:
    """A wheel whose .pth file puts this directory on sys.path, so edits (and
    ``mix deps.update``) show without reinstalling."""
    return _write_wheel(wheel_directory, [(f"{project().dist}.pth", f"{ROOT}\n".encode())])


def build_sdist(sdist_directory: str, config_settings: Settings = None) -> str:
    proj = project()
    base = f"{proj.dist}-{proj.version}"
    files = [
        ("pyproject.toml", (ROOT / "pyproject.toml").read_bytes()),
        ("build_backend/snakepit_build.py", Path(__file__).read_bytes()),
        ("PKG-INFO", proj.metadata.encode()),
        *package_files(),
    ]
    filename = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, filename), "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return filename
