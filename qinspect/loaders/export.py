"""torch.export archives (``.pt2`` from ``torch.export.save``), e.g. after PT2E
``convert_pt2e`` with the XNNPACK or X86Inductor quantizer.

Not ``torch.export.load``: in torch 2.13 it is not a safe reader. It unpickles weights and
constants marked ``use_pickle`` with ``torch.load(weights_only=False)``
(``torch/export/pt2_archive/_package.py``, ``_load_state_dict``/``_load_constants``),
falls back to ``weights_only=False`` when a weights-only load of an artifact fails
(``torch/_export/serde/serialize.py``, ``deserialize_torch_artifact``), parses symbolic
shape strings from the file with ``sympy.sympify`` (which evaluates Python), and
``ExportedProgram.module()`` ``exec``s the file's ``guards_code``
(``torch/export/_unlift.py``, ``_convert_guards_code_to_fn``).

So this adapter reads the archive itself: ``models/<name>.json`` with :mod:`json`, the
weights and constants from their raw records as described by
``data/*/..._config.json`` (dtype, sizes, strides, offset); pickled entries are read with
the no-import pickle walker. In the graph, every ``quantized_decomposed``
``quantize``/``dequantize`` node is attributed: a dequantize of a stored int tensor is a
weight (its scale/zero point are buffers); a quantize/dequantize pair on an activation
carries literal qparams, which become the input qparams of the op consuming the
dequantize and the output qparams of the op feeding the quantize. Stored tensors the graph
never reads (the float weights PT2E leaves behind) are reported as dead weight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from qinspect.errors import LoadError, UnsupportedFormatError
from qinspect.loaders.zipread import Archive
from qinspect.model import (
    ActQuant,
    Checkpoint,
    DeadWeight,
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
    TensorQuant,
    Unrecognised,
    Weight,
    axis_granularity,
)

# torch/_export/serde/schema.py ScalarType -> numpy dtype / torch name
SCALAR_TYPES: dict[int, tuple[str, str]] = {
    1: ("uint8", "uint8"), 2: ("int8", "int8"), 3: ("int16", "int16"), 4: ("int32", "int32"),
    5: ("int64", "int64"), 6: ("float16", "float16"), 7: ("float32", "float32"),
    8: ("float64", "float64"), 12: ("bool", "bool"), 13: ("uint16", "bfloat16"),
    28: ("uint16", "uint16"), 34: ("uint32", "uint32"), 35: ("uint64", "uint64"),
}
QD = "torch.ops.quantized_decomposed."
Q_TENSOR = (QD + "quantize_per_tensor.default", QD + "quantize_per_tensor.tensor")
DQ_TENSOR = (QD + "dequantize_per_tensor.default", QD + "dequantize_per_tensor.tensor")
DQ_CHANNEL = (QD + "dequantize_per_channel.default",)
Q_CHANNEL = (QD + "quantize_per_channel.default",)
PASS_THROUGH = ("relu", "relu_", "hardtanh", "hardtanh_", "clamp", "clamp_", "relu6",
                "flatten", "view", "reshape", "_unsafe_view", "permute", "transpose",
                "squeeze", "unsqueeze", "contiguous", "clone", "dropout")
WEIGHT_OPS = ("conv1d", "conv2d", "conv3d", "linear", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "addmm", "mm", "bmm", "matmul", "embedding")
FORMAT = "torch.export archive (.pt2)"
OPS = {"linear": OpKind.LINEAR, "addmm": OpKind.LINEAR, "conv1d": OpKind.CONV,
       "conv2d": OpKind.CONV, "conv3d": OpKind.CONV, "conv_transpose1d": OpKind.CONV_TRANSPOSE,
       "conv_transpose2d": OpKind.CONV_TRANSPOSE, "conv_transpose3d": OpKind.CONV_TRANSPOSE,
       "embedding": OpKind.EMBEDDING}
"""Graph op -> what it computes; other ops with a weight are OTHER, without one GRAPH_OP."""


@dataclass
class Node:
    name: str
    target: str
    args: list[tuple[str, Any]]  # (parameter name, ("tensor", name) | literal)
    outputs: list[str]
    users: list[str] = field(default_factory=list)
    raw_inputs: list[dict[str, Any]] = field(default_factory=list)
    """The serialized inputs as stored (name, arg, kind), for running the graph."""

    def tensor_args(self) -> list[str]:
        out: list[str] = []
        for _, v in self.args:
            if isinstance(v, tuple) and v and v[0] == "tensor":
                out.append(v[1])
            elif isinstance(v, tuple) and v and v[0] == "tensors":
                out.extend(t for t in v[1] if t)
        return out

    def literal(self, index: int) -> Any:
        if index >= len(self.args):
            return None
        value = self.args[index][1]
        return None if isinstance(value, tuple) else value

    @property
    def short(self) -> str:
        parts = self.target.split(".")
        return parts[-2] if len(parts) >= 2 and parts[-1] in ("default", "Tensor", "tensor",
                                                                  "using_ints", "int") \
            else parts[-1]


def load(path: str | Path) -> Checkpoint:
    p = Path(path)
    builder, notes = read_program(p)
    layers, unrecognised, dead = builder.build()
    return Checkpoint(
        path=str(p), format=FORMAT + (" PT2E-quantized" if builder.quantized else ""),
        family=Family.EXPORT, stage=Stage.CONVERTED if builder.quantized else Stage.FLOAT,
        file_size=p.stat().st_size, layers=tuple(layers), unrecognised=tuple(unrecognised),
        module_order_known=True, notes=tuple(notes + builder.notes), dead_weights=tuple(dead),
        order="graph order (the exported program)",
    )


def read_program(p: Path) -> tuple[Builder, list[Note]]:
    """The archive's first program as a :class:`Builder` (graph + stored tensors)."""
    with Archive(p) as archive:
        models = sorted(n for n in archive.names if n.startswith("models/")
                        and n.endswith(".json"))
        if not models:
            raise UnsupportedFormatError(f"{p}: a torch.export archive without models/*.json;"
                                         " re-export it with torch.export.save")
        model_file = models[0]
        model_name = model_file.removeprefix("models/").removesuffix(".json")
        program = _json(archive, model_file, p)
        state = _payloads(archive, "data/weights", f"{model_name}_weights_config.json", p)
        consts = _payloads(archive, "data/constants", f"{model_name}_constants_config.json", p)
    notes: list[Note] = []
    if len(models) > 1:
        notes.append(Note(Level.WARNING, f"the archive holds {len(models)} programs; "
                          f"only {model_name!r} is read"))
    return Builder(program, {**state, **consts}, p), notes


