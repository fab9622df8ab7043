"""``verify`` on a TorchScript archive or a pickled FX GraphModule: run the graph whole.

The forward code stored in the file is parsed (never compiled) and *interpreted*:
module calls into the checkpoint's quantized layers run torch's quantized operators on
weights rebuilt from the file; calls into containers (``Sequential``, the root,
``DeQuantize``, fused-away ``Identity``) follow their own parsed ``forward``; everything
else must be on an allow-list of tensor functions (``torch.flatten``, ``torch.relu``,
``torch.quantize_per_tensor``, ``ops.quantized.add``...), so no other code runs. Two
runs on the user's input:

* **quantized**: as the file describes it (quantize, int8 kernels, requantize);
* **float domain**: quantize/dequantize are identities and every layer runs in float
  with the float-domain weights (dequantized, or ``--reference``'s with BatchNorm folded).

Each quantized layer and quantize op is then re-run in float64 from the *real* input it
received in the quantized run and compared with what the quantized run produced; the
end-to-end SQNR compares the two runs' outputs. No chain is assumed.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from qinspect.analyse.verify import rows as V
from qinspect.analyse.verify import types as T
from qinspect.errors import InputError, VerifyError
from qinspect.loaders.tscode import (
    AttrRef,
    Bound,
    Code,
    CodeWalker,
    Env,
    GlobalName,
    ModRef,
    flatten,
    quantized_op_name,
)
from qinspect.model import ActQuant, Checkpoint, Family, Layer, Mode, OpKind

QDTYPES = {13: "quint8", 12: "qint8", 14: "qint32"}
QDTYPE_RANGES = {"quint8": (0, 255), "qint8": (-128, 127), "qint32": (-2**31, 2**31 - 1)}
TORCH_FUNCS = ("flatten", "relu", "relu_", "reshape", "cat", "squeeze", "unsqueeze", "mean",
               "permute", "transpose", "add", "mul", "sigmoid", "tanh", "clamp", "hardtanh",
               "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d",
               "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
               "adaptive_avg_pool3d", "adaptive_max_pool2d", "slice", "select", "contiguous",
               "view", "matmul", "hardsigmoid", "hardswish", "relu6", "dropout", "pad",
               "chunk", "split", "channel_shuffle", "upsample_nearest2d", "sub")
FUNCTIONAL = ("relu", "relu6", "hardtanh", "dropout", "max_pool2d", "avg_pool2d",
              "adaptive_avg_pool2d", "flatten", "sigmoid", "hardsigmoid", "hardswish")
METHODS = ("size", "dim", "contiguous", "view", "reshape", "flatten", "relu", "permute",
           "transpose", "mean", "clone", "float", "squeeze", "unsqueeze", "numel")
QUANTIZED_OPS = ("add", "add_relu", "mul", "mul_relu", "cat", "linear", "linear_relu",
                 "add_scalar", "mul_scalar", "hardswish")
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
           ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
           ast.Is: operator.is_, ast.IsNot: operator.is_not}
BUILTINS: dict[str, Callable[..., Any]] = {
    "torch.len": len, "torch.ne": operator.ne, "torch.eq": operator.eq,
    "torch.lt": operator.lt, "torch.gt": operator.gt, "torch.le": operator.le,
    "torch.ge": operator.ge, "torch.__is__": operator.is_,
    "torch.__isnot__": operator.is_not, "torch.__not__": operator.not_,
    "torch.dim": lambda t: t.dim(), "torch.size": lambda t, d=None: (
        list(t.size()) if d is None else t.size(d)),
    "len": len, "float": float, "int": int, "bool": bool,
    "annotate": lambda _t, v: v, "unchecked_cast": lambda _t, v: v,
    "uninitialized": lambda _t: None}


@dataclass
class Capture:
    x: Any
    y: Any
    op: str = ""
    """The quantized op a layer's own code ran (``add``, ``cat``...); "" for kernels."""
    args: list[Any] | None = None


