"""``verify --model``: exact per-layer inputs from the user's own model code.

This imports and runs the user's Python file (an explicit opt-in). ``--model`` names a
class or any builder function (``torchvision.models.quantization.resnet18``-style
factories with their defaults) that returns a ``torch.nn.Module`` when called with no
arguments; the float reference (``--reference``, read safely) is loaded into it. A
quantized copy is made the way eager mode does it: BatchNorms the checkpoint folded are
fused into their conv, ``prepare``/``convert`` swap in torch's quantized modules
(QuantStub, Linear, Conv, FloatFunctional, dynamic Linear/LSTM, ...) and the checkpoint's
state_dict is loaded into them (strictly: every key must find its module). The sample runs
through both models with hooks:

* each quantized layer is fed the quantization of its *real* float input (recorded in
  the float model) with the input qparams the quantized model really used at that point
  (recorded in the quantized model), so the per-layer numbers isolate that layer's loss;
* the quantized model's output against the float model's gives the end-to-end SQNR.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import sys
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qinspect.analyse.verify import rows as V
from qinspect.analyse.verify import types as T
from qinspect.analyse.verify.rows import Call, Context
from qinspect.analyse.verify.statedict import kind_of, unsupported_reason
from qinspect.analyse.verify.types import InputKind, LayerVerify
from qinspect.errors import InputError, VerifyError
from qinspect.inputs import UserInput, shape_text
from qinspect.model import Checkpoint, Layer, Mode, OpKind

QF_METHODS = ("add", "add_relu", "mul", "mul_relu", "cat", "add_scalar", "mul_scalar",
              "matmul")


# --- the user's class ----------------------------------------------------------------------


def load_builder(spec: str) -> Any:
    """``path/to/file.py:name`` or ``package.module:name`` -> a class or function that
    builds the model with no arguments (runs its module)."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise InputError(f"--model {spec!r}: expected FILE.py:NAME or package.module:NAME "
                         "(a model class or a function that returns the model)")
    try:
        if target.endswith(".py") or "/" in target or "\\" in target:
            module = _import_file(Path(target))
        else:
            module = importlib.import_module(target)
    except InputError:
        raise
    except BaseException as exc:
        raise InputError(f"--model: importing {target} failed ({_line(exc)}); fix the module "
                         "or check the path") from exc
    builder = getattr(module, name, None)
    if builder is None:
        raise InputError(f"--model: {target} has no attribute {name!r}")
    if not callable(builder):
        raise InputError(f"--model: {target}:{name} is a {type(builder).__name__}, not a "
                         "model class or a function that returns the model")
    return builder


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"--model: {path}: no such Python file")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"_qinspect_user_model_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"--model: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    parent = str(path.resolve().parent)
    sys.path.insert(0, parent)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(parent)
    return module


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def build_float(builder: Any, spec: str, reference_path: str) -> Any:
    """``builder()`` with the reference's float weights loaded strictly, in eval mode."""
    import torch

    from qinspect.loaders.reader import read_file

    try:
        model = builder()
    except BaseException as exc:
        raise InputError(f"--model: {spec}() failed ({_line(exc)}); --model needs a class "
                         "or function that builds the model with no arguments") from exc
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"--model: {spec}() returned a {type(model).__name__}, not a "
                         "torch.nn.Module; name the model class or its builder function")
    raw = read_file(reference_path)
    state = {k: v for k, v in raw.entries.items() if _is_tensor(v)}
    _load(model, state, strict=True, where=f"{reference_path} into {spec}")
    return model.eval()


def _is_tensor(v: Any) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def _load(model: Any, state: Any, strict: bool, where: str) -> tuple[list[str], list[str]]:
    try:
        result = model.load_state_dict(state, strict=False)
    except Exception as exc:
        raise InputError(f"loading {where} failed ({_line(exc)}); is it the right model "
                         "class for this file?") from exc
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4
                                                                   else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}"
                         + (" ..." if len(unexpected) > 4 else ""))
        raise InputError(f"loading {where} failed ({'; '.join(parts)}); is it the right "
                         "model class for this file?")
    return missing, unexpected


# --- the quantized model ---------------------------------------------------------------------


