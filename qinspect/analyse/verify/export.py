"""``verify`` on a torch.export / PT2E archive: run the whole graph once, no chain assumed.

The program is interpreted from the archive's JSON (see :mod:`qinspect.loaders.export`
for why not ``torch.export.load``): every node calls the operator it names, and only
``torch.ops.aten.*`` and ``torch.ops.quantized_decomposed.*`` are allowed, so nothing but
registered tensor operators runs. Two runs on the user's input:

* **quantized**: the graph as stored, with its quantize/dequantize pairs and int8 weights;
* **float domain**: the same graph with activation quantize/dequantize removed and every
  weight dequantize replaced by the float weight stored beside it (PT2E keeps the
  BatchNorm-folded float weights in the file; without them, the dequantized weight).

Each quantized op is then re-run from the *real* input it received in the quantized run:
in the float domain (dequantized input, float weight, no output rounding) and compared
with the integer-domain result the graph produced (its output quantize/dequantize). The
end-to-end SQNR compares the two runs' outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from qinspect.analyse.verify.rows import (
    FloatWeights,
    agreement,
    check_stage,
    not_verified,
    unusable_qparams,
)
from qinspect.analyse.verify.types import (
    EndToEnd,
    InputKind,
    KernelAgreement,
    LayerVerify,
    Options,
    Progress,
    VerifyReport,
)
from qinspect.errors import InputError, VerifyError
from qinspect.model import Checkpoint, Family, Layer

ALLOWED = ("torch.ops.aten.", "torch.ops.quantized_decomposed.")
ENGINE = "decomposed"
SCALAR_TYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16",
                7: "float32", 8: "float64", 12: "bool", 13: "bfloat16"}
MEMORY_FORMATS = {1: "contiguous_format", 2: "channels_last", 3: "channels_last_3d",
                  4: "preserve_format"}
LAYOUTS = {7: "strided"}


TORCH_REFUSALS = (RuntimeError, ValueError, TypeError, IndexError, KeyError, AssertionError,
                  ZeroDivisionError, OverflowError)
"""What torch (or a damaged argument) raises when an operator refuses its arguments."""


class OpRefused(VerifyError):
    """A graph node's operator refused the arguments the graph gave it."""


def validate_graph(builder: Any, ckpt: Checkpoint) -> None:
    """Before anything reaches torch: every tensor a node reads is a program input, a
    stored tensor or an earlier node's output, and every quantized layer's qparams are
    ones torch can run. A VerifyError naming the node or layer otherwise."""
    defined = set(builder.arg_to_state) | set(builder.user_inputs)
    for node in builder.nodes:
        for item in node.raw_inputs:
            for name in _tensor_names(item.get("arg") if isinstance(item, dict) else None):
                if name not in defined:
                    raise VerifyError(f"{ckpt.path}: graph node {node.name!r} reads tensor "
                                      f"{name!r}, which no input, stored tensor or earlier "
                                      "node defines; the file is damaged")
        defined.update(node.outputs)
        _check_quantize_args(node, ckpt)
    for layer in ckpt.layers:
        bad = unusable_qparams(layer)
        if bad is not None:
            raise VerifyError(f"{ckpt.path}: layer '{layer.name}': {bad}, so the program "
                              "cannot run through it; the file is damaged (qinspect show "
                              "lists its qparams)")


def _check_quantize_args(node: Any, ckpt: Checkpoint) -> None:
    """A per-tensor (de)quantize node's literal scale must be a positive finite number and
    its zero point inside its [quant_min, quant_max]."""
    from qinspect.loaders import export

    if node.target not in export.Q_TENSOR + export.DQ_TENSOR:
        return
    scale, zp, qmin, qmax = (node.literal(i) for i in (1, 2, 3, 4))
    bad = None
    if isinstance(scale, (int, float)) and not (math.isfinite(scale) and scale > 0):
        bad = f"scale {scale}"
    elif all(isinstance(v, int) for v in (zp, qmin, qmax)) and not qmin <= zp <= qmax:
        bad = f"zero point {zp} outside [{qmin}, {qmax}]"
    if bad is not None:
        raise VerifyError(f"{ckpt.path}: graph node {node.name!r} quantizes with {bad}, which "
                          "torch cannot run; the file is damaged")


