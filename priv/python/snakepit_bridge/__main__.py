"""``python3 -m snakepit_bridge --adapter pkg.module.ClassName``

Snakepit does not start workers this way but through
``launcher/snakepit_worker.py``, which calls ``main()``: ``-m`` puts the
working directory first on ``sys.path``, where a module could shadow the
bridge's own (see docs/python.md). By hand, ``-m`` is fine.

Keeps the protocol pipes away from user code: the real stdin/stdout are
moved to private descriptors, fd 0 becomes /dev/null and fd 1 points at
stderr, so ``print()`` (and C extensions, and child processes) write to
stderr, which Snakepit forwards to Logger.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="snakepit_bridge", description=__doc__)
    parser.add_argument("--adapter", required=True, help="pkg.module.ClassName of a BaseAdapter")
    opts = parser.parse_args(argv)

    proto_in = os.dup(0)
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    from .worker import serve

    return serve(opts.adapter, proto_in, proto_out)


if __name__ == "__main__":
    sys.exit(main())
