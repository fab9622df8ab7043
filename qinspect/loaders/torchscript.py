"""TorchScript archives (``torch.jit.save`` of a quantized eager or FX model).

Never ``torch.jit.load``: that compiles and runs the archive's code. Instead:

* ``data.pkl`` (the module tree with its attributes) is read with
  :func:`qinspect.loaders.safe_pickle.load_pickle`: module classes become stubs that only
  hold their attribute dicts; tensors are rebuilt by torch's allow-listed rebuild
  functions from the raw ``data/<n>`` records;
* the tree is flattened into the keys ``model.state_dict()`` would have had
  (``fc1._packed_params._packed_params``, ``conv.weight``, ``fc1_input_scale_0``...), so
  the eager and FX classifiers attribute them with the same roles; each layer's kind is the
  exact class TorchScript recorded (``LinearReLU``, ``ConvReLU2d``, ``QFunctional``...);
* ``code/__torch__/**.py`` is parsed (:mod:`qinspect.loaders.tscode`, ``ast`` only) and
  ``forward`` walked (:mod:`qinspect.loaders.tsgraph`): each layer's input source comes
  from the graph, not from order.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

from qinspect.errors import LoadError, UnsupportedFormatError
from qinspect.loaders import eager, fx
from qinspect.loaders import tensors as T
from qinspect.loaders.archive import view_budget
from qinspect.loaders.modclass import class_op
from qinspect.loaders.reader import RawCheckpoint, ScriptObjectState
from qinspect.loaders.safe_pickle import Stub, load_pickle
from qinspect.loaders.sniff import printable
from qinspect.loaders.tscode import AttrRef, Code, parse_archive
from qinspect.loaders.tsgraph import Graph, GraphWalker
from qinspect.loaders.zipread import Archive
from qinspect.model import (
    ActQuant,
    Checkpoint,
    Family,
    InputSource,
    KeyRef,
    Layer,
    Level,
    Mode,
    Note,
    OpKind,
    Role,
    SourceKind,
    Stage,
    Unrecognised,
)

MANGLE = re.compile(r"\.___torch_mangle_\d+")
PACKED_CLASSES = "__torch__.torch.classes."
QPARAM_ATTRS = ("scale", "zero_point")
DTYPE_CODES = {12: "qint8", 13: "quint8", 14: "qint32", 5: "float16", 6: "float32",
               16: "quint4x2", 17: "quint2x4"}


def demangle(qualname: str) -> str:
    return MANGLE.sub("", qualname).removeprefix("__torch__.")


def load(path: str | Path) -> Checkpoint:
    p = Path(path)
    root, code = _read(p)
    is_fx = root.qualname.endswith("torch.fx.graph_module.GraphModule")
    fmt = f"TorchScript archive ({'FX GraphModule' if is_fx else demangle(root.qualname)})"
    return assemble(p, root, code, root.qualname, fmt)


def read_script(p: Path) -> tuple[Stub, Code, str]:
    """(module tree with torch tensors, parsed code, root class name): what ``verify``
    runs."""
    root, code = _read(p)
    return T.to_torch(root), code, root.qualname


def _read(p: Path) -> tuple[Stub, Code]:
    with Archive(p) as archive:
        root = load_pickle(archive.read("data.pkl"), archive.storage_loader("data"),
                           f"{printable(str(p))} (data.pkl)",
                           view_budget=view_budget(archive.file_size))
        sources = {n: archive.read(n).decode("utf-8", "replace") for n in archive.names
                   if n.startswith("code/") and n.endswith(".py")}
    if not isinstance(root, Stub) or not root.qualname.startswith("__torch__."):
        raise UnsupportedFormatError(f"{printable(str(p))}: a TorchScript archive whose "
                                     f"data.pkl holds {printable(type(root).__name__)}, not "
                                     "a module; re-export it")
    return root, parse_archive(sources)


def assemble(p: Path, root: Stub, code: Code, root_qualname: str, fmt: str,
             family: Family = Family.TORCHSCRIPT) -> Checkpoint:
    """Module tree + parsed code -> Checkpoint (shared with whole pickled GraphModules)."""
    flat = Flattener()
    flat.module(root, "")
    entries, modules = flat.entries, flat.modules
    metadata = OrderedDict((m, {"version": v} if v else {}) for m, v in flat.versions.items())
    rest, fx_root = fx.split_root(entries)
    raw = RawCheckpoint(str(p), p.stat().st_size, "zip", rest, dict(metadata), None, {})
    layers, unrecognised, _ = eager.build_layers(raw, state_dict=False)
    layers = [_exact_kind(layer, modules) for layer in layers]
    quantizers, ops, packed, bad = fx.root_layers(fx_root)
    unrecognised += bad + flat.unrecognised
    by_name = {lay.name: lay for lay in layers + quantizers + ops + packed}
    graph = _walk(code, modules, root_qualname, by_name)
    final = _connect(graph, layers, quantizers, ops, packed)
    notes = [Note(Level.WARNING, f"graph code: {msg}")
             for msg in [*code.problems, *graph.problems]]
    return Checkpoint(
        path=str(p),
        format=fmt,
        family=family,
        stage=_stage(final),
        file_size=p.stat().st_size,
        layers=tuple(final),
        unrecognised=tuple(unrecognised),
        module_order_known=True,
        notes=tuple(notes),
        order="graph order (forward in the file's code; modules it never calls last)",
    )


def _stage(layers: list[Layer]) -> Stage:
    from qinspect.loaders import stage_of

    return stage_of(layers)


class Flattener:
    """Module tree of stubs -> state_dict-style entries, module classes and versions."""

    def __init__(self) -> None:
        self.entries: dict[str, Any] = OrderedDict()
        self.modules: dict[str, str] = OrderedDict()
        self.versions: dict[str, int | None] = OrderedDict()
        self.unrecognised: list[Unrecognised] = []
        self.geometry: dict[str, dict[str, Any]] = {}
        """Conv hyper-parameters by module path (from a quantized conv's pickled state)."""
        self._seen: set[int] = set()

    def module(self, obj: Stub, path: str) -> None:
        if id(obj) in self._seen:
            return
        self._seen.add(id(obj))
        self.modules[path] = obj.qualname
        self.versions[path] = _version(obj.qualname)
        state = obj.state
        if isinstance(state, tuple):
            self._tuple_state(obj, path, state)
            return
        if not isinstance(state, dict):
            return
        if isinstance(state.get("_modules"), dict):  # a pickled nn.Module (not TorchScript)
            self._nn_module(obj, path, state)
            return
        for name, value in state.items():
            if not isinstance(name, str):
                continue
            key = f"{path}.{name}" if path else name
            if T.is_tensor(value):
                self.entries[key] = value
            elif isinstance(value, Stub) and value.qualname.startswith(PACKED_CLASSES):
                self._packed(obj, key, value)
            elif isinstance(value, Stub) and value.qualname.startswith("__torch__."):
                self.module(value, key)
            elif name in QPARAM_ATTRS and isinstance(value, (int, float)) and \
                    not isinstance(value, bool):
                self.entries[key] = _scalar_tensor(value, name)
            elif name == "dtype" and obj.qualname.endswith("PackedParams") and \
                    isinstance(value, int):
                self.entries[key] = _dtype(value)

    def _nn_module(self, obj: Stub, path: str, state: dict) -> None:
        """``nn.Module.__dict__``: parameters, buffers, packed params, then children."""
        prefix = f"{path}." if path else ""
        for group in ("_parameters", "_buffers"):
            for name, value in (state.get(group) or {}).items():
                if T.is_tensor(value):
                    self.entries[prefix + name] = value
        for name, value in state.items():
            if name.startswith("_") and name != "_packed_params":
                continue
            if name in QPARAM_ATTRS and isinstance(value, (int, float)) and \
                    not isinstance(value, bool):
                self.entries[prefix + name] = _scalar_tensor(value, name)
            elif name == "dtype" and obj.qualname.endswith("PackedParams") and \
                    _is_torch_dtype(value):
                self.entries[prefix + name] = value
            elif isinstance(value, Stub) and value.qualname == "torch.ScriptObject":
                self._packed(obj, prefix + name, _script_object(value))
            elif T.is_tensor(value) and name in QPARAM_ATTRS:
                self.entries[prefix + name] = value
        for name, child in state["_modules"].items():
            if isinstance(child, Stub):
                self.module(child, prefix + name)

    def _packed(self, owner: Stub, key: str, value: Stub) -> None:
        state = value.state
        if owner.qualname.endswith("LinearPackedParams"):
            if isinstance(state, tuple) and len(state) == 2 and T.is_tensor(state[0]):
                self.entries[key] = state
                return
        if owner.qualname.endswith("EmbeddingPackedParams") and isinstance(state, tuple):
            # EmbeddingPackedParamsBase: (version, [weight], [...], [...])
            for part in state[1:]:
                if isinstance(part, list) and part and T.is_quantized(part[0]):
                    self.entries[key] = part[0]
                    return
        holder = ScriptObjectState()
        holder.__setstate__((value.state, value.qualname.removeprefix("__torch__.")))
        self.entries[key] = holder

    def _tuple_state(self, obj: Stub, path: str, state: tuple) -> None:
        """Modules with a custom __getstate__ (quantized Conv): weight, bias, scale, zp."""
        index = next((i for i, v in enumerate(state) if T.is_quantized(v)), None)
        if index is None or len(state) < index + 4:
            self.unrecognised.append(Unrecognised(path or "(root)", demangle(obj.qualname),
                                                  "module state in an unknown layout"))
            return
        w, b, scale, zp = state[index:index + 4]
        prefix = f"{path}." if path else ""
        if index == 10:  # (in, out, kernel, stride, padding, dilation, transposed, ...)
            self.geometry[path] = {"stride": state[3], "padding": state[4],
                                   "dilation": state[5], "transposed": state[6],
                                   "groups": state[8]}
        self.entries[prefix + "weight"] = w
        if T.is_tensor(b):
            self.entries[prefix + "bias"] = b
        if isinstance(scale, float) and isinstance(zp, int):
            self.entries[prefix + "scale"] = _scalar_tensor(scale, "scale")
            self.entries[prefix + "zero_point"] = _scalar_tensor(zp, "zero_point")


def _is_torch_dtype(value: Any) -> bool:
    return T.is_dtype(value)


def _script_object(value: Stub) -> Stub:
    """torch.save of a ScriptObject: state (payload, class name) -> a packed-params stub."""
    state = value.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], str):
        inner = Stub.__new__(Stub)
        inner.__dict__["qualname"] = "__torch__." + state[1].removeprefix("__torch__.")
        inner.__dict__["state"] = state[0]
        return inner
    return value


