"""numpy arrays on the wire: MessagePack extension type 84 ('T').

Payload (integers big-endian)::

    version:u8 = 1, kind:u8, bits:u16, ndim:u8, 3 zero bytes,
    ndim x dim:u64, then the elements: little-endian, C order

``kind`` is ``f`` (float 16/32/64), ``s``/``u`` (int/uint 8..64), ``c``
(complex 64/128) or ``b`` (bool, one byte). The header is a multiple of 8
bytes, so the elements are 8-byte aligned relative to the payload. The
elements are exactly ``product(dims) * bits / 8`` bytes.

numpy is optional: it is imported only when an array is sent (then it is
already loaded) or a tensor arrives (without numpy that is a clear error).
"""

from __future__ import annotations

import importlib
import struct
import sys
from typing import Any, Optional, Tuple

__all__ = ["EXT_TYPE", "TensorError", "decode", "decode_split", "encode", "encode_parts"]

EXT_TYPE = 84
VERSION = 1
_FIXED = struct.Struct(">BBHB3x")
_MAX_NDIM = 255

# numpy dtype kind -> wire kind, and the sizes (in bytes) each allows.
_KINDS = {"f": b"f", "i": b"s", "u": b"u", "c": b"c", "b": b"b"}
_SIZES = {b"f": (2, 4, 8), b"s": (1, 2, 4, 8), b"u": (1, 2, 4, 8), b"c": (8, 16), b"b": (1,)}
# wire kind -> numpy dtype character (little-endian, with the size appended).
_NUMPY = {b"f": "f", b"s": "i", b"u": "u", b"c": "c", b"b": "b"}


class TensorError(ValueError):
    """An array that cannot be sent, or a tensor that cannot be received."""


def _numpy() -> Any:
    try:
        return importlib.import_module("numpy")
    except ImportError as exc:
        raise TensorError("a tensor arrived, but numpy is not installed in the worker's Python") from exc


def encode(obj: Any) -> Optional[bytes]:
    """The ext payload for ``obj`` if it is an array, else None (numpy
    scalars are not arrays: they go as plain numbers). Raises
    :class:`TensorError` for arrays of a dtype the wire does not carry."""
    np = sys.modules.get("numpy")
    if np is None:  # no numpy loaded: obj cannot be an array
        return None
    if isinstance(obj, np.ndarray):
        return _encode_array(np, obj)
    if isinstance(obj, np.generic):
        return None
    if hasattr(obj, "dtype") and hasattr(obj, "shape"):
        try:
            memoryview(obj).release()
        except TypeError:
            return None
        return _encode_array(np, np.asarray(obj))
    return None


def encode_parts(obj: Any) -> Optional[Tuple[bytes, memoryview]]:
    """Like :func:`encode`, as the payload's header and a view of the
    array's own memory (no copy when it is C-ordered and little-endian), for
    writing both with one ``writev``."""
    np = sys.modules.get("numpy")
    if np is None or not isinstance(obj, np.ndarray):
        return None
    return _encode_parts(np, obj)


def _encode_array(np: Any, arr: Any) -> bytes:
    head, data = _encode_parts(np, arr)
    return b"".join([head, data])


def _encode_parts(np: Any, arr: Any) -> Tuple[bytes, memoryview]:
    dtype = arr.dtype
    kind = _KINDS.get(dtype.kind)
    if kind is None or dtype.fields is not None or dtype.itemsize not in _SIZES[kind]:
        raise TensorError(
            f"cannot send a numpy array of dtype {str(dtype)!r}: only bool, "
            "(u)int8-64, float16/32/64 and complex64/128 arrays cross as tensors"
        )
    if arr.ndim > _MAX_NDIM:
        raise TensorError(f"cannot send a numpy array of more than {_MAX_NDIM} dimensions")
    # C order, little-endian: a copy only when the array is not so already.
    arr = np.asarray(arr, dtype=dtype.newbyteorder("<"), order="C")
    if not arr.flags.c_contiguous:  # e.g. a subclass that insists on its layout
        arr = np.ascontiguousarray(arr)
    header = _FIXED.pack(VERSION, kind[0], dtype.itemsize * 8, arr.ndim)
    dims = struct.pack(f">{arr.ndim}Q", *arr.shape)
    return header + dims, memoryview(arr.reshape(-1).view(np.uint8))


def decode(data: bytes) -> Any:
    """The numpy array for an ext payload: a read-only view over ``data``."""
    kind, bits, shape, offset = parse(data)
    np = _numpy()
    dtype = np.dtype(f"<{_NUMPY[kind]}{bits // 8}")
    count = len(data) - offset
    if count == 0:  # frombuffer refuses an offset at the very end
        empty = np.empty(shape, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


def decode_split(header: bytes, data: Any) -> Any:
    """The numpy array for a tensor whose header and elements arrived apart
    (the elements as a blob, or a shared-memory segment): a read-only view over ``data``, no copy."""
    kind, bits, shape, offset = parse(header, data_len=len(data))
    if offset != len(header):
        raise TensorError("malformed tensor: bytes after its header")
    np = _numpy()
    dtype = np.dtype(f"<{_NUMPY[kind]}{bits // 8}")
    if not data:
        empty = np.empty(shape, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def parse(data: bytes, data_len: Optional[int] = None) -> Tuple[bytes, int, Tuple[int, ...], int]:
    """Checks an ext payload: its kind, bits, shape and where the elements
    start. Raises :class:`TensorError` if it is malformed. ``data_len``: the
    elements are elsewhere, and this many bytes long."""
    if len(data) < _FIXED.size:
        raise TensorError("malformed tensor: shorter than its header")
    version, kind_byte, bits, ndim = _FIXED.unpack_from(data)
    if version != VERSION:
        raise TensorError(f"malformed tensor: version {version}, not {VERSION}")
    kind = bytes([kind_byte])
    if kind not in _SIZES or bits % 8 or bits // 8 not in _SIZES[kind]:
        raise TensorError(f"malformed tensor: unknown element type {kind!r} of {bits} bits")
    offset = _FIXED.size + 8 * ndim
    if len(data) < offset:
        raise TensorError("malformed tensor: shorter than its header")
    shape = struct.unpack_from(f">{ndim}Q", data, _FIXED.size)
    need = bits // 8
    for d in shape:
        need *= d
    have = len(data) - offset if data_len is None else data_len
    if need != have:
        raise TensorError(f"malformed tensor: {have} bytes of data for shape {shape} of {bits}-bit elements")
    return kind, bits, shape, offset
