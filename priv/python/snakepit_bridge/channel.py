"""Length-prefixed frames over a pair of pipes.

A frame is a 4-byte big-endian length followed by a MessagePack array
``[kind, id, body]`` (see docs/protocol.md). A length with its top bit
(:data:`BLOB_FLAG`) set is a *blob* from the host instead: raw bytes that the
next frame refers to; :meth:`Channel.take_blobs` hands them over. Reads
happen on one thread; writes may come from several (results, log records),
so they take a lock.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Any, List, Optional, Sequence, Union

from . import codec, shm

# Frames that may carry shared-memory segments (worker -> host).
_SEGMENT_KINDS = ("result", "chunk")
# Bodies that hold nothing that could go by segment (nor anything the
# codec's default hook sees): encoded as any frame, without the segment
# bookkeeping, which costs as much as the rest of a tiny result's encoding.
_NOTHING_BY_SEGMENT = frozenset({str, int, float, bool, type(None)})

HEADER_LEN = 4
BLOB_FLAG = 0x8000_0000
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
_NO_BLOBS: Sequence[bytes] = ()


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


class Channel:
    """Reads frames from ``in_fd`` and writes frames to ``out_fd``."""

    def __init__(self, in_fd: int, out_fd: int, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._reader = io.open(in_fd, "rb", buffering=64 * 1024, closefd=False)
        self._out_fd = out_fd
        self._lock = threading.Lock()
        self._blobs: List[bytes] = []
        self.max_frame = max_frame
        # Bytes of whole frames read so far: a ``reclaim`` names where its
        # call starts in this stream, and a call not reached yet can be given
        # back (see control.py). Written by the reading thread only.
        self.consumed = 0

    def read_raw(self) -> Optional[bytes]:
        """The next frame's MessagePack bytes, or None at a clean end of
        stream. Blobs before it are kept for :meth:`take_blobs`, each read
        straight into its own ``bytes``."""
        while True:
            header = self._reader.read(HEADER_LEN)
            if not header:
                if self._blobs:
                    raise ProtocolError("stream closed after a blob, before its frame")
                return None
            if len(header) < HEADER_LEN:
                raise ProtocolError("stream closed inside a frame header")
            size = int.from_bytes(header, "big")
            blob = size >= BLOB_FLAG  # the top bit set: a blob, whose length is the other 31
            if blob:
                size -= BLOB_FLAG
            if size > self.max_frame:
                raise ProtocolError(f"frame of {size} bytes exceeds the limit of {self.max_frame}")
            body = self._reader.read(size)
            if len(body) < size:
                raise ProtocolError("stream closed inside a frame")
            self.consumed += HEADER_LEN + size
            if not blob:
                return body
            self._blobs.append(body)

    def take_blobs(self) -> Sequence[bytes]:
        """The blobs that came before the frame :meth:`read_raw` last returned."""
        if not self._blobs:
            return _NO_BLOBS
        blobs, self._blobs = self._blobs, []
        return blobs

    def write(self, kind: str, request_id: int, body: Any) -> None:
        """Encodes and writes one frame. Raises if the body cannot be encoded
        or the frame is over the size limit; nothing is written then."""
        self.write_encoded(self.encode(kind, request_id, body))

    def encode(self, kind: str, request_id: int, body: Any) -> Union[bytes, shm.Outgoing]:
        """One frame's MessagePack bytes, for :meth:`write_encoded`. Raises if
        the body cannot be encoded or the frame is over the size limit.

        A ``result`` or ``chunk`` whose large values went into shared-memory
        segments (see :mod:`snakepit_bridge.shm`) is returned as the
        :class:`shm.Outgoing` that holds them and the frame's bytes."""
        limit = 0 if type(body) in _NOTHING_BY_SEGMENT else shm.threshold()
        if not limit or kind not in _SEGMENT_KINDS:
            payload = codec.packb([kind, request_id, body])
            if len(payload) > self.max_frame:
                self._check_size(payload)
            return payload
        if isinstance(body, (bytes, bytearray, memoryview)):
            body = shm.wrap(body)
        out, payload = shm.encode_collecting(codec.packb, [kind, request_id, body])
        if len(payload) >= limit:
            # Large values left in the frame: bytes nested in containers.
            # Encoding again with them as segments costs a second packb, but
            # only for frames this large.
            nested = shm.wrap_nested(body)
            if nested is not body:
                if out is not None:
                    out.close()
                out, payload = shm.encode_collecting(codec.packb, [kind, request_id, nested])
        if len(payload) > self.max_frame:
            if out is not None:
                out.close()
            self._check_size(payload)
        if not out:  # None, or no segment after all (the system refused one)
            return payload
        out.payload = payload
        out.request_id = request_id
        return out

    def write_encoded(self, payload: Union[bytes, shm.Outgoing]) -> None:
        if isinstance(payload, shm.Outgoing):
            self._write_segments(payload)
            return
        size = len(payload)
        if size > self.max_frame:
            self._check_size(payload)
        data = [size.to_bytes(HEADER_LEN, "big"), payload]
        with self._lock:
            written = os.writev(self._out_fd, data)
            if written < HEADER_LEN + size:  # the pipe took part of it
                _writev_all(self._out_fd, data, written)

    def _write_segments(self, out: shm.Outgoing) -> None:
        """The segments' fds on the socket, then the ``shm`` frame that
        announces them, then the frame that uses them: under one lock, so no
        other frame comes between."""
        announce = codec.packb(["shm", out.request_id, out.lengths])
        frames = [len(announce).to_bytes(HEADER_LEN, "big"), announce]
        frames += [len(out.payload).to_bytes(HEADER_LEN, "big"), out.payload]
        try:
            with self._lock:
                out.send()
                _writev_all(self._out_fd, frames)
        finally:
            out.close()

    def write_bytes(self, kind: str, request_id: int, data: "bytes | bytearray | memoryview") -> None:
        """Writes a frame whose body is one large bytes value, without copying
        it into an encoded buffer: the envelope's MessagePack prefix (array of
        3, kind, id, a bin32 header) and the data go out in one ``writev``."""
        view = memoryview(data).cast("B")
        head = codec.packb([kind, request_id])[1:]  # the kind and id, after an array-of-2 marker
        prefix = b"\x93" + head + b"\xc6" + len(view).to_bytes(4, "big")
        size = len(prefix) + len(view)
        if size > self.max_frame:
            raise ValueError(f"reply of {size} bytes exceeds the frame limit of {self.max_frame} bytes")
        with self._lock:
            _writev_all(self._out_fd, [size.to_bytes(HEADER_LEN, "big"), prefix, view])

    def write_ext(self, kind: str, request_id: int, ext_type: int, head: bytes, data: memoryview) -> None:
        """Writes a frame whose body is one MessagePack extension value made of
        ``head`` then ``data``, without copying ``data`` (an array's memory)."""
        view = data.cast("B") if data.format != "B" else data
        length = len(head) + len(view)
        prefix = (
            b"\x93"
            + codec.packb([kind, request_id])[1:]
            + b"\xc9"
            + length.to_bytes(4, "big")
            + ext_type.to_bytes(1, "big", signed=True)
            + head
        )
        size = len(prefix) + len(view)
        if size > self.max_frame:
            raise ValueError(f"reply of {size} bytes exceeds the frame limit of {self.max_frame} bytes")
        with self._lock:
            _writev_all(self._out_fd, [size.to_bytes(HEADER_LEN, "big"), prefix, view])

    def _check_size(self, payload: bytes) -> None:
        if len(payload) > self.max_frame:
            raise ValueError(
                f"reply of {len(payload)} bytes exceeds the frame limit of {self.max_frame} bytes"
            )


def _writev_all(fd: int, parts: "Sequence[bytes | memoryview]", written: int = 0) -> None:
    """Writes ``parts`` but their first ``written`` bytes (which a first
    ``writev`` took already), however many ``writev`` it takes."""
    views = [memoryview(p) for p in parts]
    while True:
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if not views:
            return
        if written:
            views[0] = views[0][written:]
        written = os.writev(fd, views)
