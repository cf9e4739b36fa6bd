"""Starts a Snakepit worker: ``python3 /abs/path/launcher/snakepit_worker.py --adapter pkg.module.ClassName``.

Snakepit runs this file by its absolute path rather than ``python3 -m
snakepit_bridge``, because ``-m`` puts the working directory first on
``sys.path``: a ``snakepit_bridge/``, ``msgpack.py`` or ``logging.py`` there
would be imported instead of the real one. Python puts a script's own
directory there instead (this one, which holds nothing else), unless ``-I``
or ``PYTHONSAFEPATH`` (3.11+) tells it to put nothing. This script removes
that entry before it imports anything, so ``sys.path`` is what
``PYTHONPATH`` and the interpreter make it, and the working directory is
not on it. See docs/python.md, "The worker's sys.path".

Before that it imports only ``os`` and ``sys``, which the interpreter has
already loaded by the time a script runs.
"""

import os
import sys


def drop_own_dir(path: list[str], script: str) -> bool:
    """Removes ``script``'s directory from the front of ``path``, if Python put it there."""
    # Python puts realpath(script)'s directory there (symlinks resolved).
    if path and path[0] == os.path.dirname(os.path.realpath(script)):
        del path[0]
        return True
    return False


def main() -> int:
    drop_own_dir(sys.path, __file__)
    from snakepit_bridge.__main__ import main as bridge_main

    return bridge_main()


if __name__ == "__main__":
    sys.exit(main())
