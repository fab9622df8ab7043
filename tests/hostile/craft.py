"""Build checkpoints byte by byte, so a test controls every opcode, size, offset and name.

``torch.save`` only writes honest files; an attacker does not use it. These helpers write
the same layout (a zip with ``<prefix>/data.pkl`` + ``<prefix>/data/<key>`` records, or a
legacy pickle stream) from a small tree of Python values and the markers below, which a
hand-written protocol-2 pickle emitter turns into opcodes. Nothing here imports torch.
"""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any

STORAGE_TYPES = {
    "float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
    "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
    "qint8": "QInt8Storage", "quint8": "QUInt8Storage", "qint32": "QInt32Storage",
    "quint4x2": "QUInt4x2Storage",
}
ITEM_SIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
             "int8": 1, "uint8": 1, "bool": 1, "qint8": 1, "quint8": 1, "qint32": 4,
             "quint4x2": 1}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class G:
    """A global reference: pickles as ``GLOBAL module name``."""

    module: str
    name: str


@dataclass(frozen=True)
class Call:
    """``func(*args)`` at load time (``REDUCE``), then ``BUILD(state)`` if state is given."""

    func: Any
    args: tuple = ()
    state: Any = None
    newobj: bool = False


@dataclass(frozen=True)
class Pid:
    """A persistent id (``BINPERSID``): how torch pickles a reference to a storage."""

    value: Any


@dataclass(frozen=True)
class ODict:
    """``collections.OrderedDict`` filled with SETITEMS, optional ``_metadata`` via BUILD."""

    items: tuple
    metadata: Any = None


@dataclass(frozen=True)
class Put:
    """``value``, then remembered in memo ``slot`` (``LONG_BINPUT``)."""

    slot: int
    value: Any


@dataclass(frozen=True)
class Get:
    """The value remembered in memo ``slot`` (``LONG_BINGET``): the same object again."""

    slot: int


@dataclass(frozen=True)
class Raw:
    """Opcodes inserted verbatim."""

    data: bytes


# --- pickle emitter ----------------------------------------------------------------------


def dumps(obj: Any) -> bytes:
    """A protocol-2 pickle of ``obj`` (a tree of plain values and the markers above)."""
    out = io.BytesIO()
    out.write(b"\x80\x02")
    _emit(obj, out)
    out.write(b".")
    return out.getvalue()


