"""Tensors (MessagePack ext 84) in the codec: numpy arrays out, read-only
numpy arrays in, the same bytes with ormsgpack and msgpack."""

from __future__ import annotations

import array
import importlib
import struct
import subprocess
import sys
from typing import Any, Iterator, List

import pytest

import snakepit_bridge
from snakepit_bridge import codec, tensor

np = pytest.importorskip("numpy")

DTYPES = [
    "float16", "float32", "float64",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "complex64", "complex128", "bool",
]  # fmt: skip
SHAPES: List[Any] = [(), (0,), (0, 3), (2, 3, 4)]


def _load_codec(blocked: str) -> Any:
    """A fresh snakepit_bridge.codec that cannot import `blocked`."""
    saved = {name: sys.modules.get(name) for name in (blocked, "snakepit_bridge.codec")}
    sys.modules[blocked] = None  # type: ignore[assignment]
    sys.modules.pop("snakepit_bridge.codec", None)
    try:
        return importlib.import_module("snakepit_bridge.codec")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        snakepit_bridge.codec = codec  # type: ignore[attr-defined]


CODECS = {"ormsgpack": _load_codec("msgpack"), "msgpack": _load_codec("ormsgpack")}


@pytest.fixture(params=sorted(CODECS))
def c(request: Any) -> Iterator[Any]:
    assert CODECS[request.param].NAME == request.param
    yield CODECS[request.param]


def make(dtype: str, shape: Any) -> Any:
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == "bool":
        return (np.arange(n) % 2 == 1).reshape(shape)
    return np.arange(n).astype(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_dtype_and_shape_round_trips(c, dtype, shape):
    a = make(dtype, shape)
    b = c.unpackb(c.packb({"t": a}))["t"]
    assert isinstance(b, np.ndarray)
    assert b.dtype == a.dtype and b.shape == a.shape
    assert np.array_equal(a, b)
    assert b.flags.c_contiguous and b.flags.aligned
    assert not b.flags.writeable  # a view over the received bytes


@pytest.mark.parametrize("dtype", DTYPES)
def test_both_codecs_write_the_same_bytes_and_read_each_other(dtype):
    a = make(dtype, (2, 3))
    packed = {name: m.packb([1, a, "x"]) for name, m in CODECS.items()}
    assert packed["ormsgpack"] == packed["msgpack"]
    for m in CODECS.values():
        assert np.array_equal(m.unpackb(packed["ormsgpack"])[1], a)


def test_the_wire_format():
    # version 1, kind "u", 16 bits, 2 dims, 3 zero bytes; dims as u64 BE; data LE
    payload = b"\x01u\x00\x10\x02\x00\x00\x00" + struct.pack(">QQ", 1, 3) + b"\x01\x00\x02\x00\x03\x00"
    a = np.array([[1, 2, 3]], dtype=">u2")
    assert tensor.encode(a) == payload
    for m in CODECS.values():
        assert m.packb(a) == b"\xc7" + bytes([len(payload)]) + b"T" + payload
    # 0-d: no dims; the header stays 8 bytes, so the data starts 8-aligned
    assert tensor.encode(np.array(1.5)) == b"\x01f\x00\x40\x00\x00\x00\x00" + struct.pack("<d", 1.5)


@pytest.mark.parametrize(
    "make_array",
    [
        lambda: np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2].T,  # strided, transposed
        lambda: np.arange(10.0)[::-1],  # negative stride
        lambda: np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        lambda: np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian
        lambda: np.arange(6, dtype=">c16").reshape(3, 2)[::2],  # big-endian and strided
        lambda: np.broadcast_to(np.arange(3.0), (4, 3)),  # zero strides, read-only
    ],
)
def test_any_layout_or_byte_order_arrives_in_c_order_little_endian(c, make_array):
    a = make_array()
    b = c.unpackb(c.packb(a))
    assert np.array_equal(a, b) and b.shape == a.shape
    assert b.dtype == a.dtype.newbyteorder("<") and b.dtype.byteorder in "<=|"
    assert b.flags.c_contiguous


def test_lists_stay_lists_and_numpy_scalars_are_numbers(c):
    out = c.unpackb(c.packb({"l": [1.0, 2.0], "s": np.float32(1.5), "i": np.int64(3), "z": np.array(7)}))
    assert out["l"] == [1.0, 2.0]
    assert out["s"] == 1.5 and type(out["s"]) is float
    assert out["i"] == 3 and type(out["i"]) is int
    assert isinstance(out["z"], np.ndarray) and out["z"].shape == () and out["z"] == 7


