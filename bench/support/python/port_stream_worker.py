"""The Port baseline of bench/stream.exs: a streaming worker with no credits.

Run as ``python3 port_stream_worker.py`` with ``priv/python`` and this
directory on ``PYTHONPATH``. It reads requests ``["stream", id, {"n": int,
"size": int}]`` from stdin and answers each with ``n`` frames ``["chunk",
id, bytes]`` written as fast as the pipe takes them (nothing holds it back,
like most peer libraries), then ``["done", id, nil]``. ``n`` = 0 streams
forever. Frames, codec and writes are the bridge's own
(``snakepit_bridge.channel.Channel``: 4-byte big-endian length + MessagePack,
one ``writev`` per frame), and the chunks come from the same generator as
the Snakepit adapter's, so the two differ only in what is around them.
"""

from __future__ import annotations

import sys

from snakepit_bench_stream_adapter import chunks
from snakepit_bridge import codec
from snakepit_bridge.channel import Channel


def main() -> int:
    channel = Channel(0, 1)
    channel.write("ready", 0, {"codec": codec.NAME})
    while True:
        raw = channel.read_raw()
        if raw is None:
            return 0
        kind, request_id, body = codec.unpackb(raw)
        if kind != "stream":
            channel.write("error", request_id, {"message": f"unknown kind {kind!r}"})
            continue
        for item in chunks(int(body["n"]), int(body["size"])):
            channel.write("chunk", request_id, item)
        channel.write("done", request_id, None)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BrokenPipeError, KeyboardInterrupt):
        sys.exit(0)
