"""Shared memory: large payloads cross as sealed memfds, not through the pipes.

A value of at least ``SNAKEPIT_SHM_THRESHOLD`` bytes (the pool's
``:shm_threshold``; 0 or absent: never) goes into a *segment*: an anonymous
file (``os.memfd_create``) that the sender fills and seals (shrink, grow,
write, seal), so the receiver can trust its size and bytes. Its fd crosses
the *segment socket* (a ``SOCK_SEQPACKET`` socketpair; the worker's end is
the fd named by ``SNAKEPIT_SHM_FD``) with ``SCM_RIGHTS``. Segments have no
name: when every process holding one is gone, the kernel frees it, so
nothing leaks whoever dies.

On the wire (see docs/protocol.md, "Shared memory"), the sender sends the
fds in one message on the socket, then an ``shm`` frame ``["shm", id,
[length, ...]]`` on its pipe, then the frame that uses them, where
extension type 85 (bytes) or 86 (a tensor: the ext 84 header, whose data is
the segment) refers to a segment by its index: ``version:u8 = 1, 3 zero
bytes, index:u32`` (big-endian), then for 86 the tensor header.

What goes by segment, worker -> host: numpy arrays and bytes-like values
of at least the threshold anywhere in a ``result`` or ``chunk`` (bytes in
lists, tuples and map values are found by a second encoding, done only when
the first one left a frame of at least the threshold). Host -> worker:
binaries and tensors of the call's args.

What arrives: a tensor is a read-only numpy array over a read-only mapping
of the segment (no copy; the mapping lives as long as the array). Bytes
arrive as ``bytes``, one copy out of the mapping: tools expect ``bytes``
(``.decode()``, hashing, slicing to bytes), which a mapping cannot be.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
import struct
import sys
import threading
from contextlib import contextmanager
from threading import get_ident
from typing import Any, Callable, Iterator, List, Optional, Sequence, Union

from . import tensor

__all__ = [
    "EXT_BYTES",
    "EXT_TENSOR",
    "MAX_SEGMENTS",
    "Blob",
    "Outgoing",
    "ShmError",
    "collecting",
    "configure",
    "decode_bytes",
    "decode_tensor",
    "encode_collecting",
    "incoming",
    "offer",
    "receive",
    "threshold",
    "wrap",
]

EXT_BYTES = 85
EXT_TENSOR = 86
MAX_SEGMENTS = 64
_REF = struct.Struct(">B3xI")
_REF_VERSION = 1
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
_REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE


class ShmError(ValueError):
    """A segment that cannot be received or referred to."""


class _Transport:
    def __init__(self, sock: socket.socket, threshold: int) -> None:
        self.sock = sock
        self.threshold = threshold


_transport: Optional[_Transport] = None


def configure(fd: Optional[int], threshold: int) -> None:
    """Uses the segment socket ``fd`` for payloads of at least ``threshold``
    bytes (0: never send by segment; segments are still received)."""
    global _transport
    if fd is None:
        _transport = None
        return
    os.set_inheritable(fd, False)
    _transport = _Transport(socket.socket(fileno=fd), max(0, threshold))


def threshold() -> int:
    """Payloads of at least this many bytes go by segment; 0: none do."""
    return _transport.threshold if _transport is not None else 0


# -- sending -----------------------------------------------------------------


class Blob:
    """A bytes-like value to send as a segment (extension type 85)."""

    __slots__ = ("view",)

    def __init__(self, data: "bytes | bytearray | memoryview") -> None:
        self.view = memoryview(data).cast("B")


class Outgoing:
    """The segments made while encoding one frame, and that frame."""

    def __init__(self) -> None:
        self.fds: List[int] = []
        self.lengths: List[int] = []
        self.payload = b""
        self.request_id = 0

    def add(self, view: memoryview) -> Optional[int]:
        """A new sealed segment holding ``view``; its index, or None when
        the frame has as many segments as one frame may carry, or the system
        refuses a segment."""
        if len(self.fds) >= MAX_SEGMENTS:
            return None
        try:
            fd = create(view)
        except OSError:
            # Out of descriptors or memory: the value goes in the frame (as
            # the host does), where only the frame limit can refuse it.
            return None
        self.fds.append(fd)
        self.lengths.append(len(view))
        return len(self.fds) - 1

    def send(self, sock: Optional[socket.socket] = None) -> None:
        """Sends the fds in one message on the segment socket."""
        if sock is None:
            assert _transport is not None, "segments made without a segment socket"
            sock = _transport.sock
        socket.send_fds(sock, [b"S"], self.fds)

    def close(self) -> None:
        """Closes our fds: the segments live on in the socket and the host."""
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def __bool__(self) -> bool:
        return bool(self.fds)

    def __del__(self) -> None:
        self.close()


def create(view: memoryview) -> int:
    """A sealed memfd holding ``view``. Filled with ``write(2)``: about twice
    as fast as ``ftruncate`` + ``mmap`` + copy for 100 MB (fresh pages fault
    in one at a time through a mapping)."""
    fd = os.memfd_create("snakepit", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        rest = view
        while rest:
            written = os.write(fd, rest)
            rest = rest[written:]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


# The segments received for the frame being decoded on this thread (see
# `incoming`).
_local = threading.local()


# What :func:`offer` puts large values into while a frame is being encoded,
# by thread (``get_ident()``; a thread sets and removes only its own entry):
# `_PENDING` until a value goes by segment, then the frame's Outgoing. Most
# frames have no segment, so none is made for them. A dict rather than a
# threading.local: it is set and read back for every result frame, and a
# threading.local costs several times as much per access.
_outs: "dict[int, object]" = {}
_PENDING = object()


def _enter(thread: int, out: object) -> object:
    """Makes ``out`` what ``thread`` collects into, until :func:`_leave`;
    returns what it was."""
    previous = _outs.get(thread)
    _outs[thread] = out
    return previous


def _leave(thread: int, previous: object) -> object:
    """Restores what :func:`_enter` returned; returns what ``thread`` had."""
    out = _outs.pop(thread, None)
    if previous is not None:
        _outs[thread] = previous
    return out


def encode_collecting(encode: Callable[[Any], bytes], value: Any) -> "tuple[Optional[Outgoing], bytes]":
    """``encode(value)`` with :func:`offer` putting large values into
    segments on this thread, as in :func:`collecting`: the segments made
    (an :class:`Outgoing`, made when the first one is; None if none were)
    and the bytes. If ``encode`` raises, the segments made are closed.
    (A function, not a context manager, with _enter and _leave written out
    in it: it runs for every result frame.)"""
    thread = get_ident()
    previous = _outs.get(thread)
    _outs[thread] = _PENDING
    try:
        payload = encode(value)
    except BaseException:
        made = _leave(thread, previous)
        if isinstance(made, Outgoing):
            made.close()
        raise
    out = _outs.pop(thread)
    if previous is not None:
        _outs[thread] = previous
    return (out if isinstance(out, Outgoing) else None), payload


def _collecting_into() -> Optional[Outgoing]:
    """The Outgoing of the frame being encoded on this thread (made now if
    this is its first segment), or None when no frame is collecting."""
    thread = get_ident()
    out = _outs.get(thread)
    if out is _PENDING:
        out = _outs[thread] = Outgoing()
    return out if isinstance(out, Outgoing) else None


@contextmanager
def collecting() -> Iterator[Outgoing]:
    """While active on this thread, :func:`offer` puts large values into
    segments of the yielded :class:`Outgoing`. Its fds are closed if the
    block raises."""
    out = Outgoing()
    thread = get_ident()
    previous = _enter(thread, out)
    try:
        yield out
    except BaseException:
        out.close()
        raise
    finally:
        _leave(thread, previous)


def wrap(value: Any) -> Any:
    """``value``, as a :class:`Blob` if it is bytes-like and large enough."""
    limit = threshold()
    if limit and isinstance(value, (bytes, bytearray, memoryview)) and memoryview(value).nbytes >= limit:
        return Blob(value)
    return value


def wrap_nested(value: Any, depth: int = 0) -> Any:
    """``value`` with every large bytes-like value inside lists, tuples and
    map values made a :class:`Blob`; ``value`` itself when there is none
    (containers are copied only along the path to one)."""
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return wrap(value)
    if isinstance(value, dict):
        items = {k: wrap_nested(v, depth + 1) for k, v in value.items()}
        return items if any(items[k] is not v for k, v in value.items()) else value
    if isinstance(value, (list, tuple)):
        seq = [wrap_nested(v, depth + 1) for v in value]
        return seq if any(a is not b for a, b in zip(seq, value)) else value
    return value


# As deep as the codecs nest.
_MAX_DEPTH = 256


def offer(obj: Any) -> Optional["tuple[int, bytes]"]:
    """``(ext type, payload)`` for ``obj`` sent as a segment, or None to
    send it in the frame: a :class:`Blob`, or a numpy array of at least the
    threshold, while :func:`collecting` is active."""
    if _outs.get(get_ident()) is None:
        return None
    if isinstance(obj, Blob):
        out = _collecting_into()
        index = out.add(obj.view) if out is not None else None
        if index is None:
            return None
        return EXT_BYTES, _REF.pack(_REF_VERSION, index)
    limit = threshold()
    if not limit or getattr(obj, "nbytes", 0) < limit:
        return None
    np = sys.modules.get("numpy")
    if np is None or not isinstance(obj, np.ndarray):
        return None
    head, data = tensor.encode_parts(obj) or (b"", memoryview(b""))
    out = _collecting_into()
    index = out.add(data) if out is not None else None
    if index is None:
        return None
    return EXT_TENSOR, _REF.pack(_REF_VERSION, index) + head


def blob_bytes(obj: Blob) -> bytes:
    """A :class:`Blob`'s bytes, for when it goes in the frame after all."""
    return obj.view.tobytes()