def _qconfig(layer: Layer) -> Any:
    import torch
    import torch.ao.quantization as tq

    if layer.mode is Mode.WEIGHT_ONLY:
        four = layer.weight is not None and layer.weight.stored_dtype == "quint4x2"
        return (tq.float_qparams_weight_only_qconfig_4bit if four
                else tq.float_qparams_weight_only_qconfig)
    per_channel = (layer.weight is not None and layer.weight.quant is not None
                   and layer.weight.quant.axis is not None)
    weight = (tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                    qscheme=torch.per_channel_symmetric)
              if per_channel else
              tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric))
    return tq.QConfig(activation=tq.MinMaxObserver.with_args(dtype=torch.quint8), weight=weight)


def module_name(layer: Layer) -> str:
    """The module that holds a layer (RNN gate layers live in their RNN module)."""
    if layer.mode is Mode.DYNAMIC and layer.op is OpKind.RNN_GATES:
        return layer.name.rsplit(".weight_", 1)[0]
    return layer.name


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def build_quantized(float_model: Any, ckpt: Checkpoint, ctx: Context) -> Any:
    """A quantized copy of ``float_model`` holding the checkpoint's weights and qparams."""
    import copy

    import torch
    import torch.ao.quantization as tq

    from qinspect.analyse.verify.kernels import engine_context
    from qinspect.loaders.reader import read_file

    m = copy.deepcopy(float_model).eval()
    modules = dict(m.named_modules())
    folds = [[p.a.name, p.fold.name] for p in ctx.weights.pairs.values()
             if p.fold is not None and p.fold_side == "b"
             and p.a.name in modules and p.fold.name in modules]
    static, dynamic = {}, {}
    for layer in ckpt.layers:
        name = module_name(layer)
        if layer.mode in (Mode.STATIC, Mode.QUANTIZE, Mode.WEIGHT_ONLY):
            static[name] = layer
        elif layer.mode is Mode.DYNAMIC:
            dynamic[name] = layer
    absent = [n for n in list(static) + list(dynamic) if n not in modules]
    if absent:
        raise VerifyError(f"the checkpoint's layer {absent[0]!r} has no module of that name in "
                          "the --model class; is it the model this file was quantized from?")
    with engine_context(ctx.engine), _quiet(), torch.no_grad():
        try:
            if folds:
                tq.fuse_modules(m, folds, inplace=True)
                modules = dict(m.named_modules())
            for mod in modules.values():
                mod.qconfig = None
            for name, layer in static.items():
                modules[name].qconfig = _qconfig(layer)
            for mod in modules.values():
                if isinstance(mod, tq.DeQuantStub):
                    mod.qconfig = tq.default_qconfig
            tq.prepare(m, inplace=True)
            tq.convert(m, inplace=True)
            if dynamic:
                spec = {n: (tq.float16_dynamic_qconfig if _fp16(lay) else
                            tq.default_dynamic_qconfig) for n, lay in dynamic.items()}
                tq.quantize_dynamic(m, spec, inplace=True)
        except Exception as exc:
            raise VerifyError(f"--model: building the quantized model with torch's eager "
                              f"convert failed ({_line(exc)})") from exc
        raw = read_file(ckpt.path)
        cells = {k: v for k, v in raw.entries.items() if "._all_weight_values." in k}
        current = m.state_dict()
        # RNN cells hold TorchScript objects the safe loader keeps as plain state: load the
        # model's own placeholders here, then rebuild them from the file in _load_cells.
        state = OrderedDict((k, current[k] if k in cells and k in current else v)
                            for k, v in raw.entries.items())
        state._metadata = raw.metadata or current._metadata  # type: ignore[attr-defined]
        try:
            result = m.load_state_dict(state, strict=False)
        except Exception as exc:
            raise VerifyError(f"--model: loading {ckpt.path} into the quantized model failed "
                              f"({_line(exc)})") from exc
        missing = list(result.missing_keys)
        if missing or result.unexpected_keys:
            keys = missing[:3] + list(result.unexpected_keys)[:3]
            raise VerifyError(f"--model: the quantized model's keys do not match {ckpt.path} "
                              f"({', '.join(keys)}); is it the model this file came from?")
        _load_cells(m, cells)
    return m.eval()


