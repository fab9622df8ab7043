"""FX graph mode (``prepare_fx``/``convert_fx``) state_dicts.

A converted FX model keeps eager-style quantized modules (``fc1._packed_params...``,
``conv.weight``, ``conv.scale``) plus buffers on the root GraphModule that the generated
``forward`` reads (names made by ``torch.ao.quantization.fx`` from the node they serve):

* ``<module>_input_scale_<n>`` / ``<module>_input_zero_point_<n>``: the
  ``quantize_per_tensor`` in front of ``<module>`` (dots replaced by ``_``), i.e. that
  layer's input-activation qparams; ``<module>`` is empty when the consumer is not a
  module (``_input_scale_0``);
* ``<scope>_scale_<n>`` / ``<scope>_zero_point_<n>``: output qparams of a functional
  quantized op (``torch.ops.quantized.add/mul/cat/linear``) or of a requantize;
* ``_packed_weight_<n>``: the packed weight of a functional ``F.linear``/``F.conv``.

A state_dict has no graph: the consumer of an ``_input_`` buffer is known from its name
(matched against the file's module names), everything else is inferred from order and
marked so. TorchScript archives of FX models carry the graph; see
:mod:`qinspect.loaders.torchscript`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from qinspect.loaders import eager
from qinspect.loaders import tensors as T
from qinspect.loaders.reader import RawCheckpoint, ScriptObjectState
from qinspect.model import (
    InputSource,
    KeyRef,
    Layer,
    Level,
    Mode,
    Note,
    OpKind,
    Role,
    SourceKind,
    Unrecognised,
)

INPUT_QPARAM = re.compile(r"^(?P<prefix>.*?)_input_(?P<what>scale|zero_point)_(?P<n>\d+)$")
OP_QPARAM = re.compile(r"^(?P<prefix>.*?)_(?P<what>scale|zero_point)_(?P<n>\d+)$")
PACKED_WEIGHT = re.compile(r"^(?P<prefix>.*?)_packed_weight_(?P<n>\d+)$")
FORMAT = "FX graph mode state_dict"


@dataclass(frozen=True)
class FxRoot:
    """Root-level FX buffers grouped into what they are."""

    inputs: dict[tuple[str, int], dict[str, tuple[str, Any]]]
    ops: dict[tuple[str, int], dict[str, tuple[str, Any]]]
    packed: dict[tuple[str, int], tuple[str, Any]]

    def __bool__(self) -> bool:
        return bool(self.inputs or self.ops or self.packed)


def split_root(entries: dict[str, Any]) -> tuple[dict[str, Any], FxRoot]:
    """Separate FX's root-level buffers (keys without a dot) from the module keys."""
    rest: dict[str, Any] = {}
    inputs: dict[tuple[str, int], dict[str, tuple[str, Any]]] = {}
    ops: dict[tuple[str, int], dict[str, tuple[str, Any]]] = {}
    packed: dict[tuple[str, int], tuple[str, Any]] = {}
    for key, value in entries.items():
        if "." in key:
            rest[key] = value
            continue
        m = INPUT_QPARAM.match(key)
        if m and _scalar_tensor(value):
            inputs.setdefault((m["prefix"], int(m["n"])), {})[m["what"]] = (key, value)
            continue
        m = PACKED_WEIGHT.match(key)
        if m and isinstance(value, ScriptObjectState):
            packed[(m["prefix"], int(m["n"]))] = (key, value)
            continue
        m = OP_QPARAM.match(key)
        if m and _scalar_tensor(value):
            ops.setdefault((m["prefix"], int(m["n"])), {})[m["what"]] = (key, value)
            continue
        rest[key] = value
    # a lone scale without its zero point is not an FX pair: give it back
    for group in (inputs, ops):
        for ident in [i for i, pair in group.items() if set(pair) != {"scale", "zero_point"}]:
            for key, value in group.pop(ident).values():
                rest[key] = value
    return rest, FxRoot(inputs, ops, packed)