def test_buffer_protocol_objects_with_dtype_and_shape_are_tensors(c):
    class Doubles(array.array):  # type: ignore[type-arg]
        dtype = "float64"

        @property
        def shape(self) -> Any:
            return (len(self),)

    b = c.unpackb(c.packb(Doubles("d", [1.5, 2.5])))
    assert b.dtype == np.float64 and b.tolist() == [1.5, 2.5]
    # without dtype and shape, a buffer is bytes as before
    assert c.unpackb(c.packb(bytearray(b"ab"))) == b"ab"


UNSENDABLE = ["U3", "S2", "object", "datetime64[s]", "timedelta64[s]", "longdouble", "i4,f4", "V4"]


@pytest.mark.parametrize("dtype", UNSENDABLE)
def test_other_dtypes_are_refused_clearly(c, dtype):
    a = np.zeros(2, dtype=dtype)
    if dtype == "longdouble" and a.itemsize == 8:
        # Where long double is a plain double, it crosses as float64.
        assert c.unpackb(c.packb(a)).dtype == np.float64
        return
    with pytest.raises(tensor.TensorError, match="cannot send a numpy array of dtype"):
        c.packb({"x": [a]})


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01f\x00",  # shorter than the header
        b"\x02f\x00\x20\x00\x00\x00\x00",  # version 2
        b"\x01x\x00\x08\x00\x00\x00\x00\x00",  # unknown kind
        b"\x01f\x00\x18\x00\x00\x00\x00\x00\x00\x00",  # 24-bit floats
        b"\x01f\x00\x20\x02\x00\x00\x00" + struct.pack(">Q", 1),  # dims cut short
        b"\x01f\x00\x20\x01\x00\x00\x00" + struct.pack(">Q", 2) + b"\x00" * 4,  # data too short
        b"\x01f\x00\x20\x01\x00\x00\x00" + struct.pack(">Q", 2**62) + b"\x00" * 4,  # huge shape
    ],
)
def test_malformed_tensors_are_clear_errors(c, payload):
    with pytest.raises(tensor.TensorError, match="malformed tensor"):
        c.unpackb(b"\xc7" + bytes([len(payload)]) + b"T" + payload)


def test_other_extension_types_are_left_alone(c):
    ext = c.unpackb(b"\xd4\x05\x2a")
    assert type(ext).__name__ in ("Ext", "ExtType")


BLOCKED_NUMPY = """
import sys
sys.modules["numpy"] = None
sys.modules[{blocked!r}] = None
from snakepit_bridge import codec, tensor
assert codec.NAME != {blocked!r}
assert codec.unpackb(codec.packb([1, [2.0], b"x"])) == [1, [2.0], b"x"]
try:
    codec.unpackb(bytes.fromhex({frame!r}))
except tensor.TensorError as e:
    print(e)
"""


@pytest.mark.parametrize("blocked", ["msgpack", "ormsgpack"])
def test_without_numpy_the_codec_works_and_tensors_are_a_clear_error(blocked):
    frame = codec.packb([np.arange(3.0)])
    script = BLOCKED_NUMPY.format(blocked=blocked, frame=frame.hex())
    env = {"PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    assert "numpy is not installed" in out.stdout


def test_a_worker_without_numpy_refuses_a_tensor_argument_and_carries_on(spawn):
    w = spawn("snakepit_test_adapters.TestAdapter", blocked=["numpy"])
    assert w.recv()[0] == "ready"
    kind, request_id, body = w.call(3, "tensor_echo", {"t": np.arange(3.0)})
    assert (kind, request_id) == ("error", 3)
    assert body["kind"] == "bad_request" and "numpy is not installed" in body["message"]
    assert w.call(4, "ping") == ("result", 4, "pong")


def test_a_worker_echoes_tensors_and_refuses_unsendable_arrays(worker):
    a = np.arange(12, dtype=">f4").reshape(3, 4)[:, 1::2]
    kind, _, b = worker.call(5, "tensor_echo", {"t": a})
    assert kind == "result" and np.array_equal(a, b) and b.dtype == np.float32
    kind, _, body = worker.call(6, "unsendable_array", {"dtype": "U2"})
    assert kind == "error" and body["kind"] == "unencodable_result"
    assert "cannot send a numpy array of dtype '<U2'" in body["message"]
