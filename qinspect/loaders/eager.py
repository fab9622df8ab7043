"""Eager-mode state_dicts -> :class:`Layer` objects with every key given a role.

A state_dict has no graph. Modules are grouped from key prefixes; what each module is
follows from the set of keys it owns (and from the module versions torch stores in
``state_dict._metadata`` when present: dynamic ``Linear`` is version 4, static 3).
Input-activation sources are inferred from module order and flagged as inferred.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from qinspect.loaders import tensors as T
from qinspect.loaders.reader import RawCheckpoint, ScriptObjectState
from qinspect.model import (
    ActQuant,
    InputSource,
    KeyRef,
    Layer,
    Level,
    Mode,
    Note,
    ObserverStats,
    OpKind,
    RnnCell,
    RnnGates,
    Role,
    SourceKind,
    TensorQuant,
    Unrecognised,
    Weight,
    axis_granularity,
)
from qinspect.quant.dtypes import QDTYPES

MARKERS = ("_packed_params", "_all_weight_values", "weight_fake_quant", "activation_post_process")
ACTIVATION_DTYPE = "quint8"
ASSUMED_WEIGHT_DTYPE = "qint8"
OBSERVER_FIELDS = ("min_val", "max_val", "eps", "histogram")
MAX_GAP = 64
"""Most RNN layers/cells a gap in the numbering may stand for (``_l9999999`` in a hostile
file must not make qinspect list ten million missing keys); beyond it only the numbers
present are completed."""
RNN_FLOAT = re.compile(r"^(weight|bias)_(ih|hh)_l\d+(_reverse)?$")
RNN_CELL = re.compile(r"^_all_weight_values\.(\d+)\.param$")
CONV_KINDS = {3: "Conv1d", 4: "Conv2d", 5: "Conv3d"}
RNN_KINDS = {4: RnnCell.LSTM, 3: RnnCell.GRU, 1: RnnCell.RNN}
DYNAMIC_SOURCE = InputSource(SourceKind.DYNAMIC, None, False,
                             "dynamic: quantized from each batch's own min/max at run time")


def split_key(key: str) -> tuple[str, str]:
    """``fc1._packed_params._packed_params`` -> (``fc1``, ``_packed_params._packed_params``)."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in MARKERS:
            return ".".join(parts[:i]), ".".join(parts[i:])
    return ".".join(parts[:-1]), parts[-1]


class Fields:
    """The keys one module owns; tracks which were attributed so the rest is reported."""

    def __init__(self, module: str, items: dict[str, tuple[str, Any]],
                 quantized_file: bool = False) -> None:
        self.module = module
        self.items = items
        self.refs: list[KeyRef] = []
        self.present = frozenset(items)
        self.expected: list[str] = []
        self.by_hand = False
        self.ambiguous = False
        self.quantized_file = quantized_file
        self.state_dict = True

    def expect(self, *local: str, by_hand: bool = False) -> None:
        """Keys torch's module of this type needs to load; ``by_hand``: it reads them
        itself in ``_load_from_state_dict`` (a missing one is a KeyError), else they are
        parameters/buffers (strict loading lists them as missing keys)."""
        self.expected.extend(k for k in local if k not in self.expected)
        self.by_hand = self.by_hand or by_hand

    def has(self, local: str) -> bool:
        return local in self.items

    def value(self, local: str) -> Any:
        return self.items[local][1]

    def key(self, local: str) -> str:
        return self.items[local][0]

    def take(self, local: str, role: Role) -> Any:
        key, value = self.items.pop(local)
        self.refs.append(KeyRef(key, role))
        return value

    def take_prefixed(self, prefix: str, role: Role) -> dict[str, Any]:
        out = {}
        for local in [name for name in self.items if name.startswith(prefix)]:
            out[local[len(prefix):]] = self.take(local, role)
        return out

    def leftovers(self, kind: str) -> list[Unrecognised]:
        return [
            Unrecognised(key, T.describe(value), f"not expected in {_a_module(kind)}")
            for key, value in self.items.values()
        ]


def _a_module(kind: str) -> str:
    """``Linear`` -> ``a Linear module``; ``module`` -> ``a module``."""
    return "a module" if kind == "module" else f"a {kind} module"


@dataclass
class Context:
    """File-level facts the per-module classification needs."""

    versions: dict[str, int]
    children: dict[str, set[str]]
    has_quantize: bool
    unrecognised: list[Unrecognised] = field(default_factory=list)
    quantized_file: bool = False
    """Some module holds quantized modules' keys: a lone scale/zero_point is then the
    remainder of an activation's qparams, not a float model's own parameter."""


def build_layers(raw: RawCheckpoint, state_dict: bool = True
                 ) -> tuple[list[Layer], list[Unrecognised], bool]:
    """Group, classify and connect. Returns (layers, unrecognised, module_order_known).

    ``state_dict``: the entries are loaded with ``load_state_dict``, so a layer missing a
    key its torch module reads is incomplete (``Layer.missing_keys``); False for module
    state read from elsewhere (a TorchScript archive keeps what its code uses)."""
    groups, malformed = _group(raw.entries)
    order_known = raw.metadata is not None
    ordered = _order(groups, raw.metadata)
    ctx = _context(groups, raw.metadata)
    ctx.unrecognised.extend(malformed)
    layers: list[Layer] = []
    for module in ordered:
        fields = Fields(module, groups[module], ctx.quantized_file)
        fields.state_dict = state_dict
        built, leftovers = classify(fields, ctx)
        layers.extend(built)
        ctx.unrecognised.extend(leftovers)
    layers = connect_inputs(layers, order_known)
    set_aside = [Unrecognised(key, what, why) for key, (what, why) in raw.rejected.items()]
    return layers, ctx.unrecognised + set_aside, order_known