def _tensor_names(arg: Any) -> list[str]:
    """The tensor names an argument of the program's JSON refers to."""
    if not isinstance(arg, dict) or len(arg) != 1:
        return []
    kind, value = next(iter(arg.items()))
    if kind == "as_tensor":
        return [str(value.get("name"))] if isinstance(value, dict) else ["?"]
    if kind in ("as_tensors", "as_optional_tensors"):
        items = value if isinstance(value, list) else []
        return [str(v.get("name") if kind == "as_tensors" else
                    (v.get("as_tensor") or {}).get("name"))
                for v in items if isinstance(v, dict)
                and (kind == "as_tensors" or "as_tensor" in v)]
    return []


@dataclass
class Run:
    env: dict[str, Any]
    outputs: list[Any]


def run(ckpt: Checkpoint, user: Any, weights: FloatWeights) -> VerifyReport:
    """Verify every quantized op of the .pt2 ``ckpt`` on the user's input."""
    from pathlib import Path

    import torch

    from qinspect.loaders import export

    builder, _ = export.read_program(Path(ckpt.path))
    builder.build()
    if len(user.arrays) != len(builder.user_inputs):
        raise InputError(f"the program takes {len(builder.user_inputs)} input(s) "
                         f"({', '.join(builder.user_inputs)}); --input holds "
                         f"{len(user.arrays)}")
    inputs = [torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32) for a in user.arrays]
    validate_graph(builder, ckpt)
    interp = Interpreter(builder, ckpt, weights)
    try:
        quant = interp.run(inputs, float_domain=False)
    except OpRefused as exc:  # torch's shape checks: the user's input does not fit
        shapes = ", ".join(str(list(a.shape)) for a in user.arrays)
        raise InputError(f"the program cannot run on --input of shape {shapes}: {exc}; pass "
                         "an input shaped like the example the program was exported with "
                         "(or the file is damaged)") from exc
    try:
        floats = interp.run(inputs, float_domain=True)
    except OpRefused as exc:
        raise VerifyError(f"{ckpt.path}: the float domain of the program cannot run: {exc}; "
                          "the file's float weights do not fit its graph") from exc
    rows = []
    for layer in ckpt.layers:
        node = builder.layer_nodes.get(layer.name)
        if node is None:
            rows.append(not_verified(layer, "no graph op found for it"))
            continue
        rows.append(interp.layer_row(layer, node, quant))
    end = _end_to_end(quant.outputs, floats.outputs)
    return VerifyReport(
        path=ckpt.path, mode="graph", engine=ENGINE,
        engine_reason="the program's own quantized_decomposed ops, interpreted from the "
                      "archive's graph (no kernel assumed)",
        input_text=f"{user.describe()} -> every op's real input, captured in one run of "
                   "the whole graph",
        layers=tuple(rows), float_domain=interp.float_domain, end_to_end=end,
        notes=("end-to-end: the quantized graph against the same graph in the float domain "
               "(activation quantize/dequantize removed, float weights)",),
    )