def float_op(op: str, args: list[Any]) -> Any:
    """The float-domain meaning of a quantized op (its output qparams dropped)."""
    import torch
    import torch.nn.functional as F

    if op in ("add", "add_relu", "add_scalar"):
        y = args[0] + args[1]
    elif op in ("mul", "mul_relu", "mul_scalar"):
        y = args[0] * args[1]
    elif op == "cat":
        y = torch.cat(args[0], args[1] if len(args) > 1 else 0)
    elif op == "hardswish":
        y = F.hardswish(args[0])
    else:
        raise VerifyError(f"verify has no float meaning for quantized::{op} yet")
    return F.relu(y) if op.endswith("_relu") else y


def _runs_kernel(layer: Layer) -> bool:
    """Layers run with torch kernels rebuilt from the file (not from their own code)."""
    return (layer.mode in (Mode.QUANTIZE, Mode.FLOAT) or _module_linear(layer)
            or layer.op is OpKind.CONV)


def _module_linear(layer: Layer) -> bool:
    """A Linear module (F.linear on an FX packed weight runs as a graph op instead)."""
    return layer.op is OpKind.LINEAR and not layer.functional


def verify_script(ckpt: Checkpoint, kind: str, options: T.Options,
                  progress: T.Progress | None) -> T.VerifyReport:
    """``verify`` for TorchScript archives and pickled GraphModules (see the docstring)."""
    import torch

    from qinspect.analyse.verify import kernels
    from qinspect.inputs import read_input
    from qinspect.loaders import fx_pickle, torchscript

    assert options.input is not None
    user = read_input(options.input).limited(options.batch)
    validate_layers(ckpt)
    reader = torchscript if kind == "torchscript" else fx_pickle
    root, code, root_qualname = reader.read_script(Path(ckpt.path))
    ctx = V.Context.make(ckpt, options, progress)
    interp = Interpreter(ckpt, root, code, ctx)
    inputs = [torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32)
              for a in user.arrays]
    ctx.tick("running the quantized graph", 0, 3)
    with kernels.engine_context(ctx.engine), torch.no_grad():
        q_out = interp.run_on(root_qualname, inputs, True, user)
        captures = dict(interp.captures)
        ctx.tick("running the float graph", 1, 3)
        f_out = interp.run_on(root_qualname, inputs, False, user)
    ctx.tick("comparing every layer", 2, 3)
    rows = [interp.row(layer, captures.get(layer.name)) for layer in ckpt.layers
            if layer.mode is not Mode.FLOAT]
    ctx.tick("done", 3, 3)
    return T.VerifyReport(
        path=ckpt.path, mode="graph", engine=ctx.engine, engine_reason=ctx.engine_reason,
        input_text=f"{user.describe()} -> every layer's real input, captured in one run of "
                   "the whole graph stored in the file",
        layers=tuple(rows), float_domain=ctx.weights.summary,
        end_to_end=_end_to_end(q_out, f_out), scope=GRAPH_SCOPE,
        notes=("end-to-end: the quantized graph against the same graph in the float domain "
               "(quantize/dequantize removed, float-domain weights)",))


def validate_layers(ckpt: Checkpoint) -> None:
    """A VerifyError naming the first quantized layer whose qparams torch cannot run: in
    a graph every later layer depends on it, so nothing would be verified."""
    for layer in ckpt.layers:
        if layer.mode is Mode.FLOAT:
            continue
        bad = V.unusable_qparams(layer)
        if bad is not None:
            raise VerifyError(f"{ckpt.path}: layer '{layer.name}': {bad}, so the graph "
                              "cannot run through it; the file is damaged (qinspect show "
                              "lists its qparams)")


#: what torch raises when an operator refuses its arguments (shape, dtype, rank...)
TORCH_REFUSALS = (RuntimeError, ValueError, TypeError, IndexError, AssertionError,
                  ZeroDivisionError, OverflowError)


GRAPH_SCOPE = ("the file stores its graph: it ran whole on the input, every quantized layer "
               "on its real input, and the quantized output against the float domain's")