def _group(entries: dict[str, Any]
           ) -> tuple[dict[str, dict[str, tuple[str, Any]]], list[Unrecognised]]:
    """Modules -> their keys. A key whose value cannot be what its name says (a scale
    that is a string or holds five numbers, a weight that is a tuple, ...) is set aside
    here, once, as unrecognised with the reason, so classification meets only values of
    the right kind."""
    groups: dict[str, dict[str, tuple[str, Any]]] = {}
    malformed: list[Unrecognised] = []
    for key, value in entries.items():
        module, local = split_key(key)
        problem = _malformed(local, value)
        if problem is not None:
            malformed.append(Unrecognised(key, T.describe(value), problem))
            continue
        groups.setdefault(module, {})[local] = (key, value)
    return groups, malformed


ACT_QPARAMS = ("scale", "zero_point", "activation_post_process.scale",
               "activation_post_process.zero_point")
FAKE_QUANT_QPARAMS = ("weight_fake_quant.scale", "weight_fake_quant.zero_point")
CONV_WEIGHT_DIMS = (3, 4, 5)


def _malformed(local: str, value: Any) -> str | None:
    """Why ``value`` cannot be the ``local`` field of an eager module (None: it can)."""
    leaf = local.rsplit(".", 1)[-1]
    if T.is_quantized(value) and local not in ("weight", "_packed_params._packed_weight"):
        return ("a quantized tensor where eager modules keep float or integer values (only "
                "conv weights and packed embedding weights are stored quantized)")
    if local in ACT_QPARAMS or local in FAKE_QUANT_QPARAMS:
        if not T.is_tensor(value) or value.is_quantized or value.is_complex():
            return f"{leaf} should be a real-valued tensor"
        if local in ACT_QPARAMS and value.numel() != 1:
            return (f"an activation {leaf} holds one number; this one has shape "
                    f"{list(value.shape)}")
        if leaf == "zero_point" and value.is_floating_point():
            values = np.asarray(T.float_values(value), dtype=np.float64).reshape(-1)
            if local in ACT_QPARAMS and not bool((values == np.round(values)).all()):
                return "an activation zero_point should be an integer"
            if not bool(np.isfinite(values).all()) or bool((np.abs(values) > 2**62).any()):
                return "a zero_point should be a finite integer within int64"
        if local in FAKE_QUANT_QPARAMS and (value.dim() > 1 or value.numel() == 0):
            return (f"a weight fake-quant {leaf} holds one number per output channel; this "
                    f"one has shape {list(value.shape)}")
    elif leaf in ("weight", "bias", "running_mean", "running_var", "min_val", "max_val") or (
            RNN_FLOAT.match(leaf)):
        if leaf == "bias" and value is None:
            return None
        if not T.is_tensor(value):
            return f"a {leaf} should be a tensor"
        if value.dim() == 0 and leaf not in ("min_val", "max_val"):
            return f"a {leaf} has at least one dimension; this one is a scalar"
        if leaf == "weight" and value.is_quantized and value.dim() not in CONV_WEIGHT_DIMS:
            return (f"a quantized weight stored as a tensor is a conv weight (3 to 5 dims); "
                    f"this one has {value.dim()}")
        if leaf != "weight" and value.is_quantized:
            return f"a {leaf} is stored in float, not quantized"
    elif local == "_packed_params.dtype":
        if not T.is_dtype(value):
            return "the packed params dtype should be a torch dtype"
    return None


def _order(groups: dict[str, Any], metadata: dict[str, Any] | None) -> list[str]:
    if not metadata:
        return list(groups)
    rank = {name: i for i, name in enumerate(metadata)}
    position = {name: i for i, name in enumerate(groups)}
    return sorted(groups, key=lambda m: (rank.get(m, len(rank)), position[m]))


def _context(groups: dict[str, Any], metadata: dict[str, Any] | None) -> Context:
    versions: dict[str, int] = {}
    children: dict[str, set[str]] = {}
    for name, info in (metadata or {}).items():
        if isinstance(info, dict) and isinstance(info.get("version"), int):
            versions[name] = info["version"]
        if name:
            parent, _, child = name.rpartition(".")
            children.setdefault(parent, set()).add(child)
    has_quantize = any(_is_quantize_stub(items) for items in groups.values())
    quantized_file = any(
        any(local.startswith(("_packed_params.", "_all_weight_values.")) or T.is_quantized(v)
            for local, (_, v) in items.items()) or {"scale", "zero_point"} <= set(items)
        for items in groups.values())
    return Context(versions, children, has_quantize, quantized_file=quantized_file)


def _is_quantize_stub(items: dict[str, tuple[str, Any]]) -> bool:
    if set(items) != {"scale", "zero_point"}:
        return False
    scale = items["scale"][1]
    return T.is_tensor(scale) and tuple(scale.shape) == (1,)


# --- classification -------------------------------------------------------------------


def classify(f: Fields, ctx: Context) -> tuple[list[Layer], list[Unrecognised]]:
    """Decide what one module is from the keys it owns."""
    for test, builder in CLASSIFIERS:
        if test(f):
            return builder(f, ctx)
    return [], f.leftovers("unknown")


def _packed_linear(f: Fields, ctx: Context) -> tuple[list[Layer], list[Unrecognised]]:
    packed = f.value("_packed_params._packed_params")
    if not _is_packed_linear(packed):
        bad = Unrecognised(
            f.key("_packed_params._packed_params"),
            T.describe(packed),
            "packed params should be a (weight tensor, bias) pair: 2-D weight, 1-D bias or None",
        )
        f.items.pop("_packed_params._packed_params")
        return [], [bad, *f.leftovers("packed Linear")]
    f.expect("scale", "zero_point", "_packed_params.dtype", "_packed_params._packed_params",
             by_hand=True)  # torch.ao.nn.quantized.Linear + LinearPackedParams
    w, b = f.take("_packed_params._packed_params", Role.WEIGHT)
    f.refs[-1] = KeyRef(f.refs[-1].key, Role.WEIGHT)
    declared = None
    if f.has("_packed_params.dtype"):
        declared = T.dtype_name(f.take("_packed_params.dtype", Role.PACKED_DTYPE))
    key = f.refs[0].key
    notes: list[Note] = []
    weight = _weight(key, w, declared, notes)
    version = ctx.versions.get(f.module)
    dynamic = declared == "float16" or version == 4
    if version is None and declared != "float16":
        dynamic = not ctx.has_quantize and _is_placeholder(f)
        if dynamic:
            notes.append(Note(Level.INFO, "dynamic vs static inferred: no QuantStub in the "
                              "file and output qparams at their 1.0/0 defaults"))
    mode = Mode.DYNAMIC if dynamic else Mode.STATIC
    output = _output_qparams(f, mode)
    bias = T.float_values(b) if T.is_tensor(b) else None
    if mode is Mode.STATIC:
        notes.extend(_fused_relu_hint(output, "Linear"))
    source = DYNAMIC_SOURCE if mode is Mode.DYNAMIC else None
    layer = Layer(
        name=f.module, kind="Linear", op=OpKind.LINEAR, mode=mode, keys=(), weight=weight,
        bias=bias,
        bias_key=key if bias is not None else None, output=output, input_source=source,
        notes=tuple(notes),
    )
    return [_finish(layer, f)], f.leftovers("Linear")