def _fp16(layer: Layer) -> bool:
    return layer.weight is not None and layer.weight.declared_dtype == "float16"


def _load_cells(m: Any, cells: dict[str, Any]) -> None:
    """Dynamic RNN cells: rebuild each cell's packed params from the stored tensors."""
    import torch

    for key, state in cells.items():
        prefix, _, rest = key.partition("._all_weight_values.")
        index = int(rest.split(".")[0])
        payload = getattr(state, "payload", None)
        try:
            if payload is None:
                raise ValueError("the file holds no packed parameters for it")
            _tag, biases, _doubles, longs, packed = payload
            pairs = [p.payload for p in packed]
            packs = [torch.ops.quantized.linear_prepack(w, b) for w, b in pairs]
            reduce_range = bool(longs[0]) if longs else True
            cell = torch.ops.quantized.make_quantized_cell_params_dynamic(
                packs[0], packs[1], biases[0], biases[1], reduce_range)
        except Exception as exc:
            raise VerifyError(f"--model: cannot rebuild the dynamic RNN cell {key} "
                              f"({_line(exc)})") from exc
        m.get_submodule(prefix)._all_weight_values[index].param = cell


# --- recording -------------------------------------------------------------------------------


class Recorder:
    """Inputs of named modules (and FloatFunctional/QFunctional calls) during a run."""

    def __init__(self, model: Any, names: list[str]) -> None:
        import torch

        self.calls: dict[str, list[tuple[str, tuple[Any, ...]]]] = {n: [] for n in names}
        self.handles = []
        modules = dict(model.named_modules())
        qf_types = (torch.ao.nn.quantized.FloatFunctional, torch.ao.nn.quantized.QFunctional)
        for name in names:
            mod = modules.get(name)
            if mod is None:
                continue
            if isinstance(mod, qf_types):
                for meth in QF_METHODS:
                    if hasattr(mod, meth):
                        setattr(mod, meth, self._wrap(name, meth, getattr(mod, meth)))
            else:
                self.handles.append(mod.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name: str) -> Any:
        def hook(_mod: Any, args: tuple[Any, ...]) -> None:
            self.calls[name].append(("forward", _snapshot(args)))
        return hook

    def _wrap(self, name: str, meth: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.calls[name].append((meth, _snapshot(args)))
            return fn(*args, **kwargs)
        return wrapped


def _snapshot(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Tensors as numpy (quantized ones as (ints, scale, zp)); lists of tensors likewise."""
    import torch

    def one(a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            t = a.detach()
            if t.is_quantized:
                return ("q", t.int_repr().numpy().copy(), float(t.q_scale()),
                        int(t.q_zero_point()))
            return t.numpy().copy()
        if isinstance(a, (list, tuple)):
            return type(a)(one(v) for v in a)
        return a
    return tuple(one(a) for a in args)


def _tensors(out: Any) -> list[np.ndarray]:
    """Every float tensor of a model output (quantized ones dequantized), flattened order."""
    import torch

    if isinstance(out, torch.Tensor):
        t = out.detach()
        t = t.dequantize() if t.is_quantized else t
        return [t.float().numpy().ravel()] if t.is_floating_point() else []
    if isinstance(out, (list, tuple)):
        return [a for v in out for a in _tensors(v)]
    if isinstance(out, dict):
        return [a for v in out.values() for a in _tensors(v)]
    return []


# --- run -------------------------------------------------------------------------------------


def run(ckpt: Checkpoint, ctx: Context, user: UserInput | None, spec: str,
        reference_path: str) -> T.VerifyReport:
    import torch

    from qinspect.analyse.verify.kernels import engine_context

    assert user is not None
    ctx.tick("importing the model", 0, 4)
    builder = load_builder(spec)
    float_model = build_float(builder, spec, reference_path)
    ctx.tick("building the quantized model", 1, 4)
    qmodel = build_quantized(float_model, ckpt, ctx)
    layers = [lay for lay in ckpt.layers if lay.mode in (Mode.STATIC, Mode.DYNAMIC,
                                                         Mode.QUANTIZE, Mode.WEIGHT_ONLY)]
    names = list(dict.fromkeys(module_name(lay) for lay in layers))
    rec_f, rec_q = Recorder(float_model, names), Recorder(qmodel, names)
    inputs = [torch.from_numpy(np.ascontiguousarray(a)) for a in user.arrays]
    ctx.tick("running both models", 2, 4)
    with torch.no_grad(), _quiet():
        try:
            f_out = float_model(*inputs)
        except Exception as exc:
            raise InputError(f"{user.path}: the float model failed on the input "
                             f"{', '.join(shape_text(a.shape) for a in user.arrays)} "
                             f"({_line(exc)}); pass the input its forward() expects") from exc
        with engine_context(ctx.engine):
            try:
                q_out = qmodel(*inputs)
            except Exception as exc:
                raise VerifyError(f"the quantized model failed on the input ({_line(exc)})"
                                  ) from exc
    modules_f = dict(float_model.named_modules())
    modules_q = dict(qmodel.named_modules())
    rows: list[LayerVerify] = []
    done: set[str] = set()
    steps = max(len(layers), 1)  # the comparison is the third of four phases
    for i, layer in enumerate(layers):
        ctx.tick(layer.name, 2 * steps + i, 4 * steps)
        if layer.name in done:
            continue
        name = module_name(layer)
        f_calls = rec_f.calls.get(name, [])
        q_calls = rec_q.calls.get(name, [])
        if not f_calls:
            rows.append(V.not_verified(layer, "not called by the model's forward() on this "
                                              "input"))
            continue
        try:
            new_rows = _model_rows(ctx, ckpt, layer, name, f_calls, q_calls, modules_f,
                                   modules_q)
        except VerifyError as exc:  # torch refused the layer: say so, go on with the rest
            new_rows = [V.not_verified(layer, str(exc).removeprefix(f"{layer.name}: "))]
        rows.extend(new_rows)
        done.update(r.name for r in new_rows)
    e2e = _end_to_end(f_out, q_out)
    ctx.tick("done", 4, 4)
    return T.VerifyReport(
        path=ckpt.path, mode="model", engine=ctx.engine, engine_reason="",
        input_text=user.describe(), layers=tuple(rows), end_to_end=e2e,
        notes=(f"--model imported and ran {spec.rpartition(':')[0]}: every layer gets the "
               "quantization of its real float input from the float model, with the input "
               "qparams the quantized model used there",))


def _model_rows(ctx: Context, ckpt: Checkpoint, layer: Layer, name: str, f_calls: list,
                q_calls: list, modules_f: dict[str, Any], modules_q: dict[str, Any] | None = None
                ) -> list[LayerVerify]:
    rows: list[LayerVerify] = []
    how = kind_of(layer)
    if (bad := V.unusable_qparams(layer)) is not None:
        return [V.not_verified(layer, f"{bad}: torch cannot run it")]
    if how == "stub":
        x = np.asarray(f_calls[0][1][0], np.float32)
        xs = [np.asarray(c[1][0], np.float32) for c in f_calls]
        row, _ = V.quantize_row(ctx, layer, np.concatenate([v.ravel() for v in xs]),
                                InputKind.MODEL, f"the model's input {shape_text(x.shape)}")
        rows.append(replace_shape(row, x.shape))
    elif how in ("linear", "conv"):
        rows.append(_static(ctx, layer, f_calls, q_calls, modules_f[name],
                            _packed((modules_q or {}).get(name))))
    elif how == "add":
        rows.append(_qfunctional(ctx, layer, f_calls, q_calls))
    elif how == "dynamic":
        xs = [np.asarray(c[1][0], np.float32) for c in f_calls]
        row, _ = V.dynamic_row(ctx, layer, xs, InputKind.MODEL,
                               f"the float model's input to '{name}' "
                               f"{shape_text(xs[0].shape)}")
        rows.append(row)
    elif how == "lstm":
        rows.extend(_lstm(ctx, ckpt, name, modules_f[name], f_calls))
    else:
        rows.append(V.not_verified(layer, unsupported_reason(layer)
                                   + "; it runs inside the end-to-end comparison"))
    return rows


def replace_shape(row: LayerVerify, shape: tuple[int, ...]) -> LayerVerify:
    from dataclasses import replace

    return replace(row, input_shape=tuple(shape))


def _qparams_of(q_call: tuple[str, tuple[Any, ...]] | None, index: int = 0
                ) -> tuple[float, int] | None:
    if q_call is None or len(q_call[1]) <= index:
        return None
    a = q_call[1][index]
    if isinstance(a, tuple) and a and a[0] == "q":
        return a[2], a[3]
    return None


def _static(ctx: Context, layer: Layer, f_calls: list, q_calls: list, module: Any,
            packed: Any = None) -> LayerVerify:
    from qinspect.analyse.verify.kernels import ConvGeometry
    from qinspect.quant.affine import quantize_per_tensor

    geo = None
    if kind_of(layer) == "conv":
        if getattr(module, "padding_mode", "zeros") != "zeros":
            return V.not_verified(layer, f"padding_mode {module.padding_mode!r}: verify "
                                  "covers zero padding only")
        padding = module.padding
        if isinstance(padding, str):
            return V.not_verified(layer, f"padding={padding!r}: verify needs numeric padding")
        geo = ConvGeometry(tuple(module.stride), tuple(padding), tuple(module.dilation),
                           int(module.groups))
    calls = []
    for f_call, q_call in zip(f_calls, q_calls, strict=False):
        qp = _qparams_of(q_call)
        if qp is None:
            return V.not_verified(layer, "its input in the quantized model is not a quantized "
                                  "tensor (no QuantStub before it?)")
        x = np.asarray(f_call[1][0], np.float32)
        calls.append(Call(quantize_per_tensor(x, qp[0], qp[1], T.ACT_DTYPE), qp[0], qp[1], x))
    if not calls:
        return V.not_verified(layer, "not called by the quantized model on this input")
    text = (f"the float model's input to '{layer.name}' {shape_text(calls[0].q.shape)}, "
            f"quantized with the input qparams the quantized model used (scale "
            f"{calls[0].scale:.4g}, zero point {calls[0].zero_point})")
    notes = (f"conv hyper-parameters from the model: {geo.describe()}",) if geo else ()
    row, _ = V.static_row(ctx, layer, calls, InputKind.MODEL, text, geo=geo, notes=notes,
                          packed=packed)
    return row


def _packed(module: Any) -> Any:
    """The quantized model's packed weight for this layer (the checkpoint's weight, bias
    and geometry, packed under the same engine), so verify need not prepack it again."""
    import torch.ao.nn.quantized as nnq

    if isinstance(module, nnq.Linear) and type(module).__module__.startswith("torch.ao.nn"):
        return module._packed_params._packed_params
    if isinstance(module, nnq.modules.conv._ConvNd) \
            and type(module).__module__.startswith("torch.ao.nn"):
        return module._packed_params
    return None


def _qfunctional(ctx: Context, layer: Layer, f_calls: list, q_calls: list) -> LayerVerify:
    from qinspect.quant.affine import quantize_per_tensor

    methods = {c[0] for c in q_calls}
    if not methods or not methods <= {"add", "add_relu"}:
        what = ", ".join(sorted(methods)) or "nothing"
        return V.not_verified(layer, f"QFunctional.{what}: verify covers add and add_relu "
                              "(it runs inside the end-to-end comparison)")
    if len(methods) > 1:
        return V.not_verified(layer, "called as both add and add_relu")
    relu = methods == {"add_relu"}
    calls = []
    for f_call, q_call in zip(f_calls, q_calls, strict=False):
        pair = []
        for k in (0, 1):
            qp = _qparams_of(q_call, k)
            if qp is None:
                return V.not_verified(layer, "an input in the quantized model is not a "
                                      "quantized tensor")
            x = np.asarray(f_call[1][k], np.float32)
            pair.append(Call(quantize_per_tensor(x, qp[0], qp[1], T.ACT_DTYPE), qp[0], qp[1], x))
        calls.append((pair[0], pair[1]))
    a, b = calls[0]
    text = (f"the float model's two inputs {shape_text(a.q.shape)}, quantized with the input "
            f"qparams the quantized model used (scales {a.scale:.4g}, {b.scale:.4g})")
    row, _ = V.add_row(ctx, layer, calls, relu, InputKind.MODEL, text)
    return row


def _lstm(ctx: Context, ckpt: Checkpoint, name: str, module: Any, f_calls: list
          ) -> list[LayerVerify]:
    import torch

    from qinspect.analyse.verify.kernels import lstm_sequence

    gates = [lay for lay in ckpt.layers if module_name(lay) == name
             and lay.op is OpKind.RNN_GATES]
    if not isinstance(module, torch.nn.LSTM) or module.bidirectional or module.proj_size:
        return [V.not_verified(g, "verify runs unidirectional LSTMs without projections")
                for g in gates]
    by_name = {g.name: g for g in gates}
    x = np.asarray(f_calls[0][1][0], np.float32)
    if module.batch_first:
        x = np.swapaxes(x, 0, 1)
    if x.ndim == 2:
        x = x[:, None, :]
    rows: list[LayerVerify] = []
    for k in range(module.num_layers):
        ih, hh = by_name.get(f"{name}.weight_ih_l{k}"), by_name.get(f"{name}.weight_hh_l{k}")
        if ih is None or hh is None:
            break
        w_ih = getattr(module, f"weight_ih_l{k}").detach().numpy()
        w_hh = getattr(module, f"weight_hh_l{k}").detach().numpy()
        b_ih = getattr(module, f"bias_ih_l{k}", None)
        b_hh = getattr(module, f"bias_hh_l{k}", None)
        b_ih = 0.0 if b_ih is None else b_ih.detach().numpy()
        b_hh = 0.0 if b_hh is None else b_hh.detach().numpy()

        def lin(w: np.ndarray, b: Any) -> Any:
            return lambda v: (v @ w.T + b).astype(np.float32)
        hs, prev = lstm_sequence(x, lin(w_ih, b_ih), lin(w_hh, b_hh), w_hh.shape[1])
        steps, batch = x.shape[0], x.shape[1]
        row_ih, _ = V.dynamic_row(ctx, ih, [x.reshape(steps * batch, -1)], InputKind.MODEL,
                                  f"the float LSTM's layer-{k} input {shape_text(x.shape)}, "
                                  "the whole sequence at once")
        row_hh, _ = V.dynamic_row(ctx, hh, list(prev), InputKind.MODEL,
                                  f"the float LSTM's layer-{k} hidden state at each of "
                                  f"{steps} steps (h_0 = 0)")
        rows.extend([row_ih, row_hh])
        x = hs
    covered = {r.name for r in rows}
    rows.extend(V.not_verified(g, "not reached (LSTM layers do not match the model)")
                for g in gates if g.name not in covered)
    return rows


def _end_to_end(f_out: Any, q_out: Any) -> T.EndToEnd | None:
    from qinspect.quant.metrics import max_abs_error, sqnr_db

    f, q = _tensors(f_out), _tensors(q_out)
    if not f or len(f) != len(q) or any(a.shape != b.shape for a, b in zip(f, q, strict=True)):
        return None
    fa, qa = np.concatenate(f), np.concatenate(q)
    return T.EndToEnd(sqnr_db(fa, qa), max_abs_error(fa, qa), int(fa.size), len(f))


# --- the runner ---------------------------------------------------------------------------


class ModelRunner:
    """A state_dict with ``--model``: the user's model code gives every layer's real input."""

    name = "model"
    needs = {
        "reference": "--model needs --reference FP32.pt: the float weights to load into the "
                     "model (a quantized state_dict has none)",
        "input": "--model needs --input: the sample to run through both models",
    }
    refuses = {"seed": "--model runs your model on the --input, so there is no synthetic "
                       "input to seed"}

    def accepts(self, ckpt: Checkpoint, options: T.Options) -> bool:
        return options.model is not None

    def run(self, ckpt: Checkpoint, options: T.Options, progress: T.Progress | None
            ) -> T.VerifyReport:
        from dataclasses import replace

        from qinspect.inputs import read_input

        V.check_stage(ckpt)
        assert options.input is not None and options.reference is not None
        user = read_input(options.input).limited(options.batch)
        ctx = Context.make(ckpt, options, progress)
        report = run(ckpt, ctx, user, str(options.model), options.reference)
        return replace(report, engine_reason=ctx.engine_reason,
                       float_domain=ctx.weights.summary, scope=(
                           "--model ran the float and the quantized model on the input: "
                           "every layer on its real input, and the end-to-end error"))
