"""Hand-made hostile checkpoints: forged sizes, offsets and strides, zip tricks, pickle
structure games, names that try to drive the terminal, and broken quantization
parameters. Each is run through every command (see ``conftest.TEMPLATES``) in the
worker pool, under the time and memory bounds of :mod:`runner`; a sample also runs in
fresh ``python -m qinspect`` processes under ``RLIMIT_AS``.

A case is a function that returns a state_dict tree (written as a zip archive and, where
marked, as a legacy stream too) or writes its file itself. ``needles`` must appear in
``show``'s human output (e.g. a key printed literally, or the reason it was set aside).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import runner
from conftest import Case, excuse
from craft import (
    ORDERED_DICT,
    Builder,
    Call,
    G,
    Get,
    ODict,
    Pid,
    Put,
    Raw,
    dumps,
    per_channel,
    per_tensor,
    qtensor,
    storage,
    tensor,
    write_zip,
)

TREES: list[tuple[str, Callable[[Builder], object], bool, tuple[str, ...], str]] = []
FILES: list[tuple[str, Callable[[Path], None], tuple[str, ...], str]] = []


def tree(name: str, legacy: bool = True, needles: tuple[str, ...] = (),
         variants: str = "per-command"):
    """Register a case built from a state_dict tree (zip, and legacy stream if asked).
    ``variants``: run every command variant ("all") or one variant of each command."""
    def register(fn: Callable[[Builder], object]) -> Callable[[Builder], object]:
        TREES.append((name, fn, legacy, needles, variants))
        return fn
    return register


def raw_file(name: str, needles: tuple[str, ...] = (), variants: str = "per-command"):
    """Register a case that writes its own bytes."""
    def register(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        FILES.append((name, fn, needles, variants))
        return fn
    return register


# --- realistic pieces --------------------------------------------------------------------


def stub(b: Builder, scale: float = 0.05, zp: int = 64) -> list:
    return [("quant.scale", b.floats([scale])), ("quant.zero_point", b.longs([zp]))]


def qlinear(b: Builder, module: str = "fc", rows: int = 2, cols: int = 2,
            qparams: tuple | None = None, scale: object = None, zp: object = None,
            packed: object = None, values: list[int] | None = None) -> list:
    values = values if values is not None else [(i * 7) % 255 - 127 for i in range(rows * cols)]
    weight = b.qint8(values, (rows, cols), qparams or per_tensor(0.02, 0))
    return [
        (f"{module}.scale", b.floats([0.5], ()) if scale is None else scale),
        (f"{module}.zero_point", b.longs([3], ()) if zp is None else zp),
        (f"{module}._packed_params.dtype", G("torch", "qint8")),
        (f"{module}._packed_params._packed_params",
         packed if packed is not None else (weight, b.floats([0.1] * rows))),
    ]


def channels(b: Builder, scales: list[float], zps: list[int], axis: int = 0) -> tuple:
    return per_channel(b.doubles(scales), b.longs(zps), axis)


def sd(*groups: list, metadata: object = None) -> ODict:
    items = tuple(item for group in groups for item in group)
    return ODict(items, metadata=metadata)


def qint8_storage(b: Builder, count: int, numel: int | None = None) -> Pid:
    return b.storage("qint8", bytes(count), numel)


# --- declared sizes, offsets, strides ----------------------------------------------------


def _weight_case(size, stride=None, offset=0, numel=None, data=4):
    def build(b: Builder) -> object:
        w = qtensor(qint8_storage(b, data, numel), size, per_tensor(0.1, 0), stride, offset)
        return sd(stub(b), qlinear(b, packed=(w, b.floats([0.0, 0.0]))))
    return build


for _name, _args in {
    "shape 2^20 x 2^20 on 4 bytes": dict(size=(2**20, 2**20)),
    "shape 2^62 (numel overflows int64)": dict(size=(2**62, 4), stride=(4, 1)),
    "zero strides: 2^32 values from 4 bytes": dict(size=(2**16, 2**16), stride=(0, 0)),
    "zero strides: 2^28 values from 4 bytes": dict(size=(2**14, 2**14), stride=(0, 0)),
    "overlapping strides within the budget": dict(size=(2, 4), stride=(0, 1)),
    "storage declares 2^40 elements": dict(size=(2, 2), numel=2**40),
    "storage declares 2^31 elements": dict(size=(2, 2), numel=2**31),
    "offset past the end": dict(size=(2, 2), offset=10**6),
    "offset 2^63 - 1": dict(size=(2, 2), offset=2**63 - 1),
    "negative offset": dict(size=(2, 2), offset=-3),
    "negative stride": dict(size=(2, 2), stride=(-1, 1)),
    "negative size": dict(size=(-2, 2)),
    "stride 2^62": dict(size=(2, 2), stride=(2**62, 1)),
    "65 dimensions": dict(size=(1,) * 65),
    "empty tensor on an empty storage": dict(size=(0, 2), data=0),
    "sizes and strides of different lengths": dict(size=(2, 2), stride=(1,)),
}.items():
    tree(_name)(_weight_case(**_args))


@tree("shape made of floats and strings")
def _(b):
    st = qint8_storage(b, 4)
    w = Call(G("torch._utils", "_rebuild_qtensor"),
             (st, 0, (2.5, "2"), (2, 1), per_tensor(0.1, 0), False, ORDERED_DICT))
    return sd(qlinear(b, packed=(w, None)))


@tree("one storage declared with two sizes")
def _(b):
    st_small = b.storage("float32", bytes(16))          # key "0": 4 floats on disk
    st_big = storage("0", "float32", 2**30, b.legacy)   # the same key, claiming 4 GiB
    return sd([("a.weight", tensor(st_small, (4,))), ("b.weight", tensor(st_big, (2**20,)))])


@tree("one storage declared with two dtypes")
def _(b):
    st = b.storage("float32", bytes(16))
    as_long = storage("0", "int64", 2, b.legacy)
    return sd([("a.weight", tensor(st, (4,))), ("b.weight", tensor(as_long, (2,))),
               ("c.weight", qtensor(storage("0", "qint8", 16, b.legacy), (4, 4),
                                    per_tensor(0.1, 0)))])


@tree("one 1 MiB tensor under 200 keys (memo)")
def _(b):
    big = Put(900, b.floats([0.5] * (2**18), (512, 512)))
    return sd([("layer0.weight", big)] + [(f"layer{i}.weight", Get(900)) for i in range(1, 200)])


@tree("one 1 MiB storage viewed by 200 tensors")
def _(b):
    st = b.storage("float32", bytes(2**20))
    return sd([(f"layer{i}.weight", tensor(st, (512, 512))) for i in range(200)])


@tree("per-channel scales on a forged storage")
def _(b):
    scales = tensor(storage("99", "float64", 2**40, b.legacy), (2,))
    b.records["99"], b.dtypes["99"] = bytes(16), "float64"
    return sd(stub(b), qlinear(b, qparams=per_channel(scales, b.longs([0, 0]), 0)))


@tree("bytearray of 8 GiB")
def _(b):
    return sd([("fc.weight", b.floats([1.0])), ("x", Call(G("builtins", "bytearray"), (2**33,)))])


@tree("1,000 keys and metadata entries on one memo'd tensor")
def _(b):
    t = Put(900, b.floats([1.0, 2.0]))
    items = [("m0.weight", t)] + [(f"m{i}.weight", Get(900)) for i in range(1, 1_000)]
    meta = ODict(tuple((f"m{i}", {"version": 1}) for i in range(1_000)))
    return ODict(tuple(items), metadata=meta)


# --- pickle structure --------------------------------------------------------------------

DEEP = 50_000


def _deep(kind: str) -> Raw:
    if kind == "list":
        return Raw(b"]" * DEEP + b"a" * (DEEP - 1))
    if kind == "tuple":
        return Raw(b"(" * DEEP + b"t" * DEEP)
    return Raw(b"}" + b"X\x01\x00\x00\x00k}" * (DEEP - 1) + b"s" * (DEEP - 1))


for _kind in ("list", "tuple", "dict"):
    tree(f"{_kind}s nested {DEEP:,} deep in a value")(
        lambda b, k=_kind: sd([("fc.weight", b.floats([1.0])), ("fc.deep", _deep(k))]))
    tree(f"{_kind}s nested {DEEP:,} deep beside the wrapper")(
        lambda b, k=_kind: {"state_dict": sd([("fc.weight", b.floats([1.0]))]),
                            "optimizer": _deep(k)})
    tree(f"{_kind}s nested {DEEP:,} deep in metadata")(
        lambda b, k=_kind: sd([("fc.weight", b.floats([1.0]))], metadata=_deep(k)))

tree(f"lists nested {DEEP:,} deep in a TorchScript object's state")(
    lambda b: sd([("lstm._all_weight_values.0.param", Call(
        G("torch", "ScriptObject"), (), state=(_deep("list"), "CellParamsBase"), newobj=True))]))


@tree("billion laughs: 10 references per level, 40 levels")
def _(b):
    body = b"]r\x00\x00\x00\x00"
    for level in range(40):
        body += b"](" + (b"j" + struct.pack("<I", level)) * 10 + b"er" + struct.pack(
            "<I", level + 1)
    return sd([("fc.weight", b.floats([1.0])), ("fc.laughs", Raw(body))])


@tree("persistent id that is not a storage")
def _(b):
    return sd([("fc.weight", tensor(Pid(("module", "x", 1)), (2,)))])


@tree("persistent id that is a string")
def _(b):
    return sd([("fc.weight", Pid("hello"))])


@tree("storage with a missing record")
def _(b):
    return sd([("fc.weight", tensor(storage("99", "float32", 4, b.legacy), (4,)))])


@tree("storage type that is not a storage")
def _(b):
    return sd([("fc.weight", tensor(Pid(("storage", G("torch", "Tensor"), "0", "cpu", 4)
                                        + ((None,) if b.legacy else ())), (4,)))])


@tree("storage on cuda:0 and on meta")
def _(b):
    a = Pid(("storage", G("torch", "FloatStorage"), "0", "cuda:0", 2))
    m = Pid(("storage", G("torch", "FloatStorage"), "0", "meta", 2))
    b.records["0"], b.dtypes["0"] = bytes(8), "float32"
    return sd([("a.weight", tensor(a, (2,))), ("b.weight", tensor(m, (2,)))])


@tree("meta tensors of 2^40 values as weights")
def _(b):
    meta = Call(G("torch._utils", "_rebuild_meta_tensor_no_storage"),
                (G("torch", "float32"), (2**20, 2**20), (2**20, 1), False))
    return sd(stub(b), [("fc.weight", meta), ("fc.bias", meta)],
              qlinear(b, "fc2", packed=(meta, None)))


@tree("meta tensor moved to the meta device from a real one")
def _(b):
    t = Call(G("torch._utils", "_rebuild_device_tensor_from_cpu_tensor"),
             (b.floats([1.0, 2.0]), G("torch", "float32"), "meta", False))
    return sd([("fc.weight", t), ("fc.scale", t), ("fc.zero_point", t)])


@tree("sparse COO weight with a huge dense shape")
def _(b):
    layout = Call(G("torch.serialization", "_get_layout"), ("torch.sparse_coo",))
    indices = b.longs([0, 0], (2, 1))
    sparse = Call(G("torch._utils", "_rebuild_sparse_tensor"),
                  (layout, (indices, b.floats([1.0]), (2**40, 2**40), False)))
    return sd([("fc.weight", sparse), ("fc.bias", b.floats([0.0]))])


@tree("float8 and uint16 weights (tensor v3)", legacy=False)
def _(b):
    st = b.storage("uint8", bytes(8))
    f8 = Call(G("torch._utils", "_rebuild_tensor_v3"),
              (Pid(("storage", G("torch.storage", "UntypedStorage"), "0", "cpu", 8)),
               0, (2, 4), (4, 1), False, ORDERED_DICT, G("torch", "float8_e4m3fn"),
               ORDERED_DICT))
    u16 = Call(G("torch._utils", "_rebuild_tensor_v3"),
               (Pid(("storage", G("torch.storage", "UntypedStorage"), "0", "cpu", 8)),
                0, (4,), (1,), False, ORDERED_DICT, G("torch", "uint16"), ORDERED_DICT))
    del st
    return sd([("fc.weight", f8), ("fc.scale", f8), ("fc2.weight", u16)])


@tree("tensor v3 whose dtype outgrows its untyped storage", legacy=False)
def _(b):
    b.storage("uint8", bytes(8))
    t = Call(G("torch._utils", "_rebuild_tensor_v3"),
             (Pid(("storage", G("torch.storage", "UntypedStorage"), "0", "cpu", 8)),
              0, (8,), (1,), False, ORDERED_DICT, G("torch", "complex128"), ORDERED_DICT))
    return sd([("fc.weight", t)])


@tree("tensor whose methods are shadowed by attributes",
      needles=("Python attributes",))
def _(b):
    inner = tensor(b.storage("float32", bytes(16)), (2, 2))
    attrs = {"detach": ORDERED_DICT, "numpy": G("collections", "OrderedDict"), "int_repr": 5}
    t = Call(G("torch._tensor", "_rebuild_from_type_v2"),
             (G("torch._utils", "_rebuild_tensor_v2"), G("torch", "Tensor"), inner.args, attrs))
    return sd([("fc.weight", t), ("fc.scale", t), ("fc.zero_point", t)])


@tree("Parameter with state")
def _(b):
    p = Call(G("torch._utils", "_rebuild_parameter_with_state"),
             (b.floats([1.0, 2.0]), False, ORDERED_DICT, {"shape": 5, "requires_grad": 1}))
    return sd([("fc.weight", p), ("fc.bias", Call(G("torch._utils", "_rebuild_parameter"),
                                                  (b.floats([1.0]), True, ORDERED_DICT)))])


@tree("top level is a list / a tensor / None", legacy=True)
def _(b):
    return [b.floats([1.0]), None]


@tree("keys that are not strings")
def _(b):
    return {1: b.floats([1.0]), (2, 3): b.floats([2.0])}


@tree("empty state_dict and empty wrapper")
def _(b):
    return {"state_dict": {}, "model": ODict(())}


@tree("wrapper inside a wrapper inside a wrapper")
def _(b):
    inner = sd(stub(b), qlinear(b))
    return {"model": {"model": {"state_dict": inner}}, "state_dict": [inner]}


@raw_file("pickle without STOP")
def _(path):
    write_zip(path, dumps(ODict((("x", 1),)))[:-1], {})


@raw_file("pickle that reads a memo slot it never wrote")
def _(path):
    write_zip(path, b"\x80\x02j\x07\x00\x00\x00.", {})


@raw_file("pickle that pops from an empty stack")
def _(path):
    write_zip(path, b"\x80\x02s.", {})


@raw_file("pickle with junk after STOP")
def _(path):
    b = Builder()
    b.save(path, sd(stub(b), qlinear(b)))
    with zipfile.ZipFile(path) as zf:
        records = {n: zf.read(n) for n in zf.namelist()}
    pkl = records.pop("archive/data.pkl") + b"\xff" * 100
    data = {n.split("/data/", 1)[1]: v for n, v in records.items() if "/data/" in n}
    write_zip(path, pkl, data)


@raw_file("pickle with an unknown opcode")
def _(path):
    write_zip(path, b"\x80\x02\xff.", {})


@raw_file("pickle string claiming 4 GiB")
def _(path):
    write_zip(path, b"\x80\x02X\xff\xff\xff\xffabc.", {})


@raw_file("decimal integer of 100,000 digits")
def _(path):
    write_zip(path, b"\x80\x02I" + b"9" * 100_000 + b"\n.", {})


@raw_file("legacy stream: storage shorter than declared")
def _(path):
    b = Builder(legacy=True)
    obj = sd([("fc.weight", b.floats([1.0, 2.0, 3.0, 4.0]))])
    from craft import write_legacy

    write_legacy(path, obj, b.records, b.dtypes, declared={"0": 2**40})


@raw_file("legacy stream: storage listed but data cut off")
def _(path):
    b = Builder(legacy=True)
    b.save(path, sd([("fc.weight", b.floats([1.0] * 64))]))
    data = path.read_bytes()
    path.write_bytes(data[:-200])


@raw_file("legacy stream: view past its root storage")
def _(path):
    b = Builder(legacy=True)
    b.records["0"], b.dtypes["0"] = bytes(16), "float32"
    view = Pid(("storage", G("torch", "FloatStorage"), "0", "cpu", 4, ("v1", 2, 2**30)))
    from craft import write_legacy

    write_legacy(path, sd([("fc.weight", tensor(view, (2**30,)))]), b.records, b.dtypes)


@raw_file("legacy stream: bad magic number")
def _(path):
    path.write_bytes(b"\x80\x02K\x05." + b"\x00" * 32)


# --- zip tricks --------------------------------------------------------------------------


def _honest(path: Path, **zip_options) -> None:
    b = Builder()
    b.save(path, sd(stub(b), qlinear(b)), **zip_options)


raw_file("member ../../evil.txt")(lambda p: _honest(p, extra=(("../../evil.txt", b"x"),)))
raw_file("member /etc/evil")(lambda p: _honest(p, extra=(("/etc/evil", b"x"),)))
raw_file("member with a backslash path")(lambda p: _honest(p, extra=(("a\\..\\..\\x", b"x"),)))
raw_file("archive folder named ..")(lambda p: _honest(p, prefix=".."))
raw_file("member outside the archive folder")(lambda p: _honest(p, extra=(("other/x", b"x"),)))
raw_file("deflated data.pkl (honest)")(lambda p: _honest(p, deflate=("data.pkl",)))
raw_file("deflated storage record")(lambda p: _honest(p, deflate=("data/0",)))


@raw_file("duplicate data.pkl")
def _(path):
    _honest(path, extra=(("archive/data.pkl", dumps(Call(G("os", "system"), ("true",)))),))


@raw_file("symbolic link member")
def _(path):
    _honest(path)
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("archive/link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")


@raw_file("bzip2-compressed member")
def _(path):
    _honest(path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(zipfile.ZipInfo("archive/extra"), b"x" * 1000,
                    compress_type=zipfile.ZIP_BZIP2)


def _bomb(expands_to: int) -> bytes:
    """Deflate ``expands_to`` bytes of a repeated opcode without holding them."""
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    chunk = b"N0" * (2**19)
    parts, left = [], expands_to
    while left > 0:
        parts.append(comp.compress(chunk[:left]))
        left -= len(chunk)
    parts.append(comp.flush())
    return b"".join(parts)


def _write_deflated(path: Path, name: str, payload: bytes, declared: int, crc: int) -> None:
    """A one-member zip whose central directory declares ``declared`` bytes."""
    fname = name.encode()
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(payload),
                        declared, len(fname), 0) + fname
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc,
                          len(payload), declared, len(fname), 0, 0, 0, 0, 0, 0) + fname
    body = local + payload
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(body), 0)
    path.write_bytes(body + central + end)


@raw_file("zip bomb: data.pkl deflated from 512 MiB")
def _(path):
    _write_deflated(path, "archive/data.pkl", _bomb(2**29), 2**29, 0)


@raw_file("zip bomb: data.pkl declares 100 bytes, inflates to 64 MiB")
def _(path):
    _write_deflated(path, "archive/data.pkl", _bomb(2**26), 100, 0)


@raw_file("member runs past the end of the file")
def _(path):
    _honest(path)
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    cd_offset = struct.unpack("<I", data[end + 16:end + 20])[0]
    first = data.find(b"PK\x01\x02", cd_offset)  # first central entry: bump compress size
    data[first + 20:first + 28] = struct.pack("<II", 2**31, 2**31)
    path.write_bytes(bytes(data))


@raw_file("central directory says 65535 entries")
def _(path):
    _honest(path)
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    data[end + 8:end + 12] = struct.pack("<HH", 65535, 65535)
    path.write_bytes(bytes(data))


@raw_file("empty zip archive")
def _(path):
    with zipfile.ZipFile(path, "w"):
        pass


@raw_file("zip with only data.pkl")
def _(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", dumps(ODict((("x", 1),))))


@raw_file("TorchScript-looking archive with a hostile data.pkl")
def _(path):
    _honest(path, extra=(("archive/constants.pkl", dumps(Call(G("os", "system"),
                                                              ("true",)))),))


# --- names that try to drive the terminal ------------------------------------------------

NASTY = {
    "clear-screen": "\x1b[2J\x1b[Hfc",
    "title": "fc\x1b]0;pwned\x07",
    "markup": "[red]fc[/red]",
    "link-markup": "[link=https://example.com]fc[/link]",
    "bell-backspace": "fc\x07\x08\x08\x08",
    "carriage-return": "fc\rOK      ",
    "newline": "fc\nqinspect: error: fake",
    "bidi": "fc\u202egnp.exe",
    "c1-csi": "fc\x9b2J",
    "long": "f" * 20_000,
}

for _label, _name in NASTY.items():
    needle = ("[red]fc[/red]",) if _label == "markup" else ("\\x1b[2J",) if (
        _label == "clear-screen") else ()
    tree(f"key named {_label}", needles=needle, variants="all")(
        lambda b, n=_name: sd(stub(b), qlinear(b, module=n),
                              [(f"{n}.weight", b.floats([1.0])), (f"x.{n}", b.floats([1.0]))],
                              metadata=ODict(((n, {"version": 1}),))))

tree("escapes in wrapper keys, metadata and TorchScript class names", variants="all")(
    lambda b: {"state_dict": sd(stub(b), qlinear(b)),
               **{v: 1 for v in NASTY.values()},
               "lstm": sd([("lstm._all_weight_values.0.param", Call(
                   G("torch", "ScriptObject"), (), state=((1,), NASTY["clear-screen"]),
                   newobj=True))])})


@raw_file("archive folder and member names with escapes", variants="all")
def _(path):
    b = Builder()
    b.save(path, sd(stub(b), qlinear(b)), prefix="\x1b[2Jarchive",
           extra=(("\x1b[2Jarchive/\x1b]0;x\x07", b"x"),))


# --- quantization parameters -------------------------------------------------------------

BAD_FLOATS = {"NaN": float("nan"), "Inf": float("inf"), "-Inf": float("-inf"), "zero": 0.0,
              "negative": -0.1, "denormal": 1e-45, "huge": 3e38}

for _label, _value in BAD_FLOATS.items():
    tree(f"per-tensor weight scale {_label}")(
        lambda b, v=_value: sd(stub(b), qlinear(b, qparams=per_tensor(v, 0))))
    tree(f"per-channel weight scales with {_label}")(
        lambda b, v=_value: sd(stub(b), qlinear(b, qparams=channels(b, [v, 0.1], [0, 0]))))
    tree(f"output scale {_label}")(
        lambda b, v=_value: sd(stub(b, scale=v), qlinear(b, scale=b.floats([v], ()))))

for _label, _zp in {"1000": 1000, "-1000": -1000, "2^40": 2**40, "-2^63": -(2**63)}.items():
    tree(f"per-tensor weight zero point {_label}")(
        lambda b, z=_zp: sd(stub(b), qlinear(b, qparams=per_tensor(0.1, z))))
    tree(f"per-channel weight zero points {_label}")(
        lambda b, z=_zp: sd(stub(b), qlinear(b, qparams=channels(b, [0.1, 0.1], [z, 0]))))
    tree(f"output and input zero point {_label}")(
        lambda b, z=_zp: sd(stub(b, zp=z), qlinear(b, zp=b.longs([z], ()))))

tree("per-channel: 3 scales for 2 channels")(
    lambda b: sd(stub(b), qlinear(b, qparams=channels(b, [0.1, 0.2, 0.3], [0, 0, 0]))))
tree("per-channel: 2 scales, 3 zero points")(
    lambda b: sd(stub(b), qlinear(b, qparams=channels(b, [0.1, 0.2], [0, 0, 0]))))
tree("per-channel: axis 5 of a 2-D weight")(
    lambda b: sd(stub(b), qlinear(b, qparams=channels(b, [0.1, 0.2], [0, 0], axis=5))))
tree("per-channel: axis -1")(
    lambda b: sd(stub(b), qlinear(b, qparams=channels(b, [0.1, 0.2], [0, 0], axis=-1))))
tree("per-channel: scales as a 2-D tensor")(
    lambda b: sd(stub(b), qlinear(b, qparams=per_channel(
        b.doubles([0.1, 0.2]), b.longs([0, 0], (1, 2)), 0))))
tree("unknown qscheme")(
    lambda b: sd(stub(b), qlinear(b, qparams=(G("torch", "per_tensor_symmetric"), 0.1, 0))))

_scale_shapes = {
    "empty": lambda b: b.floats([], (0,)),
    "five values": lambda b: b.floats([0.1] * 5),
    "2x2": lambda b: b.floats([0.1] * 4, (2, 2)),
    "int64": lambda b: b.longs([1]),
    "bool": lambda b: tensor(b.storage("bool", b"\x01"), (1,)),
    "complex": lambda b: tensor(b.storage("float64", struct.pack("<2d", 1.0, 2.0)), (1,)),
    "float64": lambda b: b.doubles([0.1]),
    "a string": lambda b: "0.1",
    "a tuple": lambda b: (b.floats([0.1]),),
    "None": lambda b: None,
}
for _label, _make in _scale_shapes.items():
    tree(f"activation scale that is {_label}")(
        lambda b, m=_make: sd([("quant.scale", m(b)), ("quant.zero_point", m(b))],
                              qlinear(b, scale=m(b), zp=m(b))))

for _label, _packed in {
    "empty tuple": lambda b: (),
    "1-tuple": lambda b: (b.qint8([1, 2, 3, 4], (2, 2), per_tensor(0.1, 0)),),
    "3-tuple": lambda b: (b.qint8([1, 2, 3, 4], (2, 2), per_tensor(0.1, 0)), None, None),
    "a list": lambda b: [b.qint8([1, 2, 3, 4], (2, 2), per_tensor(0.1, 0)), None],
    "a string": lambda b: "packed",
    "a float tensor": lambda b: (b.floats([1.0] * 4, (2, 2)), None),
    "a 1-D weight": lambda b: (b.qint8([1, 2], (2,), per_tensor(0.1, 0)), b.floats([0.0] * 2)),
    "a 3-D weight": lambda b: (b.qint8([1] * 8, (2, 2, 2), per_tensor(0.1, 0)), None),
    "a 0-d weight": lambda b: (b.qint8([1], (), per_tensor(0.1, 0)), None),
    "a string bias": lambda b: (b.qint8([1, 2, 3, 4], (2, 2), per_tensor(0.1, 0)), "bias"),
    "a 2-D bias": lambda b: (b.qint8([1, 2, 3, 4], (2, 2), per_tensor(0.1, 0)),
                             b.floats([0.0] * 4, (2, 2))),
    "nested tuples": lambda b: ((b.qint8([1, 2, 3, 4], (2, 2), per_tensor(0.1, 0)), None),
                                None),
}.items():
    tree(f"packed params: {_label}")(lambda b, m=_packed: sd(stub(b), qlinear(b, packed=m(b))))

tree("packed params dtype that is a string, a tensor and a dict")(
    lambda b: sd(stub(b), qlinear(b, "a"), qlinear(b, "b"), qlinear(b, "c"),
                 [("a._packed_params.dtype", "qint8"),
                  ("b._packed_params.dtype", b.floats([1.0])),
                  ("c._packed_params.dtype", {"x": 1})]))


@tree("QAT: fake-quant scales do not match the weight")
def _(b):
    return sd(stub(b), [
        ("fc.weight", b.floats([0.1] * 6, (3, 2))), ("fc.bias", b.floats([0.0] * 3)),
        ("fc.weight_fake_quant.fake_quant_enabled", b.longs([1])),
        ("fc.weight_fake_quant.observer_enabled", "yes"),
        ("fc.weight_fake_quant.scale", b.floats([0.1, float("nan")])),
        ("fc.weight_fake_quant.zero_point", b.floats([0.5, 1.5, 2.5, 3.5])),
        ("fc.weight_fake_quant.activation_post_process.min_val", b.floats([0.0] * 5)),
        ("fc.weight_fake_quant.activation_post_process.max_val", b.floats([], (0,))),
        ("fc.activation_post_process.scale", b.floats([], (0,))),
        ("fc.activation_post_process.zero_point", b.longs([], (0,))),
        ("fc.activation_post_process.activation_post_process.min_val", "x"),
        ("fc.activation_post_process.activation_post_process.max_val", b.floats([1.0])),
    ])


@tree("QAT: fake-quant weight that is not a tensor")
def _(b):
    return sd([("fc.weight", (1, 2)), ("fc.weight_fake_quant.scale", b.floats([0.1])),
               ("fc.weight_fake_quant.zero_point", b.longs([0])),
               ("fc.activation_post_process.scale", (0.1,)),
               ("fc.activation_post_process.zero_point", None)])


@tree("PTQ observer with a string min and a 3-D max")
def _(b):
    return sd([("fc.weight", b.floats([0.1] * 4, (2, 2))),
               ("fc.activation_post_process.min_val", "low"),
               ("fc.activation_post_process.max_val", b.floats([1.0] * 8, (2, 2, 2))),
               ("fc.activation_post_process.eps", b.floats([], (0,)))])


@tree("embedding: packed weight that is a float tensor / a 4-bit odd shape")
def _(b):
    q4 = qtensor(b.storage("quint4x2", bytes(3)), (5, 1), per_tensor(0.1, 0))
    return sd([("e._packed_params._packed_weight", b.floats([1.0] * 4, (2, 2))),
               ("e._packed_params.dtype", G("torch", "quint8")),
               ("f._packed_params._packed_weight", q4),
               ("f._packed_params.dtype", G("torch", "quint4x2"))])


def _cell(b: Builder, payload: object) -> object:
    return Call(G("torch", "ScriptObject"), (), state=(payload, "CellParamsBase"), newobj=True)


@tree("dynamic RNN cells in broken layouts")
def _(b):
    w = b.qint8([1, 2, 3, 4], (2, 2), per_tensor(0.1, 0))
    w1d = b.qint8([1, 2], (2,), per_tensor(0.1, 0))
    inner = _cell(b, ((w, None), "LinearPackedParamsBase"))
    inner1d = _cell(b, ((w1d, None), "LinearPackedParamsBase"))
    return sd([
        ("rnn._all_weight_values.0.param", _cell(b, ("quantized", [], [], [], [inner]))),
        ("rnn._all_weight_values.1.param", _cell(b, ("quantized", [], [], [], [inner, 5]))),
        ("rnn._all_weight_values.2.param", _cell(b, ("quantized", [], [], [],
                                                     [inner1d, inner1d]))),
        ("rnn._all_weight_values.3.param", _cell(b, None)),
        ("rnn._all_weight_values.4.param", _cell(b, ("quantized", [], [], [], [inner, inner]))),
        ("rnn._all_weight_values.99999999999999999999.param", 5),
    ])


@tree("BatchNorm statistics of the wrong shapes")
def _(b):
    return sd(stub(b), [("bn.weight", b.floats([1.0] * 3)), ("bn.bias", "b"),
                        ("bn.running_mean", b.floats([], (0,))),
                        ("bn.running_var", b.floats([-1.0, float("nan")])),
                        ("bn.num_batches_tracked", b.floats([0.5])),
                        ("bn.scale", b.floats([0.1])), ("bn.zero_point", b.longs([0]))])


# --- build and run -----------------------------------------------------------------------


def _build_all(directory: Path) -> list[Case]:
    directory.mkdir(parents=True, exist_ok=True)
    cases = []
    for index, (name, fn, legacy, needles, variants) in enumerate(TREES):
        for as_legacy in (False, True) if legacy else (False,):
            b = Builder(legacy=as_legacy)
            path = directory / f"t{index:03d}{'_legacy' if as_legacy else ''}.pt"
            b.save(path, fn(b))
            label = f"{name} ({'legacy stream' if as_legacy else 'zip'})"
            cases.append(Case(label, path, needles, variants=variants))
    for index, (name, fn, needles, variants) in enumerate(FILES):
        path = directory / f"f{index:03d}.pt"
        fn(path)
        cases.append(Case(name, path, needles, variants=variants))
    # a file whose own name tries to drive the terminal
    evil = directory / "\x1b[2J\x1b]0;pwned\x07[bold red]name.pt"
    evil.write_bytes((directory / "t000.pt").read_bytes())
    cases.append(Case("file name with escapes and markup", evil, variants="all"))
    return cases


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    directory = tmp_path_factory.mktemp("structure")
    return directory, _build_all(directory)


@pytest.fixture(scope="module")
def structure_run(built, hostile):
    directory, cases = built
    return hostile.run("crafted", cases, directory=directory)


def test_every_command_has_a_template():
    from conftest import TEMPLATES, registered_commands

    missing = [c for c in registered_commands() if c not in TEMPLATES]
    assert not missing, f"add a hostile-suite template for: {missing} (tests/hostile/conftest.py)"


def test_hostile_structures_under_every_command(structure_run):
    assert not structure_run.failures, runner.report(structure_run.failures)


FRESH_SAMPLE = ("shape 2^20 x 2^20 on 4 bytes (zip)", "zero strides: 2^32 values from 4 bytes "
                "(legacy stream)", "zip bomb: data.pkl deflated from 512 MiB",
                "lists nested 50,000 deep in a value (zip)",
                "one 1 MiB tensor under 200 keys (memo) (zip)", "key named clear-screen (zip)",
                "file name with escapes and markup")


def test_sample_in_fresh_processes(built, hostile_cwd, ref_checkpoint):
    """The real entry point, one new process per file, under RLIMIT_AS, with its own peak
    RSS from wait4."""
    from concurrent.futures import ThreadPoolExecutor

    _, cases = built
    chosen = [c for c in cases if c.name in FRESH_SAMPLE]
    assert len(chosen) == len(FRESH_SAMPLE), "a fresh-process case was renamed"
    with ThreadPoolExecutor(runner.WORKERS) as ex:
        outcomes = list(ex.map(lambda c: runner.run_fresh(c.name, ["show", str(c.path)],
                                                          hostile_cwd), chosen))
    failures = [(o, real) for o in outcomes if (real := excuse(
        o.name, o.argv, runner.judge(o, (0, 2), fresh=True), {}))]
    runner.TALLY.fresh += len(outcomes)
    assert not failures, runner.report(failures)