class Interpreter:
    """Runs a parsed .pt2 program with torch operators looked up by name."""

    def __init__(self, builder: Any, ckpt: Checkpoint, weights: FloatWeights) -> None:
        from qinspect.loaders import export

        self.b = builder
        self.export = export
        self.float_weights = self._float_weights(ckpt, weights)
        self._ops: dict[str, Any] = {}

    @property
    def float_domain(self) -> str:
        if self.reference is not None:
            return (f"float weights of {self.reference} (BatchNorm folded where the program "
                    "fused it), where a layer pairs; the SQNR includes weight error")
        if self.float_weights:
            return "float weights stored in the file (PT2E keeps them, BatchNorm folded)"
        return "dequantized int8 weights (no float weights stored)"

    def _float_weights(self, ckpt: Checkpoint, weights: FloatWeights) -> dict[str, np.ndarray]:
        """Weight dequantize node output -> the float weight it stands for: the paired
        ``--reference`` layer's, else the float weight PT2E stored next to the int8 one."""
        self.reference = None if weights.reference is None else weights.reference.path
        by_name = {lay.name: lay for lay in ckpt.layers}
        out: dict[str, np.ndarray] = {}
        for name, node in self.b.layer_nodes.items():
            value = self.b.stored.get(f"{name}.weight")
            layer = by_name.get(name)
            if weights.reference is not None and layer is not None and layer.weight is not None:
                w, _b, _how, _notes = weights.get(layer)
                value = np.asarray(w, np.float32)
            for t in node.tensor_args():
                producer = self.b.producer.get(t)
                if producer is None or producer.target not in (self.export.DQ_CHANNEL +
                                                                self.export.DQ_TENSOR):
                    continue
                src = producer.tensor_args()[0] if producer.tensor_args() else None
                int_w = self.b.stored.get(self.b.arg_to_state.get(src, ""))
                if src in self.b.arg_to_state and isinstance(value, np.ndarray) and \
                        isinstance(int_w, np.ndarray) and value.shape == int_w.shape and \
                        value.dtype.kind == "f":
                    out[t] = value
        return out

    def op(self, target: str) -> Any:
        import torch

        if target in self._ops:
            return self._ops[target]
        if not target.startswith(ALLOWED):
            raise VerifyError(f"the graph calls {target!r}; verify runs only aten and "
                              "quantized_decomposed operators")
        if "quantized_decomposed" in target:
            import torch.ao.quantization.fx._decomposed
        fn: Any = torch.ops
        for part in target.removeprefix("torch.ops.").split("."):
            fn = getattr(fn, part, None)
            if fn is None:
                raise VerifyError(f"torch {torch.__version__} has no operator {target!r}")
        self._ops[target] = fn
        return fn

    def run(self, inputs: list[Any], float_domain: bool) -> Run:
        import torch

        env: dict[str, Any] = {}
        for arg, key in self.b.arg_to_state.items():
            value = self.b.stored.get(key)
            if isinstance(value, np.ndarray):
                env[arg] = torch.from_numpy(np.array(value))
        for name, value in zip(self.b.user_inputs, inputs, strict=True):
            env[name] = value
        with torch.no_grad():
            for node in self.b.nodes:
                result = self._node(node, env, float_domain)
                self._bind(node, result, env)
        return Run(env, [env[o] for o in self.b.outputs if o in env])

    def _node(self, node: Any, env: dict[str, Any], float_domain: bool) -> Any:
        import torch

        if float_domain:
            out = node.outputs[0] if node.outputs else None
            if out in self.float_weights:
                return torch.from_numpy(np.array(self.float_weights[out]))
            if node.target in self.export.Q_TENSOR + self.export.DQ_TENSOR:
                return env[node.tensor_args()[0]]
        fn = self.op(node.target)
        try:
            args, kwargs = self._args(node, env)
            return fn(*args, **kwargs)
        except TORCH_REFUSALS as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise OpRefused(f"node {node.name!r} ({node.target.removeprefix('torch.ops.')}) "
                            f"refused its arguments ({type(exc).__name__}: {first})") from exc

    def _bind(self, node: Any, result: Any, env: dict[str, Any]) -> None:
        if len(node.outputs) == 1:
            env[node.outputs[0]] = result
        elif isinstance(result, (tuple, list)):
            for name, value in zip(node.outputs, result, strict=False):
                env[name] = value

    def _args(self, node: Any, env: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for item in node.raw_inputs:
            value = self._value(item.get("arg", {}), env, node)
            if item.get("kind") == 2:
                kwargs[str(item.get("name"))] = value
            else:
                args.append(value)
        return args, kwargs

    def _value(self, arg: dict[str, Any], env: dict[str, Any], node: Any) -> Any:
        import torch

        if not isinstance(arg, dict) or not arg:
            return None
        kind, value = next(iter(arg.items()))
        if kind == "as_tensor":
            return env[value["name"]]
        if kind == "as_tensors":
            return [env[v["name"]] for v in value]
        if kind == "as_optional_tensors":
            return [env[v["as_tensor"]["name"]] if "as_tensor" in v else None for v in value]
        if kind in ("as_int", "as_float", "as_bool", "as_string", "as_ints", "as_floats",
                    "as_bools", "as_strings"):
            return value
        if kind == "as_none":
            return None
        if kind == "as_scalar_type" and value in SCALAR_TYPES:
            return getattr(torch, SCALAR_TYPES[value])
        if kind == "as_device":
            return torch.device(value.get("type", "cpu"))
        if kind == "as_memory_format" and value in MEMORY_FORMATS:
            return getattr(torch, MEMORY_FORMATS[value])
        if kind == "as_layout" and value in LAYOUTS:
            return getattr(torch, LAYOUTS[value])
        raise VerifyError(f"node {node.name!r} has an argument of kind {kind!r} that verify "
                          "cannot rebuild")

    # --- one layer --------------------------------------------------------------------
    def layer_row(self, layer: Layer, node: Any, quant: Run) -> LayerVerify:
        """Re-run ``node`` (and the relu/flatten after it) from its captured input."""
        import torch

        segment, q_node = self._segment(node)
        env = dict(quant.env)
        with torch.no_grad():
            for step in segment:
                args, kwargs = self._args(step, env)
                if step is node:
                    args = [self._float_arg(a, step, i) for i, a in enumerate(args)]
                    args = [a.to(torch.float64) if isinstance(a, torch.Tensor) and
                            a.is_floating_point() else a for a in args]
                result = self.op(step.target)(*args, **kwargs)
                self._bind(step, result, env)
        float_out = env[segment[-1].outputs[0]].to(torch.float64).numpy()
        if q_node is not None:
            dq = self._reader_dq(q_node)
            got_t = quant.env[dq.outputs[0]] if dq is not None else None
        else:
            got_t = quant.env[segment[-1].outputs[0]]
        if got_t is None:
            return not_verified(layer, "its output dequantize is not in the graph")
        got = got_t.to(torch.float64).numpy()
        x = quant.env[node.tensor_args()[0]]
        row = self._metrics(layer, float_out, got, tuple(int(d) for d in x.shape), q_node)
        return replace(row, kernel=self._agreement(q_node, quant)) if q_node is not None \
            else row

    def _agreement(self, q_node: Any, quant: Run) -> KernelAgreement | None:
        """torch's ``quantized_decomposed.quantize_per_tensor`` of the op's float32 output
        in the graph run against qinspect's (:func:`quantize_per_tensor_decomposed`)."""
        import torch

        from qinspect.quant.affine import quantize_per_tensor_decomposed

        src = quant.env.get(q_node.tensor_args()[0]) if q_node.tensor_args() else None
        got = quant.env.get(q_node.outputs[0]) if q_node.outputs else None
        scale, zp, qmin, qmax = (q_node.literal(i) for i in (1, 2, 3, 4))
        if not (isinstance(src, torch.Tensor) and isinstance(got, torch.Tensor)
                and isinstance(scale, (int, float)) and isinstance(zp, int)
                and isinstance(qmin, int) and isinstance(qmax, int)):
            return None
        kq = got.numpy()
        ref = quantize_per_tensor_decomposed(src.to(torch.float32).numpy(), float(scale), zp,
                                             str(got.dtype).removeprefix("torch."), qmin, qmax)
        return agreement(ENGINE, "decomposed quantize",
                         "quantized_decomposed.quantize_per_tensor", kq, ref, "LSB")

    def _float_arg(self, value: Any, node: Any, index: int) -> Any:
        import torch

        item = node.raw_inputs[index] if index < len(node.raw_inputs) else {}
        name = (item.get("arg", {}).get("as_tensor") or {}).get("name")
        if name in self.float_weights:
            return torch.from_numpy(np.array(self.float_weights[name]))
        return value

    def _segment(self, node: Any) -> tuple[list[Any], Any]:
        segment = [node]
        tensor = node.outputs[0] if node.outputs else None
        for _ in range(4):
            readers = self.b.readers.get(tensor, [])
            if len(readers) != 1:
                return segment, None
            nxt = readers[0]
            if nxt.target in self.export.Q_TENSOR:
                return segment, nxt
            if nxt.short not in self.export.PASS_THROUGH:
                return segment, None
            segment.append(nxt)
            tensor = nxt.outputs[0] if nxt.outputs else None
        return segment, None

    def _reader_dq(self, q_node: Any) -> Any:
        for reader in self.b.readers.get(q_node.outputs[0], []):
            if reader.target in self.export.DQ_TENSOR:
                return reader
        return None

    def _metrics(self, layer: Layer, ref: np.ndarray, got: np.ndarray,
                 shape: tuple[int, ...], q_node: Any) -> LayerVerify:
        from qinspect.quant.metrics import sqnr_db

        err = np.abs(ref - got)
        out = layer.output
        clipped_low = clipped_high = None
        max_lsb = mean_lsb = None
        if out is not None and q_node is not None:
            s = float(np.float32(out.scale))
            qmin, qmax = q_node.literal(3), q_node.literal(4)
            if isinstance(qmin, int) and isinstance(qmax, int):
                lo, hi = (qmin - out.zero_point - 0.5) * s, (qmax - out.zero_point + 0.5) * s
                n = max(ref.size, 1)
                clipped_low = float(np.count_nonzero(ref < lo)) / n
                clipped_high = float(np.count_nonzero(ref > hi)) / n
            max_lsb = float(err.max() / s) if err.size else 0.0
            mean_lsb = float(err.mean() / s) if err.size else 0.0
        inp = layer.input
        return LayerVerify(
            name=layer.name, kind=layer.kind.split(" (")[0], mode=layer.mode.value,
            verified=True, input_kind=InputKind.MODEL,
            input_text="its real input in a run of the whole graph", input_shape=shape,
            input_scale=inp.scale if inp else None,
            input_zero_point=inp.zero_point if inp else None,
            output_scale=out.scale if out else None,
            output_zero_point=out.zero_point if out else None,
            float_domain="float64 op on the dequantized input with the float weight",
            elements=int(ref.size), sqnr_db=sqnr_db(ref, got), max_error_lsb=max_lsb,
            mean_error_lsb=mean_lsb, max_abs_error=float(err.max()) if err.size else 0.0,
            mean_abs_error=float(err.mean()) if err.size else 0.0,
            clipped_low=clipped_low, clipped_high=clipped_high,
            notes=() if out is not None else ("float output (no quantize after it): the "
                                              "error is from its input and weight only",))


def _end_to_end(quant: list[Any], floats: list[Any]) -> EndToEnd | None:
    import torch

    from qinspect.quant.metrics import sqnr_db

    if not quant or len(quant) != len(floats):
        return None
    q = np.concatenate([t.detach().to(torch.float64).numpy().ravel() for t in quant])
    f = np.concatenate([t.detach().to(torch.float64).numpy().ravel() for t in floats])
    err = np.abs(q - f)
    return EndToEnd(sqnr_db=sqnr_db(f, q), max_abs_error=float(err.max()) if err.size else 0.0,
                    elements=int(q.size), outputs=len(quant))


class Pt2Runner:
    """A ``torch.export`` program (``.pt2``): its JSON graph interpreted with aten and
    quantized_decomposed operators only, never ``torch.export.load``."""

    name = "pt2"
    needs = {"input": "verify on a .pt2 runs the whole graph: pass --input with a sample "
                      "for each model input (.npy, or .npz with one array per input)"}
    refuses = {
        "engine": "a .pt2 program runs its own quantized_decomposed ops (float arithmetic "
                  "around quantize/dequantize), not an engine's kernels",
        "seed": "the graph runs on the --input only, so there is no synthetic input to seed",
        "model": "the file stores its graph and verify runs it; --model is for state_dicts, "
                 "which have none",
    }

    def accepts(self, ckpt: Checkpoint, options: Options) -> bool:
        return ckpt.family is Family.EXPORT

    def run(self, ckpt: Checkpoint, options: Options, progress: Progress | None
            ) -> VerifyReport:
        from qinspect.inputs import read_input
        from qinspect.loaders import load

        check_stage(ckpt)
        assert options.input is not None
        user = read_input(options.input).limited(options.batch)
        ref = load(options.reference) if options.reference is not None else None
        report = run(ckpt, user, FloatWeights(ckpt, ref))
        return replace(report, scope=(
            "the file stores its graph: it ran whole on the input, every quantized op on "
            "its real input, and the quantized output against the float domain's"))