def looks_like_fx(entries: dict[str, Any]) -> bool:
    _, root = split_root(entries)
    return bool(root)


def _scalar_tensor(value: Any) -> bool:
    return T.is_tensor(value) and value.numel() == 1 and not value.is_quantized


def input_layer_name(prefix: str, n: int) -> str:
    return f"{prefix}_input_{n}".lstrip("_")


def op_layer_name(prefix: str, n: int) -> str:
    return f"{prefix}_op_{n}".lstrip("_")


def packed_layer_name(prefix: str, n: int) -> str:
    return f"{prefix}_packed_weight_{n}".lstrip("_")


def root_layers(root: FxRoot) -> tuple[list[Layer], list[Layer], list[Layer], list[Unrecognised]]:
    """(input quantize layers, functional-op output layers, packed-weight layers, bad)."""
    quantizers = []
    for (prefix, n), pair in root.inputs.items():
        keys = (pair["scale"][0], pair["zero_point"][0])
        act = eager._act(pair["scale"][1], pair["zero_point"][1], keys)
        quantizers.append(Layer(
            name=input_layer_name(prefix, n), kind="quantize_per_tensor (FX input)",
            op=OpKind.QUANTIZE, mode=Mode.QUANTIZE,
            keys=tuple(KeyRef(k, Role.INPUT_QPARAMS) for k in keys),
            output=act,
            input_source=InputSource(SourceKind.NOT_QUANTIZED, None, False,
                                     "a float tensor, quantized here"),
            notes=(Note(Level.INFO, f"FX names this buffer after the op it feeds: "
                        f"{prefix or '(an op outside any module)'}"),),
        ))
    ops = []
    for (prefix, n), pair in root.ops.items():
        keys = (pair["scale"][0], pair["zero_point"][0])
        act = eager._act(pair["scale"][1], pair["zero_point"][1], keys)
        ops.append(Layer(
            name=op_layer_name(prefix, n),
            kind="functional quantized op (FX: add/mul/cat/linear/requantize)",
            op=OpKind.GRAPH_OP, mode=Mode.STATIC,
            keys=tuple(KeyRef(k, Role.OUTPUT_QPARAMS) for k in keys),
            output=act,
            input_source=InputSource(SourceKind.UNKNOWN, None, True,
                                     "the op's inputs are in the graph, which a state_dict "
                                     "does not store"),
            notes=(Note(Level.INFO, "which op these output qparams belong to is in the "
                        "graph, which a state_dict does not store"),),
        ))
    packed_layers: list[Layer] = []
    bad: list[Unrecognised] = []
    for (prefix, n), (key, value) in root.packed.items():
        layer = packed_weight_layer(packed_layer_name(prefix, n), key, value)
        if layer is None:
            bad.append(Unrecognised(key, repr(value), "FX packed weight not in the "
                                    "(weight, bias) layout of Linear/Conv packed params"))
        else:
            packed_layers.append(layer)
    return quantizers, ops, packed_layers, bad


def packed_weight_layer(name: str, key: str, value: Any) -> Layer | None:
    """A functional Linear/Conv from an FX ``_packed_weight_<n>`` ScriptObject."""
    weight_bias = unpack_script_params(value)
    if weight_bias is None:
        return None
    w, b = weight_bias
    notes: list[Note] = []
    weight = eager._weight(key, w, None, notes)
    linear = len(weight.shape) == 2
    kind = "functional Linear (F.linear)" if linear else \
        f"functional {eager.CONV_KINDS.get(len(weight.shape), 'Conv')} (F.conv)"
    bias = T.float_values(b) if T.is_tensor(b) else None
    source = InputSource(SourceKind.UNKNOWN, None, True, "the op's input is in the graph, "
                         "which a state_dict does not store")
    return Layer(name=name, kind=kind, op=OpKind.LINEAR if linear else OpKind.CONV,
                 functional=True, mode=Mode.STATIC, keys=(KeyRef(key, Role.WEIGHT),),
                 weight=weight, bias=bias, bias_key=key if bias is not None else None,
                 input_source=source, notes=tuple(notes))


