"""MessagePack encoding for the wire: ormsgpack when installed, else msgpack.

Both are configured to agree with the host's codec: str for text, bin for
bytes, non-string map keys allowed, sets and array-likes sent as arrays.
"""

from __future__ import annotations

from typing import Any, Callable, cast

__all__ = ["NAME", "packb", "unpackb"]


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot encode an object of type {type(obj).__name__}")


packb: Callable[[Any], bytes]
unpackb: Callable[[bytes], Any]

try:
    import ormsgpack

    _PACK_OPTS = ormsgpack.OPT_NON_STR_KEYS | ormsgpack.OPT_SERIALIZE_NUMPY
    _UNPACK_OPTS = ormsgpack.OPT_NON_STR_KEYS

    def packb(obj: Any) -> bytes:
        return ormsgpack.packb(obj, default=_default, option=_PACK_OPTS)

    def unpackb(data: bytes) -> Any:
        return ormsgpack.unpackb(data, option=_UNPACK_OPTS)

    NAME = "ormsgpack"
except ImportError:  # pragma: no cover - exercised when ormsgpack is absent
    import msgpack  # type: ignore[import-untyped]

    def packb(obj: Any) -> bytes:
        return cast(bytes, msgpack.packb(obj, use_bin_type=True, default=_default))

    def unpackb(data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)

    NAME = "msgpack"