NEEDS_INPUT = ("verify runs this file's graph whole: pass --input with a sample for each "
               "model input (.npy, or .npz with one array per input)")
NO_SEED = "the graph runs on the --input only, so there is no synthetic input to seed"
NO_MODEL = ("the file stores its graph and verify runs it; --model is for state_dicts, "
            "which have none")


class TorchScriptRunner:
    """A TorchScript archive: its stored code interpreted, never ``torch.jit.load``."""

    name = "torchscript"
    family = Family.TORCHSCRIPT
    needs = {"input": NEEDS_INPUT}
    refuses = {"seed": NO_SEED, "model": NO_MODEL}

    def accepts(self, ckpt: Checkpoint, options: T.Options) -> bool:
        return ckpt.family is self.family

    def run(self, ckpt: Checkpoint, options: T.Options, progress: T.Progress | None
            ) -> T.VerifyReport:
        V.check_stage(ckpt)
        return verify_script(ckpt, self.name, options, progress)


class FxPickleRunner(TorchScriptRunner):
    """A pickled FX GraphModule: its stored code interpreted, nothing unpickled."""

    name = "fx-pickle"
    family = Family.FX_PICKLE


class Interpreter(CodeWalker):
    """Runs the parsed forward code (:class:`CodeWalker`, the walker ``load`` uses too)
    on real tensors, with an allow-list of operations."""

    def __init__(self, ckpt: Checkpoint, root: Any, code: Code, ctx: V.Context) -> None:
        from qinspect.loaders.torchscript import Flattener

        flat = Flattener()
        flat.module(root, "")
        super().__init__(code, flat.modules)
        self.entries = flat.entries
        self.geometry = flat.geometry
        self.states = _states(root)
        self.layers = {lay.name: lay for lay in ckpt.layers}
        self.key_layer = {ref.key: lay for lay in ckpt.layers for ref in lay.keys}
        self.ctx = ctx
        self.weights = ctx.weights
        self.engine = ctx.engine
        self.quantized = True
        self.captures: dict[str, Capture] = {}
        self.where = "the graph"
        self.module = ""
        """The module whose code is running ("" for the root), to name it in errors."""
        self.current: Layer | None = None
        """The layer whose own code is running (its quantized ops are captured for it)."""
        self._packed: dict[str, Any] = {}

    # --- runs -------------------------------------------------------------------------
    def run_on(self, root_qualname: str, inputs: list[Any], quantized: bool, user: Any
               ) -> list[Any]:
        """:meth:`run`, with an operator's refusal reported as one line (exit 2) naming
        the op and the --input's shapes: the input does not fit, or the file is damaged."""
        from qinspect.inputs import shape_text

        self.where = "the graph"
        try:
            return self.run(root_qualname, inputs, quantized)
        except TORCH_REFUSALS as exc:
            shapes = ", ".join(shape_text(a.shape) for a in user.arrays)
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise InputError(f"the graph cannot run on --input {shapes}: {self.where} "
                             f"refused it ({type(exc).__name__}: {first}); pass an input "
                             "shaped like the model's (or the file is damaged)") from exc

    def run(self, root_qualname: str, inputs: list[Any], quantized: bool) -> list[Any]:
        self.quantized = quantized
        self.captures = {}
        self.steps = 0
        try:
            out = self.call_module(ModRef("", root_qualname), "forward", list(inputs), {}, 0)
        except RecursionError as exc:
            raise VerifyError("the graph code is nested too deeply to run") from exc
        return [t for t in flatten([out]) if _is_tensor(t)]

    # --- calls ------------------------------------------------------------------------
    def call_module(self, mod: ModRef, method: str, args: list[Any],
                    kwargs: dict[str, Any], depth: int) -> Any:
        """A module's method: a layer with torch kernels runs them (rebuilt from the
        file); any other module, its own code from the archive, interpreted (a
        QFunctional's add/cat, a quantized Hardswish's forward...)."""
        layer = self.layers.get(mod.path) if mod.path else None
        if layer is not None and _runs_kernel(layer):
            return self.layer_call(layer, args)
        func = self.code.method(mod.qualname, method)
        if func is None:
            raise VerifyError(f"cannot run {method} of {mod.path or 'the root'} "
                              f"({mod.qualname}): no code for it in the file")
        outer, outer_module = self.current, self.module
        self.current = layer if layer is not None else outer
        self.module = mod.path
        try:
            return self.call_function(func, [mod, *args], kwargs, depth)
        finally:
            self.current, self.module = outer, outer_module

    def call_bound(self, owner: Any, name: str, args: list[Any],
                   kwargs: dict[str, Any]) -> Any:
        if name == "dequantize":
            return owner.dequantize() if self.quantized else owner
        if name in METHODS:
            return getattr(owner, name)(*args)
        raise VerifyError(f"verify cannot run the tensor method {name!r} yet")

    def call_global(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        import torch
        import torch.nn.functional as F

        self.where = repr(name)
        if name in BUILTINS:
            return BUILTINS[name](*args, **kwargs)
        if name == "ops.prim.RaiseException":
            what = str(args[0])[:120] if args else "an exception"
            raise VerifyError(f"the graph code raised on this input: {what}")
        if name == "torch.quantize_per_tensor":
            return self.quantize(args)
        if name == "torch.dequantize":
            return args[0].dequantize() if self.quantized else args[0]
        short = name.rsplit(".", 1)[-1]
        if name.startswith(("__torch__.torch.nn.functional.", "torch.nn.functional.")) and \
                short in FUNCTIONAL:
            return getattr(F, short)(*args, **kwargs)
        if name.startswith("torch.") and name.count(".") == 1 and short in TORCH_FUNCS:
            fn = getattr(torch, short, None) if short != "slice" else None
            return (fn or getattr(torch.ops.aten, short))(*args, **kwargs)
        op = quantized_op_name(name)
        if op in QUANTIZED_OPS:
            return self.quantized_op(str(op), args)
        raise VerifyError(f"verify cannot run {name!r} from a graph yet (called in "
                          f"{repr(self.module) if self.module else 'the root forward'}); "
                          "verify runs allow-listed operators only")

    # --- values -----------------------------------------------------------------------
    def operator(self, node: ast.expr, env: Env, depth: int) -> Any:
        if isinstance(node, ast.UnaryOp):
            value = self.expr(node.operand, env, depth)
            if isinstance(node.op, ast.USub) and isinstance(value, (int, float)):
                return -value
            if isinstance(node.op, ast.Not) and isinstance(value, (bool, int)):
                return not value
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left = self.expr(node.left, env, depth)
            right = self.expr(node.comparators[0], env, depth)
            fn = COMPARE.get(type(node.ops[0]))
            if fn is not None and not (_is_tensor(left) or _is_tensor(right)):
                return fn(left, right)
        if isinstance(node, ast.BoolOp):
            values = [self.expr(v, env, depth) for v in node.values]
            if all(isinstance(v, (bool, int)) for v in values):
                return all(values) if isinstance(node.op, ast.And) else any(values)
        return self.unsupported(f"a {type(node).__name__} expression")

    def module_attribute(self, ref: AttrRef) -> Any:
        if ref.key in self.entries:
            return self.entries[ref.key]
        state = self.states.get(ref.owner.path, {})
        value = state.get(ref.name)
        if ref.name in state and isinstance(value, (bool, int, float, str, type(None))):
            return value
        return ref

    def global_attribute(self, base: GlobalName, name: str) -> Any:
        if base.name == "torch":
            import torch

            value = vars(torch).get(name)
            if isinstance(value, (torch.dtype, torch.qscheme)):
                return value
        return GlobalName(f"{base.name}.{name}")

    def value_attribute(self, base: Any, name: str) -> Any:
        if _is_tensor(base):
            return Bound(base, name)
        return self.unsupported(f"attribute {name!r}")

    def unpack(self, value: Any, count: int) -> list[Any]:
        values = list(value)
        if len(values) != count:
            raise VerifyError("tuple unpacking of the wrong length in the graph code")
        return values

    def truth(self, test: Any) -> bool:
        if not isinstance(test, (bool, int)) or _is_tensor(test):
            raise VerifyError("an if in the graph code depends on something verify cannot "
                              "evaluate")
        return bool(test)

    def unsupported(self, what: str) -> NoReturn:
        raise VerifyError(f"cannot run {what} of the graph code")

    def bad_arguments(self, func: ast.FunctionDef) -> None:
        raise VerifyError(f"the graph code calls {func.name} with arguments it does not "
                          "take")

    def too_deep(self, args: list[Any]) -> NoReturn:
        raise VerifyError("calls nested too deeply to run")

    def too_many_steps(self) -> NoReturn:
        raise VerifyError("the graph is too large to run")

    # --- operations -------------------------------------------------------------------
    def quantize(self, args: list[Any]) -> Any:
        import torch

        x, scale, zp = args[0], args[1], args[2]
        dtype = args[3] if len(args) > 3 else torch.quint8
        if isinstance(dtype, int):
            dtype = getattr(torch, QDTYPES.get(dtype, "quint8"))
        s = float(scale)
        z = int(zp)
        layer = self._layer_holding(scale)
        info = QDTYPE_RANGES.get(str(dtype).removeprefix("torch."))
        if not (math.isfinite(s) and s > 0) or (info is not None
                                                 and not info[0] <= z <= info[1]):
            what = f"'{layer.name}'" if layer is not None else "a quantize_per_tensor"
            raise VerifyError(f"{what} in the graph quantizes with scale {s:g}, zero point {z} "
                              f"({dtype}), which torch cannot run; the file is damaged "
                              "(qinspect show lists its qparams)")
        if not self.quantized:
            return x
        y = torch.quantize_per_tensor(x, s, z, dtype)
        if layer is not None and layer.name not in self.captures:
            self.captures[layer.name] = Capture(x, y)
        return y

    def _layer_holding(self, obj: Any) -> Layer | None:
        """The layer whose file entry is ``obj`` itself (not an equal value)."""
        for key, value in self.entries.items():
            if value is obj and key in self.key_layer:
                return self.key_layer[key]
        return None

    def quantized_op(self, op: str, args: list[Any]) -> Any:
        import torch
        import torch.nn.functional as F

        packed = next((a for a in args if _is_packed(a)), None)
        if op.startswith("linear"):
            layer = self._packed_layer(packed)
            if self.quantized:
                out = getattr(torch.ops.quantized, op)(args[0], self._prepack(layer),
                                                        float(args[2]), int(args[3]))
                self.captures.setdefault(layer.name, Capture(args[0], out))
                return out
            w, b, _, _ = self.weights.get(layer)
            y = F.linear(args[0], torch.from_numpy(w).float(),
                         None if b is None else torch.from_numpy(b).float())
            return F.relu(y) if op == "linear_relu" else y
        if not self.quantized:
            return float_op(op, args)
        out = getattr(torch.ops.quantized, op)(*args)
        owner = self.current or self._entry_layer(args)
        if owner is not None:
            self.captures.setdefault(owner.name, Capture(args[0], out, op, list(args)))
        return out

    def _entry_layer(self, args: list[Any]) -> Layer | None:
        """The layer an op belongs to through the file entry it reads (FX code passes its
        op's scale as ``self.<op>_scale_0``)."""
        for arg in args:
            if _is_tensor(arg) or isinstance(arg, float):  # small ints are shared objects
                layer = self._layer_holding(arg)
                if layer is not None:
                    return layer
        return None

    def _packed_layer(self, packed: Any) -> Layer:
        layer = self._layer_holding(packed)
        if layer is None:
            raise VerifyError("a quantized op reads packed weights qinspect did not "
                              "attribute")
        return layer

    # --- layers -----------------------------------------------------------------------
    def layer_call(self, layer: Layer, args: list[Any]) -> Any:
        self.where = f"layer '{layer.name}' ({layer.kind})"
        x = args[0] if args else None
        if not _is_tensor(x):
            raise VerifyError(f"{layer.name}: called without a tensor")
        y = self.layer_forward(layer, x, self.quantized)
        if self.quantized and layer.name not in self.captures:
            self.captures[layer.name] = Capture(x, y)
        return y

    def layer_forward(self, layer: Layer, x: Any, quantized: bool) -> Any:
        import torch
        import torch.nn.functional as F

        kind = layer.kind
        relu = layer.fused_relu
        if layer.mode is Mode.QUANTIZE:
            out = _output(layer)
            return torch.quantize_per_tensor(x, out.scale, out.zero_point, torch.quint8) \
                if quantized else x
        if layer.mode is Mode.FLOAT:
            raise VerifyError(f"{layer.name}: a float layer inside the graph; verify cannot "
                              "run it yet")
        if not quantized:
            w, b, _, _ = self.weights.get(layer)
            wt = torch.from_numpy(w).to(x.dtype)
            bt = None if b is None else torch.from_numpy(b).to(x.dtype)
            if _module_linear(layer):
                y = F.linear(x, wt, bt)
            elif layer.op is OpKind.CONV:
                geo = self._geometry(layer)
                conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[wt.dim()]
                y = conv(x, wt, bt, geo.stride, geo.padding, geo.dilation, geo.groups)
            else:
                raise VerifyError(f"{layer.name}: verify cannot run {kind} from a graph yet")
            return F.relu(y) if relu else y
        if layer.mode is Mode.DYNAMIC and _module_linear(layer):
            return torch.ops.quantized.linear_dynamic(x, self._prepack(layer))
        out = _output(layer)
        if _module_linear(layer):
            op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
            return op(x, self._prepack(layer), out.scale, out.zero_point)
        if layer.op is OpKind.CONV:
            name = f"conv{_conv_dims(layer)}d" + ("_relu" if relu else "")
            return getattr(torch.ops.quantized, name)(x, self._prepack(layer), out.scale,
                                                      out.zero_point)
        raise VerifyError(f"{layer.name}: verify cannot run {kind} from a graph yet")

    def _geometry(self, layer: Layer) -> Any:
        from qinspect.analyse.verify.kernels import ConvGeometry

        g = self.geometry.get(layer.name)
        if g is None:
            return ConvGeometry.default(_conv_dims(layer))
        return ConvGeometry(tuple(g["stride"]), tuple(g["padding"]), tuple(g["dilation"]),
                            int(g["groups"]))

    def _prepack(self, layer: Layer) -> Any:
        import torch

        from qinspect.analyse.verify import kernels

        if layer.name in self._packed:
            return self._packed[layer.name]
        w = kernels.weight_tensor(layer)
        b = None if layer.bias is None else torch.from_numpy(
            np.asarray(layer.bias, np.float32).copy())
        dims = _conv_dims(layer)
        if dims == 0:
            packed = torch.ops.quantized.linear_prepack(w, b)
        else:
            geo = self._geometry(layer)
            prepack = getattr(torch.ops.quantized, f"conv{dims}d_prepack")
            packed = prepack(w, b, list(geo.stride), list(geo.padding), list(geo.dilation),
                             geo.groups)
        self._packed[layer.name] = packed
        return packed

    # --- report rows ------------------------------------------------------------------
    def row(self, layer: Layer, cap: Capture | None) -> T.LayerVerify:
        """The layer re-run from the real input it received in the quantized run: torch's
        kernel and qinspect's reference on it, against the float domain (the same row
        builders as every other runner)."""
        if cap is None:
            return V.not_verified(layer, "the graph never ran it on the input")
        if cap.op:
            return self._op_row(layer, cap)
        x = cap.x
        text = f"its real input {tuple(int(d) for d in x.shape)} in a run of the whole graph"
        relu = layer.fused_relu
        if layer.mode is Mode.QUANTIZE and layer.output is not None:
            row, _ = V.quantize_row(self.ctx, layer, x.detach().numpy(), T.InputKind.MODEL,
                                    text)
            return row
        if layer.mode is Mode.DYNAMIC and _module_linear(layer):
            row, _ = V.dynamic_row(self.ctx, layer, [x.detach().numpy()], T.InputKind.MODEL,
                                   text)
            return row
        if layer.mode is Mode.STATIC and getattr(x, "is_quantized", False) and \
                (_module_linear(layer) or layer.op is OpKind.CONV):
            call = V.Call(x.int_repr().numpy(), float(x.q_scale()), int(x.q_zero_point()))
            geo = self._geometry(layer) if _conv_dims(layer) else None
            notes = (f"conv hyper-parameters from the file: {geo.describe()}",) if geo else ()
            row, outs = V.static_row(self.ctx, layer, [call], T.InputKind.MODEL, text, geo=geo,
                                     notes=notes, packed=self._prepack(layer), relu=relu)
            if outs and not np.array_equal(outs[0], cap.y.int_repr().numpy()):
                raise VerifyError(f"{layer.name}: re-running the kernel gave another output "
                                  "than the graph run (please report it)")
            return row
        return self._float_row(layer, cap)

    def _op_row(self, layer: Layer, cap: Capture) -> T.LayerVerify:
        """A quantized op the layer's own code ran (QFunctional add/mul/cat, Hardswish):
        add/add_relu get torch's kernel against qinspect's reference like every add; the
        others, the float op on the dequantized real inputs against the graph's output."""
        import torch

        args = cap.args or [cap.x]
        tensors = [a for a in flatten(list(args)) if _is_tensor(a)]
        first = tensors[0] if tensors else None
        shape = tuple(int(d) for d in first.shape) if first is not None else ()
        text = f"its real input {shape} in a run of the whole graph"
        quantized = [t for t in tensors if t.is_quantized]
        if cap.op in ("add", "add_relu") and len(quantized) == 2:
            a, b = (V.Call(t.int_repr().numpy(), float(t.q_scale()), int(t.q_zero_point()))
                    for t in quantized)
            row, outs = V.add_row(self.ctx, layer, [(a, b)], cap.op == "add_relu",
                                  T.InputKind.MODEL, text)
            if outs and not np.array_equal(outs[0], cap.y.int_repr().numpy()):
                raise VerifyError(f"{layer.name}: re-running quantized::{cap.op} gave another "
                                  "output than the graph run (please report it)")
            return row

        def deq(a: Any) -> Any:
            if _is_tensor(a):
                return (a.dequantize() if a.is_quantized else a).to(torch.float64)
            if isinstance(a, (list, tuple)):
                return type(a)(deq(v) for v in a)
            return a
        with torch.no_grad():
            ref = float_op(cap.op, [deq(a) for a in args]).numpy()
        y = cap.y
        m = V.metrics_static(ref, y.int_repr().numpy(), float(y.q_scale()),
                             int(y.q_zero_point()))
        return T.LayerVerify(
            name=layer.name, kind=f"{layer.kind} {cap.op}", mode=layer.mode.value,
            verified=True, input_kind=T.InputKind.MODEL, input_text=text, input_shape=shape,
            input_scale=float(first.q_scale()) if quantized and first is not None else None,
            input_zero_point=int(first.q_zero_point()) if quantized and first is not None
            else None,
            output_scale=float(y.q_scale()), output_zero_point=int(y.q_zero_point()),
            float_domain=f"{cap.op} in float64 on the dequantized real inputs",
            relu=cap.op.endswith("_relu"), elements=int(ref.size),
            notes=(f"quantized::{cap.op}: qinspect has no integer reference for it yet, so "
                   "kernel vs reference is not checked (the graph's own output is measured)",),
            **m)

    def _float_row(self, layer: Layer, cap: Capture) -> T.LayerVerify:
        """A layer no row builder covers: float domain against the graph's output only."""
        import torch

        out = layer.output
        x = cap.x
        x_float = x.dequantize() if getattr(x, "is_quantized", False) else x
        with torch.no_grad():
            ref = self.layer_forward(layer, x_float.to(torch.float64), quantized=False) \
                if layer.mode is not Mode.QUANTIZE else x_float.to(torch.float64)
        ref_np = ref.detach().numpy()
        y = cap.y
        row = T.LayerVerify(
            name=layer.name, kind=layer.kind, mode=layer.mode.value, verified=True,
            input_kind=T.InputKind.MODEL,
            input_text="its real input in a run of the whole graph",
            input_shape=tuple(int(d) for d in x.shape),
            input_scale=layer.input.scale if layer.input else None,
            input_zero_point=layer.input.zero_point if layer.input else None,
            relu=layer.fused_relu, elements=int(ref_np.size),
            float_domain="float64 on the dequantized real input",
            notes=("no integer reference for this op: kernel vs reference not checked",))
        if getattr(y, "is_quantized", False) and out is not None:
            m = V.metrics_static(ref_np, y.int_repr().numpy(), out.scale, out.zero_point)
            return replace(row, output_scale=out.scale, output_zero_point=out.zero_point, **m)
        from qinspect.quant.metrics import sqnr_db

        got = y.detach().to(torch.float64).numpy()
        err = np.abs(ref_np - got)
        return replace(row, sqnr_db=sqnr_db(ref_np, got), max_abs_error=float(err.max()),
                       mean_abs_error=float(err.mean()))


def _output(layer: Layer) -> ActQuant:
    if layer.output is None:
        raise VerifyError(f"{layer.name}: the file stores no output qparams for it, so the "
                          "graph cannot run through it (qinspect show lists its qparams)")
    return layer.output


def _conv_dims(layer: Layer) -> int:
    """Spatial dimensions of the layer's weight: 0 for a Linear, 2 for a Conv2d."""
    if layer.weight is None:
        raise VerifyError(f"{layer.name}: the file stores no weight for it, so the graph "
                          "cannot run through it")
    return len(layer.weight.shape) - 2


def _states(root: Any) -> dict[str, dict[str, Any]]:
    from qinspect.loaders.safe_pickle import Stub

    out: dict[str, dict[str, Any]] = {}
    todo = [(root, "")]
    seen: set[int] = set()
    while todo:
        obj, path = todo.pop()
        if id(obj) in seen or not isinstance(obj, Stub) or not isinstance(obj.state, dict):
            continue
        seen.add(id(obj))
        state = obj.state
        out[path] = state
        modules = state.get("_modules")
        children = modules if isinstance(modules, dict) else state
        for name, value in children.items():
            if isinstance(value, Stub) and isinstance(name, str):
                todo.append((value, f"{path}.{name}" if path else name))
    return out


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _is_packed(value: Any) -> bool:
    from qinspect.loaders.reader import ScriptObjectState

    return isinstance(value, ScriptObjectState) or (isinstance(value, tuple) and bool(value)
                                                    and _is_tensor(value[0]))


def _end_to_end(quant: list[Any], floats: list[Any]) -> T.EndToEnd | None:
    import torch

    from qinspect.quant.metrics import sqnr_db

    if not quant or len(quant) != len(floats):
        return None
    def flat(ts: list[Any]) -> np.ndarray:
        return np.concatenate([(t.dequantize() if t.is_quantized else t).detach()
                               .to(torch.float64).numpy().ravel() for t in ts])
    q, f = flat(quant), flat(floats)
    err = np.abs(q - f)
    value = sqnr_db(f, q)
    return T.EndToEnd(sqnr_db=value if not math.isnan(value) else float("nan"),
                      max_abs_error=float(err.max()) if err.size else 0.0,
                      elements=int(q.size), outputs=len(quant))