def _is_packed_linear(packed: Any) -> bool:
    if not (isinstance(packed, tuple) and len(packed) == 2 and T.is_tensor(packed[0])):
        return False
    weight, bias = packed
    if weight.dim() != 2 or weight.is_complex():
        return False
    return bias is None or (T.is_tensor(bias) and bias.dim() == 1 and not bias.is_quantized)


def _is_placeholder(f: Fields) -> bool:
    if not (f.has("scale") and f.has("zero_point")):
        return True
    return float(f.value("scale")) == 1.0 and int(f.value("zero_point")) == 0


def _output_qparams(f: Fields, mode: Mode) -> ActQuant | None:
    if not (f.has("scale") and f.has("zero_point")):
        for local in ("scale", "zero_point"):  # the other is missing (see missing_keys)
            if f.has(local) and T.is_tensor(f.value(local)):
                f.take(local, Role.UNUSED if mode is Mode.DYNAMIC else Role.OUTPUT_QPARAMS)
        return None
    if mode is Mode.DYNAMIC:
        f.take("scale", Role.UNUSED)
        f.take("zero_point", Role.UNUSED)
        return None
    keys = (f.key("scale"), f.key("zero_point"))
    scale = f.take("scale", Role.OUTPUT_QPARAMS)
    zp = f.take("zero_point", Role.OUTPUT_QPARAMS)
    return _act(scale, zp, keys)


def _act(scale: Any, zero_point: Any, keys: tuple[str, ...]) -> ActQuant:
    return ActQuant(
        scale=float(T.float_values(scale).reshape(-1)[0]),
        zero_point=int(np.asarray(T.float_values(zero_point)).reshape(-1)[0]),
        dtype=ACTIVATION_DTYPE,
        dtype_assumed=True,
        keys=keys,
    )


def _weight(key: str, t: Any, declared: str | None, notes: list[Note]) -> Weight:
    stored = T.dtype_name(t.dtype)
    shape = tuple(int(d) for d in t.shape)
    if t.is_quantized:
        quant = T.tensor_quant(t)
        if declared is not None and declared != stored:
            notes.append(Note(Level.WARNING, f"packed params record dtype {declared}, but the "
                              f"stored weight is {stored}; {stored} is what the kernel uses"))
        return Weight(key, shape, stored, T.int_values(t), quant, declared)
    if declared == "float16":
        notes.append(Note(Level.INFO, "float16 dynamic layer: torch stores the weight as "
                          f"{stored} and casts it to float16 when packing"))
    return Weight(key, shape, stored, T.float_values(t), None, declared)


def _fused_relu_hint(output: ActQuant | None, kind: str) -> list[Note]:
    if output is None or output.zero_point != 0:
        return []
    return [Note(Level.INFO, f"output zero point 0 (range starts at 0.0): consistent with a "
                 f"fused {kind}ReLU; fused and unfused layers store the same keys")]


def _embedding(f: Fields, ctx: Context) -> tuple[list[Layer], list[Unrecognised]]:
    t = f.value("_packed_params._packed_weight")
    if not (T.is_quantized(t) and t.dim() == 2):
        bad = Unrecognised(f.key("_packed_params._packed_weight"), T.describe(t),
                           "embedding packed weight should be a 2-D quantized tensor")
        f.items.pop("_packed_params._packed_weight")
        return [], [bad, *f.leftovers("Embedding")]
    f.expect("_packed_params.dtype", "_packed_params._packed_weight", by_hand=True)
    f.take("_packed_params._packed_weight", Role.WEIGHT)
    key = f.refs[-1].key
    declared = None
    if f.has("_packed_params.dtype"):
        declared = T.dtype_name(f.take("_packed_params.dtype", Role.PACKED_DTYPE))
    notes: list[Note] = []
    weight = _weight(key, t, declared, notes)
    source = InputSource(SourceKind.NOT_QUANTIZED, None, False,
                         "integer indices: nothing to quantize; the output rows are float")
    layer = Layer(name=f.module, kind="Embedding or EmbeddingBag", op=OpKind.EMBEDDING,
                  mode=Mode.WEIGHT_ONLY, keys=(), weight=weight, input_source=source,
                  notes=tuple(notes))
    return [_finish(layer, f)], f.leftovers("Embedding")


def _dynamic_rnn(f: Fields, ctx: Context) -> tuple[list[Layer], list[Unrecognised]]:
    bad: list[Unrecognised] = []
    names = sorted((int(m.group(1)), n) for n in list(f.items) if (m := RNN_CELL.match(n)))
    cells: list[tuple[int, str, list[tuple[str, Any, Any]]]] = []
    for index, local in names:
        key, value = f.items.pop(local)
        parsed = _parse_cell(value)
        if parsed is None:
            bad.append(Unrecognised(key, T.describe(value),
                                    "dynamic RNN cell state not in the expected layout"))
            continue
        cells.append((index, key, parsed))
    directions, known = _rnn_directions([c[2] for c in cells])
    layers: list[Layer] = []
    for index, key, parsed in cells:
        layers.extend(_cell_layers(f.module, index, key, parsed, directions, known))
    if names and layers:  # torch reads every cell by hand: a gap, or one the metadata lists
        listed = ctx.children.get(f"{f.module}._all_weight_values" if f.module
                                  else "_all_weight_values", set())
        count = max([names[-1][0] + 1] + [int(c) + 1 for c in listed if c.isdigit()])
        indices = range(count) if count <= len(names) + MAX_GAP else [i for i, _ in names]
        f.expect(*(f"_all_weight_values.{i}.param" for i in indices), by_hand=True)
        layers[0] = _incomplete(layers[0], *_missing(f))
    return layers, bad + f.leftovers("dynamic RNN")