# -- receiving ---------------------------------------------------------------


# Messages from the host that arrived ahead of their call's ``shm`` frame
# (by request id): a call queued again after another worker died may have
# its segments sent again.
_early: "dict[int, List[int]]" = {}

# How long to wait for a call's segments on the socket; the host sends them
# before it writes the call, so this is only a safety net.
_RECV_TIMEOUT = 10.0


def receive(
    lengths: Sequence[int], request_id: int, sock: Optional[socket.socket] = None
) -> List[Union[mmap.mmap, bytes]]:
    """The segments an ``shm`` frame of call ``request_id`` announced: the
    host sent their fds in a message whose data is that id (u64, big
    endian). Each is checked (sealed, of the announced length) and mapped
    read-only; the fds are closed (the mappings keep the memory)."""
    if sock is None:
        if _transport is None:
            raise ShmError("shared-memory segments announced, but this worker has no segment socket")
        sock = _transport.sock
    fds = _early.pop(request_id, None)
    while fds is None:
        sock.settimeout(_RECV_TIMEOUT)
        try:
            msg, got, _flags, _addr = socket.recv_fds(sock, 8, MAX_SEGMENTS)
        except socket.timeout:
            raise ShmError(f"the segments of call {request_id} did not come on the segment socket") from None
        finally:
            sock.settimeout(None)
        if not msg:
            raise ShmError("the segment socket was closed")
        owner = int.from_bytes(msg, "big")
        if owner == request_id:
            fds = got
        else:
            for fd in _early.pop(owner, []):
                os.close(fd)
            _early[owner] = got
    try:
        if len(fds) != len(lengths):
            raise ShmError(f"{len(lengths)} segments announced, {len(fds)} received")
        return [_map(fd, length) for fd, length in zip(fds, lengths)]
    finally:
        for fd in fds:
            os.close(fd)


