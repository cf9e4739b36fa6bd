#!/usr/bin/env python3
"""A worker that misbehaves on demand, written from docs/protocol.md alone.

Used as a pool's `python:` executable: the pool runs it as
`<this script> -m snakepit_bridge --adapter X`, and it ignores its arguments.
It imports neither snakepit_bridge nor any msgpack library: the few
MessagePack shapes it needs are encoded and decoded by hand below. It never
reads the control pipe, so run it with `heartbeat_interval: :infinity`.

Environment:
- HOSTILE_PROTOCOL: the protocol version its `ready` announces (default 3).
- HOSTILE_BEFORE_READY: what it does instead of a clean start:
  - `error_body_list`: an `error` with id 0 whose body is a list, then exit 3;
  - `error_body_int`: an `error` with id 0 whose body is an integer, then exit 3;
  - `error_fields_wrong`: an `error` with id 0 whose body is a map with
    fields of the wrong types, then exit 3;
  - `ready_body_int`: a `ready` whose body is an integer, then serves;
  - `ready_body_list`: a `ready` whose body is a list, then serves;
  - `log_body_list`: a `log` whose body is a list, then a valid `ready`.
- HOSTILE_BEFORE_READY_ONCE: a file path. If set, HOSTILE_BEFORE_READY only
  applies while that file exists, and the worker deletes it: one worker
  misbehaves, the next starts cleanly.

Tools (any other name is answered with an `unknown_tool` error):
- `echo`: returns args["value"];
- `getenv`: returns the environment variable args["name"], or nil;
- `exit`: exits at once with status args["status"] (default 7);
- `send_log_list`, `send_log_int`, `send_log_nil`, `send_log_fields_wrong`
  (level, logger, message of the wrong types), `send_log_undecodable`
  (a body that is not MessagePack at all): sends that `log` frame
  args["times"] times (default 1), then returns "sent";
- `send_error_message_map`: answers with an `error` whose message is a map;
- `send_error_message_bin`: ... whose message is bytes that are not UTF-8;
- `send_error_fields_wrong`: ... whose kind, type, message, traceback and
  tool are all of the wrong types;
- `send_error_body_list`, `send_error_body_int`: ... whose body is a list,
  an integer.
"""

import os
import struct
import sys


