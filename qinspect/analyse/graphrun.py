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

from dataclasses import dataclass
from typing import Any

import numpy as np

from qinspect.analyse.verify import (
    EndToEnd,
    InputKind,
    LayerVerify,
    VerifyReport,
    keep_layers,
    not_verified,
)
from qinspect.errors import InputError, VerifyError
from qinspect.model import Checkpoint, Layer

ALLOWED = ("torch.ops.aten.", "torch.ops.quantized_decomposed.")
ENGINE = "decomposed"
SCALAR_TYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16",
                7: "float32", 8: "float64", 12: "bool", 13: "bfloat16"}
MEMORY_FORMATS = {1: "contiguous_format", 2: "channels_last", 3: "channels_last_3d",
                  4: "preserve_format"}
LAYOUTS = {7: "strided"}


@dataclass
class Run:
    env: dict[str, Any]
    outputs: list[Any]


def run(ckpt: Checkpoint, path: str, user: Any) -> VerifyReport:
    """Verify every quantized op of the .pt2 at ``path`` on the user's input."""
    from pathlib import Path

    import torch

    from qinspect.loaders import export

    if user is None:
        raise InputError("verify on a .pt2 runs the whole graph: pass --input with a sample "
                         "for each model input (.npy, or .npz with one array per input)")
    builder, _ = export.read_program(Path(path))
    builder.build()
    if len(user.arrays) != len(builder.user_inputs):
        raise InputError(f"the program takes {len(builder.user_inputs)} input(s) "
                         f"({', '.join(builder.user_inputs)}); --input holds "
                         f"{len(user.arrays)}")
    inputs = [torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32) for a in user.arrays]
    interp = Interpreter(builder)
    try:
        quant = interp.run(inputs, float_domain=False)
    except RuntimeError as exc:  # torch's shape checks: the user's input does not fit
        shapes = ", ".join(str(list(a.shape)) for a in user.arrays)
        raise InputError(f"the program cannot run on --input of shape {shapes} "
                         f"({str(exc).splitlines()[0][:160]}); pass an input shaped like "
                         "the example the program was exported with") from exc
    floats = interp.run(inputs, float_domain=True)
    rows = []
    for layer in ckpt.layers:
        node = builder.layer_nodes.get(layer.name)
        if node is None:
            rows.append(not_verified(layer, "no graph op found for it"))
            continue
        rows.append(interp.layer_row(layer, node, quant))
    end = _end_to_end(quant.outputs, floats.outputs)
    weights = ("float weights stored in the file (PT2E keeps them, BatchNorm folded)"
               if interp.float_weights else "dequantized int8 weights (no float weights "
               "stored)")
    return VerifyReport(
        path=str(path), mode="graph", engine=ENGINE,
        engine_reason="the program's own quantized_decomposed ops, interpreted from the "
                      "archive's graph (no kernel assumed)",
        input_text=f"{user.describe()} -> every op's real input, captured in one run of "
                   "the whole graph",
        layers=tuple(rows), float_domain=weights, end_to_end=end,
        notes=("end-to-end: the quantized graph against the same graph in the float domain "
               "(activation quantize/dequantize removed, float weights)",),
    )


class Interpreter:
    """Runs a parsed .pt2 program with torch operators looked up by name."""

    def __init__(self, builder: Any) -> None:
        from qinspect.loaders import export

        self.b = builder
        self.export = export
        self.float_weights = self._float_weights()
        self._ops: dict[str, Any] = {}

    def _float_weights(self) -> dict[str, str]:
        """Weight dequantize node output -> key of the stored float weight it stands for."""
        out: dict[str, str] = {}
        for name, node in self.b.layer_nodes.items():
            key = f"{name}.weight"
            value = self.b.stored.get(key)
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
                    out[t] = key
        return out

    def op(self, target: str) -> Any:
        import torch

        if target in self._ops:
            return self._ops[target]
        if not target.startswith(ALLOWED):
            raise VerifyError(f"the graph calls {target!r}; verify runs only aten and "
                              "quantized_decomposed operators")
        if "quantized_decomposed" in target:
            import torch.ao.quantization.fx._decomposed  # registers the ops
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
                return torch.from_numpy(np.array(self.b.stored[self.float_weights[out]]))
            if node.target in self.export.Q_TENSOR + self.export.DQ_TENSOR:
                return env[node.tensor_args()[0]]
        args, kwargs = self._args(node, env)
        return self.op(node.target)(*args, **kwargs)

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
        return self._metrics(layer, float_out, got, tuple(int(d) for d in x.shape), q_node)

    def _float_arg(self, value: Any, node: Any, index: int) -> Any:
        import torch

        item = node.raw_inputs[index] if index < len(node.raw_inputs) else {}
        name = (item.get("arg", {}).get("as_tensor") or {}).get("name")
        if name in self.float_weights:
            return torch.from_numpy(np.array(self.b.stored[self.float_weights[name]]))
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


def verify_graph(ckpt: Checkpoint, input: Any, layer_glob: str | None,
                 batch: int | None) -> VerifyReport:
    """``verify`` entry for .pt2 files: read the input, run, filter by ``layer_glob``."""
    from dataclasses import replace

    from qinspect.inputs import read_input

    user = read_input(input).limited(batch) if input is not None else None
    report = run(ckpt, ckpt.path, user)
    report = replace(report, batch=batch)
    return keep_layers(report, layer_glob)