def _parse_cell(value: Any) -> list[tuple[str, Any, Any]] | None:
    """CellParamsBase state -> [(gate name, weight, bias)] for its ih and hh packed params."""
    if not isinstance(value, ScriptObjectState):
        return None
    payload = value.payload
    if not (isinstance(payload, tuple) and len(payload) == 5 and isinstance(payload[4], list)):
        return None
    packed = payload[4]
    if len(packed) != 2:
        return None
    out = []
    for gate, obj in zip(("ih", "hh"), packed, strict=True):
        inner = obj.payload if isinstance(obj, ScriptObjectState) else None
        if not (isinstance(inner, tuple) and _is_packed_linear(inner)):
            return None
        out.append((gate, inner[0], inner[1]))
    return out


def _rnn_directions(cells: list[list[tuple[str, Any, Any]]]) -> tuple[int, bool]:
    """1 or 2 directions, and whether the shapes decide it.

    torch packs cell ``i`` = layer ``i // D``, direction ``i % D``. Unidirectional: cell
    ``i >= 1`` reads the hidden state (``H`` input columns); bidirectional: cells 0 and 1
    read the input, cells ``>= 2`` both directions (``2H``). Only 2 cells whose input size
    equals the hidden size fit both (a 2-layer RNN or a 1-layer bidirectional one)."""
    if not cells:
        return 1, True
    cols = [int(c[0][1].shape[1]) for c in cells]
    hidden = int(cells[0][1][1].shape[1])
    uni = all(c == hidden for c in cols[1:])
    bi = (len(cols) % 2 == 0 and cols[1] == cols[0]
          and all(c == 2 * hidden for c in cols[2:]))
    if bi and not uni:
        return 2, True
    return 1, not bi


def rnn_weight_name(module: str, gate: str, layer: int, reverse: bool) -> str:
    """torch's own name: ``lstm.weight_ih_l0``, ``lstm.weight_hh_l1_reverse``."""
    leaf = f"weight_{gate}_l{layer}" + ("_reverse" if reverse else "")
    return f"{module}.{leaf}" if module else leaf


def _cell_layers(module: str, index: int, key: str, parsed: list, directions: int,
                 known: bool) -> list[Layer]:
    hidden = int(parsed[1][1].shape[1])
    gates = int(parsed[0][1].shape[0]) // max(hidden, 1)
    cell = RNN_KINDS.get(gates, RnnCell.RNN)
    kind = cell.value
    layer, reverse = divmod(index, directions)
    layers = []
    for gate, w, b in parsed:
        notes: list[Note] = []
        if not known and gate == "ih":
            notes.append(Note(Level.INFO, f"packed cell {index} of {kind} '{module}': the "
                              f"file does not say whether this is layer {index} of a "
                              f"unidirectional {kind} (the name used here) or direction "
                              f"{index} of layer 0 of a bidirectional one "
                              f"(weight_{{ih,hh}}_l0{'_reverse' if index else ''}): 2 cells "
                              "with input size = hidden size fit both"))
        weight = _weight(key, w, None, notes)
        bias = T.float_values(b) if T.is_tensor(b) else None
        layers.append(Layer(
            name=rnn_weight_name(module, gate, layer, bool(reverse)),
            kind=f"{kind} gates ({gate})", op=OpKind.RNN_GATES,
            rnn=RnnGates(cell, gate, layer, bool(reverse)),
            mode=Mode.DYNAMIC, keys=(KeyRef(key, Role.WEIGHT),), weight=weight, bias=bias,
            bias_key=key if bias is not None else None, input_source=DYNAMIC_SOURCE,
            notes=tuple(notes),
        ))
    return layers


def _qat_layer(f: Fields, ctx: Context) -> tuple[list[Layer], list[Unrecognised]]:
    f.expect("weight")
    w = f.take("weight", Role.WEIGHT) if f.has("weight") else None
    fq = f.take_prefixed("weight_fake_quant.", Role.WEIGHT_QPARAMS)
    _reassign_roles(f, "weight_fake_quant.")
    weight_obs = _observer(fq, [r.key for r in f.refs if ".weight_fake_quant.activation" in r.key])
    notes: list[Note] = []
    weight = None
    if w is not None and "scale" in fq and "zero_point" in fq:
        quant = _fake_quant_params(fq)
        weight = Weight(f"{f.module}.weight", tuple(w.shape), T.dtype_name(w.dtype),
                        T.float_values(w), quant)
        notes.append(Note(Level.INFO, "weight fake-quant dtype not stored: qint8 assumed "
                          "(every default QAT qconfig)"))
    bias = _take_bias(f)
    output, obs, mode = _prepared_output(f, default=Mode.QAT_PREPARED)
    kind, op = _kind_from_weight(w)
    converts = _converts(f.module, op, output is not None or obs is not None, weight)
    layer = Layer(name=f.module, kind=kind, op=op, mode=Mode.QAT_PREPARED, keys=(),
                  weight=weight,
                  bias=bias, bias_key=f"{f.module}.bias" if bias is not None else None,
                  output=output, output_observer=obs, weight_observer=weight_obs,
                  converts_to=converts, notes=tuple(notes), extras=_qat_flags(fq))
    del mode
    return [_finish(layer, f)], f.leftovers(kind)


def _qat_flags(fq: dict[str, Any]) -> dict[str, np.ndarray]:
    """The weight fake-quant's observer/fake-quant switches, as extras."""
    return {f"weight_fake_quant.{flag}": T.float_values(fq[flag])
            for flag in QAT_FLAG_EXTRAS if flag in fq and T.is_tensor(fq[flag])}