def pack(v):
    """MessagePack for None, bool, non-negative int, str, bytes, list, dict."""
    if v is None:
        return b"\xc0"
    if v is True or v is False:
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        return bytes([v]) if v < 0x80 else b"\xcf" + struct.pack(">Q", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        if len(b) < 0x100:
            return b"\xd9" + bytes([len(b)]) + b
        if len(b) < 0x10000:
            return b"\xda" + struct.pack(">H", len(b)) + b
        return b"\xdb" + struct.pack(">I", len(b)) + b
    if isinstance(v, bytes):
        return b"\xc6" + struct.pack(">I", len(v)) + v
    if isinstance(v, list):
        head = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdc" + struct.pack(">H", len(v))
        return head + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        head = b"\xde" + struct.pack(">H", len(v))
        return head + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(f"cannot pack {type(v).__name__}")


# Decoding: what the host sends (call frames with any argument values).
_FIXED = {0xC0: None, 0xC2: False, 0xC3: True}
# fmt: off
_SIZED = {  # tag: (struct format of the size or value, what follows)
    0xC4: (">B", "bin"), 0xC5: (">H", "bin"), 0xC6: (">I", "bin"),
    0xD9: (">B", "str"), 0xDA: (">H", "str"), 0xDB: (">I", "str"),
    0xDC: (">H", "array"), 0xDD: (">I", "array"),
    0xDE: (">H", "map"), 0xDF: (">I", "map"),
    0xCA: (">f", None), 0xCB: (">d", None),
    0xCC: (">B", None), 0xCD: (">H", None), 0xCE: (">I", None), 0xCF: (">Q", None),
    0xD0: (">b", None), 0xD1: (">h", None), 0xD2: (">i", None), 0xD3: (">q", None),
}
# fmt: on


def unpack(data, pos=0):
    """The value at data[pos:] and the position after it."""
    tag = data[pos]
    pos += 1
    if tag <= 0x7F or tag >= 0xE0:
        return (tag if tag <= 0x7F else tag - 0x100), pos
    if tag in _FIXED:
        return _FIXED[tag], pos
    if 0xA0 <= tag <= 0xBF:
        what, n = "str", tag & 0x1F
    elif 0x90 <= tag <= 0x9F:
        what, n = "array", tag & 0x0F
    elif 0x80 <= tag <= 0x8F:
        what, n = "map", tag & 0x0F
    else:
        fmt, what = _SIZED[tag]
        (n,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        if what is None:
            return n, pos
    if what in ("str", "bin"):
        raw = data[pos : pos + n]
        return (raw.decode() if what == "str" else raw), pos + n
    items = []
    for _ in range(n * (2 if what == "map" else 1)):
        item, pos = unpack(data, pos)
        items.append(item)
    return (items if what == "array" else dict(zip(items[::2], items[1::2]))), pos


def send_raw(payload):
    os.write(1, struct.pack(">I", len(payload)) + payload)


def send(kind, request_id, body):
    send_raw(pack([kind, request_id, body]))


def read_frame(stdin):
    header = stdin.read(4)
    if len(header) < 4:
        return None
    (size,) = struct.unpack(">I", header)
    return unpack(stdin.read(size))[0]


WRONG_FIELDS = {"kind": 7, "type": ["Not", "a", "str"], "message": {"a": [1, 2]}, "traceback": 12, "tool": {"x": None}}
LOG_BODIES = {
    "send_log_list": [1, "two"],
    "send_log_int": 42,
    "send_log_nil": None,
    "send_log_fields_wrong": {"level": 3, "logger": ["x"], "message": {"m": 1}},
}
ERROR_BODIES = {
    "send_error_message_map": {
        "kind": "exception",
        "type": "ValueError",
        "message": {"secret": [1, 2]},
        "traceback": None,
        "tool": "x",
    },
    "send_error_message_bin": {
        "kind": "exception",
        "type": "ValueError",
        "message": b"\xff\xfe not utf-8",
        "traceback": None,
        "tool": "x",
    },
    "send_error_fields_wrong": WRONG_FIELDS,
    "send_error_body_list": ["exception", "ValueError"],
    "send_error_body_int": 42,
}

ELIXIR_CALLS = {  # tool: (id, body) of an elixir_call the host must refuse
    "elixir_call_body_nil": (5, None),
    "elixir_call_no_name": (5, {"args": {}}),
    "elixir_call_args_list": (5, {"name": "f", "args": [1]}),
    "elixir_call_timeout_zero": (5, {"name": "f", "timeout_ms": 0}),
    "elixir_call_id_0": (0, {"name": "f"}),
}


BEFORE_READY = {  # mode: the frame sent instead of, or before, the `ready`
    "error_body_list": ("error", ["adapter_load", "boom"]),
    "error_body_int": ("error", 3),
    "error_fields_wrong": ("error", WRONG_FIELDS),
    "ready_body_int": ("ready", 1),
    "ready_body_list": ("ready", [1, "fake"]),
    "log_body_list": ("log", ["info", "hostile", "a list"]),
}


def before_ready(mode):
    """Sends the frame of a HOSTILE_BEFORE_READY mode; True if a valid `ready` is still to be sent."""
    kind, body = BEFORE_READY[mode]
    send(kind, 0, body)
    if kind == "error":
        sys.exit(3)  # as the bridge does after an adapter_load error
    return kind == "log"


def main():
    mode = os.environ.get("HOSTILE_BEFORE_READY", "")
    once = os.environ.get("HOSTILE_BEFORE_READY_ONCE")
    if once:
        mode = mode if os.path.exists(once) else ""
        if mode:
            os.remove(once)
    tools = ["echo", "getenv", "exit", "send_log_undecodable", *LOG_BODIES, *ERROR_BODIES, *ELIXIR_CALLS]
    protocol = int(os.environ.get("HOSTILE_PROTOCOL", "3"))
    if not mode or before_ready(mode):
        send(
            "ready",
            0,
            {
                "protocol": protocol,
                "pid": os.getpid(),
                "adapter": "hostile",
                "tools": tools,
                "codec": "hand-made",
                "python": sys.version.split()[0],
            },
        )
    stdin = sys.stdin.buffer
    while True:
        frame = read_frame(stdin)
        if frame is None:
            return
        kind, request_id, body = frame
        if kind == "heartbeat":
            send("heartbeat", request_id, None)
        if kind != "call":
            continue
        tool, args = body["tool"], body.get("args") or {}
        if tool == "echo":
            send("result", request_id, args.get("value"))
        elif tool == "getenv":
            send("result", request_id, os.environ.get(args["name"]))
        elif tool == "exit":
            os._exit(args.get("status", 7))
        elif tool in LOG_BODIES or tool == "send_log_undecodable":
            for _ in range(args.get("times", 1)):
                if tool == "send_log_undecodable":
                    send_raw(b"\x93\xa3log\x00\xc1")  # 0xc1 is never used by MessagePack
                else:
                    send("log", 0, LOG_BODIES[tool])
            send("result", request_id, "sent")
        elif tool in ERROR_BODIES:
            send("error", request_id, ERROR_BODIES[tool])
        elif tool in ELIXIR_CALLS:
            call_id, call_body = ELIXIR_CALLS[tool]
            send("elixir_call", call_id, call_body)
            send("result", request_id, "sent")
        else:
            message = f"unknown tool ({len(tool)} bytes)"
            send(
                "error",
                request_id,
                {"kind": "unknown_tool", "type": None, "message": message, "traceback": None, "tool": None},
            )


if __name__ == "__main__":
    main()