def _version(qualname: str) -> int | None:
    name = demangle(qualname)
    if name.endswith("quantized.dynamic.modules.linear.Linear"):
        return 4
    if name.endswith("quantized.modules.linear.Linear") or ".linear_relu." in name:
        return 3
    return None


def _scalar_tensor(value: float | int, name: str) -> Any:
    return T.scalar(value, "float32" if name == "scale" else "int64")


def _dtype(code: int) -> Any:
    return T.DTYPES[DTYPE_CODES.get(code, "qint8")]


def _exact_kind(layer: Layer, modules: dict[str, str]) -> Layer:
    qualname = modules.get(layer.name)
    if qualname is None:
        return layer
    short = demangle(qualname).rsplit(".", 1)[-1]
    notes = tuple(n for n in layer.notes if "same keys" not in n.message)
    known = class_op(short)
    if known is None:
        return replace(layer, kind=short, notes=notes)
    return replace(layer, kind=short, op=known.op, fused_relu=known.fused_relu, notes=notes)


def _walk(code: Code, modules: dict[str, str], root: str,
          layers: dict[str, Layer]) -> Graph:
    taken: set[str] = set()

    def match_literal(scale: float, zp: int) -> str | None:
        """A graph op with literal qparams (traced code) -> the layer that stores them."""
        for name, lay in layers.items():
            out = lay.output
            if name in taken or out is None or lay.mode is not Mode.STATIC or lay.weight:
                continue
            if out.scale == scale and out.zero_point == zp:
                taken.add(name)
                return name
        return None

    walker = GraphWalker(code, modules, {n for n in layers if "." in n or n in modules},
                         match_literal)
    return walker.run(root)