def _json(archive: Archive, name: str, p: Path) -> dict[str, Any]:
    try:
        value = json.loads(archive.read(name))
    except (ValueError, RecursionError) as exc:
        raise LoadError(f"{p}: {name} is not valid JSON ({exc}); re-export the file") from exc
    if not isinstance(value, dict):
        raise LoadError(f"{p}: {name} is not a JSON object; re-export the file")
    return value


def _payloads(archive: Archive, folder: str, config: str, p: Path) -> dict[str, np.ndarray]:
    """``{fqn: array}`` for every entry of a weights/constants config."""
    name = f"{folder}/{config}"
    if not archive.has(name):
        return {}
    entries = _json(archive, name, p).get("config", {})
    out: dict[str, np.ndarray] = {}
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            continue
        record = f"{folder}/{meta.get('path_name', '')}"
        if meta.get("use_pickle"):
            out[fqn] = _pickled(archive, record, p)
        else:
            out[fqn] = _raw_tensor(archive.read(record), meta.get("tensor_meta") or {}, fqn, p)
    return out


def _raw_tensor(raw: bytes, meta: dict[str, Any], fqn: str, p: Path) -> np.ndarray:
    code = meta.get("dtype")
    if code not in SCALAR_TYPES:
        raise UnsupportedFormatError(f"{p}: {fqn} has dtype code {code!r}, which qinspect "
                                     "does not read")
    np_dtype, torch_name = SCALAR_TYPES[code]
    sizes = [_as_int(s) for s in meta.get("sizes", [])]
    strides = [_as_int(s) for s in meta.get("strides", [])]
    offset = _as_int(meta.get("storage_offset", {"as_int": 0}))
    item = np.dtype(np_dtype).itemsize
    flat = np.frombuffer(raw, dtype=np_dtype) if len(raw) % item == 0 else None
    if flat is None or any(s < 0 for s in sizes + strides) or offset < 0 or \
            len(sizes) != len(strides):
        raise LoadError(f"{p}: {fqn} has an inconsistent size/stride record; re-export it")
    if sizes and 0 not in sizes:
        last = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
        if last >= flat.size:
            raise LoadError(f"{p}: {fqn} claims more bytes than its record holds; the file "
                            "is truncated or corrupt: re-export it")
    elif not sizes and offset >= max(flat.size, 1):
        raise LoadError(f"{p}: {fqn} claims more bytes than its record holds")
    array = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=tuple(sizes), strides=tuple(s * item for s in strides),
        writeable=False) if flat.size else np.zeros(sizes, dtype=np_dtype)
    if torch_name == "bfloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _as_int(value: Any) -> int:
    if isinstance(value, dict) and isinstance(value.get("as_int"), int):
        return value["as_int"]
    if isinstance(value, int):
        return value
    raise LoadError(f"symbolic or malformed size {str(value)[:60]!r} in a stored tensor")


