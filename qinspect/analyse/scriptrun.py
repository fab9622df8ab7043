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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qinspect.analyse import verify as V
from qinspect.errors import InputError, VerifyError
from qinspect.model import Checkpoint, Layer, Mode

MAX_DEPTH = 64
MAX_STEPS = 200_000
QDTYPES = {13: "quint8", 12: "qint8", 14: "qint32"}
TORCH_FUNCS = ("flatten", "relu", "relu_", "reshape", "cat", "squeeze", "unsqueeze", "mean",
               "permute", "transpose", "add", "mul", "sigmoid", "tanh", "clamp", "hardtanh",
               "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "slice", "select",
               "contiguous", "view", "matmul")
FUNCTIONAL = ("relu", "relu6", "hardtanh", "dropout", "max_pool2d", "avg_pool2d",
              "adaptive_avg_pool2d", "flatten", "sigmoid", "hardsigmoid", "hardswish")
METHODS = ("size", "dim", "contiguous", "view", "reshape", "flatten", "relu", "permute",
           "transpose", "mean", "clone", "float", "squeeze", "unsqueeze", "numel")
QUANTIZED_OPS = ("add", "add_relu", "mul", "mul_relu", "cat", "linear", "linear_relu",
                 "add_scalar", "mul_scalar")
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
           ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
           ast.Is: operator.is_, ast.IsNot: operator.is_not}
BUILTINS = {"torch.len": len, "torch.ne": operator.ne, "torch.eq": operator.eq,
            "torch.lt": operator.lt, "torch.gt": operator.gt, "torch.le": operator.le,
            "torch.ge": operator.ge, "torch.__is__": operator.is_,
            "torch.__isnot__": operator.is_not, "torch.__not__": operator.not_,
            "torch.dim": lambda t: t.dim(), "torch.size": lambda t, d=None: (
                list(t.size()) if d is None else t.size(d)),
            "len": len, "float": float, "int": int, "bool": bool,
            "annotate": lambda _t, v: v, "unchecked_cast": lambda _t, v: v}


@dataclass(frozen=True)
class ModRef:
    path: str
    qualname: str


@dataclass(frozen=True)
class _Name:
    name: str


@dataclass
class Capture:
    x: Any
    y: Any


class _Return(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


def verify_script(ckpt: Checkpoint, kind: str, input: Any,
                  reference: Any, layer_glob: str | None, batch: int | None,
                  engine: str | None) -> V.VerifyReport:
    """``verify`` for TorchScript archives and pickled GraphModules (see the docstring)."""
    import fnmatch

    import torch

    from qinspect.analyse import kernels
    from qinspect.inputs import read_input
    from qinspect.loaders import fx_pickle, load, torchscript

    if input is None:
        raise InputError("verify runs this file's graph whole: pass --input with a sample "
                         "for each model input (.npy, or .npz with one array per input)")
    user = read_input(input).limited(batch)
    reader = torchscript if kind == "torchscript" else fx_pickle
    root, classes, root_qualname = reader.read_script(Path(ckpt.path))
    ref = load(reference) if reference is not None else None
    chosen, why = V.choose_engine(ckpt, engine)
    weights = V.FloatWeights(ckpt, ref)
    interp = Interpreter(ckpt, root, classes, weights, chosen)
    inputs = [torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32)
              for a in user.arrays]
    with kernels.engine_context(chosen), torch.no_grad():
        q_out = interp.run(root_qualname, inputs, quantized=True)
        captures = dict(interp.captures)
        f_out = interp.run(root_qualname, inputs, quantized=False)
    rows = [interp.row(layer, captures.get(layer.name)) for layer in ckpt.layers
            if layer.mode is not Mode.FLOAT]
    report = V.VerifyReport(
        path=ckpt.path, mode="graph", engine=chosen, engine_reason=why,
        input_text=f"{user.describe()} -> every layer's real input, captured in one run of "
                   "the whole graph stored in the file",
        layers=tuple(rows), reference=None if reference is None else str(reference),
        batch=batch, float_domain=weights.summary, end_to_end=_end_to_end(q_out, f_out),
        notes=("end-to-end: the quantized graph against the same graph in the float domain "
               "(quantize/dequantize removed, float-domain weights)",))
    if layer_glob is not None:
        kept = tuple(r for r in report.layers if fnmatch.fnmatchcase(r.name, layer_glob))
        if not kept:
            raise InputError(f"--layer {layer_glob!r} matches no quantized layer")
        report = replace(report, layers=kept)
    return report


