"""Property-based fuzzing of the loader with structured mutations (not only random bytes).

Three generators, each a hypothesis strategy:

* **trees**: state_dicts built from the pieces eager files are made of (quantized and
  float tensors with arbitrary offset/size/stride against their storage, per-tensor and
  per-channel qparams with NaN/Inf/zero/negative scales and out-of-range zero points,
  packed-params tuples of any arity, TorchScript cells, nested containers, names with
  escapes), written as a zip archive or a legacy stream;
* **opcodes**: a real sample's ``data.pkl`` parsed with pickletools and edited op by op
  (deleted, duplicated, swapped, integers replaced by extremes, globals and strings
  replaced), then put back into its archive;
* **zip headers**: a field of the central directory or end record of a real sample set to
  an extreme value.

The property: every command run on the file honours the contract (see ``runner.judge``).
The seed is ``QINSPECT_FUZZ_SEED`` (printed in the summary line); hypothesis prints the
failing example, and ``note`` records the file it wrote. To explore with more examples,
set ``QINSPECT_FUZZ_EXAMPLES`` (a multiplier) and ``QINSPECT_FUZZ_COLLECT=failures.jsonl``
(failures are written down instead of failing the first example).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickletools
import struct
import zipfile
from pathlib import Path

import pytest
import runner
from conftest import SAMPLES, SEED, excuse
from craft import Builder, Call, G, ODict, per_channel, per_tensor, qtensor, tensor, write_zip
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

SCALE = float(os.environ.get("QINSPECT_FUZZ_EXAMPLES", "1"))
EXAMPLES = {k: max(1, int(v * SCALE)) for k, v in {"trees": 160, "opcodes": 160,
                                                    "zip": 100}.items()}
COUNTER = itertools.count()
FUZZ_SETTINGS = settings(deadline=None, database=None, derandomize=False,
                         suppress_health_check=list(HealthCheck), print_blob=True)


def _run(hostile, path: Path, name: str, variants) -> None:
    """Two command variants on the file, in parallel; assert the contract."""
    from conftest import variants as all_variants

    options = all_variants(path, hostile.ref)
    chosen = [options[i % len(options)] for i in variants]
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    outcomes = hostile.pool.run_many([(name, argv, ()) for argv, _ in chosen])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before, "the input changed"
    failures = []
    for outcome, (_, codes) in zip(outcomes, chosen, strict=True):
        real = excuse(name, outcome.argv, runner.judge(outcome, codes), {})
        runner.TALLY.record("fuzz", str(path), outcome, real)
        if real:
            failures.append((outcome, real))
    stray = list(hostile.cwd.iterdir())
    assert not stray, f"qinspect wrote into its working directory: {stray[:3]}"
    collect = os.environ.get("QINSPECT_FUZZ_COLLECT")
    if collect:  # exploring: write every failure down and carry on
        with open(collect, "a") as fh:
            for outcome, problems in failures:
                fh.write(json.dumps({"problems": problems, "argv": outcome.argv,
                                     "err": outcome.err}) + "\n")
        return
    assert not failures, runner.report(failures)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# --- trees -------------------------------------------------------------------------------

NAMES = st.sampled_from(["fc", "fc1", "quant", "features.0", "lstm", "emb", "", "a.b.c",
                         "\x1b[2Jx", "[red]m[/red]", "\u202em", "m\n"])
LEAVES = st.sampled_from([
    "weight", "bias", "scale", "zero_point", "_packed_params._packed_params",
    "_packed_params.dtype", "_packed_params._packed_weight", "running_mean", "running_var",
    "weight_fake_quant.scale", "weight_fake_quant.zero_point",
    "activation_post_process.scale", "activation_post_process.zero_point",
    "activation_post_process.min_val", "activation_post_process.max_val",
    "_all_weight_values.0.param", "weight_ih_l0", "mystery"])
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, -0.0, 1e-45, -1.0, 3e38, 0.1]))
INTS = st.one_of(st.integers(-300, 300), st.sampled_from([2**31, -(2**31), 2**62, -(2**63)]))
SHAPES = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)


@st.composite
def tensor_spec(draw, b: Builder) -> object:
    kind = draw(st.sampled_from(["float32", "int64", "qint8", "quint8", "quint4x2",
                                 "float64", "bool"]))
    size = draw(SHAPES)
    numel = 1
    for d in size:
        numel *= d
    data_len = draw(st.one_of(st.just(numel), st.integers(0, 64)))
    item = {"float32": 4, "int64": 8, "float64": 8}.get(kind, 1)
    declared = draw(st.one_of(st.none(), st.just(data_len), st.integers(0, 2**40)))
    st_ref = b.storage(kind, bytes(draw(st.binary(min_size=data_len * item,
                                                  max_size=data_len * item))), declared)
    stride = draw(st.one_of(st.none(), st.lists(st.integers(-2, 8), min_size=len(size),
                                                max_size=len(size)).map(tuple)))
    offset = draw(st.one_of(st.just(0), st.integers(-2, 70)))
    if kind.startswith("q"):
        if draw(st.booleans()):
            qp = per_tensor(draw(FLOATS), draw(INTS))
        else:
            n = draw(st.integers(0, 4))
            qp = per_channel(b.doubles([draw(FLOATS) for _ in range(n)]),
                             b.longs([draw(INTS) for _ in range(n)]),
                             draw(st.integers(-1, 4)))
        return qtensor(st_ref, size, qp, stride, offset)
    return tensor(st_ref, size, stride, offset)


@st.composite
def value(draw, b: Builder, depth: int = 0) -> object:
    choices = ["tensor", "tensor", "tensor", "scalar", "packed", "cell", "dtype"]
    if depth < 3:
        choices += ["list", "tuple", "dict"]
    kind = draw(st.sampled_from(choices))
    if kind == "tensor":
        return draw(tensor_spec(b))
    if kind == "scalar":
        return draw(st.one_of(st.none(), INTS, FLOATS, st.text(max_size=8)))
    if kind == "dtype":
        return G("torch", draw(st.sampled_from(["qint8", "quint8", "float16", "quint4x2",
                                                "float32"])))
    if kind == "packed":
        return tuple(draw(st.lists(value(b, depth + 1), min_size=0, max_size=3)))
    if kind == "cell":
        inner = Call(G("torch", "ScriptObject"), (), newobj=True, state=(
            (draw(tensor_spec(b)), draw(st.one_of(st.none(), tensor_spec(b)))),
            "LinearPackedParamsBase"))
        payload = ("quantized", [], [], [], draw(st.lists(st.just(inner), max_size=3)))
        return Call(G("torch", "ScriptObject"), (), newobj=True,
                    state=(payload, draw(st.sampled_from(["CellParamsBase", "\x1b[2J"]))))
    items = draw(st.lists(value(b, depth + 1), max_size=3))
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    return {f"k{i}": v for i, v in enumerate(items)}


@st.composite
def state_dicts(draw) -> tuple[Builder, object, dict]:
    b = Builder(legacy=draw(st.booleans()))
    entries = draw(st.lists(st.tuples(NAMES, LEAVES, value(b)), min_size=1, max_size=8))
    items = tuple((f"{m}.{leaf}" if m else leaf, v) for m, leaf, v in entries)
    meta = None
    if draw(st.booleans()):
        meta = ODict(tuple((m, {"version": draw(INTS)}) for m, _, _ in entries))
    obj = ODict(items, metadata=meta)
    if draw(st.booleans()):
        obj = {draw(st.sampled_from(["state_dict", "model", "model_state_dict"])): obj,
               "epoch": draw(INTS)}
    options = {} if b.legacy else {"deflate": ("data.pkl",) if draw(st.booleans()) else (),
                                   "prefix": draw(st.sampled_from(["archive", "m", "x y"]))}
    return b, obj, options


@seed(SEED)
@settings(FUZZ_SETTINGS, max_examples=EXAMPLES["trees"])
@given(case=state_dicts(), variants=st.lists(st.integers(0, 99), min_size=2, max_size=2))
def test_fuzz_state_dict_trees(hostile, fuzz_dir, case, variants):
    b, obj, options = case
    path = fuzz_dir / f"tree{next(COUNTER)}.pt"
    b.save(path, obj, **options)
    note(f"file: {path} ({path.stat().st_size} bytes)")
    _run(hostile, path, "fuzzed state_dict", variants)


# --- opcode edits of real pickles --------------------------------------------------------

OPCODE_SEEDS = ("mlp_int8_fbgemm.pt", "convnet_int8.pt", "lstm_dynamic_int8.pt",
                "embbag_4bit.pt", "mlp_qat_prepared.pt", "dynlinear_fp16.pt")
EXTREME_INTS = (0, -1, 1, 255, 256, 2**31 - 1, 2**31, -(2**31), 2**62, -(2**63), 10**18)
GLOBALS = ("torch._utils _rebuild_qtensor", "torch._utils _rebuild_tensor_v2",
           "collections OrderedDict", "torch FloatStorage", "torch QInt8Storage",
           "torch QUInt4x2Storage", "torch per_channel_affine", "torch ScriptObject",
           "builtins set", "torch Size", "torch._utils _rebuild_meta_tensor_no_storage",
           "torch._utils _rebuild_sparse_tensor", "torch._utils _rebuild_parameter",
           "builtins bytearray", "_codecs encode", "posix system", "builtins exec")
STRINGS = ("", "\x1b[2J", "../../x", "storage", "0", "99", "cpu", "meta", "x" * 5000,
           "fc1._packed_params._packed_params", "[red]x")
INT_OPS = {"BININT", "BININT1", "BININT2", "LONG1", "INT"}
STR_OPS = {"BINUNICODE", "SHORT_BINUNICODE"}


def _sample_parts(name: str) -> tuple[str, bytes, dict[str, bytes]]:
    with zipfile.ZipFile(SAMPLES / name) as zf:
        first = zf.namelist()[0]
        prefix = first.split("/", 1)[0]
        pkl = zf.read(f"{prefix}/data.pkl")
        records = {n.split("/data/", 1)[1]: zf.read(n) for n in zf.namelist()
                   if f"{prefix}/data/" in n}
    return prefix, pkl, records


def _ops(pkl: bytes) -> list[tuple[str, object, bytes]]:
    found = list(pickletools.genops(pkl))
    ends = [pos for _, _, pos in found[1:]] + [len(pkl)]
    return [(op.name, arg, pkl[pos:end]) for (op, arg, pos), end in zip(found, ends,
                                                                        strict=True)]


def _int_op(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


EDITS = st.lists(st.tuples(st.sampled_from(["delete", "duplicate", "swap", "int", "global",
                                            "string"]),
                           st.integers(0, 10**6), st.integers(0, 10**6)),
                 min_size=1, max_size=4)


def edit(pkl: bytes, edits) -> bytes:
    ops = [list(op) for op in _ops(pkl)]
    body = ops[1:-1]  # keep PROTO and STOP
    for kind, i, j in edits:
        if not body:
            break
        k = i % len(body)
        if kind == "delete":
            del body[k]
        elif kind == "duplicate":
            body.insert(k, list(body[k]))
        elif kind == "swap":
            m = j % len(body)
            body[k], body[m] = body[m], body[k]
        elif kind == "int":
            ints = [n for n, op in enumerate(body) if op[0] in INT_OPS] or [k]
            n = ints[i % len(ints)]
            body[n] = ["BININT", None, _int_op(EXTREME_INTS[j % len(EXTREME_INTS)])]
        elif kind == "global":
            globs = [n for n, op in enumerate(body) if op[0] == "GLOBAL"] or [k]
            n = globs[i % len(globs)]
            mod, _, attr = GLOBALS[j % len(GLOBALS)].partition(" ")
            body[n] = ["GLOBAL", None, b"c" + mod.encode() + b"\n" + attr.encode() + b"\n"]
        elif kind == "string":
            strs = [n for n, op in enumerate(body) if op[0] in STR_OPS] or [k]
            n = strs[i % len(strs)]
            text = STRINGS[j % len(STRINGS)].encode()
            body[n] = ["BINUNICODE", None, b"X" + struct.pack("<I", len(text)) + text]
    return ops[0][2] + b"".join(op[2] for op in body) + ops[-1][2]


@seed(SEED)
@settings(FUZZ_SETTINGS, max_examples=EXAMPLES["opcodes"])
@given(sample=st.sampled_from(OPCODE_SEEDS), edits=EDITS,
       variants=st.lists(st.integers(0, 99), min_size=2, max_size=2))
def test_fuzz_pickle_opcodes(hostile, fuzz_dir, sample, edits, variants):
    prefix, pkl, records = _sample_parts(sample)
    path = fuzz_dir / f"ops{next(COUNTER)}.pt"
    write_zip(path, edit(pkl, edits), records, prefix=prefix)
    note(f"file: {path}")
    _run(hostile, path, f"{sample} with edited opcodes", variants)


# --- zip header fields -------------------------------------------------------------------

CD_FIELDS = {"version": (6, "<H"), "flags": (8, "<H"), "method": (10, "<H"), "crc": (16, "<I"),
             "compressed": (20, "<I"), "size": (24, "<I"), "name_len": (28, "<H"),
             "extra_len": (30, "<H"), "offset": (42, "<I")}
EOCD_FIELDS = {"entries_disk": (8, "<H"), "entries": (10, "<H"), "cd_size": (12, "<I"),
               "cd_offset": (16, "<I")}
FIELD_VALUES = (0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 8, 12, 99)
ZIP_SEEDS = OPCODE_SEEDS + ("eager_mlp_int8_ts.pt", "pt2e_mlp_x86.pt2",
                            "torchao_int8wo.pt", "fx_mlp_int8_graphmodule.pt")


def rewrite_header(data: bytes, entry: int, field: str, value: int) -> bytes:
    out = bytearray(data)
    end = data.rfind(b"PK\x05\x06")
    if field in EOCD_FIELDS:
        offset, fmt = EOCD_FIELDS[field]
        struct.pack_into(fmt, out, end + offset, value & (0xFFFF if fmt == "<H" else
                                                          0xFFFFFFFF))
        return bytes(out)
    starts, pos = [], data.find(b"PK\x01\x02")
    while 0 <= pos < end:
        starts.append(pos)
        pos = data.find(b"PK\x01\x02", pos + 4)
    offset, fmt = CD_FIELDS[field]
    where = starts[entry % len(starts)]
    struct.pack_into(fmt, out, where + offset, value & (0xFFFF if fmt == "<H" else 0xFFFFFFFF))
    return bytes(out)


@seed(SEED)
@settings(FUZZ_SETTINGS, max_examples=EXAMPLES["zip"])
@given(sample=st.sampled_from(ZIP_SEEDS), entry=st.integers(0, 50),
       field=st.sampled_from(sorted(CD_FIELDS) + sorted(EOCD_FIELDS)),
       value=st.sampled_from(FIELD_VALUES),
       variants=st.lists(st.integers(0, 99), min_size=2, max_size=2))
def test_fuzz_zip_headers(hostile, fuzz_dir, sample, entry, field, value, variants):
    path = fuzz_dir / f"zip{next(COUNTER)}.pt"
    path.write_bytes(rewrite_header((SAMPLES / sample).read_bytes(), entry, field, value))
    note(f"file: {path} ({sample}: entry {entry} {field} = {value:#x})")
    _run(hostile, path, f"{sample} with a forged zip header", variants)


def test_edit_helpers_round_trip():
    """The opcode editor reassembles an unedited pickle byte for byte."""
    _, pkl, _ = _sample_parts(OPCODE_SEEDS[0])
    assert edit(pkl, []) == pkl