def _pickled(archive: Archive, record: str, p: Path) -> Any:
    """A weight torch pickled (a tensor subclass): read with the no-import walker."""
    import io

    from qinspect.loaders.archive import printable, view_budget
    from qinspect.loaders.safe_pickle import load_pickle

    inner = Archive(io.BytesIO(archive.read(record)))
    with inner:
        return load_pickle(inner.read("data.pkl"), inner.storage_loader("data"),
                           f"{printable(str(p))} ({printable(record)})",
                           view_budget=view_budget(inner.file_size))


class Builder:
    """Graph JSON + stored tensors -> layers, unrecognised entries, dead weights."""

    def __init__(self, program: dict[str, Any], stored: dict[str, Any], path: Path) -> None:
        gm = program.get("graph_module") or {}
        self.graph = gm.get("graph") or {}
        self.signature = gm.get("signature") or {}
        self.stored = stored
        self.path = path
        self.notes: list[Note] = []
        self.quantized = False
        self.layer_nodes: dict[str, Node] = {}
        self.outputs: list[str] = []
        for spec in self.signature.get("output_specs", []):
            body = spec.get("user_output") if isinstance(spec, dict) else None
            if isinstance(body, dict):
                arg = body.get("arg", {})
                name = (arg.get("as_tensor") or {}).get("name")
                if name:
                    self.outputs.append(name)
        self.arg_to_state: dict[str, str] = {}
        self.user_inputs: list[str] = []
        for spec in self.signature.get("input_specs", []):
            self._input_spec(spec)
        self.nodes: list[Node] = [self._node(n) for n in self.graph.get("nodes", [])]
        self.producer: dict[str, Node] = {}
        for node in self.nodes:
            for out in node.outputs:
                self.producer[out] = node
        self.readers: dict[str, list[Node]] = {}
        for node in self.nodes:
            for t in node.tensor_args():
                self.readers.setdefault(t, []).append(node)

    def _input_spec(self, spec: dict[str, Any]) -> None:
        for kind, body in spec.items():
            if not isinstance(body, dict):
                continue
            arg = body.get("arg", {})
            name = arg.get("name") or (arg.get("as_tensor") or {}).get("name")
            state = body.get("parameter_name") or body.get("buffer_name") or \
                body.get("tensor_constant_name") or body.get("custom_obj_name")
            if kind == "user_input" and name:
                self.user_inputs.append(name)
            elif name and state:
                self.arg_to_state[name] = state

    def _node(self, raw: dict[str, Any]) -> Node:
        args = []
        for item in raw.get("inputs", []):
            args.append((item.get("name", ""), _arg(item.get("arg", {}))))
        outputs = []
        for out in raw.get("outputs", []):
            if "as_tensor" in out:
                outputs.append(out["as_tensor"].get("name"))
            elif "as_tensors" in out:
                outputs.extend(t.get("name") for t in out["as_tensors"])
        return Node(raw.get("name") or (outputs[0] if outputs else "?"),
                    str(raw.get("target", "")), args, [o for o in outputs if o],
                    raw_inputs=[i for i in raw.get("inputs", []) if isinstance(i, dict)])

    # --- attribution ---------------------------------------------------------------
    def build(self) -> tuple[list[Layer], list[Unrecognised], list[DeadWeight]]:
        weights: dict[str, tuple[Weight, list[KeyRef]]] = {}
        acts: dict[str, tuple[ActQuant, Node]] = {}  # dq output -> (qparams, its q node)
        q_of: dict[str, ActQuant] = {}  # q node input tensor -> qparams
        for node in self.nodes:
            if node.target in DQ_CHANNEL or node.target in DQ_TENSOR:
                src = node.tensor_args()[0] if node.tensor_args() else None
                if src in self.arg_to_state:
                    weights[node.outputs[0]] = self._weight(node, src)
                    self.quantized = True
                    continue
                qnode = self.producer.get(src) if src else None
                act = self._act(node)
                if act is not None and node.outputs:
                    acts[node.outputs[0]] = (act, qnode or node)
                    self.quantized = True
            elif node.target in Q_TENSOR:
                act = self._act(node)
                src = node.tensor_args()[0] if node.tensor_args() else None
                if act is not None and src:
                    q_of[src] = act
        layers: list[Layer] = []
        used_keys: set[str] = set()
        produced_by: dict[str, str] = {}
        for node in self.nodes:
            if node.target.startswith(QD):
                continue
            ins = node.tensor_args()
            w_inputs = [t for t in ins if t in weights]
            a_inputs = [t for t in ins if t in acts]
            if not (w_inputs or a_inputs):
                continue
            layers.append(self._layer(node, weights, acts, q_of, w_inputs, a_inputs,
                                      produced_by))
            self.layer_nodes[layers[-1].name] = node
            for out in node.outputs:
                produced_by[out] = layers[-1].name
        for lay in layers:
            used_keys.update(r.key for r in lay.keys)
        return self._finish(layers, used_keys)

    def _weight(self, node: Node, src_arg: str) -> tuple[Weight, list[KeyRef]]:
        key = self.arg_to_state[src_arg]
        values = self.stored.get(key)
        if not isinstance(values, np.ndarray):
            raise UnsupportedFormatError(f"{self.path}: weight {key!r} is not a plain stored "
                                         "tensor; qinspect cannot read it")
        per_channel = node.target in DQ_CHANNEL
        scale, scale_key = self._tensor_or_literal(node, 1)
        zp, zp_key = self._tensor_or_literal(node, 2)
        axis = node.literal(3) if per_channel else None
        base = 4 if per_channel else 3
        qmin, qmax, dtype = node.literal(base), node.literal(base + 1), node.literal(base + 2)
        dtype_name = SCALAR_TYPES.get(dtype, ("int8", "int8"))[1] if isinstance(dtype, int) \
            else "int8"
        quant = TensorQuant(
            dtype=dtype_name,
            qscheme="per_channel_affine" if per_channel else "per_tensor_affine",
            scale=np.asarray(scale, dtype=np.float64).reshape(-1),
            zero_point=np.asarray(zp).astype(np.int64).reshape(-1),
            axis=int(axis) if per_channel and isinstance(axis, int) else None,
            granularity=axis_granularity(int(axis) if per_channel and isinstance(axis, int)
                                         else None),
            quant_min=qmin if isinstance(qmin, int) else None,
            quant_max=qmax if isinstance(qmax, int) else None,
        )
        weight = Weight(key, tuple(int(d) for d in values.shape), str(values.dtype), values,
                        quant)
        refs = [KeyRef(key, Role.WEIGHT)]
        refs += [KeyRef(k, Role.WEIGHT) for k in (scale_key, zp_key) if k]
        return weight, refs

    def _tensor_or_literal(self, node: Node, index: int) -> tuple[Any, str | None]:
        value = node.args[index][1] if index < len(node.args) else None
        if isinstance(value, tuple) and value and value[0] == "tensor":
            key = self.arg_to_state.get(value[1])
            if key is not None and key in self.stored:
                return self.stored[key], key
            raise UnsupportedFormatError(f"{self.path}: {node.name} reads qparams computed in "
                                         "the graph; qinspect reads stored ones only")
        return value, None

    def _act(self, node: Node) -> ActQuant | None:
        scale, zp = node.literal(1), node.literal(2)
        dtype = node.literal(5)
        if not isinstance(scale, float) or not isinstance(zp, int):
            return None
        name = SCALAR_TYPES.get(dtype, ("uint8", "uint8"))[1] if isinstance(dtype, int) \
            else "uint8"
        where = self.producer.get(node.tensor_args()[0]) if node.target in DQ_TENSOR and \
            node.tensor_args() else None
        origin = where.name if where is not None and where.target in Q_TENSOR else node.name
        keys = (f"{origin} scale (literal in the graph)",
                f"{origin} zero_point (literal in the graph)")
        return ActQuant(scale=scale, zero_point=zp, dtype=name, dtype_assumed=False, keys=keys)

    def _layer(self, node: Node, weights: dict, acts: dict, q_of: dict, w_inputs: list,
               a_inputs: list, produced_by: dict[str, str]) -> Layer:
        refs: list[KeyRef] = []
        weight = None
        if w_inputs:
            weight, wrefs = weights[w_inputs[0]]
            refs += wrefs
        bias, bias_key = self._bias(node, w_inputs, refs)
        name = _module_name(bias_key) or node.name
        act_in = acts[a_inputs[0]][0] if a_inputs else None
        source = None
        if a_inputs:
            q_node = acts[a_inputs[0]][1]
            origin = q_node.tensor_args()[0] if q_node.tensor_args() else None
            origin_layer = produced_by.get(self._through(origin)) if origin else None
            if origin in self.user_inputs:
                text = f"model input {origin!r}, quantized by {q_node.name}"
            else:
                feeder = self.producer[origin].name if origin in self.producer else origin
                text = f"output of {origin_layer or feeder!r}, requantized by {q_node.name}"
            more = len(a_inputs) - 1
            if more:
                text += f"; {more} further quantized input(s)"
            source = InputSource(SourceKind.QUANT_STUB if origin in self.user_inputs else
                                 SourceKind.PREVIOUS_LAYER, origin_layer or q_node.name,
                                 False, text + " (literal qparams in the graph)")
        output = self._output(node, q_of)
        kind = node.short + (" (int8 weight, q/dq around activations)" if weight else
                             " (q/dq around activations)")
        notes = []
        if weight is not None and weight.quant and weight.quant.quant_min is not None:
            notes.append(Note(Level.INFO, f"weight quant range {weight.quant.quant_min}.."
                              f"{weight.quant.quant_max} ({weight.quant.dtype})"))
        op = OPS.get(node.short, OpKind.OTHER if node.short in WEIGHT_OPS else OpKind.GRAPH_OP)
        return Layer(name=name, kind=kind, op=op, mode=Mode.STATIC, keys=tuple(refs),
                     weight=weight,
                     bias=bias, bias_key=bias_key, input=act_in, input_source=source,
                     output=output, notes=tuple(notes))

    def _through(self, tensor: str) -> str:
        """Walk back through pass-through ops (relu after conv) to the op's output."""
        seen = 0
        while tensor in self.producer and seen < 4:
            node = self.producer[tensor]
            if node.short not in PASS_THROUGH or not node.tensor_args():
                break
            tensor = node.tensor_args()[0]
            seen += 1
        return tensor

    def _bias(self, node: Node, w_inputs: list, refs: list[KeyRef]) -> tuple[Any, str | None]:
        if not w_inputs:
            return None, None
        for t in node.tensor_args():
            key = self.arg_to_state.get(t)
            if key is not None and key.endswith("bias") and isinstance(self.stored.get(key),
                                                                       np.ndarray):
                refs.append(KeyRef(key, Role.BIAS))
                return self.stored[key], key
        return None, None

    def _output(self, node: Node, q_of: dict[str, ActQuant]) -> ActQuant | None:
        tensor = node.outputs[0] if node.outputs else None
        hops = 0
        while tensor is not None and hops < 4:
            if tensor in q_of:
                return q_of[tensor]
            readers = self.readers.get(tensor, [])
            if len(readers) != 1 or readers[0].short not in PASS_THROUGH:
                return None
            tensor = readers[0].outputs[0] if readers[0].outputs else None
            hops += 1
        return None

    def _finish(self, layers: list[Layer], used: set[str]
                ) -> tuple[list[Layer], list[Unrecognised], list[DeadWeight]]:
        read_args = {t for node in self.nodes for t in node.tensor_args()}
        read_keys = {self.arg_to_state[a] for a in read_args if a in self.arg_to_state}
        dead: list[DeadWeight] = []
        unrecognised: list[Unrecognised] = []
        by_module = {lay.name: i for i, lay in enumerate(layers)}
        extra_refs: dict[int, list[KeyRef]] = {}
        for key, value in self.stored.items():
            if key in used:
                continue
            if key not in read_keys:
                shape = tuple(int(d) for d in getattr(value, "shape", ()))
                nbytes = int(getattr(value, "nbytes", 0))
                dead.append(DeadWeight(key, shape, str(getattr(value, "dtype", "?")), nbytes,
                                       "stored in the archive, never read by the graph"))
                owner = by_module.get(_module_name(key) or "")
                if owner is not None:
                    extra_refs.setdefault(owner, []).append(KeyRef(key, Role.UNUSED))
                    continue
                unrecognised.append(Unrecognised(key, _describe(value), "dead weight: "
                                                 "the graph never reads it"))
            else:
                unrecognised.append(Unrecognised(key, _describe(value), "read by a graph op "
                                                 "that is not quantized"))
        out = []
        for i, lay in enumerate(layers):
            if i in extra_refs:
                lay = replace(lay, keys=lay.keys + tuple(extra_refs[i]))
            out.append(lay)
        return out, unrecognised, dead


def _module_name(key: str | None) -> str | None:
    if not key or "." not in key:
        return None
    return key.rsplit(".", 1)[0]


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"tensor {value.dtype} [{'x'.join(str(d) for d in value.shape) or 'scalar'}]"
    return type(value).__name__


def _arg(arg: dict[str, Any]) -> Any:
    if not isinstance(arg, dict) or not arg:
        return None
    kind, value = next(iter(arg.items()))
    if kind == "as_tensor":
        return ("tensor", value.get("name"))
    if kind == "as_tensors":
        return ("tensors", [v.get("name") for v in value])
    if kind in ("as_int", "as_float", "as_bool", "as_string", "as_scalar_type", "as_ints",
                "as_floats", "as_bools", "as_layout", "as_memory_format", "as_device"):
        return value
    if kind == "as_none":
        return None
    return ("other", kind)