class Interpreter:
    """Executes parsed forward code with an allow-list of operations."""

    def __init__(self, ckpt: Checkpoint, root: Any, classes: dict[str, ast.ClassDef],
                 weights: V.FloatWeights, engine: str) -> None:
        from qinspect.loaders.torchscript import Flattener

        flat = Flattener()
        flat.module(root, "")
        self.modules = flat.modules
        self.entries = flat.entries
        self.geometry = flat.geometry
        self.states = _states(root)
        self.classes = classes
        self.layers = {lay.name: lay for lay in ckpt.layers}
        self.key_layer = {ref.key: lay for lay in ckpt.layers for ref in lay.keys}
        self.weights = weights
        self.engine = engine
        self.quantized = True
        self.captures: dict[str, Capture] = {}
        self.steps = 0
        self._packed: dict[str, Any] = {}

    # --- runs -------------------------------------------------------------------------
    def run(self, root_qualname: str, inputs: list[Any], quantized: bool) -> list[Any]:
        self.quantized = quantized
        self.captures = {}
        self.steps = 0
        try:
            out = self.call_method(ModRef("", root_qualname), "forward", list(inputs), 0)
        except RecursionError as exc:
            raise VerifyError("the graph code is nested too deeply to run") from exc
        return [t for t in _flatten([out]) if _is_tensor(t)]

    def call_method(self, mod: ModRef, method: str, args: list[Any], depth: int) -> Any:
        if mod.path in self.layers and mod.path:
            return self.layer_call(self.layers[mod.path], args)
        func = self._method(mod.qualname, method)
        if func is None:
            raise VerifyError(f"cannot run {method} of {mod.path or 'the root'} "
                              f"({mod.qualname}): no code for it in the file")
        if depth > MAX_DEPTH:
            raise VerifyError("calls nested too deeply to run")
        params = [a.arg for a in func.args.args]
        env: dict[str, Any] = {params[0]: mod} if params else {}
        defaults = func.args.defaults
        for i, name in enumerate(params[1:]):
            if i < len(args):
                env[name] = args[i]
            else:
                k = i - (len(params) - 1 - len(defaults))
                env[name] = self.expr(defaults[k], env, depth) if k >= 0 else None
        try:
            self.block(func.body, env, depth)
        except _Return as ret:
            return ret.value
        return None

    def _method(self, qualname: str, method: str) -> ast.FunctionDef | None:
        cls = self.classes.get(qualname)
        for node in cls.body if cls is not None else []:
            if isinstance(node, ast.FunctionDef) and node.name == method:
                return node
        return None

    # --- statements -------------------------------------------------------------------
    def block(self, body: list[ast.stmt], env: dict[str, Any], depth: int) -> None:
        for stmt in body:
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise VerifyError("the graph is too large to run")
            if isinstance(stmt, ast.Return):
                raise _Return(self.expr(stmt.value, env, depth) if stmt.value else None)
            if isinstance(stmt, ast.Assign):
                value = self.expr(stmt.value, env, depth)
                for target in stmt.targets:
                    self.assign(target, value, env)
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                self.assign(stmt.target, self.expr(stmt.value, env, depth), env)
            elif isinstance(stmt, ast.Expr):
                self.expr(stmt.value, env, depth)
            elif isinstance(stmt, ast.If):
                test = self.expr(stmt.test, env, depth)
                if not isinstance(test, (bool, int)) or _is_tensor(test):
                    raise VerifyError("an if in the graph code depends on something "
                                      "verify cannot evaluate")
                self.block(stmt.body if test else stmt.orelse, env, depth)
            elif isinstance(stmt, ast.Pass):
                continue
            else:
                raise VerifyError(f"cannot run a {type(stmt).__name__} statement of the "
                                  "graph code")

    def assign(self, target: ast.expr, value: Any, env: dict[str, Any]) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = list(value)
            if len(values) != len(target.elts):
                raise VerifyError("tuple unpacking of the wrong length in the graph code")
            for sub, part in zip(target.elts, values, strict=True):
                self.assign(sub, part, env)
        else:
            raise VerifyError("cannot run an assignment to an attribute or item")

    # --- expressions ------------------------------------------------------------------
    def expr(self, node: ast.expr | None, env: dict[str, Any], depth: int) -> Any:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            return env[node.id] if node.id in env else _Name(node.id)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List)):
            items = [self.expr(e, env, depth) for e in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.Attribute):
            return self.attribute(self.expr(node.value, env, depth), node.attr)
        if isinstance(node, ast.Subscript):
            base = self.expr(node.value, env, depth)
            index = self.expr(node.slice, env, depth)
            if isinstance(base, (list, tuple)) and isinstance(index, int):
                return base[index]
            raise VerifyError("cannot run a subscript of the graph code")
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
        if isinstance(node, ast.Call):
            return self.call(node, env, depth)
        raise VerifyError(f"cannot run a {type(node).__name__} expression of the graph code")

    def attribute(self, base: Any, name: str) -> Any:
        if isinstance(base, ModRef):
            path = f"{base.path}.{name}" if base.path else name
            if path in self.modules:
                return ModRef(path, self.modules[path])
            if path in self.entries:
                return self.entries[path]
            state = self.states.get(base.path, {})
            if name in state and isinstance(state[name], (bool, int, float, str, type(None))):
                return state[name]
            return _Bound(base, name)
        if isinstance(base, _Name):
            if base.name == "torch":
                import torch

                value = vars(torch).get(name)
                if isinstance(value, (torch.dtype, torch.qscheme)):
                    return value
            return _Name(f"{base.name}.{name}")
        if _is_tensor(base):
            return _Bound(base, name)
        raise VerifyError(f"cannot run attribute {name!r} of the graph code")

    def call(self, node: ast.Call, env: dict[str, Any], depth: int) -> Any:
        func = self.expr(node.func, env, depth)
        args = [self.expr(a, env, depth) for a in node.args]
        kwargs = {k.arg: self.expr(k.value, env, depth) for k in node.keywords if k.arg}
        if isinstance(func, ModRef):  # FX code: self.fc1(x)
            return self.call_method(func, "forward", args, depth + 1)
        if isinstance(func, _Bound) and isinstance(func.owner, ModRef):
            return self.call_method(func.owner, func.name, args, depth + 1)
        if isinstance(func, _Bound):
            return self.tensor_method(func.owner, func.name, args)
        if isinstance(func, _Name):
            return self.function(func.name, args, kwargs)
        raise VerifyError("cannot run a call of the graph code")

    # --- operations -------------------------------------------------------------------
    def tensor_method(self, t: Any, name: str, args: list[Any]) -> Any:
        if name == "dequantize":
            return t.dequantize() if self.quantized else t
        if name in METHODS:
            return getattr(t, name)(*args)
        raise VerifyError(f"verify cannot run the tensor method {name!r} yet")

    def function(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        import torch
        import torch.nn.functional as F

        if name in BUILTINS:
            return BUILTINS[name](*args, **kwargs)
        if name == "getattr" and len(args) == 2 and isinstance(args[0], ModRef):
            return self.attribute(args[0], str(args[1]))
        if name == "torch.quantize_per_tensor":
            return self.quantize(args)
        if name == "torch.dequantize":
            return args[0].dequantize() if self.quantized else args[0]
        short = name.rsplit(".", 1)[-1]
        if name.startswith(("__torch__.torch.nn.functional.", "torch.nn.functional.")) and \
                short in FUNCTIONAL:
            return getattr(F, short)(*args, **kwargs)
        if name.startswith("torch.") and name.count(".") == 1 and short in TORCH_FUNCS:
            if short == "slice":
                return torch.ops.aten.slice(*args, **kwargs)
            return getattr(torch, short)(*args, **kwargs)
        if name.startswith(("ops.quantized.", "torch.ops.quantized.")) and \
                short in QUANTIZED_OPS:
            return self.quantized_op(short, args)
        raise VerifyError(f"verify cannot run {name!r} from a graph yet")

    def quantize(self, args: list[Any]) -> Any:
        import torch

        x, scale, zp = args[0], args[1], args[2]
        dtype = args[3] if len(args) > 3 else torch.quint8
        if isinstance(dtype, int):
            dtype = getattr(torch, QDTYPES.get(dtype, "quint8"))
        s = float(scale)
        z = int(zp)
        layer = self._quantize_layer(scale)
        if not self.quantized:
            return x
        y = torch.quantize_per_tensor(x, s, z, dtype)
        if layer is not None and layer.name not in self.captures:
            self.captures[layer.name] = Capture(x, y)
        return y

    def _quantize_layer(self, scale: Any) -> Layer | None:
        for key, value in self.entries.items():
            if value is scale and key in self.key_layer:
                return self.key_layer[key]
        return None

    def quantized_op(self, op: str, args: list[Any]) -> Any:
        import torch
        import torch.nn.functional as F

        packed = next((a for a in args if isinstance(a, _Bound) is False and
                       _is_packed(a)), None)
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
        if self.quantized:
            return getattr(torch.ops.quantized, op)(*args)
        if op in ("add", "add_relu", "add_scalar"):
            y = args[0] + args[1]
        elif op in ("mul", "mul_relu", "mul_scalar"):
            y = args[0] * args[1]
        else:  # cat
            y = torch.cat(args[0], args[1] if len(args) > 1 else 0)
        return F.relu(y) if op.endswith("_relu") else y

    def _packed_layer(self, packed: Any) -> Layer:
        for key, value in self.entries.items():
            if value is packed and key in self.key_layer:
                return self.key_layer[key]
        raise VerifyError("a quantized op reads packed weights qinspect did not attribute")

    # --- layers -----------------------------------------------------------------------
    def layer_call(self, layer: Layer, args: list[Any]) -> Any:
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
        relu = "ReLU" in kind
        if layer.mode is Mode.QUANTIZE:
            out = layer.output
            return torch.quantize_per_tensor(x, out.scale, out.zero_point, torch.quint8) \
                if quantized else x
        if layer.mode is Mode.FLOAT:
            raise VerifyError(f"{layer.name}: a float layer inside the graph; verify cannot "
                              "run it yet")
        if not quantized:
            w, b, _, _ = self.weights.get(layer)
            wt = torch.from_numpy(w).to(x.dtype)
            bt = None if b is None else torch.from_numpy(b).to(x.dtype)
            if kind.startswith("Linear"):
                y = F.linear(x, wt, bt)
            elif "Conv" in kind and "Transpose" not in kind:
                geo = self._geometry(layer)
                conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[wt.dim()]
                y = conv(x, wt, bt, geo.stride, geo.padding, geo.dilation, geo.groups)
            else:
                raise VerifyError(f"{layer.name}: verify cannot run {kind} from a graph yet")
            return F.relu(y) if relu else y
        if layer.mode is Mode.DYNAMIC and kind.startswith("Linear"):
            return torch.ops.quantized.linear_dynamic(x, self._prepack(layer))
        out = layer.output
        if kind.startswith("Linear"):
            op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
            return op(x, self._prepack(layer), out.scale, out.zero_point)
        if "Conv" in kind and "Transpose" not in kind:
            dims = len(layer.weight.shape) - 2
            name = f"conv{dims}d" + ("_relu" if relu else "")
            return getattr(torch.ops.quantized, name)(x, self._prepack(layer), out.scale,
                                                      out.zero_point)
        raise VerifyError(f"{layer.name}: verify cannot run {kind} from a graph yet")

    def _geometry(self, layer: Layer) -> Any:
        from qinspect.analyse.kernels import ConvGeometry

        g = self.geometry.get(layer.name)
        dims = len(layer.weight.shape) - 2
        if g is None:
            return ConvGeometry.default(dims)
        return ConvGeometry(tuple(g["stride"]), tuple(g["padding"]), tuple(g["dilation"]),
                            int(g["groups"]))

    def _prepack(self, layer: Layer) -> Any:
        import torch

        from qinspect.analyse import kernels

        if layer.name in self._packed:
            return self._packed[layer.name]
        w = kernels.weight_tensor(layer)
        b = None if layer.bias is None else torch.from_numpy(
            np.asarray(layer.bias, np.float32).copy())
        if len(layer.weight.shape) == 2:
            packed = torch.ops.quantized.linear_prepack(w, b)
        else:
            geo = self._geometry(layer)
            dims = len(layer.weight.shape) - 2
            prepack = getattr(torch.ops.quantized, f"conv{dims}d_prepack")
            packed = prepack(w, b, list(geo.stride), list(geo.padding), list(geo.dilation),
                             geo.groups)
        self._packed[layer.name] = packed
        return packed

    # --- report rows ------------------------------------------------------------------
    def row(self, layer: Layer, cap: Capture | None) -> V.LayerVerify:
        import torch

        if cap is None:
            return V.not_verified(layer, "the graph never ran it on the input")
        out = layer.output
        x = cap.x
        x_float = x.dequantize() if getattr(x, "is_quantized", False) else x
        with torch.no_grad():
            ref = self.layer_forward(layer, x_float.to(torch.float64), quantized=False) \
                if layer.mode is not Mode.QUANTIZE else x_float.to(torch.float64)
        ref_np = ref.detach().numpy()
        y = cap.y
        common = dict(name=layer.name, kind=layer.kind, mode=layer.mode.value, verified=True,
                      input_kind=V.InputKind.MODEL,
                      input_text="its real input in a run of the whole graph",
                      input_shape=tuple(int(d) for d in x.shape),
                      input_scale=layer.input.scale if layer.input else None,
                      input_zero_point=layer.input.zero_point if layer.input else None,
                      relu="ReLU" in layer.kind, elements=int(ref_np.size),
                      float_domain="float64 on the dequantized real input")
        if getattr(y, "is_quantized", False) and out is not None:
            m = V._metrics_static(ref_np, y.int_repr().numpy(), out.scale, out.zero_point)
            return V.LayerVerify(output_scale=out.scale, output_zero_point=out.zero_point,
                                 **common, **m)
        from qinspect.quant.metrics import sqnr_db

        got = y.detach().to(torch.float64).numpy()
        err = np.abs(ref_np - got)
        return V.LayerVerify(sqnr_db=sqnr_db(ref_np, got), max_abs_error=float(err.max()),
                             mean_abs_error=float(err.mean()), **common)


@dataclass(frozen=True)
class _Bound:
    owner: Any
    name: str


def _states(root: Any) -> dict[str, dict]:
    from qinspect.loaders.safe_pickle import Stub

    out: dict[str, dict] = {}
    todo = [(root, "")]
    seen: set[int] = set()
    while todo:
        obj, path = todo.pop()
        if id(obj) in seen or not isinstance(obj, Stub) or not isinstance(obj.state, dict):
            continue
        seen.add(id(obj))
        state = obj.state
        out[path] = state
        children = state.get("_modules") if isinstance(state.get("_modules"), dict) else state
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


def _flatten(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out.extend(_flatten(list(v)))
        else:
            out.append(v)
    return out


def _end_to_end(quant: list[Any], floats: list[Any]) -> V.EndToEnd | None:
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
    return V.EndToEnd(sqnr_db=value if not math.isnan(value) else float("nan"),
                      max_abs_error=float(err.max()) if err.size else 0.0,
                      elements=int(q.size), outputs=len(quant))
