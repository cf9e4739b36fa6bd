"""Shared-memory segments (snakepit_bridge.shm): made sealed, sent with
SCM_RIGHTS, mapped read-only, and decoded through the codec (ext 85, 86)."""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
import struct
from typing import Any, Iterator, List, Tuple

import pytest

from snakepit_bridge import channel, codec, shm


@pytest.fixture
def pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    """A segment socket: ours (configured in shm) and the host's end."""
    ours, host = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    shm.configure(ours.detach(), 1024)
    try:
        yield ours, host
    finally:
        shm.configure(None, 0)
        host.close()


def _memfds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += "memfd:snakepit" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return count


def test_segments_are_sealed_and_hold_the_bytes() -> None:
    fd = shm.create(memoryview(b"x" * 5000))
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & shm.SEALS == shm.SEALS
        assert os.fstat(fd).st_size == 5000
        assert os.pread(fd, 10, 0) == b"x" * 10
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"y", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 10)
    finally:
        os.close(fd)


def test_large_bytes_results_go_by_segment_and_fds_are_closed(pair: Any) -> None:
    _ours, host = pair
    before = _memfds()
    read_fd, write_fd = os.pipe()
    ch = channel.Channel(read_fd, write_fd)
    data = bytes(range(256)) * 20
    ch.write_encoded(ch.encode("result", 7, data))
    # The fds went to the socket; ours are closed.
    msg, fds, _flags, _addr = socket.recv_fds(host, 8, 64)
    assert _memfds() == before + len(fds) == before + 1
    # Then the shm frame, then the result that refers to segment 0.
    raw = os.read(read_fd, 1 << 16)
    frames = _split(raw)
    assert codec.unpackb(frames[0]) == ["shm", 7, [len(data)]]
    kind, request_id, _ = _raw_envelope(frames[1])
    assert (kind, request_id) == ("result", 7)
    with shm.incoming([mmap.mmap(fds[0], len(data), prot=mmap.PROT_READ)]):
        assert codec.unpackb(frames[1]) == ["result", 7, data]
    for fd in fds:
        os.close(fd)
    os.close(read_fd)
    os.close(write_fd)


def test_large_bytes_nested_in_a_result_go_by_segment_too(pair: Any) -> None:
    _ours, host = pair
    read_fd, write_fd = os.pipe()
    ch = channel.Channel(read_fd, write_fd)
    big = bytes(range(256)) * 20
    body = {"image": big, "meta": {"name": "x", "parts": [b"small", big]}, "n": 1}
    ch.write_encoded(ch.encode("result", 9, body))
    _msg, fds, _flags, _addr = socket.recv_fds(host, 8, 64)
    assert len(fds) == 2
    frames = _split(os.read(read_fd, 1 << 16))
    assert codec.unpackb(frames[0]) == ["shm", 9, [len(big), len(big)]]
    maps = [mmap.mmap(fd, len(big), prot=mmap.PROT_READ) for fd in fds]
    with shm.incoming(maps):
        assert codec.unpackb(frames[1]) == ["result", 9, body]
    assert len(frames[1]) < 200, "the bytes are not in the frame"
    for fd in fds:
        os.close(fd)
    os.close(read_fd)
    os.close(write_fd)


def test_a_refused_segment_leaves_the_value_in_the_frame(pair: Any, monkeypatch: Any) -> None:
    def refuse(*_args: Any) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "memfd_create", refuse)
    read_fd, write_fd = os.pipe()
    ch = channel.Channel(read_fd, write_fd)
    data = b"z" * 5000
    payload = ch.encode("result", 3, {"data": data})
    assert isinstance(payload, bytes)
    assert codec.unpackb(payload) == ["result", 3, {"data": data}]
    os.close(read_fd)
    os.close(write_fd)


def test_wrap_nested_copies_only_containers_that_change(pair: Any) -> None:
    small = {"a": [1, b"x"], "b": (2, 3)}
    assert shm.wrap_nested(small) is small
    big = b"y" * 2000
    value = {"keep": small, "big": [big]}
    wrapped = shm.wrap_nested(value)
    assert wrapped is not value and wrapped["keep"] is small
    assert isinstance(wrapped["big"][0], shm.Blob)


def _split(raw: bytes) -> List[bytes]:
    frames = []
    while raw:
        size = int.from_bytes(raw[:4], "big")
        frames.append(raw[4 : 4 + size])
        raw = raw[4 + size :]
    return frames