def _reassign_roles(f: Fields, prefix: str) -> None:
    """Observer statistics and flags inside a fake-quant get their own roles."""
    for i, ref in enumerate(f.refs):
        local = ref.key[len(f.module) + 1:] if f.module else ref.key
        if not local.startswith(prefix):
            continue
        leaf = local.rsplit(".", 1)[1]
        if leaf in ("fake_quant_enabled", "observer_enabled"):
            f.refs[i] = KeyRef(ref.key, Role.FAKE_QUANT_FLAGS)
        elif leaf in OBSERVER_FIELDS:
            f.refs[i] = KeyRef(ref.key, Role.OBSERVER_STATS)


def _fake_quant_params(fq: dict[str, Any]) -> TensorQuant:
    scale = T.float_values(fq["scale"]).astype(np.float64).reshape(-1)
    zp = T.float_values(fq["zero_point"]).astype(np.int64).reshape(-1)
    per_channel = scale.size > 1
    scheme = "per_channel_affine" if per_channel else "per_tensor_affine"
    axis = 0 if per_channel else None
    return TensorQuant(ASSUMED_WEIGHT_DTYPE, scheme, scale, zp, axis,
                       granularity=axis_granularity(axis))


def _observer(fields: dict[str, Any], keys: list[str]) -> ObserverStats | None:
    lo = next((v for k, v in fields.items() if k.endswith("min_val")), None)
    hi = next((v for k, v in fields.items() if k.endswith("max_val")), None)
    if lo is None or hi is None or not (T.is_tensor(lo) and T.is_tensor(hi)):
        return None
    if lo.numel() != hi.numel() or lo.numel() == 0:
        return None  # uncalibrated (empty) or inconsistent: the keys keep their roles
    keep = tuple(k for k in keys if k.endswith(("min_val", "max_val")))
    return ObserverStats(T.float_values(lo).reshape(-1), T.float_values(hi).reshape(-1), keep)


NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")
NORM_EXTRAS = ("running_mean", "running_var")
QAT_FLAG_EXTRAS = ("observer_enabled", "fake_quant_enabled")


def _take_norm_stats(f: Fields) -> dict[str, np.ndarray]:
    """Take BatchNorm running statistics (role NORM_STATS); return mean and var as extras."""
    extras: dict[str, np.ndarray] = {}
    for stat in NORM_STATS:
        if f.has(stat):
            value = f.take(stat, Role.NORM_STATS)
            if stat in NORM_EXTRAS and T.is_tensor(value):
                extras[stat] = T.float_values(value)
    return extras


def _take_bias(f: Fields) -> np.ndarray | None:
    if not f.has("bias"):
        return None
    b = f.take("bias", Role.BIAS)
    return T.float_values(b) if T.is_tensor(b) else None


def _prepared_output(
    f: Fields, default: Mode
) -> tuple[ActQuant | None, ObserverStats | None, Mode]:
    app = f.take_prefixed("activation_post_process.", Role.OUTPUT_QPARAMS)
    _reassign_roles(f, "activation_post_process.")
    own = f"{f.module}.activation_post_process." if f.module else "activation_post_process."
    obs = _observer(app, [r.key for r in f.refs if r.key.startswith(own)])
    if "scale" in app and "zero_point" in app:
        keys = (f"{f.module}.activation_post_process.scale",
                f"{f.module}.activation_post_process.zero_point")
        return _act(app["scale"], app["zero_point"], _prefix_keys(f.module, keys)), obs, default
    return None, obs, Mode.PTQ_PREPARED