def _connect(graph: Graph, layers: list[Layer], quantizers: list[Layer], ops: list[Layer],
             packed: list[Layer]) -> list[Layer]:
    """Give every layer the input source the graph shows; merge FX functional ops."""
    key_owner = {ref.key: lay.name for lay in quantizers + ops + packed for ref in lay.keys}
    layer_keys = {ref.key: lay.name for lay in layers for ref in lay.keys}
    extra: dict[str, Layer] = {}
    inputs = dict(graph.inputs)
    alias: dict[str, str] = {}
    for q in graph.quantizes:
        if isinstance(q.scale, AttrRef) and q.scale.key in key_owner:
            alias[q.name] = key_owner[q.scale.key]
        else:
            extra[q.name] = _literal_layer(q.name, "quantize_per_tensor (in the code)",
                                           OpKind.QUANTIZE, Mode.QUANTIZE, q.scale,
                                           q.zero_point)
            alias[q.name] = q.name
    merged_ops: dict[str, Layer] = {lay.name: lay for lay in ops}
    for q in graph.quantizes:  # FX root _scale_<n> buffers the graph uses to requantize
        owner = alias.get(q.name)
        if owner in merged_ops:
            base = merged_ops[owner]
            merged_ops[owner] = replace(
                base, kind="quantize_per_tensor (FX requantize)", op=OpKind.QUANTIZE,
                mode=Mode.QUANTIZE,
                keys=tuple(KeyRef(r.key, Role.INPUT_QPARAMS) for r in base.keys), notes=())
    packed_by: dict[str, Layer] = {lay.name: lay for lay in packed}
    for op in graph.ops:
        target = None
        if op.weight is not None and op.weight.key in key_owner:
            target = key_owner[op.weight.key]
        out_owner = key_owner.get(op.scale.key) if isinstance(op.scale, AttrRef) else None
        if target is not None and out_owner in merged_ops:
            out_layer = merged_ops.pop(out_owner)
            base = packed_by[target]
            packed_by[target] = replace(base, kind=f"{base.kind}: quantized.{op.op}",
                                        output=out_layer.output,
                                        keys=base.keys + out_layer.keys, notes=())
            alias[op.name] = target
        elif target is not None:
            alias[op.name] = target
        elif op.weight is not None and op.weight.key in layer_keys:  # traced module op
            alias[op.name] = layer_keys[op.weight.key]
        elif out_owner is not None:
            base = merged_ops[out_owner]
            merged_ops[out_owner] = replace(base, kind=f"quantized.{op.op} (FX functional op)",
                                            op=OpKind.GRAPH_OP, notes=())
            alias[op.name] = out_owner
        else:
            extra[op.name] = _literal_layer(op.name, f"quantized.{op.op} (in the code)",
                                            OpKind.GRAPH_OP, Mode.STATIC, op.scale,
                                            op.zero_point)
            alias[op.name] = op.name
        inputs[alias[op.name]] = op.inputs
    for q in graph.quantizes:
        inputs.setdefault(alias[q.name], [q.source])
    everything = {lay.name: lay for lay in layers}
    everything.update({lay.name: lay for lay in quantizers})
    everything.update(merged_ops)
    everything.update(packed_by)
    everything.update(extra)
    order = []
    for name in graph.order:
        real = alias.get(name, name)
        if real in everything and real not in order:
            order.append(real)
    order += [lay.name for lay in layers if lay.name not in order]
    order += [n for n in everything if n not in order]
    out = []
    for name in order:
        lay = everything[name]
        if name in inputs:
            lay = _with_graph_input(lay, [alias.get(s, s) if s else None for s in inputs[name]],
                                    everything)
        elif lay.mode in (Mode.STATIC,) and (lay.input_source is None or
                                             lay.input_source.inferred):
            lay = replace(lay, input=None, input_source=InputSource(
                SourceKind.UNKNOWN, None, False, "not called by forward (unused)"))
        out.append(lay)
    return out


