"""MessagePack encoding for the wire: ormsgpack when installed, else msgpack.

Both are configured to agree with the host's codec: str for text, bin for
bytes, non-string map keys allowed, sets and array-likes sent as arrays.
numpy arrays (and buffer-protocol objects with a dtype and a shape) are
sent as tensors, extension type 84, and tensors arrive as read-only numpy
arrays: see :mod:`snakepit_bridge.tensor`. Large arrays and bytes may
travel in shared-memory segments instead (extension types 85 and 86, see
:mod:`snakepit_bridge.shm`). Both codecs write and read the
same bytes for them. Lists stay lists.

Large binaries and tensor data from the host arrive as *blobs*, raw frames
read before the frame that refers to them with extension type 83
(:data:`BLOB_EXT`); :func:`unpackb_with_blobs` resolves those references:
to the blob itself (``bytes``, no copy), its text (``str``), or a numpy
array viewing it (no copy).
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Optional, Sequence

from . import shm, tensor

__all__ = ["BLOB_EXT", "NAME", "packb", "unpackb", "unpackb_with_blobs"]

BLOB_EXT = 83

# ormsgpack replaces the exceptions `default` and `ext_hook` raise with its
# own ("ext_hook failed"), so the reason a tensor was refused is kept here
# and raised instead.
_refusal = threading.local()
# The blobs of the frame being decoded (see unpackb_with_blobs).
_blobs = threading.local()


def _encode_extra(obj: Any, ext: Callable[[int, bytes], Any]) -> Any:
    """What to send for an object MessagePack has no type for."""
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    try:
        segment = shm.offer(obj)
    except tensor.TensorError as exc:
        _refusal.error = exc
        raise
    if segment is not None:
        return ext(*segment)
    if isinstance(obj, shm.Blob):  # no room for another segment: in the frame
        return shm.blob_bytes(obj)
    try:
        payload = tensor.encode(obj)
    except tensor.TensorError as exc:
        _refusal.error = exc
        raise
    if payload is not None:
        return ext(tensor.EXT_TYPE, payload)
    tolist = getattr(obj, "tolist", None)  # numpy scalars, array-likes
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot encode an object of type {type(obj).__name__}")


def _decode_ext(code: int, data: bytes, ext: Callable[[int, bytes], Any]) -> Any:
    """An extension value: a tensor, a blob, a shared-memory segment, or left
    as the codec's ext object."""
    if code not in (tensor.EXT_TYPE, BLOB_EXT, shm.EXT_BYTES, shm.EXT_TENSOR):
        return ext(code, data)
    try:
        if code == shm.EXT_BYTES:
            return shm.decode_bytes(data)
        if code == shm.EXT_TENSOR:
            return shm.decode_tensor(data)
        return tensor.decode(data) if code == tensor.EXT_TYPE else _blob(data)
    except ValueError as exc:  # TensorError, ShmError, bad blob references, bad UTF-8
        _refusal.error = exc
        raise


def _blob(ref: bytes) -> Any:
    """What a blob reference (``index:u32, tag``) stands for."""
    blobs: Sequence[bytes] = getattr(_blobs, "current", None) or ()
    if len(ref) < 5:
        raise ValueError("malformed blob reference: shorter than 5 bytes")
    index = int.from_bytes(ref[:4], "big")
    if index >= len(blobs):
        raise ValueError(f"blob reference {index}, but {len(blobs)} blobs came with the frame")
    blob, tag = blobs[index], ref[4:5]
    if tag == b"b" and len(ref) == 5:
        return blob
    if tag == b"s" and len(ref) == 5:
        return blob.decode("utf-8")
    if tag == b"t":
        return tensor.decode_split(ref[5:], blob)
    raise ValueError(f"malformed blob reference: tag {tag!r}")


def unpackb_with_blobs(data: bytes, blobs: Sequence[bytes]) -> Any:
    """:func:`unpackb`, resolving blob references to ``blobs`` (the blob
    frames read just before ``data``, in order)."""
    if not blobs:
        return unpackb(data)
    _blobs.current = blobs
    try:
        return unpackb(data)
    finally:
        _blobs.current = None


def _raise_refusal() -> None:
    """Raises the reason a hook refused a value, if one did, in place of the
    codec's own error; else returns, for the caller to re-raise that error.

    packb and unpackb below call it when the codec raises. The hooks set a
    refusal only just before they raise, and the codec lets that through as
    its own error, so a refusal is always taken by the call that made it:
    a frame that encodes or decodes fine touches no thread-local."""
    refused: Optional[Exception] = getattr(_refusal, "error", None)
    if refused is not None:
        _refusal.error = None
        raise refused from None


packb: Callable[[Any], bytes]
unpackb: Callable[[bytes], Any]

try:
    import ormsgpack

    # No OPT_SERIALIZE_NUMPY: arrays go through `default`, as tensors.
    _PACK_OPTS = ormsgpack.OPT_NON_STR_KEYS
    _UNPACK_OPTS = ormsgpack.OPT_NON_STR_KEYS

    def _ormsgpack_default(obj: Any) -> Any:
        return _encode_extra(obj, ormsgpack.Ext)

    def _ormsgpack_ext(code: int, data: bytes) -> Any:
        return _decode_ext(code, data, ormsgpack.Ext)

    # Each a plain function calling the codec: it runs for every frame.
    def packb(obj: Any) -> bytes:
        try:
            return ormsgpack.packb(obj, default=_ormsgpack_default, option=_PACK_OPTS)
        except Exception:
            _raise_refusal()
            raise

    def unpackb(data: bytes) -> Any:
        try:
            return ormsgpack.unpackb(data, option=_UNPACK_OPTS, ext_hook=_ormsgpack_ext)
        except Exception:
            _raise_refusal()
            raise

    NAME = "ormsgpack"
except ImportError:  # pragma: no cover - exercised when ormsgpack is absent
    try:
        import msgpack  # type: ignore[import-untyped]
    except ImportError as missing:
        # The last line of a worker's failed start, what its pool's error
        # shows: say what to install, and into which interpreter (a venv's).
        raise ModuleNotFoundError(
            f"No module named 'msgpack' (nor 'ormsgpack'): snakepit_bridge needs a MessagePack "
            f"codec in the interpreter that runs it, {sys.executable}. Install one: "
            f"{sys.executable} -m pip install msgpack",
            name="msgpack",
        ) from missing

    def _msgpack_default(obj: Any) -> Any:
        return _encode_extra(obj, msgpack.ExtType)

    def _msgpack_ext(code: int, data: bytes) -> Any:
        return _decode_ext(code, data, msgpack.ExtType)

    # Each a plain function calling the codec: it runs for every frame.
    def packb(obj: Any) -> bytes:
        try:
            packed: bytes = msgpack.packb(obj, use_bin_type=True, default=_msgpack_default)
            return packed
        except Exception:
            _raise_refusal()
            raise

    def unpackb(data: bytes) -> Any:
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_msgpack_ext)
        except Exception:
            _raise_refusal()
            raise

    NAME = "msgpack"