def _prefix_keys(module: str, keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(k.lstrip(".") for k in keys)


def _kind_from_weight(w: Any) -> tuple[str, OpKind]:
    """Label and op of a prepared or float module from its weight's rank."""
    if w is None:
        return "module", OpKind.OTHER
    ndim = len(w.shape)
    if ndim == 2:
        return "Linear", OpKind.LINEAR
    if ndim in CONV_KINDS:
        return CONV_KINDS[ndim], OpKind.CONV
    return f"{ndim}-D weight", OpKind.OTHER


def _converts(module: str, op: OpKind, has_output: bool, weight: Weight | None) -> tuple:
    p = f"{module}." if module else ""
    out = []
    if weight is not None:
        target = f"{p}_packed_params._packed_params" if op is OpKind.LINEAR else f"{p}weight"
        out.append((f"{p}weight + {p}weight_fake_quant.scale/zero_point", target))
    if has_output:
        out.append((f"{p}activation_post_process.scale", f"{p}scale"))
        out.append((f"{p}activation_post_process.zero_point", f"{p}zero_point"))
    return tuple(out)


def _observed(f: Fields, ctx: Context) -> tuple[list[Layer], list[Unrecognised]]:
    """A prepared module with an output observer / fake-quant but no weight fake-quant."""
    w = f.take("weight", Role.PARAM) if f.has("weight") and T.is_tensor(f.value("weight")) else None
    if f.has("bias") or any(f.has(stat) for stat in NORM_STATS):
        f.expect("weight", "bias")  # no torch module has a bias (or BN stats) but no weight
    if any(f.has(stat) for stat in NORM_STATS):
        f.expect(*NORM_STATS)
    bias = _take_bias(f) if w is not None or f.has("bias") else None
    extras = _take_norm_stats(f)
    output, obs, mode = _prepared_output(f, default=Mode.QAT_PREPARED)
    weight = None
    kind, op = "activation (QuantStub, FloatFunctional or activation module)", OpKind.ACTIVATION
    if w is not None:
        kind, op = _kind_from_weight(w)
        weight = Weight(f"{f.module}.weight", tuple(w.shape), T.dtype_name(w.dtype),
                        T.float_values(w))
        f.refs = [KeyRef(r.key, Role.WEIGHT) if r.key == weight.key else r for r in f.refs]
    converts = _converts(f.module, op, True, None)
    if mode is Mode.PTQ_PREPARED:
        converts = tuple((f"{src} (computed from min_val/max_val)".replace(
            "activation_post_process.scale", "activation_post_process min/max"), dst)
            for src, dst in converts[:1])
    layer = Layer(name=f.module, kind=kind, op=op, mode=mode, keys=(), weight=weight,
                  bias=bias, bias_key=f"{f.module}.bias" if bias is not None else None,
                  output=output, output_observer=obs, converts_to=converts, extras=extras)
    return [_finish(layer, f)], f.leftovers(kind)


def _quantized_conv(f: Fields, ctx: Context) -> tuple[list[Layer], list[Unrecognised]]:
    f.expect("weight", "bias", "scale", "zero_point", by_hand=True)  # _ConvNd, bias may be None
    t = f.take("weight", Role.WEIGHT)
    key = f.refs[-1].key
    notes: list[Note] = []
    weight = _weight(key, t, None, notes)
    bias = _take_bias(f)
    output = _output_qparams(f, Mode.STATIC)
    kind = CONV_KINDS.get(len(weight.shape), f"{len(weight.shape)}-D weight layer")
    op = OpKind.CONV if len(weight.shape) in CONV_KINDS else OpKind.OTHER
    if weight.quant is not None and weight.quant.axis == 1:
        kind = kind.replace("Conv", "ConvTranspose")
        op = OpKind.CONV_TRANSPOSE if op is OpKind.CONV else op
    elif weight.quant is not None and weight.quant.axis is None:
        notes.append(Note(Level.INFO, f"{kind} or ConvTranspose: per-tensor weights store "
                          "the same keys"))
    notes.extend(_fused_relu_hint(output, kind.split(" ")[0]))
    layer = Layer(name=f.module, kind=kind, op=op, mode=Mode.STATIC, keys=(), weight=weight,
                  bias=bias, bias_key=f"{f.module}.bias" if bias is not None else None,
                  output=output, notes=tuple(notes))
    return [_finish(layer, f)], f.leftovers(kind)


def _quantize_stub(f: Fields, ctx: Context) -> tuple[list[Layer], list[Unrecognised]]:
    f.expect("scale", "zero_point")
    keys = (f.key("scale"), f.key("zero_point"))
    scale = f.take("scale", Role.INPUT_QPARAMS)
    zp = f.take("zero_point", Role.INPUT_QPARAMS)
    layer = Layer(
        name=f.module, kind="Quantize (QuantStub)", op=OpKind.QUANTIZE, mode=Mode.QUANTIZE,
        keys=(),
        output=_act(scale, zp, keys),
        input_source=InputSource(SourceKind.NOT_QUANTIZED, None, False,
                                 "the model's float input, quantized here"),
    )
    return [_finish(layer, f)], f.leftovers("Quantize")


def _quantized_op(f: Fields, ctx: Context) -> tuple[list[Layer], list[Unrecognised]]:
    """scale/zero_point (+ maybe norm params): activations, QFunctional, norms."""
    kind, op = "quantized activation (Hardswish, ELU, LeakyReLU, Sigmoid, ...)", OpKind.ACTIVATION
    f.expect("scale", "zero_point")
    if "activation_post_process" in ctx.children.get(f.module, set()):
        kind, op = "QFunctional (FloatFunctional add/mul/cat after convert)", OpKind.FUNCTIONAL
        f.expect(by_hand=True)  # QFunctional reads scale/zero_point itself
    weight = None
    extras: dict[str, np.ndarray] = {}
    if any(f.has(stat) for stat in NORM_STATS):
        kind, op = "BatchNorm", OpKind.BATCH_NORM
        f.expect("weight", "bias", *NORM_STATS)
        extras = _take_norm_stats(f)
    elif f.has("weight") or f.has("bias"):
        kind, op = "LayerNorm, GroupNorm or InstanceNorm", OpKind.NORM
        f.expect("weight", "bias")
        if not f.has("weight"):
            kind = "quantized Conv or LayerNorm/GroupNorm/InstanceNorm (weight missing)"
            op = OpKind.OTHER
            f.ambiguous = True
    if f.has("weight") and T.is_tensor(f.value("weight")):
        w = f.take("weight", Role.PARAM)
        weight = Weight(f"{f.module}.weight", tuple(w.shape), T.dtype_name(w.dtype),
                        T.float_values(w))
    bias = _take_bias(f)
    if bias is not None:
        f.refs[-1] = KeyRef(f.refs[-1].key, Role.PARAM)
    output = _output_qparams(f, Mode.STATIC)
    layer = _finish(Layer(name=f.module, kind=kind, op=op, mode=Mode.STATIC, keys=(),
                          weight=weight, bias=bias, output=output, extras=extras), f)
    return [layer], f.leftovers(kind)


def _float_module(f: Fields, ctx: Context) -> tuple[list[Layer], list[Unrecognised]]:
    if any(RNN_FLOAT.match(n) for n in f.items):
        return _float_rnn(f)
    kind, op = "module", OpKind.OTHER
    w = None
    if f.has("weight") and T.is_tensor(f.value("weight")):
        w = f.value("weight")
        kind, op = _kind_from_weight(w)
        if op is OpKind.LINEAR and not f.has("bias"):
            kind, op = "Linear or Embedding", OpKind.OTHER
        if len(w.shape) == 1:
            kind, op = "normalisation (affine)", OpKind.NORM
    if f.has("running_mean"):
        kind, op = "BatchNorm", OpKind.BATCH_NORM
    role = Role.PARAM if op in (OpKind.BATCH_NORM, OpKind.NORM) else Role.WEIGHT
    weight = None
    if w is not None:
        f.take("weight", role)
        weight = Weight(f"{f.module}.weight" if f.module else "weight", tuple(w.shape),
                        T.dtype_name(w.dtype), T.float_values(w))
    if f.quantized_file and f.has("bias") and w is None:
        f.expect("weight", "bias")  # e.g. the conv inside a prepared fused ConvReLU
    bias = _take_bias(f)
    extras = _take_norm_stats(f)
    layer = Layer(name=f.module, kind=kind, op=op, mode=Mode.FLOAT, keys=(), weight=weight,
                  bias=bias, bias_key=f"{f.module}.bias" if bias is not None else None,
                  extras=extras)
    if not f.refs:
        return [], f.leftovers(kind)
    return [_finish(layer, f)], f.leftovers(kind)


def _float_rnn(f: Fields) -> tuple[list[Layer], list[Unrecognised]]:
    layers = []
    for local in [n for n in list(f.items) if RNN_FLOAT.match(n) and n.startswith("weight")]:
        w = f.take(local, Role.WEIGHT)
        bias_local = local.replace("weight", "bias", 1)
        refs = [f.refs[-1]]
        bias = None
        if f.has(bias_local):
            bias = T.float_values(f.take(bias_local, Role.BIAS))
            refs.append(f.refs[-1])
        m = RNN_FLOAT.match(local)
        assert m is not None  # selected by RNN_FLOAT above
        gates = RnnGates(_float_rnn_kind(f, local, w), m.group(2),
                         int(local.rsplit("_l", 1)[1].split("_")[0]), bool(m.group(3)))
        name = f"{f.module}.{local}" if f.module else local
        layers.append(Layer(
            name=name, kind=f"{gates.cell.value} gates ({gates.gate})", op=OpKind.RNN_GATES,
            rnn=gates, mode=Mode.FLOAT, keys=tuple(refs),
            weight=Weight(name, tuple(w.shape), T.dtype_name(w.dtype), T.float_values(w)),
            bias=bias, bias_key=refs[1].key if bias is not None else None,
        ))
    if layers:
        f.expect(*_rnn_expected(f.present))
        layers[0] = _incomplete(layers[0], *_missing(f))
    return layers, f.leftovers("RNN")


def _rnn_expected(present: frozenset[str]) -> list[str]:
    """nn.RNN/LSTM/GRU parameters: ih and hh weights for every layer up to the last one
    stored, in each direction stored, and both biases everywhere when any is stored."""
    found = [m for m in map(RNN_FLOAT.match, sorted(present)) if m]
    layers = {int(m.group(0).rsplit("_l", 1)[1].split("_")[0]) for m in found}
    depth = 1 + max(layers)
    indices = range(depth) if depth <= len(layers) + MAX_GAP else sorted(layers)
    directions = sorted({"_reverse" if m.group(3) else "" for m in found})
    kinds = ["weight"] + (["bias"] if any(m.group(1) == "bias" for m in found) else [])
    return [f"{kind}_{gate}_l{i}{d}" for i in indices for d in directions
            for kind in kinds for gate in ("ih", "hh")]


def _float_rnn_kind(f: Fields, local: str, w: Any) -> RnnCell:
    """LSTM/GRU/RNN from the gate count: rows of a gate weight / hidden size.

    The hidden size is the column count of the matching ``weight_hh`` (``w`` itself for
    an hh weight; the ih weight is taken first, so its hh partner is still unclaimed)."""
    hh = w if "_hh_" in local else f.items.get(local.replace("_ih_", "_hh_"), (None, None))[1]
    if not (T.is_tensor(hh) and len(hh.shape) == 2 and int(hh.shape[1]) > 0):
        return RnnCell.RNN
    return RNN_KINDS.get(int(w.shape[0]) // int(hh.shape[1]), RnnCell.RNN)


def _finish(layer: Layer, f: Fields) -> Layer:
    notes = layer.notes + tuple(_impossible_values(layer))
    return _incomplete(replace(layer, keys=tuple(f.refs), notes=notes), *_missing(f))


def _incomplete(layer: Layer, missing: tuple[str, ...], error: str) -> Layer:
    """Record the keys torch's module needs and the file lacks (and say so in a note)."""
    if not missing:
        return layer
    note = Note(Level.WARNING, f"incomplete: {', '.join(missing)} missing; torch's "
                f"load_state_dict(strict=True) raises {error}")
    return replace(layer, missing_keys=missing, missing_error=error,
                   notes=(*layer.notes, note))


FAKE_QUANT_FIELDS = ("fake_quant_enabled", "observer_enabled", "scale", "zero_point")
"""Buffers of every torch FakeQuantize (FakeQuantizeBase + its scale/zero_point)."""
OBSERVER_BUFFERS = ("min_val", "max_val")
"""Buffers every min/max or histogram observer loads strictly (a per-channel observer
loads without its ``eps``, a histogram one needs ``histogram``: not required here)."""


def _missing(f: Fields) -> tuple[tuple[str, ...], str]:
    """The keys torch's module needs that ``f`` lacks, and what torch raises for them."""
    expected = list(f.expected) + _prepared_expected(f.present)
    absent = [local for local in dict.fromkeys(expected) if local not in f.present]
    if not f.state_dict:
        return (), ""
    keys = tuple(f"{f.module}.{local}" if f.module else local for local in absent)
    if not keys:
        return (), ""
    listed = ", ".join(f'"{k}"' for k in keys)
    generic = f"RuntimeError: Missing key(s) in state_dict: {listed}."
    if f.ambiguous:  # a quantized conv reads its keys by hand, a norm's are parameters
        return keys, f"KeyError: {keys[0]!r} (a quantized Conv), or {generic} (a norm)"
    if f.by_hand and not _prepared_expected(f.present):
        return keys, f"KeyError: {keys[0]!r}"
    return keys, generic


def _prepared_expected(present: frozenset[str]) -> list[str]:
    """Prepared modules: a fake-quant's flags bring its four buffers, an observer's
    statistics its three (torch registers them together, so strict loading needs all)."""
    out: list[str] = []
    for local in sorted(present):
        prefix, _, leaf = local.rpartition(".")
        if prefix.split(".")[-1] not in ("weight_fake_quant", "activation_post_process"):
            continue
        if leaf in ("fake_quant_enabled", "observer_enabled"):
            out.extend(f"{prefix}.{k}" for k in FAKE_QUANT_FIELDS)
        elif leaf in (*OBSERVER_BUFFERS, "eps", "histogram"):
            out.extend(f"{prefix}.{k}" for k in OBSERVER_BUFFERS)
    return out


def _impossible_values(layer: Layer) -> list[Note]:
    """Warnings for qparams no torch flow writes and no kernel can run: they are shown as
    the file has them, and said to be wrong (weight scales are judged by health)."""
    out = []
    act = layer.output
    if act is not None:
        if not (np.isfinite(act.scale) and act.scale > 0):
            out.append(Note(Level.WARNING, f"output scale {act.scale:g} is not a positive "
                            "finite number: this layer's outputs dequantize to 0, NaN or "
                            "infinity"))
        limits = QDTYPES.get(act.dtype)
        if limits is not None and not limits.qmin <= act.zero_point <= limits.qmax:
            out.append(Note(Level.WARNING, f"output zero point {act.zero_point} is outside "
                            f"{act.dtype}'s range [{limits.qmin}, {limits.qmax}]: torch "
                            "cannot quantize with it, so this layer cannot run"))
    quant = layer.weight.quant if layer.weight is not None else None
    if quant is not None and quant.zero_point.dtype.kind in "iu" and quant.zero_point.size:
        limits = QDTYPES.get(quant.dtype)
        zp = quant.zero_point
        outside = zp[(zp < limits.qmin) | (zp > limits.qmax)] if limits is not None else zp[:0]
        if limits is not None and len(outside):
            out.append(Note(Level.WARNING, f"{len(outside)} weight zero point(s) outside "
                            f"{quant.dtype}'s range [{limits.qmin}, {limits.qmax}] (e.g. "
                            f"{int(outside[0])}): no torch flow writes these"))
    return out


def _quantized_weight(f: Fields) -> bool:
    return f.has("weight") and T.is_quantized(f.value("weight"))


def _has_scale_zp(f: Fields) -> bool:
    if f.has("scale") and f.has("zero_point"):
        return T.is_tensor(f.value("scale"))
    # one of the pair lost: in a quantized file, still an activation's qparams (incomplete)
    lone = "scale" if f.has("scale") else "zero_point" if f.has("zero_point") else None
    return (lone is not None and f.quantized_file and T.is_tensor(f.value(lone))
            and f.value(lone).numel() == 1)


def _packed_without_payload(f: Fields, ctx: Context) -> tuple[list[Layer], list[Unrecognised]]:
    """``_packed_params.dtype`` without the packed tensors: a Linear (it also stores
    scale/zero_point) or an embedding whose weight was dropped."""
    linear = f.has("scale") or f.has("zero_point")
    if linear:
        f.expect("scale", "zero_point", "_packed_params.dtype",
                 "_packed_params._packed_params", by_hand=True)
    else:
        f.expect("_packed_params.dtype", "_packed_params._packed_weight", by_hand=True)
    declared = T.dtype_name(f.take("_packed_params.dtype", Role.PACKED_DTYPE))
    version = ctx.versions.get(f.module)
    dynamic = declared == "float16" or version == 4
    mode = (Mode.DYNAMIC if dynamic else Mode.STATIC) if linear else Mode.WEIGHT_ONLY
    output = _output_qparams(f, mode) if linear else None
    kind, op = ("Linear", OpKind.LINEAR) if linear else ("Embedding or EmbeddingBag",
                                                         OpKind.EMBEDDING)
    layer = Layer(name=f.module, kind=kind, op=op, mode=mode, keys=(), output=output,
                  input_source=DYNAMIC_SOURCE if mode is Mode.DYNAMIC else None)
    return [_finish(layer, f)], f.leftovers(kind)


CLASSIFIERS: list[tuple[Callable[[Fields], bool], Callable]] = [
    (lambda f: f.has("_packed_params._packed_params"), _packed_linear),
    (lambda f: f.has("_packed_params._packed_weight"), _embedding),
    (lambda f: any(RNN_CELL.match(n) for n in f.items), _dynamic_rnn),
    (lambda f: f.has("_packed_params.dtype"), _packed_without_payload),
    (lambda f: any(n.startswith("weight_fake_quant.") for n in f.items), _qat_layer),
    (lambda f: any(n.startswith("activation_post_process.") for n in f.items), _observed),
    (_quantized_weight, _quantized_conv),
    (lambda f: _is_quantize_stub(f.items), _quantize_stub),
    (_has_scale_zp, _quantized_op),
    (lambda f: True, _float_module),
]


# --- inputs ---------------------------------------------------------------------------

PRODUCER_MODES = (Mode.STATIC, Mode.QUANTIZE, Mode.QAT_PREPARED, Mode.PTQ_PREPARED)
CONSUMER_MODES = (Mode.STATIC, Mode.QAT_PREPARED, Mode.PTQ_PREPARED)


def connect_inputs(layers: list[Layer], order_known: bool) -> list[Layer]:
    """Give each static layer the output qparams of the producer before it in module order."""
    order = "module registration order" if order_known else "key order"
    previous: Layer | None = None
    out = []
    for layer in layers:
        if layer.input_source is None and layer.mode in CONSUMER_MODES:
            layer = _with_input(layer, previous, order)
        out.append(layer)
        if layer.mode in PRODUCER_MODES and (layer.output or layer.output_observer):
            previous = layer
    return out


def _with_input(layer: Layer, producer: Layer | None, order: str) -> Layer:
    if layer.op is OpKind.FUNCTIONAL:
        return replace(layer, input_source=InputSource(
            SourceKind.UNKNOWN, None, True,
            "two or more quantized inputs, each with its own producer's qparams; "
            "the op requantizes its result to its output qparams"))
    if producer is None:
        return replace(layer, input_source=InputSource(
            SourceKind.UNKNOWN, None, True, "no quantizing layer precedes it in the file"))
    kind = SourceKind.QUANT_STUB if producer.mode is Mode.QUANTIZE else SourceKind.PREVIOUS_LAYER
    what = "the QuantStub" if kind is SourceKind.QUANT_STUB else "the previous layer"
    text = (f"output qparams of {what} {producer.name!r} (inferred from {order}; "
            "a state_dict stores no graph)")
    return replace(layer, input=producer.output,
                   input_source=InputSource(kind, producer.name, True, text))
