"""Python's pipe floor for bench/payload.exs: echo 4-byte-length-prefixed
frames from stdin to stdout with os.readv into one preallocated buffer and
one os.writev, no MessagePack. Set against the C echo (raw_pipe_echo.c), it
shows what the interpreter and its I/O cost before any codec runs."""

import os


def read_into(fd: int, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            return False
        got += n
    return True


def main() -> None:
    head = bytearray(4)
    buf = bytearray(0)
    while True:
        if not read_into(0, memoryview(head)):
            return
        size = int.from_bytes(head, "big")
        if len(buf) < size:
            buf = bytearray(size)
        body = memoryview(buf)[:size]
        if size and not read_into(0, body):
            return
        parts = [memoryview(head), body]
        while parts:
            n = os.writev(1, parts)
            while parts and n >= len(parts[0]):
                n -= len(parts[0])
                parts.pop(0)
            if parts and n:
                parts[0] = parts[0][n:]


if __name__ == "__main__":
    main()