def _emit(obj: Any, out: io.BytesIO) -> None:
    if obj is None:
        out.write(b"N")
    elif obj is True or obj is False:
        out.write(b"\x88" if obj else b"\x89")
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out.write(b"K" + bytes([obj]))
        elif -(2**31) <= obj < 2**31:
            out.write(b"J" + struct.pack("<i", obj))
        else:
            raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            out.write(b"\x8a" + bytes([len(raw)]) + raw)
    elif isinstance(obj, float):
        out.write(b"G" + struct.pack(">d", obj))
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        out.write(b"X" + struct.pack("<I", len(data)) + data)
    elif isinstance(obj, tuple):
        if not obj:
            out.write(b")")
            return
        out.write(b"(")
        for item in obj:
            _emit(item, out)
        out.write(b"t")
    elif isinstance(obj, list):
        out.write(b"]")
        if obj:
            out.write(b"(")
            for item in obj:
                _emit(item, out)
            out.write(b"e")
    elif isinstance(obj, dict):
        out.write(b"}")
        _setitems(obj.items(), out)
    elif isinstance(obj, ODict):
        out.write(b"ccollections\nOrderedDict\n)R")
        _setitems(obj.items, out)
        if obj.metadata is not None:
            out.write(b"}")
            _setitems((("_metadata", obj.metadata),), out)
            out.write(b"b")
    elif isinstance(obj, G):
        out.write(b"c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
    elif isinstance(obj, Call):
        _emit(obj.func, out)
        _emit(tuple(obj.args), out)
        out.write(b"\x81" if obj.newobj else b"R")
        if obj.state is not None:
            _emit(obj.state, out)
            out.write(b"b")
    elif isinstance(obj, Pid):
        _emit(obj.value, out)
        out.write(b"Q")
    elif isinstance(obj, Put):
        _emit(obj.value, out)
        out.write(b"r" + struct.pack("<I", obj.slot))
    elif isinstance(obj, Get):
        out.write(b"j" + struct.pack("<I", obj.slot))
    elif isinstance(obj, Raw):
        out.write(obj.data)
    else:  # pragma: no cover - a test bug
        raise TypeError(f"cannot emit {type(obj).__name__}")


def _setitems(items, out: io.BytesIO) -> None:
    items = list(items)
    if not items:
        return
    out.write(b"(")
    for key, value in items:
        _emit(key, out)
        _emit(value, out)
    out.write(b"u")


# --- torch building blocks ---------------------------------------------------------------

ORDERED_DICT = Call(G("collections", "OrderedDict"))


def storage(key: str, dtype: str, numel: int, legacy: bool = False) -> Pid:
    value = ("storage", G("torch", STORAGE_TYPES[dtype]), key, "cpu", numel)
    return Pid(value + (None,) if legacy else value)


def tensor(st: Pid, size: tuple, stride: tuple | None = None, offset: int = 0) -> Call:
    return Call(G("torch._utils", "_rebuild_tensor_v2"),
                (st, offset, tuple(size), tuple(stride if stride is not None else
                                                _contiguous(size)), False, ORDERED_DICT))


def qtensor(st: Pid, size: tuple, qparams: tuple, stride: tuple | None = None,
            offset: int = 0) -> Call:
    return Call(G("torch._utils", "_rebuild_qtensor"),
                (st, offset, tuple(size), tuple(stride if stride is not None else
                                                _contiguous(size)), qparams, False,
                 ORDERED_DICT))


def per_tensor(scale: float, zero_point: int) -> tuple:
    return (G("torch", "per_tensor_affine"), scale, zero_point)


def per_channel(scales: Call, zero_points: Call, axis: int) -> tuple:
    return (G("torch", "per_channel_affine"), scales, zero_points, axis)


def _contiguous(size: tuple) -> tuple:
    stride, acc = [], 1
    for dim in reversed(size):
        stride.append(acc)
        acc *= max(int(dim), 1)
    return tuple(reversed(stride))


@dataclass
class Builder:
    """Collects storages (key -> bytes) while a test describes tensors."""

    legacy: bool = False
    records: dict[str, bytes] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)

    def storage(self, dtype: str, data: bytes, numel: int | None = None) -> Pid:
        key = str(len(self.records))
        self.records[key] = data
        self.dtypes[key] = dtype
        count = len(data) // ITEM_SIZE[dtype] if numel is None else numel
        return storage(key, dtype, count, self.legacy)

    def floats(self, values: list[float], size: tuple | None = None) -> Call:
        st = self.storage("float32", struct.pack(f"<{len(values)}f", *values))
        return tensor(st, size or (len(values),))

    def doubles(self, values: list[float]) -> Call:
        return tensor(self.storage("float64", struct.pack(f"<{len(values)}d", *values)),
                      (len(values),))

    def longs(self, values: list[int], size: tuple | None = None) -> Call:
        st = self.storage("int64", struct.pack(f"<{len(values)}q", *values))
        return tensor(st, size or (len(values),))

    def qint8(self, values: list[int], size: tuple, qparams: tuple) -> Call:
        st = self.storage("qint8", struct.pack(f"<{len(values)}b", *values))
        return qtensor(st, size, qparams)

    def save(self, path, obj: Any, **zip_options: Any) -> str:
        if self.legacy:
            return write_legacy(path, obj, self.records, self.dtypes)
        return write_zip(path, dumps(obj), self.records, **zip_options)


# --- containers --------------------------------------------------------------------------


def write_zip(path, pkl: bytes, records: dict[str, bytes], prefix: str = "archive",
              deflate: tuple[str, ...] = (), extra: tuple[tuple[str, bytes], ...] = (),
              version: bytes = b"3\n") -> str:
    """A torch.save-style archive; ``deflate`` names records to compress, ``extra`` adds
    members verbatim (names as given, no prefix)."""
    members = [("data.pkl", pkl), (".format_version", b"1"), (".storage_alignment", b"64"),
               ("byteorder", b"little")]
    members += [(f"data/{k}", v) for k, v in records.items()]
    members += [("version", version)]
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of some cases
        for name, data in members:
            kind = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            zf.writestr(zipfile.ZipInfo(f"{prefix}/{name}"), data, compress_type=kind)
        for name, data in extra:
            zf.writestr(zipfile.ZipInfo(name), data)
    return str(path)


def write_legacy(path, obj: Any, records: dict[str, bytes], dtypes: dict[str, str],
                 declared: dict[str, int] | None = None) -> str:
    """The pre-1.6 stream: magic, protocol, sys info, the pickle, storage keys, then each
    storage as ``int64 numel`` + bytes (``declared`` overrides the numel written)."""
    out = io.BytesIO()
    for value in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                       "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        out.write(pickle.dumps(value, protocol=2))
    out.write(dumps(obj))
    out.write(pickle.dumps(list(records), protocol=2))
    for key, data in records.items():
        numel = len(data) // ITEM_SIZE[dtypes[key]]
        if declared and key in declared:
            numel = declared[key]
        out.write(struct.pack("<q", numel) + data)
    with open(path, "wb") as fh:
        fh.write(out.getvalue())
    return str(path)