def _raw_envelope(frame: bytes) -> Tuple[str, int, Any]:
    """kind and id of a frame without decoding its body."""
    assert frame[0] == 0x93
    kind_len = frame[1] & 0x1F
    kind = frame[2 : 2 + kind_len].decode()
    return kind, frame[2 + kind_len], None


def test_small_values_and_other_kinds_stay_in_the_frame(pair: Any) -> None:
    read_fd, write_fd = os.pipe()
    ch = channel.Channel(read_fd, write_fd)
    assert isinstance(ch.encode("result", 1, b"x" * 100), bytes)
    assert isinstance(ch.encode("log", 0, {"message": "x" * 5000}), bytes)
    assert isinstance(ch.encode("result", 1, {"nested": b"x" * 100, "more": "y" * 5000}), bytes)
    os.close(read_fd)
    os.close(write_fd)


def test_received_segments_are_matched_by_request_id(pair: Any) -> None:
    ours, host = pair
    early = shm.create(memoryview(b"e" * 2000))
    mine = shm.create(memoryview(b"m" * 3000))
    # The host sent call 5's segments before call 4's.
    socket.send_fds(host, [(5).to_bytes(8, "big")], [early])
    socket.send_fds(host, [(4).to_bytes(8, "big")], [mine])
    os.close(early)
    os.close(mine)
    [seg] = shm.receive([3000], 4)
    assert seg[:] == b"m" * 3000
    [seg] = shm.receive([2000], 5)
    assert seg[:] == b"e" * 2000
    with pytest.raises(shm.ShmError, match="segments announced"):
        fd = shm.create(memoryview(b"z" * 10))
        socket.send_fds(host, [(6).to_bytes(8, "big")], [fd])
        os.close(fd)
        shm.receive([10, 10], 6)


def test_unsealed_or_wrongly_sized_segments_are_refused(pair: Any) -> None:
    _ours, host = pair
    fd = os.memfd_create("snakepit", os.MFD_CLOEXEC)
    os.write(fd, b"x" * 100)
    socket.send_fds(host, [(9).to_bytes(8, "big")], [fd])
    with pytest.raises(shm.ShmError, match="not sealed"):
        shm.receive([100], 9)
    os.close(fd)
    fd = shm.create(memoryview(b"x" * 100))
    socket.send_fds(host, [(9).to_bytes(8, "big")], [fd])
    with pytest.raises(shm.ShmError, match="announced as 50"):
        shm.receive([50], 9)
    os.close(fd)


def test_references_to_missing_segments_are_decode_errors() -> None:
    ref = struct.pack(">B3xI", 1, 3)
    with shm.incoming([b"abc"]):
        with pytest.raises(shm.ShmError, match="segment 3"):
            shm.decode_bytes(ref)
    with pytest.raises(shm.ShmError, match="version 2"):
        shm.decode_bytes(struct.pack(">B3xI", 2, 0))


class TestNumpy:
    np = pytest.importorskip("numpy")

    def test_arrays_go_by_segment_and_come_back_as_views_of_the_mapping(self, pair: Any) -> None:
        np = self.np
        _ours, host = pair
        arr = np.arange(2000, dtype=np.float32).reshape(40, 50)
        with shm.collecting() as out:
            payload = codec.packb({"a": arr, "small": np.arange(3)})
        assert len(out.fds) == 1 and out.lengths == [arr.nbytes]
        out.send()
        out.close()
        _msg, fds, _flags, _addr = socket.recv_fds(host, 8, 64)
        mapped = mmap.mmap(fds[0], arr.nbytes, prot=mmap.PROT_READ)
        os.close(fds[0])
        with shm.incoming([mapped]):
            back = codec.unpackb(payload)
        assert back["a"].shape == (40, 50) and (back["a"] == arr).all()
        assert not back["a"].flags.writeable
        base = back["a"].base
        while getattr(base, "base", None) is not None:
            base = base.base
        assert (base.obj if isinstance(base, memoryview) else base) is mapped
        assert list(back["small"]) == [0, 1, 2]

    def test_no_segments_without_a_socket(self) -> None:
        np = self.np
        shm.configure(None, 0)
        with shm.collecting() as out:
            codec.packb(np.zeros(10_000))
        assert not out