def _with_graph_input(layer: Layer, sources: list[str | None],
                      everything: dict[str, Layer]) -> Layer:
    if layer.mode in (Mode.DYNAMIC, Mode.WEIGHT_ONLY, Mode.FLOAT):
        return layer
    if layer.mode is Mode.QUANTIZE:
        return replace(layer, input_source=InputSource(
            SourceKind.NOT_QUANTIZED, None, False, "a float tensor, quantized here "
            "(from the graph)"))
    if not sources:
        return replace(layer, input=None, input_source=InputSource(
            SourceKind.UNKNOWN, None, False, "the graph passes it no tensor"))
    first = sources[0]
    producer = everything.get(first) if first else None
    if producer is None or producer.output is None:
        return replace(layer, input=None, input_source=InputSource(
            SourceKind.NOT_QUANTIZED if first is None else SourceKind.UNKNOWN, first, False,
            "a float tensor (the graph dequantized it or never quantized it)"
            if first is None else f"{first!r}, whose qparams the file does not store"))
    kind = SourceKind.QUANT_STUB if producer.mode is Mode.QUANTIZE else \
        SourceKind.PREVIOUS_LAYER
    others = [s or "a float tensor" for s in sources[1:]]
    more = f"; further inputs: {', '.join(others)}" if others else ""
    return replace(layer, input=producer.output, input_source=InputSource(
        kind, producer.name, False, f"output of {producer.name!r} (from the graph in the "
        f"archive's code){more}"))


def _literal_layer(name: str, kind: str, op: OpKind, mode: Mode, scale: Any, zp: Any
                   ) -> Layer:
    output = None
    if isinstance(scale, float) and isinstance(zp, int):
        output = ActQuant(scale, zp, "quint8", True, (f"{name} scale (literal in the code)",
                                                      f"{name} zero_point (literal in the code)"))
    return Layer(name=name, kind=kind, op=op, mode=mode, keys=(), output=output,
                 notes=(Note(Level.INFO, "qparams written as literals in the archive's "
                             "code; no attribute stores them"),))


__all__ = ["load", "LoadError", "KeyRef", "Role"]
