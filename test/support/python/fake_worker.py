#!/usr/bin/env python3
"""A worker that breaks the protocol on purpose, for tests of the host's defences.

Used as a pool's `python:` executable; it ignores its arguments. It sends a
valid `ready`, answers `call`s normally, except for the tool named in
FAKE_WORKER_BREAK_ON, on which it does FAKE_WORKER_MODE:
- "oversize": announces a frame of 4 GiB - 1 bytes;
- "garbage": writes bytes that are not a frame;
- "close_stdout": closes stdout and keeps running;
- "deep_result": answers with a result nested 300 levels deep;
- "stall_big": announces a frame of FAKE_WORKER_ANNOUNCE bytes (default
  60 MiB), writes 1 MiB of it, creates the file FAKE_WORKER_MARKER, and stalls.
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "priv", "python"))

from snakepit_bridge import PROTOCOL_VERSION, codec  # noqa: E402


def send(kind, request_id, body):
    payload = codec.packb([kind, request_id, body])
    os.write(1, len(payload).to_bytes(4, "big") + payload)


def main():
    mode = os.environ.get("FAKE_WORKER_MODE", "oversize")
    trigger = os.environ.get("FAKE_WORKER_BREAK_ON", "break")
    send("ready", 0, {"protocol": PROTOCOL_VERSION, "pid": os.getpid(), "adapter": "fake", "tools": ["echo", trigger]})
    stdin = sys.stdin.buffer
    while True:
        header = stdin.read(4)
        if len(header) < 4:
            return
        kind, request_id, body = codec.unpackb(stdin.read(int.from_bytes(header, "big")))
        if kind != "call":
            continue
        if body["tool"] != trigger:
            send("result", request_id, body["args"].get("value"))
        elif mode == "oversize":
            os.write(1, b"\xff\xff\xff\xff")
            time.sleep(30)
        elif mode == "garbage":
            os.write(1, b"\x00\x00\x00\x03not msgpack at all")
            time.sleep(30)
        elif mode == "deep_result":
            payload = b"\x93\xa6result" + codec.packb(request_id) + b"\x91" * 300 + b"\xc0"
            os.write(1, len(payload).to_bytes(4, "big") + payload)
        elif mode == "stall_big":
            announce = int(os.environ.get("FAKE_WORKER_ANNOUNCE", 60 << 20))
            os.write(1, announce.to_bytes(4, "big"))
            chunk = b"\x00" * (1 << 20)
            view = memoryview(chunk)
            while view:
                view = view[os.write(1, view):]
            open(os.environ["FAKE_WORKER_MARKER"], "w").close()
            time.sleep(30)
        elif mode == "close_stdout":
            os.close(1)
            time.sleep(30)


if __name__ == "__main__":
    main()