def unpack_script_params(value: Any) -> tuple[Any, Any] | None:
    """(weight, bias) from the pickled state of Linear/Conv packed params."""
    state = value.payload if isinstance(value, ScriptObjectState) else getattr(
        value, "state", value)
    if isinstance(state, tuple) and len(state) == 2 and T.is_tensor(state[0]):
        return state[0], state[1]
    # Conv packed params: (version, [weight, bias?], ...) or (version, tensors, optionals)
    if isinstance(state, tuple) and state and isinstance(state[0], str):
        for part in state[1:]:
            if isinstance(part, (list, tuple)) and part and T.is_quantized(part[0]):
                bias = part[1] if len(part) > 1 else None
                return part[0], bias
            if isinstance(part, (list, tuple)) and len(part) >= 2 and T.is_quantized(part[1]):
                return part[1], part[2] if len(part) > 2 else None
    return None


def build(raw: RawCheckpoint) -> tuple[list[Layer], list[Unrecognised], bool]:
    """Layers of an FX state_dict: eager modules, FX root buffers, inputs connected."""
    rest, root = split_root(raw.entries)
    module_raw = replace(raw, entries=rest)
    layers, unrecognised, order_known = eager.build_layers(module_raw)
    quantizers, ops, packed, bad = root_layers(root)
    layers = connect_by_name(layers, quantizers, order_known)
    if ops:
        layers = [_warn_requantize(lay, ops) for lay in layers]
    return layers + ops + packed, unrecognised + bad, order_known


def _warn_requantize(layer: Layer, ops: list[Layer]) -> Layer:
    """An inferred input may really come from one of FX's requantize buffers."""
    src = layer.input_source
    if src is None or not src.inferred or src.kind not in (SourceKind.PREVIOUS_LAYER,
                                                            SourceKind.QUANT_STUB):
        return layer
    names = ", ".join(op.keys[0].key for op in ops[:4]) + (", ..." if len(ops) > 4 else "")
    text = (f"{src.explanation}; but FX requantizes between some layers ({names}) and a "
            "state_dict does not say where: save the model with torch.jit.save for exact "
            "input sources")
    return replace(layer, input_source=replace(src, explanation=text))


def connect_by_name(layers: list[Layer], quantizers: list[Layer],
                    order_known: bool) -> list[Layer]:
    """Put each FX input quantizer before the module it names, then connect inputs."""
    mangled = {lay.name.replace(".", "_"): lay.name for lay in layers}
    feeds: dict[str, Layer] = {}
    unplaced: list[Layer] = []
    for q in quantizers:
        prefix = q.name.rsplit("_input", 1)[0]
        target = mangled.get(prefix)
        if target is not None and target not in feeds:
            feeds[target] = q
        else:
            unplaced.append(q)
    ordered: list[Layer] = list(unplaced)
    for layer in layers:
        if layer.name in feeds:
            ordered.append(feeds[layer.name])
        ordered.append(_reset_input(layer))
    connected = eager.connect_inputs(ordered, order_known)
    out = []
    for layer in connected:
        feed = feeds.get(layer.name)
        if feed is not None and layer.input_source is not None \
                and layer.input_source.layer == feed.name:
            layer = replace(layer, input_source=InputSource(
                SourceKind.QUANT_STUB, feed.name, False,
                f"the FX quantize_per_tensor in front of {layer.name!r} "
                f"({feed.keys[0].key} / {feed.keys[1].key}; FX names these buffers after the "
                "layer they feed)"))
        out.append(layer)
    return out


def _reset_input(layer: Layer) -> Layer:
    if layer.input_source is not None and layer.input_source.inferred:
        return replace(layer, input=None, input_source=None)
    return layer