def discard_early() -> None:
    """Closes the fds of segments whose calls never came."""
    for fds in _early.values():
        for fd in fds:
            os.close(fd)
    _early.clear()


def _map(fd: int, length: int) -> Union[mmap.mmap, bytes]:
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    if seals & _REQUIRED_SEALS != _REQUIRED_SEALS:
        raise ShmError("a segment that is not sealed against shrinking and writing")
    size = os.fstat(fd).st_size
    if size != length:
        raise ShmError(f"a segment of {size} bytes announced as {length}")
    if length == 0:
        return b""
    # Populated at once: tools read their arguments, and one populate is
    # cheaper than a page fault per 4 KiB.
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, length, flags=flags, prot=mmap.PROT_READ)


@contextmanager
def incoming(segments: List[Union[mmap.mmap, bytes]]) -> Iterator[None]:
    """While active on this thread, extension types 85 and 86 decode to
    ``segments``."""
    previous = getattr(_local, "segments", None)
    _local.segments = segments
    try:
        yield
    finally:
        _local.segments = previous


def _segment(payload: bytes) -> Union[mmap.mmap, bytes]:
    if len(payload) < _REF.size:
        raise ShmError("a malformed shared-memory reference")
    version, index = _REF.unpack_from(payload)
    if version != _REF_VERSION:
        raise ShmError(f"a shared-memory reference of version {version}")
    segments: Optional[List[Union[mmap.mmap, bytes]]] = getattr(_local, "segments", None)
    if segments is None or index >= len(segments):
        have = 0 if segments is None else len(segments)
        raise ShmError(f"a shared-memory reference to segment {index}, but the frame came with {have}")
    segment: Union[mmap.mmap, bytes] = segments[index]
    return segment


def decode_bytes(payload: bytes) -> bytes:
    """An ext 85 value: the segment's bytes (one copy)."""
    segment = _segment(payload)
    return segment if isinstance(segment, bytes) else segment[:]


def decode_tensor(payload: bytes) -> Any:
    """An ext 86 value: a read-only numpy array over the segment's mapping."""
    segment = _segment(payload)
    head = payload[_REF.size :]
    return tensor.decode_split(head, segment)
